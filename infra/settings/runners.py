"""The settings of one runner, an entry of the `runners` list, and the checks of each key."""

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
)

from infra import machines, messages
from infra.engines import arc, cml_runner, keda, runner_base
from infra.settings.gpu_classes import GpuClass, class_named
from infra.settings.sections import _Section
from infra.settings.validation import (
    _GITHUB_REPO,
    _GITLAB_INSTANCE,
    _GITLAB_REPO,
    _IMAGE,
    _IMAGE_TAG,
    _LABEL_NAME,
    _QUANTITY,
    _QUANTITY_FACTORS,
    _RUNNER_NAME,
    GPU_LABEL,
    _invalid,
    _label_problem,
    _matching,
)


def _check_runner_name(name: str) -> str:
    taken = ("default", keda.NAMESPACE, arc.NAMESPACE)
    if not _RUNNER_NAME.match(name) or name in taken or name.startswith("kube-"):
        raise _invalid(
            "allowed: lowercase letters, digits and hyphens, starting with a letter, at most "
            f"40 characters, not {', '.join(map(repr, taken))} or 'kube-*' (it names the "
            "runner's namespace)"
        )
    return name


def _repository_url(url: Any) -> Any:
    """What a browser's address bar gives works too: a trailing '/' or '.git' is dropped, and
    the host is lowercased (host names are not case-sensitive)."""
    if isinstance(url, str):
        url = url.strip().rstrip("/").removesuffix(".git")
        scheme, _, rest = url.partition("://")
        host, slash, path = rest.partition("/")
        if "@" not in host:
            url = f"{scheme.lower()}://{host.lower()}{slash}{path}" if rest else url
    return url


def _check_repository(url: str, info: ValidationInfo) -> str:
    platform = info.data.get("platform")
    instance = info.data.get("gitlab_url")
    if instance and platform != "gitlab":
        raise _invalid("gitlabUrl is set, which only GitLab runners read; set platform: gitlab")
    if instance and not url.startswith(f"{instance}/"):
        raise _invalid(
            f"is not under gitlabUrl ({instance}); allowed: {instance}/<group>/<project>"
        )
    if instance and len(url.removeprefix(f"{instance}/").split("/")) < 2:
        raise _invalid(f"names no project under gitlabUrl; allowed: {instance}/<group>/<project>")
    if "@" in urlsplit(url).netloc:
        # It would stand in plain Kubernetes objects and outputs; messages mask it.
        raise _invalid(
            "holds a name or token before '@', which would be stored in plain text; allowed: "
            "the URL without it (the token belongs in runnerTokens)"
        )
    if platform == "github" and url.startswith(
        ("https://github.com/enterprises/", "https://github.com/orgs/")
    ):
        raise _invalid(
            "is an enterprise or organisation page, not a repository; allowed: "
            "https://github.com/<owner>/<repo> (runners here serve one repository)"
        )
    if platform == "gitlab" and "/-/" in url:
        page = url[url.index("/-/") :]
        raise _invalid(
            f"ends in a page of the project ({page}), not the project; allowed: "
            f"{url[: url.index('/-/')]}"
        )
    if platform == "github" and not _GITHUB_REPO.match(url):
        parts = url.removeprefix("https://github.com/").split("/")
        if url.startswith("https://github.com/") and len(parts) > 2:
            raise _invalid(
                f"ends in a page of the repository (/{'/'.join(parts[2:])}), not the repository; "
                f"allowed: https://github.com/{parts[0]}/{parts[1]}"
            )
        raise _invalid("does not fit platform github; allowed: https://github.com/<owner>/<repo>")
    if platform == "gitlab" and (not _GITLAB_REPO.match(url) or _GITHUB_REPO.match(url)):
        raise _invalid(
            "does not fit platform gitlab; allowed: https://gitlab.com/<group>/<project> "
            "(or the same on your GitLab host)"
        )
    return url


