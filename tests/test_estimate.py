"""`python -m infra.tools.estimate`: the figures match ones computed by hand from the catalog."""

import pytest
import yaml

from infra.tools import estimate
from tests.harness import REPO, manual
from tests.stacks import TWO_CLASSES

HOURS = 730
# europe-west6 prices from infra/data/prices.yaml, written out so a wrong lookup shows.
E2_MEDIUM_SPOT, E2_STANDARD_2 = 0.01725, 0.08778266
G2_STANDARD_4, G2_STANDARD_4_SPOT = 0.975748092, 0.565076
# An in-use external IPv4 address an hour: a standard VM's, and a Spot VM's (half).
PD_BALANCED, IP, SPOT_IP = 0.13, 0.005, 0.0025
# europe-west4, for docs/gpu-classes.md's example.
NL_E2_MEDIUM_SPOT, NL_PD_BALANCED = 0.017632, 0.11
NL_G2_STANDARD_8, NL_G2_STANDARD_8_SPOT, NL_A2_HIGHGPU_1G = 0.897201806, 0.47082, 3.747972


def stack(name: str) -> dict:
    return yaml.safe_load((REPO / f"Pulumi.{name}.yaml").read_text())["config"]


def by_label(result: estimate.Estimate) -> dict[str, float | None]:
    return {line.label.split(" (")[0]: line.usd for line in result.lines}


def test_the_dev_stack_by_hand():
    figures = by_label(estimate.estimate(stack("dev")))
    system_month = (E2_MEDIUM_SPOT + SPOT_IP) * HOURS + 20 * PD_BALANCED
    gpu_hour = G2_STANDARD_4_SPOT + 100 * PD_BALANCED / HOURS + SPOT_IP
    # Zonal: the free-tier credit pays the cluster fee.
    assert figures["Month while idle"] == pytest.approx(system_month)
    assert round(figures["Month while idle"], 2) == 17.02
    fallback_hour = G2_STANDARD_4 + 100 * PD_BALANCED / HOURS + IP
    # Every pool at its maximum: the Spot GPU node and its on-demand fallback, all month.
    worst = 2 * system_month + (gpu_hour + fallback_hour) * HOURS
    assert figures["Worst month"] == pytest.approx(worst)
    assert figures["GPU node hour, runner cml-runner"] == pytest.approx(gpu_hour)
    fallback = figures["GPU node hour on the on-demand fallback, runner cml-runner"]
    assert fallback == pytest.approx(fallback_hour)
    job = "10-minute job on a cold node, runner cml-runner"
    assert figures[job] == pytest.approx((4.5 + 10 + 10) / 60 * gpu_hour)
    assert round(figures[job], 2) == 0.24


def test_the_production_example_by_hand():
    figures = by_label(estimate.estimate(stack("prod")))
    system_month = (E2_STANDARD_2 + IP) * HOURS + 50 * PD_BALANCED
    gpu_month = (G2_STANDARD_4 + IP) * HOURS + 100 * PD_BALANCED
    # Regional: the fee, 0.10 an hour, is paid.
    assert figures["Month while idle"] == pytest.approx(73 + system_month)
    assert round(figures["Month while idle"], 2) == 147.23
    assert figures["Worst month"] == pytest.approx(73 + 3 * system_month + 2 * gpu_month)


def test_an_always_gpu_runner_keeps_its_node_in_the_idle_month():
    config = stack("dev")
    config["gpu-runners:runners"] = [{"name": "cml-runner", "mode": "always"}]
    figures = by_label(estimate.estimate(config))
    gpu_month = (G2_STANDARD_4_SPOT + SPOT_IP) * HOURS + 100 * PD_BALANCED
    system_month = (E2_MEDIUM_SPOT + SPOT_IP) * HOURS + 20 * PD_BALANCED
    assert figures["Month while idle"] == pytest.approx(system_month + gpu_month)


def test_what_the_catalog_lacks_is_unpriced_never_guessed():
    config = stack("dev") | {
        "gpu-runners:cluster": {"location": "us-central1", "deletionProtection": False},
        "gpu-runners:systemPool": {"zones": ["us-central1-a"]},
        "gpu-runners:gpuPool": {
            "acceleratorType": "nvidia-tesla-t4",
            "machineType": "n1-standard-4",
            "zones": ["us-central1-a"],
        },
    }
    result = estimate.estimate(config)
    google = [line for line in result.lines if not line.label.endswith("to compare")]
    assert google and all(line.usd is None for line in google)
    assert "| Month while idle | unpriced |" in estimate.markdown("x", result)


