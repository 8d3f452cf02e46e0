"""Engine gitlab-runner: GitLab's runner manager on the system pool, one GPU pod per CI job."""

import hashlib
import json
import re
import tomllib

import pytest

from tests.charts import unread_values
from tests.harness import (
    CREATED_RUNNER_TOKEN,
    MIRROR,
    REPO,
    RUNNERS,
    TEST_GITLAB_PROJECT_ID,
    TOKENS,
    is_secret,
    reveal,
    run_program,
    run_rejected_program,
)
from tests.stacks import GITLAB

RELEASE = "kubernetes:helm.sh/v3:Release"
SECRET = "kubernetes:core/v1:Secret"
USER_RUNNER = "gitlab:index/userRunner:UserRunner"
CHART_FILES = REPO / "tests" / "schemas" / "gitlab-runner-0.86.0"
# Made-up tokens in GitLab's shapes: a runner's own, and a personal access token.
RUNNER_TOKEN = "glrt-" + "r" * 24
ACCESS_TOKEN = "glpat-" + "a" * 20


@pytest.fixture(scope="module")
def given_token():
    """The runner made in GitLab's UI, its glrt- token given to the stack."""
    return run_program(GITLAB, secrets={TOKENS: {"gl-gpu": RUNNER_TOKEN}})


@pytest.fixture(scope="module")
def created():
    """The runner created by the stack, from a token allowed to create runners."""
    return run_program(GITLAB, secrets={TOKENS: {"gl-gpu": ACCESS_TOKEN}})


def chart_values(program) -> dict:
    return reveal(program.one(RELEASE, "gl-gpu").inputs["values"])


# The package index's keyring command, executable (the executor's own config_map volumes take
# no mode).
KEYRING_VOLUME = {"name": "keyring"}
KEYRING_MOUNT = {
    "name": "keyring",
    "mountPath": "/usr/local/sbin/keyring",
    "subPath": "keyring",
    "readOnly": True,
}


def runner_config(program) -> dict:
    (runner,) = tomllib.loads(chart_values(program)["runners"]["config"])["runners"]
    return runner


def test_the_release_is_gitlabs_chart_pinned_in_the_runners_namespace(given_token):
    release = given_token.one(RELEASE, "gl-gpu").inputs
    assert release["chart"] == "gitlab-runner"
    assert release["version"] == "0.86.0"
    assert release["repositoryOpts"] == {"repo": "https://charts.gitlab.io"}
    assert release["namespace"] == "gl-gpu"
    values = chart_values(given_token)
    assert values["gitlabUrl"] == "https://gitlab.com"
    assert values["runners"]["secret"] == "gl-gpu-token"
    # The chart would name the manager gl-gpu-gitlab-runner (templates/_helpers.tpl, fullname).
    assert values["fullnameOverride"] == "gl-gpu"
    assert given_token.outputs["runners"]["gl-gpu"]["workload"] == "Deployment/gl-gpu"


