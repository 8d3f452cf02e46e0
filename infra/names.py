"""The IDs of a stack's resources that must be unique in their Google Cloud project.

Every one of them derives from `cluster.name` (and `ci.poolId` for CI access), so two stacks
with different cluster names can share a project. The components name their resources with
these functions, and the settings refuse a second stack file of the same project whose IDs
would collide (infra/settings.py), before anything is created.
"""

from collections.abc import Iterable


def service_account_id(base: str, suffix: str) -> str:
    """A service account ID (6 to 30 characters) made from a resource name and a suffix."""
    head = base[: 29 - len(suffix)].rstrip("-")
    return f"{head}-{suffix}"


def node_account_id(cluster_name: str) -> str:
    return service_account_id(cluster_name, "nodes")


def runner_account_id(cluster_name: str) -> str:
    return service_account_id(cluster_name, "runner")


def deployer_account_id(pool_id: str) -> str:
    return service_account_id(pool_id, "deployer")


def repository_id(cluster_name: str, upstream: str) -> str:
    """An image mirror repository's ID (at most 63 characters: a cluster name has 40)."""
    return f"{cluster_name}-{upstream}"


def project_unique_ids(
    cluster_name: str,
    cluster_location: str,
    region: str,
    upstreams: Iterable[str],
    ci_pool_id: str | None,
) -> dict[str, tuple[str, str]]:
    """Each project-unique ID a stack takes -> (the config key it derives from, what it is)."""
    ids = {
        f"clusters/{cluster_location}/{cluster_name}": ("cluster.name", f"cluster {cluster_name}"),
        **{
            f"serviceAccounts/{account}": ("cluster.name", f"service account {account}")
            for account in (node_account_id(cluster_name), runner_account_id(cluster_name))
        },
        **{
            f"repositories/{region}/{repository}": (
                "cluster.name",
                f"Artifact Registry repository {repository}",
            )
            for repository in (repository_id(cluster_name, u) for u in upstreams)
        },
    }
    if ci_pool_id:
        deployer = deployer_account_id(ci_pool_id)
        ids[f"workloadIdentityPools/{ci_pool_id}"] = (
            "ci.poolId",
            f"Workload Identity pool {ci_pool_id}",
        )
        ids[f"serviceAccounts/{deployer}"] = ("ci.poolId", f"service account {deployer}")
    return ids
