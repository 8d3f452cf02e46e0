"""The README is the user's manual: its tables, commands and examples match the code."""

import json
import re

import pulumi
from markdown_it import MarkdownIt
from pulumi_policy import EnforcementLevel
from pydantic.fields import FieldInfo
from rules import POLICIES

from infra import machines
from infra.engines import arc, gitlab_runner, keda
from infra.gcp import apis, ci, cluster, identity, registry
from infra.gcp.ci import DEPLOYER_ROLES, EXISTING_CLUSTER_DEPLOYER_ROLES
from infra.settings import (
    RUNNERS_KEY,
    SECTIONS,
    ExistingClusterSettings,
    GpuPoolSettings,
    RunnerSettings,
)
from infra.settings.gpu_classes import GpuClassSettings
from infra.tools import plan
from tests.harness import REPO, manual, run_components, run_program
from tests.stacks import WITH_CI
from tests.test_arc_runner import ARC, release

README = (REPO / "README.md").read_text()
# What the README and the docs say, as one text: a table or figure may be on any page.
MANUAL = manual()
DEVELOPMENT = (REPO / "docs/development.md").read_text()
DOCUMENTED_MODELS = {
    **SECTIONS,
    "existingCluster": ExistingClusterSettings,
    f"{RUNNERS_KEY}[]": RunnerSettings,
}
# A gpuPools entry takes every gpuPool key, documented once, and a name.
GPU_CLASS_KEYS = {"name"}


def tables(markdown: str) -> list[list[list[str]]]:
    """Every table as GitHub renders it: rows of cell texts, the header row first."""
    found: list[list[list[str]]] = []
    row: list[str] | None = None
    for token in MarkdownIt("commonmark").enable("table").parse(markdown):
        if token.type == "table_open":
            found.append([])
        elif token.type == "tr_open":
            row = []
        elif token.type == "inline" and row is not None:
            row.append(token.content)
        elif token.type == "tr_close":
            found[-1].append(row)
            row = None
    return found


def table_with_header(*header: str) -> list[list[str]]:
    """The rows (without header) of every table whose header starts with these cells."""
    return [
        row
        for table in tables(MANUAL)
        if tuple(table[0][: len(header)]) == header
        for row in table[1:]
    ]


def _shown(field: FieldInfo) -> str:
    """A field's default as the README writes it."""
    if field.is_required():
        return "required"
    default = field.default_factory() if field.default_factory else field.default
    if default is None:
        return "—"
    if isinstance(default, str):
        return f"`{default}`"
    return f"`{json.dumps(list(default) if isinstance(default, tuple) else default)}`"


def test_config_tables_list_every_key_with_its_default():
    documented = {}
    for key, default, _ in table_with_header("Key", "Default", "Meaning"):
        section, field = re.fullmatch(r"`(\w+(?:\[\])?)\.(\w+)`", key).groups()
        documented[(section, field)] = default
    in_code = {
        (section, field.alias): _shown(field)
        for section, model in DOCUMENTED_MODELS.items()
        for field in model.model_fields.values()
    }
    class_only = set(GpuClassSettings.model_fields) - set(GpuPoolSettings.model_fields)
    assert class_only == GPU_CLASS_KEYS
    in_code |= {
        ("gpuPools[]", key): _shown(GpuClassSettings.model_fields[key]) for key in class_only
    }
    assert documented == in_code


def test_table_parsing_sees_a_table_broken_by_a_blank_line():
    broken = "| Key | Default | Meaning |\n|---|---|---|\n| `a.b` | 1 | x |\n\n| `c.d` | 2 | y |\n"
    assert tables(broken) == [[["Key", "Default", "Meaning"], ["`a.b`", "1", "x"]]]


def test_ci_runs_the_readme_test_command():
    command = re.search(r"```sh\n(python3 -m venv .+ -m pytest)\n```", README).group(1)
    assert command in (REPO / ".ci" / "run").read_text()


def test_a_newcomer_meets_the_two_offline_commands_in_the_first_60_lines():
    top = "\n".join(README.splitlines()[:60])
    section = top[top.index("## Try it without a cloud") : top.index("## What it creates")]
    assert "-m pytest" in section and "-m infra.tools.plan Pulumi.dev.yaml" in section
    assert "-m infra.tools.estimate Pulumi.dev.yaml" in section