def test_github_gpu_jobs_are_set_beside_githubs_hosted_gpu_runner():
    figures = by_label(estimate.estimate(stack("dev")))
    hosted = "job on GitHub's hosted Linux GPU runner"
    # 0.052 USD a minute (GitHub's runner pricing, January 1, 2026 onward).
    assert figures[f"10-minute {hosted}"] == pytest.approx(0.52)
    assert figures[f"60-minute {hosted}"] == pytest.approx(3.12)
    gitlab = stack("dev")
    gitlab["gpu-runners:runners"] = [
        {"name": "gl-gpu", "platform": "gitlab", "labels": ["gpu"], "maxRunners": 1}
    ]
    assert not [f for f in estimate.estimate(gitlab).lines if hosted in f.label]


def test_the_command_prints_a_table_and_the_change_against_the_base(capsys):
    assert (
        estimate.main([str(REPO / "Pulumi.prod.yaml"), "--base", str(REPO / "Pulumi.dev.yaml")])
        == 0
    )
    out = capsys.readouterr().out
    assert "| Figure | Base | This change | Difference |" in out
    assert "| Month while idle | 17.02 | 147.23 | +130.21 |" in out


def test_a_bad_stack_file_is_refused_with_its_problem(tmp_path, capsys):
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(yaml.safe_dump({"config": {"gpu-runners:systemPool": {"machineType": "x1"}}}))
    assert estimate.main([str(bad)]) == 2
    assert "gpu-runners:systemPool.machineType = 'x1'" in capsys.readouterr().err


def test_an_encrypted_value_is_never_shown_even_when_refused(tmp_path, capsys):
    ciphertext = "v1:AAAAc2FsdA==:Y2x1c3Rlci1uYW1lLWNpcGhlcg=="
    config = stack("dev")
    config["gpu-runners:cluster"]["name"] = {"secure": ciphertext}
    path = tmp_path / "Pulumi.dev.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    estimate.main([str(path)])
    captured = capsys.readouterr()
    assert ciphertext.split(":")[2] not in captured.out + captured.err


def test_the_readmes_idle_figures_are_the_estimates():
    readme = manual()
    for name in ("dev", "prod"):
        idle = by_label(estimate.estimate(stack(name)))["Month while idle"]
        assert f"{idle:.2f}" in readme, name


def test_a_token_in_a_repository_url_is_never_printed(tmp_path, capsys):
    token = "0123456789abcdef0123456789abcdef01234567"
    stack = tmp_path / "Pulumi.leaky.yaml"
    stack.write_text(
        "config:\n  gpu-runners:runners:\n    - name: cml-runner\n"
        f"      repository: https://bot:{token}@github.com/ml-team/churn-model\n"
    )
    assert estimate.main([str(stack)]) == 2
    captured = capsys.readouterr()
    assert token not in captured.out + captured.err
    assert "https://[secret]@github.com" in captured.err


def test_cpu_runners_add_their_own_pool_and_an_always_one_keeps_a_node_up():
    dev = by_label(estimate.estimate(stack("dev")))
    config = stack("dev")
    config["gpu-runners:runners"] = [
        *config["gpu-runners:runners"],
        {"name": "lint", "labels": ["lint"], "gpus": 0, "cpu": "500m", "mode": "always"},
    ]
    result = estimate.estimate(config)
    figures = by_label(result)
    # One on-demand e2-standard-2 (the cpuPool default) with its 50 GB disk and IP, all month.
    cpu_month = (E2_STANDARD_2 + IP) * HOURS + 50 * PD_BALANCED
    assert figures["Month while idle"] == pytest.approx(dev["Month while idle"] + cpu_month)
    # At most two of them (cpuPool.maxNodes).
    assert figures["Worst month"] == pytest.approx(dev["Worst month"] + 2 * cpu_month)
    assert "CPU runner pool: e2-standard-2, on demand." in result.about


