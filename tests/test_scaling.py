"""KEDA starts every runner as a Job: one pod per CI job, none restarted, none stopped busy."""

import copy
import json
from functools import cache

import jsonschema
import pulumi
import pulumi_kubernetes as k8s
import pytest

from infra.engines import warm_capacity
from infra.engines.cml_runner import CmlRunner, CmlRunnerArgs, OnDemandScaling
from infra.engines.keda import CHART_VERSION
from tests.harness import (
    REPO,
    RUNNERS,
    fake_token,
    is_secret,
    read_yaml,
    reveal,
    run_components,
    run_program,
    run_rejected_program,
)
from tests.stacks import ALWAYS, POOL_OF_THREE, SHAPES

KEDA_SCHEMAS = REPO / "tests" / "schemas" / f"keda-{CHART_VERSION}"
RELEASE = "kubernetes:helm.sh/v3:Release"
SCALED_JOB = "kubernetes:keda.sh/v1alpha1:ScaledJob"
TRIGGER_AUTH = "kubernetes:keda.sh/v1alpha1:ClusterTriggerAuthentication"
KEDA_TYPES = (SCALED_JOB, TRIGGER_AUTH)
# Kinds whose controllers restart a pod's containers, or replace pods by count alone.
RESTARTING_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ScaledObject")
SAFE_TO_EVICT = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
DEV_TRIGGER = {
    "type": "github-runner",
    "metadata": {
        "owner": "ml-team",
        "repos": "churn-model",
        "runnerScope": "repo",
        "labels": "cml-runner",
        "targetWorkflowQueueLength": "1",
        "matchUnlabeledJobsWithUnlabeledRunners": "true",
    },
    "authenticationRef": {"name": "cml-runner-github", "kind": "ClusterTriggerAuthentication"},
}
OWN_PODS_TRIGGER = {
    "type": "kubernetes-workload",
    "metadata": {"podSelector": "app.kubernetes.io/instance=cml-runner", "value": "1"},
}
PARKED = {RUNNERS: [{"name": "cml-runner", "mode": "always", "replicas": 0}]}


@pytest.fixture(scope="module")
def dev():
    return run_program()


@pytest.fixture(scope="module")
def pool_of_three():
    return run_program(POOL_OF_THREE)


@pytest.fixture(scope="module")
def always():
    return run_program(ALWAYS)


@pytest.fixture(scope="module")
def parked():
    return run_program(PARKED)


def scaled_job_spec(program, name: str = "cml-runner") -> dict:
    return program.one(SCALED_JOB, name).inputs["spec"]


