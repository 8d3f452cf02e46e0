"""Runners on a cluster the stack does not make (issue 27): Pulumi.local.yaml on a laptop's
kind cluster, an existing GKE cluster, and the checks before anything is created."""

import os
import re

import pytest
import yaml
from rules import MADE_CLUSTER_RULES, POLICIES

from infra import settings
from infra.tools import cluster_credentials, estimate, plan
from tests.harness import (
    REPO,
    TEST_PROJECT_ID,
    Program,
    reveal,
    run_program,
    run_rejected_program,
)
from tests.stacks import WITH_CI

PROVIDER = "pulumi:providers:kubernetes"
CLUSTER_ROLE_BINDING = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding"
SCALED_JOB = "kubernetes:keda.sh/v1alpha1:ScaledJob"
EXISTING = "gpu-runners:existingCluster"
RUNNERS = "gpu-runners:runners"
GKE_CONTEXT = "gke_ml-team-sandbox_europe-west6-b_team-cluster"
# An existing GKE cluster with Workload Identity, as a stack of its own (not the dev stack's
# GKE sections): what `existingCluster` allows beside it.
ON_EXISTING_GKE = {
    "gpu-runners:cluster": None,
    "gpu-runners:systemPool": None,
    "gpu-runners:gpuPool": None,
    EXISTING: {
        "context": GKE_CONTEXT,
        "gke": {"name": "team-cluster", "location": "europe-west6-b"},
        "gpuNodeLabels": {"cloud.google.com/gke-accelerator": "nvidia-l4", "gpu": "true"},
    },
}


@pytest.fixture(scope="module")
def local() -> Program:
    return run_program(stack="local")


@pytest.fixture(scope="module")
def on_gke() -> Program:
    return run_program(ON_EXISTING_GKE)


def job_pod(program: Program, runner: str) -> dict:
    return program.one(SCALED_JOB, runner).inputs["spec"]["jobTargetRef"]["template"]["spec"]


def test_the_local_stack_makes_nothing_on_google_cloud_and_reaches_its_context(local):
    assert not [r for r in local.resources if r.type.startswith("gcp:")]
    provider = local.one(PROVIDER)
    assert provider.inputs["context"] == "kind-gpu-runners"
    # The kubeconfig of whoever runs `pulumi up`, loaded as kubectl does, and not its path in
    # the state (the SDK would store $KUBECONFIG's); the context names the cluster.
    assert provider.inputs["kubeconfig"] == ""
    assert provider.inputs["clusterIdentifier"] == "kind-gpu-runners"
    assert local.of_type(SCALED_JOB)
    for resource in local.resources:
        if resource.type.startswith("kubernetes:"):
            assert resource.provider.startswith(provider.urn), resource.name
    assert local.outputs["kubeContext"] == "kind-gpu-runners"
    assert "clusterName" not in local.outputs and "runnerServiceAccount" not in local.outputs


def test_the_local_runner_lands_on_any_node_with_upstream_images(local):
    pod = job_pod(local, "local-cml")
    # A laptop's cluster has no runner pool: no selector, no toleration of a taint it lacks.
    assert pod["nodeSelector"] == {}
    assert pod["tolerations"] == []
    assert pod["containers"][0]["image"].startswith("docker.io/iterativeai/cml:")
    assert "serviceAccountName" in pod and "iam.gke.io/gcp-service-account" not in str(
        local.one("kubernetes:core/v1:ServiceAccount", "local-cml").inputs
    )
    keda = reveal(local.one("kubernetes:helm.sh/v3:Release", "keda").inputs)
    assert keda["values"]["nodeSelector"] == {}


def test_the_local_stack_file_plans_with_every_rule_passing(capsys):
    status = plan.main([str(REPO / "Pulumi.local.yaml")])
    text = capsys.readouterr().out
    assert status == 0, text
    applying = len(POLICIES) - len(MADE_CLUSTER_RULES)
    assert f"All {applying} rules that apply pass" in text
    assert (
        f"so {len(MADE_CLUSTER_RULES)} rules, about the cluster and its node pools, do not" in text
    )
    assert "`gcp:" not in text.split("#### Kubernetes manifests")[0].split("### Resources")[1]
    assert "planned with stand-ins: `gpu-runners:runners[0].repository`" in text
    assert "`gpu-runners:runnerTokens`, a kubeconfig with the stack's context." in text
    assert "#### Google Cloud and GitLab resources\n\nNone.\n" in text
    assert "gcp:project" not in text.split("### Policy pack")[0]


def test_the_local_stack_costs_nothing_on_google_cloud():
    config = yaml.safe_load((REPO / "Pulumi.local.yaml").read_text())["config"]
    result = estimate.estimate(config)
    assert result.lines == []
    assert "makes no cluster and no node" in result.about


