"""Hostile stack files: both offline tools refuse them in one line and an exit status, quickly,
without a traceback and without quoting the file."""

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from infra.tools import estimate, markdown, plan
from infra.tools.stack_file import REPO

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
        "deep nesting": (
            write("Pulumi.deep.yaml", b"config: " + b"[" * 5000 + b"]" * 5000),
            "nested too deeply",
        ),
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


# Generated stack files: every shape a hostile or broken file can take, for both tools.
# Prefixed tokens are masked wherever they stand; a prefix-less one (40 hex, a classic GitHub
# token) only where it is known to be a credential, a URL's user-info.
PREFIXED = ["ghp_" + "a" * 36, "glpat-" + "b" * 20]
UNPREFIXED = "0123456789abcdef" * 2 + "01234567"
TOKENS = [*PREFIXED, UNPREFIXED]
CIPHERTEXT = "v1:c2VjcmV0Y2lwaGVydGV4dA==:Zm9vYmFy"
scalars = st.one_of(
    st.sampled_from([*PREFIXED, f"https://u:{UNPREFIXED}@github.com/a/b", "on", "1:20", ""]),
    st.text(max_size=20),
    st.integers(),
    st.booleans(),
    st.none(),
)
secure = st.sampled_from(
    [
        {"secure": CIPHERTEXT},
        {"secure": [CIPHERTEXT]},
        {"secure": CIPHERTEXT, "other": 1},
        {"secure": {"secure": CIPHERTEXT}},
    ]
)
values = st.recursive(
    st.one_of(scalars, secure),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=20,
)
keys = st.one_of(
    st.sampled_from(
        [
            "gcp:project",
            *(
                f"gpu-runners:{key}"
                for key in (
                    "cluster",
                    "systemPool",
                    "gpuPool",
                    "gpuPools",
                    "existingCluster",
                    "dvcRemote",
                    "ci",
                    "runners",
                )
            ),
            "gpu-runners:runnerTokens",
        ]
    ),
    st.text(max_size=16).map(lambda k: f"gpu-runners:{k}"),
)
documents = st.dictionaries(keys, values, max_size=5).map(lambda config: {"config": config})


def as_yaml(document: dict) -> str:
    return yaml.safe_dump(document, allow_unicode=True)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(document=documents, tail=st.sampled_from(["", "\n\xff", "x: &a [*a]\n", "\n" + "[" * 3000]))
def test_generated_stack_files_never_leak_hang_or_crash(document, tail, tmp_path, capsys):
    path = tmp_path / "Pulumi.generated.yaml"
    path.write_bytes(as_yaml(document).encode() + tail.encode("utf-8", "surrogateescape"))
    for tool in (plan, estimate):
        started = time.monotonic()
        status = tool.main([str(path)])
        captured = capsys.readouterr()
        text = captured.out + captured.err
        assert status in (0, 1, 2)
        assert time.monotonic() - started < 10
        assert "Traceback" not in text
        assert CIPHERTEXT not in text
        assert not any(token in text for token in TOKENS), text[:500]
        # No heading or HTML block that the tool did not write itself.
        for token in MarkdownIt("commonmark").parse(captured.out):
            if token.type == "html_block":
                assert token.content.startswith(("<details>", "</details>")), token.content


def test_a_null_runner_list_is_refused_not_a_crash(tmp_path, capsys):
    # Found by the generated files above: the quickstart stand-ins iterated None.
    path = tmp_path / "Pulumi.null.yaml"
    path.write_text("config:\n  gpu-runners:runners: null\n")
    assert plan.main([str(path)]) == 2
    assert "gpu-runners:runners" in capsys.readouterr().out


def test_aliases_of_a_long_string_are_refused_quickly(tmp_path, capsys):
    path = tmp_path / "Pulumi.strings.yaml"
    aliases = ", ".join(["*a"] * 2000)
    path.write_text(f"config:\n  gpu-runners:cluster:\n    name: [&a {'A' * 200_000}, {aliases}]\n")
    for tool in (plan, estimate):
        started = time.monotonic()
        assert tool.main([str(path)]) == 2
        out = capsys.readouterr()
        assert "excessive aliasing" in out.out + out.err
        assert len(out.out + out.err) < 10_000
        assert time.monotonic() - started < 5


def test_a_merge_key_is_read_as_the_cli_reads_it(tmp_path, capsys):
    dev = (REPO / "Pulumi.dev.yaml").read_text()
    merged = dev.replace(
        "  gpu-runners:gpuPool:\n", "  gpu-runners:gpuPool:\n    <<: {spot: true}\n"
    )
    assert merged != dev
    path = tmp_path / "Pulumi.dev.yaml"
    path.write_text(merged)
    assert plan.main([str(path)]) == 0, capsys.readouterr().out


@pytest.mark.parametrize(
    "url",
    ["oauth2:Zq9xK2mB7vLp4TnR8sWy@gitlab.com/g/p", "https://user:p@ssW0rdSecretXYZ@github.com/o/r"],
    ids=["no scheme", "@ in the password"],
)
def test_user_info_is_masked_in_any_form(url, tmp_path, capsys):
    path = tmp_path / "Pulumi.url.yaml"
    path.write_text(
        f"config:\n  gpu-runners:runners:\n    - name: gl\n      platform: gitlab\n"
        f"      repository: '{url}'\n"
    )
    for tool in (plan, estimate):
        assert tool.main([str(path)]) == 2
        out = capsys.readouterr()
        assert "Zq9xK2mB7vLp4TnR8sWy" not in out.out + out.err
        assert "ssW0rdSecretXYZ" not in out.out + out.err


def test_a_line_break_of_any_kind_in_a_key_cannot_restructure_the_plan(tmp_path, capsys):
    path = tmp_path / "Pulumi.cr.yaml"
    path.write_text('config:\n  "gpu-runners:x\\r\\r=====\\r- item\\r---": {secure: 1}\n')
    assert plan.main([str(path)]) == 2
    assert block_structure(capsys.readouterr().out) == ["heading_open"]


def test_a_cut_inside_a_code_block_closes_it():
    document = "# Plan\n\n```yaml\n" + "\n".join(f"k{i}: v" for i in range(100_000)) + "\n```\n"
    cut = markdown.bounded(document)
    assert block_structure(cut) == ["heading_open", "fence"]
    assert "*Cut here:" in cut.split("```")[-1]
