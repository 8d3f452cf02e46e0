"""CmlRunner: labelled CML runners on GPU or CPU nodes, started by KEDA, one CI job per pod."""

from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_kubernetes as k8s

from infra.engines import keda
from infra.engines.runner_base import (
    NOT_EVICTABLE,
    RUNTIME_DEFAULT_SECCOMP,
    Registries,
    RunnerBaseArgs,
    RunnerObjects,
    app_labels,
    container_resources,
    mount_pod_files,
    placement,
    pod_identity,
    pod_labels,
    runner_objects,
)
from infra.options import child_options

ENGINE = "cml-runner"
COMPONENT_TYPE = "gpu-runners:index:CmlRunner"
CML_IMAGE = "iterativeai/cml"
DEFAULT_IMAGE_TAG = "0-dvc3-base1"
TOKEN_KEY = "token"
# Names CML keeps out of the environment of the runner it starts, and so of every CI job.
SENSITIVE_ENV = "_CML_RUNNER_SENSITIVE_ENV"
# A runner without a job unregisters itself from GitHub or GitLab when it gets SIGTERM;
# give it time to (iterative/cml, bin/cml/runner/launch.js, shutdown).
TERMINATION_GRACE_SECONDS = 120
# Finished Jobs (and their pods, for `kubectl logs`) KEDA keeps per outcome; it deletes older
# ones at each poll. Finished pods do not hold a node up: the cluster autoscaler treats
# terminal pods as drainable (kubernetes/autoscaler, simulator/drainability/rules).
FINISHED_JOBS_KEPT = 3
# CML counts idle seconds only once its runner has registered, in a pod already running on
# its node, and restarts the count after each job (iterative/cml 0.20.6, bin/cml/runner/
# launch.js, runLocal: the watcher starts after `startRunner`, which awaits config.sh; any
# tick with a job running resets RUNNER_TIMER). So a slow GPU node costs a runner none of its
# idle time: on demand, the timeout covers only the listener connecting and GitHub handing
# it the job it was started for, seconds, and otherwise bills a GPU node for nothing.
IDLE_SECONDS_ON_DEMAND = 120
IDLE_SECONDS_ALWAYS = 3600
# The longest a CI job may run on a self-hosted GitHub runner (5 days), and a margin for the
# pod to wait for a GPU node and to unregister. A runner pod still alive after its idle time
# plus this is stuck (CML 0.20.6 can hang after its runner process fails, ignoring SIGTERM),
# and Kubernetes ends it so it cannot hold a GPU node for ever.
LONGEST_JOB_SECONDS = 5 * 24 * 3600
PENDING_MARGIN_SECONDS = 3600
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


def runner_image(registries: Registries, tag: str | None, gpus: int) -> str:
    """The CML image from Docker Hub or its mirror; the -gpu variant carries CUDA."""
    tag = tag or DEFAULT_IMAGE_TAG
    return f"{registries.docker_hub}/{CML_IMAGE}:{tag}{'-gpu' if gpus > 0 else ''}"


@dataclass(frozen=True)
class OnDemandScaling:
    """Start runners only while the repository has jobs for them (GitHub only)."""

    max_runners: int = 1
    """Most runners at once; each takes one CI job."""


@dataclass(frozen=True, kw_only=True)
class CmlRunnerArgs(RunnerBaseArgs):
    """A CML runner: the forge it registers with, its token, image and how many run."""

    platform: Literal["github", "gitlab"]
    """Forge the runner registers with; CML's --driver."""
    token: pulumi.Input[str]
    """GitHub PAT or GitLab token that registers the runner; stored only in a Secret."""
    replicas: int = 1
    """Runners kept waiting for a job (without on_demand); 0 parks the runner."""
    idle_timeout_seconds: int | None = None
    """How long a registered runner waits for a job before it exits; unset: 120 s on demand
    (a GPU node waits with it), 3600 s without on_demand (the waiting runner is then
    replaced)."""
    image_tag: str | None = None
    """Tag of iterativeai/cml, 0-dvc3-base1 unless set; `-gpu` is appended for GPU runners."""
    on_demand: OnDemandScaling | None = None
    """Start runners from zero while jobs wait, instead of keeping `replicas` runners."""
    keda_namespace: str = keda.NAMESPACE
    """KEDA's namespace, where the scaler's copy of the token goes (on demand only)."""


