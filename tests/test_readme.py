"""The README is the user's manual: its config table and test command match the code."""

import json
import re

from pydantic.fields import FieldInfo

from infra.ci import DEPLOYER_ROLES
from infra.settings import RUNNERS_KEY, SECTIONS, RunnerSettings
from policy.rules import POLICIES
from tests.harness import REPO

README = (REPO / "README.md").read_text()
ROW = re.compile(r"^\| `(\w+(?:\[\])?)\.(\w+)` \| (.+?) \| .+ \|$", re.MULTILINE)
DOCUMENTED_MODELS = {**SECTIONS, f"{RUNNERS_KEY}[]": RunnerSettings}


def _shown(field: FieldInfo) -> str:
    """A field's default as the README writes it."""
    if field.is_required():
        return "required"
    default = field.default
    if default is None:
        return "—"
    if isinstance(default, str):
        return f"`{default}`"
    return f"`{json.dumps(list(default) if isinstance(default, tuple) else default)}`"


def test_config_table_lists_every_key_with_its_default():
    documented = {(section, key): default for section, key, default in ROW.findall(README)}
    in_code = {
        (section, field.alias): _shown(field)
        for section, model in DOCUMENTED_MODELS.items()
        for field in model.model_fields.values()
    }
    assert documented == in_code


def test_ci_runs_the_readme_test_command():
    command = re.search(r"```sh\n(python3 -m venv .+ -m pytest)\n```", README).group(1)
    assert command in (REPO / ".ci" / "run").read_text()


def test_every_deployer_role_is_justified_in_the_readme():
    section = README[README.index("### What the deployer may do") :]
    table = section[: section.index("\n\n", section.index("| Role |"))]
    for role in [*DEPLOYER_ROLES, "roles/resourcemanager.projectIamAdmin"]:
        assert f"| `{role}`" in table, role


def test_every_policy_is_listed_with_its_level():
    for policy in POLICIES:
        level = policy.enforcement_level.value
        assert f"| `{policy.name}` | {level} |" in README, policy.name