def test_the_manuals_cost_figures_are_the_estimates():
    """Every cost figure the docs give for the dev stack's GPU runner, from the estimate."""
    text = manual()
    spot = estimate.node_hour("europe-west6", "g2-standard-4", True, 100)
    on_demand = estimate.node_hour("europe-west6", "g2-standard-4", False, 100)
    assert f"{on_demand * HOURS:.2f} a month on demand, {spot * HOURS:.2f} on Spot" in text
    always = stack("dev")
    runner = always["gpu-runners:runners"][0]
    runner.update(mode="always")
    runner.pop("maxRunners")
    runner.pop("idleTimeoutSeconds")
    always["gpu-runners:gpuPool"]["spot"] = False
    idle = by_label(estimate.estimate(always))["Month while idle"]
    assert text.count(f"{idle:.2f} on demand (dev stack)") == 2
    assert f"the dev stack's idle month becomes {idle:.2f} USD on demand" in text
    jobs = by_label(estimate.estimate(stack("dev")))
    ten, sixty = (jobs[f"{m}-minute job on a cold node, runner cml-runner"] for m in (10, 60))
    assert f"at most {ten:.2f} after; a 60-minute job" in text
    assert f"at most {sixty:.2f} after, as `python -m infra.tools.estimate` prints" in text
    # The Spot discount, wherever it is given.
    discount = round(100 * (1 - G2_STANDARD_4_SPOT / G2_STANDARD_4))
    assert f"({discount} % less)" in text and "58 %" not in text


def test_the_two_class_example_prices_each_class_and_the_fallback():
    # The docs' example as a stack file of its own.
    example = {key: value for key, value in TWO_CLASSES.items() if value is not None}
    figures = by_label(estimate.estimate(example))
    l4_spot = NL_G2_STANDARD_8_SPOT + 100 * NL_PD_BALANCED / HOURS + SPOT_IP
    l4_on_demand = NL_G2_STANDARD_8 + 100 * NL_PD_BALANCED / HOURS + IP
    a100 = NL_A2_HIGHGPU_1G + 200 * NL_PD_BALANCED / HOURS + IP
    system_month = (NL_E2_MEDIUM_SPOT + SPOT_IP) * HOURS + 50 * NL_PD_BALANCED
    # Zonal: the free tier pays the fee; every GPU pool scales to zero.
    assert figures["Month while idle"] == pytest.approx(system_month)
    # Every pool at its maximum: two Spot L4 nodes, two on-demand fallbacks, one A100.
    worst = 2 * system_month + (2 * l4_spot + 2 * l4_on_demand + a100) * HOURS
    assert figures["Worst month"] == pytest.approx(worst)
    assert figures["GPU node hour, runner gpu-tests"] == pytest.approx(l4_spot)
    assert figures["GPU node hour on the on-demand fallback, runner gpu-tests"] == pytest.approx(
        l4_on_demand
    )
    assert figures["GPU node hour, runner gpu-train"] == pytest.approx(a100)
    assert "GPU node hour on the on-demand fallback, runner gpu-train" not in figures
    job = "60-minute job on a cold node, runner gpu-train"
    assert figures[job] == pytest.approx((4.5 + 60 + 10) / 60 * a100)


def test_a_flex_start_class_is_priced_at_on_demand_and_says_so():
    config = stack("dev")
    config["gpu-runners:gpuPool"] = {**config["gpu-runners:gpuPool"], "flexStart": True}
    result = estimate.estimate(config)
    assert "GPU class gpu: g2-standard-4, Spot, then flex-start (priced on demand)." in result.about
    label = "GPU node hour on the flex-start (priced on demand) fallback, runner cml-runner"
    fallback = next(f.usd for f in result.lines if f.label == label)
    assert fallback == pytest.approx(G2_STANDARD_4 + 100 * PD_BALANCED / HOURS + IP)


def test_the_price_of_an_on_demand_system_node_is_the_estimates():
    spot = by_label(estimate.estimate(stack("dev")))["Month while idle"]
    config = stack("dev")
    config["gpu-runners:systemPool"]["spot"] = False
    on_demand = by_label(estimate.estimate(config))["Month while idle"]
    assert f"`systemPool.spot: false` (about {on_demand - spot:.0f} more a month)" in manual()


def test_the_manual_sets_the_dev_jobs_beside_githubs_hosted_runner_as_the_estimate_does():
    figures = by_label(estimate.estimate(stack("dev")))
    hosted = [figures[f"{m}-minute job on GitHub's hosted Linux GPU runner"] for m in (10, 60)]
    ours = [figures[f"{m}-minute job on a cold node, runner cml-runner"] for m in (10, 60)]
    assert (
        f"the ratio: {hosted[0]:.2f}\nand {hosted[1]:.2f} against the dev stack's {ours[0]:.2f} "
        f"and {ours[1]:.2f}" in manual()
    )
