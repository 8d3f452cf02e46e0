"""The gpu-runners policies: GPU placement, secrets and privileges, checked on every preview.

Each policy validates one resource's inputs (camelCase, as the engine passes them). The module
builds no PolicyPack, so tests can call the policies without the policy engine.
"""

import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import yaml
from pulumi_policy import (
    EnforcementLevel,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Secret,
    StackValidationArgs,
    StackValidationPolicy,
)

GPU_RESOURCE = "nvidia.com/gpu"
# The annotation on GitLab's manager that restarts it on a new token: a digest of the token
# (infra/engines/gitlab_runner.py, TOKEN_VERSION_ANNOTATION), which holds no token by construction.
TOKEN_DIGEST_ANNOTATION = "gpu-runners/runner-token-sha256"
GPU_LABEL = "gpu"
# The CPU runner pool's label (infra/engines/runner_base.py): CPU runner pods select it, so they
# never land on the system pool beside the controllers.
CPU_JOBS_LABEL = "gpu-runners/cpu-jobs"
NODE_POOL = "gcp:container/nodePool:NodePool"
CLUSTER = "gcp:container/cluster:Cluster"
SERVICE_ACCOUNT_KEY = "gcp:serviceaccount/key:Key"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
# actions-runner-controller's scale-set chart takes the runner pod template as a value.
ARC_SCALE_SET_CHART = "gha-runner-scale-set"
# GitLab's runner chart takes the executor's job pod settings as config.toml text.
GITLAB_RUNNER_CHART = "gitlab-runner"
PRIMITIVE_ROLES = ("roles/owner", "roles/editor")
DRIVER_VERSIONS = ("DEFAULT", "LATEST")

# Where each Kubernetes workload keeps its pod spec.
_POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "kubernetes:core/v1:Pod": ("spec",),
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "kubernetes:keda.sh/v1alpha1:ScaledJob": ("spec", "jobTargetRef", "template", "spec"),
}
SCALED_JOB = "kubernetes:keda.sh/v1alpha1:ScaledJob"
COMPUTE_CLASS = "kubernetes:cloud.google.com/v1:ComputeClass"
# GKE binds a node pool to a ComputeClass by this label and a NoSchedule taint of the same key
# and value; a pod chooses the class by selecting the label (infra/gcp/gpu_classes.py).
COMPUTE_CLASS_LABEL = "cloud.google.com/compute-class"
# The pool a Spot GPU class falls back to, on demand by design (infra/gcp/gpu_classes.py).
ON_DEMAND_FALLBACK_LABEL = "gpu-runners/on-demand-fallback"

_LITERAL_SECRETS: dict[str, re.Pattern] = {
    "a GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{20,})"),
    "a GitLab token": re.compile(r"\b(?:glpat|glrt)-[A-Za-z0-9_-]{20,}"),
    "a Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def _plain(value: Any) -> Any:
    """A property value with the engine's secret wrapper removed."""
    return value.value if isinstance(value, Secret) else value


def _get(props: Mapping[str, Any], *path: str) -> Any:
    """The value at path in nested props, or None."""
    value: Any = props
    for key in path:
        value = _plain(value)
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return _plain(value)


def _subject(args: ResourceValidationArgs) -> str:
    """How a message names the resource: its type's short name and its Pulumi name."""
    return f"{args.resource_type.rsplit(':', 1)[-1]} {args.name!r}"


def _stack_of(urn: str) -> str:
    """The stack name in a URN: urn:pulumi:<stack>::<project>::<type>::<name>."""
    return urn.removeprefix("urn:pulumi:").split("::", 1)[0]


def _chart(args: ResourceValidationArgs | PolicyResource) -> str:
    """The chart of a Helm release, without its repository."""
    return str(_plain(args.props.get("chart")) or "").rsplit("/", 1)[-1]


