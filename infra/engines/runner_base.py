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
# CPU runners have a pool of their own, never the system pool beside the controllers (which
# hold forge credentials): its nodes carry this label and a NoSchedule taint of the same key.
CPU_JOBS_LABEL = "gpu-runners/cpu-jobs"
CPU_JOBS_NODE_LABELS = {"gpu": "false", CPU_JOBS_LABEL: "true"}
CPU_JOBS_TOLERATION = {"key": CPU_JOBS_LABEL, "operator": "Exists", "effect": "NoSchedule"}
# The cluster autoscaler must not move a runner pod that may be running a job.
NOT_EVICTABLE = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
# Every runner and job pod: the kernel's default syscall filter, which GKE Standard applies
# only to pods that ask for it ("Seccomp in GKE"; Pod Security `baseline` allows no profile).
RUNTIME_DEFAULT_SECCOMP = {"seccompProfile": {"type": "RuntimeDefault"}}
# The component types a runner has been, one per engine (and the CML engine's old name).
RUNNER_TYPES = (
    "gpu-runners:index:CmlRunner",
    "gpu-runners:index:RunnerDeployment",
    "gpu-runners:index:ArcRunner",
    "gpu-runners:index:GitlabRunner",
)


# A GPU class's node pools carry this label and a NoSchedule taint of the same key and value,
# which is how GKE binds manually made pools to a ComputeClass; a pod chooses the class with a
# nodeSelector on the label ("About custom ComputeClasses", manually created node pools).
COMPUTE_CLASS_LABEL = "cloud.google.com/compute-class"


@dataclass(frozen=True)
class GpuClassPlacement:
    """The GPU class a runner's pods land on: its ComputeClass.

    Every pool of a class shares its GPUs alike, so the class alone confines a pod to shared
    GPUs where the class shares them. GKE's time-sharing labels are not selected too: a
    system label beside a ComputeClass needs GKE 1.32.3-gke.1499000 ("About custom
    ComputeClasses"), and the class is all the autoscaler needs.
    """

    name: str

    def node_selector(self) -> dict[str, str]:
        return {COMPUTE_CLASS_LABEL: self.name}

    def toleration(self) -> dict[str, str]:
        """The class taint's toleration, which GKE is said to add itself but no Google page
        states for Standard clusters, so it is declared."""
        return {
            "key": COMPUTE_CLASS_LABEL,
            "operator": "Equal",
            "value": self.name,
            "effect": "NoSchedule",
        }


SYSTEM_NODES = {"gpu": "false"}
"""The system pool, for the controllers and managers; the CPU runner pool's taint keeps them
off it."""


def runner_node_selector(gpus: int) -> dict[str, str]:
    """The pool a runner's pods land on: the GPU pool, or the CPU runner pool without GPUs."""
    return {"gpu": "true"} if gpus > 0 else dict(CPU_JOBS_NODE_LABELS)


@dataclass(frozen=True)
class Registries:
    """Where runner and job images come from: the public registries, or mirrors of them."""

    docker_hub: str = "docker.io"
    ghcr: str = "ghcr.io"
    gitlab: str = "registry.gitlab.com"


# Python packages from the package cache (infra/gcp/registry.py, PackageCache): pip and uv
# ask a `keyring` command for the index's password when its URL names a user and their keyring
# provider is `subprocess` (pip, src/pip/_internal/network/auth.py, KeyRingCliProvider: runs
# `keyring get <url> <username>`, the password on stdout; uv, crates/uv-auth, the same CLI).
# Artifact Registry takes an access token as the password of the user oauth2accesstoken
# (Artifact Registry docs, "Configure authentication to Artifact Registry for Python package
# repositories", password authentication); this one is the pod's Google account's, from the
# GKE metadata server (Workload Identity), short-lived, asked for at each install.
PACKAGE_INDEX_USER = "oauth2accesstoken"
# On the default PATH of Debian, Ubuntu, Alpine and the python images, and no Python's scripts
# directory: pip skips a `keyring` in its own interpreter's (/usr/local/bin in the python
# images, and for Debian's and Ubuntu's Python 3.10 and later; pip, network/auth.py,
# get_keyring_provider), and a `pip install` of a package that ships one (keyring, twine)
# would try to replace a file mounted read-only there.
KEYRING_PATH = "/usr/local/sbin/keyring"


