"""Stack settings: read from Pulumi config, validated in one pass, returned frozen.

Every invalid value is collected and reported in one SettingsError, raised before any
resource is registered, so a bad config never leaves a half-created stack.
"""

from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.config import is_config_secret

from infra import messages
from infra.settings.credentials import (
    _credential,
    _misplaced_token_problems,
    _runner_problems,
    _trust_problems,
)
from infra.settings.existing_cluster import (
    EXISTING_CLUSTER_KEY,
    ExistingClusterSettings,
    ci_context_problems,
    gke_context,
    kube_context,
)
from infra.settings.fleet import _fleet_problems, _project_unique_ids
from infra.settings.gpu_classes import GpuClass, GpuNodePool, GpuPoolSettings, class_named
from infra.settings.parse import (
    RUNNERS_KEY,
    SECTIONS,
    TOKENS_KEY,
    StackSettings,
    _config_keys,
    _platform_problems,
    _project_problem,
    _raw_runners_by_name,
    _read,
    _runner_names,
    _unknown_key_problems,
    parse_sections,
)
from infra.settings.runners import RunnerSettings, _engine, quantity_value
from infra.settings.sections import (
    ClusterSettings,
    CpuPoolSettings,
    SystemPoolSettings,
)
from infra.settings.validation import SettingsError, region_of
from infra.tools import stack_file as stack_files

# What the program, the tools and the tests read from the settings.
__all__ = [
    "RUNNERS_KEY",
    "SECTIONS",
    "STACK_FILE_DIR",
    "TOKENS_KEY",
    "ClusterSettings",
    "CpuPoolSettings",
    "ExistingClusterSettings",
    "GpuClass",
    "GpuNodePool",
    "GpuPoolSettings",
    "RunnerSettings",
    "SettingsError",
    "StackSettings",
    "SystemPoolSettings",
    "class_named",
    "gke_context",
    "load",
    "parse_sections",
    "quantity_value",
    "region_of",
]

STACK_FILE_DIR = stack_files.REPO


def _ambient_kubernetes_problems(namespace: str, keys: list[str]) -> list[str]:
    """The Kubernetes provider's own config keys, which Pulumi's docs suggest for choosing a
    cluster: every Kubernetes object here goes through the stack's explicit provider, which
    reads none of them, so they would silently change nothing."""
    return [
        f"{key}: read by Pulumi's default Kubernetes provider only, which the stack does not "
        f"use; allowed: remove it (`pulumi config rm {key}`), and name the cluster with "
        f"{namespace}:{EXISTING_CLUSTER_KEY}.context"
        for key in keys
        if key in ("kubernetes:context", "kubernetes:kubeconfig", "kubernetes:cluster")
    ]


def _shared_project_problems(
    namespace: str,
    project: str | None,
    parsed: dict[str, Any],
    runners: list[RunnerSettings],
    stack_file_dir: Path,
) -> list[str]:
    """An ID this stack would take that another stack file of the same project takes too: one
    of the two stacks would fail half-way with "already exists", or manage, or act as, what
    belongs to the other."""
    ours = _project_unique_ids(parsed, runners) if project else {}
    if not ours:
        return []
    this_file = f"Pulumi.{pulumi.get_stack()}.yaml"
    problems = []
    for path in sorted(stack_file_dir.glob("Pulumi.*.yaml")):
        if path.name == this_file:
            continue
        try:
            other = stack_files.read_config(path).values
        except stack_files.StackFileError:
            continue  # that stack reports its own file when it runs
        if other.get("gcp:project") != project:
            continue
        given = {k.removeprefix(f"{namespace}:"): v for k, v in other.items()}
        theirs, their_runners = parse_sections(namespace, given, [])
        shared = ours.keys() & _project_unique_ids(theirs, their_runners).keys()
        for key, value in sorted({(ours[i].key, ours[i].value) for i in shared}):
            what = ", ".join(ours[i].what for i in sorted(shared) if ours[i].key == key)
            problems.append(
                f"{namespace}:{key} = {value!r}: {path.name} deploys to the same project "
                f"({project}) with the same value, so both stacks would take the {what}; "
                f"allowed: a value no other stack of this project uses. Change it in whichever "
                f"of {this_file} and {path.name} is not deployed yet: in a deployed stack a "
                "new value replaces what it names"
            )
    return problems