def _job_pod_specs(args: ResourceValidationArgs | PolicyResource) -> list[Mapping[str, Any]]:
    """The pod specs that run CI jobs: a ScaledJob's runner, an ARC scale set's runner, a
    GitLab runner's job pod."""
    values = _get(args.props, "values") or {}
    if args.resource_type == SCALED_JOB:
        pods = [_get(args.props, *_POD_SPEC_PATHS[SCALED_JOB])]
    elif args.resource_type == HELM_RELEASE and _chart(args) == ARC_SCALE_SET_CHART:
        pods = [_get(values, "template", "spec")]
    elif args.resource_type == HELM_RELEASE and _chart(args) == GITLAB_RUNNER_CHART:
        pods = [_gitlab_job_pod_spec(_get(values, "runners", "config"))]
    else:
        pods = []
    return [pod for pod in pods if pod]


def _pod_specs(args: ResourceValidationArgs) -> list[Mapping[str, Any]]:
    """Every pod spec a resource describes: one for a workload, two for a GitLab runner."""
    if args.resource_type == HELM_RELEASE:
        pods = _job_pod_specs(args)
        if _chart(args) == GITLAB_RUNNER_CHART:
            pods.append(_gitlab_manager_pod_spec(_get(args.props, "values") or {}))
        return pods
    path = _POD_SPEC_PATHS.get(args.resource_type)
    pod = _get(args.props, *path) if path else None
    return [pod] if pod else []


def _gitlab_manager_pod_spec(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """The runner manager's pod, as the gitlab-runner chart renders it from its values."""
    return {
        "nodeSelector": _plain(values.get("nodeSelector")) or {},
        "securityContext": _plain(values.get("podSecurityContext")) or {},
        "containers": [
            {"name": "manager", "securityContext": _plain(values.get("securityContext")) or {}}
        ],
    }


# A job pod's containers and the config.toml table that overrides the executor-wide keys for
# each (common/config.go: Build-, Helper- and ServiceContainerSecurityContext; the executor
# takes each container's own flag over the executor-wide one). "svc-0" stands for every
# service container.
_GITLAB_CONTAINERS = {
    "build": "build_container_security_context",
    "helper": "helper_container_security_context",
    "svc-0": "service_container_security_context",
}


def _gitlab_job_pod_spec(config: Any) -> Mapping[str, Any] | None:
    """The parts of a job pod spec that GitLab Runner's Kubernetes executor builds from its
    config.toml: node selector, tolerations, token mounting, each container's privileges, and
    what strategic pod_spec patches set over them (the pod's security context and token
    mounting, a container's security context and resources, containers they add)."""
    if not isinstance(config, str):
        return None
    kubernetes = (tomllib.loads(config).get("runners") or [{}])[0].get("kubernetes", {})
    containers: dict[str, dict[str, Any]] = {}
    for name, table in _GITLAB_CONTAINERS.items():
        own = kubernetes.get(table, {})
        containers[name] = {
            "name": name,
            "securityContext": {
                "privileged": own.get("privileged", kubernetes.get("privileged", False)),
                "allowPrivilegeEscalation": own.get(
                    "allow_privilege_escalation", kubernetes.get("allow_privilege_escalation")
                ),
            },
        }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": kubernetes.get("automount_service_account_token"),
    }
    for patch in kubernetes.get("pod_spec", []):
        # GitLab's examples write patches in YAML; the stack writes JSON, which is YAML too.
        patched = yaml.safe_load(patch.get("patch") or "{}") or {}
        for key in ("securityContext", "automountServiceAccountToken"):
            if key in patched:
                pod[key] = patched[key]
        for container in patched.get("containers", []):
            # A strategic patch merges containers by name, and adds the ones it names anew.
            modelled = containers.setdefault(
                container.get("name"), {"name": container.get("name"), "securityContext": {}}
            )
            if "resources" in container:
                modelled["resources"] = container["resources"]
            modelled["securityContext"] |= container.get("securityContext", {})
    return {
        **pod,
        "nodeSelector": kubernetes.get("node_selector", {}),
        # "key=value" tolerates that value; a bare "key" any value (getPodTolerations).
        "tolerations": [
            {"key": key.partition("=")[0], "value": key.partition("=")[2], "effect": effect}
            if "=" in key
            else {"key": key, "operator": "Exists", "effect": effect}
            for key, effect in kubernetes.get("node_tolerations", {}).items()
        ],
        "containers": list(containers.values()),
    }


