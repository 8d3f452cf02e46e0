"""Changes after the first `up`: configuration A, then B, through the same program. What a user
would lose to a replacement (the cluster, its pools, the accounts, the mirror, the bucket) keeps
its name and identity, and nothing protected disappears (`pulumi up` would stop there)."""

import json
import re

import pytest

from infra.gcp.registry import UPSTREAMS
from tests.harness import REPO, Program, Resource, reveal, run_program
from tests.stacks import BOTH_ENGINES, TWO_RUNNERS, WITH_CI

LIFECYCLE = (REPO / "docs" / "lifecycle.md").read_text()
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


def protected_lost(before: Program, after: Program) -> set[str]:
    """Protected resources of `before` that `after` no longer has: `pulumi up` stops at them."""
    kept = {r.urn for r in after.resources}
    return {r.name for r in before.resources if r.protect and r.urn not in kept}


@pytest.mark.parametrize("change", [c for c in TRANSITIONS if c != "CI access added"])
def test_going_back_keeps_what_is_protected(change):
    # From B back to A, on a stack with CI access, whose parts are protected.
    with_change = run_program({**WITH_CI, **TRANSITIONS[change]})
    without = run_program(WITH_CI)
    assert protected_lost(with_change, without) == set()
    protected = {r.urn for r in without.resources if r.protect}
    assert {r.urn for r in with_change.resources if r.protect} <= protected


def test_removing_ci_access_meets_protected_resources_as_the_lifecycle_page_says(dev):
    lost = protected_lost(run_program(WITH_CI), dev)
    # CI's access, its grants on the node and runner accounts and on the mirror.
    assert {"ci", "ci-grant-node-roles", "gke-nodes-user-0", "runner-identity-admin-0"} <= lost
    assert {f"images-{upstream}-admin-0" for upstream in UPSTREAMS} <= lost
    # Without CI nothing is protected, so unprotecting all of it loses nothing the stack keeps.
    assert not any(r.protect for r in dev.resources)
    row = next(line for line in LIFECYCLE.splitlines() if line.startswith("| Remove CI access"))
    assert "pulumi state unprotect --all" in row


# Node settings a node pool updates in place, left out of the comparison:
# terraform-provider-google's node_config.go sends KubeletConfig, Labels and Taints with
# NodePools.Update (none is ForceNew), and GKE applies labels and taints "without re-creating
# the node pool" ("Update existing node pools").
IN_PLACE_NODE_CONFIG = ("kubeletConfig", "labels", "taints")


def replacing(inputs: dict) -> dict:
    """The inputs of a recorded resource whose change replaces it."""
    node_config = inputs.get("nodeConfig")
    if isinstance(node_config, dict):
        kept = {k: v for k, v in node_config.items() if k not in IN_PLACE_NODE_CONFIG}
        return {**inputs, "nodeConfig": kept}
    return inputs


def upgrade(snapshot: str, overrides: dict) -> tuple[list[dict], set[str], set[str]]:
    """An earlier version's resources, and which of them today's program replaces or drops."""
    previous = json.loads((REPO / "tests/data/upgrade" / snapshot).read_text())
    now = {r.urn: r for r in run_program(overrides).resources}
    replaced, removed = set(), set()
    for old in previous:
        name, new = old["urn"].rsplit("::", 1)[1], now.get(old["urn"])
        keys = set(old["inputs"]) | ({"datapathProvider"} & set(new.inputs) if new else set())
        if new is None:
            removed.add(name)
        elif replacing({key: reveal(new.inputs.get(key)) for key in keys}) != replacing(
            {key: old["inputs"].get(key) for key in keys}
        ):
            replaced.add(name)
    return previous, replaced, removed


