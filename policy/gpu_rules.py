"""The rules about GPU nodes and where runner pods land: GPU pools and their classes, GPU
workloads, runner pools."""

from collections.abc import Mapping
from typing import Any

from pod_specs import (
    CLUSTER,
    GPU_RESOURCE,
    NODE_POOL,
    containers,
    job_pod_specs,
    plain,
    pod_specs,
    prop,
    subject,
)
from pulumi_policy import ReportViolation, ResourceValidationArgs, StackValidationArgs

GPU_LABEL = "gpu"

# The CPU runner pool's label (infra/engines/runner_base.py): CPU runner pods select it, so they
# never land on the system pool beside the controllers.
CPU_JOBS_LABEL = "gpu-runners/cpu-jobs"

DRIVER_VERSIONS = ("DEFAULT", "LATEST")

COMPUTE_CLASS = "kubernetes:cloud.google.com/v1:ComputeClass"

# GKE binds a node pool to a ComputeClass by this label and a NoSchedule taint of the same key
# and value; a pod chooses the class by selecting the label (infra/gcp/gpu_classes.py).
COMPUTE_CLASS_LABEL = "cloud.google.com/compute-class"

# The pool a Spot GPU class falls back to, on demand by design (infra/gcp/gpu_classes.py).
ON_DEMAND_FALLBACK_LABEL = "gpu-runners/on-demand-fallback"


