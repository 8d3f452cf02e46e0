"""The tests' way into infra/tools/mock_engine.py: Pulumi.<stack>.yaml with per-test overrides."""

import copy
import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import settings as runtime_settings
from pulumi.runtime.sync_await import _sync_await

from infra.tools.mock_engine import (
    PROJECT,
    REPO,
    Resource,
    Run,
    is_secret,
    reveal,
    run_mocked,
    run_stack,
)
from infra.tools.mock_engine import STAND_IN_GITLAB_PROJECT_ID as TEST_GITLAB_PROJECT_ID
from infra.tools.mock_engine import STAND_IN_PROJECT_NUMBER as TEST_PROJECT_NUMBER
from infra.tools.mock_engine import STAND_IN_RUNNER_TOKEN as CREATED_RUNNER_TOKEN
from infra.tools.stack_file import RUNNERS, TOKENS, fill_quickstart_values, read_config

__all__ = [
    "CREATED_RUNNER_TOKEN",
    "PROJECT",
    "REPO",
    "RUNNERS",
    "TEST_GITLAB_PROJECT_ID",
    "TEST_PROJECT_NUMBER",
    "TOKENS",
    "Resource",
    "is_secret",
    "reveal",
]

TEST_PROJECT_ID = "ml-team-sandbox"


def manual() -> str:
    """The user's manual: the README, then every page of docs/."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return "\n\n".join(page.read_text() for page in pages)


# The dev stack's image mirror: Artifact Registry in the cluster's region.
MIRROR = f"europe-west6-docker.pkg.dev/{TEST_PROJECT_ID}"
TEST_REPOSITORIES = {
    "github": "https://github.com/ml-team/churn-model",
    "gitlab": "https://gitlab.com/ml-team/churn-model",
}


@dataclass
class Program:
    """What one run of the program registered and exported."""

    resources: list[Resource]
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def waits_for(self, resource: Resource, target: Resource) -> bool:
        """Whether the engine creates `target` before `resource` (dependsOn, transitively)."""
        by_urn = {r.urn: r for r in self.resources}
        seen: set[str] = set()
        pending = list(resource.depends_on)
        while pending:
            urn = pending.pop()
            if urn == target.urn:
                return True
            if urn not in seen and urn in by_urn:
                seen.add(urn)
                pending.extend(by_urn[urn].depends_on)
        return False

    def one(self, type_: str, name: str | None = None) -> Resource:
        """The single resource of a type (and name, when given); fails loudly otherwise."""
        found = [r for r in self.of_type(type_) if name is None or r.name == name]
        assert len(found) == 1, (
            f"expected one {type_} {name or ''}, found {[r.name for r in found]}"
        )
        return found[0]


def finished_program(run: Run) -> Program:
    """What a run that ended without error registered and exported."""
    program = Program(run.registered)
    for name, value in runtime_settings.get_root_resource().outputs.items():
        output = pulumi.Output.from_input(value)
        program.outputs[name] = _sync_await(output.future())
        if _sync_await(output.is_secret()):
            program.secret_outputs.add(name)
    return program


def fake_token(runner: str, platform: str = "github") -> str:
    """A token-shaped stand-in for a runner's token on its forge, distinct per runner."""
    digest = hashlib.sha256(runner.encode()).hexdigest()
    return "glpat-" + digest[:20] if platform == "gitlab" else "ghp_" + digest[:36]


# libyaml's loader where PyYAML has it (its wheels do): a vendored CRD is 100s of KB.
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def read_yaml(path: Path) -> Any:
    """A YAML file the tests only read (a vendored schema), parsed once per session."""
    return yaml.load(path.read_text(), Loader=_FAST_LOADER)


@functools.cache
def _stack_file_values(stack: str) -> dict[str, Any]:
    """Pulumi.<stack>.yaml's config, read once per session: the tests never write it."""
    return read_config(REPO / f"Pulumi.{stack}.yaml").values


def stack_config(
    stack: str, overrides: Mapping[str, Any], without: Iterable[str]
) -> dict[str, Any]:
    """Pulumi.<stack>.yaml's config, per-test overrides merged in, plus the quickstart's values.

    An override of an object key is merged one level deep into the stack file's object, so a
    test names only the fields it changes; a key or field overridden with None is removed. Keys in
    `without` are removed after the quickstart's values are added.
    """
    config = copy.deepcopy(_stack_file_values(stack))
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
            continue
        base = config.get(key)
        if isinstance(base, dict) and isinstance(value, dict):
            value = {k: v for k, v in (base | value).items() if v is not None}
        config[key] = value
    fill_quickstart_values(config, TEST_PROJECT_ID, TEST_REPOSITORIES, fake_token)
    # A runner field a test sets to None is left out, as a user who never set it would.
    for runner in config.get(RUNNERS, []):
        if isinstance(runner, dict):
            for key in [k for k, v in runner.items() if v is None]:
                del runner[key]
    for key in without:
        config.pop(key, None)
    return config


def _run(
    config: Mapping[str, Any] | None,
    secrets: Mapping[str, Any] | None,
    stack: str,
    without: Iterable[str],
    first_preview: bool = False,
) -> Run:
    values = stack_config(stack, {**(config or {}), **(secrets or {})}, without)
    secret_keys = {*(secrets or {}), *({TOKENS} & values.keys() - set(config or {}))}
    return run_stack(values, secret_keys, stack, first_preview)


def run_components(build: Callable[[], Any]) -> Program:
    """Run a function that builds components, outside the stack program, and record it."""
    run = run_mocked(build, {}, (), "components")
    if run.error is not None:
        raise run.error
    return finished_program(run)


def run_program(
    config: Mapping[str, Any] | None = None,
    secrets: Mapping[str, Any] | None = None,
    stack: str = "dev",
    without: Iterable[str] = (),
    first_preview: bool = False,
) -> Program:
    """Run __main__.py for a stack, as `pulumi up` would (or, with first_preview, as the first
    `pulumi preview` of the stack would), and return what it registered.

    config: overrides merged into Pulumi.<stack>.yaml; secrets: keys set as secret config;
    without: keys removed. Raises what the program raises. The same arguments give a copy of
    the first run's record: the program is deterministic, and many tests read the same stack.
    """
    key = json.dumps(
        [config, secrets, stack, sorted(without), first_preview], sort_keys=True, default=str
    )
    if key not in _PROGRAMS:
        run = _run(config, secrets, stack, without, first_preview)
        if run.error is not None:
            raise run.error
        _PROGRAMS[key] = finished_program(run)
    return copy.deepcopy(_PROGRAMS[key])


_PROGRAMS: dict[str, Program] = {}


def forget_programs() -> None:
    """Drop the record of earlier runs, for a test that patches what the program reads."""
    _PROGRAMS.clear()


def run_rejected_program(
    config: Mapping[str, Any] | None = None,
    secrets: Mapping[str, Any] | None = None,
    stack: str = "dev",
    without: Iterable[str] = (),
) -> tuple[BaseException, list[Resource]]:
    """Run a stack that must fail; return the error and what was registered before it."""
    run = _run(config, secrets, stack, without)
    assert run.error is not None, "the program accepted a config it should have rejected"
    return run.error, run.registered
