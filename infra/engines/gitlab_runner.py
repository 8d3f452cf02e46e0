"""GitlabRunner: GitLab's own runner with the Kubernetes executor, one pod per CI job."""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import pulumi
import pulumi_kubernetes as k8s
import tomli_w

from infra.engines import cml_runner
from infra.engines.runner_base import (
    CPU_JOBS_LABEL,
    GPU_RESOURCE,
    NOT_EVICTABLE,
    RUNTIME_DEFAULT_SECCOMP,
    SYSTEM_NODES,
    PodFile,
    RunnerBaseArgs,
    app_labels,
    node_selector,
    runner_objects,
)
from infra.options import child_options

ENGINE = "gitlab-runner"
COMPONENT_TYPE = "gpu-runners:index:GitlabRunner"
CHART = "gitlab-runner"
CHART_REPOSITORY = "https://charts.gitlab.io"
# The newest chart whose templates were read for this stack (GitLab Runner 18.9.0); the tests
# check the values against them (tests/schemas/gitlab-runner-0.86.0).
CHART_VERSION = "0.86.0"
# GitLab Runner waits this long for a job pod to run: a GPU node from zero takes up to 15
# minutes, then the multi-gigabyte image is pulled. Its default, 180 s, fails such jobs with
# "timed out waiting for pod to start" (docs/executors/kubernetes/troubleshooting.md).
POLL_TIMEOUT_SECONDS = 1800
TOKEN_VERSION_ANNOTATION = "gpu-runners/runner-token-sha256"
# What the manager asks of the system pool (the chart sets none, leaving it BestEffort: the
# first pod evicted when a small node runs short). It mostly waits on GitLab's API; the
# memory limit only stops a runaway. An estimate, not a measurement.
MANAGER_RESOURCES = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
# How long a stopping manager may drain its running jobs: the chart's default, stated.
MANAGER_GRACE_SECONDS = 3600
# GitLab Runner aborts running jobs on SIGTERM and finishes them on SIGQUIT (commands/multi.go,
# handleGracefulShutdown only for SIGQUIT; docs/commands, Signals), and the chart runs it under
# dumb-init, which passes on whatever signal the container gets. So the manager is stopped
# with SIGQUIT whatever signal its image declares, at once, so that it takes no new job; then
# it unregisters this manager (the chart's own preStop, which a custom lifecycle replaces;
# running jobs report with their job tokens), for a minute at most, since GitLab's client may
# wait far longer; then the hook waits while the runner drains, until it exits (which ends the
# hook too, logged as FailedPreStopHook) or the grace period ends.
MANAGER_PRE_STOP = (
    "kill -QUIT 1; timeout 60 /entrypoint unregister --all-runners || true; "
    "while kill -0 1 2>/dev/null; do sleep 5; done"
)
HELPER_IMAGE = "gitlab-org/gitlab-runner/gitlab-runner-helper:x86_64-v${CI_RUNNER_VERSION}"
# What the manager may do in the runner's namespace, and nothing more: the rules GitLab lists
# for the Kubernetes executor ("Configure runner API permissions"), without the optional
# autoscaler, namespace-per-job and PodDisruptionBudget ones this stack does not use.
MANAGER_RULES = [
    {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": ["create", "delete", "get", "list", "watch"],
    },
    {
        "apiGroups": [""],
        "resources": ["pods/attach", "pods/exec"],
        "verbs": ["create", "delete", "get", "patch"],
    },
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete", "get", "update"]},
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get"]},
]


@dataclass(frozen=True)
class CreateRunner:
    """Have the stack create the project runner through GitLab's API (pulumi-gitlab)."""

    api_token: pulumi.Input[str]
    """An access token with the api scope of a Maintainer (create_runner alone cannot read the
    project, nor later read and delete the runner)."""