def load() -> StackSettings:
    """Read and validate the stack's config, or raise one SettingsError listing every problem.

    The project's other stack files (in STACK_FILE_DIR) are read too, for IDs two stacks of
    one project cannot share.

    No message shows a value read from a secret config key, nor anything that looks like a
    GitHub or GitLab token, wherever it was put.
    """
    config = pulumi.Config()
    namespace = config.name
    project = pulumi.Config("gcp").get("project")
    keys = [k for k in _config_keys() if k.startswith(f"{namespace}:")]
    problems = _unknown_key_problems(namespace, keys)
    problems += _ambient_kubernetes_problems(namespace, _config_keys())
    values = {k: _read(config, k.removeprefix(f"{namespace}:")) for k in keys}
    given = {k.removeprefix(f"{namespace}:"): value for k, value in values.items()}
    existing_config = given.get(EXISTING_CLUSTER_KEY)
    off_gcp = isinstance(existing_config, dict) and existing_config.get("gke") is None
    # Off Google Cloud the stack makes nothing there, so needs no project.
    if not (off_gcp and project is None):
        problems = [p for p in [_project_problem(project)] if p] + problems
    secrets = [
        text for k in keys if is_config_secret(k) for _, text in messages.strings_in(values[k], k)
    ]
    problems += _misplaced_token_problems(namespace, values)
    problems += _platform_problems(namespace, given.get(RUNNERS_KEY))
    parsed, runners = parse_sections(namespace, given, problems)
    problems += _fleet_problems(namespace, parsed, runners)
    raw_runners = given.get(RUNNERS_KEY) or []
    tokens = given.get(TOKENS_KEY)
    by_name = _raw_runners_by_name(raw_runners)
    problems += _runner_problems(
        namespace,
        _runner_names(raw_runners),
        # Each runner's engine and forge, as configured or by default, for its token's check.
        {name: _engine(r) for name, r in by_name.items()},
        {name: r.get("platform") or "github" for name, r in by_name.items()},
        tokens,
    )
    problems += _trust_problems(namespace, runners, tokens)
    context = None
    if parsed[EXISTING_CLUSTER_KEY] is not None:
        context, context_problems = kube_context(namespace, parsed[EXISTING_CLUSTER_KEY])
        problems += context_problems
        ci = parsed["ci"]
        problems += ci_context_problems(
            namespace, project, parsed[EXISTING_CLUSTER_KEY], ci is not None and ci.enabled
        )
    problems += _shared_project_problems(namespace, project, parsed, runners, STACK_FILE_DIR)
    if problems:
        stack_file = f"Pulumi.{pulumi.get_stack()}.yaml"
        raise SettingsError(
            messages.shortened(
                messages.mask(
                    f"Invalid stack configuration ({stack_file}); nothing was created.\n"
                    + "\n".join(f"  - {problem}" for problem in problems),
                    secrets,
                )
            )
        )
    return StackSettings(
        project=project,
        existing_cluster=parsed[EXISTING_CLUSTER_KEY],
        kube_context=context,
        cluster=parsed["cluster"],
        system_pool=parsed["systemPool"],
        gpu_classes=parsed["gpuClasses"],
        cpu_pool=parsed["cpuPool"],
        dvc_remote=parsed["dvcRemote"],
        ci=parsed["ci"],
        runners=tuple(runners),
        runner_credentials={r.name: _credential(tokens[r.name], r.runner_engine) for r in runners},
    )