def _quantity_text(value: Any) -> Any:
    """YAML reads `cpu: 1` as a number; Kubernetes quantities are strings."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def quantity_value(quantity: str) -> float | None:
    """A Kubernetes quantity as a number (cores, bytes), or None when it is not one."""
    match = _QUANTITY.match(quantity)
    if not match:
        return None
    number, suffix = match.group(1), match.group(2) or ""
    factor = _QUANTITY_FACTORS.get(suffix) or 10 ** int(suffix[1:])
    return float(number) * factor


def _check_quantity(quantity: str) -> str:
    value = quantity_value(quantity)
    if value is None or value <= 0:
        raise _invalid(
            "not a Kubernetes quantity; allowed: a positive number with an optional suffix "
            "(m, k, M, G, Ki, Mi, Gi…), e.g. 500m, 2, 2000Mi, 8Gi"
        )
    return quantity


def _runner_class(info: ValidationInfo) -> GpuClass | None:
    """The GPU class a runner's pods land on."""
    return class_named((info.context or {}).get("gpu_classes", {}), info.data.get("gpu_pool"))


def _runner_node(info: ValidationInfo) -> tuple[str, machines.Machine | None]:
    """The config key of the pool a runner's pods land on (its GPU class, or cpuPool), and
    its machine if known."""
    if not info.data.get("gpus"):
        return "cpuPool", (info.context or {}).get("machines", {}).get("cpuPool")
    gpu_class = _runner_class(info)
    if gpu_class is None:
        return "gpuPool", None
    return gpu_class.key, machines.machine(gpu_class.settings.machine_type)


def _check_fits_cpu(cpu: str, info: ValidationInfo) -> str:
    pool, node = _runner_node(info)
    if node is not None and quantity_value(cpu) > machines.allocatable_cpu(node):
        raise _invalid(
            f"more than one {pool} node leaves to pods ({machines.allocatable_cpu(node):.2f} of "
            f"its {node.vcpus} vCPUs, after GKE's reservation); the pod would never schedule. "
            f"Allowed: at most {int(machines.allocatable_cpu(node) * 1000)}m, or a larger "
            f"{pool}.machineType"
        )
    return cpu


def _check_fits_memory(memory: str, info: ValidationInfo) -> str:
    if _QUANTITY.match(memory).group(2) is None:
        raise _invalid(
            f"has no unit, so it means {memory} bytes; allowed: a size with a unit, e.g. "
            f"{memory}Mi or 8Gi"
        )
    pool, node = _runner_node(info)
    if node is not None and quantity_value(memory) > machines.allocatable_memory(node):
        left = int(machines.allocatable_memory(node) / machines.MIB)
        raise _invalid(
            f"more than one {pool} node leaves to pods ({left}Mi of its {node.memory_gib:g} GiB, "
            "after GKE's and image streaming's reservations); the pod would never schedule. "
            f"Allowed: at most {left}Mi, "
            f"or a larger {pool}.machineType"
        )
    return memory


def _check_runner_gpu_pool(name: str | None, info: ValidationInfo) -> str | None:
    if name is not None and (info.context or {}).get("existing") is not None:
        raise _invalid(
            "GPU classes are the node pools the stack makes, and existingCluster targets a "
            "cluster it does not make; allowed: unset (existingCluster.gpuNodeLabels says where "
            "the GPUs are)"
        )
    classes = (info.context or {}).get("gpu_classes", {})
    if name is not None and classes and name not in classes:
        where = ", ".join(f"{c.name} ({c.key})" for c in classes.values())
        raise _invalid(f"no GPU class of that name; allowed: {where}")
    return name


def _check_runner_gpus(gpus: int, info: ValidationInfo) -> int:
    existing = (info.context or {}).get("existing")
    if existing is not None:
        if gpus and existing.gpu_node_labels is None:
            raise _invalid(
                "existingCluster names no GPU nodes, so the pod would never schedule; allowed: "
                "0, or existingCluster.gpuNodeLabels set to how the cluster labels its GPU "
                'nodes: {gpu: "true"} (the guide\'s, by hand) or {nvidia.com/gpu.present: '
                '"true"} (NVIDIA\'s GPU Operator)'
            )
        return gpus
    classes = (info.context or {}).get("gpu_classes", {})
    if "gpu_pool" not in info.data or not classes:
        return gpus  # the class's own problem is reported
    name = info.data["gpu_pool"]
    if gpus == 0:
        if name is not None:
            raise _invalid(
                f"a CPU runner lands on cpuPool, yet gpuPool names the GPU class {name!r}; "
                "allowed: 1 or more GPUs, or gpuPool unset"
            )
        return gpus
    gpu_class = _runner_class(info)
    if gpu_class is None:
        raise _invalid(
            f"a GPU runner on a stack of several GPU classes names its class; set this "
            f"runner's gpuPool, allowed: {', '.join(classes)}"
        )
    per_node = gpu_class.settings.gpus_per_node
    if gpus > per_node:
        raise _invalid(
            f"a GPU node of class {gpu_class.name!r} carries {per_node} ({gpu_class.key}); "
            f"allowed: 0 to {per_node}, or a larger {gpu_class.key}.machineType"
        )
    shared = gpu_class.settings.time_sharing_clients_per_gpu
    if shared and gpus > 1:
        raise _invalid(
            f"class {gpu_class.name!r} shares each GPU between up to {shared} pods "
            f"({gpu_class.key}.timeSharingClientsPerGpu), and a pod there gets one GPU; "
            "allowed: 1, or a class without time-sharing"
        )
    return gpus


