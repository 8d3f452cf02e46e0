"""What the dev stack creates on GCP: the cluster, its node account and its two pools."""

import json

import pytest
import yaml

from tests.harness import TEST_PROJECT_ID, is_secret, reveal, run_program
from tests.stacks import SHAPES

CLUSTER = "gcp:container/cluster:Cluster"
NODE_POOL = "gcp:container/nodePool:NodePool"
ACCOUNT = "gcp:serviceaccount/account:Account"
IAM_MEMBER = "gcp:projects/iAMMember:IAMMember"
NODE_SA_EMAIL = f"mlops-kubernetes-nodes@{TEST_PROJECT_ID}.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def dev():
    return run_program()


def test_cluster_is_standard_with_workload_identity_and_no_default_pool(dev):
    cluster = dev.one(CLUSTER).inputs
    assert cluster["name"] == "mlops-kubernetes"
    # Zonal: GKE's free tier pays one zonal cluster's fee.
    assert cluster["location"] == "europe-west6-b"
    assert cluster["project"] == TEST_PROJECT_ID
    assert cluster["removeDefaultNodePool"] is True
    assert cluster["initialNodeCount"] == 1
    assert cluster["nodeConfig"]["serviceAccount"] == NODE_SA_EMAIL
    assert cluster["workloadIdentityConfig"] == {"workloadPool": f"{TEST_PROJECT_ID}.svc.id.goog"}
    assert cluster["releaseChannel"] == {"channel": "REGULAR"}
    assert cluster["enableShieldedNodes"] is True
    assert "enableAutopilot" not in cluster


def test_dev_stack_can_be_destroyed(dev):
    assert dev.one(CLUSTER).inputs["deletionProtection"] is False


def test_deletion_protection_is_on_unless_switched_off():
    program = run_program({"gpu-runners:cluster": {"deletionProtection": None}})
    assert program.one(CLUSTER).inputs["deletionProtection"] is True


def test_nodes_run_as_a_dedicated_account_with_only_node_roles(dev):
    assert dev.one(ACCOUNT, "gke-nodes").inputs["accountId"] == "mlops-kubernetes-nodes"
    grants = {m.inputs["role"]: m.inputs for m in dev.of_type(IAM_MEMBER)}
    # GKE's role for custom node accounts, and what image streaming needs besides.
    assert set(grants) == {
        "roles/container.defaultNodeServiceAccount",
        "roles/serviceusage.serviceUsageConsumer",
    }
    for grant in grants.values():
        assert grant["member"] == f"serviceAccount:{NODE_SA_EMAIL}"
        assert grant["project"] == TEST_PROJECT_ID
    for pool in dev.of_type(NODE_POOL):
        assert pool.inputs["nodeConfig"]["serviceAccount"] == NODE_SA_EMAIL


