"""Stack settings: read from Pulumi config, validated in one pass, returned frozen.

Every invalid value is collected and reported in one SettingsError, raised before any
resource is registered, so a bad config never leaves a half-created stack.
"""

import ipaddress
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import pulumi
import yaml
from pulumi.config import ConfigTypeError
from pulumi.runtime.config import CONFIG, get_config_env, is_config_secret
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from infra import arc, cml_runner, gpu, keda, machines, messages, names, registry, runner_base
from infra import stack_file as stack_files
from infra.arc_runner import GithubApp
from infra.gitlab_runner import CreateRunner

_CLUSTER_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_ZONE = re.compile(r"^([a-z]+-[a-z]+[0-9]+)-[a-z]$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(
    r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$"
)

_RUNNER_NAME = _CLUSTER_NAME
_GITHUB_REPO = re.compile(r"^https://github\.com/[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+$")
_GITLAB_REPO = re.compile(
    r"^https://[a-z0-9.-]+\.[a-z]{2,}(?::\d+)?/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+$"
)
_QUANTITY = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
_QUANTITY_FACTORS = {
    **{"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12},
    **{"P": 1e15, "E": 1e18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40},
    **{"Pi": 2**50, "Ei": 2**60},
}
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# registry/path:tag, registry/path@sha256:digest, or both (registry/path:tag@sha256:digest,
# as dependency bots pin): the reference grammar of the distribution spec, less the rarely
# used forms.
_IMAGE = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::\d+)?(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)+"
    r"(?=[:@])(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