def container_args(spec: dict) -> list[str]:
    return spec["jobTargetRef"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_runner_pod_serves_one_job_and_is_never_restarted(shape):
    program = run_program(SHAPES[shape])
    # Warm hours' placeholders run no job: a Deployment scaled by KEDA is what they need.
    kinds = {
        r.type.rsplit(":", 1)[-1]
        for r in program.resources
        if r.inputs.get("metadata", {}).get("namespace") != warm_capacity.NAMESPACE
    }
    assert not kinds & set(RESTARTING_KINDS)
    for scaled_job in program.of_type(SCALED_JOB):
        job = scaled_job.inputs["spec"]["jobTargetRef"]
        assert job["backoffLimit"] == 0, scaled_job.name
        assert job["template"]["spec"]["restartPolicy"] == "Never", scaled_job.name
        assert container_args(scaled_job.inputs["spec"])[:3] == ["runner", "launch", "--single"]
    # Engine arc: ARC's chart makes runner pods `restartPolicy: Never` unless told otherwise.
    for release in program.of_type("kubernetes:helm.sh/v3:Release"):
        if release.inputs["chart"].endswith("/gha-runner-scale-set"):
            pod = reveal(release.inputs["values"])["template"]["spec"]
            assert pod.get("restartPolicy", "Never") == "Never", release.name


def keda_counts(job_labels: list[str], metadata: dict[str, str]) -> bool:
    """Whether KEDA's github-runner scaler counts a job for a trigger: canRunnerMatchLabels of
    KEDA 2.20.2 (pkg/scalers/github_runner_scaler.go), transcribed."""
    runner_labels = [label for label in metadata.get("labels", "").split(",") if label]
    if metadata.get("matchUnlabeledJobsWithUnlabeledRunners") == "true" and not job_labels:
        return not runner_labels
    every = runner_labels
    if metadata.get("noDefaultLabels") != "true":
        every = [*runner_labels, "self-hosted", "linux", "x64"]
    return all(any(job.lower() == label.lower() for label in every) for job in job_labels)


@pytest.mark.parametrize(
    ("job_labels", "counted"),
    [
        (["self-hosted", "cml-runner"], True),
        (["cml-runner"], True),
        (["Self-Hosted", "Linux", "CML-RUNNER"], True),
        # runs-on: {group: ...}: a job with no labels, which runs elsewhere.
        ([], False),
        (["self-hosted", "other-gpu"], False),
    ],
)
def test_the_scaler_starts_the_dev_runner_for_its_own_jobs_only(dev, job_labels, counted):
    (trigger,) = scaled_job_spec(dev)["triggers"]
    assert keda_counts(job_labels, trigger["metadata"]) is counted


def test_dev_runner_starts_from_zero_one_job_per_waiting_ci_job(dev):
    spec = scaled_job_spec(dev)
    assert spec["minReplicaCount"] == 0
    assert spec["maxReplicaCount"] == 1
    assert spec["pollingInterval"] == 30
    assert spec["triggers"] == [DEV_TRIGGER]
    assert "enableEtags" not in json.dumps(spec)
    assert "--idle-timeout=120" in container_args(spec)
    assert spec["jobTargetRef"]["template"]["metadata"]["annotations"] == SAFE_TO_EVICT
    assert dev.outputs["runners"]["cml-runner"]["workload"] == "ScaledJob/cml-runner"


@pytest.mark.parametrize(("stack", "idle"), [("dev", 120), ("always", 3600)])
def test_a_stuck_runner_pod_is_ended_after_its_idle_time_and_the_longest_job(stack, idle, request):
    job = scaled_job_spec(request.getfixturevalue(stack))["jobTargetRef"]
    five_days, an_hour = 5 * 24 * 3600, 3600
    assert job["activeDeadlineSeconds"] == idle + five_days + an_hour


@pytest.mark.parametrize("stack", ["dev", "pool_of_three", "always"])
def test_pending_runners_are_not_duplicated_and_busy_ones_not_deleted(stack, request):
    spec = scaled_job_spec(request.getfixturevalue(stack))
    # `default` counts pending Jobs as started, so a pod waiting for a GPU node is not doubled.
    assert spec["scalingStrategy"] == {"strategy": "default"}
    # `gradual`: updating the ScaledJob lets running Jobs finish instead of deleting them.
    assert spec["rollout"] == {"strategy": "gradual"}
    assert spec["successfulJobsHistoryLimit"] == 3
    assert spec["failedJobsHistoryLimit"] == 3


def test_the_scaler_reads_its_copy_of_the_token_in_kedas_namespace_only(dev):
    # KEDA may read Secrets in its own namespace only: not ARC's or GitLab's credentials.
    keda_values = reveal(dev.one("kubernetes:helm.sh/v3:Release", "keda").inputs["values"])
    assert keda_values["permissions"] == {"operator": {"restrict": {"secret": True}}}
    auth = dev.one(TRIGGER_AUTH, "cml-runner-github").inputs
    assert "namespace" not in auth["metadata"]
    assert auth["spec"] == {
        "secretTargetRef": [
            {"parameter": "personalAccessToken", "name": "cml-runner-github", "key": "token"}
        ]
    }
    copy = dev.one("kubernetes:core/v1:Secret", "cml-runner-github").inputs
    assert copy["metadata"]["namespace"] == "keda"
    assert is_secret(copy["stringData"])
    assert reveal(copy["stringData"]) == {"token": fake_token("cml-runner")}
    for resource in dev.resources:
        if resource.type in KEDA_TYPES:
            assert fake_token("cml-runner") not in json.dumps(resource.inputs), resource.name


def test_keda_is_installed_once_pinned_on_the_system_pool():
    program = run_program({RUNNERS: [{"name": "train-a"}, {"name": "train-b", "labels": ["big"]}]})
    release = program.one(RELEASE).inputs
    assert release["chart"] == "keda"
    assert release["version"] == "2.20.2"
    assert release["repositoryOpts"] == {"repo": "https://kedacore.github.io/charts"}
    assert release["namespace"] == "keda"
    assert release["createNamespace"] is True
    assert release["values"]["nodeSelector"] == {"gpu": "false"}
    # A third of the chart's default requests: the three pods fit a small system node.
    requests = [pod["requests"]["cpu"] for pod in release["values"]["resources"].values()]
    assert sorted(requests) == ["25m", "25m", "50m"]
    # Its CRDs are chart templates: the release waits, so ScaledJobs find them.
    assert "skipAwait" not in release
    assert len(program.of_type(SCALED_JOB)) == 2


@pytest.mark.parametrize("stack", ["dev", "pool_of_three", "always"])
def test_every_keda_object_waits_for_the_helm_release(stack, request):
    program = request.getfixturevalue(stack)
    release = program.one(RELEASE)
    keda_objects = [r for r in program.resources if r.type in KEDA_TYPES]
    assert keda_objects
    for resource in keda_objects:
        assert program.waits_for(resource, release), resource.name


def test_a_pool_runs_up_to_max_runners_at_once(pool_of_three):
    spec = scaled_job_spec(pool_of_three)
    assert spec["minReplicaCount"] == 0
    assert spec["maxReplicaCount"] == 3
    assert spec["triggers"] == [DEV_TRIGGER]
    pod = spec["jobTargetRef"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "true", "cloud.google.com/compute-class": "gpu"}
    assert "--idle-timeout=120" in container_args(spec)


def test_always_runners_keep_replicas_waiting_without_asking_the_forge():
    program = run_program(
        {
            RUNNERS: [{"name": "cml-runner", "mode": "always", "replicas": 2}],
            # Room for both: two always-on GPU runners hold two GPU nodes.
            "gpu-runners:gpuPool": {"maxNodes": 2},
        }
    )
    spec = scaled_job_spec(program)
    # Equal bounds: KEDA tops the unfinished Jobs up to 2 and the trigger never adds more.
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 2)
    assert spec["triggers"] == [OWN_PODS_TRIGGER]
    assert program.of_type(TRIGGER_AUTH) == []
    assert program.one(SCALED_JOB).inputs["metadata"].get("annotations") is None
    assert "--idle-timeout=3600" in container_args(spec)
    assert spec["jobTargetRef"]["template"]["metadata"]["annotations"] == SAFE_TO_EVICT


