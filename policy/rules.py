"""The gpu-runners policies: GPU placement (gpu_rules.py), secrets and privileges, checked on
every preview.

Each policy validates one resource's inputs (camelCase, as the engine passes them), or the
whole stack's. The module builds no PolicyPack, so tests can call the policies without the
policy engine. The pack's runtime loads its modules as top-level modules of this folder, so
they import one another so (`from pod_specs import ...`); the tests and the offline plan put
this folder on the path the same way.
"""

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from gpu_rules import (
    MADE_CLUSTER_RULES,
    gpu_node_pools_are_labelled_tainted_and_driven,
    gpu_pools_scale_to_zero,
    gpu_pools_use_spot,
    gpu_runner_pods_select_a_gpu_class,
    gpu_workloads_select_and_tolerate_gpu_nodes,
    runner_pods_land_on_runner_pools,
)
from pod_specs import (
    CLUSTER,
    HELM_RELEASE,
    containers,
    job_namespace,
    job_pod_specs,
    plain,
    pod_specs,
    prop,
    stack_of,
    subject,
)
from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

# What the offline plan and the tests read from the pack besides its rules.
__all__ = ["CLUSTER", "HELM_RELEASE", "MADE_CLUSTER_RULES", "POLICIES", "TOKEN_DIGEST_ANNOTATION"]

# The annotation on GitLab's manager that restarts it on a new token: a digest of the token
# (infra/engines/gitlab_runner.py, TOKEN_VERSION_ANNOTATION), which holds no token by construction.
TOKEN_DIGEST_ANNOTATION = "gpu-runners/runner-token-sha256"
SERVICE_ACCOUNT_KEY = "gcp:serviceaccount/key:Key"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
PRIMITIVE_ROLES = ("roles/owner", "roles/editor")


_LITERAL_SECRETS: dict[str, re.Pattern] = {
    "a GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{20,})"),
    "a GitLab token": re.compile(r"\b(?:glpat|glrt)-[A-Za-z0-9_-]{20,}"),
    "a Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