def _containers(pod: Mapping[str, Any] | None) -> Iterator[Mapping[str, Any]]:
    for key in ("initContainers", "containers"):
        for container in _plain((pod or {}).get(key)) or []:
            yield _plain(container)


def _gpu_accelerators(props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    accelerators = _get(props, "nodeConfig", "guestAccelerators") or []
    return [_plain(a) for a in accelerators if int(_plain(a).get("count") or 0) > 0]


def _requests_gpus(pod: Mapping[str, Any]) -> bool:
    for container in _containers(pod):
        for kind in ("limits", "requests"):
            if int(_get(container, "resources", kind, GPU_RESOURCE) or 0) > 0:
                return True
    return False


def _tolerates_gpu_taint(pod: Mapping[str, Any]) -> bool:
    for toleration in _plain(pod.get("tolerations")) or []:
        toleration = _plain(toleration)
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
    selector = _plain(pod.get("nodeSelector")) or {}
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
    if (_get(args.props, "nodeConfig", "labels") or {}).get(GPU_LABEL) != "true":
        report_violation(
            f"{subject} lacks the label gpu=true, so runners cannot select it; "
            "add it to node_config.labels.",
            None,
        )
    taints = [_plain(t) for t in _get(args.props, "nodeConfig", "taints") or []]
    if not any(t.get("key") == GPU_RESOURCE and t.get("effect") == "NO_SCHEDULE" for t in taints):
        report_violation(
            f"{subject} lacks the taint nvidia.com/gpu=present:NoSchedule, so any "
            "pod may land on a GPU node; declare it in node_config.taints.",
            None,
        )
    gpu_class = (_get(args.props, "nodeConfig", "labels") or {}).get(COMPUTE_CLASS_LABEL)
    class_taint = {"key": COMPUTE_CLASS_LABEL, "value": gpu_class, "effect": "NO_SCHEDULE"}
    if gpu_class is None or class_taint not in taints:
        report_violation(
            f"{subject} belongs to no GPU class: it needs the label and the NoSchedule taint "
            f"{COMPUTE_CLASS_LABEL}=<class>, which bind it to its class's ComputeClass; declare "
            "both in node_config.",
            None,
        )
    for accelerator in _gpu_accelerators(args.props):
        version = _get(accelerator, "gpuDriverInstallationConfig", "gpuDriverVersion")
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
    for pod in _pod_specs(args):
        if not _requests_gpus(pod):
            continue
        if not _selects_gpu_nodes(pod):
            report_violation(
                f"{_subject(args)} requests nvidia.com/gpu but does not select GPU nodes; add "
                'the nodeSelector gpu: "true".',
                None,
            )
        if not _tolerates_gpu_taint(pod):
            report_violation(
                f"{_subject(args)} requests nvidia.com/gpu but does not tolerate the GPU taint; "
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
        return
    for resource in args.resources:
        for pod in _job_pod_specs(resource):
            selector = _plain(pod.get("nodeSelector")) or {}
            if _selects_gpu_nodes(pod) or selector.get(CPU_JOBS_LABEL) == "true":
                continue
            report_violation(
                f"{resource.resource_type.rsplit(':', 1)[-1]} {resource.name!r} runs CI jobs but "
                "selects neither the GPU pool nor the CPU runner pool, so its pods may land "
                'beside the controllers; add the nodeSelector gpu: "true", or '
                f'{CPU_JOBS_LABEL}: "true" with its toleration.',
                resource.urn,
            )


def _shared_clients(pool: Mapping[str, Any]) -> int | None:
    """How many pods share each GPU of a node pool; None: unshared."""
    for accelerator in _gpu_accelerators(pool):
        clients = _get(accelerator, "gpuSharingConfig", "maxSharedClientsPerGpu")
        if clients is not None:
            return int(clients)
    return None


def _gpu_classes(
    args: StackValidationArgs, report_violation: ReportViolation
) -> dict[str, list[Mapping[str, Any]]]:
    """Each ComputeClass of the stack -> the GPU node pools it names, reporting a class that
    names a pool the stack does not make or that is not bound to it."""
    pools = {
        _plain(r.props.get("name")): r.props
        for r in args.resources
        if r.resource_type == NODE_POOL and _gpu_accelerators(r.props)
    }
    classes = {}
    for resource in args.resources:
        if resource.resource_type != COMPUTE_CLASS:
            continue
        name = _get(resource.props, "metadata", "name")
        priorities = [_plain(p) for p in _get(resource.props, "spec", "priorities") or []]
        named = [pool for item in priorities for pool in _plain(item.get("nodepools")) or []]
        classes[name] = [pools[pool] for pool in named if pool in pools]
        for pool in named:
            labels = _get(pools.get(pool) or {}, "nodeConfig", "labels") or {}
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
        return  # runners on a cluster the stack does not make: its nodes are not its business
    for resource in args.resources:
        for pod in _job_pod_specs(resource):
            if not _requests_gpus(pod):
                continue
            subject = f"{resource.resource_type.rsplit(':', 1)[-1]} {resource.name!r}"
            selector = _plain(pod.get("nodeSelector")) or {}
            chosen = selector.get(COMPUTE_CLASS_LABEL)
            if chosen not in classes:
                report_violation(
                    f"{subject} runs CI jobs on GPUs but selects no GPU class of the stack "
                    f"({COMPUTE_CLASS_LABEL}: {chosen or 'unset'}), so no fallback applies to "
                    "it; select the ComputeClass of its class.",
                    resource.urn,
                )
                continue
            shared = any(_shared_clients(pool) for pool in classes[chosen])
            gpus = [
                int(_get(c, "resources", "limits", GPU_RESOURCE) or 0) for c in _containers(pod)
            ]
            if shared and max(gpus) > 1:
                report_violation(
                    f"{subject} asks for {max(gpus)} GPUs in a container on time-shared GPUs "
                    f"(class {chosen!r}); GKE gives a container that shares a GPU one GPU at "
                    "most.",
                    resource.urn,
                )


def runner_pods_mount_no_api_token(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """A pod that runs CI jobs gets no Kubernetes API token: automountServiceAccountToken is
    false in the pod spec itself, whatever its service account says."""
    for pod in _job_pod_specs(args):
        if _plain(pod.get("automountServiceAccountToken")) is not False:
            report_violation(
                f"{_subject(args)} runs CI jobs with a Kubernetes API token mounted; set "
                "automountServiceAccountToken: false in the pod spec (GitLab: "
                "automount_service_account_token = false).",
                None,
            )


def pods_have_a_seccomp_profile(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """Every pod runs under a seccomp profile (RuntimeDefault or stricter): GKE Standard applies
    none to a pod that does not ask."""
    for pod in _pod_specs(args):
        if _get(pod, "securityContext", "seccompProfile", "type"):
            continue
        unfiltered = [
            c.get("name")
            for c in _containers(pod)
            if not _get(c, "securityContext", "seccompProfile", "type")
        ]
        if unfiltered:
            report_violation(
                f"{_subject(args)}: container {unfiltered[0]!r} runs without a seccomp profile; "
                "set securityContext.seccompProfile.type: RuntimeDefault on the pod.",
                None,
            )


def _job_namespace(resource: PolicyResource) -> str | None:
    """Where a resource that runs CI jobs runs them: its own namespace, or its Helm release's."""
    if resource.resource_type == HELM_RELEASE:
        namespace = _plain(resource.props.get("namespace"))
    else:
        namespace = _get(resource.props, "metadata", "namespace")
    return namespace if isinstance(namespace, str) else None


def runner_namespaces_are_isolated(
    args: StackValidationArgs, report_violation: ReportViolation
) -> None:
    """Every namespace where CI jobs run has a NetworkPolicy that selects all of its pods for
    ingress and egress, so that a job reaches only what an allow rule lets it."""
    isolated = set()
    for resource in args.resources:
        spec = _get(resource.props, "spec") or {}
        closes_all = _plain(spec.get("podSelector")) == {} and {"Ingress", "Egress"} <= set(
            _plain(spec.get("policyTypes")) or []
        )
        if resource.resource_type == NETWORK_POLICY and closes_all:
            isolated.add(_get(resource.props, "metadata", "namespace"))
    for resource in args.resources:
        if not _job_pod_specs(resource):
            continue
        namespace = _job_namespace(resource)
        if namespace is not None and namespace not in isolated:
            report_violation(
                f"{resource.resource_type.rsplit(':', 1)[-1]} {resource.name!r} runs CI jobs in "
                f"namespace {namespace!r}, which no NetworkPolicy closes; add one with "
                "podSelector: {} and policyTypes [Ingress, Egress], and allow only DNS, the "
                "metadata server and the internet.",
                resource.urn,
            )


def _literal_secret_kind(text: Any) -> str | None:
    text = _plain(text)
    if not isinstance(text, str):
        return None
    return next((kind for kind, p in _LITERAL_SECRETS.items() if p.search(text)), None)


def containers_hold_no_literal_tokens(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """No container env value, command or argument holds a token or key in clear."""
    for container in (c for pod in _pod_specs(args) for c in _containers(pod)):
        places = [
            (f"env {_plain(e).get('name')}", _plain(e).get("value"))
            for e in _plain(container.get("env")) or []
        ]
        places += [("command", part) for part in _plain(container.get("command")) or []]
        places += [("args", part) for part in _plain(container.get("args")) or []]
        for place, text in places:
            kind = _literal_secret_kind(text)
            if kind:
                report_violation(
                    f"{_subject(args)}: container {container.get('name')!r} {place} holds "
                    f"{kind} in clear; store it in a Secret and pass it with "
                    "env.valueFrom.secretKeyRef.",
                    None,
                )


def _strings(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every leaf of a nested value with its dotted path. The analyzer hands lists over as
    read-only sequences, not `list`, and secrets in plain text (pulumi-policy, policy.py)."""
    value = _plain(value)
    if isinstance(value, Mapping):
        # Iterating the keys reads no value, so the digest is never read (unknown on a first
        # preview when the token is made by GitLab).
        for key in value:
            if key != TOKEN_DIGEST_ANNOTATION:
                yield from _strings(value[key], f"{path}.{key}")
    elif isinstance(value, Sequence) and not isinstance(value, str):
        for index, inner in enumerate(value):
            yield from _strings(inner, f"{path}[{index}]")
    else:
        yield path, value


def helm_values_hold_no_literal_tokens(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """No Helm release value holds a token or key in clear; it would sit in the release's
    history in the cluster and in the stack's state."""
    if args.resource_type != HELM_RELEASE:
        return
    for path, value in _strings(args.props.get("values") or {}, "values"):
        # A value marked secret in the program is no exception: the analyzer sees it in
        # plain text, and Helm keeps it so in the release's history in the cluster.
        kind = _literal_secret_kind(value)
        if kind:
            report_violation(
                f"{_subject(args)}: {path} holds {kind} in clear; create a Secret from secret "
                "config and give the chart its name.",
                None,
            )


def no_service_account_keys(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """No long-lived service account keys: use Workload Identity (Federation) instead."""
    if args.resource_type == SERVICE_ACCOUNT_KEY:
        report_violation(
            f"{_subject(args)} creates a long-lived service account JSON key; remove it and use "
            "Workload Identity (pods) or Workload Identity Federation (CI).",
            None,
        )


def no_primitive_roles(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Nobody is granted roles/owner or roles/editor."""
    role = _plain(args.props.get("role"))
    policy = _plain(args.props.get("policyData"))
    granted = [r for r in PRIMITIVE_ROLES if r == role or (isinstance(policy, str) and r in policy)]
    for primitive in granted:
        report_violation(
            f"{_subject(args)} grants {primitive}; grant the narrow predefined roles the member "
            "needs instead.",
            None,
        )


def no_privileged_containers(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """No privileged container, and every container forbids privilege escalation."""
    for container in (c for pod in _pod_specs(args) for c in _containers(pod)):
        name = container.get("name")
        security = _plain(container.get("securityContext")) or {}
        if _plain(security.get("privileged")) is True:
            report_violation(
                f"{_subject(args)}: container {name!r} is privileged; remove "
                "securityContext.privileged and add only the capabilities it needs.",
                None,
            )
        if _plain(security.get("allowPrivilegeEscalation")) is not False:
            report_violation(
                f"{_subject(args)}: container {name!r} may escalate privileges; set "
                "securityContext.allowPrivilegeEscalation: false.",
                None,
            )


def prod_clusters_have_deletion_protection(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """In stacks named prod*, a GKE cluster keeps deletion protection on."""
    stack = _stack_of(args.urn)
    if args.resource_type != CLUSTER or not stack.startswith("prod"):
        return
    if _plain(args.props.get("deletionProtection")) is False:
        report_violation(
            f"{_subject(args)} in stack {stack!r} has deletion protection off; set "
            "cluster.deletionProtection: true (the default).",
            None,
        )


def gpu_pools_use_spot(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """GPU pools on Spot VMs cost less (42 % less for a g2-standard-4 in Zurich); a Spot
    class's on-demand fallback pool is on demand by design."""
    if args.resource_type != NODE_POOL or not _gpu_accelerators(args.props):
        return
    node = _get(args.props, "nodeConfig") or {}
    if (_plain(node.get("labels")) or {}).get(ON_DEMAND_FALLBACK_LABEL) == "true":
        return
    if not (_plain(node.get("spot")) or _plain(node.get("preemptible"))):
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
    autoscaling = _get(args.props, "autoscaling") or {}
    minimum = autoscaling.get("totalMinNodeCount", autoscaling.get("minNodeCount"))
    if not autoscaling or int(_plain(minimum) or 0) > 0:
        report_violation(
            # Numbers reach the analyzer as floats (1.0): shown as whole numbers.
            f"GPU node pool {args.name!r} keeps {int(_plain(minimum) or 0) or 'a fixed number of'} "
            "GPU node(s) "
            "even when idle; set minNodes: 0 (gpuPool, or the class in gpuPools).",
            None,
        )


def _policy(
    validate: Callable[[Any, ReportViolation], None],
    level: EnforcementLevel,
    kind: type[ResourceValidationPolicy | StackValidationPolicy] = ResourceValidationPolicy,
) -> ResourceValidationPolicy | StackValidationPolicy:
    """A policy named after its function, described by its docstring; a resource policy, or
    with `kind` StackValidationPolicy one that sees every resource of the stack at once."""
    return kind(
        name=validate.__name__.replace("_", "-"),
        description=validate.__doc__ or "",
        validate=validate,
        enforcement_level=level,
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
MANDATORY = EnforcementLevel.MANDATORY
ADVISORY = EnforcementLevel.ADVISORY

POLICIES: list[ResourceValidationPolicy | StackValidationPolicy] = [
    _policy(gpu_node_pools_are_labelled_tainted_and_driven, MANDATORY),
    _policy(gpu_workloads_select_and_tolerate_gpu_nodes, MANDATORY),
    _policy(runner_pods_land_on_runner_pools, MANDATORY, StackValidationPolicy),
    _policy(gpu_runner_pods_select_a_gpu_class, MANDATORY, StackValidationPolicy),
    _policy(runner_pods_mount_no_api_token, MANDATORY),
    _policy(pods_have_a_seccomp_profile, MANDATORY),
    _policy(runner_namespaces_are_isolated, MANDATORY, StackValidationPolicy),
    _policy(containers_hold_no_literal_tokens, MANDATORY),
    _policy(helm_values_hold_no_literal_tokens, MANDATORY),
    _policy(no_service_account_keys, MANDATORY),
    _policy(no_primitive_roles, MANDATORY),
    _policy(no_privileged_containers, MANDATORY),
    _policy(prod_clusters_have_deletion_protection, MANDATORY),
    _policy(gpu_pools_use_spot, ADVISORY),
    _policy(gpu_pools_scale_to_zero, ADVISORY),
]
