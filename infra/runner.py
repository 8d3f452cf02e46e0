"""RunnerDeployment: a labelled CML runner as a Deployment on GPU or CPU nodes, one job a pod."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_kubernetes as k8s

CML_IMAGE = "iterativeai/cml"
DEFAULT_IMAGE_TAG = "0-dvc3-base1"
DEFAULT_LABELS: tuple[str, ...] = ("cml-runner",)
DEFAULT_CPU = "1"
DEFAULT_MEMORY = "2000Mi"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
TOKEN_KEY = "token"
# The runner unregisters itself from GitHub or GitLab when it gets SIGTERM; give it time to.
TERMINATION_GRACE_SECONDS = 120
# What a runner and ordinary training jobs need as root: apt and dpkg (ownership, modes,
# dropping to the _apt user), pip, dvc, sudo (audit log), and signalling their own children.
# Everything else in the runtime's default set (NET_RAW, MKNOD, SETPCAP, SETFCAP,
# NET_BIND_SERVICE, SYS_CHROOT) is dropped.
KEPT_CAPABILITIES: tuple[str, ...] = (
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
)


def default_node_selector(gpus: int) -> dict[str, str]:
    """Nodes a runner lands on unless told otherwise: the GPU pool when it asks for GPUs."""
    return {"gpu": "true" if gpus > 0 else "false"}


def runner_image(tag: str, gpus: int) -> str:
    """The CML image; the -gpu variant carries CUDA for runners that get a GPU."""
    return f"{CML_IMAGE}:{tag}-gpu" if gpus > 0 else f"{CML_IMAGE}:{tag}"


@dataclass(frozen=True)
class RunnerDeploymentArgs:
    """What one runner is: where it registers, with which labels, on which nodes."""

    platform: Literal["github", "gitlab"]
    """Forge the runner registers with; CML's --driver."""
    repository: str
    """Repository (GitHub) or project (GitLab) URL the runner serves."""
    token: pulumi.Input[str]
    """GitHub PAT or GitLab token that registers the runner; stored only in a Secret."""
    labels: Sequence[str] = DEFAULT_LABELS
    """Labels jobs target, e.g. `runs-on: [self-hosted, cml-runner]`."""
    namespace: str | None = None
    """Namespace to run in; defaults to the runner's name."""
    create_namespace: bool = True
    """Create the namespace, or use one that already exists."""
    replicas: int = 1
    """Runner pods; each takes one job, then exits and is replaced."""
    cpu: str = DEFAULT_CPU
    """CPU request and limit of a runner pod."""
    memory: str = DEFAULT_MEMORY
    """Memory request and limit of a runner pod."""
    gpus: int = 1
    """GPUs per runner pod; 0 makes a CPU runner."""
    node_selector: Mapping[str, str] | None = None
    """Node labels the pod must match; defaults to gpu=true, or gpu=false with no GPUs."""
    image_tag: str = DEFAULT_IMAGE_TAG
    """Tag of iterativeai/cml; `-gpu` is appended for GPU runners."""
    google_service_account: pulumi.Input[str] | None = None
    """Google service account the pod acts as through GKE Workload Identity, if any."""


class RunnerDeployment(pulumi.ComponentResource):
    """A namespace, service account, token Secret and runner Deployment, on any Kubernetes."""

    namespace: pulumi.Output[str]
    deployment_name: pulumi.Output[str]
    labels: list[str]

    def __init__(
        self, name: str, args: RunnerDeploymentArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gpu-runners:index:RunnerDeployment", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        app_labels = {
            "app.kubernetes.io/name": "cml-runner",
            "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": "ci-runner",
            "app.kubernetes.io/part-of": "gpu-runners",
            "app.kubernetes.io/managed-by": "pulumi",
        }

        namespace: pulumi.Input[str] = args.namespace or name
        if args.create_namespace:
            namespace = k8s.core.v1.Namespace(
                name,
                metadata={
                    "name": namespace,
                    "labels": {
                        **app_labels,
                        # The runner runs as root to install packages, which `restricted`
                        # forbids; `baseline` still forbids privileged pods and host access.
                        "pod-security.kubernetes.io/enforce": "baseline",
                        "pod-security.kubernetes.io/warn": "restricted",
                        "pod-security.kubernetes.io/audit": "restricted",
                    },
                },
                opts=child,
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
                "labels": app_labels,
                "annotations": annotations,
            },
            opts=child,
        )

        token = k8s.core.v1.Secret(
            f"{name}-token",
            metadata={"name": f"{name}-token", "namespace": namespace, "labels": app_labels},
            type="Opaque",
            string_data={TOKEN_KEY: pulumi.Output.secret(args.token)},
            opts=child,
        )

        resources = {"cpu": args.cpu, "memory": args.memory}
        if args.gpus > 0:
            resources[GPU_RESOURCE] = str(args.gpus)
        pod_labels = {**app_labels, **{f"gpu-runners/{label}": "true" for label in args.labels}}

        deployment = k8s.apps.v1.Deployment(
            name,
            metadata={
                "name": name,
                "namespace": namespace,
                "labels": app_labels,
                # The GPU pool may scale up from zero, which takes longer than Pulumi's wait.
                "annotations": {"pulumi.com/skipAwait": "true"},
            },
            spec={
                "replicas": args.replicas,
                # Never run an extra runner during a rollout: the old pod goes first.
                "strategy": {"type": "Recreate"},
                "selector": {
                    "match_labels": {
                        "app.kubernetes.io/name": "cml-runner",
                        "app.kubernetes.io/instance": name,
                    }
                },
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {
                        "service_account_name": service_account.metadata.name,
                        "node_selector": dict(
                            args.node_selector or default_node_selector(args.gpus)
                        ),
                        "tolerations": [GPU_TOLERATION] if args.gpus > 0 else None,
                        "termination_grace_period_seconds": TERMINATION_GRACE_SECONDS,
                        "security_context": {"seccomp_profile": {"type": "RuntimeDefault"}},
                        "containers": [
                            {
                                "name": "runner",
                                "image": runner_image(args.image_tag, args.gpus),
                                "command": ["cml"],
                                "args": _runner_args(args),
                                "env": [
                                    {
                                        "name": "POD_NAME",
                                        "value_from": {
                                            "field_ref": {"field_path": "metadata.name"}
                                        },
                                    },
                                    {
                                        "name": "REPO_TOKEN",
                                        "value_from": {
                                            "secret_key_ref": {
                                                "name": token.metadata.name,
                                                "key": TOKEN_KEY,
                                            }
                                        },
                                    },
                                ],
                                "resources": {"requests": resources, "limits": resources},
                                "security_context": {
                                    "privileged": False,
                                    "allow_privilege_escalation": False,
                                    "capabilities": {
                                        "drop": ["ALL"],
                                        "add": list(KEPT_CAPABILITIES),
                                    },
                                },
                            }
                        ],
                    },
                },
            },
            opts=child,
        )

        self.namespace = pulumi.Output.from_input(namespace)
        self.deployment_name = deployment.metadata.name
        self.labels = list(args.labels)
        self.register_outputs(
            {
                "namespace": self.namespace,
                "deploymentName": self.deployment_name,
                "labels": self.labels,
            }
        )


def _runner_args(args: RunnerDeploymentArgs) -> list[str]:
    """`cml runner launch` for one job; the pod's name (unique) becomes the runner's name."""
    return [
        "runner",
        "launch",
        "--single",
        f"--labels={','.join(args.labels)}",
        f"--driver={args.platform}",
        f"--repo={args.repository}",
        "--idle-timeout=never",
        "--name=$(POD_NAME)",
    ]
