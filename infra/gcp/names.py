"""The IDs of a stack's resources that must be unique in their Google Cloud project.

Every one of them derives from `cluster.name`, the runners' names, and `ci.poolId` for CI
access, so two stacks that differ in those can share a project. The components name their
resources with these functions, and the settings refuse a second stack file of the same project
whose IDs would collide (infra/settings/), before anything is created.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def service_account_id(base: str, suffix: str) -> str:
    """A service account ID (6 to 30 characters) made from a resource name and a suffix."""
    head = base[: 29 - len(suffix)].rstrip("-")
    return f"{head}-{suffix}"


def node_account_id(cluster_name: str) -> str:
    return service_account_id(cluster_name, "nodes")


def runner_account_id(cluster_name: str) -> str:
    return service_account_id(cluster_name, "runner")


def trusted_runner_account_id(cluster_name: str) -> str:
    return service_account_id(cluster_name, "trusted")


def deployer_account_id(pool_id: str) -> str:
    return service_account_id(pool_id, "deployer")


def previewer_account_id(pool_id: str) -> str:
    return service_account_id(pool_id, "previewer")


def repository_id(cluster_name: str, upstream: str) -> str:
    """An image mirror or package cache repository's ID (at most 63 characters: a cluster
    name has 40)."""
    return f"{cluster_name}-{upstream}"


@dataclass(frozen=True)
class ProjectId:
    """Where a project-unique ID comes from: a config key and its value."""

    key: str
    """The config key, without the namespace: `cluster.name`, `runners[0].name`."""
    value: str
    what: str
    """What takes the ID, for a message: `service account mlops-kubernetes-nodes`."""


def runner_identity_ids(
    name_key: str, cluster_name: str, runner_names: Sequence[str], any_trusted_runner: bool
) -> dict[str, ProjectId]:
    """The runner accounts a stack takes (named after the cluster, whose name `name_key` sets),
    and the Workload Identity members it lets act as them."""
    ids = {}
    accounts = [runner_account_id(cluster_name)]
    if any_trusted_runner:
        accounts.append(trusted_runner_account_id(cluster_name))
    for account in accounts:
        ids[f"serviceAccounts/{account}"] = ProjectId(
            name_key, cluster_name, f"service account {account}"
        )
    # A runner's namespace and Kubernetes service account are both named after it, and GKE
    # gives every cluster of a project one Workload Identity pool, <project>.svc.id.goog, in
    # which namespace/account is the identity: the same pair in another stack's cluster could
    # act as this stack's runner account (GKE docs, Workload Identity Federation for GKE,
    # "identity sameness").
    for index, runner in enumerate(runner_names):
        ids[f"workloadIdentity/{runner}/{runner}"] = ProjectId(
            f"runners[{index}].name", runner, f"Workload Identity member [{runner}/{runner}]"
        )
    return ids


def project_unique_ids(
    cluster_name: str,
    cluster_location: str,
    region: str,
    upstreams: Iterable[str],
    ci_pool_id: str | None,
    runner_names: Sequence[str],
    any_trusted_runner: bool,
) -> dict[str, ProjectId]:
    """Each ID a stack takes that no other stack of its project may take."""
    cluster = ("cluster.name", cluster_name)
    ids = {
        f"clusters/{cluster_location}/{cluster_name}": ProjectId(
            *cluster, f"cluster {cluster_name}"
        )
    }
    node_account = node_account_id(cluster_name)
    ids[f"serviceAccounts/{node_account}"] = ProjectId(*cluster, f"service account {node_account}")
    ids |= runner_identity_ids("cluster.name", cluster_name, runner_names, any_trusted_runner)
    for upstream in upstreams:
        repository = repository_id(cluster_name, upstream)
        ids[f"repositories/{region}/{repository}"] = ProjectId(
            *cluster, f"Artifact Registry repository {repository}"
        )
    if ci_pool_id:
        ids |= ci_access_ids(ci_pool_id)
    return ids


def ci_access_ids(pool_id: str) -> dict[str, ProjectId]:
    """The Workload Identity pool and the two accounts CI access takes."""
    pool = ("ci.poolId", pool_id)
    ids = {
        f"workloadIdentityPools/{pool_id}": ProjectId(*pool, f"Workload Identity pool {pool_id}")
    }
    for account in (deployer_account_id(pool_id), previewer_account_id(pool_id)):
        ids[f"serviceAccounts/{account}"] = ProjectId(*pool, f"service account {account}")
    return ids