def test_the_layout_names_every_module():
    layout = DEVELOPMENT[DEVELOPMENT.index("## Layout") : DEVELOPMENT.index("## Tests")]
    # A module at the top of infra/ by its path; one in a sub-package under the package's line.
    modules = [p.relative_to(REPO).as_posix() for p in (REPO / "infra").glob("*.py")]
    missing = [m for m in modules if m != "infra/__init__.py" and m not in layout]
    for package in (p for p in (REPO / "infra").iterdir() if (p / "__init__.py").exists()):
        listed = layout.split(f"infra/{package.name}/")[1].split("\ninfra/")[0]
        missing += [
            f"{package.name}/{p.name}"
            for p in package.glob("*.py")
            # An __init__.py is listed where it holds more than the package's docstring.
            if f"  {p.name}" not in listed
            and (p.name != "__init__.py" or package.name == "settings")
        ]
    assert missing == []


def test_the_deployer_roles_on_an_existing_cluster_are_listed_and_nothing_more():
    rows = table_with_header("Role", "On a cluster the stack does not make")
    assert [row[0].strip("`") for row in rows] == list(EXISTING_CLUSTER_DEPLOYER_ROLES)


def test_prerequisites_list_exactly_the_roles_the_components_need():
    modules = (apis, cluster, identity, ci, registry)
    needed = {role for module in modules for role in module.DEPLOY_ROLES}
    rows = table_with_header("Role", "What the first `pulumi up` does with it")
    assert {row[0].strip("`") for row in rows} == needed


def test_every_deployer_role_is_listed_and_nothing_more():
    rows = [row[0] for row in table_with_header("Role", "Why `pulumi up` needs it")]
    project_roles = {row.split("`")[1] for row in rows if " only" not in row}
    assert project_roles == {*DEPLOYER_ROLES, "roles/resourcemanager.projectIamAdmin"}
    assert {row for row in rows if " only" in row} == {
        "`roles/iam.serviceAccountUser` on the node account only",
        "`roles/iam.serviceAccountAdmin` on the runner account only",
        "`roles/artifactregistry.admin` on the image mirror's and the package cache's "
        "repositories only",
        "`roles/cloudkms.cryptoKeyDecrypter` on the stack's key only",
    }


def test_every_policy_is_listed_with_its_level():
    rows = {row[0]: row[1] for row in table_with_header("Rule", "Level")}
    assert rows == {f"`{p.name}`": p.enforcement_level.value for p in POLICIES}


def test_the_own_cluster_example_passes_the_policy_pack():
    section = MANUAL[MANUAL.index("## Runners on your own cluster") :]
    example = re.search(r"```python\n(.+?)```", section, re.DOTALL).group(1)

    def build():
        pulumi.runtime.set_all_config({"gpu-runners:githubToken": "ghp_" + "x" * 36}, [])
        exec(example, {})

    program = run_components(build)
    assert program.of_type("kubernetes:keda.sh/v1alpha1:ScaledJob")
    mandatory = [p for p in POLICIES if p.enforcement_level == EnforcementLevel.MANDATORY]
    found = {p.name: plan.policy_violations(program.resources, p) for p in mandatory}
    assert {name: found[name] for name in found if found[name]} == {}


def test_the_memory_a_node_leaves_to_pods_is_what_the_settings_check():
    shown = re.findall(r"an? `([a-z0-9-]+)` (?:leaves )?(\d+)Mi of its", MANUAL)
    assert len(shown) == 2
    for machine_type, mib in shown:
        node = machines.machine(machine_type)
        assert int(mib) == int(machines.allocatable_memory(node) / machines.MIB), machine_type


LIFECYCLE = (REPO / "docs" / "lifecycle.md").read_text()


def test_the_lifecycle_page_names_the_memory_the_settings_check():
    (mib, machine_type) = re.findall(r"\((\d+)Mi on a `([a-z0-9-]+)`\)", LIFECYCLE)[0]
    node = machines.machine(machine_type)
    assert int(mib) == int(machines.allocatable_memory(node) / machines.MIB)


def test_the_lifecycle_page_names_only_roles_the_code_grants_or_documents():
    known = {
        role for module in (apis, cluster, identity, ci, registry) for role in module.DEPLOY_ROLES
    }
    known |= {*DEPLOYER_ROLES, *cluster.NODE_ROLES, identity.READER_ROLE, identity.WRITER_ROLE}
    named = set(re.findall(r"roles/[A-Za-z.]+[A-Za-z]", LIFECYCLE))
    assert named <= known


