"""What no single runner shows: runners against their pools, and IDs unique in the project."""

from typing import Any

from infra import machines, messages
from infra.engines.keda import GITHUB_DEFAULT_LABELS
from infra.gcp import names, registry
from infra.settings.gpu_classes import GpuClass, class_named
from infra.settings.parse import RUNNERS_KEY
from infra.settings.runners import RunnerSettings, quantity_value
from infra.settings.sections import CpuPoolSettings

# Where GKE and Kubernetes keep their own node labels. A key under these that _pool_labels does
# not know is not refused: GKE sets more than these, and may add some.
_PLATFORM_LABEL_PREFIXES = (
    "cloud.google.com/",
    "kubernetes.io/",
    "node.kubernetes.io/",
    "topology.kubernetes.io/",
    "beta.kubernetes.io/",
)


def _cpu_pool_labels(pool: CpuPoolSettings, zones: tuple[str, ...]) -> dict[str, set[str]]:
    """The labels the CPU runner pool's nodes carry, key -> values: the stack's
    (infra/gcp/cluster.py), and those GKE sets (GKE docs: "Spot VMs", cloud.google.com/gke-spot;
    gke-nodepool, instance-type and zone on every node)."""
    labels = {key: {value} for key, value in pool.node_labels.items()}
    labels["cloud.google.com/gke-nodepool"] = {"cpu"}
    labels["node.kubernetes.io/instance-type"] = {pool.machine_type}
    labels["topology.kubernetes.io/zone"] = set(zones)
    labels["cloud.google.com/gke-spot"] = {"true"} if pool.spot else set()
    labels["kubernetes.io/arch"] = {"amd64"}
    labels["kubernetes.io/os"] = {"linux"}
    return labels


def _class_labels(gpu_class: GpuClass) -> dict[str, set[str]]:
    """The labels the nodes of any of a GPU class's pools carry, key -> values (a runner's
    nodeSelector may not name the ones its ComputeClass governs, infra/settings/runners.py)."""
    settings = gpu_class.settings
    labels = {key: {value} for key, value in settings.node_labels.items()}
    labels["cloud.google.com/gke-nodepool"] = {pool.name for pool in gpu_class.node_pools}
    labels["topology.kubernetes.io/zone"] = set(settings.zones)
    labels["kubernetes.io/arch"] = {"amd64"}
    labels["kubernetes.io/os"] = {"linux"}
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
    classes = {c.name: c for c in parsed["gpuClasses"]}
    held_gpus: dict[str, int] = {}
    full: set[str] = set()
    for index, runner in enumerate(runners):
        gpu_class = class_named(classes, runner.gpu_pool)
        if not runner.gpus or runner.scaling_mode != "always" or gpu_class is None:
            continue
        name, settings = gpu_class.name, gpu_class.settings
        shared = settings.time_sharing_clients_per_gpu or 1
        capacity = settings.max_nodes * settings.gpu_slots_per_node
        held_gpus[name] = held_gpus.get(name, 0) + runner.replica_count * runner.gpus
        if held_gpus[name] > capacity and name not in full:
            full.add(name)
            sharing = f" times {shared} pods per GPU" if shared > 1 else ""
            problems.append(
                f"{namespace}:{RUNNERS_KEY}[{index}].replicas = {runner.replica_count}: "
                f"always-on runners of GPU class {name!r} would hold {held_gpus[name]} GPUs, "
                f"and its first pool has room for {capacity} ({gpu_class.key}.maxNodes "
                f"{settings.max_nodes} times {settings.gpus_per_node} per node{sharing}); the "
                "rest would wait for good, or for the fallback. Allowed: fewer replicas, or a "
                f"larger {gpu_class.key}.maxNodes"
            )
    system, cpu = parsed.get("systemPool"), parsed.get("cpuPool")
    cpu_labels = _cpu_pool_labels(cpu, cpu.zones or system.zones) if cpu and system else None
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
        gpu_class = class_named(classes, runner.gpu_pool)
        if runner.gpus:
            key = gpu_class.key if gpu_class else None
            labels = _class_labels(gpu_class) if gpu_class else None
            own = f"{key}.labels, gpu"
        else:
            key, labels, own = "cpuPool", cpu_labels, "cpuPool.labels, gpu, "
            own += "cloud.google.com/gke-spot, node.kubernetes.io/instance-type"
        missing = [f"{k}={v}" for k, v in selector.items() if labels and not _carries(labels, k, v)]
        if missing:
            problems.append(
                f"{namespace}:{RUNNERS_KEY}[{index}].nodeSelector = {messages.show(selector)}: "
                f"the {key} nodes it must land on carry no {', '.join(missing)}, so the "
                f"pod would never schedule; allowed: labels of {key} ({own}, and GKE's own: "
                "cloud.google.com/gke-nodepool, topology.kubernetes.io/zone)"
            )
    problems += _label_problems(namespace, runners)
    return problems


