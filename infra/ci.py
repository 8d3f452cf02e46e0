"""CiDeployer: lets GitHub Actions or GitLab CI run `pulumi up` through Workload Identity
Federation, as a service account with only the roles the stack needs; no key is created."""

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.cluster import NODE_ROLES
from infra.iam import grant_project_roles
from infra.names import deployer_account_id
from infra.options import child_options

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"

# Project roles the deployer needs for `pulumi up`, `preview` and `destroy` (see README). No
# project-wide service account role: Service Account Admin on the project could set the IAM
# policy of every account in it (and so let CI act as any of them), and IAM Conditions cannot
# narrow it, because IAM resources carry no resource attributes ("Resource attributes for IAM
# Conditions" lists no iam.googleapis.com types). The deployer gets rights on the stack's own
# accounts instead, on each account (see GpuCluster and RunnerIdentity).
DEPLOYER_ROLES: tuple[str, ...] = (
    # The cluster, its node pools, and the Kubernetes objects in it (namespaces, Secrets,
    # Deployments, and the CRDs and RBAC of add-ons such as KEDA).
    "roles/container.admin",
    # Read the node pools' instance groups (see COMPUTE_READS in infra/cluster.py).
    "roles/compute.viewer",
    # The DVC bucket and its IAM, and the Pulumi state bucket.
    "roles/storage.admin",
    # Read this pool and its providers; changing them is a laptop (owner) operation.
    "roles/iam.workloadIdentityPoolViewer",
    # See that the APIs are on (enabling one is a laptop operation). The provider creates an
    # already enabled API without enabling it (resource_google_project_service.go, Create).
    "roles/serviceusage.serviceUsageViewer",
)

# Project roles the person running the first `pulumi up` needs for this component.
DEPLOY_ROLES: dict[str, str] = {
    "roles/iam.workloadIdentityPoolAdmin": "the pool and providers CI signs in through",
    "roles/iam.serviceAccountAdmin": "the deployer account, and who may act as it",
    "roles/resourcemanager.projectIamAdmin": "grant the deployer its project roles",
}
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


class CiDeployer(pulumi.ComponentResource):
    """A Workload Identity Pool with a provider per forge, and the deployer it may act as.

    Every part is protected: a `pulumi destroy --exclude-protected` run by CI removes the rest
    of the stack but never the access CI needs to recreate it, nor mid-way through the run.
    """

    provider_names: dict[str, pulumi.Output[str]]
    email: pulumi.Output[str]
    member: pulumi.Output[str]

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
        grant_project_roles(name, args.project, DEPLOYER_ROLES, deployer.member, child)
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
                attribute_mapping={"google.subject": "assertion.sub", **forge.attributes},
                attribute_condition=forge.condition,
                opts=child,
            )
            gcp.serviceaccount.IAMMember(
                f"{name}-{forge.name}-may-deploy",
                service_account_id=deployer.name,
                role="roles/iam.workloadIdentityUser",
                member=pool.name.apply(
                    lambda pool_name, f=forge: (
                        f"principalSet://iam.googleapis.com/{pool_name}/{f.principal}"
                    )
                ),
                opts=child,
            )
            self.provider_names[forge.name] = provider.name

        self.email = deployer.email
        self.member = deployer.member
        self.register_outputs({"email": self.email, "providers": self.provider_names})


@dataclass(frozen=True)
class _TrustedForge:
    """A forge whose OIDC tokens may act as the deployer, for one repository only."""

    name: str
    issuer: str
    attributes: dict[str, str]
    condition: str
    principal: str


def _trusted_forges(args: CiDeployerArgs) -> list[_TrustedForge]:
    forges = []
    if args.github_repository:
        forges.append(
            _TrustedForge(
                name="github",
                issuer=GITHUB_ISSUER,
                attributes={
                    "attribute.repository": "assertion.repository",
                    "attribute.ref": "assertion.ref",
                },
                condition=f"assertion.repository == '{args.github_repository}'",
                principal=f"attribute.repository/{args.github_repository}",
            )
        )
    if args.gitlab_project:
        forges.append(
            _TrustedForge(
                name="gitlab",
                issuer=args.gitlab_url,
                attributes={
                    "attribute.project_path": "assertion.project_path",
                    "attribute.ref": "assertion.ref",
                },
                condition=f"assertion.project_path == '{args.gitlab_project}'",
                principal=f"attribute.project_path/{args.gitlab_project}",
            )
        )
    return forges
