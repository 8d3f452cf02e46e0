"""CiDeployer: lets GitHub Actions or GitLab CI preview and deploy the stack through Workload
Identity Federation, as two service accounts: a read-only previewer that any pipeline of the
repository may become, and a deployer with only the roles the stack needs, that only the
protected default branch may become. No key is created."""

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from infra.gcp.cluster import NODE_ROLES
from infra.gcp.iam import grant_project_roles
from infra.gcp.names import deployer_account_id, previewer_account_id
from infra.options import child_options

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
# The workflow that may deploy (the repository's own .github/workflows/infrastructure.yml).
WORKFLOW_FILE = ".github/workflows/infrastructure.yml"

# Project roles the deployer needs for `pulumi up`, `preview` and `destroy` (docs/ci-cd.md). No
# project-wide service account role: Service Account Admin on the project could set the IAM
# policy of every account in it (and so let CI act as any of them), and IAM Conditions cannot
# narrow it, because IAM resources carry no resource attributes ("Resource attributes for IAM
# Conditions" lists no iam.googleapis.com types). The deployer gets rights on the stack's own
# accounts instead, on each account (see GpuCluster and RunnerIdentity).
DEPLOYER_ROLES: tuple[str, ...] = (
    # The cluster, its node pools, and the Kubernetes objects in it (namespaces, Secrets,
    # Deployments, and the CRDs and RBAC of add-ons such as KEDA).
    "roles/container.admin",
    # Read the node pools' instance groups (see COMPUTE_READS in infra/gcp/cluster.py).
    "roles/compute.viewer",
    # The DVC bucket and its IAM, and the Pulumi state bucket.
    "roles/storage.admin",
    # Read this pool and its providers; changing them is a laptop (owner) operation.
    "roles/iam.workloadIdentityPoolViewer",
    # See that the APIs are on (enabling one is a laptop operation). The provider creates an
    # already enabled API without enabling it (resource_google_project_service.go, Create).
    "roles/serviceusage.serviceUsageViewer",
)

# On a GKE cluster the stack does not make, Container Admin would let CI change or delete
# every cluster of the project. There the deployer reads the cluster (Cluster Viewer:
# container.clusters.get, which `get-credentials` and every request to the cluster's API need)
# and holds cluster-admin in that one cluster through Kubernetes RBAC (DeployerClusterAdmin).
# GKE allows an action that either IAM or RBAC allows ("Authorize actions in clusters using
# role-based access control", Interaction with IAM). No compute reads: no node pool.
EXISTING_CLUSTER_DEPLOYER_ROLES: tuple[str, ...] = (
    "roles/container.clusterViewer",
    *(
        role
        for role in DEPLOYER_ROLES
        if role not in ("roles/container.admin", "roles/compute.viewer")
    ),
)

# Project roles the person running the first `pulumi up` needs for this component.
DEPLOY_ROLES: dict[str, str] = {
    "roles/iam.workloadIdentityPoolAdmin": "the pool and providers CI signs in through",
    "roles/iam.serviceAccountAdmin": "the deployer account, and who may act as it",
    "roles/resourcemanager.projectIamAdmin": "grant the deployer its project roles",
    "roles/cloudkms.admin": "let the previewer and the deployer decrypt with the stack's key",
}
# What `pulumi preview` needs and nothing more: a preview calls no Google Cloud API beyond
# signing in to the cluster (it refreshes nothing); it reads the state (a grant on the state
# bucket) and the cluster's objects (PreviewerReads, Kubernetes RBAC): pulumi-kubernetes falls
# back to a client-side preview where a server-side dry run is refused (pulumi-kubernetes#2419).
PREVIEWER_ROLES: tuple[str, ...] = ("roles/container.clusterViewer",)
STATE_READER = "roles/storage.objectViewer"
# Pulumi's gcpkms secrets provider decrypts the stack's data key with the KMS key and then
# encrypts and decrypts secret values with it locally; only `stack init` and
# `change-secrets-provider` encrypt with KMS (pulumi, pkg/secrets/cloud/manager.go,
# newCloudSecretsManager: keeper.Decrypt). So CI needs decrypt alone.
KEY_USER = "roles/cloudkms.cryptoKeyDecrypter"
# The deployer may grant project roles, but only the node roles: it cannot raise its own.
GRANTABLE_ROLES_CONDITION = (
    "api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', [])"
    f".hasOnly([{', '.join(repr(role) for role in NODE_ROLES)}])"
)


