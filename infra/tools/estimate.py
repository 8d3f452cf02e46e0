"""What a stack costs, from its stack file and the price catalog: `python -m infra.tools.estimate`.

    python -m infra.tools.estimate [Pulumi.<stack>.yaml] [--base <stack file of the base branch>]

Prints a Markdown table: the month while idle (warm hours included), the worst month (every
pool at its maximum), each class's warm hours, and for each GPU runner one hour of its class's
node (and of its on-demand fallback) and one job of 10 and of 60 minutes on a cold node (and on
a warm one, with warm hours); with GitHub GPU runners, the same jobs on GitHub's hosted GPU
runner. A price the catalog (infra/data/prices.yaml) lacks makes a figure "unpriced", never a
guess.
"""

import argparse
import math
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from infra import job_start, machines, messages
from infra import settings as stack_settings
from infra.tools.markdown import bounded
from infra.tools.markdown import text as markdown_text
from infra.tools.stack_file import PROJECT, StackFileError, read_config

CATALOG = Path(__file__).parent.parent / "data" / "prices.yaml"
BOOT_DISK = "pd-balanced"  # GKE's default boot disk type; the pools do not set another.
# The billed-minutes model of a job (infra/job_start.py, docs/speed.md): a node is billed from
# its boot through the job's start, the job, then until the autoscaler removes it (at most its
# default 10 minutes; OPTIMIZE_UTILIZATION removes nodes sooner, by no published figure, so
# this is the upper bound). On a warm node the boot was paid by the warm hours: a job adds the
# minutes from taking the node on (the placeholder's replacement is the warm hours' again).
TAIL_MINUTES = 10
JOB_MINUTES = (10, 60)
WEEK_HOURS = 7 * 24
PLACEHOLDER_REPOSITORIES = {
    "github": "https://github.com/estimate/placeholder",
    "gitlab": "https://gitlab.com/estimate/placeholder",
}


@dataclass(frozen=True)
class Estimate:
    """What the figures price (the pools' machines), and the figures."""

    about: str
    lines: list["Figure"]


@dataclass(frozen=True)
class Figure:
    """One line of the estimate; None means unpriced."""

    label: str
    usd: float | None


@cache
def catalog() -> dict:
    return yaml.safe_load(CATALOG.read_text())


def node_hour(region: str, machine_type: str, spot: bool, disk_gb: int) -> float | None:
    """One hour of a node: its machine, its boot disk and its external IP address."""
    prices = catalog()["regions"].get(region)
    machine = (prices or {}).get("machines", {}).get(machine_type)
    if machine is None:
        return None
    disk = disk_gb * prices["disks"][BOOT_DISK] / catalog()["hours_per_month"]
    ip = prices["external_ip_per_hour"]["spot" if spot else "standard"]
    return machine["spot" if spot else "on_demand"] + disk + ip


def cluster_fee_month(location: str) -> float:
    """The management fee; the free-tier credit pays one zonal cluster per billing account."""
    gke = catalog()["gke"]
    fee = gke["cluster_fee_per_hour"] * catalog()["hours_per_month"]
    zonal = stack_settings.region_of(location) != location
    return max(0.0, fee - gke["free_tier_credit_per_month"]) if zonal else fee


def _sum(*parts: float | None) -> float | None:
    return None if any(p is None for p in parts) else sum(parts)


def _times(count: float, price: float | None) -> float | None:
    return None if price is None else count * price


