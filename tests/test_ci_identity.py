"""CiDeployer: CI reaches Google Cloud by Workload Identity Federation, for one repository only,
as a deployer that holds no primitive role and cannot raise its own rights."""

import pytest
import yaml

from infra.gcp.ci import WORKFLOW_FILE
from infra.gcp.cluster import NODE_ROLES
from infra.gcp.registry import UPSTREAMS
from tests.harness import (
    REPO,
    TEST_PROJECT_ID,
    TEST_PROJECT_NUMBER,
    run_program,
    run_rejected_program,
)
from tests.stacks import SHAPES, WITH_CI

CI = "gpu-runners:ci"
POOL = "gcp:iam/workloadIdentityPool:WorkloadIdentityPool"
PROVIDER = "gcp:iam/workloadIdentityPoolProvider:WorkloadIdentityPoolProvider"
PROJECT_GRANT = "gcp:projects/iAMMember:IAMMember"
SA_GRANT = "gcp:serviceaccount/iAMMember:IAMMember"
DEPLOYER = f"gpu-runners-ci-deployer@{TEST_PROJECT_ID}.iam.gserviceaccount.com"
PREVIEWER = f"gpu-runners-ci-previewer@{TEST_PROJECT_ID}.iam.gserviceaccount.com"
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


def test_each_forge_gets_a_provider_restricted_to_the_repository_by_its_ids(both):
    pool = both.one(POOL).inputs
    assert pool["workloadIdentityPoolId"] == "gpu-runners-ci"
    github = both.one(PROVIDER, "ci-github").inputs
    assert github["oidc"] == {"issuerUri": "https://token.actions.githubusercontent.com"}
    # IDs, not names: a renamed or re-created repository of the same name is not trusted.
    assert github["attributeCondition"] == (
        "assertion.repository_id == '812345678' && assertion.repository_owner_id == '91234567'"
    )
    assert github["attributeMapping"] == {
        "google.subject": "assertion.sub",
        "attribute.repository_id": "assertion.repository_id",
        "attribute.deploy_workflow": "assertion.job_workflow_ref + '/' + assertion.ref_protected",
    }
    gitlab = both.one(PROVIDER, "ci-gitlab").inputs
    assert gitlab["oidc"] == {"issuerUri": "https://gitlab.com"}
    assert gitlab["attributeCondition"] == "assertion.project_id == '52345678'"
    assert gitlab["attributeMapping"] == {
        # GitLab's sub can pass Google's 127 bytes; these IDs cannot.
        "google.subject": "assertion.project_id + '/' + assertion.job_id",
        "attribute.project_id": "assertion.project_id",
        "attribute.protected_ref": (
            "assertion.ref_type + '/' + assertion.ref + '/' + assertion.ref_protected"
        ),
    }
    assert both.outputs["ciWorkloadIdentityProviders"] == {
        "github": f"{POOL_NAME}/providers/github",
        "gitlab": f"{POOL_NAME}/providers/gitlab",
    }
    assert both.outputs["ciDeployerServiceAccount"] == DEPLOYER
    assert both.outputs["ciPreviewerServiceAccount"] == PREVIEWER


def may_act_as(program, account: str) -> list[str]:
    """The principal sets that may act as a CI account, under the pool."""
    return sorted(
        g.inputs["member"].removeprefix(f"principalSet://iam.googleapis.com/{POOL_NAME}/")
        for g in program.of_type(SA_GRANT)
        if g.inputs["role"] == "roles/iam.workloadIdentityUser"
        and g.inputs["serviceAccountId"].endswith(f"/serviceAccounts/{account}")
    )


DEPLOY_WORKFLOW = "ml-team/gpu-runners/.github/workflows/infrastructure.yml@refs/heads/main"


def test_only_the_protected_default_branch_may_act_as_the_deployer(both):
    assert may_act_as(both, DEPLOYER) == [
        # GitHub: this repository's infrastructure workflow, run from main while protected
        # (a push, or the destroy dispatch); a pull request's ref is refs/pull/…, and other
        # workflows on main (pull_request_target, issue_comment …) do not qualify.
        f"attribute.deploy_workflow/{DEPLOY_WORKFLOW}/true",
        # GitLab: a branch named main, protected (ref_protected is "true" only then).
        "attribute.protected_ref/branch/main/true",
    ]


