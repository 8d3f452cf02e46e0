"""`python -m infra.tools.plan`: what a fork's pull request sees, from the stack file alone."""

import re
from pathlib import Path

import pytest
import yaml
from rules import POLICIES

from infra.tools import plan
from infra.tools.stack_file import read_config
from tests.harness import REPO, reveal, run_program
from tests.stacks import TWO_CLASSES

CIPHERTEXTS = {
    "gl-gpu": "v1:AAAAb3Jr0c2VjcmV0Z2w=:qZ8mXcY2tOoL0dP6n3Bf",
    "gpu-arc": "v1:AAAAb3Jr0c2VjcmV0YXJj:Wk2pRr7sVv1gH9eJ4yTq",
}


def write_stack(tmp_path: Path, name: str, config: dict) -> Path:
    path = tmp_path / f"Pulumi.{name}.yaml"
    path.write_text(yaml.safe_dump({"encryptionsalt": "v1:c2FsdA==:v1:abc:def", "config": config}))
    return path


def dev_config() -> dict:
    return read_config(REPO / "Pulumi.dev.yaml").values


@pytest.fixture(scope="module")
def fork_stack(tmp_path_factory) -> Path:
    """A user's stack file as committed: project, repositories, two encrypted tokens."""
    config = dev_config() | {
        "gcp:project": "ml-team-sandbox",
        "gpu-runners:runners": [
            {
                "name": "gl-gpu",
                "platform": "gitlab",
                "repository": "https://gitlab.com/ml-team/churn-model",
                "labels": ["gpu"],
            },
            {
                "name": "gpu-arc",
                "engine": "arc",
                "repository": "https://github.com/ml-team/churn-model",
                "labels": ["gpu-arc"],
            },
        ],
        "gpu-runners:runnerTokens": {
            name: {"secure": ciphertext} for name, ciphertext in CIPHERTEXTS.items()
        },
    }
    return write_stack(tmp_path_factory.mktemp("fork"), "fork", config)


def run_plan(capsys, path: Path) -> tuple[int, str]:
    status = plan.main([str(path)])
    return status, capsys.readouterr().out