def estimate(config: dict) -> Estimate:
    """The estimate of a stack's config (the stack file's `config`, keys with namespace)."""
    namespace = PROJECT
    given = {
        key.removeprefix(f"{namespace}:"): value
        for key, value in config.items()
        if key.startswith(f"{namespace}:")
    }
    # A fresh stack file leaves repositories to `pulumi config set`; prices do not need them.
    # Anything but a list is left for the settings to refuse.
    if isinstance(given.get("runners"), list):
        given["runners"] = [
            {"repository": PLACEHOLDER_REPOSITORIES.get(str(r.get("platform", "github")), "")} | r
            if isinstance(r, dict)
            else r
            for r in given["runners"]
        ]
    problems: list[str] = []
    sections, runners = stack_settings.parse_sections(namespace, given, problems)
    if problems:
        # Masked as the program masks them: a token in a URL's user-info included.
        raise stack_settings.SettingsError(messages.mask("\n".join(problems)))
    if sections["existingCluster"] is not None:
        return Estimate(
            "The stack makes no cluster and no node (existingCluster): their bill, if any, is "
            "not the stack's. On GKE it makes the DVC bucket, whose storage the catalog does "
            "not price.",
            [],
        )
    cluster, system, cpu = sections["cluster"], sections["systemPool"], sections["cpuPool"]
    region, hours = cluster.region, catalog()["hours_per_month"]
    system_hour = node_hour(region, system.machine_type, system.spot, system.disk_size_gb)
    fee = cluster_fee_month(cluster.location)
    classes = {c.name: c for c in sections["gpuClasses"]}
    # Each pool's node hour; flex-start at the on-demand price, its upper bound (the catalog
    # has no flex-start prices).
    pool_hour = {
        pool.name: node_hour(region, c.settings.machine_type, pool.spot, c.settings.disk_size_gb)
        for c in classes.values()
        for pool in c.node_pools
    }
    # Always runners with GPUs keep nodes of their class's first pool up: CML runners that
    # wait for jobs.
    waiting_gpus = {name: 0 for name in classes}
    for r in runners:
        if r.gpus > 0 and r.scaling_mode == "always" and r.runner_engine == "cml":
            waiting_gpus[stack_settings.class_named(classes, r.gpu_pool).name] += (
                r.replica_count * r.gpus
            )
    idle_gpu = [
        _times(_idle_nodes(c, waiting_gpus[name]) * hours, pool_hour[c.node_pools[0].name])
        for name, c in classes.items()
    ]
    # Warm hours keep their nodes up whether or not a job comes: of the class's first pool
    # (Spot first where it has Spot; the fallback's price is not counted). A placeholder takes
    # one GPU, so it may sit on a node that is up anyway with a GPU free.
    warm = {
        name: _times(
            _warm_nodes(c, waiting_gpus[name])
            * c.settings.warm_hours.hours_per_week
            * hours
            / WEEK_HOURS,
            pool_hour[c.node_pools[0].name],
        )
        for name, c in classes.items()
        if c.settings.warm_hours is not None
    }
    worst_gpu = [
        _times(pool.max_nodes * hours, pool_hour[pool.name])
        for c in classes.values()
        for pool in c.node_pools
    ]
    # CPU runners have a pool of their own (infra/gcp/cluster.py), created with the first one.
    cpu_runners = [r for r in runners if r.gpus == 0]
    cpu_hour = node_hour(region, cpu.machine_type, cpu.spot, cpu.disk_size_gb)
    waiting_cpus = sum(
        r.replica_count * stack_settings.quantity_value(r.cpu)
        for r in cpu_runners
        if r.scaling_mode == "always"
    )
    per_node = machines.allocatable_cpu(machines.machine(cpu.machine_type))
    idle_cpu_nodes = (
        min(cpu.max_nodes, max(cpu.min_nodes, math.ceil(waiting_cpus / per_node)))
        if cpu_runners
        else 0
    )
    idle = _sum(
        fee,
        _times(system.min_nodes * hours, system_hour),
        *idle_gpu,
        *warm.values(),
        _times(idle_cpu_nodes * hours, cpu_hour),
    )
    worst = _sum(
        fee,
        _times(system.max_nodes * hours, system_hour),
        *worst_gpu,
        _times((cpu.max_nodes if cpu_runners else 0) * hours, cpu_hour),
    )
    lines = [
        Figure("Month while idle", idle),
        Figure("Worst month (every pool at its maximum, all month)", worst),
    ]
    for name, usd in warm.items():
        schedule = classes[name].settings.warm_hours
        lines.append(
            Figure(
                f"Warm hours of class {name}, in the month while idle ({schedule.nodes} "
                f"node{'s' if schedule.nodes > 1 else ''}, {schedule.hours_per_week:g} h a week)",
                usd,
            )
        )
    for runner in (r for r in runners if r.gpus > 0):
        gpu_class = stack_settings.class_named(classes, runner.gpu_pool)
        first, *fallback = gpu_class.node_pools
        gpu_hour = pool_hour[first.name]
        lines.append(Figure(f"GPU node hour, runner {runner.name}", gpu_hour))
        if fallback:
            kind = "flex-start (priced on demand)" if fallback[0].flex_start else "on-demand"
            lines.append(
                Figure(
                    f"GPU node hour on the {kind} fallback, runner {runner.name}",
                    pool_hour[fallback[0].name],
                )
            )
        warm_class = gpu_class.settings.warm_hours is not None
        for minutes, node in ((m, n) for m in JOB_MINUTES for n in ("cold", "warm")):
            if node == "warm" and not warm_class:
                continue
            billed = job_start.billed_start_minutes(node == "warm") + minutes + TAIL_MINUTES
            beyond = " beyond the warm hours" if node == "warm" else ""
            lines.append(
                Figure(
                    f"{minutes}-minute job on a {node} node, runner {runner.name} "
                    f"({billed:g} GPU minutes billed{beyond}, first step after "
                    f"{job_start.first_step_minutes(node == 'warm'):.2g} minutes)",
                    _times(billed / 60, gpu_hour),
                )
            )
    hosted = catalog()["hosted_gpu_runner"]["github"]
    if any(r.gpus > 0 and r.platform == "github" for r in runners):
        lines += [
            Figure(
                f"{minutes}-minute job on {hosted['name']}, to compare",
                minutes * hosted["per_minute"],
            )
            for minutes in JOB_MINUTES
        ]
    about = f"System pool: {system.machine_type}, {_BUYING[system.spot]}. " + " ".join(
        f"GPU class {c.name}: {c.settings.machine_type}, {_buying(c)}." for c in classes.values()
    )
    if cpu_runners:
        about += f" CPU runner pool: {cpu.machine_type}, {_BUYING[cpu.spot]}."
    return Estimate(about, lines)