KEYRING = r"""#!/bin/sh
# gpu-runners: `keyring get <service> oauth2accesstoken`, as pip and uv call it for the package
# cache, prints an access token of the pod's Google account, Artifact Registry's password for
# that user. Any other service or user: no password.
[ "$1" = get ] && [ "$3" = oauth2accesstoken ] || exit 1
case "$2" in
  @HOST@ | https://@HOST@/*) ;;
  *) exit 1 ;;
esac
url=http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token
if command -v curl >/dev/null 2>&1; then
  body=$(curl -sf -H 'Metadata-Flavor: Google' "$url") || exit 1
elif command -v python3 >/dev/null 2>&1; then
  body=$(python3 -c 'import sys, urllib.request as u
r = u.Request(sys.argv[1], headers={"Metadata-Flavor": "Google"})
print(u.urlopen(r, timeout=10).read().decode())' "$url") || exit 1
else
  exit 1
fi
token=$(printf '%s' "$body" | sed -n 's/.*"access_token" *: *"\([^"]*\)".*/\1/p')
[ -n "$token" ] && printf '%s\n' "$token"
"""


def keyring_script(host: str) -> str:
    """The `keyring` command pip and uv run: for the user oauth2accesstoken at `host` (the
    index's host; pip asks with the index URL, uv with its host), an access token of the pod's
    Google account, Artifact Registry's password for that user; for anything else, nothing,
    so no other index ever gets the token."""
    return KEYRING.replace("@HOST@", host)


@dataclass(frozen=True)
class PackageIndex:
    """A Python package index the runner's pods and jobs install from, as their Google account:
    the stack's pull-through cache of PyPI in the cluster's region."""

    url: str
    """The index's simple API, https://<region>-python.pkg.dev/<project>/<repository>/simple/."""

    @property
    def host(self) -> str:
        return self.url.removeprefix("https://").split("/", 1)[0]

    def env(self) -> list[dict]:
        """pip's and uv's standard variables: the index, with its user, and the keyring."""
        url = self.url.replace("https://", f"https://{PACKAGE_INDEX_USER}@", 1)
        return [
            {"name": "PIP_INDEX_URL", "value": url},
            {"name": "PIP_KEYRING_PROVIDER", "value": "subprocess"},
            {"name": "UV_DEFAULT_INDEX", "value": url},
            {"name": "UV_KEYRING_PROVIDER", "value": "subprocess"},
        ]


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
    """Node labels the pod must match besides its pool's (runner_node_selector), which it
    cannot override."""
    gpu_class: GpuClassPlacement | None = None
    """The GPU class a GPU runner's pods land on; None: any gpu=true node."""
    node_labels: Mapping[str, str] | None = None
    """On a cluster the stack does not make: the labels of the nodes the pods land on, in
    place of the stack's pools' (gpu=true, or the CPU runner pool's)."""
    google_service_account: pulumi.Input[str] | None = None
    """Google service account the pod acts as through GKE Workload Identity, if any."""
    registries: Registries = Registries()
    """Where the runner's and its jobs' images are pulled from."""
    services_range: pulumi.Input[str] | None = None
    """The cluster's Service IP range: pods may reach it on port 53 only. Without Dataplane V2,
    NodeLocal DNSCache answers on kube-dns's Service address untranslated, which neither the
    kube-dns pods nor its link-local address match (kubernetes/dns, nodelocaldns README,
    "Network policy and DNS connectivity")."""
    runtime_class: str | None = None
    """The pods' RuntimeClass: `gvisor` on a GKE Sandbox pool, whose RuntimeClass also adds its
    node selector and toleration (GKE docs, "Harden workload isolation with GKE Sandbox")."""
    package_index: PackageIndex | None = None
    """The Python package index the pods and jobs install from; None: PyPI, as the tools do."""
    trusted: bool = False
    """Take jobs of protected branches only (as far as the forge lets the engine enforce it),
    and act as `google_service_account`, which may then write the DVC remote."""


