"""CmlRunner: what a runner pod looks like, where it lands, and where its token lives."""

import json

import pulumi
import pulumi_kubernetes as k8s
import pytest

from infra.engines.cml_runner import CmlRunner, CmlRunnerArgs
from tests.harness import (
    MIRROR,
    TEST_PROJECT_ID,
    TEST_REPOSITORIES,
    fake_token,
    is_secret,
    reveal,
    run_components,
    run_program,
)
from tests.stacks import ALWAYS, BOTH_ENGINES, GITLAB, TWO_RUNNERS

SCALED_JOB = "kubernetes:keda.sh/v1alpha1:ScaledJob"
COMPONENT = "gpu-runners:index:CmlRunner"
SECRET = "kubernetes:core/v1:Secret"
NAMESPACE = "kubernetes:core/v1:Namespace"
SERVICE_ACCOUNT = "kubernetes:core/v1:ServiceAccount"
RUNNER_GSA = f"mlops-kubernetes-runner@{TEST_PROJECT_ID}.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def dev():
    return run_program()


@pytest.fixture(scope="module")
def two():
    return run_program(TWO_RUNNERS)


@pytest.fixture(scope="module")
def always():
    """The dev runner kept up all the time (mode always), as the chapter's runner was."""
    return run_program(ALWAYS)


def pod_template(program, name: str) -> dict:
    return program.one(SCALED_JOB, name).inputs["spec"]["jobTargetRef"]["template"]


def pod_spec(program, name: str) -> dict:
    return pod_template(program, name)["spec"]


def container(program, name: str) -> dict:
    (runner,) = pod_spec(program, name)["containers"]
    return runner


def test_dev_runner_is_the_chapters_runner_pinned_to_the_gpu_nodes(dev):
    spec = pod_spec(dev, "cml-runner")
    runner = container(dev, "cml-runner")
    assert spec["nodeSelector"] == {"gpu": "true", "cloud.google.com/compute-class": "gpu"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {
            "key": "cloud.google.com/compute-class",
            "operator": "Equal",
            "value": "gpu",
            "effect": "NoSchedule",
        },
    ]
    expected = {"cpu": "1", "memory": "2000Mi", "nvidia.com/gpu": "1"}
    assert runner["resources"] == {"requests": expected, "limits": expected}
    assert (
        runner["image"] == f"{MIRROR}/mlops-kubernetes-docker-hub/iterativeai/cml:0-dvc3-base1-gpu"
    )


def test_runner_takes_one_job_registers_under_its_pod_name_and_waits_an_hour(always):
    runner = container(always, "cml-runner")
    assert runner["command"] == ["cml"]
    assert runner["args"] == [
        "runner",
        "launch",
        "--single",
        "--labels=cml-runner",
        "--driver=github",
        f"--repo={TEST_REPOSITORIES['github']}",
        "--idle-timeout=3600",
        "--name=$(POD_NAME)",
    ]
    env = {e["name"]: e.get("valueFrom") for e in runner["env"]}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_token_reaches_the_runner_only_through_a_secret_key_ref(dev):
    secret = dev.one(SECRET, "cml-runner-token").inputs
    assert secret["metadata"] == {
        "name": "cml-runner-token",
        "namespace": "cml-runner",
        "labels": secret["metadata"]["labels"],
    }
    assert is_secret(secret["stringData"])
    assert reveal(secret["stringData"]) == {"token": fake_token("cml-runner")}
    env = {e["name"]: e for e in container(dev, "cml-runner")["env"]}
    assert env["REPO_TOKEN"] == {
        "name": "REPO_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "cml-runner-token", "key": "token"}},
    }


@pytest.mark.parametrize("stack", ["dev", "two"])
def test_token_appears_nowhere_but_inside_the_secret(stack, request):
    program = request.getfixturevalue(stack)
    tokens = [fake_token(r.name) for r in program.of_type(COMPONENT)]
    assert tokens
    for resource in program.resources:
        text = json.dumps(resource.inputs)
        if resource.type == SECRET:
            assert is_secret(resource.inputs["stringData"])
            text = json.dumps({k: v for k, v in resource.inputs.items() if k != "stringData"})
        for token in tokens:
            assert token not in text, f"{resource.type} {resource.name} holds a token"
    for token in tokens:
        assert token not in json.dumps(program.outputs)


def test_pod_labels_carry_the_app_set_and_the_runner_labels(two):
    labels = pod_template(two, "train-gpu")["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "cml-runner"
    assert labels["app.kubernetes.io/instance"] == "train-gpu"
    assert labels["app.kubernetes.io/part-of"] == "gpu-runners"
    assert labels["gpu-runners/cml-runner"] == "true"
    assert labels["gpu-runners/gpu"] == "true"


def test_runner_pod_is_unprivileged_with_a_small_capability_set(dev):
    spec = pod_spec(dev, "cml-runner")
    security = container(dev, "cml-runner")["securityContext"]
    assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"]["add"]) == {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
    }
    assert spec["terminationGracePeriodSeconds"] >= 60