def test_an_existing_gke_cluster_gets_runner_accounts_and_no_cluster(on_gke):
    types = {r.type for r in on_gke.resources}
    assert "gcp:container/cluster:Cluster" not in types
    assert "gcp:container/nodePool:NodePool" not in types
    assert "gcp:artifactregistry/repository:Repository" not in types
    account = on_gke.one("gcp:serviceaccount/account:Account")
    assert account.inputs["accountId"] == "team-cluster-runner"
    binding = reveal(
        on_gke.one(
            "gcp:serviceaccount/iAMMember:IAMMember", "runner-identity-wi-cml-runner-cml-runner"
        ).inputs
    )
    assert binding["role"] == "roles/iam.workloadIdentityUser"
    assert binding["member"] == "serviceAccount:ml-team-sandbox.svc.id.goog[cml-runner/cml-runner]"
    services = {r.inputs["service"] for r in on_gke.of_type("gcp:projects/service:Service")}
    assert services == {
        "cloudresourcemanager.googleapis.com",
        "iam.googleapis.com",
        "iamcredentials.googleapis.com",
        "storage.googleapis.com",
    }
    assert on_gke.one(PROVIDER).inputs["context"] == GKE_CONTEXT
    assert on_gke.outputs["runnerServiceAccount"].startswith("team-cluster-runner@")


def test_gpu_runners_select_the_gpu_nodes_the_cluster_labels(on_gke):
    pod = job_pod(on_gke, "cml-runner")
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4", "gpu": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )
    # NVIDIA's GPU Operator's label works too, and the policy pack takes it for a GPU node.
    operator = {**ON_EXISTING_GKE[EXISTING], "gpuNodeLabels": {"nvidia.com/gpu.present": "true"}}
    unselected = [{"name": "cml-runner", "nodeSelector": None}]
    program = run_program({**ON_EXISTING_GKE, EXISTING: operator, RUNNERS: unselected})
    assert job_pod(program, "cml-runner")["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    for policy in POLICIES:
        assert plan.policy_violations(program.resources, policy) == [], policy.name


def test_the_current_context_is_used_when_none_is_named():
    program = run_program(
        {**ON_EXISTING_GKE, EXISTING: {**ON_EXISTING_GKE[EXISTING], "context": None}}
    )
    provider = program.one(PROVIDER).inputs
    assert provider["context"] == "kind-gpu-runners"
    # On GKE the cluster, not the context's name, is the provider's identity: another context
    # for the same cluster (the one CI's gcloud writes, say) updates the provider and replaces
    # nothing (pulumi-kubernetes, Provider.clusterIdentifier).
    assert provider["clusterIdentifier"] == GKE_CONTEXT


@pytest.fixture(scope="module")
def on_gke_with_ci() -> Program:
    return run_program({**ON_EXISTING_GKE, **WITH_CI})


def test_ci_on_an_existing_gke_cluster_administers_that_cluster_and_no_other(on_gke_with_ci):
    program = on_gke_with_ci
    deployer = f"gpu-runners-ci-deployer@{TEST_PROJECT_ID}.iam.gserviceaccount.com"
    grants = [
        r.inputs
        for r in program.of_type("gcp:projects/iAMMember:IAMMember")
        if r.inputs["member"] == f"serviceAccount:{deployer}"
    ]
    # No Container Admin, which reaches every cluster of the project, and nothing to do with
    # node pools or their accounts.
    assert {g["role"] for g in grants} == {
        "roles/container.clusterViewer",
        "roles/storage.admin",
        "roles/iam.workloadIdentityPoolViewer",
        "roles/serviceusage.serviceUsageViewer",
    }
    assert not any(g.get("condition") for g in grants)
    # Inside that cluster: cluster-admin, by Kubernetes RBAC, kept by a CI destroy.
    admin = program.one(CLUSTER_ROLE_BINDING, "ci-deployer")
    assert admin.protect
    assert admin.inputs["roleRef"]["name"] == "cluster-admin"
    assert admin.inputs["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": deployer}
    ]
    assert admin.provider.startswith(program.one(PROVIDER).urn)
    reads = program.one(CLUSTER_ROLE_BINDING, "ci-previewer")
    assert reads.inputs["subjects"][0]["name"].startswith("gpu-runners-ci-previewer@")
    # The deployer keeps the runner accounts' bindings up to date as runners come and go.
    (manages,) = [
        r
        for r in program.of_type("gcp:serviceaccount/iAMMember:IAMMember")
        if r.inputs["role"] == "roles/iam.serviceAccountAdmin"
    ]
    assert manages.inputs["member"] == f"serviceAccount:{deployer}" and manages.protect
    services = {r.inputs["service"] for r in program.of_type("gcp:projects/service:Service")}
    assert {"sts.googleapis.com", "cloudkms.googleapis.com"} <= services
    assert program.outputs["ciDeployerServiceAccount"] == deployer


