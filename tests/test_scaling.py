"""Scale to zero: KEDA starts a GitHub runner when a job waits, and never stops a busy one."""

import copy
import json

import jsonschema
import pulumi
import pulumi_kubernetes as k8s
import pytest
import yaml

from infra.keda import CHART_VERSION
from infra.runner import OnDemandScaling, RunnerDeployment, RunnerDeploymentArgs
from tests.harness import (
    REPO,
    RUNNERS,
    fake_token,
    reveal,
    run_components,
    run_program,
    run_rejected_program,
)
from tests.stacks import POOL_OF_THREE

KEDA_SCHEMAS = REPO / "tests" / "schemas" / f"keda-{CHART_VERSION}"
RELEASE = "kubernetes:helm.sh/v3:Release"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"
SCALED_JOB = "kubernetes:keda.sh/v1alpha1:ScaledJob"
TRIGGER_AUTH = "kubernetes:keda.sh/v1alpha1:TriggerAuthentication"
KEDA_TYPES = (SCALED_OBJECT, SCALED_JOB, TRIGGER_AUTH)
SAFE_TO_EVICT = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
DEV_TRIGGER = {
    "type": "github-runner",
    "metadata": {
        "owner": "ml-team",
        "repos": "churn-model",
        "runnerScope": "repo",
        "labels": "cml-runner",
        "targetWorkflowQueueLength": "1",
    },
    "authenticationRef": {"name": "cml-runner-github"},
}


@pytest.fixture(scope="module")
def dev():
    return run_program()


@pytest.fixture(scope="module")
def pool_of_three():
    return run_program(POOL_OF_THREE)


def container_args(pod_spec: dict) -> list[str]:
    return pod_spec["containers"][0]["args"]


def test_dev_runner_is_a_deployment_at_zero_that_keda_scales_to_one(dev):
    deployment = dev.one(DEPLOYMENT, "cml-runner")
    assert deployment.inputs["spec"]["replicas"] == 0
    # Pulumi leaves the count to KEDA, so an update never stops a runner mid-job.
    assert deployment.ignore_changes == ("spec.replicas",)
    spec = dev.one(SCALED_OBJECT, "cml-runner").inputs["spec"]
    assert spec["scaleTargetRef"] == {"name": "cml-runner"}
    assert spec["minReplicaCount"] == 0
    assert spec["maxReplicaCount"] == 1
    assert spec["cooldownPeriod"] == 300
    assert spec["triggers"] == [DEV_TRIGGER]
    assert "enableEtags" not in json.dumps(spec)
    template = deployment.inputs["spec"]["template"]
    assert "--idle-timeout=300" in container_args(template["spec"])
    assert template["metadata"]["annotations"] == SAFE_TO_EVICT
    assert dev.outputs["runners"]["cml-runner"]["workload"] == "Deployment/cml-runner"


def test_the_scaler_reads_the_token_from_the_runners_secret_only(dev):
    auth = dev.one(TRIGGER_AUTH, "cml-runner-github").inputs
    assert auth["metadata"]["namespace"] == "cml-runner"
    assert auth["spec"] == {
        "secretTargetRef": [
            {"parameter": "personalAccessToken", "name": "cml-runner-token", "key": "token"}
        ]
    }
    assert dev.one("kubernetes:core/v1:Secret", "cml-runner-token")
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
    assert release["values"] == {"nodeSelector": {"gpu": "false"}}
    assert len(program.of_type(SCALED_OBJECT)) == 2


def test_every_keda_object_waits_for_the_helm_release(dev, pool_of_three):
    for program in (dev, pool_of_three):
        release = program.one(RELEASE)
        keda_objects = [r for r in program.resources if r.type in KEDA_TYPES]
        assert len(keda_objects) == 2
        for resource in keda_objects:
            assert release.urn in resource.depends_on, resource.name


def test_more_than_one_runner_runs_one_job_per_ci_job_so_none_is_scaled_away(pool_of_three):
    assert pool_of_three.of_type(DEPLOYMENT) == []
    spec = pool_of_three.one(SCALED_JOB, "cml-runner").inputs["spec"]
    assert spec["maxReplicaCount"] == 3
    assert spec["minReplicaCount"] == 0
    assert spec["scalingStrategy"] == {"strategy": "default"}
    # `gradual`: updating the ScaledJob lets running Jobs finish instead of deleting them.
    assert spec["rollout"] == {"strategy": "gradual"}
    assert spec["triggers"] == [DEV_TRIGGER]
    job = spec["jobTargetRef"]
    assert job["backoffLimit"] == 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"gpu": "true"}
    assert container_args(pod)[:3] == ["runner", "launch", "--single"]
    assert "--idle-timeout=300" in container_args(pod)
    assert job["template"]["metadata"]["annotations"] == SAFE_TO_EVICT
    workload = pool_of_three.outputs["runners"]["cml-runner"]["workload"]
    assert workload == "ScaledJob/cml-runner"


def test_always_runners_are_unchanged():
    program = run_program({RUNNERS: [{"name": "cml-runner", "mode": "always", "replicas": 2}]})
    assert program.of_type(RELEASE) == []
    assert not [r for r in program.resources if r.type in KEDA_TYPES]
    deployment = program.one(DEPLOYMENT, "cml-runner")
    assert deployment.inputs["spec"]["replicas"] == 2
    assert deployment.ignore_changes == ()
    template = deployment.inputs["spec"]["template"]
    assert "--idle-timeout=never" in container_args(template["spec"])
    assert template["metadata"]["annotations"] == SAFE_TO_EVICT


def test_gitlab_and_cpu_runners_stay_always_by_default():
    program = run_program(
        {RUNNERS: [{"name": "gl-gpu", "platform": "gitlab"}, {"name": "gh-cpu", "gpus": 0}]}
    )
    assert program.of_type(RELEASE) == []
    for name in ("gl-gpu", "gh-cpu"):
        assert program.one(DEPLOYMENT, name).inputs["spec"]["replicas"] == 1


def test_the_gpu_pool_can_return_to_zero_nodes(dev):
    pool = dev.one("gcp:container/nodePool:NodePool", "gke-gpu").inputs
    assert pool["autoscaling"]["totalMinNodeCount"] == 0


@pytest.mark.parametrize(
    ("message_part", "runner"),
    [
        (
            "gpu-runners:runners[0].mode = 'on-demand': on-demand is not available for gitlab",
            {"name": "cml-runner", "platform": "gitlab", "mode": "on-demand"},
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
        keda = k8s.core.v1.Namespace("keda", opts=pulumi.ResourceOptions(provider=provider))
        RunnerDeployment(
            "gl",
            RunnerDeploymentArgs(
                platform="gitlab",
                repository="https://gitlab.com/acme/vision",
                token=pulumi.Output.secret("glpat-" + "x" * 20),
                on_demand=OnDemandScaling(keda=keda),
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


def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    for path in KEDA_SCHEMAS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
            return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))
    raise AssertionError(f"no CRD for {kind} in {KEDA_SCHEMAS}")


@pytest.mark.parametrize(
    ("stack", "type_", "kind"),
    [
        ("dev", SCALED_OBJECT, "ScaledObject"),
        ("dev", TRIGGER_AUTH, "TriggerAuthentication"),
        ("pool_of_three", SCALED_JOB, "ScaledJob"),
        ("pool_of_three", TRIGGER_AUTH, "TriggerAuthentication"),
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
    manifest = reveal(dev.one(SCALED_OBJECT, "cml-runner").inputs)
    manifest["spec"]["minReplicas"] = 0
    assert not crd_validator("ScaledObject").is_valid(manifest)