@dataclass(frozen=True)
class RunnerTarget:
    """The cluster the runners run on, as the engines need it: the stack's GKE cluster, or
    one it does not make."""

    provider: k8s.Provider
    system_nodes: Mapping[str, str]
    """Where the controllers and managers run."""
    registries: Registries
    package_index: PackageIndex | None
    """The Python package index of the runners' pods and jobs (RunnerBaseArgs.package_index)."""
    services_range: pulumi.Input[str] | None
    """The cluster's Service range, when known (RunnerBaseArgs.services_range)."""
    ready: Sequence[pulumi.Resource]
    """What must exist before a runner pod starts."""
    api_server_ports: Sequence[int]
    """Where the API server answers, for GitLab's manager (GitlabRunnerArgs.api_server_ports)."""


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


SANDBOX_RUNTIME_CLASS = "gvisor"


def pod_identity(service_account: pulumi.Input[str]) -> dict:
    """The pod spec's service account, without an API token in the pod.

    No engine needs the Kubernetes API from a runner or job pod, and a token there is what a
    job could take to the API server. Workload Identity does not use it: the GKE metadata
    server identifies the pod by itself (see docs/security.md for the source).
    """
    return {"serviceAccountName": service_account, "automountServiceAccountToken": False}


def node_selector(args: RunnerBaseArgs) -> dict[str, str]:
    """The runner's own node labels, then its pool's and class's, which no setting can move."""
    if args.node_labels is not None:
        pool = dict(args.node_labels)
    else:
        pool = runner_node_selector(args.gpus)
    if args.gpus > 0 and args.gpu_class is not None:
        pool |= args.gpu_class.node_selector()
    return {**(args.node_selector or {}), **pool}


def tolerations(args: RunnerBaseArgs) -> list[dict[str, str]]:
    """The tolerations of the taints on the runner's pool: GPU (and class), or CPU jobs; on a
    cluster the stack does not make, the GPU taint only (NVIDIA's and the guide's)."""
    if args.gpus == 0:
        return [CPU_JOBS_TOLERATION] if args.node_labels is None else []
    if args.gpu_class is None:
        return [GPU_TOLERATION]
    return [GPU_TOLERATION, args.gpu_class.toleration()]


def placement(args: RunnerBaseArgs) -> dict:
    """The pod spec's nodeSelector, the tolerations of its pool's taints, and its RuntimeClass."""
    spec = {"nodeSelector": node_selector(args), "tolerations": tolerations(args)}
    if args.runtime_class is not None:
        spec["runtimeClassName"] = args.runtime_class
    return spec


# A GitHub runner runs this script before each job, and fails the job when it fails
# (actions/runner, ACTIONS_RUNNER_HOOK_JOB_STARTED; GitHub docs, "Running scripts before or
# after a job": scripts see the default variables). Runner groups, GitHub's own way to limit
# runners to workflows and refs, exist for organization runners only. GITHUB_REF_PROTECTED is
# true when branch protection or a ruleset covers the ref; push, schedule and
# workflow_dispatch run the workflow as it is on that ref, while pull requests (and
# pull_request_target, which runs the base's workflow for a stranger's change) are refused.
JOB_HOOK_DIR = "/opt/gpu-runners/hooks"
JOB_HOOK_FILE = "protected-refs-only.sh"
JOB_HOOK_ENV = "ACTIONS_RUNNER_HOOK_JOB_STARTED"
PROTECTED_REFS_ONLY = """#!/bin/sh
# gpu-runners: a trusted runner runs jobs of protected branches and tags only.
case "$GITHUB_EVENT_NAME" in
  push | schedule | workflow_dispatch) ;;
  *)
    echo "::error::This runner is trusted: it runs push, schedule and workflow_dispatch" \
      "jobs only, not $GITHUB_EVENT_NAME. Target an untrusted runner's labels."
    exit 1
    ;;
esac
if [ "$GITHUB_REF_PROTECTED" != "true" ]; then
  echo "::error::This runner is trusted: $GITHUB_REF is not a protected branch or tag."
  exit 1
fi
"""