# Node labels a pod that selects a ComputeClass may not select: GKE "rejects any Pods that
# select system labels that have a corresponding field in the ComputeClass specification"
# ("About custom ComputeClasses", the table of node selectors for system node labels), and
# the class label itself is the runner's GPU class.
_BESIDE_A_COMPUTE_CLASS = {
    runner_base.COMPUTE_CLASS_LABEL,
    "cloud.google.com/gke-spot",
    "cloud.google.com/gke-accelerator",
    "cloud.google.com/gke-gpu-driver-version",
    "cloud.google.com/machine-family",
    "cloud.google.com/machine-type",
    "node.kubernetes.io/instance-type",
    "cloud.google.com/reservation-name",
    "cloud.google.com/reservation-project",
    "cloud.google.com/reservation-affinity",
    "cloud.google.com/gke-ephemeral-storage-local-ssd",
    "cloud.google.com/gke-boot-disk",
    "cloud.google.com/gke-boot-disk-size",
    "cloud.google.com/gke-node-pool-group-name",
    "cloud.google.com/gke-workload-type",
}
# Pinning one pool of a class with several would keep its pods off the fallback.
_NODE_POOL_LABEL = "cloud.google.com/gke-nodepool"


def _check_node_selector(
    selector: dict[str, str] | None, info: ValidationInfo
) -> dict[str, str] | None:
    if selector is None:
        return selector
    for key, value in selector.items():
        problem = _label_problem(key, value)
        if problem:
            raise _invalid(problem)
    if (info.context or {}).get("existing") is not None:
        return selector  # the cluster's own labels: the stack knows none of them
    if selector.get(GPU_LABEL, "true") not in ("true", "false"):
        raise _invalid(
            f"{GPU_LABEL}: {selector[GPU_LABEL]!r} matches no node: the pools are labelled "
            f'{GPU_LABEL}: "true" (gpuPool) and {GPU_LABEL}: "false" (cpuPool, systemPool)'
        )
    gpus = info.data.get("gpus")
    if gpus and selector.get(GPU_LABEL) == "false":
        raise _invalid(f"selects gpu=false nodes, which have no GPU, but gpus is {gpus}")
    if gpus == 0 and selector.get(GPU_LABEL) == "true":
        raise _invalid(
            "selects the tainted GPU nodes, but gpus is 0; a CPU runner lands on cpuPool"
        )
    refused = sorted(set(selector) & _BESIDE_A_COMPUTE_CLASS)
    if gpus and refused and (info.context or {}).get("gpu_classes"):
        raise _invalid(
            f"selects {', '.join(refused)}, which a GPU runner's pods cannot: they select their "
            "GPU class's ComputeClass, and GKE refuses a pod that selects both; allowed: gpuPool "
            "to choose the class, and labels of its nodes (gpuPools[].labels, "
            "topology.kubernetes.io/zone)"
        )
    gpu_class = _runner_class(info) if gpus else None
    if _NODE_POOL_LABEL in selector and gpu_class and len(gpu_class.node_pools) > 1:
        raise _invalid(
            f"pins the node pool {selector[_NODE_POOL_LABEL]!r} of class {gpu_class.name!r}, "
            f"whose pods then never reach its on-demand fallback; allowed: no "
            f"{_NODE_POOL_LABEL}, or onDemandFallback: false on the class"
        )
    return selector