@dataclass(frozen=True, kw_only=True)
class GitlabRunnerArgs(RunnerBaseArgs):
    """A GitLab Runner manager whose Kubernetes executor runs each CI job in its own pod."""

    credentials: pulumi.Input[str] | CreateRunner
    """A runner authentication token (glrt-…) made in GitLab, or a token that may create one."""
    max_runners: int = 1
    """Most CI jobs (job pods) at once."""
    image_tag: str | None = None
    """Tag of iterativeai/cml for the jobs' default image (-gpu appended for GPU runners)."""
    manager_node_selector: Mapping[str, str] | None = None
    api_server_ports: Sequence[int] = (443,)
    """The ports the Kubernetes API server answers on, as a NetworkPolicy sees them (after the
    Service's translation): 443 on GKE."""
    """Node labels for the manager pod; it needs no GPU."""
    gitlab_url: str | None = None
    """The GitLab instance, when it is not the repository's origin (a relative URL root, like
    https://host/gitlab): GitLab Runner and the API are reached there."""


class GitlabRunner(pulumi.ComponentResource):
    """A gitlab-runner Helm release: a manager on the system pool starts one pod per CI job.

    The runner's authentication token is in a Secret the manager mounts; job pods get neither
    it nor a Kubernetes role. Job pods select and tolerate the GPU nodes, so a GPU node exists
    only while a job needs one.
    """

    namespace: pulumi.Output[str]
    workload: pulumi.Output[str]
    """Kind/name of what starts the job pods: Deployment/<name> (the runner manager)."""
    labels: list[str]
    images: tuple[str, ...]
    """The images its pods run on its nodes, which warm nodes pull ahead."""

    def __init__(
        self, name: str, args: GitlabRunnerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        labels = app_labels(ENGINE, name)
        if isinstance(args.credentials, CreateRunner):
            token, token_version = _created_runner(
                name, args, args.credentials, child_options(self, opts)
            )
        else:
            token = args.credentials
            token_version = pulumi.Output.unsecret(
                pulumi.Output.from_input(token).apply(_fingerprint)
            )
        # Job pods run the CML image as root (apt-get, pip), which `restricted` forbids.
        objects = runner_objects(
            name,
            args,
            labels,
            "baseline",
            # The chart mounts both keys; the registration token is deprecated and stays empty.
            {"runner-token": token, "runner-registration-token": ""},
            COMPONENT_TYPE,
            child_options(self, opts),
            exceptions={f"{name}-manager-egress": _manager_egress(name, args.api_server_ports)},
        )
        # The jobs' default image; the helper's tag is the runner's own revision, known only
        # when it runs.
        job_image = cml_runner.runner_image(args.registries, args.image_tag, args.gpus)
        values = {
            # The manager's Deployment (and the chart's other objects) named after the runner,
            # not `<runner>-gitlab-runner`.
            "fullnameOverride": name,
            "gitlabUrl": _instance(args),
            "concurrent": args.max_runners,
            "rbac": {"create": True, "clusterWideAccess": False, "rules": MANAGER_RULES},
            "serviceAccount": {"create": True, "name": f"{name}-manager"},
            "nodeSelector": dict(
                SYSTEM_NODES if args.manager_node_selector is None else args.manager_node_selector
            ),
            # The manager reads its token once, at start, and the chart's own checksum ignores
            # a Secret it did not render: a new token must restart the manager by itself.
            # The digest is not secret; a secret value would hide all the values in previews.
            # The cluster autoscaler must not move the manager off its node while it drives
            # jobs: their pods would run on unreported until GitLab drops them.
            "podAnnotations": {
                TOKEN_VERSION_ANNOTATION: token_version,
                **NOT_EVICTABLE,
            },
            "resources": MANAGER_RESOURCES,
            "terminationGracePeriodSeconds": MANAGER_GRACE_SECONDS,
            "deploymentLifecycle": {
                "preStop": {"exec": {"command": ["/bin/bash", "-c", MANAGER_PRE_STOP]}}
            },
            # The chart's defaults, stated: the policy pack and a reader see them here.
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "privileged": False,
                "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "podSecurityContext": {
                "runAsUser": 100,
                "fsGroup": 65533,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "runners": {
                "secret": objects.secret,
                "config": runner_config(
                    args,
                    objects.namespace,
                    objects.service_account,
                    job_image,
                    args.registries.gitlab,
                    objects.pod_files,
                ),
            },
        }
        release = k8s.helm.v3.Release(
            name,
            name=name,
            chart=CHART,
            version=CHART_VERSION,
            repository_opts={"repo": CHART_REPOSITORY},
            namespace=objects.namespace,
            values=values,
            opts=objects.options(child_options(self, opts)),
        )
        self.namespace = objects.namespace
        self.workload = pulumi.Output.concat("Deployment/", release.name)
        self.labels = list(args.labels)
        self.images = (job_image,)
        self.register_outputs(
            {"namespace": self.namespace, "workload": self.workload, "labels": self.labels}
        )


def runner_config(
    args: GitlabRunnerArgs,
    namespace: str,
    service_account: str,
    image: str,
    gitlab_registry: str,
    pod_files: Sequence[PodFile] = (),
) -> str:
    """The runner's config.toml template: the Kubernetes executor and the job pods it makes,
    with `pod_files` mounted in the job's container and their variables in the job's."""
    kubernetes: dict = {
        "namespace": namespace,
        "image": image,
        # The helper container of every job pod, from the same registry as the job image;
        # the runner fills in its own version (docs/configuration/advanced-configuration.md).
        "helper_image": f"{gitlab_registry}/{HELPER_IMAGE}",
        "privileged": False,
        "allow_privilege_escalation": False,
        # The CML engine's set: what root needs for apt-get and pip, nothing else.
        "cap_drop": ["ALL"],
        "cap_add": list(cml_runner.KEPT_CAPABILITIES),
        "service_account": service_account,
        # No API token in job pods (the service account says so too); since runner 16.9.
        "automount_service_account_token": False,
        "poll_timeout": POLL_TIMEOUT_SECONDS,
        "cpu_request": args.cpu,
        "cpu_limit": args.cpu,
        "memory_request": args.memory,
        "memory_limit": args.memory,
        "node_selector": node_selector(args),
        "pod_annotations": dict(NOT_EVICTABLE),
    }
    if args.runtime_class is not None:
        # Since runner 14.9.
        kubernetes["runtime_class_name"] = args.runtime_class
    # Runner 18.9 has no setting for a seccomp profile (18.11 adds one) nor for extended
    # resources: both are set by patching the pod (GitLab's GPU guide does the same for
    # GPUs, docs/configuration/gpus.md), which needs the advanced pod spec feature flag. It
    # stands in [runners.feature_flags], which a job's variables cannot override
    # (common/build_settings.go, populateFeatureFlags).
    patch: dict = {"securityContext": RUNTIME_DEFAULT_SECCOMP}
    build: dict = {"name": "build"}
    if pod_files:
        # The executor's own config_map volumes take no file mode, and the keyring must run.
        patch["volumes"] = [f.volume for f in pod_files]
        build["volumeMounts"] = [f.mount for f in pod_files]
    if args.gpus > 0:
        gpus = {GPU_RESOURCE: str(args.gpus)}
        build["resources"] = {"requests": gpus, "limits": gpus}
        kubernetes["node_tolerations"] = {f"{GPU_RESOURCE}=present": "NoSchedule"}
        if args.gpu_class is not None:
            # key=value: effect, the executor's form of an Equal toleration.
            toleration = args.gpu_class.toleration()
            kubernetes["node_tolerations"][f"{toleration['key']}={toleration['value']}"] = (
                toleration["effect"]
            )
    elif args.node_labels is None:
        kubernetes["node_tolerations"] = {CPU_JOBS_LABEL: "NoSchedule"}
    if len(build) > 1:
        patch["containers"] = [build]
    # JSON is YAML, the patch format the executor reads.
    kubernetes["pod_spec"] = [
        {"name": "hardening", "patch": json.dumps(patch), "patch_type": "strategic"}
    ]
    # With token expiry set on the GitLab instance or project, the runner would rotate its
    # token into its own config.toml (commands/multi.go, resetOneRunnerToken), which lives in
    # the pod's memory: the next manager start would register with the Secret's old, revoked
    # token. Rotation is done through the stack instead (docs/upgrading-gitlab-runner.md).
    # The flag exists since runner 17.0.
    feature_flags = {
        "FF_DISABLE_AUTOMATIC_TOKEN_ROTATION": True,
        "FF_USE_ADVANCED_POD_SPEC_CONFIGURATION": True,
    }
    runner = {"executor": "kubernetes", "kubernetes": kubernetes, "feature_flags": feature_flags}
    # Each job's variables; a job may set its own over them.
    environment = [f"{e['name']}={e['value']}" for f in pod_files for e in f.env]
    if environment:
        runner["environment"] = environment
    return tomli_w.dumps({"runners": [runner]})


def _manager_egress(name: str, api_server_ports: Sequence[int]) -> dict:
    """What the manager reaches besides what every pod of the namespace may: HTTPS anywhere,
    for a GitLab instance that may be private, and the Kubernetes API server (an address of
    the cluster's network) on its ports. It reaches job pods only through the API server
    (executors/kubernetes, exec.go: attach and exec; service_proxy.go: services/proxy)."""
    return {
        # The chart's manager pod (templates/deployment.yaml, app: <fullname>); a job pod,
        # which the executor labels job.runner.gitlab.com/pod, never, even if it copied that
        # label (pod_labels cannot remove the executor's).
        "podSelector": {
            "matchLabels": {"app": name},
            "matchExpressions": [{"key": "job.runner.gitlab.com/pod", "operator": "DoesNotExist"}],
        },
        "policyTypes": ["Egress"],
        "egress": [
            {
                "ports": [
                    {"protocol": "TCP", "port": port} for port in sorted({443, *api_server_ports})
                ]
            }
        ],
    }


def _fingerprint(token: str) -> str:
    """A short digest that changes with the token and does not reveal it."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _instance(args: GitlabRunnerArgs) -> str:
    """The GitLab instance: as given, or https://host of the project's URL."""
    if args.gitlab_url:
        return args.gitlab_url
    parts = urlsplit(args.repository)
    return f"{parts.scheme}://{parts.netloc}"


def _project_path(args: GitlabRunnerArgs) -> str:
    """group/project: the repository URL past the instance's."""
    return args.repository.removeprefix(_instance(args)).strip("/")


def _created_runner(
    name: str, args: GitlabRunnerArgs, create: CreateRunner, opts: pulumi.ResourceOptions
) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
    """A project runner made through GitLab's API (tags are the labels, untagged jobs refused):
    its token, and a version of it for the manager's restart."""
    # Imported here: a stack without such a runner never loads the GitLab provider's SDK.
    import pulumi_gitlab as gitlab

    provider = gitlab.Provider(
        f"{name}-gitlab",
        base_url=f"{_instance(args)}/api/v4/",
        token=pulumi.Output.secret(create.api_token),
        opts=opts,
    )
    on_gitlab = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(provider=provider))
    project = gitlab.get_project_output(
        path_with_namespace=_project_path(args),
        opts=pulumi.InvokeOptions(provider=provider),
    )
    runner = gitlab.UserRunner(
        name,
        runner_type="project_type",
        project_id=project.id.apply(int),
        description=f"gpu-runners {name}",
        tag_lists=list(args.labels),
        untagged=False,
        locked=True,
        # A protected runner takes jobs of protected branches and tags only (GitLab docs,
        # "Protect runners"); a runner made in GitLab's UI is protected there, not here.
        access_level="ref_protected" if args.trusted else "not_protected",
        opts=on_gitlab,
    )
    # Unknown on a first preview, as the token is: the policy pack knows this annotation holds
    # a digest and does not read it (policy/rules.py, TOKEN_DIGEST_ANNOTATION).
    return runner.token, pulumi.Output.unsecret(runner.token.apply(_fingerprint))