# What a runner or job pod may reach, and nothing else (the namespace's NetworkPolicy): DNS,
# the GKE metadata server (Workload Identity), and the internet on HTTPS and HTTP (apt's
# Ubuntu and Debian archives are plain HTTP, signed), but no private address: no pod, node,
# Service or internal load balancer of the cluster or its network.
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
# kube-dns; NodeLocal DNSCache (on by default in new Standard clusters of recent GKE versions,
# GKE docs "Set up NodeLocal DNSCache"); and Cloud DNS for GKE, which answers on the metadata
# address. (A cluster's Service range is added on port 53 too: RunnerBaseArgs.services_range.)
# A pod selector cannot match the two link-local addresses (tektoncd/operator#4000).
DNS_PEERS = [
    {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    },
    {"ipBlock": {"cidr": "169.254.20.10/32"}},
    {"ipBlock": {"cidr": "169.254.169.254/32"}},
]
# GKE docs, "About Workload Identity Federation for GKE": with a strict network policy, allow
# 169.254.169.252/32 on port 988, and with Dataplane V2 169.254.169.254/32 on port 80.
METADATA_SERVER = [
    {
        "to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}],
        "ports": [{"protocol": "TCP", "port": 80}],
    },
    {
        "to": [{"ipBlock": {"cidr": "169.254.169.252/32"}}],
        "ports": [{"protocol": "TCP", "port": 988}],
    },
]
PRIVATE_RANGES = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
]
INTERNET = {
    "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_RANGES}}],
    "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 80}],
}
JOB_EGRESS = [{"to": DNS_PEERS, "ports": DNS_PORTS}, *METADATA_SERVER, INTERNET]


@dataclass(frozen=True)
class PodFile:
    """A file from a ConfigMap of the runner's that its runner pods mount, and the variables
    that point at it: a trusted GitHub runner's job hook, the package index's sign-in."""

    volume: dict
    mount: dict
    env: list[dict]


@dataclass(frozen=True)
class RunnerObjects:
    """The names of what every runner has before its pods (namespace, account, Secret, a
    trusted GitHub runner's job hook, the package index's keyring), and the objects
    themselves, for what must wait for them (`depends_on`)."""

    namespace: str
    service_account: str
    secret: str
    ready: list[pulumi.Resource]
    pod_files: tuple[PodFile, ...] = ()
    """What the engine's runner pods mount: the job hook, the package index's keyring."""

    def options(self, opts: pulumi.ResourceOptions) -> pulumi.ResourceOptions:
        """`opts`, waiting for these objects too."""
        return pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=self.ready))


