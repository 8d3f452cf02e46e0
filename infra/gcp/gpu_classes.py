"""A GPU class on the cluster: what its node pools add to a node's settings, and the GKE
ComputeClass that tries them in order.

GKE binds a manually made node pool to a ComputeClass by a label and a NoSchedule taint, both
`cloud.google.com/compute-class=<class>`; the class lists the pools in `priorities`, one
`nodepools` item per step, since GKE does not try the pools of one item in order; a pod
chooses the class with a nodeSelector ("About custom ComputeClasses", Standard clusters,
GKE 1.30.3-gke.1451000 and later).
"""

import pulumi
import pulumi_kubernetes as k8s

from infra.engines.runner_base import COMPUTE_CLASS_LABEL
from infra.settings import GpuClass, GpuNodePool

# GKE taints a GPU pool itself only when the cluster already has a non-GPU pool when the GPU
# pool is created (GKE docs, "Run GPUs in Standard node pools", quoted in
# terraform-google-kubernetes-engine#703); here both pools are created together, so GKE might
# not. Declaring the taint makes it hold either way, as Google's Cluster Toolkit does
# (cluster-toolkit#1285). Since terraform-provider-google 5.0 (magic-modules#9011, the fix for
# the duplicate-taint reports of #7928) a pool manages only the taint keys it declares, and
# pulumi-gcp 10 builds on it, so a taint GKE adds shows in effectiveTaints, not as a diff.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}
# Marks the pool a Spot class falls back to, which is on demand by design (policy/rules.py).
ON_DEMAND_FALLBACK_LABEL = "gpu-runners/on-demand-fallback"


def gpu_node_labels(gpu_class: GpuClass, pool: GpuNodePool) -> dict[str, str]:
    """A GPU class's pool's node labels: the class's own, gpu=true, the class, and on the
    fallback pool its mark."""
    labels = {**gpu_class.settings.node_labels, COMPUTE_CLASS_LABEL: gpu_class.name}
    if pool.name != gpu_class.node_pools[0].name:
        labels[ON_DEMAND_FALLBACK_LABEL] = "true"
    return labels


def gpu_node_config(gpu_class: GpuClass, pool: GpuNodePool) -> dict:
    """What a GPU class's pool adds to the node settings every pool shares, its labels aside.

    Labels and taints update a pool in place (terraform-provider-google, node_config.go:
    NodePools.Update with Labels or Taints; GKE, "Update existing node pools": "without
    re-creating the node pool"), so an existing pool joins its class without being replaced.
    Spot, flex-start and the accelerator block replace it (ForceNew).
    """
    settings = gpu_class.settings
    accelerator: dict = {
        "type": settings.accelerator_type,
        "count": settings.gpus_per_node,
        "gpu_driver_installation_config": {"gpu_driver_version": settings.driver_version},
    }
    if settings.time_sharing_clients_per_gpu is not None:
        # GKE labels the nodes with the strategy and the count, which the pods select
        # ("About GPU time-sharing in GKE").
        accelerator["gpu_sharing_config"] = {
            "gpu_sharing_strategy": "TIME_SHARING",
            "max_shared_clients_per_gpu": settings.time_sharing_clients_per_gpu,
        }
    config = {
        "spot": pool.spot,
        "guest_accelerators": [accelerator],
        "taints": [
            GPU_TAINT,
            {"key": COMPUTE_CLASS_LABEL, "value": gpu_class.name, "effect": "NO_SCHEDULE"},
        ],
    }
    if pool.flex_start:
        # GKE's flex-start pools take no reservation ("Run a small batch workload with GPUs
        # and flex-start VMs": --reservation-affinity none; GKE 1.33.0-gke.1712000 and later).
        config["flex_start"] = True
        config["reservation_affinity"] = {"consume_reservation_type": "NO_RESERVATION"}
    return config


def compute_class_spec(gpu_class: GpuClass) -> dict:
    """The ComputeClass of a GPU class: its pools in order, nothing else.

    Every field with a server-side default is written, so a refresh finds what was applied.
    `whenUnsatisfiable: DoNotScaleUp` keeps a pod pending when no pool can grow, rather than
    letting GKE add a node of the cluster's default kind (the default before GKE 1.33).
    Active migration stays off: it would drain a fallback node to move its pods back to Spot,
    and a runner pod is a CI job in progress.
    """
    return {
        "description": f"GPU class {gpu_class.name} of gpu-runners: its pools, first choice first",
        "priorities": [{"nodepools": [pool.name]} for pool in gpu_class.node_pools],
        "nodePoolAutoCreation": {"enabled": False},
        "activeMigration": {"optimizeRulePriority": False},
        "whenUnsatisfiable": "DoNotScaleUp",
    }


def compute_class(
    resource_name: str, gpu_class: GpuClass, opts: pulumi.ResourceOptions
) -> k8s.apiextensions.CustomResource:
    """The cluster-scoped ComputeClass object named after the class."""
    return k8s.apiextensions.CustomResource(
        resource_name,
        api_version="cloud.google.com/v1",
        kind="ComputeClass",
        metadata={"name": gpu_class.name, "labels": {"app.kubernetes.io/part-of": "gpu-runners"}},
        spec=compute_class_spec(gpu_class),
        opts=opts,
    )
