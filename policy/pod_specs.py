"""What the rules read: the resource types the stack makes, and the pod specs a resource
describes (a workload's, a ScaledJob's, an ARC scale set's runner, a GitLab runner's job pod
and manager)."""

import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from pulumi_policy import PolicyResource, ResourceValidationArgs, Secret

GPU_RESOURCE = "nvidia.com/gpu"

NODE_POOL = "gcp:container/nodePool:NodePool"

CLUSTER = "gcp:container/cluster:Cluster"

HELM_RELEASE = "kubernetes:helm.sh/v3:Release"

# actions-runner-controller's scale-set chart takes the runner pod template as a value.
ARC_SCALE_SET_CHART = "gha-runner-scale-set"

# GitLab's runner chart takes the executor's job pod settings as config.toml text.
GITLAB_RUNNER_CHART = "gitlab-runner"

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


def plain(value: Any) -> Any:
    """A property value with the engine's secret wrapper removed."""
    return value.value if isinstance(value, Secret) else value


def prop(props: Mapping[str, Any], *path: str) -> Any:
    """The value at path in nested props, or None."""
    value: Any = props
    for key in path:
        value = plain(value)
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return plain(value)


def subject(args: ResourceValidationArgs) -> str:
    """How a message names the resource: its type's short name and its Pulumi name."""
    return f"{args.resource_type.rsplit(':', 1)[-1]} {args.name!r}"


def stack_of(urn: str) -> str:
    """The stack name in a URN: urn:pulumi:<stack>::<project>::<type>::<name>."""
    return urn.removeprefix("urn:pulumi:").split("::", 1)[0]


def chart(args: ResourceValidationArgs | PolicyResource) -> str:
    """The chart of a Helm release, without its repository."""
    return str(plain(args.props.get("chart")) or "").rsplit("/", 1)[-1]


def job_pod_specs(args: ResourceValidationArgs | PolicyResource) -> list[Mapping[str, Any]]:
    """The pod specs that run CI jobs: a ScaledJob's runner, an ARC scale set's runner, a
    GitLab runner's job pod."""
    values = prop(args.props, "values") or {}
    if args.resource_type == SCALED_JOB:
        pods = [prop(args.props, *_POD_SPEC_PATHS[SCALED_JOB])]
    elif args.resource_type == HELM_RELEASE and chart(args) == ARC_SCALE_SET_CHART:
        pods = [prop(values, "template", "spec")]
    elif args.resource_type == HELM_RELEASE and chart(args) == GITLAB_RUNNER_CHART:
        pods = [_gitlab_job_pod_spec(prop(values, "runners", "config"))]
    else:
        pods = []
    return [pod for pod in pods if pod]


def pod_specs(args: ResourceValidationArgs) -> list[Mapping[str, Any]]:
    """Every pod spec a resource describes: one for a workload, two for a GitLab runner."""
    if args.resource_type == HELM_RELEASE:
        pods = job_pod_specs(args)
        if chart(args) == GITLAB_RUNNER_CHART:
            pods.append(_gitlab_manager_pod_spec(prop(args.props, "values") or {}))
        return pods
    path = _POD_SPEC_PATHS.get(args.resource_type)
    pod = prop(args.props, *path) if path else None
    return [pod] if pod else []


def _gitlab_manager_pod_spec(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """The runner manager's pod, as the gitlab-runner chart renders it from its values."""
    return {
        "nodeSelector": plain(values.get("nodeSelector")) or {},
        "securityContext": plain(values.get("podSecurityContext")) or {},
        "containers": [
            {"name": "manager", "securityContext": plain(values.get("securityContext")) or {}}
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


def containers(pod: Mapping[str, Any] | None) -> Iterator[Mapping[str, Any]]:
    for key in ("initContainers", "containers"):
        for container in plain((pod or {}).get(key)) or []:
            yield plain(container)


def job_namespace(resource: PolicyResource) -> str | None:
    """Where a resource that runs CI jobs runs them: its own namespace, or its Helm release's."""
    if resource.resource_type == HELM_RELEASE:
        namespace = plain(resource.props.get("namespace"))
    else:
        namespace = prop(resource.props, "metadata", "namespace")
    return namespace if isinstance(namespace, str) else None