def runner_objects(
    name: str,
    args: RunnerBaseArgs,
    labels: Mapping[str, str],
    pod_security: Literal["baseline", "restricted"],
    secret_data: Mapping[str, pulumi.Input[str]],
    component_type: str,
    opts: pulumi.ResourceOptions,
    github_job_hook: bool = False,
    exceptions: Mapping[str, dict] | None = None,
) -> RunnerObjects:
    """The namespace (Pod Security `pod_security` enforced), its NetworkPolicy (no traffic in,
    out only to DNS, the metadata server and the internet), the service account the pods run
    as (with the Workload Identity annotation), a Secret holding `secret_data`, and with
    `github_job_hook` for a trusted runner a ConfigMap holding PROTECTED_REFS_ONLY, all
    named after the runner, children of the engine's component of type `component_type`.
    `exceptions`: NetworkPolicy specs, by name, for the engine's own pods in the namespace,
    created before the isolation so that those pods never go without them."""
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
    # Names are plain strings, known on a first preview (when the cluster, and so every
    # Kubernetes output, is not): the policy pack reads them. Order comes from depends_on.
    namespace = args.namespace or name
    ready: list[pulumi.Resource] = []
    if args.create_namespace:
        ready.append(
            k8s.core.v1.Namespace(
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
            )
        )
    in_namespace = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=ready))

    annotations = (
        {"iam.gke.io/gcp-service-account": args.google_service_account}
        if args.google_service_account is not None
        else None
    )
    ready.append(
        k8s.core.v1.ServiceAccount(
            name,
            # Held by the account too, for a pod template that does not say (pod_identity).
            automount_service_account_token=False,
            metadata={
                "name": name,
                "namespace": namespace,
                "labels": dict(labels),
                "annotations": annotations,
            },
            opts=in_namespace,
        )
    )
    ready.append(
        k8s.core.v1.Secret(
            f"{name}-token",
            metadata={"name": f"{name}-token", "namespace": namespace, "labels": dict(labels)},
            type="Opaque",
            string_data={key: pulumi.Output.secret(value) for key, value in secret_data.items()},
            opts=in_namespace,
        )
    )
    allowed = [
        k8s.networking.v1.NetworkPolicy(
            policy,
            metadata={"name": policy, "namespace": namespace, "labels": dict(labels)},
            spec=spec,
            opts=in_namespace,
        )
        for policy, spec in (exceptions or {}).items()
    ]
    # Every pod of the namespace: no traffic in, and out only JOB_EGRESS. GKE enforces it with
    # Dataplane V2, or Calico on the legacy dataplane (infra/gcp/cluster.py).
    egress = JOB_EGRESS
    if args.services_range is not None:
        services = {"to": [{"ipBlock": {"cidr": args.services_range}}], "ports": DNS_PORTS}
        egress = [*JOB_EGRESS, services]
    ready.append(
        k8s.networking.v1.NetworkPolicy(
            f"{name}-isolation",
            metadata={"name": f"{name}-isolation", "namespace": namespace, "labels": dict(labels)},
            spec={"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "egress": egress},
            opts=pulumi.ResourceOptions.merge(
                in_namespace, pulumi.ResourceOptions(depends_on=[*ready, *allowed])
            ),
        )
    )
    ready += allowed
    pod_files = []
    if github_job_hook and args.trusted:
        hooks = f"{name}-job-hooks"
        ready.append(
            k8s.core.v1.ConfigMap(
                hooks,
                metadata={"name": hooks, "namespace": namespace, "labels": dict(labels)},
                data={JOB_HOOK_FILE: PROTECTED_REFS_ONLY},
                opts=in_namespace,
            )
        )
        pod_files.append(
            PodFile(
                volume={"name": "job-hooks", "configMap": {"name": hooks, "defaultMode": 0o555}},
                mount={"name": "job-hooks", "mountPath": JOB_HOOK_DIR, "readOnly": True},
                env=[{"name": JOB_HOOK_ENV, "value": f"{JOB_HOOK_DIR}/{JOB_HOOK_FILE}"}],
            )
        )
    if args.package_index is not None:
        keyring = package_index_config_map(name)
        ready.append(
            k8s.core.v1.ConfigMap(
                keyring,
                metadata={"name": keyring, "namespace": namespace, "labels": dict(labels)},
                data={"keyring": keyring_script(args.package_index.host)},
                opts=in_namespace,
            )
        )
        pod_files.append(
            PodFile(
                volume={"name": "keyring", "configMap": {"name": keyring, "defaultMode": 0o555}},
                # One file, on the PATH of nearly every image, which keeps its own PATH.
                mount={
                    "name": "keyring",
                    "mountPath": KEYRING_PATH,
                    "subPath": "keyring",
                    "readOnly": True,
                },
                env=args.package_index.env(),
            )
        )
    return RunnerObjects(
        namespace=namespace,
        service_account=name,
        secret=f"{name}-token",
        ready=ready,
        pod_files=tuple(pod_files),
    )


def package_index_config_map(name: str) -> str:
    """The name of a runner's ConfigMap holding the package index's keyring command."""
    return f"{name}-package-index"


def mount_pod_files(container: dict, spec: dict, pod_files: Sequence[PodFile]) -> None:
    """Mount each file in the runner container, with its variables."""
    if not pod_files:
        return
    container["volumeMounts"] = [f.mount for f in pod_files]
    container["env"] = [*container.get("env", []), *(e for f in pod_files for e in f.env)]
    spec["volumes"] = [*spec.get("volumes", []), *(f.volume for f in pod_files)]