class CmlRunner(pulumi.ComponentResource):
    """CML runners as a KEDA ScaledJob, on any Kubernetes with KEDA: one pod per CI job.

    Each pod runs `cml runner launch --single` and ends after one job, or after waiting
    `idle_timeout_seconds` for none; KEDA starts the next runner as a new Job with a new pod.
    Pass KEDA's installation in `opts.depends_on` if this program installs it.
    """

    namespace: pulumi.Output[str]
    workload: pulumi.Output[str]
    """Kind/name of what starts the runner pods: ScaledJob/<name>."""
    labels: list[str]
    images: tuple[str, ...]
    """The images its pods run on its nodes, which warm nodes pull ahead."""

    def __init__(
        self, name: str, args: CmlRunnerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        if args.on_demand is not None and args.platform != "github":
            raise ValueError(f"runner {name}: on-demand scaling needs platform github")
        super().__init__(
            COMPONENT_TYPE,
            name,
            None,
            # Stacks made before the rename keep their objects instead of replacing them.
            pulumi.ResourceOptions.merge(
                opts,
                pulumi.ResourceOptions(
                    aliases=[pulumi.Alias(type_="gpu-runners:index:RunnerDeployment")]
                ),
            ),
        )
        child = child_options(self, opts)
        labels = app_labels(ENGINE, name)
        # The runner runs as root to install packages, which `restricted` forbids; `baseline`
        # still forbids privileged pods and host access.
        objects = runner_objects(
            name,
            args,
            labels,
            "baseline",
            {TOKEN_KEY: args.token},
            COMPONENT_TYPE,
            child,
            github_job_hook=args.platform == "github",
        )

        scaler: list[pulumi.Resource] = []
        if args.on_demand is not None:
            # KEDA reads Secrets in its own namespace only (infra/engines/keda.py), so the scaler's
            # copy of the token lives there, behind a ClusterTriggerAuthentication.
            authentication = f"{name}-github"
            scaler_token = k8s.core.v1.Secret(
                f"{name}-github",
                metadata={
                    "name": authentication,
                    "namespace": args.keda_namespace,
                    "labels": labels,
                },
                type="Opaque",
                string_data={TOKEN_KEY: pulumi.Output.secret(args.token)},
                opts=child,
            )
            trigger_authentication = k8s.apiextensions.CustomResource(
                authentication,
                api_version=keda.API_VERSION,
                kind="ClusterTriggerAuthentication",
                metadata={"name": authentication, "labels": labels},
                spec={
                    "secretTargetRef": [
                        {
                            "parameter": "personalAccessToken",
                            "name": authentication,
                            "key": TOKEN_KEY,
                        }
                    ]
                },
                opts=pulumi.ResourceOptions.merge(
                    child, pulumi.ResourceOptions(depends_on=[scaler_token])
                ),
            )
            scaler = [scaler_token, trigger_authentication]
            trigger = keda.github_runner_trigger(args.repository, args.labels, authentication)
        else:
            trigger = keda.own_pods_trigger(f"app.kubernetes.io/instance={name}")

        pod_template = _pod_template(args, labels, objects)
        scaled_job = k8s.apiextensions.CustomResource(
            name,
            api_version=keda.API_VERSION,
            kind="ScaledJob",
            metadata={
                "name": name,
                "namespace": objects.namespace,
                "labels": labels,
                "annotations": {keda.PAUSED: "true"} if _parked(args) else None,
            },
            spec={
                "jobTargetRef": {
                    # A runner that fails is not retried in the same Job: KEDA starts a new
                    # Job (and pod, and runner name) at its next poll if one is still needed.
                    "backoffLimit": 0,
                    "activeDeadlineSeconds": _idle_seconds(args)
                    + LONGEST_JOB_SECONDS
                    + PENDING_MARGIN_SECONDS,
                    "template": {
                        **pod_template,
                        "spec": {**pod_template["spec"], "restartPolicy": "Never"},
                    },
                },
                **_runner_counts(args),
                "pollingInterval": keda.POLLING_SECONDS,
                # `default`: new Jobs = the trigger's count - unfinished Jobs. The github-runner
                # trigger counts queued and in-progress jobs, and a runner pod still pending for
                # a GPU node is an unfinished Job, so no poll duplicates it. `accurate` and
                # `eager` assume the count leaves out running work; with this trigger they
                # would start a spare runner for every running job (KEDA 2.20,
                # pkg/scaling/executor/scale_jobs.go; pkg/scalers/github_runner_scaler.go).
                "scalingStrategy": {"strategy": "default"},
                # `gradual`: a changed ScaledJob lets its running Jobs finish; the default
                # would delete them, and the CI jobs on them, at once.
                "rollout": {"strategy": "gradual"},
                "successfulJobsHistoryLimit": FINISHED_JOBS_KEPT,
                "failedJobsHistoryLimit": FINISHED_JOBS_KEPT,
                "triggers": [trigger],
            },
            opts=objects.options(
                pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=scaler))
            ),
        )

        self.namespace = objects.namespace
        self.workload = pulumi.Output.concat("ScaledJob/", scaled_job.metadata["name"])
        self.labels = list(args.labels)
        self.images = (runner_image(args.registries, args.image_tag, args.gpus),)
        self.register_outputs(
            {"namespace": self.namespace, "workload": self.workload, "labels": self.labels}
        )