@pytest.mark.parametrize(
    ("context", "given"),
    [(None, "is not set"), ("kind-gpu-runners", "= 'kind-gpu-runners'")],
)
def test_with_ci_the_context_must_be_the_one_cis_gcloud_writes(context, given):
    existing = {**ON_EXISTING_GKE[EXISTING], "context": context}
    error = rejected({**ON_EXISTING_GKE, EXISTING: existing, **WITH_CI})
    assert f"gpu-runners:existingCluster.context {given}: with CI access" in error
    assert (
        "`gcloud container clusters get-credentials team-cluster --location europe-west6-b "
        f"--project {TEST_PROJECT_ID}`" in error
    )
    assert f"allowed: '{GKE_CONTEXT}'" in error


def test_cis_gcloud_command_signs_in_to_the_existing_gke_cluster_only():
    config = {"gcp:project": TEST_PROJECT_ID, **ON_EXISTING_GKE}
    command = cluster_credentials.credentials_command(config)
    assert command == [
        "gcloud",
        "container",
        "clusters",
        "get-credentials",
        "team-cluster",
        "--location",
        "europe-west6-b",
        "--project",
        TEST_PROJECT_ID,
    ]
    dev = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())["config"]
    local = yaml.safe_load((REPO / "Pulumi.local.yaml").read_text())["config"]
    assert cluster_credentials.credentials_command(dev) is None
    assert cluster_credentials.credentials_command(local) is None


def rejected(config: dict, stack: str = "dev") -> str:
    error, registered = run_rejected_program(config, stack=stack)
    assert registered == []
    return str(error)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {EXISTING: {"context": "kind-other"}},
            "gpu-runners:existingCluster.context = 'kind-other': the kubeconfig (",
        ),
        (
            {EXISTING: {"context": "kind-gpu-runners"}, "gpu-runners:gpuPools": [{"name": "l4"}]},
            "gpu-runners:gpuPools: a setting of the GKE cluster the stack makes, and "
            "existingCluster targets one it does not make; allowed: remove it",
        ),
        (
            {EXISTING: {"context": "kind-gpu-runners"}, "gpu-runners:dvcRemote": {"bucket": "b"}},
            "gpu-runners:dvcRemote: the DVC bucket is made and reached through Workload "
            "Identity on GKE only",
        ),
        (
            {RUNNERS: [{"name": "local-cml", "gpus": 1}]},
            "gpu-runners:runners[0].gpus = 1: existingCluster names no GPU nodes",
        ),
        (
            {RUNNERS: [{"name": "local-cml", "gpus": 0, "gpuPool": "gpu"}]},
            "gpu-runners:runners[0].gpuPool = 'gpu': GPU classes are the node pools the stack "
            "makes",
        ),
        (
            {EXISTING: {"context": "kind-gpu-runners"}, **WITH_CI},
            "gpu-runners:ci: CI signs in to the cluster without a stored key on GKE only",
        ),
        (
            {EXISTING: {"context": "kind-gpu-runners", "gpuNodeLabels": {"team": "vision"}}},
            'gpu-runners:existingCluster.gpuNodeLabels = {"team": "vision"}: selects no GPU '
            "node label",
        ),
    ],
    ids=[
        "a context the kubeconfig lacks",
        "GPU classes on a cluster the stack does not make",
        "a DVC bucket off GKE",
        "a GPU runner with no GPU nodes",
        "a GPU class on a cluster the stack does not make",
        "CI access off GKE",
        "GPU node labels that mark no GPU",
    ],
)
def test_bad_input_on_an_existing_cluster_is_refused_naming_the_key(config, expected):
    assert expected in rejected(config, stack="local")


def test_a_missing_context_names_the_contexts_that_exist():
    message = rejected({EXISTING: {"context": "kind-other"}}, stack="local")
    assert f"allowed: kind-gpu-runners, {GKE_CONTEXT}" in message


def test_no_kubeconfig_at_all_is_refused_saying_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    message = rejected({}, stack="local")
    assert "gpu-runners:existingCluster.context: no kubeconfig with a context at" in message
    assert "kind create cluster" in message


