"""ProjectApis: the Google APIs the stack calls, enabled by the stack and never disabled."""

from collections.abc import Mapping

import pulumi
import pulumi_command as command
import pulumi_gcp as gcp

# The provider reads every enabled service back through Cloud Resource Manager
# (terraform-provider-google, resource_google_project_service.go, Read: "Verify project for
# services still exists"), so it is enabled first and the others wait for it.
RESOURCE_MANAGER_API = "cloudresourcemanager.googleapis.com"

# API -> what in the stack calls it.
STACK_APIS: dict[str, str] = {
    RESOURCE_MANAGER_API: "project IAM grants; reading the enabled APIs back",
    "artifactregistry.googleapis.com": "the image mirror the nodes pull runner images through",
    "compute.googleapis.com": "the nodes' VMs, disks and network",
    "container.googleapis.com": "the GKE cluster and its node pools",
    "containerfilesystem.googleapis.com": "image streaming on the nodes (GKE image streaming)",
    "iam.googleapis.com": "the node, runner and deployer service accounts and their IAM",
    # GKE's metadata server hands a Workload Identity pod its Google token through this API;
    # with it off the pod gets "IAM Service Account Credentials API has not been used in
    # project …" (GKE docs, "Use Workload Identity Federation for GKE", before you begin;
    # google/kctf#194). CI also acts as the deployer through it.
    "iamcredentials.googleapis.com": "runner pods' (and CI's) short-lived Google tokens",
    "storage.googleapis.com": "the DVC bucket",
}
# On a GKE cluster the stack does not make: the runners' Google accounts, their Workload
# Identity bindings and the DVC bucket.
IDENTITY_APIS: dict[str, str] = {
    key: STACK_APIS[key]
    for key in (
        RESOURCE_MANAGER_API,
        "iam.googleapis.com",
        "iamcredentials.googleapis.com",
        "storage.googleapis.com",
    )
}
# Only with CI access: google-github-actions/auth and GitLab's credential configuration
# exchange the job's OIDC token at sts.googleapis.com, and Pulumi decrypts the stack's
# secrets through Cloud KMS.
CI_APIS: dict[str, str] = {
    "sts.googleapis.com": "CI exchanges its OIDC token for a Google token",
    "cloudkms.googleapis.com": "CI decrypts the stack's secrets with its Cloud KMS key",
}

# Enabling an API is eventually consistent. The provider waits for the operation and for the
# service to be listed, yet "service activation is not guaranteed by the time the
# google_project_service resource is done provisioning" and calls made at once may fail with
# "Error 403: <Service> API has not been used in project <Project> before or it is disabled"
# (terraform-provider-google, guides/google_project_service, "Newly activated service
# errors"); no retry covers that error (transport/error_retry_predicates.go). So, as that guide
# suggests, everything else waits a while after the APIs are enabled: on the first `up`, and
# again whenever the stack enables one more.
SETTLE_SECONDS = 60

# Project roles the person running the first `pulumi up` needs for this component.
DEPLOY_ROLES: dict[str, str] = {
    "roles/serviceusage.serviceUsageAdmin": "enable the APIs the stack uses",
}


class ProjectApis(pulumi.ComponentResource):
    """One `gcp.projects.Service` per API, then a wait while they settle; `pulumi destroy`
    leaves the APIs on. What depends on this component waits for both."""

    def __init__(
        self,
        name: str,
        project: str,
        apis: Mapping[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpu-runners:index:ProjectApis", name, None, opts)

        def enable(api: str, after: list[pulumi.Resource]) -> gcp.projects.Service:
            return gcp.projects.Service(
                f"{name}-{api.removesuffix('.googleapis.com')}",
                project=project,
                service=api,
                # Other workloads in the project may use the API too; turning it off on
                # destroy could break them, and costs nothing to leave on.
                disable_on_destroy=False,
                opts=pulumi.ResourceOptions(parent=self, depends_on=after),
            )

        resource_manager = enable(RESOURCE_MANAGER_API, [])
        services = [resource_manager] + [
            enable(api, [resource_manager]) for api in sorted(apis) if api != RESOURCE_MANAGER_API
        ]
        # Runs on the machine running `pulumi up` (a laptop or CI), never on preview; a
        # changed list of APIs replaces it, so it waits again.
        command.local.Command(
            f"{name}-settle",
            create=f"sleep {SETTLE_SECONDS}",
            triggers=sorted(apis),
            opts=pulumi.ResourceOptions(parent=self, depends_on=services),
        )
        self.register_outputs({})
