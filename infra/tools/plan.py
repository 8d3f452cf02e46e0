"""What a stack file would create, offline and without secrets: `python -m infra.tools.plan`.

    python -m infra.tools.plan [Pulumi.<stack>.yaml ...]

Runs `__main__.py` under the mocks of infra/tools/mock_engine.py as the first `pulumi preview` of a
stack would (what the cloud computes is not known yet, and a rule that would read such a
value fails here, where Pulumi would only warn), and prints as Markdown: the policy pack's
verdicts, every resource that `pulumi up` would create on an empty project with its inputs,
the Kubernetes manifests as YAML and each Helm release's values. It
reads no secret: each encrypted value of the stack file becomes "[secret]" before the program
sees it, so neither a secret nor its ciphertext can reach the output. For pull requests from
forks, which have no cloud credentials and no passphrase.

Several stack files are planned one after the other, in one process (CI plans them all).
Exit status, the highest of the files': 0; 1 when a mandatory policy is violated; 2 when the
stack file cannot be read or the program stops (refused settings, say), with the reason in
place of the plan.
"""

import argparse
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pulumi.runtime import rpc
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.deserialize import deserialize_properties

# What a rule's `args.not_applicable()` raises; pulumi-policy reports it as not applicable.
from pulumi_policy.policy import _NotApplicableError as NotApplicableError
from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy

from infra.tools.markdown import bounded, code_block, text
from infra.tools.mock_engine import (
    STAND_IN_GITLAB_PROJECT_ID,
    Resource,
    is_secret,
    reveal,
    run_stack,
)
from infra.tools.stack_file import (
    PLACEHOLDER,
    PROJECT,
    REPO,
    TOKENS,
    StackFileError,
    fill_quickstart_values,
    read_config,
)

# The policy pack's modules import one another as its runtime loads them, as top-level modules
# of its folder (policy/rules.py), so the folder goes on the path.
sys.path.insert(0, str(REPO / "policy"))
from rules import CLUSTER, HELM_RELEASE, MADE_CLUSTER_RULES, POLICIES

STAND_IN_PROJECT = "your-project-id"
STAND_IN_REPOSITORIES = {
    "github": "https://github.com/your-org/your-repo",
    "gitlab": "https://gitlab.com/your-group/your-project",
}
USER_RUNNER = "gitlab:index/userRunner:UserRunner"


@dataclass(frozen=True)
class PlannedStack:
    """A stack file's config with every encrypted value replaced by the placeholder."""

    stack: str
    config: dict[str, Any]
    secret_keys: set[str]
    stand_ins: list[str]
    """Keys the file lacks, or holds as one unreadable secret, that the plan fills in."""


@dataclass(frozen=True)
class Verdict:
    """One policy violation on one resource."""

    level: EnforcementLevel
    policy: str
    resource: Resource
    message: str


STAND_IN_CONTEXT = "your-current-context"
KUBECONFIG_STAND_IN = "a kubeconfig with the stack's context"


@contextmanager
def stand_in_kubeconfig(existing: Any) -> Iterator[None]:
    """For a stack on a cluster it does not make: a kubeconfig that has the stack's context
    (or a stand-in current one) and nothing else, in place of the reader's own."""
    if not isinstance(existing, dict):
        yield
        return
    context = existing.get("context")
    context = context if isinstance(context, str) and context else STAND_IN_CONTEXT
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
        "current-context": context,
    }
    saved = os.environ.get("KUBECONFIG")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        os.environ["KUBECONFIG"] = str(path)
        try:
            yield
        finally:
            if saved is None:
                del os.environ["KUBECONFIG"]
            else:
                os.environ["KUBECONFIG"] = saved


def read_stack_file(path: Path) -> PlannedStack:
    """The stack's config as the program would get it, without decrypting anything."""
    config = read_config(path)
    values, secret_keys = dict(config.values), set(config.secret_keys)
    if values.get(TOKENS) == PLACEHOLDER:
        # One secret for all tokens (set without --path): its runners cannot be read here.
        del values[TOKENS]
    stand_ins = fill_quickstart_values(
        values, STAND_IN_PROJECT, STAND_IN_REPOSITORIES, lambda _name, _platform: PLACEHOLDER
    )
    if TOKENS in stand_ins:
        secret_keys.add(TOKENS)
    if isinstance(values.get(f"{PROJECT}:existingCluster"), dict):
        stand_ins.append(KUBECONFIG_STAND_IN)
    stack = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    return PlannedStack(stack, values, secret_keys, stand_ins)


def _options(resource: Resource) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=resource.protect,
        ignore_changes=list(resource.ignore_changes),
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
        parent=resource.parent,
    )


CANNOT_RUN = "cannot run before `pulumi up`"


def _props(resource: Resource) -> dict[str, Any]:
    """A resource's inputs as the analyzer hands them to a rule: secrets in plain text, and
    a value not known yet raising UnknownValueError when read (pulumi-policy, policy.py)."""
    return unknown_checking_proxy(deserialize_properties(resource.inputs))