@dataclass(frozen=True)
class CiDeployerArgs:
    """Which CI may deploy the stack."""

    project: str
    pool_id: str
    """Workload Identity Pool ID: 4 to 32 lowercase letters, digits and hyphens."""
    github_repository: str | None
    """owner/repo of the infrastructure repository on GitHub, or None."""
    gitlab_project: str | None
    """group/project of the infrastructure project on GitLab, or None."""
    gitlab_url: str
    """The GitLab instance whose ID tokens are trusted."""
    makes_cluster: bool
    """Whether the stack makes its GKE cluster and node pools (False: existingCluster.gke)."""
    github_repository_id: str | None = None
    github_owner_id: str | None = None
    gitlab_project_id: str | None = None
    default_branch: str = "main"
    """The protected branch whose pipelines may become the deployer."""
    state_bucket: str | None = None
    """The bucket holding the Pulumi state, which the previewer may read."""
    secrets_key: str | None = None
    """The Cloud KMS key of the stack's secrets provider, which both accounts decrypt with."""


class CiDeployer(pulumi.ComponentResource):
    """A Workload Identity Pool with a provider per forge, and the previewer and deployer
    accounts its pipelines may act as.

    Every part is protected: a `pulumi destroy --exclude-protected` run by CI removes the rest
    of the stack but never the access CI needs to recreate it, nor mid-way through the run.
    """

    provider_names: dict[str, pulumi.Output[str]]
    email: pulumi.Output[str]
    member: pulumi.Output[str]
    previewer_email: pulumi.Output[str]

    def __init__(
        self, name: str, args: CiDeployerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gpu-runners:index:CiDeployer", name, None, opts)
        child = child_options(self, opts, protect=True)

        deployer = gcp.serviceaccount.Account(
            name,
            project=args.project,
            account_id=deployer_account_id(args.pool_id),
            display_name="CI deployer: pulumi preview/up/destroy of gpu-runners",
            opts=child,
        )
        roles = DEPLOYER_ROLES if args.makes_cluster else EXISTING_CLUSTER_DEPLOYER_ROLES
        grant_project_roles(name, args.project, roles, deployer.member, child)
        if args.makes_cluster:
            gcp.projects.IAMMember(
                f"{name}-grant-node-roles",
                project=args.project,
                role="roles/resourcemanager.projectIamAdmin",
                member=deployer.member,
                condition={
                    "title": "node roles only",
                    "description": "May grant the GKE node roles, nothing else",
                    "expression": GRANTABLE_ROLES_CONDITION,
                },
                opts=child,
            )
        previewer = gcp.serviceaccount.Account(
            f"{name}-previewer",
            project=args.project,
            account_id=previewer_account_id(args.pool_id),
            display_name="CI previewer: pulumi preview of gpu-runners, read-only",
            opts=child,
        )
        grant_project_roles(
            f"{name}-previewer", args.project, PREVIEWER_ROLES, previewer.member, child
        )
        if args.state_bucket:
            gcp.storage.BucketIAMMember(
                f"{name}-previewer-state",
                bucket=args.state_bucket,
                role=STATE_READER,
                member=previewer.member,
                opts=child,
            )
        if args.secrets_key:
            for account_name, account in (("previewer", previewer), ("deployer", deployer)):
                gcp.kms.CryptoKeyIAMMember(
                    f"{name}-{account_name}-decrypts",
                    crypto_key_id=args.secrets_key,
                    role=KEY_USER,
                    member=account.member,
                    opts=child,
                )
        pool = gcp.iam.WorkloadIdentityPool(
            name,
            project=args.project,
            workload_identity_pool_id=args.pool_id,
            display_name="gpu-runners CI",
            description="CI pipelines that preview and deploy the gpu-runners stack",
            opts=child,
        )

        self.provider_names = {}
        for forge in _trusted_forges(args):
            provider = gcp.iam.WorkloadIdentityPoolProvider(
                f"{name}-{forge.name}",
                project=args.project,
                workload_identity_pool_id=pool.workload_identity_pool_id,
                workload_identity_pool_provider_id=forge.name,
                display_name=forge.name,
                oidc={"issuer_uri": forge.issuer},
                attribute_mapping={"google.subject": forge.subject, **forge.attributes},
                attribute_condition=forge.condition,
                opts=child,
            )
            for role_name, account, principal in (
                ("may-deploy", deployer, forge.deployer),
                ("may-preview", previewer, forge.previewer),
            ):
                gcp.serviceaccount.IAMMember(
                    f"{name}-{forge.name}-{role_name}",
                    service_account_id=account.name,
                    role="roles/iam.workloadIdentityUser",
                    member=pool.name.apply(
                        lambda pool_name, p=principal: (
                            f"principalSet://iam.googleapis.com/{pool_name}/{p}"
                        )
                    ),
                    opts=child,
                )
            self.provider_names[forge.name] = provider.name

        self.email = deployer.email
        self.member = deployer.member
        self.previewer_email = previewer.email
        self.register_outputs(
            {
                "email": self.email,
                "previewerEmail": self.previewer_email,
                "providers": self.provider_names,
            }
        )


# What a preview may read in the cluster: every kind the stack makes, but no Secret (a
# Helm release's preview renders the chart client-side and reads no release record:
# pulumi-kubernetes helm_release.go, Check, and Create/Update return early on preview).
# RBAC has no "all but", so the core kinds are listed.
PREVIEWER_RULES = [
    {
        "api_groups": [""],
        "resources": [
            "configmaps",
            "events",
            "namespaces",
            "nodes",
            "persistentvolumeclaims",
            "pods",
            "serviceaccounts",
            "services",
        ],
        "verbs": ["get", "list", "watch"],
    },
    {
        "api_groups": [
            "actions.github.com",
            "apiextensions.k8s.io",
            "apps",
            "batch",
            "cloud.google.com",
            "keda.sh",
            "networking.k8s.io",
            "policy",
            "rbac.authorization.k8s.io",
            "scheduling.k8s.io",
        ],
        "resources": ["*"],
        "verbs": ["get", "list", "watch"],
    },
]


class PreviewerReads(pulumi.ComponentResource):
    """Kubernetes RBAC on the stack's cluster: the previewer may get, list and watch what a
    preview reads, and no Secret."""

    def __init__(
        self,
        name: str,
        previewer_email: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpu-runners:index:PreviewerReads", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = k8s.rbac.v1.ClusterRole(
            name,
            metadata={"name": "gpu-runners-previewer"},
            rules=PREVIEWER_RULES,
            opts=child,
        )
        _bind_account(name, "gpu-runners-previewer", role.metadata.name, previewer_email, child)
        self.register_outputs({})


class DeployerClusterAdmin(pulumi.ComponentResource):
    """Kubernetes RBAC on a GKE cluster the stack does not make: the deployer is cluster-admin
    there, as Container Admin makes it in a cluster the stack makes. Less would not do: the
    engines' charts install CRDs and ClusterRoles, and Kubernetes lets only a holder of every
    right a role grants create or bind it (RBAC, "Privilege escalation prevention").

    Protected, like the CI access: a CI destroy keeps it, so CI's own rights stay while the
    destroy runs and after, for the next `up`."""

    def __init__(
        self,
        name: str,
        deployer_email: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpu-runners:index:DeployerClusterAdmin", name, None, opts)
        _bind_account(
            name,
            "gpu-runners-deployer",
            "cluster-admin",
            deployer_email,
            child_options(self, opts, protect=True),
        )
        self.register_outputs({})


def _bind_account(
    name: str,
    binding: str,
    cluster_role: pulumi.Input[str],
    email: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
) -> k8s.rbac.v1.ClusterRoleBinding:
    """A ClusterRoleBinding of a Google service account, which GKE names in RBAC by its
    e-mail, as a User."""
    return k8s.rbac.v1.ClusterRoleBinding(
        name,
        metadata={"name": binding},
        role_ref={
            "api_group": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_role,
        },
        subjects=[{"api_group": "rbac.authorization.k8s.io", "kind": "User", "name": email}],
        opts=opts,
    )


@dataclass(frozen=True)
class _TrustedForge:
    """A forge whose OIDC tokens of one repository may act as the previewer, and those of its
    protected default branch as the deployer."""

    name: str
    issuer: str
    attributes: dict[str, str]
    condition: str
    previewer: str
    """The principal set (under the pool) that may act as the previewer."""
    deployer: str
    """The principal set that may act as the deployer."""
    subject: str = "assertion.sub"
    """What maps to google.subject."""


def _trusted_forges(args: CiDeployerArgs) -> list[_TrustedForge]:
    forges = []
    if args.github_repository:
        # GitHub's token: repository_id and repository_owner_id stay with the repository
        # through renames; job_workflow_ref names the workflow file and the ref it ran from,
        # and ref_protected says whether that ref is protected, both strings (GitHub docs,
        # "About security hardening with OpenID Connect", the token's claims). A ref alone
        # would not do: pull_request_target, issue_comment or workflow_run runs of any
        # workflow on the default branch carry its ref too, and a pull request can start them.
        # Only this repository's infrastructure workflow, run from the protected default
        # branch (a push, or the confirmed destroy), may deploy. A fork's pull request gets no
        # token.
        workflow = f"{args.github_repository}/{WORKFLOW_FILE}@refs/heads/{args.default_branch}"
        forges.append(
            _TrustedForge(
                name="github",
                issuer=GITHUB_ISSUER,
                attributes={
                    "attribute.repository_id": "assertion.repository_id",
                    "attribute.deploy_workflow": (
                        "assertion.job_workflow_ref + '/' + assertion.ref_protected"
                    ),
                },
                condition=(
                    f"assertion.repository_id == '{args.github_repository_id}' && "
                    f"assertion.repository_owner_id == '{args.github_owner_id}'"
                ),
                previewer=f"attribute.repository_id/{args.github_repository_id}",
                deployer=f"attribute.deploy_workflow/{workflow}/true",
            )
        )
    if args.gitlab_project:
        # GitLab's ID token: project_id; ref_type and ref; ref_protected, the string "true" or
        # "false" (gitlabhq, lib/gitlab/ci/jwt.rb). Since GitLab 18.2.2 project_id names the
        # fork for a fork's pipeline run in this project (gitlab#561735).
        forges.append(
            _TrustedForge(
                name="gitlab",
                issuer=args.gitlab_url,
                # GitLab's `sub` (project_path:…:ref_type:…:ref:…) can pass the 127 bytes
                # Google allows a subject; the project and job IDs name the job in audit logs.
                subject="assertion.project_id + '/' + assertion.job_id",
                attributes={
                    "attribute.project_id": "assertion.project_id",
                    "attribute.protected_ref": (
                        "assertion.ref_type + '/' + assertion.ref + '/' + assertion.ref_protected"
                    ),
                },
                condition=f"assertion.project_id == '{args.gitlab_project_id}'",
                previewer=f"attribute.project_id/{args.gitlab_project_id}",
                deployer=f"attribute.protected_ref/branch/{args.default_branch}/true",
            )
        )
    return forges
