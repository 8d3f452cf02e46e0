"""What GKE allows for GPU node pools: accelerator types, the machine types that carry them,
how many fit on one node, and the zones that offer them."""

import re
from functools import cache
from pathlib import Path

import yaml

_ZONE_CATALOG = Path(__file__).parent / "data" / "gpu_zones.yaml"

# GPUs attached to N1 machine types: allowed counts, each with the most vCPUs the machine may have.
_N1_MAX_VCPUS: dict[str, dict[int, int]] = {
    "nvidia-tesla-t4": {1: 48, 2: 48, 4: 96},
    "nvidia-tesla-p4": {1: 24, 2: 48, 4: 96},
    "nvidia-tesla-p100": {1: 16, 2: 32, 4: 64},
    "nvidia-tesla-v100": {1: 12, 2: 24, 4: 48, 8: 96},
}

# Accelerator-optimized machine types: the machine type fixes the GPU count.
_FIXED_COUNTS: dict[str, dict[str, int]] = {
    "nvidia-l4": {
        "g2-standard-4": 1,
        "g2-standard-8": 1,
        "g2-standard-12": 1,
        "g2-standard-16": 1,
        "g2-standard-32": 1,
        "g2-standard-24": 2,
        "g2-standard-48": 4,
        "g2-standard-96": 8,
    },
    "nvidia-tesla-a100": {
        "a2-highgpu-1g": 1,
        "a2-highgpu-2g": 2,
        "a2-highgpu-4g": 4,
        "a2-highgpu-8g": 8,
        "a2-megagpu-16g": 16,
    },
    "nvidia-a100-80gb": {
        "a2-ultragpu-1g": 1,
        "a2-ultragpu-2g": 2,
        "a2-ultragpu-4g": 4,
        "a2-ultragpu-8g": 8,
    },
    "nvidia-h100-80gb": {
        "a3-highgpu-1g": 1,
        "a3-highgpu-2g": 2,
        "a3-highgpu-4g": 4,
        "a3-highgpu-8g": 8,
    },
}

KNOWN_ACCELERATORS: tuple[str, ...] = tuple(sorted({*_N1_MAX_VCPUS, *_FIXED_COUNTS}))

_N1_VCPUS = re.compile(
    r"^(?:n1-(?:standard|highmem|highcpu)-(\d+)|(?:n1-)?custom-(\d+)-\d+(?:-ext)?)$"
)


def _n1_vcpus(machine_type: str) -> int | None:
    """vCPUs of an N1 machine type, or None when the machine type is not N1."""
    match = _N1_VCPUS.match(machine_type)
    if match is None:
        return None
    return int(match.group(1) or match.group(2))


def machine_type_problem(accelerator: str, machine_type: str) -> str | None:
    """Why machine_type cannot carry accelerator, or None when it can."""
    if accelerator in _FIXED_COUNTS:
        allowed = _FIXED_COUNTS[accelerator]
        if machine_type not in allowed:
            return f"cannot carry {accelerator}; allowed: {', '.join(allowed)}"
        return None
    if _n1_vcpus(machine_type) is None:
        return (
            f"cannot carry {accelerator}, which attaches to N1 machine types only "
            "(n1-standard-N, n1-highmem-N, n1-highcpu-N, n1-custom-N-M)"
        )
    return None


def default_count(accelerator: str, machine_type: str) -> int:
    """The GPU count when none is configured: fixed by the machine type, else 1."""
    return _FIXED_COUNTS.get(accelerator, {}).get(machine_type, 1)


def count_problem(accelerator: str, machine_type: str, count: int) -> str | None:
    """Why count GPUs of accelerator cannot attach to machine_type, or None when they can."""
    if accelerator in _FIXED_COUNTS:
        fixed = _FIXED_COUNTS[accelerator][machine_type]
        if count != fixed:
            return f"{machine_type} carries exactly {fixed} {accelerator}; allowed: {fixed}"
        return None
    limits = _N1_MAX_VCPUS[accelerator]
    if count not in limits:
        return f"{accelerator} attaches in counts of {', '.join(map(str, limits))}"
    vcpus = _n1_vcpus(machine_type)
    if vcpus is not None and vcpus > limits[count]:
        return (
            f"{count} x {accelerator} allows at most {limits[count]} vCPUs, "
            f"{machine_type} has {vcpus}"
        )
    return None


@cache
def _catalog() -> dict:
    return yaml.safe_load(_ZONE_CATALOG.read_text())


def catalog_date() -> str:
    """The date the zone catalog was transcribed."""
    return str(_catalog()["as_of"])


def zones_offering(accelerator: str) -> frozenset[str]:
    """Zones that offer accelerator, according to the catalog."""
    return frozenset(_catalog()["zones"].get(accelerator, ()))