def test_system_pool_is_the_cpu_node_labelled_gpu_false(dev):
    pool = dev.one(NODE_POOL, "gke-system").inputs
    node = pool["nodeConfig"]
    assert pool["cluster"] == "mlops-kubernetes"
    assert pool["nodeLocations"] == ["europe-west6-b"]
    assert pool["autoscaling"]["totalMinNodeCount"] == 1
    assert pool["autoscaling"]["totalMaxNodeCount"] == 2
    assert node["labels"] == {"gpu": "false"}
    assert node["machineType"] == "e2-medium"
    assert node["spot"] is True
    assert node["diskSizeGb"] == 20
    assert "guestAccelerators" not in node
    assert "taints" not in node
    assert node["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}


def test_gpu_pool_has_one_spot_l4_with_driver_taint_label_and_scales_from_zero(dev):
    pool = dev.one(NODE_POOL, "gke-gpu").inputs
    node = pool["nodeConfig"]
    assert pool["nodeLocations"] == ["europe-west6-b"]
    assert pool["initialNodeCount"] == 0
    assert pool["autoscaling"]["totalMinNodeCount"] == 0
    assert pool["autoscaling"]["totalMaxNodeCount"] == 1
    assert pool["management"] == {"autoRepair": True, "autoUpgrade": True}
    assert node["machineType"] == "g2-standard-4"
    # The guide's gpu=true, and the label of its GPU class (the one class of `gpuPool`).
    assert node["labels"] == {"gpu": "true", "cloud.google.com/compute-class": "gpu"}
    assert node["guestAccelerators"] == [
        {
            "type": "nvidia-l4",
            "count": 1,
            "gpuDriverInstallationConfig": {"gpuDriverVersion": "LATEST"},
        }
    ]
    assert node["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"},
        {"key": "cloud.google.com/compute-class", "value": "gpu", "effect": "NO_SCHEDULE"},
    ]
    assert node["spot"] is True
    assert node["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
    assert node["gcfsConfig"] == {"enabled": True}
    assert node["imageType"] == "COS_CONTAINERD"
    assert node["shieldedInstanceConfig"]["enableSecureBoot"] is True


def test_kubeconfig_is_secret_and_authenticates_through_the_gke_plugin(dev):
    assert "kubeconfig" in dev.secret_outputs
    kubeconfig = yaml.safe_load(dev.outputs["kubeconfig"])
    context = f"gke_{TEST_PROJECT_ID}_europe-west6-b_mlops-kubernetes"
    assert kubeconfig["current-context"] == context
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://203.0.113.10"
    exec_auth = kubeconfig["users"][0]["user"]["exec"]
    assert exec_auth["command"] == "gke-gcloud-auth-plugin"
    assert exec_auth["apiVersion"] == "client.authentication.k8s.io/v1beta1"


def test_outputs_name_the_cluster(dev):
    assert dev.outputs["clusterName"] == "mlops-kubernetes"
    assert dev.outputs["clusterLocation"] == "europe-west6-b"
    assert dev.outputs["clusterEndpoint"] == "203.0.113.10"
    assert dev.outputs["nodeServiceAccount"] == NODE_SA_EMAIL
    assert not dev.secret_outputs - {"kubeconfig"}


def test_kubernetes_provider_uses_the_kubeconfig_and_waits_for_the_system_pool(dev):
    provider = dev.one("pulumi:providers:kubernetes")
    assert is_secret(provider.inputs["kubeconfig"])
    assert reveal(provider.inputs["kubeconfig"]) == dev.outputs["kubeconfig"]
    assert dev.one(NODE_POOL, "gke-system").urn in provider.depends_on


@pytest.mark.parametrize("shape", SHAPES)
def test_no_kubernetes_object_waits_for_the_gpu_pool(shape):
    program = run_program(SHAPES[shape])
    gpu_pools = [
        p for p in program.of_type(NODE_POOL) if p.inputs["nodeConfig"]["labels"]["gpu"] == "true"
    ]
    provider = program.one("pulumi:providers:kubernetes")
    # Every Kubernetes object goes through this provider, and the engine creates the provider
    # before them: what it waits for, they wait for.
    assert program.waits_for(provider, program.one(NODE_POOL, "gke-system"))
    on_cluster = [r for r in program.resources if r.provider.startswith(provider.urn)]
    assert gpu_pools and on_cluster
    for gpu_pool in gpu_pools:
        assert not program.waits_for(provider, gpu_pool)
        for resource in on_cluster:
            assert not program.waits_for(resource, gpu_pool), resource.name


def test_the_autoscaler_removes_empty_nodes_sooner_than_by_default(dev):
    cluster = dev.one(CLUSTER).inputs
    assert cluster["clusterAutoscaling"] == {
        "enabled": False,
        "autoscalingProfile": "OPTIMIZE_UTILIZATION",
    }


def test_everything_is_parented_to_the_cluster_component(dev):
    component = dev.one("gpu-runners:index:GpuCluster")
    parts = [r for r in dev.resources if r.name.startswith("gke-") or r.name == "gke"]
    assert {r.type for r in parts if r is not component} == {
        ACCOUNT,
        IAM_MEMBER,
        CLUSTER,
        NODE_POOL,
        "pulumi:providers:kubernetes",
        "kubernetes:core/v1:ConfigMapPatch",
        "kubernetes:cloud.google.com/v1:ComputeClass",
    }
    assert all(r.parent == component.urn for r in parts if r is not component)


# What GKE's kube-dns-autoscaler starts with (its --default-params).
GKE_KUBE_DNS_LINEAR = {
    "coresPerReplica": 256,
    "nodesPerReplica": 16,
    "preventSinglePointFailure": True,
    "includeUnschedulableNodes": True,
}


def kube_dns_patch(program):
    return program.one("kubernetes:core/v1:ConfigMapPatch", "gke-kube-dns-autoscaler")


def test_a_one_node_system_pool_keeps_one_kube_dns_replica_and_gkes_other_parameters(dev):
    patch = kube_dns_patch(dev).inputs
    assert patch["metadata"]["name"] == "kube-dns-autoscaler"
    assert patch["metadata"]["namespace"] == "kube-system"
    assert json.loads(patch["data"]["linear"]) == GKE_KUBE_DNS_LINEAR | {
        "preventSinglePointFailure": False
    }


def test_switching_single_dns_replica_off_gives_gke_its_parameters_back_without_a_delete(dev):
    # A deleted patch would give up `linear`, and the autoscaler then stops scaling kube-dns
    # ("invalid configMap format"): the same patch is updated to GKE's parameters instead,
    # and never deleted.
    off = run_program({"gpu-runners:cluster": {"singleDnsReplica": False}})
    before, after = kube_dns_patch(dev), kube_dns_patch(off)
    assert (after.type, after.urn) == (before.type, before.urn)
    assert json.loads(after.inputs["data"]["linear"]) == GKE_KUBE_DNS_LINEAR
    assert before.retain_on_delete and after.retain_on_delete
    assert json.loads(kube_dns_patch(run_program(stack="prod")).inputs["data"]["linear"]) == (
        GKE_KUBE_DNS_LINEAR
    )


def test_a_regional_t4_spot_pool_across_zones():
    program = run_program(
        {
            "gpu-runners:cluster": {"location": "us-central1"},
            "gpu-runners:systemPool": {"zones": ["us-central1-a"]},
            "gpu-runners:gpuPool": {
                "acceleratorType": "nvidia-tesla-t4",
                "machineType": "n1-standard-8",
                "acceleratorCount": 2,
                "zones": ["us-central1-a", "us-central1-b"],
                "spot": True,
                "maxNodes": 3,
                "labels": {"team": "vision"},
            },
        }
    )
    pool = program.one(NODE_POOL, "gke-gpu").inputs
    node = pool["nodeConfig"]
    assert pool["nodeLocations"] == ["us-central1-a", "us-central1-b"]
    assert pool["autoscaling"]["totalMaxNodeCount"] == 3
    assert node["guestAccelerators"][0]["type"] == "nvidia-tesla-t4"
    assert node["guestAccelerators"][0]["count"] == 2
    assert node["spot"] is True
    assert node["labels"] == {
        "team": "vision",
        "gpu": "true",
        "cloud.google.com/compute-class": "gpu",
    }


def test_the_machine_type_fixes_the_gpu_count_when_none_is_set():
    program = run_program({"gpu-runners:gpuPool": {"machineType": "g2-standard-24"}})
    node = program.one(NODE_POOL, "gke-gpu").inputs["nodeConfig"]
    assert node["guestAccelerators"][0]["count"] == 2


def test_a_zone_newer_than_the_catalog_is_accepted_when_vouched_for():
    program = run_program(
        {
            "gpu-runners:gpuPool": {
                "zones": ["europe-west6-a"],
                "zonesOutsideCatalog": ["europe-west6-a"],
            }
        }
    )
    assert program.one(NODE_POOL, "gke-gpu").inputs["nodeLocations"] == ["europe-west6-a"]


def test_the_production_example_is_regional_protected_and_on_demand():
    program = run_program(stack="prod")
    cluster = program.one(CLUSTER).inputs
    assert cluster["location"] == "europe-west6"
    assert cluster["deletionProtection"] is True
    system = program.one(NODE_POOL, "gke-system").inputs
    assert system["nodeLocations"] == ["europe-west6-a", "europe-west6-b", "europe-west6-c"]
    assert system["nodeConfig"]["spot"] is False
    gpu = program.one(NODE_POOL, "gke-gpu").inputs
    assert gpu["nodeConfig"]["spot"] is False
    assert gpu["autoscaling"]["totalMinNodeCount"] == 0