def test_the_workflow_the_deployer_binding_names_is_the_one_that_deploys():
    workflow = REPO / WORKFLOW_FILE
    assert workflow.is_file()
    triggers = yaml.safe_load(workflow.read_text())[True]  # YAML 1.1 reads `on` as true
    # No trigger that a pull request or a comment can start on the default branch.
    assert set(triggers) == {"pull_request", "push", "workflow_dispatch"}


def test_every_pipeline_of_the_repository_may_act_as_the_previewer(both):
    assert may_act_as(both, PREVIEWER) == [
        "attribute.project_id/52345678",
        "attribute.repository_id/812345678",
    ]


def test_another_default_branch_binds_the_deployer_to_it():
    program = run_program({CI: {**WITH_CI[CI], "defaultBranch": "release/prod"}})
    assert may_act_as(program, DEPLOYER) == [
        f"attribute.deploy_workflow/{DEPLOY_WORKFLOW.replace('main', 'release/prod')}/true",
        "attribute.protected_ref/branch/release/prod/true",
    ]


@pytest.mark.parametrize("shape", ["dev", "warm-hours"])
def test_the_previewer_may_read_every_kind_the_stack_makes_but_secrets(shape):
    program = run_program({**SHAPES[shape], **WITH_CI})
    role = program.one("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole", "ci-previewer")
    readable = {
        (group, resource)
        for r in role.inputs["rules"]
        for group in r["apiGroups"]
        for resource in r["resources"]
    }
    for resource in program.resources:
        if not resource.type.startswith("kubernetes:") or resource.type.startswith(
            ("kubernetes:helm.sh/", "kubernetes:core/v1:Secret")
        ):
            continue
        group_version, kind = resource.type.removeprefix("kubernetes:").split(":")
        group = group_version.split("/")[0].replace("core", "")
        singular = kind.removesuffix("Patch").lower()
        plural = singular + ("es" if singular.endswith("s") else "s")
        assert {(group, "*"), (group, plural)} & readable, resource.type


def test_the_previewer_holds_no_admin_role(both):
    project_roles = {
        g.inputs["role"]
        for g in both.of_type(PROJECT_GRANT)
        if g.inputs["member"] == f"serviceAccount:{PREVIEWER}"
    }
    assert project_roles == {"roles/container.clusterViewer"}
    (state,) = [
        g.inputs
        for g in both.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
        if g.inputs["member"] == f"serviceAccount:{PREVIEWER}"
    ]
    assert (state["bucket"], state["role"]) == (
        "ml-team-sandbox-pulumi-state",
        "roles/storage.objectViewer",
    )
    # In the cluster: get, list and watch, and never a Secret.
    role = both.one("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole", "ci-previewer")
    rules = role.inputs["rules"]
    assert all(rule["verbs"] == ["get", "list", "watch"] for rule in rules)
    core = [rule for rule in rules if "" in rule["apiGroups"]]
    assert core and all(rule["apiGroups"] == [""] for rule in core)
    assert all("secrets" not in rule["resources"] and "*" not in rule["resources"] for rule in core)
    assert not any("*" in rule["apiGroups"] for rule in rules)
    assert {"keda.sh", "actions.github.com", "apps"} <= {g for r in rules for g in r["apiGroups"]}
    binding = both.one("kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding", "ci-previewer")
    assert binding.inputs["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": PREVIEWER}
    ]
    assert binding.inputs["roleRef"]["name"] == "gpu-runners-previewer"
    # No other grant gives it anything (the may-preview grants let CI act as it).
    others = [
        r.name
        for r in both.resources
        if r.type.startswith("gcp:")
        and r.inputs.get("member") == f"serviceAccount:{PREVIEWER}"
        and "previewer" not in r.name
    ]
    assert others == []