def test_namespace_enforces_baseline_pod_security(dev):
    labels = dev.one(NAMESPACE, "cml-runner").inputs["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"


def test_runner_acts_as_the_runner_google_account(dev):
    account = dev.one(SERVICE_ACCOUNT, "cml-runner").inputs["metadata"]
    assert account["annotations"] == {"iam.gke.io/gcp-service-account": RUNNER_GSA}
    assert pod_spec(dev, "cml-runner")["serviceAccountName"] == "cml-runner"


def test_gitlab_cpu_runner_next_to_github_gpu_runner(two):
    gpu, cpu = container(two, "train-gpu"), container(two, "lint-cpu")
    assert "--driver=github" in gpu["args"]
    assert "--labels=cml-runner,gpu" in gpu["args"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["image"].endswith("-gpu")

    assert "--driver=gitlab" in cpu["args"]
    assert f"--repo={TEST_REPOSITORIES['gitlab']}" in cpu["args"]
    assert "--labels=cml-cpu" in cpu["args"]
    assert cpu["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert cpu["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}
    assert cpu["image"] == f"{MIRROR}/mlops-kubernetes-docker-hub/iterativeai/cml:0-dvc3-base1"
    cpu_pod = pod_spec(two, "lint-cpu")
    assert cpu_pod["nodeSelector"] == {"gpu": "false", "gpu-runners/cpu-jobs": "true"}
    assert cpu_pod["tolerations"] == [
        {"key": "gpu-runners/cpu-jobs", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert two.outputs["runners"]["lint-cpu"] == {
        "namespace": "lint-cpu",
        "workload": "ScaledJob/lint-cpu",
        "labels": ["cml-cpu"],
    }


def test_kubernetes_objects_use_the_clusters_provider_and_belong_to_their_runner(two):
    provider = two.one("pulumi:providers:kubernetes")
    always = {
        NAMESPACE,
        SERVICE_ACCOUNT,
        SECRET,
        SCALED_JOB,
        "kubernetes:networking.k8s.io/v1:NetworkPolicy",
        # The package index's keyring command.
        "kubernetes:core/v1:ConfigMap",
    }
    on_demand = always | {
        "kubernetes:keda.sh/v1alpha1:ClusterTriggerAuthentication",
        # The scaler's copy of the token, in KEDA's namespace.
        SECRET,
    }
    for name, types in (("train-gpu", on_demand), ("lint-cpu", always)):
        component = two.one(COMPONENT, name)
        objects = [r for r in two.resources if r.parent == component.urn]
        assert {r.type for r in objects} == types
        assert all(r.provider.startswith(provider.urn) for r in objects)


def test_component_alone_on_a_plain_provider_in_an_existing_namespace():
    def build():
        kind = k8s.Provider("kind", kubeconfig="apiVersion: v1\nkind: Config\n")
        CmlRunner(
            "ci-gpu",
            CmlRunnerArgs(
                platform="github",
                repository="https://github.com/acme/vision",
                token=pulumi.Output.secret("ghp_" + "x" * 36),
                namespace="ci",
                create_namespace=False,
                gpus=2,
                labels=["big-gpu"],
            ),
            opts=pulumi.ResourceOptions(provider=kind),
        )

    program = run_components(build)
    provider = program.one("pulumi:providers:kubernetes", "kind")
    assert program.of_type(NAMESPACE) == []
    account = program.one(SERVICE_ACCOUNT, "ci-gpu").inputs["metadata"]
    assert account["namespace"] == "ci"
    assert "annotations" not in account
    runner = container(program, "ci-gpu")
    assert runner["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "--labels=big-gpu" in runner["args"]
    # Without on_demand the component keeps runners waiting, renewed hourly as in the stack.
    assert "--idle-timeout=3600" in runner["args"]
    component = program.one(COMPONENT, "ci-gpu")
    for resource in program.resources:
        if resource.type.startswith("kubernetes:"):
            assert resource.parent == component.urn
            assert resource.provider.startswith(provider.urn)


@pytest.mark.parametrize("stack", ["dev", "two", "always"])
def test_every_secret_variable_is_kept_out_of_the_jobs_environment(stack, request):
    program = request.getfixturevalue(stack)
    for scaled_job in program.of_type(SCALED_JOB):
        (runner,) = scaled_job.inputs["spec"]["jobTargetRef"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in runner["env"]}
        from_secrets = {n for n, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
        assert "REPO_TOKEN" in from_secrets
        kept_out = env["_CML_RUNNER_SENSITIVE_ENV"]["value"].split(":")
        assert set(kept_out) >= from_secrets, scaled_job.name


def test_stacks_made_before_the_rename_keep_their_runner_objects(dev):
    component = dev.one(COMPONENT, "cml-runner")
    assert component.alias_types == ("gpu-runners:index:RunnerDeployment",)


@pytest.mark.parametrize(
    ("config", "engine"),
    [({}, "CmlRunner"), (BOTH_ENGINES, "ArcRunner"), (GITLAB, "GitlabRunner")],
    ids=["cml", "arc", "gitlab-runner"],
)
def test_a_runner_moved_to_another_engine_keeps_its_namespace_account_and_secret(config, engine):
    program = run_program(config)
    name = {"CmlRunner": "cml-runner", "ArcRunner": "gpu-arc", "GitlabRunner": "gl-gpu"}[engine]
    for type_, object_name in (
        (NAMESPACE, name),
        (SERVICE_ACCOUNT, name),
        (SECRET, f"{name}-token"),
    ):
        resource = program.one(type_, object_name)
        assert resource.parent.endswith(f"gpu-runners:index:{engine}::{name}")
        others = {"CmlRunner", "RunnerDeployment", "ArcRunner", "GitlabRunner"} - {engine}
        assert {p.rsplit("::", 2)[-2].rsplit(":", 1)[-1] for p in resource.alias_parents} == others
        assert all(p.endswith(f"::{name}") for p in resource.alias_parents)
