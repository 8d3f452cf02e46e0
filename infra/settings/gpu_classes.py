"""The GPU classes: `gpuPool` (one class, named gpu) or `gpuPools` (several, named), each a
GKE ComputeClass over node pools of its own, tried in order: Spot, then on demand."""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo

from infra import gpu, machines
from infra.settings.sections import _Section
from infra.settings.validation import (
    GPU_LABEL,
    DiskSizeGb,
    ExtraLabels,
    MaxNodes,
    MinNodes,
    ZoneList,
    Zones,
    _invalid,
    region_of,
)
from infra.settings.warm_hours import WarmHoursSettings

# The class `gpuPool` makes: its pool keeps the name it had before classes existed.
SINGLE_CLASS = "gpu"
ON_DEMAND_SUFFIX = "-on-demand"
# A class names its ComputeClass and its node pools (`<name>`, `<name>-on-demand`): a GKE
# pool name is at most 40 characters; "gke" and "autopilot" begin names GKE keeps for itself
# ("About custom ComputeClasses": "The name of your ComputeClass can't begin with gke or
# autopilot"); the system and CPU runner pools have theirs.
_CLASS_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,22}[a-z0-9])?$")
_TAKEN_POOL_NAMES = ("system", "cpu")
# GKE shares one GPU between 2 to 48 containers (GoogleCloudPlatform/cluster-autoscaler,
# machinetypes/gpu.go: "GPU max shared clients should be integer between 2 and 48").
MAX_SHARED_CLIENTS = 48


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
                "If the zone is newer than the catalog, list it in zonesOutsideCatalog"
            )
    return zones


def _check_on_demand_fallback(fallback: bool | None, info: ValidationInfo) -> bool | None:
    if fallback is not None and info.data.get("spot") is False:
        raise _invalid(
            "only read with spot: true; an on-demand class has no Spot capacity to fall back "
            "from. Allowed: unset, or spot: true"
        )
    return fallback


def _check_on_demand_max_nodes(max_nodes: int | None, info: ValidationInfo) -> int | None:
    fallback = info.data.get("spot") and info.data.get("on_demand_fallback") is not False
    if max_nodes is not None and not fallback:
        raise _invalid(
            "only read when a Spot class falls back to on demand (spot: true, onDemandFallback "
            "unset or true); allowed: unset"
        )
    return max_nodes


def _check_flex_start(flex_start: bool, info: ValidationInfo) -> bool:
    if not flex_start:
        return flex_start
    spot, fallback = info.data.get("spot"), info.data.get("on_demand_fallback")
    if spot and fallback is False:
        raise _invalid(
            "flex-start provisions the class's on-demand nodes, and onDemandFallback: false "
            "leaves it none; allowed: false, or onDemandFallback unset"
        )
    if not spot and info.data.get("min_nodes"):
        raise _invalid(
            f"a flex-start pool starts from zero nodes, but minNodes is {info.data['min_nodes']}; "
            "allowed: false, or minNodes: 0"
        )
    return flex_start


def _check_warm_nodes(
    warm_hours: WarmHoursSettings | None, info: ValidationInfo
) -> WarmHoursSettings | None:
    max_nodes = info.data.get("max_nodes")
    if warm_hours is not None and max_nodes is not None and warm_hours.nodes > max_nodes:
        raise _invalid(
            f"nodes = {warm_hours.nodes}: more warm nodes than the class's maxNodes "
            f"({max_nodes}); allowed: 1 to {max_nodes}, or a larger maxNodes"
        )
    return warm_hours


@dataclass(frozen=True)
class GpuNodePool:
    """One node pool of a GPU class, in the order its ComputeClass tries them."""

    name: str
    spot: bool
    flex_start: bool
    min_nodes: int
    max_nodes: int


