"""`existingCluster`: runners on a cluster the stack does not make, reached through a
kubeconfig context, and how that cluster's nodes are labelled."""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, Field

from infra.settings.sections import _Section
from infra.settings.validation import (
    ClusterName,
    Location,
    _invalid,
    _label_problem,
    region_of,
)

EXISTING_CLUSTER_KEY = "existingCluster"
# Node labels that mark a GPU node: the guide's, set by hand, and the one NVIDIA's GPU
# Operator sets through GPU Feature Discovery on every node with a GPU (NVIDIA GPU Operator
# docs, "GPU Feature Discovery": nvidia.com/gpu.present=true).
GPU_NODE_LABELS = ({"gpu": "true"}, {"nvidia.com/gpu.present": "true"})
# GKE labels every GPU node with its accelerator type ("Run GPUs in Standard node pools").
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
# The sections of the GKE cluster the stack makes, which mean nothing on another cluster.
MADE_CLUSTER_SECTIONS = ("cluster", "systemPool", "gpuPool", "gpuPools", "cpuPool")
# What needs GKE, on a cluster the stack does not make too: the DVC bucket, reached through
# Workload Identity; CI access, which signs in to the cluster with no stored key through
# Workload Identity Federation and `gcloud container clusters get-credentials`.
GKE_ONLY_SECTIONS = ("dvcRemote", "ci")


def _check_node_labels(labels: dict[str, str] | None) -> dict[str, str] | None:
    for key, value in (labels or {}).items():
        problem = _label_problem(key, value)
        if problem:
            raise _invalid(problem)
    return labels


def _check_gpu_node_labels(labels: dict[str, str] | None) -> dict[str, str] | None:
    _check_node_labels(labels)
    marked = labels is not None and (
        GKE_ACCELERATOR_LABEL in labels
        or any(marks.items() <= labels.items() for marks in GPU_NODE_LABELS)
    )
    if labels is not None and not marked:
        raise _invalid(
            'selects no GPU node label; allowed: {gpu: "true"} (the guide\'s, set with '
            '`kubectl label nodes <node> gpu=true`), {nvidia.com/gpu.present: "true"} (set '
            "by NVIDIA's GPU Operator) or {cloud.google.com/gke-accelerator: <type>} (set by "
            "GKE), with more labels if you like"
        )
    return labels


NodeLabels = Annotated[dict[str, str], AfterValidator(_check_node_labels)]


class ExistingGkeSettings(_Section):
    """The existing cluster is GKE with Workload Identity, in `gcp:project`: runner pods may
    act as Google accounts the stack makes (`existingCluster.gke`)."""

    name: ClusterName
    """The cluster's name, which names the runner accounts and the DVC bucket."""
    location: Location
    """The cluster's zone or region; the DVC bucket goes in its region."""

    @property
    def region(self) -> str:
        return region_of(self.location)


class ExistingClusterSettings(_Section):
    """A cluster the stack does not make (`existingCluster`)."""

    context: Annotated[str | None, Field(min_length=1)] = None
    """The kubeconfig context; unset: the kubeconfig's current context when the stack runs."""
    gke: ExistingGkeSettings | None = None
    system_node_labels: NodeLabels = Field(default_factory=dict)
    """Where the controllers (KEDA, ARC, GitLab's managers) run; empty: any node."""
    cpu_node_labels: NodeLabels = Field(default_factory=dict)
    """Where CPU runners' pods run; empty: any node."""
    gpu_node_labels: Annotated[dict[str, str] | None, AfterValidator(_check_gpu_node_labels)] = None
    """How the cluster labels its GPU nodes; unset: it has none, and GPU runners are refused."""


def kubeconfig_paths() -> list[Path]:
    """Where kubectl and the Kubernetes provider read the kubeconfig: $KUBECONFIG's files, or
    ~/.kube/config."""
    listed = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return [Path(p) for p in listed] if listed else [Path.home() / ".kube" / "config"]


