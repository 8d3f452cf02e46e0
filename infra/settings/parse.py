"""Reading a stack's config into its sections and runners, each problem with its config key."""

import re
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

import pulumi
from pulumi.config import ConfigTypeError
from pulumi.runtime.config import CONFIG, get_config_env
from pydantic import (
    Field,
    TypeAdapter,
    ValidationError,
)

from infra import machines, messages
from infra.engines.arc_runner import GithubApp
from infra.engines.gitlab_runner import CreateRunner
from infra.settings.existing_cluster import (
    EXISTING_CLUSTER_KEY,
    GKE_ONLY_SECTIONS,
    MADE_CLUSTER_SECTIONS,
    ExistingClusterSettings,
    gke_section_problems,
)
from infra.settings.gpu_classes import (
    GpuClass,
    GpuClassList,
    GpuClassSettings,
    GpuPoolSettings,
    gpu_classes,
)
from infra.settings.runners import RunnerSettings
from infra.settings.sections import (
    CiSettings,
    ClusterSettings,
    CpuPoolSettings,
    DvcRemoteSettings,
    SystemPoolSettings,
    _Section,
)
from infra.settings.validation import _PROJECT_ID


@dataclass(frozen=True)
class StackSettings:
    """Everything the program needs from the stack's config."""

    project: str | None
    """None only on an existing cluster that is not GKE."""
    existing_cluster: ExistingClusterSettings | None
    """The cluster the runners run on when the stack does not make one; then the GKE
    sections below are None, and so is dvc_remote off GKE."""
    kube_context: str | None
    """The kubeconfig context of the existing cluster, checked against the kubeconfig."""
    cluster: ClusterSettings | None
    system_pool: SystemPoolSettings | None
    gpu_classes: tuple[GpuClass, ...]
    cpu_pool: CpuPoolSettings | None
    dvc_remote: DvcRemoteSettings | None
    ci: CiSettings | None
    runners: tuple[RunnerSettings, ...]
    runner_credentials: dict[str, pulumi.Output[str] | GithubApp | CreateRunner]
    """Each runner's token (or GitHub App, or token to create the runner), as secrets."""


# Config key (in the project namespace) -> the model that validates it.
SECTIONS: dict[str, type[_Section]] = {
    "cluster": ClusterSettings,
    "systemPool": SystemPoolSettings,
    "gpuPool": GpuPoolSettings,
    "cpuPool": CpuPoolSettings,
    "dvcRemote": DvcRemoteSettings,
    "ci": CiSettings,
}
RUNNERS_KEY = "runners"
TOKENS_KEY = "runnerTokens"
GPU_CLASSES_KEY = "gpuPools"
_RUNNERS = TypeAdapter(Annotated[list[RunnerSettings], Field(min_length=1)])
_GPU_CLASSES = TypeAdapter(GpuClassList)
_SECTION_MODELS: dict[str, type[_Section]] = {
    **SECTIONS,
    EXISTING_CLUSTER_KEY: ExistingClusterSettings,
}
# Config key of a list -> the model of its entries.
_LISTS: dict[str, type[_Section]] = {RUNNERS_KEY: RunnerSettings, GPU_CLASSES_KEY: GpuClassSettings}


_KNOWN_KEYS = (*SECTIONS, GPU_CLASSES_KEY, EXISTING_CLUSTER_KEY, RUNNERS_KEY, TOKENS_KEY)
_EXAMPLES = {
    RUNNERS_KEY: {"repository": "https://github.com/<owner>/<repo>", "name": "cml-runner"},
    GPU_CLASSES_KEY: {"name": "l4"},
}


def _path(namespace: str, key: str, model: type[_Section], loc: tuple) -> tuple[str, str]:
    """The config path of an error, with and without the namespace: runners[0].memory."""
    fields = model.model_fields
    path = key
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            # A default that fails validation is reported under its Python name.
            path += "." + (fields[part].alias if part in fields else part)
    return f"{namespace}:{path}", path


def _describe(namespace: str, key: str, model: type[_Section], error: dict) -> str:
    """One line naming the config key, the value given and what is allowed."""
    full, path = _path(namespace, key, model, error["loc"])
    if error["type"] == "missing":
        example = _EXAMPLES.get(key, {}).get(str(error["loc"][-1]), "<value>")
        return f"{full} is not set; run `pulumi config set --path '{path}' {example}`"
    known = [f.alias for f in model.model_fields.values()]
    return f"{full} = {messages.show(error['input'])}: {messages.reason(error, known)}"


def _read(config: pulumi.Config, key: str) -> Any:
    """A config value as an object, or as the plain text it is when not JSON."""
    try:
        return config.get_object(key)
    except ConfigTypeError:
        return config.get(key)


def _project_problem(project: str | None) -> str | None:
    if not project:
        return "gcp:project is not set; run `pulumi config set gcp:project <your-project-id>`"
    if not _PROJECT_ID.match(project):
        return (
            f"gcp:project = {project!r}: allowed: a project ID of 6 to 30 lowercase letters, "
            "digits and hyphens, starting with a letter"
        )
    return None


def _parse(
    model: Any, namespace: str, key: str, raw: Any, context: dict, problems: list[str]
) -> Any:
    """Validate one config key; on failure add its problems and return None."""
    try:
        return model.validate_python(raw, context=context)
    except ValidationError as error:
        item = _LISTS.get(key) or _SECTION_MODELS[key]
        problems += [
            _describe(namespace, key, item, e)
            for e in messages.innermost(error.errors(include_url=False))
        ]
        return None