class GpuPoolSettings(_Section):
    """What a GPU class sets (`gpuPool`, or an entry of `gpuPools`): nodes labelled gpu=true,
    tainted nvidia.com/gpu, Spot first where it falls back to on demand."""

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
    on_demand_fallback: Annotated[bool | None, AfterValidator(_check_on_demand_fallback)] = None
    """With spot: when Spot is out, on-demand nodes of the same kind (unset: true)."""
    on_demand_max_nodes: Annotated[
        int | None, Field(ge=1), AfterValidator(_check_on_demand_max_nodes)
    ] = None
    """The fallback's most nodes (unset: maxNodes)."""
    flex_start: Annotated[bool, AfterValidator(_check_flex_start)] = False
    """Obtain the class's on-demand nodes through flex-start provisioning."""
    time_sharing_clients_per_gpu: Annotated[int | None, Field(ge=2, le=MAX_SHARED_CLIENTS)] = None
    """GPU time-sharing: up to this many pods share each GPU."""
    driver_version: Literal["DEFAULT", "LATEST"] = "LATEST"
    disk_size_gb: DiskSizeGb = 100
    labels: ExtraLabels = Field(default_factory=dict)
    warm_hours: Annotated[WarmHoursSettings | None, AfterValidator(_check_warm_nodes)] = None
    """Hours in which nodes of the class are kept ready for jobs; unset: none."""

    @property
    def gpus_per_node(self) -> int:
        """The configured GPU count, or the one the machine type fixes."""
        return self.accelerator_count or gpu.default_count(self.accelerator_type, self.machine_type)

    @property
    def gpu_slots_per_node(self) -> int:
        """How many one-GPU pods a node of the class takes: its GPUs, times the pods that
        share each with time-sharing."""
        return self.gpus_per_node * (self.time_sharing_clients_per_gpu or 1)

    @property
    def node_labels(self) -> dict[str, str]:
        return {**self.labels, GPU_LABEL: "true"}

    def node_pools(self, class_name: str) -> tuple[GpuNodePool, ...]:
        """The class's pools, first choice first: its Spot pool keeps the class's name, and
        so does an on-demand class's only pool."""
        first = GpuNodePool(
            class_name,
            self.spot,
            self.flex_start and not self.spot,
            self.min_nodes,
            self.max_nodes,
        )
        if not self.spot or self.on_demand_fallback is False:
            return (first,)
        # The fallback starts from zero: it runs only what the Spot pool cannot take, whether
        # Spot is out or the Spot pool is at maxNodes (GKE tries the next priority whenever
        # one cannot grow).
        fallback = GpuNodePool(
            class_name + ON_DEMAND_SUFFIX,
            False,
            self.flex_start,
            0,
            self.on_demand_max_nodes or self.max_nodes,
        )
        return (first, fallback)


def _check_class_name(name: str) -> str:
    if not _CLASS_NAME.match(name):
        raise _invalid(
            "allowed: 1 to 24 lowercase letters, digits and hyphens, starting with a letter, "
            "ending with a letter or digit"
        )
    if name in _TAKEN_POOL_NAMES or name.endswith(ON_DEMAND_SUFFIX):
        raise _invalid(
            f"names a node pool the stack makes itself ({', '.join(_TAKEN_POOL_NAMES)}, and "
            f"<class>{ON_DEMAND_SUFFIX}); allowed: another name, like l4 or a100"
        )
    if name.startswith(("gke", "autopilot")):
        raise _invalid("GKE keeps names beginning with gke or autopilot; allowed: another name")
    return name


class GpuClassSettings(GpuPoolSettings):
    """One entry of `gpuPools`: a named GPU class, which runners choose with `gpuPool`."""

    name: Annotated[str, AfterValidator(_check_class_name)]


def _check_distinct_names(classes: list[GpuClassSettings]) -> list[GpuClassSettings]:
    names = [c.name for c in classes]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise _invalid(f"two classes are named {', '.join(twice)}; allowed: a name per class")
    return classes


GpuClassList = Annotated[
    list[GpuClassSettings], Field(min_length=1), AfterValidator(_check_distinct_names)
]


@dataclass(frozen=True)
class GpuClass:
    """A GPU class of the stack: its name (its ComputeClass's), the config key that sets it,
    and its settings."""

    name: str
    key: str
    """`gpuPool`, or `gpuPools[<index>]`: what a message about the class names."""
    settings: GpuPoolSettings

    @property
    def node_pools(self) -> tuple[GpuNodePool, ...]:
        return self.settings.node_pools(self.name)


def gpu_classes(
    single: GpuPoolSettings | None, several: list[GpuClassSettings] | None
) -> tuple[GpuClass, ...]:
    """The stack's classes, from whichever of `gpuPool` and `gpuPools` it sets."""
    if several:
        return tuple(GpuClass(c.name, f"gpuPools[{i}]", c) for i, c in enumerate(several))
    return (GpuClass(SINGLE_CLASS, "gpuPool", single),) if single else ()


def class_named(classes: Mapping[str, GpuClass], name: str | None) -> GpuClass | None:
    """A GPU runner's class: the one it names, or the stack's only one when it names none."""
    if name is not None:
        return classes.get(name)
    return next(iter(classes.values())) if len(classes) == 1 else None
