"""Markdown that no stack file can break: user text escaped, code fenced past its own
backticks, and output bounded (a GitHub job summary takes 1 MiB per step)."""

import re

# Two tools' output for every stack file of a repository share one job summary.
MAX_CHARS = 300_000
_SPECIAL = re.compile(r"([\\`*_{}\[\]#|<>~])")


def text(value: str) -> str:
    """Inline text (a file name, a key) that renders as itself: no code, link, HTML or mention."""
    flat = re.sub(r"[\x00-\x1f\x7f\u2028\u2029]", " ", value)  # no line of its own
    return _SPECIAL.sub(r"\\\1", flat).replace("@", "@\u200b")


def code_block(body: str, info: str = "") -> str:
    """A fenced block that its content cannot close: the fence is longer than any run of
    backticks inside (CommonMark, fenced code blocks)."""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{body}\n{fence}"


def bounded(document: str, limit: int = MAX_CHARS) -> str:
    """The document, cut at a line end before `limit` characters, saying so."""
    if len(document) <= limit:
        return document
    cut = document.rfind("\n", 0, limit)
    cut = cut if cut > 0 else limit
    kept = document[:cut]
    # Close a fence left open, so the note and what follows are not code.
    fences = re.findall(r"^(`{3,})", kept, re.M)
    closing = f"\n{fences[-1]}" if len(fences) % 2 else ""
    note = f"\n\n*Cut here: {len(document) - cut:,} more characters do not fit a job summary.*\n"
    return kept + closing + note
