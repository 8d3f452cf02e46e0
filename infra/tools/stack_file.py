"""A stack file's config as the Pulumi CLI would hand it to the program, without decrypting it.

What the CLI does (pulumi/pulumi, sdk/go/common): it reads the file as YAML 1.2 with
gopkg.in/yaml.v3, so `no` and `on` stay strings and a date stays text; a key without a
namespace belongs to the project (workspace/loaders.go, stackConfigNamespacedWithProject); the
old form `<namespace>:config:<key>` still means `<namespace>:<key>` (config/key.go); a value is
secure only when it is a map whose one key `secure` holds a string (config/object.go). Here
each secure value becomes a placeholder, so the ciphertext never reaches the program.
"""

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra import messages

REPO = Path(__file__).resolve().parent.parent.parent
PROJECT = yaml.safe_load((REPO / "Pulumi.yaml").read_text())["name"]
RUNNERS = f"{PROJECT}:runners"
TOKENS = f"{PROJECT}:runnerTokens"
PLACEHOLDER = messages.SECRET_SHOWN_AS
# A secret GitHub App's fields, unreadable here, as values of the right shape (the program
# checks them) that it still treats as secrets.
_SHAPED_PLACEHOLDERS = {
    "appId": "0",
    "installationId": "0",
    "privateKey": f"-----BEGIN PRIVATE KEY-----\n{PLACEHOLDER}\n-----END PRIVATE KEY-----\n",
}


class StackFileError(Exception):
    """A stack file that cannot be read; the message never quotes the file's text."""


# Bounds on what a stack file may be: a real one is a few KB. Past them the CLI refuses too
# (yaml.v3: "document contains excessive aliasing"; decoder.go, allowedAliasRatio) or the
# file is not a stack file.
MAX_BYTES = 1024 * 1024
MAX_EXPANDED_NODES = 100_000
# Aliases of one long string multiply characters, not nodes.
MAX_EXPANDED_CHARS = 2 * MAX_BYTES