def _unknown_key_problems(namespace: str, keys: list[str]) -> list[str]:
    """Every key in the project's namespace must be one the program reads."""
    problems = []
    for full in keys:
        key = full.removeprefix(f"{namespace}:")
        if key in _KNOWN_KEYS:
            continue
        head = re.split(r"[.\[]", key, maxsplit=1)[0]
        if head in _KNOWN_KEYS:
            problems.append(
                f"{full}: a key with a path in its name, as `pulumi config set` without --path "
                f"writes it, so it is ignored; run `pulumi config rm '{key}'` and "
                f"`pulumi config set --path '{key}' <value>`"
            )
        else:
            problems.append(
                f"{full}: unknown key{messages.closest(key, _KNOWN_KEYS)}; allowed keys: "
                f"{', '.join(_KNOWN_KEYS)}"
            )
    return problems


def _runner_names(raw_runners: Any) -> list[str]:
    """The runner names the config gives, valid or not, so tokens are checked in any case."""
    if not isinstance(raw_runners, list):
        return []
    return [
        r["name"] for r in raw_runners if isinstance(r, dict) and isinstance(r.get("name"), str)
    ]


def _platform_problems(namespace: str, raw_runners: Any) -> list[str]:
    """A runner left on the default platform (github) whose repository or engine is GitLab's:
    name the key to set, not only what then fails to fit."""
    problems = []
    for index, raw in enumerate(raw_runners if isinstance(raw_runners, list) else []):
        if not isinstance(raw, dict) or "platform" in raw:
            continue
        repository = raw.get("repository")
        # The host alone: never the user-info, which may hold a token.
        try:
            host = (urlsplit(repository).hostname or "") if isinstance(repository, str) else ""
        except ValueError:  # not a URL at all: the repository's own check says so
            host = ""
        gitlab_repository = host not in ("", "github.com", "www.github.com")
        if gitlab_repository or raw.get("engine") == "gitlab-runner":
            why = f"a repository on {host}" if gitlab_repository else "the engine gitlab-runner"
            problems.append(
                f"{namespace}:{RUNNERS_KEY}[{index}].platform is not set, so github, but the "
                f"runner names {why}; run `pulumi config set --path "
                f"'{RUNNERS_KEY}[{index}].platform' gitlab`"
            )
    return problems


def _raw_runners_by_name(raw_runners: Any) -> dict[str, dict[str, Any]]:
    """The config's runner entries by name, valid or not, so tokens are checked in any case."""
    if not isinstance(raw_runners, list):
        return {}
    return {
        r["name"]: r for r in raw_runners if isinstance(r, dict) and isinstance(r.get("name"), str)
    }


def _config_keys() -> list[str]:
    """Every config key the stack has, from the engine's config."""
    return sorted({*CONFIG.get(), *get_config_env()})


def parse_sections(
    namespace: str, given: dict[str, Any], problems: list[str]
) -> tuple[dict[str, Any], list[RunnerSettings]]:
    """The validated sections, GPU classes (under "gpuClasses") and runners of a stack's config
    (keys without the namespace), with what is wrong appended to `problems`. On an existing
    cluster (`existingCluster`) the GKE sections are None. Tokens and the project are not its
    business."""
    context: dict[str, Any] = {"machines": {}}
    parsed: dict[str, Any] = {EXISTING_CLUSTER_KEY: None}
    skipped: tuple[str, ...] = ()
    if given.get(EXISTING_CLUSTER_KEY) is not None:
        problems += gke_section_problems(namespace, given)
        existing = _parse(
            TypeAdapter(ExistingClusterSettings),
            namespace,
            EXISTING_CLUSTER_KEY,
            given[EXISTING_CLUSTER_KEY],
            context,
            problems,
        )
        parsed[EXISTING_CLUSTER_KEY] = existing
        context["existing"] = existing
        on_gke = existing is not None and existing.gke is not None
        skipped = (*MADE_CLUSTER_SECTIONS, *(() if on_gke else GKE_ONLY_SECTIONS))
    several = given.get(GPU_CLASSES_KEY)
    if several is not None and given.get("gpuPool") is not None and not skipped:
        problems.append(
            f"{namespace}:gpuPool and {namespace}:{GPU_CLASSES_KEY} are both set; allowed: one "
            f"of them, gpuPool for one GPU class or {GPU_CLASSES_KEY} for several "
            f"(`pulumi config rm gpuPool` once its settings are a class of {GPU_CLASSES_KEY})"
        )
    for key, model in SECTIONS.items():
        if key in skipped or (key == "gpuPool" and several is not None):
            parsed[key] = None
            continue
        raw = given.get(key) or {}
        parsed[key] = _parse(TypeAdapter(model), namespace, key, raw, context, problems)
        if key == "cluster" and parsed[key]:
            context["region"] = parsed[key].region
        if key == "cpuPool" and parsed[key]:
            context["machines"][key] = machines.machine(parsed[key].machine_type)
    classes = (
        _parse(_GPU_CLASSES, namespace, GPU_CLASSES_KEY, several, context, problems)
        if several is not None and not skipped
        else None
    )
    parsed["gpuClasses"] = gpu_classes(parsed["gpuPool"], classes)
    context["gpu_classes"] = {c.name: c for c in parsed["gpuClasses"]}
    raw_runners = given.get(RUNNERS_KEY) or []
    runners = _parse(_RUNNERS, namespace, RUNNERS_KEY, raw_runners, context, problems)
    return parsed, runners or []