def test_the_manager_waits_on_the_system_pool_with_rights_in_its_namespace_only(given_token):
    values = chart_values(given_token)
    assert values["nodeSelector"] == {"gpu": "false"}
    assert values["rbac"]["create"] is True
    assert values["rbac"]["clusterWideAccess"] is False
    rules = values["rbac"]["rules"]
    # An empty list would make the chart grant every verb on every core resource.
    assert rules
    assert all("*" not in r["resources"] and "*" not in r["verbs"] for r in rules)
    assert values["serviceAccount"] == {"create": True, "name": "gl-gpu-manager"}
    assert values["podSecurityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_no_keda_no_arc_and_the_gpu_pool_can_rest_at_zero(given_token):
    charts = [r.inputs["chart"] for r in given_token.of_type(RELEASE)]
    assert charts == ["gitlab-runner"]
    assert not [r for r in given_token.resources if r.type.startswith("kubernetes:keda.sh/")]
    pool = given_token.one("gcp:container/nodePool:NodePool", "gke-gpu").inputs
    assert pool["autoscaling"]["totalMinNodeCount"] == 0


def test_job_pods_go_to_gpu_nodes_with_the_gpu_limit(given_token):
    runner = runner_config(given_token)
    assert runner["executor"] == "kubernetes"
    kubernetes = runner["kubernetes"]
    assert kubernetes["namespace"] == "gl-gpu"
    assert kubernetes["node_selector"] == {"gpu": "true", "cloud.google.com/compute-class": "gpu"}
    assert kubernetes["node_tolerations"] == {
        "nvidia.com/gpu=present": "NoSchedule",
        "cloud.google.com/compute-class=gpu": "NoSchedule",
    }
    assert runner["feature_flags"] == {
        "FF_USE_ADVANCED_POD_SPEC_CONFIGURATION": True,
        "FF_DISABLE_AUTOMATIC_TOKEN_ROTATION": True,
    }
    (patch,) = kubernetes["pod_spec"]
    assert patch["patch_type"] == "strategic"
    gpus = {"nvidia.com/gpu": "1"}
    assert json.loads(patch["patch"]) == {
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [
            KEYRING_VOLUME | {"configMap": {"name": "gl-gpu-package-index", "defaultMode": 0o555}}
        ],
        "containers": [
            {
                "name": "build",
                "volumeMounts": [KEYRING_MOUNT],
                "resources": {"requests": gpus, "limits": gpus},
            }
        ],
    }
    assert (kubernetes["cpu_request"], kubernetes["cpu_limit"]) == ("1", "1")
    assert (kubernetes["memory_request"], kubernetes["memory_limit"]) == ("2000Mi", "2000Mi")


def test_job_pods_use_cmls_gpu_image_the_dvc_identity_and_wait_for_a_new_gpu_node(given_token):
    kubernetes = runner_config(given_token)["kubernetes"]
    assert (
        kubernetes["image"]
        == f"{MIRROR}/mlops-kubernetes-docker-hub/iterativeai/cml:0-dvc3-base1-gpu"
    )
    assert kubernetes["helper_image"] == (
        f"{MIRROR}/mlops-kubernetes-gitlab/gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-v${{CI_RUNNER_VERSION}}"
    )
    assert kubernetes["service_account"] == "gl-gpu"
    account = given_token.one("kubernetes:core/v1:ServiceAccount", "gl-gpu").inputs["metadata"]
    assert account["annotations"]["iam.gke.io/gcp-service-account"].startswith(
        "mlops-kubernetes-runner@"
    )
    # Up to 15 minutes for a GPU node from zero, then the image pull; the default is 180 s.
    assert kubernetes["poll_timeout"] >= 20 * 60
    assert kubernetes["pod_annotations"] == {
        "cluster-autoscaler.kubernetes.io/safe-to-evict": "false"
    }


def test_job_pods_are_not_privileged(given_token):
    kubernetes = runner_config(given_token)["kubernetes"]
    assert kubernetes["privileged"] is False
    assert kubernetes["allow_privilege_escalation"] is False
    assert kubernetes["cap_drop"] == ["ALL"]
    assert "SYS_ADMIN" not in kubernetes["cap_add"]


def test_a_cpu_runner_has_no_gpu_patch_and_lands_on_the_cpu_runner_pool():
    program = run_program(
        {RUNNERS: [{"name": "gl-cpu", "platform": "gitlab", "gpus": 0, "cpu": "500m"}]},
        secrets={TOKENS: {"gl-cpu": RUNNER_TOKEN}},
    )
    (runner,) = tomllib.loads(
        reveal(program.one(RELEASE, "gl-cpu").inputs["values"])["runners"]["config"]
    )["runners"]
    kubernetes = runner["kubernetes"]
    assert kubernetes["node_selector"] == {"gpu": "false", "gpu-runners/cpu-jobs": "true"}
    assert kubernetes["node_tolerations"] == {"gpu-runners/cpu-jobs": "NoSchedule"}
    assert (
        kubernetes["image"] == f"{MIRROR}/mlops-kubernetes-docker-hub/iterativeai/cml:0-dvc3-base1"
    )
    (patch,) = kubernetes["pod_spec"]
    assert json.loads(patch["patch"]) == {
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [
            KEYRING_VOLUME | {"configMap": {"name": "gl-cpu-package-index", "defaultMode": 0o555}}
        ],
        "containers": [{"name": "build", "volumeMounts": [KEYRING_MOUNT]}],
    }
    # A token rotated by the runner would live only in the pod's memory; the flag lets the
    # patch apply.
    assert runner["feature_flags"] == {
        "FF_DISABLE_AUTOMATIC_TOKEN_ROTATION": True,
        "FF_USE_ADVANCED_POD_SPEC_CONFIGURATION": True,
    }


def test_the_manager_requests_resources_and_stays_on_its_node_while_jobs_run(given_token):
    values = chart_values(given_token)
    assert values["resources"] == {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    # The cluster autoscaler leaves its node alone (job pods have the same annotation).
    annotations = values["podAnnotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"


def test_a_restarted_manager_drains_its_jobs_instead_of_aborting_them(given_token):
    # GitLab Runner aborts jobs on SIGTERM and lets them finish on SIGQUIT; the stop hook
    # sends SIGQUIT through dumb-init and waits, within the grace period.
    values = chart_values(given_token)
    (shell, flag, script) = values["deploymentLifecycle"]["preStop"]["exec"]["command"]
    assert (shell, flag) == ("/bin/bash", "-c")
    # SIGQUIT first, so no new job starts while unregistering waits on GitLab.
    drain, unregister = script.index("kill -QUIT 1"), script.index("unregister --all-runners")
    assert drain < unregister < script.index("while kill -0 1")
    assert "timeout 60 /entrypoint unregister" in script
    assert values["terminationGracePeriodSeconds"] == 3600
    # A custom lifecycle replaces the chart's unregistering preStop, which the script keeps.
    helpers = (CHART_FILES / "templates" / "_helpers.tpl").read_text()
    assert "(empty .Values.deploymentLifecycle)" in helpers


def test_max_runners_is_how_many_jobs_run_at_once(given_token):
    assert chart_values(given_token)["concurrent"] == 2


def test_a_given_runner_token_lives_only_in_the_secret(given_token):
    secret = given_token.one(SECRET, "gl-gpu-token").inputs
    assert is_secret(secret["stringData"])
    assert reveal(secret["stringData"]) == {
        "runner-token": RUNNER_TOKEN,
        "runner-registration-token": "",
    }
    assert given_token.of_type(USER_RUNNER) == []
    for resource in given_token.resources:
        if resource.type != SECRET:
            assert RUNNER_TOKEN not in json.dumps(reveal(resource.inputs)), resource.name
    assert RUNNER_TOKEN not in json.dumps(given_token.outputs)


def test_the_stack_creates_the_runner_with_the_labels_as_tags(created):
    provider = created.one("pulumi:providers:gitlab", "gl-gpu-gitlab").inputs
    assert reveal(provider["baseUrl"]) == "https://gitlab.com/api/v4/"
    assert is_secret(provider["token"])
    runner = created.one(USER_RUNNER, "gl-gpu").inputs
    assert runner["runnerType"] == "project_type"
    assert runner["projectId"] == int(TEST_GITLAB_PROJECT_ID)
    assert runner["tagLists"] == ["gpu"]
    assert runner["untagged"] is False
    assert runner["locked"] is True
    secret = created.one(SECRET, "gl-gpu-token").inputs
    assert is_secret(secret["stringData"])
    assert reveal(secret["stringData"])["runner-token"] == CREATED_RUNNER_TOKEN
    for resource in created.resources:
        if resource.type not in (SECRET, "pulumi:providers:gitlab"):
            text = json.dumps(reveal(resource.inputs))
            assert ACCESS_TOKEN not in text and CREATED_RUNNER_TOKEN not in text, resource.name


@pytest.mark.parametrize(
    ("runner", "secrets", "message_part"),
    [
        (
            {},
            {"gl-gpu": "GR1348941" + "x" * 20},
            "runnerTokens.gl-gpu = [secret]: a runner registration token, which GitLab has "
            "deprecated",
        ),
        (
            {"mode": "always"},
            None,
            "runners[0].mode = 'always': gitlab-runner starts a pod for each job and keeps none "
            "waiting; allowed: on-demand, or set engine: cml",
        ),
        (
            {"platform": "github", "engine": "gitlab-runner"},
            None,
            "runners[0].engine = 'gitlab-runner': gitlab-runner runs GitLab CI jobs only",
        ),
        ({"idleTimeoutSeconds": 600}, None, "runners[0].idleTimeoutSeconds = 600: applies to"),
        (
            {"replicas": 2},
            None,
            "runners[0].replicas = 2: replicas applies to mode always; an on-demand runner "
            "scales from 0 to maxRunners. Remove replicas, or set mode: always and engine: cml",
        ),
    ],
    ids=["registration-token", "always", "on-github", "idle-timeout", "replicas"],
)
def test_settings_that_do_not_fit_gitlab_runner_are_refused(runner, secrets, message_part):
    config = {RUNNERS: [{"name": "gl-gpu", "platform": "gitlab"} | runner]}
    error, registered = run_rejected_program(config, secrets={TOKENS: secrets} if secrets else None)
    assert message_part in str(error)
    assert "GR1348941xxx" not in str(error)
    assert registered == []


def test_every_chart_value_given_is_one_the_chart_reads(given_token):
    assert unread_values(CHART_FILES, chart_values(given_token)) == []


def executor_keys() -> set[str]:
    source = (CHART_FILES / "runner-v18.9.0-kubernetes-config.go.txt").read_text()
    return set(re.findall(r'toml:"([a-z_]+)', source))


def test_every_executor_setting_written_is_one_gitlab_runner_reads(given_token):
    kubernetes = runner_config(given_token)["kubernetes"]
    assert set(kubernetes) <= executor_keys()
    for patch in kubernetes["pod_spec"]:
        assert set(patch) <= executor_keys()


def test_the_executor_check_catches_a_misspelt_setting():
    assert "poll_timeout" in executor_keys()
    assert "poll_timeouts" not in executor_keys()
    assert "node_tolerations" in executor_keys()


def test_a_new_token_restarts_the_manager_without_revealing_either(given_token):
    annotation = chart_values(given_token)["podAnnotations"]["gpu-runners/runner-token-sha256"]
    other = run_program(GITLAB, secrets={TOKENS: {"gl-gpu": "glrt-" + "s" * 24}})
    changed = chart_values(other)["podAnnotations"]["gpu-runners/runner-token-sha256"]
    assert len(annotation) == 16 and annotation != changed
    assert RUNNER_TOKEN[5:] not in annotation
    # Nothing secret in the values, so a preview shows them all.
    assert not is_secret(given_token.one(RELEASE, "gl-gpu").inputs["values"])


def test_a_gitlab_under_a_relative_url_root_is_reached_there():
    instance = "https://git.example.org/gitlab"
    runner = {
        "name": "gl-gpu",
        "platform": "gitlab",
        "labels": ["gpu"],
        "gitlabUrl": instance,
        "repository": f"{instance}/ml-team/churn-model",
    }
    given = run_program({RUNNERS: [runner]}, secrets={TOKENS: {"gl-gpu": RUNNER_TOKEN}})
    assert chart_values(given)["gitlabUrl"] == instance
    created = run_program({RUNNERS: [runner]}, secrets={TOKENS: {"gl-gpu": ACCESS_TOKEN}})
    provider = created.one("pulumi:providers:gitlab")
    assert reveal(provider.inputs["baseUrl"]) == f"{instance}/api/v4/"


@pytest.mark.parametrize(
    ("fields", "message_part"),
    [
        (
            {"repository": "https://git.example.org/other/ml-team/churn"},
            "is not under gitlabUrl (https://git.example.org/gitlab)",
        ),
        ({"platform": "github", "repository": "https://github.com/a/b"}, "only GitLab runners"),
    ],
)
def test_a_gitlab_url_that_does_not_fit_the_repository_is_refused(fields, message_part):
    runner = {
        "name": "gl-gpu",
        "platform": "gitlab",
        "labels": ["gpu"],
        "gitlabUrl": "https://git.example.org/gitlab",
        **fields,
    }
    error, registered = run_rejected_program(
        {RUNNERS: [runner]}, secrets={TOKENS: {"gl-gpu": RUNNER_TOKEN}}
    )
    assert registered == []
    assert message_part in str(error)


def test_the_manager_of_a_created_runner_restarts_with_the_token_gitlab_made(created):
    # The digest follows the token itself: a runner made anew (new project, deleted in GitLab,
    # `--replace`) brings a new token, and the manager, which reads it only at start, restarts.
    annotations = chart_values(created)["podAnnotations"]
    digest = hashlib.sha256(CREATED_RUNNER_TOKEN.encode()).hexdigest()[:16]
    assert annotations["gpu-runners/runner-token-sha256"] == digest
