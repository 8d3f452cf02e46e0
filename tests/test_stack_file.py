"""Hostile stack files: both offline tools refuse them in one line and an exit status, quickly,
without a traceback and without quoting the file."""

import time
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from infra import estimate, markdown, plan

SECRET_LOOKING = "ghp_" + "h" * 36
ALIAS_BOMB = "\n".join(
    ["a: &a [" + ",".join(["x"] * 9) + "]"]
    + [
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]"
        for i in range(9)
    ]
    + ["config: {gpu-runners:cluster: *j}"]
)


def hostile_files(directory: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of hostile input -> (its path, the reason both tools must give)."""

    def write(name: str, content: bytes) -> Path:
        path = directory / name
        path.write_bytes(content)
        return path

    (directory / "Pulumi.dir.yaml").mkdir()
    return {
        "an alias bomb": (write("Pulumi.bomb.yaml", ALIAS_BOMB.encode()), "excessive aliasing"),
        "deep nesting": (write("Pulumi.deep.yaml", b"config: " + b"[" * 5000), "nested too deeply"),
        "a byte that is not UTF-8": (
            write("Pulumi.latin.yaml", b"config:\n  k: \xe9t\xe9\n"),
            "not UTF-8",
        ),
        "a key given twice": (
            write(
                "Pulumi.twice.yaml",
                f"config:\n  gcp:project: a\n  gcp:project: {SECRET_LOOKING}\n".encode(),
            ),
            "a mapping key is given twice, at line 3",
        ),
        "a directory": (directory / "Pulumi.dir.yaml", "not a regular file"),
        "a missing file": (directory / "Pulumi.gone.yaml", "no such file"),
        "a huge file": (
            write("Pulumi.huge.yaml", b"# " + b"x" * (1024 * 1024 + 10)),
            "larger than 1024 KiB",
        ),
        "an alias named like a token": (
            write("Pulumi.alias.yaml", f"config: *{SECRET_LOOKING}\n".encode()),
            "is not valid YAML at line 1",
        ),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "an alias bomb",
        "deep nesting",
        "a byte that is not UTF-8",
        "a key given twice",
        "a directory",
        "a missing file",
        "a huge file",
        "an alias named like a token",
    ],
)
def test_both_tools_refuse_a_hostile_stack_file_in_one_line(kind, tmp_path, capsys):
    path, reason = hostile_files(tmp_path)[kind]
    for tool in (plan, estimate):
        started = time.monotonic()
        status = tool.main([str(path)])
        elapsed = time.monotonic() - started
        out = capsys.readouterr()
        text = out.out + out.err
        assert status == 2, (tool.__name__, text)
        assert reason in text, (tool.__name__, text)
        assert path.name in text
        assert SECRET_LOOKING not in text and "Traceback" not in text
        assert elapsed < 5, (tool.__name__, elapsed)


def block_structure(markdown_text: str) -> list[str]:
    """The block-level tokens a Markdown renderer makes: headings, fences, HTML blocks."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown_text)
    return [t.type for t in tokens if t.type in ("heading_open", "fence", "html_block")]


def test_a_key_or_file_name_cannot_change_the_plans_markdown(tmp_path, capsys):
    hostile = "x\n```\n## Injected\n<details>@team"
    benign = tmp_path / "Pulumi.benign.yaml"
    benign.write_text('config:\n  gpu-runners:nope: "1"\n')
    sneaky = tmp_path / "Pulumi.sneaky.yaml"
    # A double-quoted key, so its \n are line breaks: the fence would start a line.
    sneaky.write_text('config:\n  "gpu-runners:' + hostile.replace("\n", "\\n") + '": "1"\n')
    structures = []
    for path in (benign, sneaky):
        assert plan.main([str(path)]) == 2
        structures.append(block_structure(capsys.readouterr().out))
    assert structures[0] == structures[1]
    named = tmp_path / "Pulumi.`<details>`.yaml"
    named.write_text(benign.read_text())
    plan.main([str(named)])
    assert block_structure(capsys.readouterr().out) == structures[0]


def test_output_past_a_job_summary_is_cut_with_a_note():
    document = "\n".join(f"line {i}" for i in range(100_000))
    cut = markdown.bounded(document)
    assert len(cut) < markdown.MAX_CHARS + 200
    assert cut.endswith("more characters do not fit a job summary.*\n")
    assert markdown.bounded("short") == "short"
    assert markdown.code_block("a ``` b").startswith("````")