def test_the_arc_upgrade_steps_name_the_real_controller_and_crds():
    page = (REPO / "docs" / "upgrading-arc.md").read_text()
    controller = release(run_program(ARC), "gha-runner-scale-set-controller")
    (urn,) = re.findall(r"pulumi destroy --target '([^']+)' --target-dependents", page)
    assert urn == controller.urn.replace("urn:pulumi:dev::", "urn:pulumi:<stack>::")
    crds = re.search(r"kubectl delete crd (.+?)\npulumi up", page, re.S).group(1)
    assert crds.replace("\\\n", " ").split() == list(arc.CRDS)


def test_the_lifecycle_page_links_every_engine_page():
    for page in ("upgrading-cml.md", "upgrading-arc.md", "upgrading-gitlab-runner.md"):
        assert f"]({page})" in LIFECYCLE
        assert (REPO / "docs" / page).is_file()


def test_the_system_pool_requests_the_readme_counts_are_the_codes():
    assert f"controller {arc.CONTROLLER_RESOURCES['requests']['cpu']}" in MANUAL
    assert f"listener {arc.LISTENER_RESOURCES['requests']['cpu']}" in MANUAL
    assert f"manager {gitlab_runner.MANAGER_RESOURCES['requests']['cpu']} per runner" in MANUAL


def test_the_system_node_arithmetic_for_arc_and_gitlab_runner_adds_up():
    def millicores(quantity: str) -> int:
        return int(quantity.removesuffix("m"))

    gke, allocatable = 813, 940  # the table's measured GKE pods, and an e2-medium's share
    controller = millicores(arc.CONTROLLER_RESOURCES["requests"]["cpu"])
    listener = millicores(arc.LISTENER_RESOURCES["requests"]["cpu"])
    manager = millicores(gitlab_runner.MANAGER_RESOURCES["requests"]["cpu"])
    keda_total = sum(millicores(part["requests"]["cpu"]) for part in keda.REQUESTS.values())
    assert gke + keda_total + controller + listener > allocatable
    assert gke + controller + 3 * listener == 938 <= allocatable < gke + controller + 4 * listener
    # One manager, and a second while a restarted one drains; a second runner would not fit.
    assert gke + manager + manager == 913 <= allocatable < gke + 2 * manager + manager
    assert "three arc runners (938m) or one gitlab-runner runner with room for its" in MANUAL


def test_who_ci_can_become_quotes_the_conditions_and_principals_the_program_makes():
    ci = WITH_CI["gpu-runners:ci"]
    program = run_program(WITH_CI)
    rows = {row[0]: row[1:] for row in table_with_header("Forge", "Provider condition")}

    def filled(cell: str) -> str:
        for key, value in ci.items():
            cell = cell.replace(f"<ci.{key}>", value)
        return cell.replace("<ci.defaultBranch>", "main").replace("<id>", "")

    for forge, key in (("GitHub", "github"), ("GitLab", "gitlab")):
        condition, previewer, deployer = rows[forge]
        provider = program.one(
            "gcp:iam/workloadIdentityPoolProvider:WorkloadIdentityPoolProvider", f"ci-{key}"
        )
        assert filled(condition).strip("`") == provider.inputs["attributeCondition"]
        members = {
            g.name: g.inputs["member"]
            for g in program.of_type("gcp:serviceaccount/iAMMember:IAMMember")
        }
        deploy_principal = re.search(r"`(attribute\.[^`]+)`", filled(deployer)).group(1)
        assert members[f"ci-{key}-may-deploy"].endswith("/" + deploy_principal)
        preview_principal = re.search(r"`(attribute\.[^`]+)`", previewer).group(1)
        id_key = "githubRepositoryId" if key == "github" else "gitlabProjectId"
        assert members[f"ci-{key}-may-preview"].endswith(
            "/" + preview_principal.replace("<id>", ci[id_key])
        )


def test_the_picture_names_every_stack_output_in_every_shape():
    picture = README[README.index("stack outputs:") :].split("```")[0]
    named = set(re.findall(r"[a-z][A-Za-z]+", picture))
    for shape in (
        {},
        WITH_CI,
        {"gpu-runners:runners": [{"name": "cml-runner", "trust": "trusted"}]},
    ):
        assert set(run_program(shape).outputs) <= named, shape
