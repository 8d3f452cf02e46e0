"""Small IAM building blocks the components share: project and service account grants."""

from collections.abc import Iterable, Sequence

import pulumi
import pulumi_gcp as gcp


def grant_project_roles(
    name: str,
    project: str,
    roles: Iterable[str],
    member: pulumi.Input[str],
    opts: pulumi.ResourceOptions,
) -> list[gcp.projects.IAMMember]:
    """Add member to each project role, one non-authoritative binding per role."""
    return [
        gcp.projects.IAMMember(
            f"{name}-{role.removeprefix('roles/')}",
            project=project,
            role=role,
            member=member,
            opts=opts,
        )
        for role in roles
    ]


def grant_ci_account_role(
    name: str,
    account: gcp.serviceaccount.Account,
    role: str,
    members: Sequence[pulumi.Input[str]],
    opts: pulumi.ResourceOptions,
) -> list[gcp.serviceaccount.IAMMember]:
    """Give CI members a role on one of the stack's accounts, protected: a
    `destroy --exclude-protected` keeps the grant and the account, which CI could not create."""
    return [
        gcp.serviceaccount.IAMMember(
            f"{name}-{index}",
            service_account_id=account.name,
            role=role,
            member=member,
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(protect=True)),
        )
        for index, member in enumerate(members)
    ]
