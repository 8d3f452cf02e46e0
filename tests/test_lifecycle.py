"""Changes after the first `up`: configuration A, then B, through the same program. What a user
would lose to a replacement (the cluster, its pools, the accounts, the mirror, the bucket) keeps
its name and identity, and nothing protected disappears (`pulumi up` would stop there)."""

import pytest

from tests.harness import Program, Resource, run_program
from tests.stacks import BOTH_ENGINES, TWO_RUNNERS, WITH_CI

# Type -> the inputs that name the resource in the cloud or force its replacement.
IDENTITY: dict[str, tuple[str, ...]] = {
    "gcp:container/cluster:Cluster": ("name", "location", "project"),
    "gcp:container/nodePool:NodePool": ("name", "cluster", "location", "nodeConfig"),
    "gcp:serviceaccount/account:Account": ("accountId", "project"),
    "gcp:artifactregistry/repository:Repository": ("repositoryId", "location", "mode"),
    "gcp:storage/bucket:Bucket": ("location", "project"),
    "gcp:iam/workloadIdentityPool:WorkloadIdentityPool": ("workloadIdentityPoolId",),
}
TRANSITIONS = {
    "more GPU nodes": {"gpu-runners:gpuPool": {"maxNodes": 3}},
    "a second runner": TWO_RUNNERS,
    "an arc runner beside the CML one": BOTH_ENGINES,
    "CI access added": WITH_CI,
    "two kube-dns replicas again": {"gpu-runners:cluster": {"singleDnsReplica": False}},
    "deletion protection on": {"gpu-runners:cluster": {"deletionProtection": True}},
    "a bigger system pool": {"gpu-runners:systemPool": {"maxNodes": 3}},
}


def identity(resource: Resource) -> dict:
    return {key: resource.inputs.get(key) for key in IDENTITY[resource.type]}


def lasting(program: Program) -> dict[str, Resource]:
    return {r.urn: r for r in program.resources if r.type in IDENTITY}


@pytest.fixture(scope="module")
def dev() -> Program:
    return run_program()


@pytest.mark.parametrize("change", TRANSITIONS)
def test_a_change_keeps_the_cluster_pools_accounts_mirror_and_bucket(dev, change):
    after = run_program(TRANSITIONS[change])
    before_lasting, after_lasting = lasting(dev), lasting(after)
    assert set(before_lasting) <= set(after_lasting)
    for urn, resource in before_lasting.items():
        assert identity(after_lasting[urn]) == identity(resource), resource.name


@pytest.mark.parametrize("change", TRANSITIONS)
def test_going_back_keeps_what_is_protected(change):
    # From B back to A: a protected resource B has must still be in A, or `pulumi up` stops.
    with_change = run_program({**WITH_CI, **TRANSITIONS[change]})
    without = {r.urn: r for r in run_program(WITH_CI).resources}
    lost = [r.name for r in with_change.resources if r.protect and r.urn not in without]
    assert lost == []
    assert all(without[r.urn].protect for r in with_change.resources if r.protect)