def default_engine(platform: str | None) -> str:
    """GitLab runners use GitLab's own runner (it scales to zero); GitHub runners use CML."""
    return "gitlab-runner" if platform == "gitlab" else "cml"


def _engine(data: dict[str, Any]) -> str:
    """The engine of the runner being validated, configured or by default."""
    return data.get("engine") or default_engine(data.get("platform"))


def _default_mode(platform: str | None, engine: str) -> str:
    """Engines arc and gitlab-runner, and CML GitHub runners, start on demand; CML runners on
    GitLab run always (KEDA has no GitLab scaler). A waiting CPU runner would hold a node of
    its own pool, as a GPU runner does, so neither waits by default."""
    if engine in ("arc", "gitlab-runner"):
        return "on-demand"
    return "on-demand" if platform == "github" else "always"


def _check_mode(mode: str | None, info: ValidationInfo) -> str | None:
    engine = _engine(info.data)
    if mode == "on-demand" and info.data.get("platform") == "gitlab" and engine == "cml":
        raise _invalid(
            "on-demand is not available for a cml runner on gitlab: KEDA has no released GitLab "
            "scaler, and GitLab's jobs API cannot count only the jobs for this runner's tags; "
            "allowed: always, or engine gitlab-runner, which starts a pod per job"
        )
    if mode == "always" and engine == "gitlab-runner":
        raise _invalid(
            "gitlab-runner starts a pod for each job and keeps none waiting; allowed: "
            "on-demand, or set engine: cml to keep runners waiting"
        )
    return mode


def _mode(info: ValidationInfo) -> str:
    data = info.data
    return data.get("mode") or _default_mode(data.get("platform"), _engine(data))


def _check_replicas(replicas: int | None, info: ValidationInfo) -> int | None:
    if replicas is not None and _mode(info) == "on-demand":
        raise _invalid(
            "replicas applies to mode always; an on-demand runner scales from 0 to maxRunners. "
            "Remove replicas, or set mode: always"
            + (" and engine: cml" if _engine(info.data) == "gitlab-runner" else "")
        )
    return replicas


def _check_max_runners(max_runners: int | None, info: ValidationInfo) -> int | None:
    if max_runners is not None and _mode(info) == "always":
        raise _invalid(
            "maxRunners applies to mode on-demand; an always runner keeps `replicas` runners. "
            "Remove maxRunners, or set mode: on-demand"
        )
    return max_runners


def _check_engine(engine: str | None, info: ValidationInfo) -> str | None:
    platform = info.data.get("platform")
    if engine == "arc" and platform == "gitlab":
        raise _invalid(
            "arc (actions-runner-controller) runs GitHub Actions runners only; allowed for "
            "gitlab: gitlab-runner, cml"
        )
    if engine == "gitlab-runner" and platform == "github":
        raise _invalid("gitlab-runner runs GitLab CI jobs only; allowed for github: cml, arc")
    return engine


