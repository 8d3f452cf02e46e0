"""RunnerIdentity: the Google identities runner pods act as, and the DVC remote they use."""

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.gcp.iam import grant_ci_account_role
from infra.gcp.names import runner_account_id, trusted_runner_account_id
from infra.options import child_options

# What an untrusted runner (pull requests) may do with the DVC remote: read and list objects,
# which is all `dvc pull`, `dvc fetch` and `dvc status -c` need. It cannot create, replace or
# delete one, so a pull request cannot poison the data trusted jobs pull later.
READER_ROLE = "roles/storage.objectViewer"
# What a trusted runner (protected branches) may do: read, write, list and delete objects,
# `dvc push` included. It has no storage.buckets.get, and DVC needs none: dvc-objects'
# ObjectFileSystem skips makedirs on buckets, DVC reads under <bucket>/files/md5, and gcsfs
# falls back to listing objects when GET on the bucket is refused (gcsfs core.py `_info`,
# fsspec/gcsfs#464). Replacing an object needs storage.objects.delete besides create (Cloud
# Storage JSON API, objects.insert), so a narrower create-only role would fail a `dvc push`
# that races another one for the same file.
WRITER_ROLE = "roles/storage.objectUser"
# A replaced or deleted object of a created bucket stays readable as a noncurrent version this
# long, then goes to soft delete, where it stays restorable for SOFT_DELETE_SECONDS (Google's
# default, stated, between 7 and 90 days): the way back from a bad `dvc push` or `dvc gc`.
NONCURRENT_VERSION_DAYS = 30
SOFT_DELETE_SECONDS = 7 * 24 * 3600

# Project roles the person running the first `pulumi up` needs for this component.
DEPLOY_ROLES: dict[str, str] = {
    "roles/iam.serviceAccountAdmin": "the runner accounts and their Workload Identity bindings",
    "roles/storage.admin": "the DVC bucket and who may use it",
}


@dataclass(frozen=True)
class KubernetesServiceAccount:
    """A Kubernetes service account that may act as one of the runners' Google accounts."""

    namespace: str
    name: str
    trusted: bool = False
    """Act as the trusted account, which may write the DVC remote; otherwise the reader."""


@dataclass(frozen=True)
class RunnerIdentityArgs:
    """Who the runners are on Google Cloud and which bucket they may use."""

    project: str
    workload_pool: pulumi.Input[str]
    """The cluster's Workload Identity pool; take it from the cluster, so that the bindings
    wait for it (GKE creates the pool with the first cluster that enables Workload Identity)."""
    cluster_name: str
    """The cluster the runners run on, which names the runner accounts and the DVC bucket."""
    bucket_location: str
    """Where to create the DVC bucket (a region), when no existing bucket is named."""
    existing_bucket: str | None
    """An existing bucket to use as the DVC remote instead of creating one."""
    force_destroy_bucket: bool
    """Let `pulumi destroy` delete a created bucket together with the data in it."""
    kubernetes_service_accounts: Sequence[KubernetesServiceAccount]
    """Runner service accounts that may act as a Google service account."""
    account_admins: Sequence[pulumi.Input[str]] = ()
    """Members (the CI deployer) that may manage the accounts' bindings as runners come and
    go. Protected, like the CI access: a `destroy --exclude-protected` keeps them and the
    accounts, which such a member could not create again."""


class RunnerIdentity(pulumi.ComponentResource):
    """Google service accounts for runner pods, bound by Workload Identity: a reader of the
    DVC bucket for untrusted runners, and a writer when the stack has trusted runners."""

    email: pulumi.Output[str]
    """The reader: the account of untrusted runners."""
    trusted_email: pulumi.Output[str] | None
    """The writer: the account of trusted runners, when there are any."""
    bucket_name: pulumi.Output[str]

    def __init__(
        self, name: str, args: RunnerIdentityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gpu-runners:index:RunnerIdentity", name, None, opts)
        child = child_options(self, opts)

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
                # Patched in place on an existing bucket (terraform-provider-google,
                # resource_storage_bucket.go: only name, location, project and a few others
                # force a new bucket); force_destroy deletes every version too.
                versioning={"enabled": True},
                soft_delete_policy={"retention_duration_seconds": SOFT_DELETE_SECONDS},
                lifecycle_rules=[
                    {
                        "action": {"type": "Delete"},
                        "condition": {
                            "days_since_noncurrent_time": NONCURRENT_VERSION_DAYS,
                            "with_state": "ARCHIVED",
                        },
                    }
                ],
                opts=child,
            ).name

        # The reader keeps the URN and ID that the one runner account had before trust levels.
        reader = gcp.serviceaccount.Account(
            name,
            project=args.project,
            account_id=runner_account_id(args.cluster_name),
            display_name="CI runner pods of untrusted jobs (DVC remote: read)",
            opts=child,
        )
        accounts = {False: reader}
        if any(ksa.trusted for ksa in args.kubernetes_service_accounts):
            accounts[True] = gcp.serviceaccount.Account(
                f"{name}-trusted",
                project=args.project,
                account_id=trusted_runner_account_id(args.cluster_name),
                display_name="CI runner pods of protected branches (DVC remote: read and write)",
                opts=child,
            )
        for trusted, account in accounts.items():
            prefix = f"{name}-trusted" if trusted else name
            gcp.storage.BucketIAMMember(
                f"{prefix}-dvc-objects",
                bucket=bucket_name,
                role=WRITER_ROLE if trusted else READER_ROLE,
                member=account.member,
                opts=child,
            )
            grant_ci_account_role(
                f"{prefix}-admin",
                account,
                "roles/iam.serviceAccountAdmin",
                args.account_admins,
                child,
            )

        # The member names the cluster's pool, which exists only once the cluster does
        # ("Identity Pool does not exist", terraform-google-kubernetes-engine#916).
        for ksa in args.kubernetes_service_accounts:
            gcp.serviceaccount.IAMMember(
                f"{name}-wi-{ksa.namespace}-{ksa.name}",
                service_account_id=accounts[ksa.trusted].name,
                role="roles/iam.workloadIdentityUser",
                member=pulumi.Output.concat(
                    "serviceAccount:", args.workload_pool, f"[{ksa.namespace}/{ksa.name}]"
                ),
                opts=child,
            )

        self.email = reader.email
        self.trusted_email = accounts[True].email if True in accounts else None
        self.bucket_name = pulumi.Output.from_input(bucket_name)
        self.register_outputs({"email": self.email, "bucketName": self.bucket_name})

    def email_for(self, trusted: bool) -> pulumi.Output[str]:
        """The Google account of a runner of this trust."""
        if not trusted:
            return self.email
        if self.trusted_email is None:
            raise ValueError("no Kubernetes service account of this identity is trusted")
        return self.trusted_email