def runner_pods_mount_no_api_token(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """A pod that runs CI jobs gets no Kubernetes API token: automountServiceAccountToken is
    false in the pod spec itself, whatever its service account says."""
    for pod in job_pod_specs(args):
        if plain(pod.get("automountServiceAccountToken")) is not False:
            report_violation(
                f"{subject(args)} runs CI jobs with a Kubernetes API token mounted; set "
                "automountServiceAccountToken: false in the pod spec (GitLab: "
                "automount_service_account_token = false).",
                None,
            )


def pods_have_a_seccomp_profile(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """Every pod runs under a seccomp profile (RuntimeDefault or stricter): GKE Standard applies
    none to a pod that does not ask."""
    for pod in pod_specs(args):
        if prop(pod, "securityContext", "seccompProfile", "type"):
            continue
        unfiltered = [
            c.get("name")
            for c in containers(pod)
            if not prop(c, "securityContext", "seccompProfile", "type")
        ]
        if unfiltered:
            report_violation(
                f"{subject(args)}: container {unfiltered[0]!r} runs without a seccomp profile; "
                "set securityContext.seccompProfile.type: RuntimeDefault on the pod.",
                None,
            )


def runner_namespaces_are_isolated(
    args: StackValidationArgs, report_violation: ReportViolation
) -> None:
    """Every namespace where CI jobs run has a NetworkPolicy that selects all of its pods for
    ingress and egress, so that a job reaches only what an allow rule lets it."""
    isolated = set()
    for resource in args.resources:
        spec = prop(resource.props, "spec") or {}
        closes_all = plain(spec.get("podSelector")) == {} and {"Ingress", "Egress"} <= set(
            plain(spec.get("policyTypes")) or []
        )
        if resource.resource_type == NETWORK_POLICY and closes_all:
            isolated.add(prop(resource.props, "metadata", "namespace"))
    for resource in args.resources:
        if not job_pod_specs(resource):
            continue
        namespace = job_namespace(resource)
        if namespace is not None and namespace not in isolated:
            report_violation(
                f"{resource.resource_type.rsplit(':', 1)[-1]} {resource.name!r} runs CI jobs in "
                f"namespace {namespace!r}, which no NetworkPolicy closes; add one with "
                "podSelector: {} and policyTypes [Ingress, Egress], and allow only DNS, the "
                "metadata server and the internet.",
                resource.urn,
            )


def _literal_secret_kind(text: Any) -> str | None:
    text = plain(text)
    if not isinstance(text, str):
        return None
    return next((kind for kind, p in _LITERAL_SECRETS.items() if p.search(text)), None)


def containers_hold_no_literal_tokens(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """No container env value, command or argument holds a token or key in clear."""
    for container in (c for pod in pod_specs(args) for c in containers(pod)):
        places = [
            (f"env {plain(e).get('name')}", plain(e).get("value"))
            for e in plain(container.get("env")) or []
        ]
        places += [("command", part) for part in plain(container.get("command")) or []]
        places += [("args", part) for part in plain(container.get("args")) or []]
        for place, text in places:
            kind = _literal_secret_kind(text)
            if kind:
                report_violation(
                    f"{subject(args)}: container {container.get('name')!r} {place} holds "
                    f"{kind} in clear; store it in a Secret and pass it with "
                    "env.valueFrom.secretKeyRef.",
                    None,
                )


def _strings(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every leaf of a nested value with its dotted path. The analyzer hands lists over as
    read-only sequences, not `list`, and secrets in plain text (pulumi-policy, policy.py)."""
    value = plain(value)
    if isinstance(value, Mapping):
        # Iterating the keys reads no value, so the digest is never read (unknown on a first
        # preview when the token is made by GitLab).
        for key in value:
            if key != TOKEN_DIGEST_ANNOTATION:
                yield from _strings(value[key], f"{path}.{key}")
    elif isinstance(value, Sequence) and not isinstance(value, str):
        for index, inner in enumerate(value):
            yield from _strings(inner, f"{path}[{index}]")
    else:
        yield path, value


def helm_values_hold_no_literal_tokens(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """No Helm release value holds a token or key in clear; it would sit in the release's
    history in the cluster and in the stack's state."""
    if args.resource_type != HELM_RELEASE:
        return
    for path, value in _strings(args.props.get("values") or {}, "values"):
        # A value marked secret in the program is no exception: the analyzer sees it in
        # plain text, and Helm keeps it so in the release's history in the cluster.
        kind = _literal_secret_kind(value)
        if kind:
            report_violation(
                f"{subject(args)}: {path} holds {kind} in clear; create a Secret from secret "
                "config and give the chart its name.",
                None,
            )


def no_service_account_keys(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """No long-lived service account keys: use Workload Identity (Federation) instead."""
    if args.resource_type == SERVICE_ACCOUNT_KEY:
        report_violation(
            f"{subject(args)} creates a long-lived service account JSON key; remove it and use "
            "Workload Identity (pods) or Workload Identity Federation (CI).",
            None,
        )


def no_primitive_roles(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Nobody is granted roles/owner or roles/editor."""
    role = plain(args.props.get("role"))
    policy = plain(args.props.get("policyData"))
    granted = [r for r in PRIMITIVE_ROLES if r == role or (isinstance(policy, str) and r in policy)]
    for primitive in granted:
        report_violation(
            f"{subject(args)} grants {primitive}; grant the narrow predefined roles the member "
            "needs instead.",
            None,
        )


def no_privileged_containers(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """No privileged container, and every container forbids privilege escalation."""
    for container in (c for pod in pod_specs(args) for c in containers(pod)):
        name = container.get("name")
        security = plain(container.get("securityContext")) or {}
        if plain(security.get("privileged")) is True:
            report_violation(
                f"{subject(args)}: container {name!r} is privileged; remove "
                "securityContext.privileged and add only the capabilities it needs.",
                None,
            )
        if plain(security.get("allowPrivilegeEscalation")) is not False:
            report_violation(
                f"{subject(args)}: container {name!r} may escalate privileges; set "
                "securityContext.allowPrivilegeEscalation: false.",
                None,
            )


def prod_clusters_have_deletion_protection(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """In stacks named prod*, a GKE cluster keeps deletion protection on."""
    stack = stack_of(args.urn)
    if args.resource_type != CLUSTER or not stack.startswith("prod"):
        return
    if plain(args.props.get("deletionProtection")) is False:
        report_violation(
            f"{subject(args)} in stack {stack!r} has deletion protection off; set "
            "cluster.deletionProtection: true (the default).",
            None,
        )


def _policy(
    validate: Callable[[Any, ReportViolation], None],
    level: EnforcementLevel,
    kind: type[ResourceValidationPolicy | StackValidationPolicy] = ResourceValidationPolicy,
) -> ResourceValidationPolicy | StackValidationPolicy:
    """A policy named after its function, described by its docstring; a resource policy, or
    with `kind` StackValidationPolicy one that sees every resource of the stack at once."""
    return kind(
        name=validate.__name__.replace("_", "-"),
        description=validate.__doc__ or "",
        validate=validate,
        enforcement_level=level,
    )


MANDATORY = EnforcementLevel.MANDATORY
ADVISORY = EnforcementLevel.ADVISORY

POLICIES: list[ResourceValidationPolicy | StackValidationPolicy] = [
    _policy(gpu_node_pools_are_labelled_tainted_and_driven, MANDATORY),
    _policy(gpu_workloads_select_and_tolerate_gpu_nodes, MANDATORY),
    _policy(runner_pods_land_on_runner_pools, MANDATORY, StackValidationPolicy),
    _policy(gpu_runner_pods_select_a_gpu_class, MANDATORY, StackValidationPolicy),
    _policy(runner_pods_mount_no_api_token, MANDATORY),
    _policy(pods_have_a_seccomp_profile, MANDATORY),
    _policy(runner_namespaces_are_isolated, MANDATORY, StackValidationPolicy),
    _policy(containers_hold_no_literal_tokens, MANDATORY),
    _policy(helm_values_hold_no_literal_tokens, MANDATORY),
    _policy(no_service_account_keys, MANDATORY),
    _policy(no_primitive_roles, MANDATORY),
    _policy(no_privileged_containers, MANDATORY),
    _policy(prod_clusters_have_deletion_protection, MANDATORY),
    _policy(gpu_pools_use_spot, ADVISORY),
    _policy(gpu_pools_scale_to_zero, ADVISORY),
]
