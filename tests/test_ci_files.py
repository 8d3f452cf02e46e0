"""The CI files of this repository and the ML pipeline examples: valid, and safe by construction."""

import glob
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from rules import POLICIES

from infra.engines import gitlab_runner
from tests.harness import REPO, manual, run_program

GITHUB_WORKFLOW = REPO / ".github/workflows/infrastructure.yml"
GITLAB_CI = REPO / ".gitlab-ci.yml"
GITHUB_EXAMPLE = REPO / "examples/github/.github/workflows/mlops.yml"
GITLAB_EXAMPLE = REPO / "examples/gitlab/.gitlab-ci.yml"
GITHUB_ARC_EXAMPLE = REPO / "examples/github-arc/.github/workflows/mlops.yml"
GITHUB_RERUN = REPO / "examples/github/.github/workflows/rerun-lost-jobs.yml"
GITHUB_FILES = [GITHUB_WORKFLOW, GITHUB_EXAMPLE, GITHUB_ARC_EXAMPLE, GITHUB_RERUN]
GITLAB_FILES = [GITLAB_CI, GITLAB_EXAMPLE]
ALL_FILES = GITHUB_FILES + GITLAB_FILES
README_TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt "
    "&& .venv/bin/python -m pytest"
)


def load(path) -> dict:
    document = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as true.
    if True in document:
        document["on"] = document.pop(True)
    return document


def steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job.get("steps", []) if s.get("uses", "").startswith(f"{action}@")]


def run_text(job: dict) -> str:
    return "\n".join(s.get("run", "") for s in job.get("steps", []))


@pytest.fixture(scope="module")
def workflow() -> dict:
    return load(GITHUB_WORKFLOW)


@pytest.fixture(scope="module")
def gitlab() -> dict:
    return load(GITLAB_CI)


@pytest.mark.parametrize(
    ("path", "schema"),
    [(p, "vendor.github-workflows") for p in GITHUB_FILES]
    + [(p, "vendor.gitlab-ci") for p in GITLAB_FILES],
    ids=lambda value: str(value).removeprefix(str(REPO) + "/"),
)
def test_file_validates_against_its_forges_schema(path, schema):
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_no_cloud_key_anywhere(path):
    text = yaml.safe_dump(load(path))  # what the forge runs, without the comments
    assert "credentials_json" not in text
    assert "GOOGLE_CREDENTIALS" not in text
    assert not re.search(r"SERVICE_ACCOUNT_KEY|secrets\.\w*KEY\b", text)