def _unknown(policy: Any, error: UnknownValueError) -> str:
    """What a rule that read an unknown value reports: Pulumi turns it into an advisory
    ("can't run policy … during preview"), so a mandatory rule would not hold; counted as a
    violation at the rule's own level here."""
    return f"{CANNOT_RUN}: {error.message}; rule {policy.name} would only warn on a first preview"


def violations(resource: Resource, policy: ResourceValidationPolicy) -> list[str]:
    """Run one resource policy on one recorded resource, as the policy engine would."""
    args = ResourceValidationArgs(
        resource_type=resource.type,
        props=_props(resource),
        urn=resource.urn,
        name=resource.name,
        opts=_options(resource),
        provider=None,
    )
    found: list[str] = []
    try:
        policy.validate(args, lambda message, urn=None: found.append(message))
    except NotApplicableError:
        return []
    except UnknownValueError as error:
        found.append(_unknown(policy, error))
    return found


def stack_violations(
    resources: list[Resource], policy: StackValidationPolicy
) -> list[tuple[Resource, str]]:
    """Run one stack policy on every recorded resource at once, as the policy engine would
    after the last registration; each violation with the resource it names."""
    args = StackValidationArgs(
        resources=[
            PolicyResource(
                resource_type=r.type,
                props=_props(r),
                urn=r.urn,
                name=r.name,
                opts=_options(r),
                provider=None,
                parent=None,
                dependencies=[],
                property_dependencies={},
            )
            for r in resources
        ]
    )
    by_urn = {r.urn: r for r in resources}
    found: list[tuple[Resource, str]] = []
    try:
        policy.validate(args, lambda message, urn=None: found.append((by_urn[urn], message)))
    except NotApplicableError:
        return []  # the rule says it has nothing to check (the plan names such rules)
    except UnknownValueError as error:
        # A stack rule reads every resource: the verdict is shown on the first.
        found.append((resources[0], _unknown(policy, error)))
    return found


def policy_violations(resources: list[Resource], policy: Any) -> list[tuple[Resource, str]]:
    """Every violation of one rule of the pack, resource or stack, with its resource."""
    if isinstance(policy, StackValidationPolicy):
        return stack_violations(resources, policy)
    return [(r, message) for r in resources for message in violations(r, policy)]


def verdicts(resources: Iterable[Resource]) -> list[Verdict]:
    """Every violation of the policy pack's rules among the resources."""
    recorded = list(resources)
    return [
        Verdict(policy.enforcement_level, policy.name, resource, message)
        for policy in POLICIES
        for resource, message in policy_violations(recorded, policy)
    ]


UNKNOWN_SHOWN = "(known after pulumi up)"


def shown(value: Any) -> Any:
    """A recorded value as the plan prints it: every secret as the placeholder, every value
    not known on a first preview as UNKNOWN_SHOWN."""
    if is_secret(value):
        return PLACEHOLDER
    if value == rpc.UNKNOWN:
        return UNKNOWN_SHOWN
    if isinstance(value, dict):
        return {k: shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown(v) for v in value]
    return value


def manifest(resource: Resource) -> dict[str, Any]:
    """A Kubernetes object's inputs as its manifest; a Secret's values hidden whatever they are."""
    inputs = shown(resource.inputs)
    if inputs.get("kind") == "Secret":
        for field in ("data", "stringData"):
            values = reveal(resource.inputs.get(field))
            if isinstance(values, dict):
                inputs[field] = dict.fromkeys(values, PLACEHOLDER)
            elif field in inputs:
                # Not known yet (a token the cloud makes): whole, secret or not by SDK version.
                inputs[field] = PLACEHOLDER
    return inputs


class _BlockDumper(yaml.SafeDumper):
    """YAML with multi-line strings (config.toml, scripts) as literal blocks."""


_BlockDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def _yaml(value: Any) -> str:
    return yaml.dump(value, Dumper=_BlockDumper, sort_keys=True, default_flow_style=False)


def is_kubernetes_object(resource: Resource) -> bool:
    return resource.type.startswith("kubernetes:") and resource.type != HELM_RELEASE


def _policy_section(found: list[Verdict], resources: list[Resource]) -> list[str]:
    lines = ["### Policy pack", ""]
    applicable = len(POLICIES)
    if not any(r.type == CLUSTER for r in resources):
        applicable -= len(MADE_CLUSTER_RULES)
        lines += [
            f"The stack makes no cluster, so {len(MADE_CLUSTER_RULES)} rules, about the cluster "
            "and its node pools, do not apply: "
            f"{', '.join(f'`{rule}`' for rule in MADE_CLUSTER_RULES)}.",
            "",
        ]
    if not found:
        lines.append(f"All {applicable} rules that apply pass on the {len(resources)} resources.")
        return lines
    mandatory = sum(v.level == EnforcementLevel.MANDATORY for v in found)
    advisory = sum(v.level == EnforcementLevel.ADVISORY for v in found)
    lines += [
        f"{mandatory} mandatory and {advisory} advisory violations of the "
        f"{len(POLICIES)} rules, on the {len(resources)} resources:",
        "",
        "| Level | Rule | Resource | Message |",
        "|---|---|---|---|",
    ]
    for verdict in found:
        message = verdict.message.replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {verdict.level.value} | `{verdict.policy}` | `{verdict.resource.name}` "
            f"| {message} |"
        )
    return lines


