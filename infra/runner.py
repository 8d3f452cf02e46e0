"""RunnerDeployment: a labelled CML runner as a Deployment on GPU or CPU nodes, one job a pod."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_kubernetes as k8s

from infra import keda as keda_objects

CML_IMAGE = "iterativeai/cml"
DEFAULT_IMAGE_TAG = "0-dvc3-base1"
DEFAULT_LABELS: tuple[str, ...] = ("cml-runner",)
DEFAULT_CPU = "1"
DEFAULT_MEMORY = "2000Mi"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
TOKEN_KEY = "token"
# Names CML keeps out of the environment of the runner it starts, and so of every CI job.
SENSITIVE_ENV = "_CML_RUNNER_SENSITIVE_ENV"
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
class OnDemandScaling:
    """Run runner pods only while the repository has jobs for them (GitHub only, through KEDA)."""

    keda: pulumi.Resource
    """KEDA's installation; the KEDA objects wait for it."""
    max_runners: int = 1
    """Runners at once. 1: a Deployment scaled 0..1; more: a ScaledJob, one Job per CI job."""
    idle_timeout_seconds: int = 300
    """How long a runner without a job lives, and how long KEDA waits before scaling to 0."""


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
    """Runner pods kept up (without on_demand); each takes one job, then is replaced."""
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
    on_demand: OnDemandScaling | None = None
    """Scale from zero with KEDA instead of keeping `replicas` runners up."""


class RunnerDeployment(pulumi.ComponentResource):
    """A namespace, service account, token Secret and the runner's pods, on any Kubernetes:
    a Deployment kept at `replicas`, or scaled from zero by KEDA when `on_demand` is given."""

    namespace: pulumi.Output[str]
    workload: pulumi.Output[str]
    """Kind/name of what runs the runner pods: Deployment/<name> or ScaledJob/<name>."""
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

        pod_template = _pod_template(
            args, app_labels, service_account.metadata.name, token.metadata.name
        )
        on_demand = args.on_demand
        if on_demand is not None and args.platform != "github":
            raise ValueError(f"runner {name}: on-demand scaling needs platform github")

        if on_demand is None or on_demand.max_runners == 1:
            workload = k8s.apps.v1.Deployment(
                name,
                metadata={
                    "name": name,
                    "namespace": namespace,
                    "labels": app_labels,
                    # The GPU pool may scale up from zero, longer than Pulumi's wait.
                    "annotations": {"pulumi.com/skipAwait": "true"},
                },
                spec={
                    # On demand, KEDA owns the count once the Deployment exists; Pulumi must
                    # not reset it, or an update would stop a runner in the middle of a job.
                    "replicas": 0 if on_demand else args.replicas,
                    # Never run an extra runner during a rollout: the old pod goes first.
                    "strategy": {"type": "Recreate"},
                    "selector": {
                        "matchLabels": {
                            "app.kubernetes.io/name": "cml-runner",
                            "app.kubernetes.io/instance": name,
                        }
                    },
                    "template": pod_template,
                },
                opts=pulumi.ResourceOptions(
                    parent=self, ignore_changes=["spec.replicas"] if on_demand else []
                ),
            )

        if on_demand is not None:
            keda = pulumi.ResourceOptions(parent=self, depends_on=[on_demand.keda])
            authentication = k8s.apiextensions.CustomResource(
                f"{name}-github",
                api_version=keda_objects.API_VERSION,
                kind="TriggerAuthentication",
                metadata={"name": f"{name}-github", "namespace": namespace, "labels": app_labels},
                spec={
                    "secretTargetRef": [
                        {
                            "parameter": "personalAccessToken",
                            "name": token.metadata.name,
                            "key": TOKEN_KEY,
                        }
                    ]
                },
                opts=keda,
            )
            trigger = keda_objects.github_runner_trigger(
                args.repository, args.labels, authentication.metadata["name"]
            )
            if on_demand.max_runners == 1:
                k8s.apiextensions.CustomResource(
                    name,
                    api_version=keda_objects.API_VERSION,
                    kind="ScaledObject",
                    metadata={"name": name, "namespace": namespace, "labels": app_labels},
                    spec={
                        "scaleTargetRef": {"name": workload.metadata.name},
                        "minReplicaCount": 0,
                        "maxReplicaCount": 1,
                        "pollingInterval": keda_objects.POLLING_SECONDS,
                        "cooldownPeriod": on_demand.idle_timeout_seconds,
                        "triggers": [trigger],
                    },
                    opts=keda,
                )
            else:
                # One Kubernetes Job per CI job: a Job runs to its end, so scaling down never
                # stops a busy runner, and `gradual` rollout lets running Jobs finish on update.
                workload = k8s.apiextensions.CustomResource(
                    name,
                    api_version=keda_objects.API_VERSION,
                    kind="ScaledJob",
                    metadata={"name": name, "namespace": namespace, "labels": app_labels},
                    spec={
                        "jobTargetRef": {
                            "backoffLimit": 0,
                            "template": {
                                **pod_template,
                                "spec": {**pod_template["spec"], "restartPolicy": "Never"},
                            },
                        },
                        "minReplicaCount": 0,
                        "maxReplicaCount": on_demand.max_runners,
                        "pollingInterval": keda_objects.POLLING_SECONDS,
                        "scalingStrategy": {"strategy": "default"},
                        "rollout": {"strategy": "gradual"},
                        "successfulJobsHistoryLimit": 3,
                        "failedJobsHistoryLimit": 3,
                        "triggers": [trigger],
                    },
                    opts=keda,
                )

        self.namespace = pulumi.Output.from_input(namespace)
        self.workload = pulumi.Output.concat(workload.kind, "/", workload.metadata["name"])
        self.labels = list(args.labels)
        self.register_outputs(
            {"namespace": self.namespace, "workload": self.workload, "labels": self.labels}
        )