_BUYING = {True: "Spot", False: "on demand"}


def _buying(gpu_class: stack_settings.GpuClass) -> str:
    """How a class's nodes are bought, in the order its ComputeClass tries its pools."""
    kinds = [
        "flex-start (priced on demand)" if p.flex_start else _BUYING[p.spot]
        for p in gpu_class.node_pools
    ]
    return ", then ".join(kinds)


def _idle_nodes(gpu_class: stack_settings.GpuClass, waiting_gpus: int) -> int:
    """Nodes of a class's first pool up while no job runs: its minimum, or what always-on
    runners hold."""
    first, per_node = gpu_class.node_pools[0], gpu_class.settings.gpu_slots_per_node
    return min(first.max_nodes, max(first.min_nodes, math.ceil(waiting_gpus / per_node)))


def _warm_nodes(gpu_class: stack_settings.GpuClass, waiting_gpus: int) -> int:
    """Nodes warm hours add to those up while idle: the idle ones with a GPU free hold a
    placeholder each."""
    settings = gpu_class.settings
    with_room = _idle_nodes(gpu_class, waiting_gpus) - waiting_gpus // settings.gpu_slots_per_node
    return max(0, settings.warm_hours.nodes - with_room)


def _usd(value: float | None) -> str:
    return "unpriced" if value is None else f"{value:,.2f}"


def markdown(title: str, this: Estimate, base: Estimate | None = None) -> str:
    """The figures as a Markdown table, beside the base branch's when given."""
    heading = (
        f"### Cost estimate: {markdown_text(title)}\n\n{this.about} USD, list prices of "
        f"{catalog()['as_of']} (infra/data/prices.yaml)."
    )
    if not this.lines:
        return f"### Cost estimate: {markdown_text(title)}\n\n{this.about}\n"
    if base is None:
        rows = [f"| {f.label} | {_usd(f.usd)} |" for f in this.lines]
        return "\n".join([heading, "", "| Figure | USD |", "|---|---|", *rows, ""])
    before = {f.label: f.usd for f in base.lines}
    rows = []
    for figure in this.lines:
        old = before.get(figure.label)
        change = f"{figure.usd - old:+,.2f}" if figure.usd is not None and old is not None else "—"
        was = _usd(old) if figure.label in before else "—"
        rows.append(f"| {figure.label} | {was} | {_usd(figure.usd)} | {change} |")
    table = ["| Figure | Base | This change | Difference |", "|---|---|---|---|", *rows]
    return "\n".join([heading, "", *table, ""])


def _config(path: Path) -> dict:
    """The stack file's config, secrets as placeholders: no figure needs one."""
    return read_config(path).values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.tools.estimate", description=__doc__)
    parser.add_argument("stack_file", nargs="?", default="Pulumi.dev.yaml", type=Path)
    parser.add_argument("--base", type=Path, help="the same stack file on the base branch")
    args = parser.parse_args(argv)
    try:
        this = estimate(_config(args.stack_file))
        base = estimate(_config(args.base)) if args.base and args.base.exists() else None
    except (stack_settings.SettingsError, StackFileError) as error:
        print(bounded(f"Cannot estimate {args.stack_file}:\n{error}"), file=sys.stderr)
        return 2
    print(bounded(markdown(args.stack_file.name, this, base)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