def test_idle_timeout_is_the_configured_one_in_either_mode():
    program = run_program(
        {
            RUNNERS: [
                {"name": "waits-long", "mode": "always", "idleTimeoutSeconds": 7200},
                {"name": "waits-short", "idleTimeoutSeconds": 120, "labels": ["short"]},
            ]
        }
    )
    assert "--idle-timeout=7200" in container_args(scaled_job_spec(program, "waits-long"))
    assert "--idle-timeout=120" in container_args(scaled_job_spec(program, "waits-short"))


def test_a_parked_runner_starts_no_runner_and_lets_a_busy_one_finish(parked):
    scaled_job = parked.one(SCALED_JOB, "cml-runner").inputs
    assert scaled_job["metadata"]["annotations"] == {"autoscaling.keda.sh/paused": "true"}
    assert scaled_job["spec"]["minReplicaCount"] == 0


def test_cml_gitlab_runners_stay_always_and_cml_github_cpu_runners_start_on_demand():
    program = run_program(
        {
            RUNNERS: [
                {"name": "gl-cml", "platform": "gitlab", "engine": "cml"},
                {"name": "gh-cpu", "gpus": 0, "cpu": "500m"},
            ]
        }
    )
    gitlab = scaled_job_spec(program, "gl-cml")
    assert (gitlab["minReplicaCount"], gitlab["maxReplicaCount"]) == (1, 1)
    assert gitlab["triggers"][0]["type"] == "kubernetes-workload"
    # A waiting CPU runner would keep a node of the CPU runner pool up all month.
    cpu = scaled_job_spec(program, "gh-cpu")
    assert (cpu["minReplicaCount"], cpu["maxReplicaCount"]) == (0, 1)
    assert cpu["triggers"][0]["type"] == "github-runner"