def test_upgrading_from_4bd629f_meets_what_the_upgrade_notes_say():
    previous, replaced, removed = upgrade(
        "4bd629f-dev-with-ci.json",
        {**WITH_CI, "gpu-runners:cluster": {"dataplaneV2": False}},
    )
    # The notes: repositories named after the cluster (and the grants on them), the node
    # account's four older roles gone, CI's conditional grant, whose condition changed, and
    # the grants that let CI act as the deployer, which now name the default branch.
    mirror = {f"images-{u}{grant}" for u in UPSTREAMS for grant in ("", "-nodes", "-admin-0")}
    deploy = {"ci-github-may-deploy", "ci-gitlab-may-deploy"}
    # And, from f902498 on (the test below), the runner account's grant on the bucket.
    assert replaced == mirror | {"ci-grant-node-roles"} | deploy | {"runner-identity-dvc-objects"}
    assert removed == {
        "gke-nodes-logging.logWriter",
        "gke-nodes-monitoring.metricWriter",
        "gke-nodes-monitoring.viewer",
        "gke-nodes-stackdriver.resourceMetadata.writer",
    }
    # Pulumi refuses to replace or delete what was protected: the notes unprotect exactly that.
    blocked = {
        old["urn"]
        for old in previous
        if old["protect"] and old["urn"].rsplit("::", 1)[1] in replaced | removed
    }
    notes = LIFECYCLE[LIFECYCLE.index("## Upgrading to 0.2.0, from 0.1") :]
    unprotected = re.findall(r"pulumi state unprotect '([^']+)'", notes)
    assert {urn.replace("urn:pulumi:dev::", "urn:pulumi:<stack>::") for urn in blocked} == set(
        unprotected
    )


@pytest.mark.parametrize("dataplane_v2", [False, True])
def test_upgrading_from_f902498_meets_what_the_upgrade_notes_say(dataplane_v2):
    cluster = {"gpu-runners:cluster": {"dataplaneV2": dataplane_v2}}
    previous, replaced, removed = upgrade("f902498-dev-with-ci.json", {**WITH_CI, **cluster})
    # The one runner account becomes the reader: its grant on the bucket changes role. On
    # Dataplane V2 the cluster is replaced too (so every pool and grant on it with it), which
    # the notes say how to avoid.
    assert replaced == {"runner-identity-dvc-objects"} | ({"gke"} if dataplane_v2 else set())
    assert removed == set()
    assert not any(old["protect"] for old in previous if old["urn"].endswith("::gke"))
    notes = LIFECYCLE[LIFECYCLE.index("## Upgrading to 0.3.0, from 0.2") :]
    assert "pulumi config set --path cluster.dataplaneV2 false" in notes
    assert "runner-identity-dvc-objects" in notes


TRUSTED = {"gpu-runners:runners": [{"name": "cml-runner", "trust": "trusted"}]}


def test_removing_the_last_trusted_runner_meets_the_protected_grant_the_lifecycle_page_names():
    with_trusted = run_program({**WITH_CI, **TRUSTED})
    lost = protected_lost(with_trusted, run_program(WITH_CI))
    assert lost == {"runner-identity-trusted-admin-0"}
    (grant,) = [r for r in with_trusted.resources if r.name in lost]
    urns = re.findall(r"pulumi state unprotect '([^']+)'", LIFECYCLE)
    assert grant.urn.replace("urn:pulumi:dev::", "urn:pulumi:<stack>::") in urns


def test_upgrading_from_ec66a1f_keeps_the_gpu_pool_and_adds_its_fallback():
    previous, replaced, removed = upgrade("ec66a1f-dev-with-ci.json", WITH_CI)
    # The pool joins its class in place (a label and a taint); nothing else changes.
    assert replaced == set()
    assert removed == set()
    now = run_program(WITH_CI)
    before = {old["urn"] for old in previous}
    added = {r.name for r in now.resources if r.type.startswith("gcp:") and r.urn not in before}
    # The dev stack's Spot class gains its on-demand fallback, which starts from zero nodes,
    # and (since 0.5.0, below) the package cache.
    assert added == {"gke-gpu-on-demand"} | PACKAGE_CACHE
    notes = (REPO / "docs" / "gpu-classes.md").read_text()
    assert "gets the new pool `gpu-on-demand`" in notes
    assert "gpuPool.onDemandFallback: false" in notes


# The package cache: its repository, the runner account's read grant, CI's admin grant.
PACKAGE_CACHE = {"packages", "packages-runner", "packages-admin-0"}


def test_upgrading_from_0_4_0_adds_the_package_cache_and_changes_nothing_else():
    previous, replaced, removed = upgrade("93b50de-dev-with-ci.json", WITH_CI)
    assert (replaced, removed) == (set(), set())
    now = run_program(WITH_CI)
    before = {old["urn"] for old in previous}
    added = [r for r in now.resources if r.type.startswith("gcp:") and r.urn not in before]
    assert {r.name for r in added} == PACKAGE_CACHE
    # Protected with CI access, as the mirror: CI could not create the repository again.
    assert {r.name for r in added if r.protect} == {"packages", "packages-admin-0"}
    section = LIFECYCLE[LIFECYCLE.index("## Upgrading to 0.5.0") :]
    assert "`mlops-kubernetes-pypi`" in section.split("\n## ")[0]
