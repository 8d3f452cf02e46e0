"""The runners' tokens and GitHub Apps: the shape each engine and forge takes, never shown."""

from typing import Any

import pulumi
from pulumi.runtime.config import is_config_secret

from infra import messages
from infra.engines.arc_runner import GithubApp
from infra.engines.gitlab_runner import CreateRunner
from infra.settings.parse import RUNNERS_KEY, TOKENS_KEY
from infra.settings.runners import RunnerSettings
from infra.settings.validation import (
    _APP_ID,
    _DIGITS,
    _PRIVATE_KEY,
    GITHUB_APP_KEYS,
    GITLAB_REGISTRATION_PREFIX,
    GITLAB_RUNNER_TOKEN_PREFIX,
)

# Token prefixes by forge (GitHub: "About authentication to GitHub", token formats; GitLab:
# "Token prefixes"). A GitLab deploy token (gldt-) reads a repository or registry; it can
# neither register a runner nor call the API.
_GITHUB_TOKEN_PREFIXES = ("ghp_", "github_pat_", "gho_", "ghu_", "ghs_", "ghr_")
_GITLAB_TOKEN_PREFIXES = (
    "glpat-",
    "glrt-",
    "glrtr-",
    "gldt-",
    "glptt-",
    "glcbt-",
    "gloas-",
    GITLAB_REGISTRATION_PREFIX,
)
_GITLAB_DEPLOY_TOKEN_PREFIX = "gldt-"


def _credential_problem(key: str, token: str, platform: str, engine: str) -> str | None:
    """What makes a token one that this runner's forge and engine cannot use; never shows it.
    The one place that knows which credential each forge and engine takes."""
    shown = f"{key} = {messages.SECRET_SHOWN_AS}"
    if token != token.strip():
        return (
            f"{shown}: has spaces or a line break around it (copied from a terminal?), which "
            "the forge refuses in an Authorization header; allowed: the token alone"
        )
    if token.startswith("{"):
        return (
            f"{shown}: looks like JSON, a GitHub App pasted as one value; allowed: a token, or, "
            f"on engine arc, the App's three values set one by one: `pulumi config set --secret "
            f"--path '{key.split(':', 1)[1]}.appId' <id>`, and likewise `.installationId` and "
            "`.privateKey`"
        )
    if platform == "github" and token.startswith(_GITLAB_TOKEN_PREFIXES):
        return f"{shown}: a GitLab token on a GitHub runner; allowed: a GitHub token"
    if platform == "gitlab" and token.startswith(_GITHUB_TOKEN_PREFIXES):
        return f"{shown}: a GitHub token on a GitLab runner; allowed: a GitLab token"
    if platform == "gitlab" and token.startswith(_GITLAB_DEPLOY_TOKEN_PREFIX):
        return (
            f"{shown}: a GitLab deploy token, which can neither register a runner nor use the "
            "API; allowed: a runner authentication token (glrt-…), or an access token with "
            "the api scope"
        )
    if engine == "cml" and platform == "gitlab" and token.startswith(GITLAB_RUNNER_TOKEN_PREFIX):
        # CML registers its runner through GitLab's API with this token (iterative/cml,
        # src/drivers/gitlab.js: runnerToken reads the project's runners_token, else it creates
        # the runner with POST /user/runners), which a runner's own token cannot call.
        return (
            f"{shown}: a runner authentication token, which CML cannot use: it registers its "
            "runner through GitLab's API; allowed: an access token with the api scope, or "
            "engine: gitlab-runner, which takes this token"
        )
    if engine == "gitlab-runner" and token.startswith(GITLAB_REGISTRATION_PREFIX):
        # Deprecated, and off by default since GitLab 17.0.
        return (
            f"{shown}: a runner registration token, which GitLab has "
            "deprecated and turns off by default since 17.0; allowed: a runner authentication "
            "token (glrt-…) from the project's Settings > CI/CD > Runners > New project runner, "
            "or an access token with the api scope of a Maintainer, for the stack to create it"
        )
    return None


def _github_app_problems(key: str, app: dict[str, Any]) -> list[str]:
    """What is wrong with a GitHub App's three values; names keys, never shows a value."""
    problems = [
        f"{key}.{name}: not a GitHub App key; allowed: {', '.join(GITHUB_APP_KEYS)}"
        for name in app
        if name not in GITHUB_APP_KEYS
    ]
    for name, pattern, allowed in (
        ("appId", _APP_ID, "the App's numeric ID, or its client ID (Iv…)"),
        ("installationId", _DIGITS, "the installation's numeric ID"),
        (
            "privateKey",
            _PRIVATE_KEY,
            "the App's private key, PEM, as GitHub gave it: BEGIN line, key lines, END line, "
            "with real line breaks",
        ),
    ):
        value = app.get(name)
        if value is None:
            problems.append(
                f"{key}.{name} is not set: {allowed}; run `pulumi config set --secret --path "
                f"'{key.split(':', 1)[1]}.{name}' <value>`"
            )
        elif not pattern.search(str(value)):
            problems.append(f"{key}.{name} = {messages.SECRET_SHOWN_AS}: allowed: {allowed}")
    return problems