def test_a_kubeconfig_without_a_current_context_asks_for_one(monkeypatch, tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("contexts:\n  - name: a\n  - name: b\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    message = rejected({EXISTING: {"context": None}}, stack="local")
    assert "existingCluster.context is not set, so the kubeconfig's current context" in message
    assert ") names none; allowed: one of a, b" in message


def test_a_current_context_no_file_defines_is_refused(monkeypatch, tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("contexts:\n  - name: a\ncurrent-context: gone\n")
    empty = tmp_path / "empty"
    empty.write_text("")  # an empty file is an empty kubeconfig, as kubectl reads it
    monkeypatch.setenv("KUBECONFIG", f"{empty}{os.pathsep}{kubeconfig}")
    message = rejected({EXISTING: {"context": None}}, stack="local")
    assert "names the context 'gone', which it lacks; allowed: one of a" in message


def test_gke_labels_its_gpu_nodes_itself():
    labels = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    program = run_program(
        {**ON_EXISTING_GKE, EXISTING: {**ON_EXISTING_GKE[EXISTING], "gpuNodeLabels": labels}}
    )
    assert (
        job_pod(program, "cml-runner")["nodeSelector"]["cloud.google.com/gke-accelerator"]
        == "nvidia-l4"
    )


def test_an_existing_gke_stack_may_not_take_another_stacks_runner_accounts(tmp_path, monkeypatch):
    # Pulumi.dev.yaml's cluster is mlops-kubernetes: a stack on an existing GKE cluster of that
    # name in the same project would take the same runner account and Workload Identity member.
    same = {
        **ON_EXISTING_GKE[EXISTING],
        "gke": {"name": "mlops-kubernetes", "location": "europe-west6-b"},
    }
    dev = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())
    dev["config"]["gcp:project"] = TEST_PROJECT_ID
    (tmp_path / "Pulumi.dev.yaml").write_text(yaml.safe_dump(dev))
    monkeypatch.setattr(settings, "STACK_FILE_DIR", tmp_path)
    runners = [{"name": "cml-runner", "gpus": 0, "labels": ["cml-cpu"]}]
    message = rejected({EXISTING: same, RUNNERS: runners}, stack="local")
    assert (
        "gpu-runners:existingCluster.gke.name = 'mlops-kubernetes': Pulumi.dev.yaml deploys"
        in message
    )
    assert "service account mlops-kubernetes-runner" in message


def test_two_stacks_of_a_project_may_not_share_ci_access(tmp_path, monkeypatch):
    # The dev stack with CI access, and a stack on an existing GKE cluster with the same
    # (default) ci.poolId, would both make the pool and the two CI accounts.
    dev = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())
    dev["config"] |= {"gcp:project": TEST_PROJECT_ID, **WITH_CI}
    (tmp_path / "Pulumi.dev.yaml").write_text(yaml.safe_dump(dev))
    monkeypatch.setattr(settings, "STACK_FILE_DIR", tmp_path)
    message = rejected({**ON_EXISTING_GKE, **WITH_CI}, stack="local")
    assert "gpu-runners:ci.poolId = 'gpu-runners-ci': Pulumi.dev.yaml deploys" in message
    assert "Workload Identity pool gpu-runners-ci" in message


def test_the_laptop_page_walks_the_local_stack_as_it_is():
    page = (REPO / "docs" / "local.md").read_text()
    config = yaml.safe_load((REPO / "Pulumi.local.yaml").read_text())["config"]
    (runner,) = config[RUNNERS]
    # kind names a cluster's context kind-<name>.
    assert "kind create cluster --name gpu-runners" in page
    assert config[EXISTING]["context"] == "kind-gpu-runners"
    assert f"'runnerTokens.{runner['name']}'" in page
    assert f"kubectl get pods -n {runner['name']} --watch" in page
    (workflow,) = [
        yaml.safe_load(block)
        for block in re.findall(r"```yaml\n(.*?)```", page, re.S)
        if "runs-on" in block
    ]
    (job,) = workflow["jobs"].values()
    assert set(job["runs-on"]) == {"self-hosted", *runner["labels"]}


def test_gitlabs_manager_reaches_an_api_server_behind_its_own_port():
    # A NetworkPolicy sees the API server's port after the Service's: 6443 on kind, k3d and
    # kubeadm, 8443 on minikube. GKE answers on 443 only.
    gitlab = [{"name": "gl-cpu", "platform": "gitlab", "labels": ["gl-cpu"], "gpus": 0}]
    policy = "kubernetes:networking.k8s.io/v1:NetworkPolicy"

    def ports(program: Program) -> list[int]:
        egress = program.one(policy, "gl-cpu-manager-egress").inputs["spec"]["egress"]
        return [port["port"] for rule in egress for port in rule["ports"]]

    assert ports(run_program({RUNNERS: gitlab}, stack="local")) == [443, 6443, 8443]
    assert ports(run_program({RUNNERS: gitlab})) == [443]


def test_the_default_providers_kubeconfig_settings_are_refused_not_ignored():
    # Pulumi's docs choose a cluster with kubernetes:context; the stack's explicit provider
    # would ignore it and reach another cluster.
    message = rejected({"kubernetes:context": "kind-gpu-runners"}, stack="local")
    assert "kubernetes:context: read by Pulumi's default Kubernetes provider only" in message
    assert "gpu-runners:existingCluster.context" in message