def _read_kubeconfigs(paths: Sequence[Path]) -> tuple[list[str], str | None, list[str]]:
    """The contexts the kubeconfig files define, the current one (the first file that names
    one wins, as kubectl merges them), and what could not be read."""
    contexts: list[str] = []
    current = None
    unreadable = []
    for path in paths:
        if not path.is_file():
            continue
        try:
            text = path.read_text()
        except OSError as error:
            unreadable.append(f"{path} cannot be read ({error.strerror})")
            continue
        try:
            config: Any = yaml.safe_load(text) or {}  # an empty file is an empty kubeconfig
        except (UnicodeDecodeError, yaml.YAMLError):
            config = None
        if not isinstance(config, dict):
            unreadable.append(f"{path} is not a kubeconfig YAML file")
            continue
        for entry in config.get("contexts") or []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                contexts.append(entry["name"])
        if current is None and isinstance(config.get("current-context"), str):
            current = config["current-context"] or None
    return contexts, current, unreadable


def kube_context(namespace: str, existing: ExistingClusterSettings) -> tuple[str | None, list[str]]:
    """The context the stack's Kubernetes provider uses (the configured one, or the
    kubeconfig's current one), and what is wrong with it: it must be one the kubeconfig has.
    Names the files read, never their credentials."""
    paths = kubeconfig_paths()
    contexts, current, unreadable = _read_kubeconfigs(paths)
    context = existing.context if existing.context is not None else current
    where = os.pathsep.join(str(p) for p in paths)
    key = f"{namespace}:{EXISTING_CLUSTER_KEY}.context"
    if unreadable:
        return context, [f"{key}: the kubeconfig {'; '.join(unreadable)}"]
    if not contexts:
        return context, [
            f"{key}: no kubeconfig with a context at {where} ($KUBECONFIG, or ~/.kube/config); "
            "allowed: a context of the cluster, once it exists (`kind create cluster` writes "
            "one; `gcloud container clusters get-credentials` for GKE)"
        ]
    if existing.context is None and current not in contexts:
        why = f"names the context {current!r}, which it lacks" if current else "names none"
        return context, [
            f"{key} is not set, so the kubeconfig's current context is used, and the kubeconfig "
            f"({where}) {why}; allowed: one of {', '.join(contexts)}"
        ]
    if existing.context is not None and existing.context not in contexts:
        return context, [
            f"{key} = {existing.context!r}: the kubeconfig ({where}) has no such context; "
            f"allowed: {', '.join(contexts)}"
        ]
    return context, []


def gke_section_problems(namespace: str, given: dict[str, Any]) -> list[str]:
    """Settings of the GKE cluster the stack makes, given beside `existingCluster`, and those
    that need GKE on a cluster that is not."""
    existing = given.get(EXISTING_CLUSTER_KEY)
    gke = isinstance(existing, dict) and existing.get("gke") is not None
    why = {
        "dvcRemote": "the DVC bucket is made and reached through Workload Identity on GKE only "
        "(existingCluster.gke)",
        "ci": "CI signs in to the cluster without a stored key on GKE only (existingCluster.gke): "
        "elsewhere deploy from a machine whose kubeconfig reaches the cluster",
    }
    problems = []
    for key in (*MADE_CLUSTER_SECTIONS, *(() if gke else GKE_ONLY_SECTIONS)):
        if given.get(key) is not None:
            reason = why.get(
                key,
                f"a setting of the GKE cluster the stack makes, and {EXISTING_CLUSTER_KEY} "
                "targets one it does not make",
            )
            problems.append(
                f"{namespace}:{key}: {reason}; allowed: remove it (`pulumi config rm {key}`)"
            )
    return problems


def gke_context(project: str, gke: ExistingGkeSettings) -> str:
    """The context `gcloud container clusters get-credentials` writes for the cluster (gcloud,
    api_lib/container/util.py, ClusterConfig.KUBECONTEXT_FORMAT)."""
    return f"gke_{project}_{gke.location}_{gke.name}"


def ci_context_problems(
    namespace: str, project: str | None, existing: ExistingClusterSettings | None, with_ci: bool
) -> list[str]:
    """With CI access, the stack's context must be the one CI's credentials step writes, the
    only context CI's kubeconfig has."""
    if not (with_ci and project and existing is not None and existing.gke is not None):
        return []
    expected = gke_context(project, existing.gke)
    if existing.context == expected:
        return []
    given = "is not set" if existing.context is None else f"= {existing.context!r}"
    return [
        f"{namespace}:{EXISTING_CLUSTER_KEY}.context {given}: with CI access, CI signs in with "
        f"`gcloud container clusters get-credentials {existing.gke.name} --location "
        f"{existing.gke.location} --project {project}`, which names the context {expected!r}, "
        f"the only one CI's kubeconfig has; allowed: {expected!r}"
    ]
