"""The rights each step of a stack's life needs, against the rights the README documents and
the code grants: the person's first `pulumi up` (and `destroy`), and CI's `up` after its own
`destroy --exclude-protected`, which must create again everything that destroy removed."""

import re

import pytest

from infra.gcp import apis, ci, cluster, identity, registry
from infra.gcp.ci import GRANTABLE_ROLES_CONDITION
from tests.harness import Program, Resource, run_program
from tests.stacks import SHAPES, WITH_CI
from tests.test_existing_cluster import ON_EXISTING_GKE

# Google Cloud resource type -> the project roles whoever manages it through its whole life
# (create, update, read after each change, delete) needs. Kubernetes objects are reached
# through the cluster's API, as Container Admin.
NEEDS: dict[str, set[str]] = {
    "gcp:projects/service:Service": {"roles/serviceusage.serviceUsageAdmin"},
    "gcp:serviceaccount/account:Account": {"roles/iam.serviceAccountAdmin"},
    "gcp:serviceaccount/iAMMember:IAMMember": {"roles/iam.serviceAccountAdmin"},
    "gcp:projects/iAMMember:IAMMember": {"roles/resourcemanager.projectIamAdmin"},
    # Pools run as the node account (actAs); the provider lists their instance groups after
    # each change and on each read (infra/gcp/cluster.py, COMPUTE_READS).
    "gcp:container/cluster:Cluster": {
        "roles/container.admin",
        "roles/compute.viewer",
        "roles/iam.serviceAccountUser",
    },
    "gcp:container/nodePool:NodePool": {
        "roles/container.admin",
        "roles/compute.viewer",
        "roles/iam.serviceAccountUser",
    },
    "gcp:storage/bucket:Bucket": {"roles/storage.admin"},
    "gcp:storage/bucketIAMMember:BucketIAMMember": {"roles/storage.admin"},
    "gcp:artifactregistry/repository:Repository": {"roles/artifactregistry.admin"},
    "gcp:artifactregistry/repositoryIamMember:RepositoryIamMember": {
        "roles/artifactregistry.admin"
    },
    "gcp:iam/workloadIdentityPool:WorkloadIdentityPool": {"roles/iam.workloadIdentityPoolAdmin"},
    "gcp:iam/workloadIdentityPoolProvider:WorkloadIdentityPoolProvider": {
        "roles/iam.workloadIdentityPoolAdmin"
    },
    "gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember": {"roles/cloudkms.admin"},
    "pulumi:providers:kubernetes": {"roles/container.admin"},
}
# Not Google Cloud: the components themselves, GitLab's API (the runner token's rights), and
# the wait after enabling APIs, which runs on the deploying machine.
NOT_GOOGLE = ("gpu-runners:", "pulumi:providers:gitlab", "gitlab:", "command:local:Command")
DEPLOYER = "serviceAccount:gpu-runners-ci-deployer@"


def needs(resource: Resource) -> set[str]:
    if resource.type.startswith("kubernetes:"):
        return {"roles/container.admin"}
    return NEEDS[resource.type]


def google_resources(program: Program) -> list[Resource]:
    return [r for r in program.resources if not r.type.startswith(NOT_GOOGLE)]


@pytest.fixture(scope="module")
def programs() -> dict[str, Program]:
    # With CI access: each shape's resources, and CI's own.
    shapes = {
        **{f"{name}+ci": {**shape, **WITH_CI} for name, shape in SHAPES.items()},
        "existing-gke+ci": {**ON_EXISTING_GKE, **WITH_CI},
    }
    return {name: run_program(shape) for name, shape in shapes.items()}


def test_the_documented_first_run_roles_are_exactly_what_the_resources_need(programs):
    documented = {
        role for module in (apis, cluster, identity, ci, registry) for role in module.DEPLOY_ROLES
    }
    needed = {
        role
        for program in programs.values()
        for resource in google_resources(program)
        for role in needs(resource)
    }
    assert needed == documented


def kept_by_a_ci_destroy(program: Program) -> set[str]:
    """URNs `pulumi destroy --exclude-protected` keeps: protected resources and everything they
    depend on, parents and providers included (pulumi/pulumi, destroy.go
    getProtectedExcludes, TransitiveDependenciesOf)."""
    by_urn = {r.urn: r for r in program.resources}
    kept: set[str] = set()
    pending = [r.urn for r in program.resources if r.protect]
    while pending:
        urn = pending.pop()
        if urn in kept or urn not in by_urn:
            continue
        kept.add(urn)
        resource = by_urn[urn]
        pending += [*resource.depends_on, resource.parent, resource.provider.split("::id")[0]]
    return kept


def deployer_grants_on(program: Program, role: str) -> set[str]:
    """What the deployer holds `role` on, through grants a CI destroy keeps."""
    kept = kept_by_a_ci_destroy(program)
    return {
        r.inputs.get("serviceAccountId") or r.inputs["repository"]
        for r in program.resources
        if r.type.endswith("IAMMember") or r.type.endswith("IamMember")
        if r.inputs.get("member", "").startswith(DEPLOYER)
        and r.inputs["role"] == role
        and r.urn in kept
    }


def deployer_project_roles(program: Program) -> set[str]:
    """The project roles the deployer holds unconditionally, through grants a CI destroy
    keeps."""
    kept = kept_by_a_ci_destroy(program)
    return {
        r.inputs["role"]
        for r in program.of_type("gcp:projects/iAMMember:IAMMember")
        if r.inputs["member"].startswith(DEPLOYER) and not r.inputs.get("condition")
        if r.urn in kept
    }