# The providers refuse a name ending in .git (it is no repository's name on either forge).
_GITHUB_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+(?<!\.git)$")
_GITLAB_PATH = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+(?<!\.git)$")
_HTTPS_ORIGIN = re.compile(r"^https://[a-z0-9.-]+\.[a-z]{2,}(?::\d+)?$")
# A GitLab instance, at a host's root or under a relative URL root (https://host/gitlab).
_GITLAB_INSTANCE = re.compile(r"^https://[a-z0-9.-]+\.[a-z]{2,}(?::\d+)?(?:/[A-Za-z0-9_.-]+)*$")
# Google: 4 to 32 characters, lowercase letters, digits and hyphens, starting with a letter;
# the gcp- prefix is reserved.
_POOL_ID = re.compile(r"^(?!gcp-)[a-z][a-z0-9-]{3,31}$")
_NUMERIC_ID = re.compile(r"^[1-9][0-9]{0,19}$")
_KMS_KEY = re.compile(
    r"^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/locations/[a-z0-9-]+"
    r"/keyRings/[A-Za-z0-9_-]{1,63}/cryptoKeys/[A-Za-z0-9_-]{1,63}$"
)
# A branch name that can stand inside a quoted CEL string and a principal: no quotes, spaces
# or backslashes, no `..`, no leading or trailing `/` or `.`.
_BRANCH = re.compile(r"^(?!refs/)(?!.*\.\.)(?!.*//)[A-Za-z0-9_-][A-Za-z0-9._/-]*(?<![/.])$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_DIGITS = re.compile(r"^[0-9]+$")
_APP_ID = re.compile(r"^(?:[0-9]+|Iv[0-9A-Za-z.]+)$")
# A whole PEM key: the BEGIN line, lines of key, the matching END line. A key pasted as one
# line with literal \n, or cut after its first line, is no key ARC can sign with.
_PRIVATE_KEY = re.compile(
    r"^-----BEGIN (RSA |)PRIVATE KEY-----\r?\n(?:[^\r\n]+\r?\n)+-----END \1PRIVATE KEY-----\s*$"
)
GITHUB_APP_KEYS = ("appId", "installationId", "privateKey")
GITLAB_RUNNER_TOKEN_PREFIX = "glrt-"
GITLAB_REGISTRATION_PREFIX = "GR1348941"

GPU_LABEL = "gpu"
# Where the project's stack files are: beside Pulumi.yaml.
STACK_FILE_DIR = stack_files.REPO
_REGION_CATALOG = Path(__file__).parent / "data" / "regions.yaml"


class SettingsError(pulumi.RunError):
    """Invalid stack configuration; Pulumi prints the message without a stack trace."""


def _invalid(reason: str) -> PydanticCustomError:
    return PydanticCustomError("invalid", "{reason}", {"reason": reason})


def region_of(location: str) -> str:
    """The region of a zone or region name."""
    zone = _ZONE.match(location)
    return zone.group(1) if zone else location


def _matching(pattern: re.Pattern, allowed: str):
    """A validator that accepts None or a value matching pattern."""

    def check(value: str | None) -> str | None:
        if value is not None and not pattern.match(value):
            raise _invalid(f"allowed: {allowed}")
        return value

    return AfterValidator(check)


@cache
def _regions() -> dict:
    return yaml.safe_load(_REGION_CATALOG.read_text())


def _check_location(location: str, info: ValidationInfo) -> str:
    if not (_REGION.match(location) or _ZONE.match(location)):
        raise _invalid("allowed: a region (like europe-west6) or a zone (like europe-west6-b)")
    region = region_of(location)
    known = _regions()["regions"]
    if region not in known and region not in info.data.get("regions_outside_catalog", ()):
        raise _invalid(
            f"{region!r} is not a Google Cloud region according to the region catalog "
            f"(infra/data/regions.yaml, {_regions()['as_of']}){messages.closest(region, known)}. "
            "If the region is newer than the catalog, list it in cluster.regionsOutsideCatalog"
        )
    return location


def _check_zones(zones: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
    """Zones must be zone names, distinct, and in the cluster's region."""
    region = (info.context or {}).get("region")
    for zone in zones:
        if not _ZONE.match(zone):
            raise _invalid(f"{zone!r} is not a zone; allowed: zone names like europe-west6-b")
        if region and region_of(zone) != region:
            raise _invalid(f"{zone!r} is not in the cluster's region {region} (cluster.location)")
    if len(set(zones)) != len(zones):
        raise _invalid("lists a zone twice")
    return zones


def _label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"label key {key!r} has an invalid prefix; allowed: a DNS subdomain like example.com"
    if not _LABEL_NAME.match(name):
        return (
            f"label key {key!r} is invalid; allowed: at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit, optionally behind a 'prefix/'"
        )
    return None


def _label_problem(key: str, value: str) -> str | None:
    """Why key: value is not a valid Kubernetes label, or None."""
    key_problem = _label_key_problem(key)
    if key_problem:
        return key_problem
    if value and not _LABEL_NAME.match(value):
        return (
            f"label value {value!r} (key {key!r}) is invalid; allowed: empty, or at most 63 "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    return None


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if key in (GPU_LABEL, runner_base.CPU_JOBS_LABEL):
            raise _invalid(f"the {key!r} label is set by the pool itself; remove it here")
        problem = _label_problem(key, value)
        if problem:
            raise _invalid(problem)
    return labels


def _check_min_nodes(min_nodes: int, info: ValidationInfo) -> int:
    max_nodes = info.data.get("max_nodes")
    if max_nodes is not None and min_nodes > max_nodes:
        raise _invalid(f"allowed: 0 to maxNodes ({max_nodes})")
    return min_nodes


ClusterName = Annotated[
    str,
    _matching(
        _CLUSTER_NAME,
        "lowercase letters, digits and hyphens, starting with a letter, ending with a letter "
        "or digit, at most 40 characters",
    ),
]
Location = Annotated[str, AfterValidator(_check_location)]
ZoneList = Annotated[tuple[str, ...], AfterValidator(_check_zones)]
Zones = Annotated[ZoneList, Field(min_length=1)]
MaxNodes = Annotated[int, Field(ge=1)]
MinNodes = Annotated[int, Field(ge=0), AfterValidator(_check_min_nodes)]
DiskSizeGb = Annotated[int, Field(ge=10, le=65536)]
ExtraLabels = Annotated[dict[str, str], AfterValidator(_check_labels)]


class _Section(BaseModel):
    """A config object: camelCase keys, unknown keys rejected, defaults validated too."""

    model_config = ConfigDict(
        alias_generator=to_camel, extra="forbid", frozen=True, validate_default=True
    )


def _check_cidr(cidr: str) -> str:
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        network = None
    if network is None or network.version != 4 or network.prefixlen == 0:
        raise _invalid(
            "not an IPv4 network in CIDR notation; allowed: the addresses that may reach the "
            "control plane, like 203.0.113.7/32 or 198.51.100.0/24 (host bits zero, not 0.0.0.0/0)"
        )
    return cidr


Cidr = Annotated[str, AfterValidator(_check_cidr)]


class ClusterSettings(_Section):
    """The GKE cluster (`cluster`)."""

    name: ClusterName = "mlops-kubernetes"
    regions_outside_catalog: tuple[str, ...] = ()
    location: Location = "europe-west6"
    release_channel: Literal["RAPID", "REGULAR", "STABLE", "EXTENDED"] = "REGULAR"
    deletion_protection: bool = True
    single_dns_replica: bool = False
    dataplane_v2: bool = True
    authorized_networks: Annotated[tuple[Cidr, ...] | None, Field(min_length=1)] = None

    @property
    def region(self) -> str:
        return region_of(self.location)


def _check_system_machine_type(machine_type: str) -> str:
    node = machines.machine(machine_type)
    if node is None:
        raise _invalid(
            f"unknown machine type; allowed: a Compute Engine type, like {machines.EXAMPLES}"
        )
    if node.accelerator_optimized:
        raise _invalid(
            "is a GPU machine type, billed for its GPUs; the system pool takes a general-purpose "
            "type, like e2-standard-2 (GPUs belong in gpuPool)"
        )
    return machine_type


class _CpuNodes(_Section):
    """What the system pool and the CPU runner pool both set."""

    machine_type: Annotated[str, AfterValidator(_check_system_machine_type)] = "e2-standard-2"
    disk_size_gb: DiskSizeGb = 50
    spot: bool = False
    labels: ExtraLabels = {}


class SystemPoolSettings(_CpuNodes):
    """The CPU node pool for system pods (`systemPool`), labelled gpu=false."""

    zones: Zones = ("europe-west6-b",)
    max_nodes: MaxNodes = 2
    min_nodes: MinNodes = 1

    @property
    def node_labels(self) -> dict[str, str]:
        return {**self.labels, GPU_LABEL: "false"}


def _check_accelerator(accelerator: str) -> str:
    if accelerator not in gpu.KNOWN_ACCELERATORS:
        raise _invalid(f"unknown accelerator; allowed: {', '.join(gpu.KNOWN_ACCELERATORS)}")
    return accelerator


def _check_gpu_machine_type(machine_type: str, info: ValidationInfo) -> str:
    accelerator = info.data.get("accelerator_type")
    problem = accelerator and gpu.machine_type_problem(accelerator, machine_type)
    if problem:
        raise _invalid(problem)
    if machines.machine(machine_type) is None:
        raise _invalid(
            f"unknown machine type; allowed: a Compute Engine type that carries {accelerator}"
        )
    return machine_type


def _check_accelerator_count(count: int | None, info: ValidationInfo) -> int | None:
    """Check the configured count, or the default one when none is set."""
    accelerator, machine_type = info.data.get("accelerator_type"), info.data.get("machine_type")
    if accelerator is None or machine_type is None:
        return count
    effective = count if count is not None else gpu.default_count(accelerator, machine_type)
    problem = gpu.count_problem(accelerator, machine_type, effective)
    if problem:
        raise _invalid(problem)
    return count


def _check_gpu_zones(zones: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
    """Every zone must offer the accelerator, per the catalog or the user's explicit override."""
    accelerator = info.data.get("accelerator_type")
    vouched = info.data.get("zones_outside_catalog")
    if accelerator is None or vouched is None:
        return zones
    offering = gpu.zones_offering(accelerator)
    for zone in zones:
        if zone not in offering and zone not in vouched:
            nearby = sorted(z for z in offering if region_of(z) == region_of(zone))
            raise _invalid(
                f"{zone!r} does not offer {accelerator} according to the zone catalog "
                f"(infra/data/gpu_zones.yaml, {gpu.catalog_date()}); "
                f"allowed in {region_of(zone)}: {', '.join(nearby) or 'none'}. "
                "If the zone is newer than the catalog, list it in gpuPool.zonesOutsideCatalog"
            )
    return zones


class GpuPoolSettings(_Section):
    """The GPU node pool (`gpuPool`), labelled gpu=true and tainted nvidia.com/gpu."""

    accelerator_type: Annotated[str, AfterValidator(_check_accelerator)] = "nvidia-l4"
    machine_type: Annotated[str, AfterValidator(_check_gpu_machine_type)] = "g2-standard-4"
    accelerator_count: Annotated[
        int | None, Field(ge=1), AfterValidator(_check_accelerator_count)
    ] = None
    zones_outside_catalog: ZoneList = ()
    zones: Annotated[Zones, AfterValidator(_check_gpu_zones)] = ("europe-west6-b",)
    max_nodes: MaxNodes = 1
    min_nodes: MinNodes = 0
    spot: bool = False
    driver_version: Literal["DEFAULT", "LATEST"] = "LATEST"
    disk_size_gb: DiskSizeGb = 100
    labels: ExtraLabels = {}

    @property
    def gpus_per_node(self) -> int:
        """The configured GPU count, or the one the machine type fixes."""
        return self.accelerator_count or gpu.default_count(self.accelerator_type, self.machine_type)

    @property
    def node_labels(self) -> dict[str, str]:
        return {**self.labels, GPU_LABEL: "true"}


class CpuPoolSettings(_CpuNodes):
    """The CPU node pool for CPU runners (`cpuPool`), created when a runner has `gpus: 0`:
    labelled gpu=false and gpu-runners/cpu-jobs=true, tainted so nothing else lands there."""

    zones: ZoneList = ()
    """Empty: the system pool's zones."""
    max_nodes: MaxNodes = 2
    min_nodes: MinNodes = 0
    sandbox: bool = False
    """Run CPU runner pods in GKE Sandbox (gVisor)."""

    @property
    def node_labels(self) -> dict[str, str]:
        return {**self.labels, **runner_base.CPU_JOBS_NODE_LABELS}


class DvcRemoteSettings(_Section):
    """The bucket that runner pods use as DVC remote (`dvcRemote`)."""

    bucket: Annotated[
        str | None,
        _matching(
            _BUCKET,
            "an existing bucket's name, 3 to 63 lowercase letters, digits, '-', '_' or '.', "
            "without gs://",
        ),
    ] = None
    force_destroy: bool = False


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


def _runner_node(info: ValidationInfo) -> tuple[str, machines.Machine | None]:
    """The pool a runner's pods land on (gpuPool or cpuPool), and its machine if known."""
    pool = _runner_pool(info.data.get("gpus"))
    return pool, (info.context or {}).get("machines", {}).get(pool)


def _runner_pool(gpus: int | None) -> str:
    """The config section of the pool a runner's pods land on: never the system pool."""
    return "gpuPool" if gpus else "cpuPool"


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


def _check_runner_gpus(gpus: int, info: ValidationInfo) -> int:
    per_node = (info.context or {}).get("gpus_per_node")
    if per_node is not None and gpus > per_node:
        raise _invalid(
            f"a GPU node carries {per_node} (gpuPool); allowed: 0 to {per_node}, "
            "or a larger gpuPool.machineType"
        )
    return gpus


def _check_node_selector(
    selector: dict[str, str] | None, info: ValidationInfo
) -> dict[str, str] | None:
    if selector is None:
        return selector
    for key, value in selector.items():
        problem = _label_problem(key, value)
        if problem:
            raise _invalid(problem)
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


def _together_with(other: str, key: str, what: str):
    """A validator for an ID that the field `other` (config key `key`) needs, and only it."""

    def check(value: str | None, info: ValidationInfo) -> str | None:
        given = info.data.get(other)
        if given and value is None:
            raise _invalid(f"required with {key}: {what.format(given=given)}")
        if value is not None and not given and other in info.data:
            raise _invalid(f"only read with {key}, which is not set")
        return value

    return AfterValidator(check)


def _required_with_ci(what: str):
    """A validator for a key that CI access needs (declared after the forges' keys)."""

    def check(value: str | None, info: ValidationInfo) -> str | None:
        forges = {"github_repository", "gitlab_project"}
        with_ci = any(info.data.get(forge) for forge in forges)
        if value is None and with_ci:
            raise _invalid(f"required with CI access: {what}")
        if value is not None and not with_ci and forges <= set(info.data):
            raise _invalid(
                "only read with CI access (ci.githubRepository or ci.gitlabProject), which is "
                "not set"
            )
        return value

    return AfterValidator(check)


class CiSettings(_Section):
    """Which CI may preview and deploy the stack through Workload Identity Federation (`ci`)."""

    github_repository: Annotated[
        str | None, _matching(_GITHUB_PATH, "owner/repo of the infrastructure repository")
    ] = None
    # Numeric IDs, which a renamed or re-created repository of the same name does not take
    # over (GitHub's OIDC token carries them: repository_id, repository_owner_id).
    github_repository_id: Annotated[
        str | None,
        _matching(_NUMERIC_ID, "the repository's numeric ID, not its name"),
        _together_with(
            "github_repository",
            "ci.githubRepository",
            "the repository's numeric ID, `gh api repos/{given} --jq .id`",
        ),
    ] = None
    github_owner_id: Annotated[
        str | None,
        _matching(_NUMERIC_ID, "the owner's numeric ID, not its name"),
        _together_with(
            "github_repository",
            "ci.githubRepository",
            "the owner's numeric ID, `gh api repos/{given} --jq .owner.id`",
        ),
    ] = None
    gitlab_project: Annotated[
        str | None, _matching(_GITLAB_PATH, "group/project of the infrastructure project")
    ] = None
    # GitLab's docs recommend the ID over the path, which a renamed or moved project frees.
    gitlab_project_id: Annotated[
        str | None,
        _matching(_NUMERIC_ID, "the project's numeric ID (Settings > General), not its path"),
        _together_with(
            "gitlab_project",
            "ci.gitlabProject",
            "the project's numeric ID, under Settings > General of {given}",
        ),
    ] = None
    gitlab_url: Annotated[str, _matching(_HTTPS_ORIGIN, "https://<host>, no path")] = (
        "https://gitlab.com"
    )
    default_branch: Annotated[
        str,
        _matching(
            _BRANCH,
            "a branch name of letters, digits, '.', '_', '-' and '/', without quotes, spaces "
            "or refs/heads/",
        ),
    ] = "main"
    state_bucket: Annotated[
        str | None,
        _matching(_BUCKET, "the name of the bucket holding the Pulumi state, without gs://"),
        _required_with_ci("the bucket of `pulumi login gs://<bucket>`, which the previewer reads"),
    ] = None
    secrets_key: Annotated[
        str | None,
        _matching(
            _KMS_KEY,
            "a Cloud KMS key, projects/<project>/locations/<location>/keyRings/<ring>/"
            "cryptoKeys/<key>",
        ),
        _required_with_ci(
            "the Cloud KMS key of the stack's secrets provider (`gcpkms://<key>`), which the "
            "previewer and the deployer decrypt with, so no passphrase reaches CI"
        ),
    ] = None
    pool_id: Annotated[
        str,
        _matching(
            _POOL_ID,
            "4 to 32 lowercase letters, digits and hyphens, starting with a letter, not gcp-*",
        ),
    ] = "gpu-runners-ci"

    @property
    def enabled(self) -> bool:
        return bool(self.github_repository or self.gitlab_project)


@dataclass(frozen=True)
class StackSettings:
    """Everything the program needs from the stack's config."""

    project: str
    cluster: ClusterSettings
    system_pool: SystemPoolSettings
    gpu_pool: GpuPoolSettings
    cpu_pool: CpuPoolSettings
    dvc_remote: DvcRemoteSettings
    ci: CiSettings
    runners: tuple[RunnerSettings, ...]
    runner_credentials: dict[str, pulumi.Output[str] | GithubApp | CreateRunner]
    """Each runner's token (or GitHub App, or token to create the runner), as secrets."""


# Config key (in the project namespace) -> the model that validates it.
SECTIONS: dict[str, type[_Section]] = {
    "cluster": ClusterSettings,
    "systemPool": SystemPoolSettings,
    "gpuPool": GpuPoolSettings,
    "cpuPool": CpuPoolSettings,
    "dvcRemote": DvcRemoteSettings,
    "ci": CiSettings,
}
RUNNERS_KEY = "runners"
TOKENS_KEY = "runnerTokens"
_RUNNERS = TypeAdapter(Annotated[list[RunnerSettings], Field(min_length=1)])


_KNOWN_KEYS = (*SECTIONS, RUNNERS_KEY, TOKENS_KEY)
_EXAMPLES = {
    "repository": "https://github.com/<owner>/<repo>",
    "name": "cml-runner",
}


def _path(namespace: str, key: str, model: type[_Section], loc: tuple) -> tuple[str, str]:
    """The config path of an error, with and without the namespace: runners[0].memory."""
    fields = model.model_fields
    path = key
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            # A default that fails validation is reported under its Python name.
            path += "." + (fields[part].alias if part in fields else part)
    return f"{namespace}:{path}", path


def _describe(namespace: str, key: str, model: type[_Section], error: dict) -> str:
    """One line naming the config key, the value given and what is allowed."""
    full, path = _path(namespace, key, model, error["loc"])
    if error["type"] == "missing":
        example = _EXAMPLES.get(str(error["loc"][-1]), "<value>")
        return f"{full} is not set; run `pulumi config set --path '{path}' {example}`"
    known = [f.alias for f in model.model_fields.values()]
    return f"{full} = {messages.show(error['input'])}: {messages.reason(error, known)}"


def _read(config: pulumi.Config, key: str) -> Any:
    """A config value as an object, or as the plain text it is when not JSON."""
    try:
        return config.get_object(key)
    except ConfigTypeError:
        return config.get(key)


def _project_problem(project: str | None) -> str | None:
    if not project:
        return "gcp:project is not set; run `pulumi config set gcp:project <your-project-id>`"
    if not _PROJECT_ID.match(project):
        return (
            f"gcp:project = {project!r}: allowed: a project ID of 6 to 30 lowercase letters, "
            "digits and hyphens, starting with a letter"
        )
    return None


def _parse(
    model: Any, namespace: str, key: str, raw: Any, context: dict, problems: list[str]
) -> Any:
    """Validate one config key; on failure add its problems and return None."""
    try:
        return model.validate_python(raw, context=context)
    except ValidationError as error:
        item = RunnerSettings if key == RUNNERS_KEY else SECTIONS[key]
        problems += [
            _describe(namespace, key, item, e)
            for e in messages.innermost(error.errors(include_url=False))
        ]
        return None


def _unknown_key_problems(namespace: str, keys: list[str]) -> list[str]:
    """Every key in the project's namespace must be one the program reads."""
    problems = []
    for full in keys:
        key = full.removeprefix(f"{namespace}:")
        if key in _KNOWN_KEYS:
            continue
        head = re.split(r"[.\[]", key, maxsplit=1)[0]
        if head in _KNOWN_KEYS:
            problems.append(
                f"{full}: a key with a path in its name, as `pulumi config set` without --path "
                f"writes it, so it is ignored; run `pulumi config rm '{key}'` and "
                f"`pulumi config set --path '{key}' <value>`"
            )
        else:
            problems.append(
                f"{full}: unknown key{messages.closest(key, _KNOWN_KEYS)}; allowed keys: "
                f"{', '.join(_KNOWN_KEYS)}"
            )
    return problems


def _runner_names(raw_runners: Any) -> list[str]:
    """The runner names the config gives, valid or not, so tokens are checked in any case."""
    if not isinstance(raw_runners, list):
        return []
    return [
        r["name"] for r in raw_runners if isinstance(r, dict) and isinstance(r.get("name"), str)
    ]


def _platform_problems(namespace: str, raw_runners: Any) -> list[str]:
    """A runner left on the default platform (github) whose repository or engine is GitLab's:
    name the key to set, not only what then fails to fit."""
    problems = []
    for index, raw in enumerate(raw_runners if isinstance(raw_runners, list) else []):
        if not isinstance(raw, dict) or "platform" in raw:
            continue
        repository = raw.get("repository")
        # The host alone: never the user-info, which may hold a token.
        try:
            host = (urlsplit(repository).hostname or "") if isinstance(repository, str) else ""
        except ValueError:  # not a URL at all: the repository's own check says so
            host = ""
        gitlab_repository = host not in ("", "github.com", "www.github.com")
        if gitlab_repository or raw.get("engine") == "gitlab-runner":
            why = f"a repository on {host}" if gitlab_repository else "the engine gitlab-runner"
            problems.append(
                f"{namespace}:{RUNNERS_KEY}[{index}].platform is not set, so github, but the "
                f"runner names {why}; run `pulumi config set --path "
                f"'{RUNNERS_KEY}[{index}].platform' gitlab`"
            )
    return problems


def _raw_runners_by_name(raw_runners: Any) -> dict[str, dict[str, Any]]:
    """The config's runner entries by name, valid or not, so tokens are checked in any case."""
    if not isinstance(raw_runners, list):
        return {}
    return {
        r["name"]: r for r in raw_runners if isinstance(r, dict) and isinstance(r.get("name"), str)
    }


# Token prefixes by forge (GitHub: "About authentication to GitHub", token formats; GitLab:
# "Token prefixes"). A GitLab deploy token (gldt-) reads a repository or registry; it can
# neither register a runner nor call the API.
_GITHUB_TOKEN_PREFIXES = ("ghp_", "github_pat_", "gho_", "ghu_", "ghs_", "ghr_")
_GITLAB_TOKEN_PREFIXES = (
    "glpat-",
    "glrt-",
    "glrtr-",
    "gldt-",
    "glptt-",
    "glcbt-",
    "gloas-",
    GITLAB_REGISTRATION_PREFIX,
)
_GITLAB_DEPLOY_TOKEN_PREFIX = "gldt-"


def _credential_problem(key: str, token: str, platform: str, engine: str) -> str | None:
    """What makes a token one that this runner's forge and engine cannot use; never shows it.
    The one place that knows which credential each forge and engine takes."""
    shown = f"{key} = {messages.SECRET_SHOWN_AS}"
    if token != token.strip():
        return (
            f"{shown}: has spaces or a line break around it (copied from a terminal?), which "
            "the forge refuses in an Authorization header; allowed: the token alone"
        )
    if token.startswith("{"):
        return (
            f"{shown}: looks like JSON, a GitHub App pasted as one value; allowed: a token, or, "
            f"on engine arc, the App's three values set one by one: `pulumi config set --secret "
            f"--path '{key.split(':', 1)[1]}.appId' <id>`, and likewise `.installationId` and "
            "`.privateKey`"
        )
    if platform == "github" and token.startswith(_GITLAB_TOKEN_PREFIXES):
        return f"{shown}: a GitLab token on a GitHub runner; allowed: a GitHub token"
    if platform == "gitlab" and token.startswith(_GITHUB_TOKEN_PREFIXES):
        return f"{shown}: a GitHub token on a GitLab runner; allowed: a GitLab token"
    if platform == "gitlab" and token.startswith(_GITLAB_DEPLOY_TOKEN_PREFIX):
        return (
            f"{shown}: a GitLab deploy token, which can neither register a runner nor use the "
            "API; allowed: a runner authentication token (glrt-…), or an access token with "
            "the api scope"
        )
    if engine == "cml" and platform == "gitlab" and token.startswith(GITLAB_RUNNER_TOKEN_PREFIX):
        # CML registers its runner through GitLab's API with this token (iterative/cml,
        # src/drivers/gitlab.js: runnerToken reads the project's runners_token, else it creates
        # the runner with POST /user/runners), which a runner's own token cannot call.
        return (
            f"{shown}: a runner authentication token, which CML cannot use: it registers its "
            "runner through GitLab's API; allowed: an access token with the api scope, or "
            "engine: gitlab-runner, which takes this token"
        )
    if engine == "gitlab-runner" and token.startswith(GITLAB_REGISTRATION_PREFIX):
        # Deprecated, and off by default since GitLab 17.0.
        return (
            f"{shown}: a runner registration token, which GitLab has "
            "deprecated and turns off by default since 17.0; allowed: a runner authentication "
            "token (glrt-…) from the project's Settings > CI/CD > Runners > New project runner, "
            "or an access token with the api scope of a Maintainer, for the stack to create it"
        )
    return None


def _github_app_problems(key: str, app: dict[str, Any]) -> list[str]:
    """What is wrong with a GitHub App's three values; names keys, never shows a value."""
    problems = [
        f"{key}.{name}: not a GitHub App key; allowed: {', '.join(GITHUB_APP_KEYS)}"
        for name in app
        if name not in GITHUB_APP_KEYS
    ]
    for name, pattern, allowed in (
        ("appId", _APP_ID, "the App's numeric ID, or its client ID (Iv…)"),
        ("installationId", _DIGITS, "the installation's numeric ID"),
        (
            "privateKey",
            _PRIVATE_KEY,
            "the App's private key, PEM, as GitHub gave it: BEGIN line, key lines, END line, "
            "with real line breaks",
        ),
    ):
        value = app.get(name)
        if value is None:
            problems.append(
                f"{key}.{name} is not set: {allowed}; run `pulumi config set --secret --path "
                f"'{key.split(':', 1)[1]}.{name}' <value>`"
            )
        elif not pattern.search(str(value)):
            problems.append(f"{key}.{name} = {messages.SECRET_SHOWN_AS}: allowed: {allowed}")
    return problems


def _credential(
    value: str | dict[str, Any], engine: str
) -> pulumi.Output[str] | GithubApp | CreateRunner:
    """A runner's credential as Pulumi secrets: its token, its GitHub App (arc), or, on
    gitlab-runner, a token that is not a runner's own and so lets the stack create one."""
    if isinstance(value, dict):
        return GithubApp(
            app_id=pulumi.Output.secret(str(value["appId"])),
            installation_id=pulumi.Output.secret(str(value["installationId"])),
            private_key=pulumi.Output.secret(value["privateKey"]),
        )
    if engine == "gitlab-runner" and not value.startswith(GITLAB_RUNNER_TOKEN_PREFIX):
        return CreateRunner(api_token=pulumi.Output.secret(value))
    return pulumi.Output.secret(value)


def _runner_problems(
    namespace: str,
    names: list[str],
    engines: dict[str, str],
    platforms: dict[str, str],
    tokens: Any,
) -> list[str]:
    """Names must be unique and each runner needs a token (or, on engine arc, a GitHub App),
    set as a secret. Never shows a token."""
    problems = []
    for index, name in enumerate(names):
        if name in names[:index]:
            problems.append(
                f"{namespace}:{RUNNERS_KEY}[{index}].name = {name!r}: duplicate runner name; "
                "each runner needs its own"
            )
    tokens_key = f"{namespace}:{TOKENS_KEY}"
    set_one = f"`pulumi config set --secret --path '{TOKENS_KEY}.<runner>' <token>`"
    if tokens and not is_config_secret(tokens_key):
        problems.append(
            f"{tokens_key} is stored in plain text in the stack file; remove it and set each "
            f"token with {set_one}"
        )
    if tokens is not None and not isinstance(tokens, dict):
        problems.append(
            f"{tokens_key} = {messages.SECRET_SHOWN_AS}: one value, but it holds one token per "
            f"runner name (was --path left out?); run `pulumi config rm {TOKENS_KEY}`, then "
            f"{set_one}"
        )
    if not isinstance(tokens, dict):
        tokens = {}
    for name in dict.fromkeys(names):
        value = tokens.get(name)
        engine = engines.get(name)
        if isinstance(value, dict) and engine == "arc":
            problems += _github_app_problems(f"{tokens_key}.{name}", value)
        elif isinstance(value, dict):
            problems.append(
                f"{tokens_key}.{name} holds a GitHub App, which only engine arc uses; set the "
                f"runner's token instead: `pulumi config rm --path '{TOKENS_KEY}.{name}'`, then "
                f"`pulumi config set --secret --path '{TOKENS_KEY}.{name}' <token>`"
            )
        elif not isinstance(value, str) or not value:
            app = (
                f", or a GitHub App: `{TOKENS_KEY}.{name}.appId`, `.installationId` and "
                "`.privateKey`"
                if engine == "arc"
                else ""
            )
            problems.append(
                f"{tokens_key}.{name} is not set: the runner's GitHub or GitLab token; run "
                f"`pulumi config set --secret --path '{TOKENS_KEY}.{name}' <token>`{app}"
            )
        else:
            key = f"{tokens_key}.{name}"
            problems += filter(
                None, [_credential_problem(key, value, platforms.get(name, "github"), engine)]
            )
    for name in tokens:
        if name not in names:
            problems.append(f"{tokens_key}.{name}: no runner is named {name!r}; runners: {names}")
    return problems


def _trust_problems(namespace: str, runners: list[RunnerSettings], tokens: Any) -> list[str]:
    """A trusted GitLab runner must be one the stack registers protected: the protected flag of
    a runner made in GitLab cannot travel with its authentication token (gitlab-runner,
    commands/register.go, ensureServerConfigArgsEmpty), and the stack cannot read it back, so
    merge request jobs could reach the DVC writer unseen."""
    given = tokens if isinstance(tokens, dict) else {}
    return [
        f"{namespace}:{RUNNERS_KEY}[{index}].trust = 'trusted': {TOKENS_KEY}.{runner.name} is a "
        f"runner authentication token ({GITLAB_RUNNER_TOKEN_PREFIX}…), whose runner the stack "
        "can neither make nor check protected in GitLab; allowed: a token that lets the stack "
        "create the runner (a project or personal access token with the api scope, of a "
        "Maintainer), which it registers protected, or trust: untrusted"
        for index, runner in enumerate(runners)
        if runner.trust == "trusted"
        and runner.runner_engine == "gitlab-runner"
        and isinstance(given.get(runner.name), str)
        and given[runner.name].startswith(GITLAB_RUNNER_TOKEN_PREFIX)
    ]


def _misplaced_token_problems(namespace: str, values: dict[str, Any]) -> list[str]:
    """A token anywhere but in runnerTokens would end up in clear in a Kubernetes object."""
    return [
        f"{path} holds what looks like a GitHub or GitLab token ({text}); a token belongs only "
        f"in {TOKENS_KEY}: `pulumi config set --secret --path '{TOKENS_KEY}.<runner>' <token>`"
        for key, value in values.items()
        if key != f"{namespace}:{TOKENS_KEY}"
        for path, text in messages.strings_in(value, key)
        if messages.TOKEN_LIKE.search(text)
    ]


def _config_keys() -> list[str]:
    """Every config key the stack has, from the engine's config."""
    return sorted({*CONFIG.get(), *get_config_env()})


def parse_sections(
    namespace: str, given: dict[str, Any], problems: list[str]
) -> tuple[dict[str, Any], list[RunnerSettings]]:
    """The validated sections and runners of a stack's config (keys without the namespace),
    with what is wrong appended to `problems`. Tokens and the project are not its business."""
    context: dict[str, Any] = {"machines": {}}
    parsed: dict[str, Any] = {}
    for key, model in SECTIONS.items():
        raw = given.get(key) or {}
        parsed[key] = _parse(TypeAdapter(model), namespace, key, raw, context, problems)
        if key == "cluster" and parsed[key]:
            context["region"] = parsed[key].region
        if key == "gpuPool" and parsed[key]:
            context["gpus_per_node"] = parsed[key].gpus_per_node
        if key in ("cpuPool", "gpuPool") and parsed[key]:
            context["machines"][key] = machines.machine(parsed[key].machine_type)
    raw_runners = given.get(RUNNERS_KEY) or []
    runners = _parse(_RUNNERS, namespace, RUNNERS_KEY, raw_runners, context, problems)
    return parsed, runners or []


# Where GKE and Kubernetes keep their own node labels. A key under these that _pool_labels does
# not know is not refused: GKE sets more than these, and may add some.
_PLATFORM_LABEL_PREFIXES = (
    "cloud.google.com/",
    "kubernetes.io/",
    "node.kubernetes.io/",
    "topology.kubernetes.io/",
    "beta.kubernetes.io/",
)


_NODE_POOL_NAMES = {"gpuPool": "gpu", "cpuPool": "cpu", "systemPool": "system"}


def _pool_labels(
    name: str, pool: GpuPoolSettings | CpuPoolSettings, zones: tuple[str, ...]
) -> dict[str, set[str]]:
    """The labels a pool's nodes carry, key -> values: the stack's (infra/cluster.py), and
    those GKE sets (GKE docs: "Spot VMs", cloud.google.com/gke-spot; "Run GPUs",
    cloud.google.com/gke-accelerator; gke-nodepool, instance-type and zone on every node)."""
    labels = {key: {value} for key, value in pool.node_labels.items()}
    labels["cloud.google.com/gke-nodepool"] = {_NODE_POOL_NAMES[name]}
    labels["node.kubernetes.io/instance-type"] = {pool.machine_type}
    labels["topology.kubernetes.io/zone"] = set(zones)
    labels["cloud.google.com/gke-spot"] = {"true"} if pool.spot else set()
    labels["kubernetes.io/arch"] = {"amd64"}
    labels["kubernetes.io/os"] = {"linux"}
    if isinstance(pool, GpuPoolSettings):
        labels["cloud.google.com/gke-accelerator"] = {pool.accelerator_type}
    return labels


def _carries(labels: dict[str, set[str]], key: str, value: str) -> bool:
    if key in labels:
        return value in labels[key]
    return key.startswith(_PLATFORM_LABEL_PREFIXES)


def _fleet_problems(
    namespace: str, parsed: dict[str, Any], runners: list[RunnerSettings]
) -> list[str]:
    """What no single runner shows: GPU runners kept up for good that the GPU pool can never
    hold together, and two runners of one repository that a job's labels cannot tell apart."""
    problems = []
    pool = parsed.get("gpuPool")
    if pool:
        capacity = pool.max_nodes * pool.gpus_per_node
        always = [(i, r) for i, r in enumerate(runners) if r.gpus and r.scaling_mode == "always"]
        held = 0
        for index, runner in always:
            held += runner.replica_count * runner.gpus
            if held > capacity:
                problems.append(
                    f"{namespace}:{RUNNERS_KEY}[{index}].replicas = {runner.replica_count}: "
                    f"always-on GPU runners would hold {held} GPUs, and the GPU pool has at most "
                    f"{capacity} (gpuPool.maxNodes {pool.max_nodes} times {pool.gpus_per_node} per "
                    "node); the rest would wait for good. Allowed: fewer replicas, or a larger "
                    "gpuPool.maxNodes"
                )
                break
    system, cpu = parsed.get("systemPool"), parsed.get("cpuPool")
    pools = {}
    if cpu and system:
        pools["cpuPool"] = _pool_labels("cpuPool", cpu, cpu.zones or system.zones)
    if pool:
        pools["gpuPool"] = _pool_labels("gpuPool", pool, pool.zones)
    node = machines.machine(cpu.machine_type) if cpu else None
    if node is not None:
        # Always-on CPU runners wait on the CPU runner pool: its nodes must hold them all.
        room = cpu.max_nodes * machines.allocatable_cpu(node)
        held = 0.0
        for index, runner in enumerate(runners):
            if runner.gpus or runner.scaling_mode != "always":
                continue
            held += runner.replica_count * (quantity_value(runner.cpu) or 0)
            if held > room:
                problems.append(
                    f"{namespace}:{RUNNERS_KEY}[{index}].replicas = {runner.replica_count}: "
                    f"always-on CPU runners would ask for {held:g} CPUs, and the CPU runner pool "
                    f"leaves at most {room:g} to pods (cpuPool.maxNodes {cpu.max_nodes}); "
                    "the rest would wait for good. Allowed: fewer replicas, or a larger "
                    "cpuPool.maxNodes"
                )
                break
    for index, runner in enumerate(runners):
        selector = runner.node_selector or {}
        pool_name = _runner_pool(runner.gpus)
        missing = [
            f"{key}={value}"
            for key, value in selector.items()
            if pool_name in pools and not _carries(pools[pool_name], key, value)
        ]
        if missing:
            problems.append(
                f"{namespace}:{RUNNERS_KEY}[{index}].nodeSelector = {messages.show(selector)}: "
                f"the {pool_name} nodes it must land on carry no {', '.join(missing)}, so the "
                f"pod would never schedule; allowed: labels of {pool_name} ({pool_name}.labels, "
                "gpu, and GKE's own: cloud.google.com/gke-nodepool, "
                "cloud.google.com/gke-accelerator, cloud.google.com/gke-spot, "
                "node.kubernetes.io/instance-type, topology.kubernetes.io/zone)"
            )
    for later, runner in enumerate(runners):
        for earlier, other in enumerate(runners[:later]):
            mine, theirs = set(runner.labels), set(other.labels)
            same_repository = runner.repository.lower() == other.repository.lower()
            if same_repository and (mine <= theirs or theirs <= mine):
                # A job asks for labels, and a runner carrying all of them may take it
                # (GitHub and GitLab match labels, not names): when one runner's labels are all
                # the other's too, a job for it may run on the other.
                problems.append(
                    f"{namespace}:{RUNNERS_KEY}[{later}].labels = {messages.show(runner.labels)}: "
                    f"runners[{earlier}] ({other.name}) on the same repository carries "
                    f"{'all of these' if mine <= theirs else 'only labels among these'}, so a "
                    "job for one may run on the other; allowed: a label the other has not"
                )
    return problems


def _project_unique_ids(
    sections: dict[str, Any], runners: list[RunnerSettings]
) -> dict[str, names.ProjectId]:
    cluster, ci = sections["cluster"], sections["ci"]
    return names.project_unique_ids(
        cluster.name,
        cluster.location,
        cluster.region,
        registry.UPSTREAMS,
        ci.pool_id if ci.enabled else None,
        [runner.name for runner in runners],
        any(runner.trust == "trusted" for runner in runners),
    )


def _shared_project_problems(
    namespace: str,
    project: str | None,
    parsed: dict[str, Any],
    runners: list[RunnerSettings],
    stack_file_dir: Path,
) -> list[str]:
    """An ID this stack would take that another stack file of the same project takes too: one
    of the two stacks would fail half-way with "already exists", or manage, or act as, what
    belongs to the other."""
    if not (project and parsed["cluster"] and parsed["ci"]):
        return []
    ours = _project_unique_ids(parsed, runners)
    this_file = f"Pulumi.{pulumi.get_stack()}.yaml"
    problems = []
    for path in sorted(stack_file_dir.glob("Pulumi.*.yaml")):
        if path.name == this_file:
            continue
        try:
            other = stack_files.read_config(path).values
        except stack_files.StackFileError:
            continue  # that stack reports its own file when it runs
        if other.get("gcp:project") != project:
            continue
        given = {k.removeprefix(f"{namespace}:"): v for k, v in other.items()}
        theirs, their_runners = parse_sections(namespace, given, [])
        if not (theirs["cluster"] and theirs["ci"]):
            continue
        shared = ours.keys() & _project_unique_ids(theirs, their_runners).keys()
        for key, value in sorted({(ours[i].key, ours[i].value) for i in shared}):
            what = ", ".join(ours[i].what for i in sorted(shared) if ours[i].key == key)
            problems.append(
                f"{namespace}:{key} = {value!r}: {path.name} deploys to the same project "
                f"({project}) with the same value, so both stacks would take the {what}; "
                f"allowed: a value no other stack of this project uses. Change it in whichever "
                f"of {this_file} and {path.name} is not deployed yet: in a deployed stack a "
                "new value replaces what it names"
            )
    return problems


def load() -> StackSettings:
    """Read and validate the stack's config, or raise one SettingsError listing every problem.

    The project's other stack files (in STACK_FILE_DIR) are read too, for IDs two stacks of
    one project cannot share.

    No message shows a value read from a secret config key, nor anything that looks like a
    GitHub or GitLab token, wherever it was put.
    """
    config = pulumi.Config()
    namespace = config.name
    project = pulumi.Config("gcp").get("project")
    keys = [k for k in _config_keys() if k.startswith(f"{namespace}:")]
    problems = [p for p in [_project_problem(project)] if p]
    problems += _unknown_key_problems(namespace, keys)
    values = {k: _read(config, k.removeprefix(f"{namespace}:")) for k in keys}
    given = {k.removeprefix(f"{namespace}:"): value for k, value in values.items()}
    secrets = [
        text for k in keys if is_config_secret(k) for _, text in messages.strings_in(values[k], k)
    ]
    problems += _misplaced_token_problems(namespace, values)
    problems += _platform_problems(namespace, given.get(RUNNERS_KEY))
    parsed, runners = parse_sections(namespace, given, problems)
    problems += _fleet_problems(namespace, parsed, runners)
    raw_runners = given.get(RUNNERS_KEY) or []
    tokens = given.get(TOKENS_KEY)
    by_name = _raw_runners_by_name(raw_runners)
    problems += _runner_problems(
        namespace,
        _runner_names(raw_runners),
        # Each runner's engine and forge, as configured or by default, for its token's check.
        {name: _engine(r) for name, r in by_name.items()},
        {name: r.get("platform") or "github" for name, r in by_name.items()},
        tokens,
    )
    problems += _trust_problems(namespace, runners, tokens)
    problems += _shared_project_problems(namespace, project, parsed, runners, STACK_FILE_DIR)
    if problems:
        stack_file = f"Pulumi.{pulumi.get_stack()}.yaml"
        raise SettingsError(
            messages.shortened(
                messages.mask(
                    f"Invalid stack configuration ({stack_file}); nothing was created.\n"
                    + "\n".join(f"  - {problem}" for problem in problems),
                    secrets,
                )
            )
        )
    return StackSettings(
        project=project,
        cluster=parsed["cluster"],
        system_pool=parsed["systemPool"],
        gpu_pool=parsed["gpuPool"],
        cpu_pool=parsed["cpuPool"],
        dvc_remote=parsed["dvcRemote"],
        ci=parsed["ci"],
        runners=tuple(runners),
        runner_credentials={r.name: _credential(tokens[r.name], r.runner_engine) for r in runners},
    )
