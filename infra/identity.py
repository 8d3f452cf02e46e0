"""RunnerIdentity: the Google identity runner pods act as, and the DVC remote it may use."""

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.iam import grant_ci_account_role
from infra.names import runner_account_id
from infra.options import child_options

# Read, write, list and delete objects: what `dvc pull`, `dvc push` and `dvc status -c` do. It
# has no storage.buckets.get, and DVC needs none: dvc-objects' ObjectFileSystem skips
# makedirs on buckets, DVC reads under <bucket>/files/md5, and gcsfs falls back to listing
# objects when GET on the bucket is refused (gcsfs core.py `_info`, fsspec/gcsfs#464).
BUCKET_ROLE = "roles/storage.objectUser"

# Project roles the person running the first `pulumi up` needs for this component.
DEPLOY_ROLES: dict[str, str] = {
    "roles/iam.serviceAccountAdmin": "the runner account and its Workload Identity bindings",
    "roles/storage.admin": "the DVC bucket and who may use it",
}


@dataclass(frozen=True)
class KubernetesServiceAccount:
    """A Kubernetes service account that may act as the runner's Google service account."""

    namespace: str
    name: str


@dataclass(frozen=True)
class RunnerIdentityArgs:
    """Who the runners are on Google Cloud and which bucket they may use."""

    project: str
    workload_pool: pulumi.Input[str]
    """The cluster's Workload Identity pool; take it from the cluster, so that the bindings
    wait for it (GKE creates the pool with the first cluster that enables Workload Identity)."""
    cluster_name: str
    """The cluster the runners run on, which names the runner account and the DVC bucket."""
    bucket_location: str
    """Where to create the DVC bucket (a region), when no existing bucket is named."""
    existing_bucket: str | None
    """An existing bucket to use as the DVC remote instead of creating one."""
    force_destroy_bucket: bool
    """Let `pulumi destroy` delete a created bucket together with the data in it."""
    kubernetes_service_accounts: Sequence[KubernetesServiceAccount]
    """Runner service accounts that may act as the Google service account."""
    account_admins: Sequence[pulumi.Input[str]] = ()
    """Members (the CI deployer) that may manage the account's bindings as runners come and
    go. Protected, like the CI access: a `destroy --exclude-protected` keeps them and the
    account, which such a member could not create again."""


class RunnerIdentity(pulumi.ComponentResource):
    """A Google service account for runner pods, bound by Workload Identity, with bucket access."""

    email: pulumi.Output[str]
    bucket_name: pulumi.Output[str]

    def __init__(
        self, name: str, args: RunnerIdentityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gpu-runners:index:RunnerIdentity", name, None, opts)
        child = child_options(self, opts)

        account = gcp.serviceaccount.Account(
            name,
            project=args.project,
            account_id=runner_account_id(args.cluster_name),
            display_name="CI runner pods (DVC remote access)",
            opts=child,
        )

        if args.existing_bucket:
            bucket_name: pulumi.Input[str] = args.existing_bucket
        else:
            bucket_name = gcp.storage.Bucket(
                f"{args.cluster_name}-dvc",
                project=args.project,
                location=args.bucket_location.upper(),
                uniform_bucket_level_access=True,
                public_access_prevention="enforced",
                force_destroy=args.force_destroy_bucket,
                opts=child,
            ).name

        gcp.storage.BucketIAMMember(
            f"{name}-dvc-objects",
            bucket=bucket_name,
            role=BUCKET_ROLE,
            member=account.member,
            opts=child,
        )

        grant_ci_account_role(
            f"{name}-admin", account, "roles/iam.serviceAccountAdmin", args.account_admins, child
        )

        # The member names the cluster's pool, which exists only once the cluster does
        # ("Identity Pool does not exist", terraform-google-kubernetes-engine#916).
        for ksa in args.kubernetes_service_accounts:
            gcp.serviceaccount.IAMMember(
                f"{name}-wi-{ksa.namespace}-{ksa.name}",
                service_account_id=account.name,
                role="roles/iam.workloadIdentityUser",
                member=pulumi.Output.concat(
                    "serviceAccount:", args.workload_pool, f"[{ksa.namespace}/{ksa.name}]"
                ),
                opts=child,
            )

        self.email = account.email
        self.bucket_name = pulumi.Output.from_input(bucket_name)
        self.register_outputs({"email": self.email, "bucketName": self.bucket_name})