def _pod_template(
    args: RunnerDeploymentArgs,
    app_labels: dict[str, str],
    service_account: pulumi.Input[str],
    token_secret: pulumi.Input[str],
) -> dict:
    """The runner pod, shared by the Deployment and the ScaledJob (camelCase, as Kubernetes)."""
    resources = {"cpu": args.cpu, "memory": args.memory}
    if args.gpus > 0:
        resources[GPU_RESOURCE] = str(args.gpus)
    spec = {
        "serviceAccountName": service_account,
        "nodeSelector": dict(args.node_selector or default_node_selector(args.gpus)),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "runner",
                "image": runner_image(args.image_tag, args.gpus),
                "command": ["cml"],
                "args": _runner_args(args),
                "env": _runner_env(token_secret),
                "resources": {"requests": resources, "limits": resources},
                "securityContext": {
                    "privileged": False,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": list(KEPT_CAPABILITIES)},
                },
            }
        ],
    }
    if args.gpus > 0:
        spec["tolerations"] = [GPU_TOLERATION]
    return {
        "metadata": {
            "labels": {**app_labels, **{f"gpu-runners/{label}": "true" for label in args.labels}},
            # The cluster autoscaler must not move a runner that may be running a job.
            "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
        },
        "spec": spec,
    }


def _runner_env(token_secret: pulumi.Input[str]) -> list[dict]:
    """The runner's environment, with every variable fed from a Secret kept from CI jobs.

    CML starts the GitHub or GitLab runner, and so every job step, with a copy of its own
    environment less the colon-separated names in _CML_RUNNER_SENSITIVE_ENV (iterative/cml,
    src/cml.js, startRunner; cml#721).
    """
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": "REPO_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": token_secret, "key": TOKEN_KEY}},
        },
    ]
    secret = [e["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})]
    return [*env, {"name": SENSITIVE_ENV, "value": ":".join(secret)}]


def _runner_args(args: RunnerDeploymentArgs) -> list[str]:
    """`cml runner launch` for one job; the pod's name (unique) becomes the runner's name.

    An on-demand runner that finds no job exits after its idle time, so a cancelled job does
    not keep a GPU node up; an always-on runner waits for ever.
    """
    return [
        "runner",
        "launch",
        "--single",
        f"--labels={','.join(args.labels)}",
        f"--driver={args.platform}",
        f"--repo={args.repository}",
        f"--idle-timeout={args.on_demand.idle_timeout_seconds if args.on_demand else 'never'}",
        "--name=$(POD_NAME)",
    ]