@pytest.mark.parametrize("path", GITHUB_FILES, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_release_named(path):
    # A tag can be moved; a commit cannot. The comment says which release it is.
    uses = re.findall(r"uses:\s*(\S+)(.*)", path.read_text())
    assert uses
    for action, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", action), action
        assert re.fullmatch(r"\s*# v\d+\.\d+\.\d+", comment), (action, comment)


def test_no_checkout_keeps_the_token_in_the_repository():
    for path in GITHUB_FILES:
        workflow = load(path)
        for job in workflow["jobs"].values():
            for step in steps_using(job, "actions/checkout"):
                assert step["with"]["persist-credentials"] is False, path.name


def test_workflow_triggers_and_default_permissions(workflow):
    assert set(workflow["on"]) == {"pull_request", "push", "workflow_dispatch"}
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert workflow["on"]["workflow_dispatch"]["inputs"]["confirm"]["required"] is True
    assert workflow["permissions"] == {}


def test_offline_tests_run_on_every_pull_request_including_forks(workflow):
    test = workflow["jobs"]["test"]
    assert "fork" not in test.get("if", "") and "head.repo" not in test.get("if", "")
    assert README_TEST_COMMAND in run_text(test)
    assert test["permissions"] == {"contents": "read"}


def test_preview_runs_only_on_pull_requests_from_this_repository_and_comments(workflow):
    preview = workflow["jobs"]["preview"]
    assert "github.event_name == 'pull_request'" in preview["if"]
    assert "head.repo.full_name == github.repository" in preview["if"]
    assert preview["needs"] == "test"
    (pulumi,) = steps_using(preview, "pulumi/actions")
    assert pulumi["with"]["command"] == "preview"
    assert pulumi["with"]["comment-on-pr"] is True
    assert pulumi["with"]["cloud-url"].startswith("gs://")
    assert preview["permissions"] == {
        "contents": "read",
        "id-token": "write",
        "pull-requests": "write",
    }


def test_fork_pull_requests_get_the_offline_plan_with_no_token_or_secret(workflow):
    plan = workflow["jobs"]["plan"]
    assert "head.repo.full_name != github.repository" in plan["if"]
    assert plan["permissions"] == {"contents": "read"}
    assert "secrets." not in yaml.safe_dump(plan)
    assert "-r requirements.txt -r policy/requirements.txt" in run_text(plan)


def run_ci_script(script: str, workdir, env: dict[str, str]) -> tuple[int, str]:
    """Run a CI step's shell script in `workdir`, with this interpreter as .venv's."""
    result = subprocess.run(
        ["bash", "-e", "-c", script.replace(".venv/bin/python", sys.executable)],
        cwd=workdir,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, result.stdout + result.stderr


def stack_files(tmp_path, prod_deletion_protection: bool = True):
    """A checkout's stack files: the dev stack, and the prod stack as given."""
    (tmp_path / "Pulumi.dev.yaml").write_text((REPO / "Pulumi.dev.yaml").read_text())
    prod = yaml.safe_load((REPO / "Pulumi.prod.yaml").read_text())
    prod["config"]["gpu-runners:cluster"]["deletionProtection"] = prod_deletion_protection
    (tmp_path / "Pulumi.prod.yaml").write_text(yaml.safe_dump(prod))
    return tmp_path


def test_the_github_plan_step_plans_every_stack_file_into_the_job_summary(workflow, tmp_path):
    (step,) = [s for s in workflow["jobs"]["plan"]["steps"] if s.get("name") == "Offline plan"]
    summary = tmp_path / "summary.md"
    status, output = run_ci_script(
        step["run"], stack_files(tmp_path), {"GITHUB_STEP_SUMMARY": str(summary)}
    )
    assert status == 0, output
    text = summary.read_text()
    assert "### Offline plan: Pulumi.dev.yaml (stack dev)" in text
    assert "### Offline plan: Pulumi.prod.yaml (stack prod)" in text
    dev, prod = len(run_program().resources), len(run_program(stack="prod").resources)
    assert f"All {len(POLICIES)} rules that apply pass on the {dev} resources." in text
    rules = len(POLICIES)
    assert (
        f"0 mandatory and 1 advisory violations of the {rules} rules, on the {prod} resources:"
        in (text)
    )


def test_the_gitlab_plan_job_runs_for_fork_merge_requests_and_keeps_a_failing_plan(
    gitlab, tmp_path
):
    plan = gitlab["plan"]
    assert rules(plan) == [
        '$CI_PIPELINE_SOURCE == "merge_request_event" '
        "&& $CI_MERGE_REQUEST_SOURCE_PROJECT_ID != $CI_MERGE_REQUEST_PROJECT_ID"
    ]
    assert "id_tokens" not in plan and plan.get("extends") != ".pulumi"
    assert plan["artifacts"]["paths"] == ["plan.md"] and plan["artifacts"]["when"] == "always"
    (script,) = [s for s in plan["script"] if "infra.tools.plan" in s]
    status, output = run_ci_script(script, stack_files(tmp_path, False), {})
    assert status == 1, output
    text = (tmp_path / "plan.md").read_text()
    assert "### Offline plan: Pulumi.dev.yaml (stack dev)" in text
    assert "| mandatory | `prod-clusters-have-deletion-protection` |" in text


def test_up_runs_only_on_push_to_main(workflow):
    up = workflow["jobs"]["up"]
    assert up["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    (pulumi,) = steps_using(up, "pulumi/actions")
    assert pulumi["with"]["command"] == "up"


def test_destroy_runs_only_when_dispatched_and_confirmed(workflow):
    destroy = workflow["jobs"]["destroy"]
    confirmed = "inputs.confirm == format('destroy {0}', inputs.stack)"
    assert destroy["if"] == f"github.event_name == 'workflow_dispatch' && {confirmed}"
    assert "pulumi destroy" in run_text(destroy)
    assert "--exclude-protected" in run_text(destroy)
    refused = workflow["jobs"]["destroy-refused"]
    assert "inputs.confirm != format('destroy {0}', inputs.stack)" in refused["if"]
    assert "exit 1" in run_text(refused)
    others = {n: j for n, j in workflow["jobs"].items() if n != "destroy"}
    for name, job in others.items():
        assert "pulumi destroy" not in run_text(job), name
        for step in steps_using(job, "pulumi/actions"):
            assert step.get("with", {}).get("command") != "destroy", name


def test_deployments_of_a_stack_run_one_at_a_time_and_are_never_cancelled(workflow):
    up, destroy = workflow["jobs"]["up"], workflow["jobs"]["destroy"]
    assert "PULUMI_STACK" in up["concurrency"]["group"]
    assert "PULUMI_STACK" in destroy["concurrency"]["group"]
    assert up["concurrency"]["cancel-in-progress"] is False
    assert destroy["concurrency"]["cancel-in-progress"] is False
    assert "concurrency" in workflow["jobs"]["preview"]


def test_only_cloud_jobs_get_an_oidc_token_and_they_use_workload_identity(workflow):
    for name, job in workflow["jobs"].items():
        cloud = name in {"preview", "up", "destroy"}
        assert (job["permissions"].get("id-token") == "write") is cloud, name
        if cloud:
            (auth,) = steps_using(job, "google-github-actions/auth")
            assert set(auth["with"]) == {"workload_identity_provider", "service_account"}
            (gcloud,) = steps_using(job, "google-github-actions/setup-gcloud")
            assert gcloud["with"]["install_components"] == "gke-gcloud-auth-plugin"


def test_previews_act_as_the_previewer_and_only_up_and_destroy_as_the_deployer(workflow, gitlab):
    def github_account(name: str) -> str:
        (auth,) = steps_using(workflow["jobs"][name], "google-github-actions/auth")
        return auth["with"]["service_account"]

    assert github_account("preview") == "${{ vars.GCP_PREVIEWER_SERVICE_ACCOUNT }}"
    assert (
        github_account("up")
        == github_account("destroy")
        == ("${{ vars.GCP_DEPLOYER_SERVICE_ACCOUNT }}")
    )
    assert '--service-account="$GCP_SERVICE_ACCOUNT"' in "\n".join(
        gitlab[".pulumi"]["before_script"]
    )
    assert gitlab["preview"]["variables"]["GCP_SERVICE_ACCOUNT"] == (
        "$GCP_PREVIEWER_SERVICE_ACCOUNT"
    )
    for name in ("up", "destroy"):
        assert gitlab[name]["variables"]["GCP_SERVICE_ACCOUNT"] == "$GCP_DEPLOYER_SERVICE_ACCOUNT"


def rules(job: dict) -> list[str]:
    return [rule["if"] for rule in job["rules"]]


def test_gitlab_preview_runs_only_for_merge_requests_from_this_project(gitlab):
    assert rules(gitlab["preview"]) == [
        '$CI_PIPELINE_SOURCE == "merge_request_event" '
        "&& $CI_MERGE_REQUEST_SOURCE_PROJECT_ID == $CI_MERGE_REQUEST_PROJECT_ID"
    ]
    assert any("pulumi preview" in line for line in gitlab["preview"]["script"])
    assert gitlab["preview"]["artifacts"]["expose_as"] == "pulumi preview"


def test_gitlab_up_runs_only_on_the_default_branch(gitlab):
    assert rules(gitlab["up"]) == [
        '$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH && $CI_PIPELINE_SOURCE == "push"'
    ]
    assert gitlab["up"]["needs"] == ["test"]


def test_gitlab_destroy_is_manual_and_confirmed(gitlab):
    destroy = gitlab["destroy"]
    assert destroy["rules"] == [
        {"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", "when": "manual", "allow_failure": True}
    ]
    script = "\n".join(destroy["script"])
    assert '"$CONFIRM_DESTROY" != "destroy $PULUMI_STACK"' in script
    assert script.index("exit 1") < script.index("pulumi destroy")
    for name, job in gitlab.items():
        if isinstance(job, dict) and "script" in job and name != "destroy":
            assert "pulumi destroy" not in "\n".join(job["script"]), name


def test_gitlab_deployments_share_a_resource_group(gitlab):
    assert gitlab["up"]["resource_group"] == gitlab["destroy"]["resource_group"]
    assert "$PULUMI_STACK" in gitlab["up"]["resource_group"]


def test_gitlab_authenticates_with_an_id_token_through_workload_identity(gitlab):
    base = gitlab[".pulumi"]
    aud = base["id_tokens"]["GCP_ID_TOKEN"]["aud"]
    assert aud == "https://iam.googleapis.com/$GCP_WORKLOAD_IDENTITY_PROVIDER"
    setup = "\n".join(base["before_script"])
    assert "gcloud iam workload-identity-pools create-cred-config" in setup
    assert "--credential-source-file" in setup
    for job in ("preview", "up", "destroy"):
        assert gitlab[job]["extends"] == ".pulumi"
    assert README_TEST_COMMAND in gitlab["test"]["script"][0]


def dev_runner_labels() -> list[str]:
    config = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())["config"]
    return config["gpu-runners:runners"][0]["labels"]


def test_github_example_trains_on_the_dev_runner_and_keeps_the_report():
    example = load(GITHUB_EXAMPLE)
    assert "setup-runner" not in example["jobs"]
    train = example["jobs"]["train"]
    assert train["runs-on"] == ["self-hosted", *dev_runner_labels()]
    assert "dvc pull" in run_text(train)
    assert "dvc repro" in run_text(train)
    report = example["jobs"]["report"]
    assert report["needs"] == "train"
    assert "cml comment update --target=pr --publish report.md" in run_text(report)
    assert "dvc metrics diff main" in run_text(report)


def test_arc_example_targets_the_scale_set_and_brings_its_own_tools():
    train = load(GITHUB_ARC_EXAMPLE)["jobs"]["train"]
    # Scale sets register their name and labels only; `self-hosted` would never match. The
    # labels are those of the engine-arc runner the README configures, none of the dev CML
    # runner's (a job for both kinds of labels would run on either).
    assert train["runs-on"] == readme_runner_labels("arc")
    assert not set(train["runs-on"]) & set(dev_runner_labels())
    assert [s["uses"].split("@")[0] for s in train["steps"] if "uses" in s] == [
        "actions/checkout",
        "actions/setup-python",
        "iterative/setup-cml",
        "actions/upload-artifact",
    ]
    text = run_text(train)
    assert "sudo" not in text
    assert '"dvc[gs]' in text and "dvc pull" in text and "dvc repro" in text
    assert "/usr/local/nvidia/bin/nvidia-smi" in text
    assert load(GITHUB_ARC_EXAMPLE)["jobs"]["report"] == load(GITHUB_EXAMPLE)["jobs"]["report"]


def test_gitlab_example_trains_on_the_dev_runner_and_keeps_the_report():
    example = load(GITLAB_EXAMPLE)
    assert "setup-runner" not in example
    assert example["stages"] == ["train", "report"]
    train = example["train"]
    assert train["tags"] == dev_runner_labels() == readme_runner_labels("gitlab")
    # Every variable the example reads that GitLab does not set is in its header and the README.
    header = GITLAB_EXAMPLE.read_text().split("stages:")[0]
    assert "CML_PAT" in header and "`CML_PAT`" in manual()
    assert train["script"] == ["dvc pull", "dvc repro --force"]
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in str(train)
    # A job lost with a reclaimed Spot node, or with its runner manager, is retried once.
    assert train["retry"] == {
        "max": 1,
        "when": ["runner_system_failure", "runner_interrupted", "stuck_or_timeout_failure"],
    }
    # Half an hour of waiting for a GPU node still leaves an hour and a half to train.
    poll_timeout_minutes = gitlab_runner.POLL_TIMEOUT_SECONDS // 60
    assert train["timeout"] == "2h" and 120 - poll_timeout_minutes >= 90
    report = "\n".join(example["report"]["script"])
    assert "cml comment update --target=pr --publish report.md" in report


def test_preview_and_up_run_the_policy_pack(workflow, gitlab):
    for name in ("preview", "up"):
        (pulumi,) = steps_using(workflow["jobs"][name], "pulumi/actions")
        assert pulumi["with"]["policyPacks"] == "policy", name
        assert "policy/venv/bin/pip install -r policy/requirements.txt" in run_text(
            workflow["jobs"][name]
        )
        assert any("--policy-pack policy" in line for line in gitlab[name]["script"]), name
    assert "policy/requirements.txt" in "\n".join(gitlab[".pulumi"]["before_script"])


def test_the_preview_carries_a_cost_estimate_against_the_base_branch(workflow, gitlab):
    steps = workflow["jobs"]["preview"]["steps"]
    (estimate,) = [s for s in steps if s.get("name") == "Cost estimate"]
    assert steps.index(estimate) > steps.index(
        steps_using(workflow["jobs"]["preview"], "pulumi/actions")[0]
    )
    assert (
        "python -m infra.tools.estimate" in estimate["run"]
        and "--base base-stack.yaml" in estimate["run"]
    )
    # One comment, updated by each run, found by its heading (estimate.md starts with it).
    assert ".github/scripts/pr-comment.sh estimate.md" in estimate["run"]
    assert "### Cost estimate:" in estimate_markdown()
    assert workflow["jobs"]["preview"]["permissions"]["pull-requests"] == "write"
    script = "\n".join(gitlab["preview"]["script"])
    assert "python -m infra.tools.estimate" in script and "--base base-stack.yaml" in script
    assert "estimate.md" in gitlab["preview"]["artifacts"]["paths"]


def test_the_rerun_workflow_runs_once_after_a_failed_mlops_run_with_the_least_permissions():
    rerun = load(GITHUB_RERUN)
    assert rerun["on"] == {"workflow_run": {"workflows": ["MLOps"], "types": ["completed"]}}
    assert load(GITHUB_EXAMPLE)["name"] == load(GITHUB_ARC_EXAMPLE)["name"] == "MLOps"
    assert rerun["permissions"] == {"contents": "read", "actions": "write"}
    job = rerun["jobs"]["rerun"]
    condition = " ".join(job["if"].split())
    assert condition == (
        "(github.event.workflow_run.conclusion == 'failure' "
        "|| github.event.workflow_run.conclusion == 'cancelled') "
        "&& github.event.workflow_run.run_attempt == 1 "
        "&& github.event.workflow_run.head_repository.full_name == github.repository"
    )
    assert "python3 .github/scripts/rerun_lost_jobs.py" in run_text(job)


ZIZMOR_PATHS = [
    ".github/workflows/",
    *sorted(glob.glob("examples/*/.github/workflows/", root_dir=REPO)),
]


def test_every_workflow_passes_zizmor_and_ci_runs_it():
    # The GitHub Actions security linter, offline: unpinned actions, persisted credentials,
    # template injection, dangerous triggers. A finding kept on purpose carries its reason
    # inline (`# zizmor: ignore[...]`).
    zizmor = Path(sys.executable).parent / "zizmor"
    result = subprocess.run(
        [str(zizmor), "--offline", "--format", "plain", *ZIZMOR_PATHS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(ZIZMOR_PATHS) == 3
    command = ".venv/bin/zizmor --offline .github/workflows/ examples/*/.github/workflows/"
    assert command in (REPO / ".ci" / "run").read_text()


def test_the_one_finding_kept_says_why():
    rerun = (REPO / "examples/github/.github/workflows/rerun-lost-jobs.yml").read_text()
    assert rerun.count("zizmor: ignore") == 1
    ignored = rerun.index("# zizmor: ignore[dangerous-triggers]")
    assert "it runs no code of that run" in rerun[:ignored]


def test_no_passphrase_reaches_ci(workflow, gitlab):
    # The stack's secrets provider is its KMS key; CI's accounts may decrypt with it.
    for path in (GITHUB_WORKFLOW, REPO / ".gitlab-ci.yml"):
        assert "PULUMI_CONFIG_PASSPHRASE" not in path.read_text(), path.name
    readme = manual()
    assert "leave it unprotected" not in readme
    assert "gh secret set PULUMI_CONFIG_PASSPHRASE" not in readme


def test_both_forges_run_one_pinned_pulumi_cli(workflow):
    pinned = workflow["env"]["PULUMI_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned)
    assert load(GITLAB_CI)["variables"]["PULUMI_VERSION"] == pinned
    for name in ("preview", "up", "destroy"):
        for step in steps_using(workflow["jobs"][name], "pulumi/actions"):
            assert step["with"]["pulumi-version"] == "${{ env.PULUMI_VERSION }}", name


def test_a_failed_preview_says_so_on_both_forges(workflow, gitlab):
    steps = workflow["jobs"]["preview"]["steps"]
    (outcome,) = [s for s in steps if s.get("name") == "Preview outcome"]
    assert outcome["if"] == "${{ !cancelled() }}"
    assert outcome["env"]["OUTCOME"] == "${{ steps.preview.outcome }}"
    assert steps_using(workflow["jobs"]["preview"], "pulumi/actions")[0]["id"] == "preview"
    assert gitlab["preview"]["artifacts"]["when"] == "always"


def test_pr_comments_update_only_this_workflows_own_comment():
    script = (REPO / ".github/scripts/pr-comment.sh").read_text()
    assert 'select(.user.login == \\"github-actions[bot]\\")' in script


def test_a_destroy_waits_in_a_group_no_push_can_cancel(workflow):
    up, destroy = workflow["jobs"]["up"], workflow["jobs"]["destroy"]
    assert up["concurrency"]["group"] != destroy["concurrency"]["group"]
    assert destroy["concurrency"]["group"].startswith("pulumi-destroy-")


def test_gitlab_deploys_to_an_environment_so_an_outdated_up_is_dropped(gitlab):
    up = gitlab["up"]
    assert up["environment"]["name"] == "pulumi/$PULUMI_STACK"
    assert up["resource_group"] == "pulumi-$PULUMI_STACK"
    # The README names the project setting the environment relies on.
    assert "Prevent outdated deployment jobs" in manual()


def test_gitlab_writes_the_cost_estimate_before_a_preview_that_may_fail(gitlab):
    script = gitlab["preview"]["script"]
    estimate = next(i for i, line in enumerate(script) if "infra.tools.estimate" in line)
    preview = next(i for i, line in enumerate(script) if line.startswith("pulumi preview"))
    assert estimate < preview
    assert gitlab["preview"]["artifacts"]["when"] == "always"


@cache
def estimate_markdown() -> str:
    """What the cost estimate step writes to estimate.md for the dev stack."""
    result = subprocess.run(
        [sys.executable, "-m", "infra.tools.estimate", "Pulumi.dev.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_the_comment_script_finds_a_comment_by_the_first_line_of_its_file(tmp_path):
    """pr-comment.sh keys a comment on the file's heading up to its colon; run with a fake gh."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    # gh api ... --jq <filter>: answers with the filter, so the test sees what it selects.
    (bin_dir / "gh").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "gh").chmod(0o755)
    body = tmp_path / "estimate.md"
    body.write_text(estimate_markdown())
    subprocess.run(
        [str(REPO / ".github/scripts/pr-comment.sh"), str(body)],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "GITHUB_REPOSITORY": "o/r", "PR": "7"},
        check=True,
    )
    *lookup, post = calls.read_text().splitlines()
    assert 'startswith("### Cost estimate")' in "\n".join(lookup)
    assert 'select(.user.login == "github-actions[bot]")' in "\n".join(lookup)
    # No comment of its own yet (the fake gh found none): a new one is posted.
    assert post == f"pr comment 7 --body-file {body}"


def readme_runner_labels(kind: str) -> list[str]:
    """The labels of the runner the README's example config gives for an engine or forge."""
    readme = manual()
    for block in re.findall(r"```yaml\n(.+?)```", readme, re.DOTALL):
        config = yaml.safe_load(block)
        if not isinstance(config, dict) or "gpu-runners:runners" not in config:
            continue
        for runner in config["gpu-runners:runners"]:
            if runner.get("engine") == kind or runner.get("platform") == kind:
                return runner["labels"]
    raise AssertionError(f"the README configures no {kind} runner")


CREDENTIALS = 'infra.tools.cluster_credentials "Pulumi.$PULUMI_STACK.yaml"'


def fake_gcloud(tmp_path) -> tuple[str, object]:
    """A `gcloud` on PATH that records its arguments, and where it records them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "gcloud-calls"
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    gcloud.chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin", calls


def test_every_cloud_job_signs_in_to_an_existing_gke_cluster_before_pulumi(workflow, gitlab):
    for name in ("preview", "up", "destroy"):
        steps = workflow["jobs"][name]["steps"]
        order = [s.get("uses", "").split("@")[0] or s.get("run", "") for s in steps]
        signs_in = next(i for i, text in enumerate(order) if CREDENTIALS in text)
        assert order.index("google-github-actions/setup-gcloud") < signs_in, name
        # The step runs the program's virtualenv.
        assert next(i for i, text in enumerate(order) if "-m venv .venv" in text) < signs_in
        first_pulumi = next(
            i for i, text in enumerate(order) if "pulumi/actions" in text or "pulumi " in text
        )
        assert signs_in < first_pulumi, name
    before = gitlab[".pulumi"]["before_script"]
    signs_in = next(i for i, line in enumerate(before) if CREDENTIALS in line)
    assert next(i for i, line in enumerate(before) if "gcloud auth login" in line) < signs_in
    assert next(i for i, line in enumerate(before) if "-m venv .venv" in line) < signs_in
    assert signs_in < next(i for i, line in enumerate(before) if "pulumi login" in line)


def credentials_script(workflow: dict, gitlab: dict, forge: str) -> str:
    if forge == "github":
        (step,) = [s for s in workflow["jobs"]["up"]["steps"] if CREDENTIALS in s.get("run", "")]
        return step["run"]
    (script,) = [s for s in gitlab[".pulumi"]["before_script"] if CREDENTIALS in s]
    return script


@pytest.mark.parametrize("forge", ["github", "gitlab"])
def test_the_credentials_step_signs_in_to_an_existing_gke_cluster(
    workflow, gitlab, forge, tmp_path
):
    path, calls = fake_gcloud(tmp_path)
    team = {
        "config": {
            "gcp:project": "ml-team-sandbox",
            "gpu-runners:existingCluster": {
                "context": "gke_ml-team-sandbox_europe-west6_team-cluster",
                "gke": {"name": "team-cluster", "location": "europe-west6"},
            },
        }
    }
    (tmp_path / "Pulumi.team.yaml").write_text(yaml.safe_dump(team))
    script = credentials_script(workflow, gitlab, forge)
    status, output = run_ci_script(script, tmp_path, {"PATH": path, "PULUMI_STACK": "team"})
    assert status == 0, output
    assert calls.read_text() == (
        "container clusters get-credentials team-cluster --location europe-west6 "
        "--project ml-team-sandbox\n"
    )


def test_the_credentials_step_does_nothing_for_a_stack_that_makes_its_cluster(
    workflow, gitlab, tmp_path
):
    # Both forges run the same command (the test above); the GitHub step stands for both.
    path, calls = fake_gcloud(tmp_path)
    stack_files(tmp_path)
    script = credentials_script(workflow, gitlab, "github")
    status, output = run_ci_script(script, tmp_path, {"PATH": path, "PULUMI_STACK": "dev"})
    assert status == 0, output
    assert "the stack makes its cluster" in output
    assert not calls.exists()