def _own_labels(runner: RunnerSettings) -> set[str]:
    """The labels that tell a runner apart: GitHub compares them in any case, and gives every
    self-hosted runner its default labels, which tell none apart."""
    if runner.platform != "github":
        return set(runner.labels)
    return {label.lower() for label in runner.labels} - set(GITHUB_DEFAULT_LABELS)


def _label_problems(namespace: str, runners: list[RunnerSettings]) -> list[str]:
    """Runners a job's labels cannot tell apart. A job asks for labels, and every runner of its
    repository that carries all of them may take it (GitHub and GitLab match labels, not
    names); KEDA's scaler counts the job for each such runner and starts one of each, and all
    but one idle until they time out (docs/scaling.md)."""
    problems = []
    defaults = ", ".join(GITHUB_DEFAULT_LABELS)
    for later, runner in enumerate(runners):
        key = f"{namespace}:{RUNNERS_KEY}[{later}].labels = {messages.show(runner.labels)}"
        own = _own_labels(runner)
        if not own:
            problems.append(
                f"{key}: only GitHub's default labels ({defaults}), which every self-hosted "
                "runner carries, so a job for any runner would start this one; allowed: a "
                "label of its own besides them"
            )
            continue
        for earlier, other in enumerate(runners[:later]):
            shared = own & _own_labels(other)
            if shared and runner.repository.lower() == other.repository.lower():
                problems.append(
                    f"{key}: runners[{earlier}] ({other.name}) on the same repository carries "
                    f"{', '.join(sorted(shared))} too, so a job that asks for "
                    f"{'it' if len(shared) == 1 else 'them'} would start both runners and run "
                    "on either; allowed: labels no other runner of the repository carries "
                    f"(GitHub's defaults {defaults} aside)"
                )
    return problems


def _project_unique_ids(
    sections: dict[str, Any], runners: list[RunnerSettings]
) -> dict[str, names.ProjectId]:
    """The IDs the stack takes in its project: none off Google Cloud; on a GKE cluster it does
    not make, the runner accounts, Workload Identity members and CI access."""
    trusted = any(runner.trust == "trusted" for runner in runners)
    existing, ci = sections["existingCluster"], sections["ci"]
    if existing is not None:
        if existing.gke is None:
            return {}
        ids = names.runner_identity_ids(
            "existingCluster.gke.name", existing.gke.name, [r.name for r in runners], trusted
        )
        return ids | (names.ci_access_ids(ci.pool_id) if ci is not None and ci.enabled else {})
    cluster = sections["cluster"]
    if cluster is None or ci is None:
        return {}  # a section the stack reports as wrong
    return names.project_unique_ids(
        cluster.name,
        cluster.location,
        cluster.region,
        [*registry.UPSTREAMS, registry.PYPI],
        ci.pool_id if ci.enabled else None,
        [runner.name for runner in runners],
        any(runner.trust == "trusted" for runner in runners),
    )