# libyaml's parser where PyYAML has it (its wheels do): ten times faster on a large file.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Yaml12Loader(_SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans and no timestamps, as yaml.v3 reads;
    refusing a key given twice in one mapping (yaml.v3: "mapping key … already defined")."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges a mapping in, as yaml.v3 reads it
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # left to the constructor, which refuses unhashable keys
            if key in seen:
                mark = key_node.start_mark
                raise StackFileError(
                    f"a mapping key is given twice, at line {mark.line + 1}, column "
                    f"{mark.column + 1}"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [
        (tag, pattern) for tag, pattern in resolvers if not tag.endswith((":bool", ":timestamp"))
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass(frozen=True)
class StackConfig:
    """The config, each secure value a placeholder, and the keys that held one."""

    values: dict[str, Any]
    secret_keys: set[str]


def _is_secure(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"secure"} and isinstance(value["secure"], str)


def _masked(value: Any, field: str = "") -> tuple[Any, bool]:
    """A value with each secure value replaced by a placeholder, and whether any was."""
    if _is_secure(value):
        return _SHAPED_PLACEHOLDERS.get(field, PLACEHOLDER), True
    if isinstance(value, dict) and "secure" in value:
        # Not the CLI's shape for a secret (a map whose one key `secure` holds a string), yet
        # most likely ciphertext: refused, never shown as a plain value.
        raise StackFileError(
            "a `secure:` value of another shape than `secure: <ciphertext>`; set it again with "
            "`pulumi config set --secret`"
        )
    if isinstance(value, dict):
        pairs = {k: _masked(v, str(k)) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(s for _, s in pairs.values())
    if isinstance(value, list):
        items = [_masked(v) for v in value]
        return [v for v, _ in items], any(s for _, s in items)
    return value, False


def _full_key(key: str) -> str:
    if ":" not in key:
        return f"{PROJECT}:{key}"
    namespace, _, rest = key.partition(":")
    return f"{namespace}:{rest.removeprefix('config:')}"


def _text(path: Path) -> str:
    """A stack file's text, read with bounds, or StackFileError saying what the path is."""
    if not path.exists():
        raise StackFileError(f"{path.name}: no such file")
    if not path.is_file():
        raise StackFileError(f"{path.name}: not a regular file")
    with path.open("rb") as file:
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise StackFileError(f"{path.name}: larger than {MAX_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise StackFileError(f"{path.name}: not UTF-8 (byte {error.start})") from None


def _expanded_size(node: yaml.Node, sizes: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """How many nodes and characters the document has once every alias is expanded
    (memoised per node)."""
    if id(node) not in sizes:
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = (1, len(node.value))
        else:
            children = (
                node.value
                if isinstance(node, yaml.SequenceNode)
                else [part for pair in node.value for part in pair]
            )
            parts = [_expanded_size(child, sizes) for child in children]
            sizes[id(node)] = (1 + sum(n for n, _ in parts), sum(c for _, c in parts))
    return sizes[id(node)]


def _load(text: str) -> Any:
    """The YAML document, refusing excessive aliasing and deep nesting before building it."""
    loader = _Yaml12Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            nodes, chars = _expanded_size(node, {})
            if nodes > MAX_EXPANDED_NODES or chars > MAX_EXPANDED_CHARS:
                raise StackFileError("excessive aliasing (YAML anchors and aliases)")
        return loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise StackFileError("nested too deeply") from None
    except yaml.MarkedYAMLError as error:
        # libyaml stops at 1000 levels (yaml_set_max_nest_level).
        if "nesting depth" in str(error.problem):
            raise StackFileError("nested too deeply") from None
        raise
    finally:
        loader.dispose()


def read_config(path: Path) -> StackConfig:
    """The config of a Pulumi.<stack>.yaml, or StackFileError naming what is wrong, never
    quoting the file."""
    text = _text(path)
    try:
        document = _load(text)
    except StackFileError as error:
        raise StackFileError(f"{path.name}: {error}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StackFileError(f"{path.name} is not valid YAML{where}") from None
    except yaml.YAMLError:
        raise StackFileError(f"{path.name} is not valid YAML") from None
    config = (document or {}).get("config") if isinstance(document, dict | None) else None
    if document is not None and not isinstance(document, dict):
        raise StackFileError(f"{path.name} is not a stack file: it holds no mapping")
    if not isinstance(config or {}, dict):
        raise StackFileError(f"{path.name}: config should be a mapping of keys to values")
    values, secret_keys = {}, set()
    for key, value in (config or {}).items():
        full = _full_key(str(key))
        try:
            values[full], secret = _masked(value)
        except StackFileError as error:
            raise StackFileError(f"{path.name}: {full}: {error}") from None
        if secret:
            secret_keys.add(full)
    return StackConfig(values, secret_keys)


def fill_quickstart_values(
    config: dict[str, Any],
    project: str,
    repositories: Mapping[str, str],
    token: Callable[[str, str], str],
) -> list[str]:
    """Set what the README's quickstart asks the user to set, where the config lacks it: the
    project, each runner's repository (by platform) and the runners' tokens (`token(name,
    platform)`). Returns the keys it set."""
    filled = []
    existing = config.get(f"{PROJECT}:existingCluster")
    off_gcp = isinstance(existing, dict) and existing.get("gke") is None
    if "gcp:project" not in config and not off_gcp:
        config["gcp:project"] = project
        filled.append("gcp:project")
    runners = config.get(RUNNERS)
    runners = runners if isinstance(runners, list) else []
    for index, runner in enumerate(runners):
        if not isinstance(runner, dict):
            continue
        if "repository" not in runner:
            platform = runner.get("platform", "github")
            default = repositories.get(platform) if isinstance(platform, str) else None
            runner["repository"] = default or "https://example.org/x/y"
            filled.append(f"{RUNNERS}[{index}].repository")
    if TOKENS not in config:
        config[TOKENS] = {
            r["name"]: token(r["name"], r.get("platform", "github"))
            for r in runners
            if isinstance(r, dict) and isinstance(r.get("name"), str)
        }
        filled.append(TOKENS)
    return filled
