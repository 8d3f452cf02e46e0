"""Validation problems as one line each, in the words of the stack file, secrets masked."""

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

# Prefixes of GitHub and GitLab credentials (GitHub's token formats; GitLab's token prefixes,
# "Token overview"), and GitLab's legacy runner registration tokens (GR1348941…).
TOKEN_LIKE = re.compile(
    r"\b(gh[pousr]_|github_pat_|glpat-|glrt-|gldt-|glptt-|glcbt-|glft-|glimt-|glagent-|"
    r"glsoat-|glffct-|GR1348941)[A-Za-z0-9_\-.]*"
)
SECRET_SHOWN_AS = "[secret]"
# The user-info of a URL (https://<user>:<token>@host): a credential of any shape, a classic
# 40-hex GitHub token or an unprefixed GitLab one included, which no prefix would catch.
URL_USER_INFO = re.compile(
    # With a scheme, up to the last @ before the path (a password may hold @); without one,
    # user:secret@host.
    r"(\b[a-z][a-z0-9+.-]*://)[^/\s'\"]*@|(?<![\w/:@])()[^\s/'\"@:]+:[^\s/'\"]*@(?=[\w.-])",
    re.IGNORECASE,
)
# A classic GitHub token: 40 hex characters, no prefix.
CLASSIC_TOKEN = re.compile(r"\b[0-9a-f]{40}\b")


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """The text with every token-like word, every URL's user-info and every given secret
    replaced by a mask."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, SECRET_SHOWN_AS)
    text = URL_USER_INFO.sub(lambda m: f"{m.group(1) or ''}{SECRET_SHOWN_AS}@", text)
    text = CLASSIC_TOKEN.sub(SECRET_SHOWN_AS, text)
    return TOKEN_LIKE.sub(lambda m: f"{m.group(1)}…{SECRET_SHOWN_AS}", text)


def shortened(text: str, limit: int = 2000) -> str:
    """Each line of an already masked message at most `limit` characters (a value can be
    long; cutting it before masking could leave part of a secret unmasked)."""
    return "\n".join(
        line if len(line) <= limit else f"{line[:limit]}… ({len(line) - limit:,} more characters)"
        for line in text.split("\n")
    )


def show(value: Any) -> str:
    """A value as the stack file spells it: 'text', 2, true, ["a", "b"], {"k": "v"}."""
    if value is None:
        return "(not set)"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


def closest(word: str, known: Sequence[str]) -> str:
    """' (did you mean X?)' for the known word closest to a misspelt one, or ''."""
    lowered = {k.lower(): k for k in known}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[match[0]]}?)" if match else ""


def strings_in(value: Any, path: str) -> list[tuple[str, str]]:
    """Every string inside a config value, however deeply nested, with its config path."""
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [found for k, item in value.items() for found in strings_in(item, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [found for i, item in enumerate(value) for found in strings_in(item, f"{path}[{i}]")]
    return []


def reason(error: dict, known_keys: Sequence[str]) -> str:
    """Why a value was refused, from a pydantic error, in the stack file's terms."""
    kind, value, context = error["type"], error.get("input"), error.get("ctx", {})
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        return f"unknown key{closest(key, known_keys)}; allowed keys: {', '.join(known_keys)}"
    if kind in ("tuple_type", "list_type"):
        return "should be a list, like [a, b]"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "should be an object of keys and values, like {key: value}"
    if kind == "string_type":
        if isinstance(value, bool):
            return (
                "should be text; YAML reads an unquoted true, false, yes or no as a boolean: "
                f'quote it ("{str(value).lower()}")'
            )
        if isinstance(value, float):
            # The number has lost what the text had (0.20 reads as 0.2): no hint can restore it.
            return (
                f"should be text; YAML read a number ({value}), which drops trailing zeros: "
                "quote the value exactly as you wrote it"
            )
        if isinstance(value, int):
            return f'should be text; quote it ("{value}")'
        return "should be text"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "should be a whole number"
    if kind in ("bool_type", "bool_parsing"):
        return "should be true or false"
    if kind == "literal_error":
        return f"allowed: {context['expected']}"
    if kind == "greater_than_equal":
        return f"allowed: {context['ge']} or more"
    if kind == "less_than_equal":
        return f"allowed: at most {context['le']}"
    if kind == "too_short":
        return f"should list at least {context['min_length']} entry"
    return error["msg"]


def innermost(errors: list[dict]) -> list[dict]:
    """Drop an error about a value when another error names a part of it: one line a mistake."""
    return [
        error
        for error in errors
        if not any(
            len(other["loc"]) > len(error["loc"])
            and other["loc"][: len(error["loc"])] == error["loc"]
            for other in errors
        )
    ]