def _gpu_accelerators(props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    accelerators = prop(props, "nodeConfig", "guestAccelerators") or []
    return [plain(a) for a in accelerators if int(plain(a).get("count") or 0) > 0]


def _requests_gpus(pod: Mapping[str, Any]) -> bool:
    for container in containers(pod):
        for kind in ("limits", "requests"):
            if int(prop(container, "resources", kind, GPU_RESOURCE) or 0) > 0:
                return True
    return False


def _tolerates_gpu_taint(pod: Mapping[str, Any]) -> bool:
    for toleration in plain(pod.get("tolerations")) or []:
        toleration = plain(toleration)
        key, operator = toleration.get("key"), toleration.get("operator", "Equal")
        if toleration.get("effect") not in (None, "", "NoSchedule"):
            continue
        if operator == "Exists" and key in (None, "", GPU_RESOURCE):
            return True
        if key == GPU_RESOURCE and toleration.get("value") == "present":
            return True
    return False


def _selects_gpu_nodes(pod: Mapping[str, Any]) -> bool:
    """The guide's gpu=true, GKE's accelerator label, or NVIDIA's GPU Operator's label."""
    selector = plain(pod.get("nodeSelector")) or {}
    return (
        selector.get(GPU_LABEL) == "true"
        or "cloud.google.com/gke-accelerator" in selector
        or selector.get("nvidia.com/gpu.present") == "true"
    )


def gpu_node_pools_are_labelled_tainted_and_driven(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """A GPU node pool carries gpu=true, the NoSchedule GPU taint, its GPU class's label and
    taint, and GKE's driver install."""
    if args.resource_type != NODE_POOL or not _gpu_accelerators(args.props):
        return
    subject = f"GPU node pool {args.name!r}"
    if (prop(args.props, "nodeConfig", "labels") or {}).get(GPU_LABEL) != "true":
        report_violation(
            f"{subject} lacks the label gpu=true, so runners cannot select it; "
            "add it to node_config.labels.",
            None,
        )
    taints = [plain(t) for t in prop(args.props, "nodeConfig", "taints") or []]
    if not any(t.get("key") == GPU_RESOURCE and t.get("effect") == "NO_SCHEDULE" for t in taints):
        report_violation(
            f"{subject} lacks the taint nvidia.com/gpu=present:NoSchedule, so any "
            "pod may land on a GPU node; declare it in node_config.taints.",
            None,
        )
    gpu_class = (prop(args.props, "nodeConfig", "labels") or {}).get(COMPUTE_CLASS_LABEL)
    class_taint = {"key": COMPUTE_CLASS_LABEL, "value": gpu_class, "effect": "NO_SCHEDULE"}
    if gpu_class is None or class_taint not in taints:
        report_violation(
            f"{subject} belongs to no GPU class: it needs the label and the NoSchedule taint "
            f"{COMPUTE_CLASS_LABEL}=<class>, which bind it to its class's ComputeClass; declare "
            "both in node_config.",
            None,
        )
    for accelerator in _gpu_accelerators(args.props):
        version = prop(accelerator, "gpuDriverInstallationConfig", "gpuDriverVersion")
        if version not in DRIVER_VERSIONS:
            report_violation(
                f"{subject} does not install the NVIDIA driver (driver version "
                f"{version or 'unset'}); set gpu_driver_installation_config.gpu_driver_version "
                "to LATEST or DEFAULT.",
                None,
            )


def gpu_workloads_select_and_tolerate_gpu_nodes(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """A workload that requests nvidia.com/gpu selects gpu=true nodes and tolerates the taint."""
    for pod in pod_specs(args):
        if not _requests_gpus(pod):
            continue
        if not _selects_gpu_nodes(pod):
            report_violation(
                f"{subject(args)} requests nvidia.com/gpu but does not select GPU nodes; add "
                'the nodeSelector gpu: "true".',
                None,
            )
        if not _tolerates_gpu_taint(pod):
            report_violation(
                f"{subject(args)} requests nvidia.com/gpu but does not tolerate the GPU taint; "
                "add the toleration {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}.",
                None,
            )


def runner_pods_land_on_runner_pools(
    args: StackValidationArgs, report_violation: ReportViolation
) -> None:
    """On a cluster the stack makes, a pod that runs CI jobs selects a runner pool (gpu=true,
    or the CPU runner pool), never the system pool where the controllers hold forge
    credentials. (On a cluster it does not make, the stack knows no pools.)"""
    if not any(r.resource_type == CLUSTER for r in args.resources):
        args.not_applicable("the stack makes no cluster, so it has no runner pools")
    for resource in args.resources:
        for pod in job_pod_specs(resource):
            selector = plain(pod.get("nodeSelector")) or {}
            if _selects_gpu_nodes(pod) or selector.get(CPU_JOBS_LABEL) == "true":
                continue
            report_violation(
                f"{resource.resource_type.rsplit(':', 1)[-1]} {resource.name!r} runs CI jobs but "
                "selects neither the GPU pool nor the CPU runner pool, so its pods may land "
                'beside the controllers; add the nodeSelector gpu: "true", or '
                f'{CPU_JOBS_LABEL}: "true" with its toleration.',
                resource.urn,
            )


def _shares_gpus(pool: Mapping[str, Any]) -> bool:
    """Whether several pods share each GPU of a node pool (GPU time-sharing)."""
    return any(prop(a, "gpuSharingConfig") for a in _gpu_accelerators(pool))


def _gpu_classes(
    args: StackValidationArgs, report_violation: ReportViolation
) -> dict[str, list[Mapping[str, Any]]]:
    """Each ComputeClass of the stack -> the GPU node pools it names, reporting a class that
    names a pool the stack does not make or that is not bound to it."""
    pools = {
        plain(r.props.get("name")): r.props
        for r in args.resources
        if r.resource_type == NODE_POOL and _gpu_accelerators(r.props)
    }
    classes = {}
    for resource in args.resources:
        if resource.resource_type != COMPUTE_CLASS:
            continue
        name = prop(resource.props, "metadata", "name")
        priorities = [plain(p) for p in prop(resource.props, "spec", "priorities") or []]
        named = [pool for item in priorities for pool in plain(item.get("nodepools")) or []]
        classes[name] = [pools[pool] for pool in named if pool in pools]
        for pool in named:
            labels = prop(pools.get(pool) or {}, "nodeConfig", "labels") or {}
            if labels.get(COMPUTE_CLASS_LABEL) != name:
                report_violation(
                    f"ComputeClass {name!r} names node pool {pool!r}, which is no GPU pool of "
                    f"the stack bound to it (label {COMPUTE_CLASS_LABEL}={name}); the class "
                    "would never scale it up.",
                    resource.urn,
                )
        if not named:
            report_violation(
                f"ComputeClass {name!r} names no node pool, so no runner pod of it ever gets "
                "a node.",
                resource.urn,
            )
    return classes


def gpu_runner_pods_select_a_gpu_class(
    args: StackValidationArgs, report_violation: ReportViolation
) -> None:
    """In a stack with GPU classes, a pod that runs CI jobs on GPUs selects a ComputeClass of
    the stack, whose priorities name the stack's GPU pools bound to it; on time-shared GPUs it
    takes one GPU per container."""
    classes = _gpu_classes(args, report_violation)
    if not classes:
        args.not_applicable("the stack has no GPU classes: it makes no cluster")
    for resource in args.resources:
        for pod in job_pod_specs(resource):
            if not _requests_gpus(pod):
                continue
            subject = f"{resource.resource_type.rsplit(':', 1)[-1]} {resource.name!r}"
            selector = plain(pod.get("nodeSelector")) or {}
            chosen = selector.get(COMPUTE_CLASS_LABEL)
            if chosen not in classes:
                report_violation(
                    f"{subject} runs CI jobs on GPUs but selects no GPU class of the stack "
                    f"({COMPUTE_CLASS_LABEL}: {chosen or 'unset'}), so no fallback applies to "
                    "it; select the ComputeClass of its class.",
                    resource.urn,
                )
                continue
            shared = any(_shares_gpus(pool) for pool in classes[chosen])
            gpus = [int(prop(c, "resources", "limits", GPU_RESOURCE) or 0) for c in containers(pod)]
            if shared and max(gpus) > 1:
                report_violation(
                    f"{subject} asks for {max(gpus)} GPUs in a container on time-shared GPUs "
                    f"(class {chosen!r}); GKE gives a container that shares a GPU one GPU at "
                    "most.",
                    resource.urn,
                )


def gpu_pools_use_spot(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """GPU pools on Spot VMs cost less (42 % less for a g2-standard-4 in Zurich); a Spot
    class's on-demand fallback pool is on demand by design."""
    if args.resource_type != NODE_POOL or not _gpu_accelerators(args.props):
        return
    node = prop(args.props, "nodeConfig") or {}
    if (plain(node.get("labels")) or {}).get(ON_DEMAND_FALLBACK_LABEL) == "true":
        return
    if not (plain(node.get("spot")) or plain(node.get("preemptible"))):
        report_violation(
            f"GPU node pool {args.name!r} runs on-demand VMs; spot: true (gpuPool, or the "
            "class in gpuPools) costs less "
            "(42 % less for a g2-standard-4 in Zurich, see docs/cost.md) if your "
            "jobs can be re-run when Google reclaims a node.",
            None,
        )


def gpu_pools_scale_to_zero(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """GPU pools scale down to zero nodes, so an idle GPU costs nothing."""
    if args.resource_type != NODE_POOL or not _gpu_accelerators(args.props):
        return
    autoscaling = prop(args.props, "autoscaling") or {}
    minimum = autoscaling.get("totalMinNodeCount", autoscaling.get("minNodeCount"))
    if not autoscaling or int(plain(minimum) or 0) > 0:
        report_violation(
            # Numbers reach the analyzer as floats (1.0): shown as whole numbers.
            f"GPU node pool {args.name!r} keeps {int(plain(minimum) or 0) or 'a fixed number of'} "
            "GPU node(s) "
            "even when idle; set minNodes: 0 (gpuPool, or the class in gpuPools).",
            None,
        )


# What only a stack that makes its GKE cluster has to check: node pools, GPU classes, the
# cluster itself, and runner pools.
MADE_CLUSTER_RULES = (
    "gpu-node-pools-are-labelled-tainted-and-driven",
    "runner-pods-land-on-runner-pools",
    "gpu-runner-pods-select-a-gpu-class",
    "prod-clusters-have-deletion-protection",
    "gpu-pools-use-spot",
    "gpu-pools-scale-to-zero",
)
