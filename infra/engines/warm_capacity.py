"""Warm hours: GPU nodes kept ready on a schedule, as placeholder pods that any runner pod
preempts (cluster-autoscaler FAQ, "How can I configure overprovisioning with Cluster
Autoscaler?"), scaled by KEDA's cron scaler.

Each GPU class with `warmHours` gets a Deployment of placeholders: one per node (required
anti-affinity), each asking for one GPU of the class, at a priority below every runner pod's,
so the scheduler evicts a placeholder to make room for a job and the autoscaler then starts a
node for the evicted placeholder. Outside the hours KEDA scales them to zero and the nodes go
as they do today. A placeholder's init containers pull the class's runner images, so a job on a
warm node starts without pulling them."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.engines.keda import API_VERSION, POLLING_SECONDS
from infra.engines.runner_base import (
    GPU_RESOURCE,
    GPU_TOLERATION,
    RUNTIME_DEFAULT_SECCOMP,
    GpuClassPlacement,
    Registries,
    runner_node_selector,
)
from infra.options import child_options
from infra.settings.warm_hours import WarmHoursSettings

NAMESPACE = "gpu-runners-warm"
PRIORITY_CLASS = "gpu-runners-warm"
# The lowest priority whose pending pods still make the autoscaler add a node: pods below
# `--expendable-pods-priority-cutoff` (-10 by default) never do (cluster-autoscaler FAQ, "How
# can I configure overprovisioning": "Priority -10 will be reserved for overprovisioning pods
# as it is the lowest priority that triggers scaling clusters"). Runner pods have 0.
PLACEHOLDER_PRIORITY = -10
# What a placeholder runs: BusyBox's `sleep`, from Docker Hub's official image through the
# stack's mirror like every other image (Kubernetes' own pause image is on registry.k8s.io,
# which the mirror does not proxy). A user with no name, not root.
PLACEHOLDER_IMAGE = "library/busybox:1.37.0"
PLACEHOLDER_COMMAND = ("sleep", "2147483647")
PLACEHOLDER_USER = 65535
# After the window ends, the placeholders go at once instead of after KEDA's default 300 s.
COOLDOWN_SECONDS = 60
APP = "gpu-runners-warm"


@dataclass(frozen=True)
class WarmCapacityArgs:
    """One GPU class's warm hours: where its nodes are, and what its runners pull."""

    gpu_class: GpuClassPlacement
    schedule: WarmHoursSettings
    registries: Registries
    """Where the placeholder's image is pulled from."""
    images: Sequence[str] = ()
    """The images the class's runner and job pods run, pulled ahead onto each warm node."""


class WarmNamespace(pulumi.ComponentResource):
    """The namespace of every class's placeholders, closed to all traffic, and their priority
    class: below every runner pod, and never preempting one."""

    namespace: k8s.core.v1.Namespace

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpu-runners:index:WarmNamespace", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.namespace = k8s.core.v1.Namespace(
            name,
            metadata={
                "name": NAMESPACE,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            },
            opts=child,
        )
        in_namespace = pulumi.ResourceOptions(parent=self, depends_on=[self.namespace])
        k8s.networking.v1.NetworkPolicy(
            name,
            metadata={"name": "no-traffic", "namespace": NAMESPACE},
            spec={"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
            opts=in_namespace,
        )
        k8s.scheduling.v1.PriorityClass(
            name,
            metadata={"name": PRIORITY_CLASS},
            value=PLACEHOLDER_PRIORITY,
            preemption_policy="Never",
            global_default=False,
            description="gpu-runners warm hours: placeholders that any runner pod preempts",
            opts=child,
        )
        self.register_outputs({})


def _container(name: str, image: str, command: Sequence[str]) -> dict:
    return {
        "name": name,
        "image": image,
        "command": list(command),
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "16Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": PLACEHOLDER_USER,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def placeholder_pod(args: WarmCapacityArgs, labels: Mapping[str, str]) -> dict:
    """A placeholder: one GPU of the class, one per node, preempted by any runner pod."""
    image = f"{args.registries.docker_hub}/{PLACEHOLDER_IMAGE}"
    holder = _container("placeholder", image, PLACEHOLDER_COMMAND)
    holder["resources"]["limits"][GPU_RESOURCE] = 1
    return {
        "metadata": {"labels": dict(labels)},
        "spec": {
            "priorityClassName": PRIORITY_CLASS,
            "nodeSelector": {**runner_node_selector(1), **args.gpu_class.node_selector()},
            "tolerations": [GPU_TOLERATION, args.gpu_class.toleration()],
            "affinity": {
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "labelSelector": {"matchLabels": dict(labels)},
                            "topologyKey": "kubernetes.io/hostname",
                        }
                    ]
                }
            },
            # Each image runs `true` and ends: pulled, it is in the node's cache for the job.
            "initContainers": [
                _container(f"pull-{index}", image, ["true"])
                for index, image in enumerate(dict.fromkeys(args.images))
            ],
            "containers": [holder],
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 0,
            "securityContext": RUNTIME_DEFAULT_SECCOMP,
        },
    }


class WarmCapacity(pulumi.ComponentResource):
    """One GPU class's placeholders and the KEDA cron ScaledObject that keeps `nodes` of them
    during its warm hours and none outside."""

    def __init__(
        self, name: str, args: WarmCapacityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gpu-runners:index:WarmCapacity", name, None, opts)
        child = child_options(self, opts)
        labels = {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": name}
        k8s.apps.v1.Deployment(
            name,
            metadata={
                "name": name,
                "namespace": NAMESPACE,
                "labels": labels,
                # `pulumi up` would wait for the placeholder to run, a GPU node and more: the
                # ScaledObject, made after it, removes it outside the hours instead.
                "annotations": {"pulumi.com/skipAwait": "true"},
            },
            # No `replicas`: KEDA owns the count (a Deployment scaled by an autoscaler leaves
            # it out, Kubernetes docs, "Migrating Deployments and StatefulSets to horizontal
            # autoscaling"). The one pod Kubernetes starts by default goes at KEDA's first
            # check outside the hours: a ScaledObject never active scales its target to zero
            # at once (KEDA 2.20.2, pkg/scaling/executor/scale_scaledobjects.go,
            # scaleToZeroOrIdle).
            spec={
                "selector": {"matchLabels": labels},
                # A changed placeholder (another runner image to pull) replaces the old ones
                # where they are: a rolling update would need a node more than the class may
                # have, since one placeholder may not share a node with another.
                "strategy": {"type": "Recreate"},
                "template": placeholder_pod(args, labels),
            },
            opts=child,
        )
        schedule = args.schedule
        k8s.apiextensions.CustomResource(
            name,
            api_version=API_VERSION,
            kind="ScaledObject",
            metadata={"name": name, "namespace": NAMESPACE, "labels": labels},
            spec={
                "scaleTargetRef": {"name": name},
                "minReplicaCount": 0,
                "maxReplicaCount": schedule.nodes,
                "pollingInterval": POLLING_SECONDS,
                "cooldownPeriod": COOLDOWN_SECONDS,
                # KEDA 2.20's cron scaler: 5-field expressions, an IANA time zone; between
                # start and end it asks for desiredReplicas, outside it for none
                # (pkg/scalers/cron_scaler.go).
                "triggers": [
                    {
                        "type": "cron",
                        "metadata": {
                            "timezone": schedule.timezone,
                            "start": schedule.cron(schedule.start),
                            "end": schedule.cron(schedule.end),
                            "desiredReplicas": str(schedule.nodes),
                        },
                    }
                ],
            },
            opts=child,
        )
        self.register_outputs({})