def deployer_is_cluster_admin_by_rbac(program: Program) -> bool:
    """Whether a kept ClusterRoleBinding makes the deployer cluster-admin in the cluster."""
    kept = kept_by_a_ci_destroy(program)
    return any(
        r.inputs["roleRef"]["name"] == "cluster-admin"
        and any(
            s["name"].startswith(DEPLOYER.removeprefix("serviceAccount:"))
            for s in r.inputs["subjects"]
        )
        for r in program.of_type("kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding")
        if r.urn in kept
    )


def account_name(email: str) -> str:
    return f"projects/{email.split('@')[1].split('.')[0]}/serviceAccounts/{email}"


def ci_can_create(program: Program, resource: Resource) -> bool:
    """Whether the deployer may create this resource again after its own destroy."""
    inputs = resource.inputs
    roles = deployer_project_roles(program)
    match resource.type:
        case "gcp:container/cluster:Cluster" | "gcp:container/nodePool:NodePool":
            account = inputs["nodeConfig"]["serviceAccount"]
            return {"roles/container.admin", "roles/compute.viewer"} <= roles and account_name(
                account
            ) in deployer_grants_on(program, "roles/iam.serviceAccountUser")
        case "gcp:projects/iAMMember:IAMMember":
            grantable = re.findall(r"'(roles/[^']+)'", GRANTABLE_ROLES_CONDITION)
            return inputs["role"] in grantable
        case "gcp:serviceaccount/iAMMember:IAMMember":
            return inputs["serviceAccountId"] in deployer_grants_on(
                program, "roles/iam.serviceAccountAdmin"
            )
        case "gcp:storage/bucket:Bucket" | "gcp:storage/bucketIAMMember:BucketIAMMember":
            return "roles/storage.admin" in roles
        case "gcp:artifactregistry/repositoryIamMember:RepositoryIamMember":
            return inputs["repository"] in deployer_grants_on(
                program, "roles/artifactregistry.admin"
            )
        case "pulumi:providers:kubernetes":
            return True  # no call to Google
        case kubernetes if kubernetes.startswith("kubernetes:"):
            # GKE lets a request through when IAM or RBAC allows it; signing in at all takes
            # container.clusters.get.
            return "roles/container.admin" in roles or (
                "roles/container.clusterViewer" in roles
                and deployer_is_cluster_admin_by_rbac(program)
            )
    # A service account, a repository, the CI pool, an API: a right on the project, or an
    # API CI cannot enable. (The stack's APIs are kept by CI's destroy: the CI access depends
    # on them.)
    return False


@pytest.mark.parametrize("shape", [f"{name}+ci" for name in SHAPES])
def test_ci_can_create_again_everything_its_own_destroy_removes(programs, shape):
    program = programs[shape]
    kept = kept_by_a_ci_destroy(program)
    removed = [r for r in google_resources(program) if r.urn not in kept]
    assert removed, "a CI destroy removes the cluster at least"
    assert {r.type for r in removed} >= {
        "gcp:container/cluster:Cluster",
        "gcp:container/nodePool:NodePool",
        "gcp:storage/bucket:Bucket",
    }
    assert [r.name for r in removed if not ci_can_create(program, r)] == []


def test_on_an_existing_gke_cluster_ci_creates_again_what_its_destroy_removes(programs):
    program = programs["existing-gke+ci"]
    kept = kept_by_a_ci_destroy(program)
    removed = [r for r in google_resources(program) if r.urn not in kept]
    assert {r.type for r in removed} >= {
        "gcp:storage/bucket:Bucket",
        "kubernetes:keda.sh/v1alpha1:ScaledJob",
        "kubernetes:core/v1:Secret",
    }
    assert [r.name for r in removed if not ci_can_create(program, r)] == []
    # Its Kubernetes rights are RBAC in that one cluster, not Container Admin on the project.
    assert "roles/container.admin" not in deployer_project_roles(program)


def test_a_ci_destroy_keeps_the_accounts_the_mirror_and_cis_access(programs):
    program = programs["dev+ci"]
    kept = kept_by_a_ci_destroy(program)
    kept_types = {r.type for r in program.resources if r.urn in kept}
    assert "gcp:artifactregistry/repository:Repository" in kept_types
    assert "gcp:iam/workloadIdentityPool:WorkloadIdentityPool" in kept_types
    accounts = {
        r.inputs["accountId"]
        for r in program.of_type("gcp:serviceaccount/account:Account")
        if r.urn in kept
    }
    assert accounts == {
        "mlops-kubernetes-nodes",
        "mlops-kubernetes-runner",
        "gpu-runners-ci-deployer",
        "gpu-runners-ci-previewer",
    }


def without(program: Program, name: str) -> Program:
    return Program([r for r in program.resources if r.name != name], program.outputs)


def test_the_model_sees_a_right_taken_away(programs):
    # Without Compute Viewer, CI could not bring the pools back after its destroy.
    program = programs["dev+ci"]
    pool = program.one("gcp:container/nodePool:NodePool", "gke-gpu")
    assert ci_can_create(program, pool)
    (viewer,) = [
        r
        for r in program.of_type("gcp:projects/iAMMember:IAMMember")
        if r.inputs["role"] == "roles/compute.viewer" and r.inputs["member"].startswith(DEPLOYER)
    ]
    assert not ci_can_create(without(program, viewer.name), pool)
    # Without its cluster-admin binding, CI could not bring the runners back on a cluster
    # the stack does not make.
    existing = programs["existing-gke+ci"]
    job = existing.one("kubernetes:keda.sh/v1alpha1:ScaledJob")
    assert ci_can_create(existing, job)
    assert not ci_can_create(without(existing, "ci-deployer"), job)
