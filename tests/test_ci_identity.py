"""CiDeployer: CI reaches Google Cloud by Workload Identity Federation, for one repository only,
as a deployer that holds no primitive role and cannot raise its own rights."""

import pytest

from infra.cluster import NODE_ROLES
from infra.registry import UPSTREAMS
from tests.harness import TEST_PROJECT_ID, TEST_PROJECT_NUMBER, run_program, run_rejected_program
from tests.stacks import WITH_CI

CI = "gpu-runners:ci"
POOL = "gcp:iam/workloadIdentityPool:WorkloadIdentityPool"
PROVIDER = "gcp:iam/workloadIdentityPoolProvider:WorkloadIdentityPoolProvider"
PROJECT_GRANT = "gcp:projects/iAMMember:IAMMember"
SA_GRANT = "gcp:serviceaccount/iAMMember:IAMMember"
DEPLOYER = f"gpu-runners-ci-deployer@{TEST_PROJECT_ID}.iam.gserviceaccount.com"
POOL_NAME = f"projects/{TEST_PROJECT_NUMBER}/locations/global/workloadIdentityPools/gpu-runners-ci"


@pytest.fixture(scope="module")
def both():
    return run_program(WITH_CI)


def deployer_grants(program) -> dict[str, dict]:
    return {
        g.inputs["role"]: g.inputs
        for g in program.of_type(PROJECT_GRANT)
        if g.inputs["member"] == f"serviceAccount:{DEPLOYER}"
    }


def test_ci_access_is_off_unless_configured():
    program = run_program()
    assert program.of_type(POOL) == []
    assert "ciDeployerServiceAccount" not in program.outputs


def test_each_forge_gets_a_provider_restricted_to_the_configured_repository(both):
    pool = both.one(POOL).inputs
    assert pool["workloadIdentityPoolId"] == "gpu-runners-ci"
    github = both.one(PROVIDER, "ci-github").inputs
    assert github["oidc"] == {"issuerUri": "https://token.actions.githubusercontent.com"}
    assert github["attributeCondition"] == "assertion.repository == 'ml-team/gpu-runners'"
    assert github["attributeMapping"]["attribute.repository"] == "assertion.repository"
    gitlab = both.one(PROVIDER, "ci-gitlab").inputs
    assert gitlab["oidc"] == {"issuerUri": "https://gitlab.com"}
    assert gitlab["attributeCondition"] == "assertion.project_path == 'ml-team/infra/gpu-runners'"
    assert both.outputs["ciWorkloadIdentityProviders"] == {
        "github": f"{POOL_NAME}/providers/github",
        "gitlab": f"{POOL_NAME}/providers/gitlab",
    }
    assert both.outputs["ciDeployerServiceAccount"] == DEPLOYER


def test_only_that_repository_may_act_as_the_deployer(both):
    members = sorted(
        g.inputs["member"] for g in both.of_type(SA_GRANT) if g.name.endswith("-may-deploy")
    )
    assert members == [
        f"principalSet://iam.googleapis.com/{POOL_NAME}/attribute.project_path/ml-team/infra/gpu-runners",
        f"principalSet://iam.googleapis.com/{POOL_NAME}/attribute.repository/ml-team/gpu-runners",
    ]
    for grant in both.of_type(SA_GRANT):
        if grant.name.endswith("-may-deploy"):
            assert grant.inputs["role"] == "roles/iam.workloadIdentityUser"


def test_deployer_roles_are_the_documented_ones_and_never_primitive(both):
    grants = deployer_grants(both)
    assert set(grants) == {
        "roles/container.admin",
        # The provider reads each node pool's instance groups after every change.
        "roles/compute.viewer",
        "roles/storage.admin",
        "roles/iam.workloadIdentityPoolViewer",
        "roles/serviceusage.serviceUsageViewer",
        "roles/resourcemanager.projectIamAdmin",
    }
    assert not {"roles/owner", "roles/editor"} & set(grants)


def test_deployer_holds_no_project_wide_service_account_role(both):
    # Service Account Admin (or User, or Token Creator) on the project would let CI act as,
    # or grant itself, any account in the project.
    grants = deployer_grants(both)
    assert not [role for role in grants if role.startswith("roles/iam.serviceAccount")]


def test_deployer_manages_the_runner_account_only_on_that_account(both):
    (admin,) = [
        g for g in both.of_type(SA_GRANT) if g.inputs["role"] == "roles/iam.serviceAccountAdmin"
    ]
    assert admin.inputs["member"] == f"serviceAccount:{DEPLOYER}"
    assert admin.inputs["serviceAccountId"].endswith(
        f"/serviceAccounts/mlops-kubernetes-runner@{TEST_PROJECT_ID}.iam.gserviceaccount.com"
    )


def test_deployer_may_grant_only_the_node_roles(both):
    condition = deployer_grants(both)["roles/resourcemanager.projectIamAdmin"]["condition"]
    expression = condition["expression"]
    assert expression.startswith("api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', [])")
    for role in NODE_ROLES:
        assert f"'{role}'" in expression
    assert "projectIamAdmin" not in expression and "container.admin" not in expression


def test_deployer_may_act_as_the_node_account_only(both):
    (act_as,) = [
        g for g in both.of_type(SA_GRANT) if g.inputs["role"] == "roles/iam.serviceAccountUser"
    ]
    assert act_as.inputs["member"] == f"serviceAccount:{DEPLOYER}"
    assert act_as.inputs["serviceAccountId"].endswith(
        f"/serviceAccounts/mlops-kubernetes-nodes@{TEST_PROJECT_ID}.iam.gserviceaccount.com"
    )
    pools = both.of_type("gcp:container/nodePool:NodePool")
    assert all(act_as.urn in pool.depends_on for pool in pools)


def test_ci_access_is_protected_so_a_ci_destroy_keeps_it(both):
    component = both.one("gpu-runners:index:CiDeployer")
    parts = [r for r in both.resources if r.parent == component.urn]
    assert len(parts) >= 8
    assert all(part.protect for part in parts)
    # The deployer's rights on the node and runner accounts are CI access too: protected, they
    # keep those accounts through a CI destroy, since CI could not create them again.
    deployer_rights = [
        r for r in both.of_type(SA_GRANT) if r.inputs["member"] == f"serviceAccount:{DEPLOYER}"
    ]
    assert {r.name for r in deployer_rights} == {"gke-nodes-user-0", "runner-identity-admin-0"}
    assert all(r.protect for r in deployer_rights)
    # And so are the image mirror's repositories with CI's grants on them (tests/test_registry).
    mirror = {f"images-{upstream}{grant}" for upstream in UPSTREAMS for grant in ("", "-admin-0")}
    protected = {r.name for r in both.resources if r.protect}
    assert protected == {r.name for r in [*parts, *deployer_rights]} | mirror


def test_a_github_url_instead_of_owner_and_repo_is_rejected():
    error, registered = run_rejected_program({CI: {"githubRepository": "https://github.com/a/b"}})
    assert "gpu-runners:ci.githubRepository = 'https://github.com/a/b'" in str(error)
    assert "allowed: owner/repo of the infrastructure repository" in str(error)
    assert registered == []


def test_a_reserved_pool_id_is_rejected():
    error, _ = run_rejected_program({CI: {"githubRepository": "a/b", "poolId": "gcp-ci"}})
    assert "gpu-runners:ci.poolId = 'gcp-ci'" in str(error)
