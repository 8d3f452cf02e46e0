"""ArcRunner: a GitHub runner scale set of actions-runner-controller, one job per pod."""

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.engines import arc
from infra.engines.runner_base import (
    NOT_EVICTABLE,
    RUNTIME_DEFAULT_SECCOMP,
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

ENGINE = "arc-runner"
COMPONENT_TYPE = "gpu-runners:index:ArcRunner"
# actions/runner's own image (images/Dockerfile): Ubuntu 24.04, user `runner` (uid 1001).
# GitHub refuses a runner 30 days after a newer release comes out (enforced on github.com since
# 2026-09-25), and ARC then deletes the scale set as outdated: raise this with each release.
RUNNER_IMAGE = "actions/actions-runner:2.338.0"
RUNNER_UID = 1001
# Where GKE mounts the NVIDIA driver's libraries and tools into a container given a GPU;
# the runner image does not look there by itself.
NVIDIA_LIBRARIES = "/usr/local/nvidia/lib64"
RELEASE_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class GithubApp:
    """A GitHub App installed on the repository, the credential GitHub recommends for ARC."""

    app_id: pulumi.Input[str]
    """The App's ID (or client ID)."""
    installation_id: pulumi.Input[str]
    """The ID of its installation on the repository's account."""
    private_key: pulumi.Input[str]
    """The App's private key, PEM."""


@dataclass(frozen=True, kw_only=True)
class ArcRunnerArgs(RunnerBaseArgs):
    """A GitHub runner scale set: its credential, image and how many runners at once."""

    credentials: pulumi.Input[str] | GithubApp
    """A fine-grained PAT, or a GitHub App; only ARC's controller and listener read it."""
    min_runners: int = 0
    """Runners kept waiting for a job; 0 starts them only while jobs wait."""
    max_runners: int = 1
    """Most runners at once, one per job."""
    image: str | None = None
    """The runner container's image; unset: actions/runner's own, pinned (RUNNER_IMAGE), from
    ghcr.io or its mirror."""
    listener_node_selector: Mapping[str, str] | None = None
    """Node labels for the scale set's listener pod, in the controller's namespace."""
    controller_namespace: str = arc.NAMESPACE
    """Namespace of the actions-runner-controller that manages this scale set."""
    controller_service_account: str = arc.SERVICE_ACCOUNT
    """That controller's service account, which the chart grants rights in the namespace."""


class ArcRunner(pulumi.ComponentResource):
    """A gha-runner-scale-set release: ARC starts one pod per GitHub job, from zero.

    Runner pods get only a just-in-time configuration that registers one runner for one job;
    the credential stays in a Secret that only the controller and the listener read. Pass the
    controller's installation in `opts.depends_on` if this program installs it, so that
    `pulumi destroy` removes the scale set while the controller can still clean it up.
    """

    namespace: pulumi.Output[str]
    workload: pulumi.Output[str]
    """Kind/name of what starts the runner pods: AutoscalingRunnerSet/<name>."""
    labels: list[str]
    images: tuple[str, ...]
    """The images its pods run on its nodes, which warm nodes pull ahead."""

    def __init__(
        self, name: str, args: ArcRunnerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        labels = app_labels(ENGINE, name)
        objects = runner_objects(
            name,
            args,
            labels,
            "restricted",
            _secret_data(args.credentials),
            COMPONENT_TYPE,
            child_options(self, opts),
            github_job_hook=True,
        )
        values: dict = {
            "githubConfigUrl": args.repository,
            "githubConfigSecret": objects.secret,
            "runnerScaleSetName": name,
            "scaleSetLabels": list(args.labels),
            "minRunners": args.min_runners,
            "maxRunners": args.max_runners,
            "controllerServiceAccount": {
                "namespace": args.controller_namespace,
                "name": args.controller_service_account,
            },
            "template": _pod_template(args, labels, objects),
        }
        # ARC merges the container named `listener` into the listener it builds.
        listener: dict = {
            "terminationGracePeriodSeconds": arc.LISTENER_GRACE_SECONDS,
            "containers": [{"name": "listener", "resources": arc.LISTENER_RESOURCES}],
        }
        if args.listener_node_selector is not None:
            listener["nodeSelector"] = dict(args.listener_node_selector)
        values["listenerTemplate"] = {"spec": listener}
        release = k8s.helm.v3.Release(
            name,
            name=name,
            chart=arc.SCALE_SET_CHART,
            version=arc.CHART_VERSION,
            namespace=objects.namespace,
            values=values,
            # Uninstalling waits for ARC to remove the scale set from GitHub, which it does
            # only after a running job ends.
            timeout=RELEASE_TIMEOUT_SECONDS,
            opts=objects.options(
                child_options(
                    self,
                    opts,
                    # ARC sends a scale set's labels to GitHub only when it creates the scale
                    # set (autoscalingrunnerset_controller.go, createRunnerScaleSet): new labels
                    # need a new one. Its Helm release keeps its name, so the old one goes first.
                    replace_on_changes=["values.scaleSetLabels"],
                    delete_before_replace=True,
                )
            ),
        )
        self.namespace = objects.namespace
        self.workload = pulumi.Output.concat("AutoscalingRunnerSet/", release.name)
        self.labels = list(args.labels)
        self.images = (_image(args),)
        self.register_outputs(
            {"namespace": self.namespace, "workload": self.workload, "labels": self.labels}
        )


def _secret_data(credentials: pulumi.Input[str] | GithubApp) -> dict[str, pulumi.Input[str]]:
    """The keys ARC reads from githubConfigSecret (appconfig.go, FromSecret)."""
    if isinstance(credentials, GithubApp):
        return {
            "github_app_id": credentials.app_id,
            "github_app_installation_id": credentials.installation_id,
            "github_app_private_key": credentials.private_key,
        }
    return {"github_token": credentials}


def _image(args: ArcRunnerArgs) -> str:
    return args.image or f"{args.registries.ghcr}/{RUNNER_IMAGE}"


def _pod_template(args: ArcRunnerArgs, labels: dict[str, str], objects: RunnerObjects) -> dict:
    """The runner pod: non-root, no privilege escalation, no capabilities (Pod Security
    `restricted`), so a job cannot use sudo; it installs what it needs without root."""
    container: dict = {
        "name": "runner",
        "image": _image(args),
        "command": ["/home/runner/run.sh"],
        "resources": container_resources(args),
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if args.gpus > 0:
        container["env"] = [{"name": "LD_LIBRARY_PATH", "value": NVIDIA_LIBRARIES}]
    volumes: dict = {}
    mount_pod_files(container, volumes, objects.pod_files)
    return {
        "metadata": {"labels": pod_labels(labels, args), "annotations": NOT_EVICTABLE},
        "spec": {
            **volumes,
            **pod_identity(objects.service_account),
            **placement(args),
            "securityContext": {
                # The image's user is a name, which the kubelet cannot check as non-root.
                "runAsNonRoot": True,
                "runAsUser": RUNNER_UID,
                **RUNTIME_DEFAULT_SECCOMP,
            },
            "containers": [container],
        },
    }