def manifests_in(text: str) -> list[dict]:
    """The YAML documents of the plan's Kubernetes manifests section."""
    section = text.split("#### Kubernetes manifests", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return [doc for doc in yaml.safe_load_all(block) if doc]


def test_the_dev_stack_file_plans_with_stand_ins_for_what_the_quickstart_sets(capsys):
    status, text = run_plan(capsys, REPO / "Pulumi.dev.yaml")
    assert status == 0
    assert text.startswith("### Offline plan: Pulumi.dev.yaml (stack dev)")
    assert (
        "planned with stand-ins: `gcp:project`, `gpu-runners:runners[0].repository`, "
        "`gpu-runners:runnerTokens`." in text
    )
    resources = len(run_program().resources)
    assert f"All {len(POLICIES)} rules that apply pass on the {resources} resources." in text
    assert "| `gcp:container/nodePool:NodePool` | `gke-gpu` |" in text
    assert "project: your-project-id" in text


def test_encrypted_values_show_as_placeholders_never_as_ciphertext(capsys, fork_stack):
    status, text = run_plan(capsys, fork_stack)
    assert status == 0
    for ciphertext in CIPHERTEXTS.values():
        assert ciphertext not in text and ciphertext.split(":")[1] not in text
    assert "Not in the stack file" not in text
    secrets = [m for m in manifests_in(text) if m["kind"] == "Secret"]
    assert {m["metadata"]["name"]: m["stringData"] for m in secrets} == {
        # The token of the runner the stack creates is not known on a first preview: the
        # whole of stringData is one secret unknown then.
        "gl-gpu-token": "[secret]",
        "gpu-arc-token": {"github_token": "[secret]"},
    }


def test_a_secret_token_plans_a_gitlab_runner_that_the_stack_creates_and_says_so(
    capsys, fork_stack
):
    _, text = run_plan(capsys, fork_stack)
    assert "| `gitlab:index/userRunner:UserRunner` | `gl-gpu` |" in text
    assert "each `gitlab-runner` runner is planned with a token that creates the runner" in text


def test_the_manifests_are_those_the_program_registers(capsys, fork_stack):
    """The plan and the tests run the same engine: the same objects, with secrets hidden."""
    _, text = run_plan(capsys, fork_stack)
    config = yaml.safe_load(fork_stack.read_text())["config"]
    program = run_program(
        config={k: v for k, v in config.items() if k != "gpu-runners:runnerTokens"},
        secrets={"gpu-runners:runnerTokens": {"gl-gpu": "plan-test", "gpu-arc": "plan-test"}},
        first_preview=True,
    )
    registered = [
        plan.shown(reveal(r.inputs)) for r in program.resources if plan.is_kubernetes_object(r)
    ]
    planned = manifests_in(text)
    assert len(planned) == len(registered)
    for manifest in planned:
        if manifest["kind"] == "Secret":
            continue
        assert manifest in registered, manifest["metadata"]["name"]


def test_helm_values_are_shown_with_multi_line_config_as_a_block(capsys, fork_stack):
    _, text = run_plan(capsys, fork_stack)
    assert "gl-gpu: chart <code>gitlab-runner</code> 0.86.0, namespace <code>gl-gpu</code>" in text
    assert "  config: |\n    [[runners]]" in text


def test_a_mandatory_violation_is_listed_and_fails_the_plan(capsys, tmp_path):
    config = yaml.safe_load((REPO / "Pulumi.prod.yaml").read_text())["config"]
    config["gcp:project"] = "ml-team-prod"
    config["gpu-runners:cluster"]["deletionProtection"] = False
    status, text = run_plan(capsys, write_stack(tmp_path, "prod", config))
    assert status == 1
    assert (
        "| mandatory | `prod-clusters-have-deletion-protection` | `gke` | Cluster 'gke' in "
        "stack 'prod' has deletion protection off" in text
    )


def test_refused_settings_stop_the_plan_with_the_settings_error(capsys, fork_stack, tmp_path):
    config = yaml.safe_load(fork_stack.read_text())["config"]
    config["gpu-runners:gpuPool"]["maxNodes"] = -1
    status, text = run_plan(capsys, write_stack(tmp_path, "broken", config))
    assert status == 2
    assert "gpu-runners:gpuPool.maxNodes" in text and "-1" in text
    assert not any(ciphertext in text for ciphertext in CIPHERTEXTS.values())


def test_a_missing_stack_file_is_named(capsys, tmp_path):
    status, text = run_plan(capsys, tmp_path / "Pulumi.nope.yaml")
    assert status == 2
    assert "The stack file cannot be read: Pulumi.nope.yaml: no such file" in text


CIPHERTEXT = "v1:AAAAc2VjcmV0c2FsdA==:bGVha2VkLWNpcGhlcnRleHQ="


def fork_config(fork_stack: Path) -> dict:
    return yaml.safe_load(fork_stack.read_text())["config"]


@pytest.mark.parametrize(
    "place",
    ["runner label", "node selector", "cluster name", "CI repository", "whole key", "list item"],
)
def test_ciphertext_anywhere_in_the_stack_file_never_reaches_the_output(
    capfd, tmp_path, fork_stack, place
):
    config = fork_config(fork_stack)
    secure = {"secure": CIPHERTEXT}
    runner = config["gpu-runners:runners"][1]
    if place == "runner label":
        runner["labels"] = ["gpu-arc", secure]
    elif place == "node selector":
        runner["nodeSelector"] = {"gpu": "true", "pool": secure}
    elif place == "cluster name":
        config["gpu-runners:cluster"]["name"] = secure
    elif place == "CI repository":
        config["gpu-runners:ci"] = {"githubRepository": secure}
    elif place == "whole key":
        config["gpu-runners:gpuPool"] = secure
    else:
        config["gpu-runners:gpuPool"]["zones"] = [secure]
    plan.main([str(write_stack(tmp_path, "leak", config))])
    captured = capfd.readouterr()
    assert CIPHERTEXT.split(":")[1] not in captured.out + captured.err


def test_a_stack_file_that_is_not_yaml_is_refused_without_quoting_it(capfd, tmp_path):
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(
        f"config:\n  gpu-runners:runnerTokens:\n    cml-runner: {{secure: {CIPHERTEXT}\n"
    )
    status = plan.main([str(path)])
    captured = capfd.readouterr()
    assert status == 2
    assert "Pulumi.bad.yaml is not valid YAML at line" in captured.out
    assert CIPHERTEXT.split(":")[1] not in captured.out + captured.err


def test_keys_read_as_pulumi_reads_them(capsys, tmp_path):
    """No namespace means the project's; `<ns>:config:<key>` is the old spelling of a key."""
    config = yaml.safe_load((REPO / "Pulumi.prod.yaml").read_text())["config"]
    cluster = config.pop("gpu-runners:cluster")
    config["cluster"] = cluster | {"deletionProtection": False}
    config["gpu-runners:config:gpuPool"] = config.pop("gpu-runners:gpuPool")
    status, text = run_plan(capsys, write_stack(tmp_path, "prod", config))
    assert status == 1
    assert "| mandatory | `prod-clusters-have-deletion-protection` | `gke` |" in text


def test_yaml_1_2_scalars_stay_strings_as_pulumi_reads_them(capsys, tmp_path, fork_stack):
    """`on` is a string to Pulumi (YAML 1.2), not the boolean PyYAML's YAML 1.1 makes it."""
    config = fork_config(fork_stack)
    config["gpu-runners:runners"][1]["labels"] = ["gpu-arc", "LABEL_ON"]
    path = write_stack(tmp_path, "labels", config)
    path.write_text(path.read_text().replace("- LABEL_ON", "- on"))
    status, text = run_plan(capsys, path)
    assert status == 0, text
    assert "scaleSetLabels:\n- gpu-arc\n- 'on'\n" in text


def test_a_secret_github_app_is_planned(capsys, tmp_path, fork_stack):
    config = fork_config(fork_stack)
    config["gpu-runners:runnerTokens"]["gpu-arc"] = {
        field: {"secure": CIPHERTEXT} for field in ("appId", "installationId", "privateKey")
    }
    status, text = run_plan(capsys, write_stack(tmp_path, "app", config))
    assert status == 0, text
    (secret,) = [m for m in manifests_in(text) if m["metadata"]["name"] == "gpu-arc-token"]
    assert secret["stringData"] == dict.fromkeys(
        ["github_app_id", "github_app_installation_id", "github_app_private_key"], "[secret]"
    )


def test_tokens_set_as_one_secret_are_planned_with_stand_ins(capsys, tmp_path, fork_stack):
    config = fork_config(fork_stack)
    config["gpu-runners:runnerTokens"] = {"secure": CIPHERTEXT}
    status, text = run_plan(capsys, write_stack(tmp_path, "whole", config))
    assert status == 0, text
    assert "not readable here, so planned with stand-ins: `gpu-runners:runnerTokens`." in text


def test_the_two_class_example_plans_each_class_with_its_fallback(capsys, tmp_path):
    # docs/gpu-classes.md's example, as a stack file of its own.
    config = {key: value for key, value in TWO_CLASSES.items() if value is not None}
    status, text = run_plan(capsys, write_stack(tmp_path, "training", config))
    assert status == 0, text
    # The on-demand A100 class draws the Spot advisory; no mandatory rule fails.
    assert "0 mandatory and 1 advisory violations" in text
    for pool in ("gke-l4", "gke-l4-on-demand", "gke-a100"):
        assert f"| `gcp:container/nodePool:NodePool` | `{pool}` |" in text
    classes = {
        doc["metadata"]["name"]: doc["spec"]["priorities"]
        for doc in manifests_in(text)
        if doc["kind"] == "ComputeClass"
    }
    assert classes == {
        "l4": [{"nodepools": ["l4"]}, {"nodepools": ["l4-on-demand"]}],
        "a100": [{"nodepools": ["a100"]}],
    }


def test_several_stack_files_plan_in_one_run_as_each_alone(capsys, tmp_path):
    # CI plans every stack file in one process: nothing of one stack's run leaks into the next.
    broken = yaml.safe_load((REPO / "Pulumi.prod.yaml").read_text())["config"]
    broken["gpu-runners:gpuPool"]["zones"] = ["europe-west6-a"]
    files = [
        REPO / "Pulumi.prod.yaml",
        write_stack(tmp_path, "broken", broken),
        REPO / "Pulumi.dev.yaml",
    ]
    alone = [run_plan(capsys, path) for path in files]
    status = plan.main([str(path) for path in files])
    together = capsys.readouterr().out
    assert status == max(s for s, _ in alone) == 2
    assert together == "".join(text for _, text in alone)