def _resource_sections(resources: list[Resource]) -> list[str]:
    lines = [f"### Resources ({len(resources)})", "", "| Type | Name |", "|---|---|"]
    lines += [f"| `{r.type}` | `{r.name}` |" for r in resources]
    lines += ["", "#### Google Cloud and GitLab resources", ""]
    if not any(r.type.startswith(("gcp:", "gitlab:")) for r in resources):
        lines.append("None.")
    for resource in resources:
        if resource.type.startswith(("gcp:", "gitlab:")):
            lines += [
                f"<details><summary><code>{resource.type}</code> {resource.name}</summary>",
                "",
                code_block(_yaml(shown(resource.inputs)).rstrip(), "yaml"),
                "</details>",
            ]
    manifests = [manifest(r) for r in resources if is_kubernetes_object(r)]
    lines += ["", "#### Kubernetes manifests", ""]
    lines.append(code_block("\n".join(f"---\n{_yaml(m).rstrip()}" for m in manifests), "yaml"))
    lines += ["", "#### Helm releases", ""]
    for release in (r for r in resources if r.type == HELM_RELEASE):
        inputs = shown(release.inputs)
        lines += [
            f"<details><summary>{release.name}: chart <code>{inputs.get('chart')}</code> "
            f"{inputs.get('version')}, namespace <code>{inputs.get('namespace')}</code>"
            "</summary>",
            "",
            code_block(_yaml(inputs.get("values") or {}).rstrip(), "yaml"),
            "</details>",
        ]
    return lines


def markdown(
    path: Path, stack_file: PlannedStack, resources: list[Resource], found: list[Verdict]
) -> str:
    """The plan of a stack file whose program ran, with the policy pack's verdicts, as Markdown."""
    lines = [
        f"### Offline plan: {text(path.name)} (stack {text(stack_file.stack)})",
        "",
        "No cloud was called: this is what `pulumi up` would create in an empty project, from "
        "the stack file alone, as its first `pulumi preview` sees it and runs the policy pack on "
        f"it. Secret values show as `{PLACEHOLDER}`; what only the cloud computes (account "
        "emails, the cluster's endpoint, every output of a Kubernetes object) as "
        f"`{UNKNOWN_SHOWN}`. A GitLab project's ID, which a preview reads from GitLab, is a "
        f"stand-in: {STAND_IN_GITLAB_PROJECT_ID}.",
    ]
    if stack_file.stand_ins:
        lines += [
            "",
            "Not in the stack file or not readable here, so planned with stand-ins: "
            + ", ".join(
                key if key == KUBECONFIG_STAND_IN else f"`{key}`" for key in stack_file.stand_ins
            )
            + ".",
        ]
    if any(r.type == USER_RUNNER for r in resources):
        lines += [
            "",
            "A secret token cannot be read here, so each `gitlab-runner` runner is planned with "
            "a token that creates the runner (a `UserRunner`); with a runner authentication "
            "token (`glrt-…`) in the stack file, no `UserRunner` is created.",
        ]
    lines += ["", *_policy_section(found, resources), "", *_resource_sections(resources)]
    return "\n".join(lines) + "\n"


def plan_stack_file(path: Path) -> int:
    """Print one stack file's plan; its exit status."""
    heading = f"### Offline plan: {text(path.name)}"
    try:
        stack_file = read_stack_file(path)
    except StackFileError as error:
        print(f"{heading}\n\nThe stack file cannot be read: {text(str(error))}")
        return 2
    with stand_in_kubeconfig(stack_file.config.get(f"{PROJECT}:existingCluster")):
        run = run_stack(
            stack_file.config, stack_file.secret_keys, stack_file.stack, first_preview=True
        )
    if run.error is not None:
        print(bounded(f"{heading}\n\nThe program stops:\n\n{code_block(str(run.error))}"))
        return 2
    resources = sorted(run.registered, key=lambda r: (r.type, r.name))
    found = verdicts(resources)
    print(bounded(markdown(path, stack_file, resources, found)))
    return 1 if any(v.level == EnforcementLevel.MANDATORY for v in found) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.tools.plan", description=__doc__)
    parser.add_argument("stack_files", nargs="*", default=[Path("Pulumi.dev.yaml")], type=Path)
    args = parser.parse_args(argv)
    return max(plan_stack_file(path) for path in args.stack_files)


if __name__ == "__main__":
    sys.exit(main())
