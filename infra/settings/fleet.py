"""What no single runner shows: runners against their pools, and IDs unique in the project."""

from typing import Any

from infra import machines, messages
from infra.gcp import names, registry
from infra.settings.parse import RUNNERS_KEY
from infra.settings.runners import RunnerSettings, _runner_pool, quantity_value
from infra.settings.sections import CpuPoolSettings, GpuPoolSettings

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
    """The labels a pool's nodes carry, key -> values: the stack's (infra/gcp/cluster.py), and
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