def _for_engine(engines: tuple[str, ...], instead: str):
    """A validator refusing a key that only runners of these engines have."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if value is not None and _engine(info.data) not in engines:
            raise _invalid(f"applies to engine {' or '.join(engines)} only; {instead}")
        return value

    return AfterValidator(check)


def _check_trust(trust: str, info: ValidationInfo) -> str:
    if trust == "trusted" and info.data.get("platform") == "gitlab" and _engine(info.data) == "cml":
        raise _invalid(
            "CML registers its GitLab runner unprotected (iterative/cml, src/drivers/gitlab.js, "
            "access_level not_protected), so any branch's jobs could use the DVC writer; "
            "allowed: untrusted, or engine gitlab-runner with a protected runner"
        )
    return trust


def _check_image_tag(tag: str | None) -> str | None:
    if tag is not None and tag.endswith("-gpu"):
        raise _invalid(
            f"GPU runners get the -gpu variant by themselves; allowed: the tag without it "
            f"({tag.removesuffix('-gpu')})"
        )
    return tag


Quantity = Annotated[str, BeforeValidator(_quantity_text), AfterValidator(_check_quantity)]


def _check_label_is_no_token(label: str) -> str:
    """A label stands in plain objects and outputs: no credential may hide in one."""
    if messages.CLASSIC_TOKEN.fullmatch(label) or messages.TOKEN_LIKE.match(label):
        raise _invalid(
            "looks like a token, which would stand in plain Kubernetes objects and outputs; "
            "allowed: a word for the runner's kind, like gpu (tokens go in runnerTokens)"
        )
    return label


RunnerLabel = Annotated[
    str,
    _matching(
        _LABEL_NAME,
        "at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or "
        "digit (no commas or spaces)",
    ),
    AfterValidator(_check_label_is_no_token),
]


class RunnerSettings(_Section):
    """One CI runner: an entry of the `runners` list."""

    name: Annotated[str, AfterValidator(_check_runner_name)]
    platform: Literal["github", "gitlab"] = "github"
    engine: Annotated[
        Literal["cml", "arc", "gitlab-runner"] | None, AfterValidator(_check_engine)
    ] = None
    gitlab_url: Annotated[
        str | None,
        BeforeValidator(_repository_url),
        _matching(_GITLAB_INSTANCE, "https://<host> or https://<host>/<path>, no trailing /"),
    ] = None
    repository: Annotated[str, BeforeValidator(_repository_url), AfterValidator(_check_repository)]
    labels: Annotated[tuple[RunnerLabel, ...], Field(min_length=1)] = runner_base.DEFAULT_LABELS
    gpu_pool: Annotated[str | None, AfterValidator(_check_runner_gpu_pool)] = None
    """The GPU class (gpuPools[].name) of a GPU runner; unset: the stack's only class."""
    gpus: Annotated[int, Field(ge=0), AfterValidator(_check_runner_gpus)] = 1
    node_selector: Annotated[dict[str, str] | None, AfterValidator(_check_node_selector)] = None
    cpu: Annotated[Quantity, AfterValidator(_check_fits_cpu)] = runner_base.DEFAULT_CPU
    memory: Annotated[Quantity, AfterValidator(_check_fits_memory)] = runner_base.DEFAULT_MEMORY
    image_tag: Annotated[
        str | None,
        _matching(_IMAGE_TAG, f"a tag of {cml_runner.CML_IMAGE}, e.g. 0-dvc3-base1"),
        AfterValidator(_check_image_tag),
        _for_engine(("cml", "gitlab-runner"), "an arc runner's image is set whole, with image"),
    ] = None
    image: Annotated[
        str | None,
        _matching(_IMAGE, "an image reference with a tag or digest, like ghcr.io/acme/runner:1.0"),
        _for_engine(
            ("arc",), "the other engines use iterativeai/cml; choose its tag with imageTag"
        ),
    ] = None
    mode: Annotated[Literal["always", "on-demand"] | None, AfterValidator(_check_mode)] = None
    replicas: Annotated[int | None, Field(ge=0), AfterValidator(_check_replicas)] = None
    max_runners: Annotated[int | None, Field(ge=1, le=20), AfterValidator(_check_max_runners)] = (
        None
    )
    trust: Annotated[Literal["untrusted", "trusted"], AfterValidator(_check_trust)] = "untrusted"
    idle_timeout_seconds: Annotated[
        int | None,
        Field(ge=60, le=86400),
        _for_engine(
            ("cml",),
            "the other engines start a runner for each job, which ends with it (a GitLab runner "
            "keeps it with engine: cml)",
        ),
    ] = None

    @property
    def runner_engine(self) -> str:
        """The configured engine, or the default for the runner's platform."""
        return self.engine or default_engine(self.platform)

    @property
    def scaling_mode(self) -> str:
        """The configured mode, or the default for the runner's engine, platform and GPUs."""
        return self.mode or _default_mode(self.platform, self.runner_engine)

    @property
    def replica_count(self) -> int:
        """Runner pods of an `always` runner."""
        return 1 if self.replicas is None else self.replicas

    @property
    def max_runner_count(self) -> int:
        """Most runners at once of an on-demand runner."""
        return 1 if self.max_runners is None else self.max_runners

    @property
    def runner_range(self) -> tuple[int, int]:
        """Fewest and most runners at once: 0 to maxRunners on demand, `replicas` always."""
        if self.scaling_mode == "on-demand":
            return 0, self.max_runner_count
        return self.replica_count, self.replica_count
