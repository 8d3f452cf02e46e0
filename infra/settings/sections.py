"""The settings of the stack's config sections: cluster, pools, DVC remote and CI access."""

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo
from pydantic.alias_generators import to_camel

from infra import machines
from infra.engines import runner_base
from infra.settings.validation import (
    _BRANCH,
    _BUCKET,
    _GITHUB_PATH,
    _GITLAB_PATH,
    _HTTPS_ORIGIN,
    _KMS_KEY,
    _NUMERIC_ID,
    _POOL_ID,
    GPU_LABEL,
    ClusterName,
    DiskSizeGb,
    ExtraLabels,
    Location,
    MaxNodes,
    MinNodes,
    ZoneList,
    Zones,
    _invalid,
    _matching,
    region_of,
)


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
