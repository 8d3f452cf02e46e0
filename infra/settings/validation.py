"""What every settings section checks alike: names, regions and zones, labels, node counts,
and the error every check raises."""

import re
from functools import cache
from pathlib import Path
from typing import Annotated

import pulumi
import yaml
from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from infra import messages
from infra.engines import runner_base

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
_REGION_CATALOG = Path(__file__).parent.parent / "data" / "regions.yaml"


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


# Label keys the pools set themselves: the guide's gpu label, the stack's own prefix
# (gpu-runners/cpu-jobs, gpu-runners/on-demand-fallback), and the GPU class's.
_POOL_LABEL_PREFIX = "gpu-runners/"


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        taken = key in (GPU_LABEL, runner_base.COMPUTE_CLASS_LABEL)
        if taken or key.startswith(_POOL_LABEL_PREFIX):
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