def _idle_seconds(args: CmlRunnerArgs) -> int:
    """The configured idle timeout, or the default for the runner's scaling."""
    if args.idle_timeout_seconds is not None:
        return args.idle_timeout_seconds
    return IDLE_SECONDS_ON_DEMAND if args.on_demand else IDLE_SECONDS_ALWAYS


def _parked(args: CmlRunnerArgs) -> bool:
    """An always runner with no replicas: KEDA starts no runner."""
    return args.on_demand is None and args.replicas == 0


def _runner_counts(args: CmlRunnerArgs) -> dict[str, int]:
    """minReplicaCount and maxReplicaCount of the ScaledJob.

    KEDA 2.20 (pkg/scaling/executor/scale_jobs.go, getScalingDecision) counts every Job that
    has not finished, pending or running, and starts `minReplicaCount - that` new Jobs when
    fewer are left; above the minimum it scales by the trigger up to `maxReplicaCount`. With
    both equal the trigger adds nothing: an always runner is `replicas` runners, busy or
    waiting, each replaced at the next poll after it ends.
    """
    if args.on_demand is not None:
        return {"minReplicaCount": 0, "maxReplicaCount": args.on_demand.max_runners}
    if _parked(args):
        # The CRD requires maxReplicaCount >= 1; the pause annotation stops all scaling.
        return {"minReplicaCount": 0, "maxReplicaCount": 1}
    return {"minReplicaCount": args.replicas, "maxReplicaCount": args.replicas}


def _pod_template(args: CmlRunnerArgs, labels: dict[str, str], objects: RunnerObjects) -> dict:
    """The runner pod of each Job (camelCase, as Kubernetes)."""
    container: dict = {
        "name": "runner",
        "image": runner_image(args.registries, args.image_tag, args.gpus),
        "command": ["cml"],
        "args": _runner_args(args),
        "env": _runner_env(objects),
        "resources": container_resources(args),
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": list(KEPT_CAPABILITIES)},
        },
    }
    spec: dict = {
        **pod_identity(objects.service_account),
        **placement(args),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": RUNTIME_DEFAULT_SECCOMP,
        "containers": [container],
    }
    mount_pod_files(container, spec, objects.pod_files)
    return {
        "metadata": {"labels": pod_labels(labels, args), "annotations": NOT_EVICTABLE},
        "spec": spec,
    }


def _runner_env(objects: RunnerObjects) -> list[dict]:
    """The runner's environment, with every variable fed from a Secret kept from CI jobs.

    CML starts the GitHub or GitLab runner, and so every job step, with a copy of its own
    environment less the colon-separated names in _CML_RUNNER_SENSITIVE_ENV (iterative/cml,
    src/cml.js, startRunner; cml#721): the GitHub runner gets the job hook's variable so.
    """
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": "REPO_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": objects.secret, "key": TOKEN_KEY}},
        },
    ]
    secret = [e["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})]
    return [*env, {"name": SENSITIVE_ENV, "value": ":".join(secret)}]


def _runner_args(args: CmlRunnerArgs) -> list[str]:
    """`cml runner launch` for one job; the pod's name (unique) becomes the runner's name.

    A runner that gets no job within the idle timeout exits: on demand, a cancelled job
    cannot keep a GPU node up; always, the waiting runner is replaced by a fresh one, which
    picks up a changed ScaledJob, and one left listening after GitHub dropped its registration
    (actions/runner#4617) is renewed.
    """
    return [
        "runner",
        "launch",
        "--single",
        f"--labels={','.join(args.labels)}",
        f"--driver={args.platform}",
        f"--repo={args.repository}",
        f"--idle-timeout={_idle_seconds(args)}",
        "--name=$(POD_NAME)",
    ]