@pytest.mark.parametrize(
    ("ci", "message_part"),
    [
        ({"githubRepositoryId": None}, "gpu-runners:ci.githubRepositoryId = (not set): required"),
        ({"githubOwnerId": None}, "gh api repos/ml-team/gpu-runners --jq .owner.id"),
        (
            {"gitlabProjectId": "ml-team/infra/gpu-runners"},
            "gpu-runners:ci.gitlabProjectId = 'ml-team/infra/gpu-runners': allowed: the "
            "project's numeric ID (Settings > General), not its path",
        ),
        (
            {"defaultBranch": "main' || true || '"},
            "allowed: a branch name of letters, digits, '.', '_', '-' and '/', without quotes",
        ),
        # The ref, where the branch's name belongs: a deployer no pipeline could become.
        ({"defaultBranch": "refs/heads/main"}, "gpu-runners:ci.defaultBranch = 'refs/heads/main'"),
        ({"stateBucket": None}, "gpu-runners:ci.stateBucket = (not set): required with CI"),
        # The reverse: an ID where the path belongs.
        (
            {"gitlabProject": "52345678"},
            "gpu-runners:ci.gitlabProject = '52345678': allowed: group/project",
        ),
        ({"secretsKey": None}, "gpu-runners:ci.secretsKey = (not set): required with CI access"),
    ],
)
def test_ci_settings_that_cannot_make_a_safe_condition_are_refused(ci, message_part):
    error, registered = run_rejected_program({CI: {**WITH_CI[CI], **ci}})
    assert registered == []
    assert message_part in str(error)


@pytest.mark.parametrize("key", ["stateBucket", "secretsKey"])
def test_ci_keys_without_ci_access_are_refused(key):
    error, _ = run_rejected_program({CI: {key: WITH_CI[CI][key]}})
    assert f"gpu-runners:ci.{key} = " in str(error)
    assert "only read with CI access (ci.githubRepository or ci.gitlabProject)" in str(error)


def test_an_id_without_its_repository_is_refused():
    error, _ = run_rejected_program({CI: {"gitlabProjectId": "52345678"}})
    assert "gpu-runners:ci.gitlabProjectId = '52345678': only read with ci.gitlabProject" in str(
        error
    )


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
    # And the package cache's repository with CI's grant on it, for the same reason.
    packages = {"packages", "packages-admin-0"}
    protected = {r.name for r in both.resources if r.protect}
    assert protected == {r.name for r in [*parts, *deployer_rights]} | mirror | packages


def test_a_github_url_instead_of_owner_and_repo_is_rejected():
    error, registered = run_rejected_program({CI: {"githubRepository": "https://github.com/a/b"}})
    assert "gpu-runners:ci.githubRepository = 'https://github.com/a/b'" in str(error)
    assert "allowed: owner/repo of the infrastructure repository" in str(error)
    assert registered == []


def test_a_reserved_pool_id_is_rejected():
    error, _ = run_rejected_program({CI: {"githubRepository": "a/b", "poolId": "gcp-ci"}})
    assert "gpu-runners:ci.poolId = 'gcp-ci'" in str(error)


def test_both_ci_accounts_decrypt_with_the_stacks_key_and_nothing_else_does(both):
    grants = both.of_type("gcp:kms/cryptoKeyIAMMember:CryptoKeyIAMMember")
    assert {(g.inputs["member"], g.inputs["role"]) for g in grants} == {
        (f"serviceAccount:{PREVIEWER}", "roles/cloudkms.cryptoKeyDecrypter"),
        (f"serviceAccount:{DEPLOYER}", "roles/cloudkms.cryptoKeyDecrypter"),
    }
    assert {g.inputs["cryptoKeyId"] for g in grants} == {WITH_CI[CI]["secretsKey"]}
    assert all(g.protect for g in grants)


def test_a_key_that_is_not_a_kms_key_name_is_refused():
    error, registered = run_rejected_program(
        {CI: {**WITH_CI[CI], "secretsKey": "gcpkms://projects/p/locations/l/keyRings/r"}}
    )
    assert registered == []
    assert "gpu-runners:ci.secretsKey = 'gcpkms://projects/p/locations/l/keyRings/r'" in str(error)
    assert "allowed: a Cloud KMS key, projects/<project>/locations/" in str(error)
