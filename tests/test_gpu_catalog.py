"""The GPU catalog the settings check against: its zone data and its machine rules."""

import re

import yaml

from infra import gpu

CATALOG = yaml.safe_load(gpu._ZONE_CATALOG.read_text())


def test_zone_catalog_cites_its_source_and_date():
    assert CATALOG["source"].startswith("https://cloud.google.com/compute/docs/gpus/")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", CATALOG["as_of"])
    assert gpu.catalog_date() == CATALOG["as_of"]


def test_zone_catalog_covers_exactly_the_known_accelerators_with_valid_zone_names():
    assert set(CATALOG["zones"]) == set(gpu.KNOWN_ACCELERATORS)
    for accelerator, zones in CATALOG["zones"].items():
        assert zones, accelerator
        assert len(zones) == len(set(zones)), accelerator
        for zone in zones:
            assert re.fullmatch(r"[a-z]+-[a-z]+\d+-[a-z]", zone), (accelerator, zone)


def test_zurich_offers_only_the_l4_in_zones_b_and_c():
    in_zurich = {
        accelerator: sorted(
            z for z in gpu.zones_offering(accelerator) if z.startswith("europe-west6-")
        )
        for accelerator in gpu.KNOWN_ACCELERATORS
    }
    assert {a: z for a, z in in_zurich.items() if z} == {
        "nvidia-l4": ["europe-west6-b", "europe-west6-c"]
    }


def test_each_accelerator_family_takes_its_own_machine_types():
    assert gpu.machine_type_problem("nvidia-l4", "g2-standard-8") is None
    assert gpu.machine_type_problem("nvidia-tesla-a100", "a2-highgpu-2g") is None
    assert gpu.machine_type_problem("nvidia-a100-80gb", "a2-ultragpu-1g") is None
    assert gpu.machine_type_problem("nvidia-h100-80gb", "a3-highgpu-8g") is None
    assert gpu.machine_type_problem("nvidia-tesla-p100", "n1-highmem-8") is None
    assert gpu.machine_type_problem("nvidia-tesla-t4", "n1-custom-8-30720") is None
    assert gpu.machine_type_problem("nvidia-h100-80gb", "a2-highgpu-8g") is not None
    assert gpu.machine_type_problem("nvidia-tesla-p4", "e2-standard-4") is not None


def test_counts_follow_the_machine_type_or_the_n1_limits():
    assert gpu.default_count("nvidia-l4", "g2-standard-96") == 8
    assert gpu.default_count("nvidia-tesla-a100", "a2-megagpu-16g") == 16
    assert gpu.default_count("nvidia-tesla-t4", "n1-standard-4") == 1
    assert gpu.count_problem("nvidia-tesla-v100", "n1-standard-96", 8) is None
    assert gpu.count_problem("nvidia-tesla-v100", "n1-standard-96", 4) is not None
    assert gpu.count_problem("nvidia-tesla-p100", "n1-standard-4", 8) is not None
