"""The example pipelines' `dvc` commands, as DVC 3's own command line parser reads them."""

import shlex
from collections.abc import Iterator

import pytest
import yaml
from dvc.cli import DvcParserError
from dvc.cli.parser import get_main_parser

from tests.harness import REPO

EXAMPLES = {
    "github": REPO / "examples/github/.github/workflows/mlops.yml",
    "github-arc": REPO / "examples/github-arc/.github/workflows/mlops.yml",
    "gitlab": REPO / "examples/gitlab/.gitlab-ci.yml",
}
# Shell operators that end a command, and redirections whose next word is a file.
SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTIONS = {">", ">>", "<", "2>", "2>&1"}
# Words in front of the command itself.
PREFIXES = (["poetry", "run"],)


def scripts(path) -> Iterator[str]:
    """Every shell script of a workflow: GitHub steps' `run`, GitLab jobs' script lists."""
    document = yaml.safe_load(path.read_text())
    for job in document.get("jobs", {}).values():
        for step in job.get("steps", []):
            if "run" in step:
                yield step["run"]
    for job in document.values():
        if isinstance(job, dict):
            for key in ("before_script", "script", "after_script"):
                yield from job.get(key, [])


def commands(script: str) -> Iterator[list[str]]:
    """Each simple command of a script, as words, without its redirections."""
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.commenters = "#"
        words: list[str] = []
        skip_next = False
        for token in lexer:
            if skip_next:
                skip_next = False
            elif token in SEPARATORS:
                yield words
                words = []
            elif token in REDIRECTIONS:
                skip_next = True
            else:
                words.append(token)
        yield words


def dvc_commands(path) -> list[list[str]]:
    """The arguments of every `dvc` command in an example, `poetry run` taken off."""
    found = []
    for script in scripts(path):
        for words in commands(script):
            for prefix in PREFIXES:
                if words[: len(prefix)] == prefix:
                    words = words[len(prefix) :]
            if words[:1] == ["dvc"]:
                found.append(words[1:])
    return found


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_dvc_command_of_the_examples_parses_with_dvc_3(example):
    found = dvc_commands(EXAMPLES[example])
    # pull, repro, params diff, metrics diff and the plots: none may slip past the scan.
    assert {tuple(args[:2]) for args in found} >= {
        ("pull",),
        ("repro", "--force"),
        ("params", "diff"),
        ("metrics", "diff"),
        ("plots", "diff"),
    }
    parser = get_main_parser()
    for args in found:
        try:
            parsed = parser.parse_args(args)
        except DvcParserError:
            pytest.fail(f"{example}: `dvc {shlex.join(args)}` is refused by DVC's parser")
        if getattr(parsed, "show_vega", False):
            # DVC refuses --show-vega without exactly one target when it runs (CmdPlots.run).
            assert len(parsed.targets) == 1, args


def test_the_scan_sees_a_dvc_command_behind_poetry_redirections_and_continuations():
    script = "echo x >> r.md\npoetry run dvc metrics diff main \\\n  --show-md >> report.md && ls\n"
    assert list(commands(script)) == [
        ["echo", "x"],
        ["poetry", "run", "dvc", "metrics", "diff", "main", "--show-md"],
        ["ls"],
    ]
    with pytest.raises(DvcParserError):
        get_main_parser().parse_args(["metrics", "diff", "main", "--show-md"])