def test_the_gpu_pool_can_return_to_zero_nodes(dev):
    pool = dev.one("gcp:container/nodePool:NodePool", "gke-gpu").inputs
    assert pool["autoscaling"]["totalMinNodeCount"] == 0


@pytest.mark.parametrize(
    ("message_part", "runner"),
    [
        (
            "gpu-runners:runners[0].mode = 'on-demand': on-demand is not available for a cml "
            "runner on gitlab",
            {"name": "cml-runner", "platform": "gitlab", "engine": "cml", "mode": "on-demand"},
        ),
        (
            "gpu-runners:runners[0].replicas = 2: replicas applies to mode always",
            {"name": "cml-runner", "replicas": 2},
        ),
        (
            "gpu-runners:runners[0].maxRunners = 0: allowed: 1 or more",
            {"name": "cml-runner", "maxRunners": 0},
        ),
        (
            "gpu-runners:runners[0].idleTimeoutSeconds = 10: allowed: 60 or more",
            {"name": "cml-runner", "idleTimeoutSeconds": 10},
        ),
    ],
    ids=["gitlab-on-demand", "replicas-on-demand", "max-runners-0", "idle-too-short"],
)
def test_scaling_settings_are_validated(message_part, runner):
    error, registered = run_rejected_program({RUNNERS: [runner]})
    assert message_part in str(error)
    assert registered == []


def test_the_component_refuses_on_demand_for_gitlab():
    def build():
        provider = k8s.Provider("kind", kubeconfig="apiVersion: v1\nkind: Config\n")
        CmlRunner(
            "gl",
            CmlRunnerArgs(
                platform="gitlab",
                repository="https://gitlab.com/acme/vision",
                token=pulumi.Output.secret("glpat-" + "x" * 20),
                on_demand=OnDemandScaling(),
            ),
            opts=pulumi.ResourceOptions(provider=provider),
        )

    with pytest.raises(ValueError, match="on-demand scaling needs platform github"):
        run_components(build)


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused, as `kubectl apply --validate=strict` does."""
    schema = copy.deepcopy(schema)

    def close(node: object) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    for path in KEDA_SCHEMAS.glob("*.yaml"):
        crd = read_yaml(path)
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
            return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))
    raise AssertionError(f"no CRD for {kind} in {KEDA_SCHEMAS}")


@pytest.mark.parametrize(
    ("stack", "type_", "kind"),
    [
        ("dev", SCALED_JOB, "ScaledJob"),
        ("dev", TRIGGER_AUTH, "ClusterTriggerAuthentication"),
        ("pool_of_three", SCALED_JOB, "ScaledJob"),
        ("always", SCALED_JOB, "ScaledJob"),
        ("parked", SCALED_JOB, "ScaledJob"),
    ],
)
def test_keda_objects_validate_against_the_keda_crds(stack, type_, kind, request):
    program = request.getfixturevalue(stack)
    validator = crd_validator(kind)
    assert program.of_type(type_)
    for resource in program.of_type(type_):
        manifest = reveal(resource.inputs)
        assert manifest["apiVersion"] == "keda.sh/v1alpha1"
        assert manifest["kind"] == kind
        errors = [e.message for e in validator.iter_errors(manifest)]
        assert errors == [], resource.name


def test_crd_validation_refuses_a_misspelt_field(dev):
    manifest = reveal(dev.one(SCALED_JOB, "cml-runner").inputs)
    manifest["spec"]["minReplicas"] = 0
    assert not crd_validator("ScaledJob").is_valid(manifest)
