"""What every runner engine shares: its arguments, namespace, service account, credential
Secret, and where its pods land and how big they are."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_kubernetes as k8s

DEFAULT_LABELS: tuple[str, ...] = ("cml-runner",)
DEFAULT_CPU = "1"
DEFAULT_MEMORY = "2000Mi"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
# The cluster autoscaler must not move a runner pod that may be running a job.
NOT_EVICTABLE = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
# The component types a runner has been, one per engine (and the CML engine's old name).
RUNNER_TYPES = (
    "gpu-runners:index:CmlRunner",
    "gpu-runners:index:RunnerDeployment",
    "gpu-runners:index:ArcRunner",
    "gpu-runners:index:GitlabRunner",
)


def default_node_selector(gpus: int) -> dict[str, str]:
    """Nodes a runner lands on unless told otherwise: the GPU pool when it asks for GPUs."""
    return {"gpu": "true" if gpus > 0 else "false"}


@dataclass(frozen=True)
class Registries:
    """Where runner and job images come from: the public registries, or mirrors of them."""

    docker_hub: pulumi.Input[str] = "docker.io"
    ghcr: pulumi.Input[str] = "ghcr.io"
    gitlab: pulumi.Input[str] = "registry.gitlab.com"


@dataclass(frozen=True, kw_only=True)
class RunnerBaseArgs:
    """What a runner is on any engine: where it registers, its labels, its pods' size and place."""

    repository: str
    """Repository (GitHub) or project (GitLab) URL the runner serves."""
    labels: Sequence[str] = DEFAULT_LABELS
    """Labels jobs target."""
    namespace: str | None = None
    """Namespace to run in; defaults to the runner's name."""
    create_namespace: bool = True
    """Create the namespace, or use one that already exists."""
    cpu: str = DEFAULT_CPU
    """CPU request and limit of a runner pod."""
    memory: str = DEFAULT_MEMORY
    """Memory request and limit of a runner pod."""
    gpus: int = 1
    """GPUs per runner pod; 0 makes a CPU runner."""
    node_selector: Mapping[str, str] | None = None
    """Node labels the pod must match; defaults to gpu=true, or gpu=false with no GPUs."""
    google_service_account: pulumi.Input[str] | None = None
    """Google service account the pod acts as through GKE Workload Identity, if any."""
    registries: Registries = Registries()
    """Where the runner's and its jobs' images are pulled from."""


def app_labels(engine: str, name: str) -> dict[str, str]:
    """The app.kubernetes.io labels of every object of one runner."""
    return {
        "app.kubernetes.io/name": engine,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "ci-runner",
        "app.kubernetes.io/part-of": "gpu-runners",
        "app.kubernetes.io/managed-by": "pulumi",
    }


def pod_labels(base: Mapping[str, str], args: RunnerBaseArgs) -> dict[str, str]:
    """A runner pod's labels: the app set, and one `gpu-runners/<label>` per runner label."""
    return {**base, **{f"gpu-runners/{label}": "true" for label in args.labels}}


def container_resources(args: RunnerBaseArgs) -> dict:
    """Requests equal to limits (Guaranteed), GPUs included."""
    resources = {"cpu": args.cpu, "memory": args.memory}
    if args.gpus > 0:
        resources[GPU_RESOURCE] = str(args.gpus)
    return {"requests": resources, "limits": dict(resources)}


def placement(args: RunnerBaseArgs) -> dict:
    """The pod spec's nodeSelector, and the GPU taint's toleration for GPU runners."""
    spec: dict = {"nodeSelector": dict(args.node_selector or default_node_selector(args.gpus))}
    if args.gpus > 0:
        spec["tolerations"] = [GPU_TOLERATION]
    return spec


@dataclass(frozen=True)
class RunnerObjects:
    """The names of what every runner has before its pods: namespace, account, Secret."""

    namespace: pulumi.Output[str]
    service_account: pulumi.Output[str]
    secret: pulumi.Output[str]


def runner_objects(
    name: str,
    args: RunnerBaseArgs,
    labels: Mapping[str, str],
    pod_security: Literal["baseline", "restricted"],
    secret_data: Mapping[str, pulumi.Input[str]],
    component_type: str,
    opts: pulumi.ResourceOptions,
) -> RunnerObjects:
    """The namespace (Pod Security `pod_security` enforced), the service account the pods run
    as (with the Workload Identity annotation), and a Secret holding `secret_data`, all
    named after the runner, children of the engine's component of type `component_type`."""
    # The same runner on another engine owned these objects under another component: without
    # aliases, moving engines would create them anew before deleting the old ones, and fail
    # on their names.
    opts = pulumi.ResourceOptions.merge(
        opts,
        pulumi.ResourceOptions(
            aliases=[
                pulumi.Alias(parent=pulumi.create_urn(name, other))
                for other in RUNNER_TYPES
                if other != component_type
            ]
        ),
    )
    namespace: pulumi.Input[str] = args.namespace or name
    if args.create_namespace:
        namespace = k8s.core.v1.Namespace(
            name,
            metadata={
                "name": namespace,
                "labels": {
                    **labels,
                    "pod-security.kubernetes.io/enforce": pod_security,
                    "pod-security.kubernetes.io/warn": "restricted",
                    "pod-security.kubernetes.io/audit": "restricted",
                },
            },
            opts=opts,
        ).metadata.name

    annotations = (
        {"iam.gke.io/gcp-service-account": args.google_service_account}
        if args.google_service_account is not None
        else None
    )
    service_account = k8s.core.v1.ServiceAccount(
        name,
        metadata={
            "name": name,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": annotations,
        },
        opts=opts,
    )
    secret = k8s.core.v1.Secret(
        f"{name}-token",
        metadata={"name": f"{name}-token", "namespace": namespace, "labels": dict(labels)},
        type="Opaque",
        string_data={key: pulumi.Output.secret(value) for key, value in secret_data.items()},
        opts=opts,
    )
    return RunnerObjects(
        namespace=pulumi.Output.from_input(namespace),
        service_account=service_account.metadata.name,
        secret=secret.metadata.name,
    )