def _credential(
    value: str | dict[str, Any], engine: str
) -> pulumi.Output[str] | GithubApp | CreateRunner:
    """A runner's credential as Pulumi secrets: its token, its GitHub App (arc), or, on
    gitlab-runner, a token that is not a runner's own and so lets the stack create one."""
    if isinstance(value, dict):
        return GithubApp(
            app_id=pulumi.Output.secret(str(value["appId"])),
            installation_id=pulumi.Output.secret(str(value["installationId"])),
            private_key=pulumi.Output.secret(value["privateKey"]),
        )
    if engine == "gitlab-runner" and not value.startswith(GITLAB_RUNNER_TOKEN_PREFIX):
        return CreateRunner(api_token=pulumi.Output.secret(value))
    return pulumi.Output.secret(value)


def _runner_problems(
    namespace: str,
    names: list[str],
    engines: dict[str, str],
    platforms: dict[str, str],
    tokens: Any,
) -> list[str]:
    """Names must be unique and each runner needs a token (or, on engine arc, a GitHub App),
    set as a secret. Never shows a token."""
    problems = []
    for index, name in enumerate(names):
        if name in names[:index]:
            problems.append(
                f"{namespace}:{RUNNERS_KEY}[{index}].name = {name!r}: duplicate runner name; "
                "each runner needs its own"
            )
    tokens_key = f"{namespace}:{TOKENS_KEY}"
    set_one = f"`pulumi config set --secret --path '{TOKENS_KEY}.<runner>' <token>`"
    if tokens and not is_config_secret(tokens_key):
        problems.append(
            f"{tokens_key} is stored in plain text in the stack file; remove it and set each "
            f"token with {set_one}"
        )
    if tokens is not None and not isinstance(tokens, dict):
        problems.append(
            f"{tokens_key} = {messages.SECRET_SHOWN_AS}: one value, but it holds one token per "
            f"runner name (was --path left out?); run `pulumi config rm {TOKENS_KEY}`, then "
            f"{set_one}"
        )
    if not isinstance(tokens, dict):
        tokens = {}
    for name in dict.fromkeys(names):
        value = tokens.get(name)
        engine = engines.get(name)
        if isinstance(value, dict) and engine == "arc":
            problems += _github_app_problems(f"{tokens_key}.{name}", value)
        elif isinstance(value, dict):
            problems.append(
                f"{tokens_key}.{name} holds a GitHub App, which only engine arc uses; set the "
                f"runner's token instead: `pulumi config rm --path '{TOKENS_KEY}.{name}'`, then "
                f"`pulumi config set --secret --path '{TOKENS_KEY}.{name}' <token>`"
            )
        elif not isinstance(value, str) or not value:
            app = (
                f", or a GitHub App: `{TOKENS_KEY}.{name}.appId`, `.installationId` and "
                "`.privateKey`"
                if engine == "arc"
                else ""
            )
            problems.append(
                f"{tokens_key}.{name} is not set: the runner's GitHub or GitLab token; run "
                f"`pulumi config set --secret --path '{TOKENS_KEY}.{name}' <token>`{app}"
            )
        else:
            key = f"{tokens_key}.{name}"
            problems += filter(
                None, [_credential_problem(key, value, platforms.get(name, "github"), engine)]
            )
    for name in tokens:
        if name not in names:
            problems.append(f"{tokens_key}.{name}: no runner is named {name!r}; runners: {names}")
    return problems


def _trust_problems(namespace: str, runners: list[RunnerSettings], tokens: Any) -> list[str]:
    """A trusted GitLab runner must be one the stack registers protected: the protected flag of
    a runner made in GitLab cannot travel with its authentication token (gitlab-runner,
    commands/register.go, ensureServerConfigArgsEmpty), and the stack cannot read it back, so
    merge request jobs could reach the DVC writer unseen."""
    given = tokens if isinstance(tokens, dict) else {}
    return [
        f"{namespace}:{RUNNERS_KEY}[{index}].trust = 'trusted': {TOKENS_KEY}.{runner.name} is a "
        f"runner authentication token ({GITLAB_RUNNER_TOKEN_PREFIX}…), whose runner the stack "
        "can neither make nor check protected in GitLab; allowed: a token that lets the stack "
        "create the runner (a project or personal access token with the api scope, of a "
        "Maintainer), which it registers protected, or trust: untrusted"
        for index, runner in enumerate(runners)
        if runner.trust == "trusted"
        and runner.runner_engine == "gitlab-runner"
        and isinstance(given.get(runner.name), str)
        and given[runner.name].startswith(GITLAB_RUNNER_TOKEN_PREFIX)
    ]


def _misplaced_token_problems(namespace: str, values: dict[str, Any]) -> list[str]:
    """A token anywhere but in runnerTokens would end up in clear in a Kubernetes object."""
    return [
        f"{path} holds what looks like a GitHub or GitLab token ({text}); a token belongs only "
        f"in {TOKENS_KEY}: `pulumi config set --secret --path '{TOKENS_KEY}.<runner>' <token>`"
        for key, value in values.items()
        if key != f"{namespace}:{TOKENS_KEY}"
        for path, text in messages.strings_in(value, key)
        if messages.TOKEN_LIKE.search(text)
    ]
