"""Compute Engine machine types a pool may use, and the CPU and memory GKE leaves to pods.

Sizes from Google's machine family pages (general-purpose: E2, N1, N2, N2D, N4, C3, T2D;
accelerator-optimized: A2, A3, G2), as of 2026-11. Compute Engine's memory "GB" are GiB.
"""

import re
from dataclasses import dataclass

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Machine:
    """What a machine type gives a node."""

    vcpus: int
    memory_gib: float
    shared_core: bool = False
    accelerator_optimized: bool = False


# Predefined families: the vCPU counts offered, and GiB of memory per vCPU.
_PREDEFINED: dict[str, tuple[tuple[int, ...], float]] = {
    "e2-standard": ((2, 4, 8, 16, 32), 4),
    "e2-highmem": ((2, 4, 8, 16), 8),
    "e2-highcpu": ((2, 4, 8, 16, 32), 1),
    "n1-standard": ((1, 2, 4, 8, 16, 32, 64, 96), 3.75),
    "n1-highmem": ((2, 4, 8, 16, 32, 64, 96), 6.5),
    "n1-highcpu": ((2, 4, 8, 16, 32, 64, 96), 0.9),
    "n2-standard": ((2, 4, 8, 16, 32, 48, 64, 80, 96, 128), 4),
    "n2-highmem": ((2, 4, 8, 16, 32, 48, 64, 80, 96, 128), 8),
    "n2-highcpu": ((2, 4, 8, 16, 32, 48, 64, 80, 96), 1),
    "n2d-standard": ((2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 224), 4),
    "n2d-highmem": ((2, 4, 8, 16, 32, 48, 64, 80, 96), 8),
    "n2d-highcpu": ((2, 4, 8, 16, 32, 48, 64, 80, 96, 128, 224), 1),
    "n4-standard": ((2, 4, 8, 16, 32, 48, 64, 80), 4),
    "n4-highmem": ((2, 4, 8, 16, 32, 48, 64, 80), 8),
    "n4-highcpu": ((2, 4, 8, 16, 32, 48, 64, 80), 2),
    "c3-standard": ((4, 8, 22, 44, 88, 176), 4),
    "c3-highmem": ((4, 8, 22, 44, 88, 176), 8),
    "c3-highcpu": ((4, 8, 22, 44, 88, 176), 2),
    "t2d-standard": ((1, 2, 4, 8, 16, 32, 48, 60), 4),
}
_SHARED_CORE: dict[str, Machine] = {
    "e2-micro": Machine(2, 1, shared_core=True),
    "e2-small": Machine(2, 2, shared_core=True),
    "e2-medium": Machine(2, 4, shared_core=True),
}
_ACCELERATOR_OPTIMIZED: dict[str, tuple[int, float]] = {
    **{f"g2-standard-{n}": (n, 4 * n) for n in (4, 8, 12, 16, 24, 32, 48, 96)},
    "a2-highgpu-1g": (12, 85),
    "a2-highgpu-2g": (24, 170),
    "a2-highgpu-4g": (48, 340),
    "a2-highgpu-8g": (96, 680),
    "a2-megagpu-16g": (96, 1360),
    "a2-ultragpu-1g": (12, 170),
    "a2-ultragpu-2g": (24, 340),
    "a2-ultragpu-4g": (48, 680),
    "a2-ultragpu-8g": (96, 1360),
    "a3-highgpu-1g": (26, 234),
    "a3-highgpu-2g": (52, 468),
    "a3-highgpu-4g": (104, 936),
    "a3-highgpu-8g": (208, 1872),
}
_PREDEFINED_NAME = re.compile(r"^([a-z0-9]+-[a-z]+)-(\d+)$")
# Custom machine types: <family>-custom-<vCPUs>-<MiB>, N1 also as custom-<vCPUs>-<MiB>.
_CUSTOM_NAME = re.compile(r"^(?:(?:n1|n2|n2d|e2)-)?custom-(\d+)-(\d+)(?:-ext)?$")
EXAMPLES = "e2-standard-2, e2-standard-4, n2-standard-4, n1-standard-8, n1-custom-8-30720"


def machine(machine_type: str) -> Machine | None:
    """The machine a type name stands for, or None when no such type exists."""
    if machine_type in _SHARED_CORE:
        return _SHARED_CORE[machine_type]
    if machine_type in _ACCELERATOR_OPTIMIZED:
        vcpus, memory = _ACCELERATOR_OPTIMIZED[machine_type]
        return Machine(vcpus, memory, accelerator_optimized=True)
    custom = _CUSTOM_NAME.match(machine_type)
    if custom:
        return Machine(int(custom.group(1)), int(custom.group(2)) / 1024)
    predefined = _PREDEFINED_NAME.match(machine_type)
    if predefined and predefined.group(1) in _PREDEFINED:
        sizes, per_vcpu = _PREDEFINED[predefined.group(1)]
        vcpus = int(predefined.group(2))
        if vcpus in sizes:
            return Machine(vcpus, vcpus * per_vcpu)
    return None


def allocatable_cpu(node: Machine) -> float:
    """Cores left to pods after GKE's reservation (GKE docs, "Plan node sizes": 6 % of the
    first core, 1 % of the next, 0.5 % of the next 2, 0.25 % above 4; shared-core machines
    leave 940m)."""
    if node.shared_core:
        return 0.94
    tiers = ((1, 0.06), (1, 0.01), (2, 0.005), (float("inf"), 0.0025))
    return node.vcpus - _reserved(node.vcpus, tiers)


# GKE's memory reservation (GKE docs, "Plan node sizes"): 25 % of the first 4 GiB, 20 % of the
# next 4, 10 % of the next 8, 6 % of the next 112, 2 % above 128 (255 MiB below 1 GiB).
_MEMORY_TIERS = ((4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (float("inf"), 0.02))
# Image streaming, on for every pool of the stack (infra/gcp/cluster.py, gcfs_config), reserves
# more: 10 % of the first 4 GiB, 8 % of the next 4, 4 % of the next 8, 2.4 % of the next 112,
# 0.8 % above 128, nothing below 1 GiB (GKE docs, "Use Image streaming", memory reservation,
# as hatemosphere/gke-node-allocatable-memory-calculator tabulates it; the stored copies of
# Google's page end before that section).
_IMAGE_STREAMING_TIERS = tuple((size, share * 0.4) for size, share in _MEMORY_TIERS)


def allocatable_memory(node: Machine) -> float:
    """Bytes left to pods after GKE's reservation, image streaming's and the 100 MiB eviction
    threshold."""
    total = node.memory_gib * GIB
    if node.memory_gib < 1:
        return total - 255 * MIB - 100 * MIB
    reserved = _reserved(node.memory_gib, _MEMORY_TIERS)
    reserved += _reserved(node.memory_gib, _IMAGE_STREAMING_TIERS)
    return total - reserved * GIB - 100 * MIB


def _reserved(amount: float, tiers: tuple[tuple[float, float], ...]) -> float:
    reserved = 0.0
    for size, share in tiers:
        part = min(amount, size)
        reserved += part * share
        amount -= part
        if amount <= 0:
            break
    return reserved
