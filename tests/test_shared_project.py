"""Two stacks in one Google Cloud project: no ID that must be unique in the project is shared,
and a stack file that would share one is refused before anything is created."""

import pytest
import yaml

from infra import settings
from tests.harness import TEST_PROJECT_ID, run_program, run_rejected_program, stack_config
from tests.stacks import WITH_CI

WI_BINDING = "gcp:serviceaccount/iAMMember:IAMMember"


def project_unique_ids(program) -> set[str]:
    """The IDs the program gives resources whose ID is unique in their project, and the
    Kubernetes identities it lets act as a Google account, in the form infra/gcp/names.py writes
    them."""
    ids = set()
    for resource in program.resources:
        inputs = resource.inputs
        if resource.type == "gcp:serviceaccount/account:Account":
            ids.add(f"serviceAccounts/{inputs['accountId']}")
        elif resource.type == "gcp:artifactregistry/repository:Repository":
            ids.add(f"repositories/{inputs['location']}/{inputs['repositoryId']}")
        elif resource.type == "gcp:iam/workloadIdentityPool:WorkloadIdentityPool":
            ids.add(f"workloadIdentityPools/{inputs['workloadIdentityPoolId']}")
        elif resource.type == "gcp:container/cluster:Cluster":
            ids.add(f"clusters/{inputs['location']}/{inputs['name']}")
        elif (
            resource.type == WI_BINDING
            and inputs["role"] == "roles/iam.workloadIdentityUser"
            and inputs["member"].startswith("serviceAccount:")
        ):
            identity = inputs["member"].split("[", 1)[1].rstrip("]")
            ids.add(f"workloadIdentity/{identity}")
    return ids


def declared_ids(stack: str, overrides: dict) -> set[str]:
    """The IDs the settings compare with other stack files', for a stack's config."""
    config = stack_config(stack, overrides, ())
    given = {k.removeprefix("gpu-runners:"): v for k, v in config.items()}
    parsed, runners = settings.parse_sections("gpu-runners", given, [])
    return set(settings._project_unique_ids(parsed, runners))


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_names_py_declares_every_project_unique_id_the_program_takes(stack):
    # So the refusal below compares what the components really create.
    program = run_program(WITH_CI, stack=stack)
    assert project_unique_ids(program) == declared_ids(stack, WITH_CI)


def test_the_dev_and_prod_stacks_can_share_a_project():
    dev, prod = run_program(stack="dev"), run_program(stack="prod")
    assert dev.one("gcp:container/cluster:Cluster").inputs["project"] == TEST_PROJECT_ID
    assert prod.one("gcp:container/cluster:Cluster").inputs["project"] == TEST_PROJECT_ID
    assert project_unique_ids(dev) & project_unique_ids(prod) == set()


def test_no_runner_of_one_stack_may_act_as_the_other_stacks_runner_account():
    def bound(program) -> set[str]:
        return {
            r.inputs["member"]
            for r in program.of_type(WI_BINDING)
            if r.inputs["role"] == "roles/iam.workloadIdentityUser"
        }

    # One Workload Identity pool per project: a member names no cluster.
    assert bound(run_program(stack="dev")).isdisjoint(bound(run_program(stack="prod")))


def write_stack_file(directory, stack: str, config: dict) -> None:
    (directory / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": config}))


@pytest.fixture
def stack_file_dir(tmp_path, monkeypatch):
    """The project's stack files, as a test writes them."""
    monkeypatch.setattr(settings, "STACK_FILE_DIR", tmp_path)
    return tmp_path


def test_a_second_stack_with_the_same_cluster_name_in_the_same_project_is_refused(
    stack_file_dir,
):
    write_stack_file(
        stack_file_dir,
        "staging",
        {
            "gcp:project": TEST_PROJECT_ID,
            "gpu-runners:cluster": {"name": "mlops-kubernetes"},
            "gpu-runners:runners": [
                {"name": "staging-runner", "repository": "https://github.com/a/b"}
            ],
        },
    )
    error, registered = run_rejected_program()
    assert registered == []
    message = str(error)
    assert (
        "gpu-runners:cluster.name = 'mlops-kubernetes': Pulumi.staging.yaml deploys to the same "
        f"project ({TEST_PROJECT_ID}) with the same value, so both stacks would take the "
        "Artifact Registry repository mlops-kubernetes-docker-hub" in message
    )
    assert "service account mlops-kubernetes-nodes" in message
    assert "allowed: a value no other stack of this project uses" in message
    # Which of the two should change: the one not deployed yet.
    assert "whichever of Pulumi.dev.yaml and Pulumi.staging.yaml is not deployed yet" in message
    assert "runners[0].name" not in message


def test_a_runner_name_another_stack_of_the_project_uses_is_refused(stack_file_dir):
    write_stack_file(
        stack_file_dir,
        "prod",
        {
            "gcp:project": TEST_PROJECT_ID,
            "gpu-runners:cluster": {"name": "mlops-prod"},
            "gpu-runners:runners": [{"name": "cml-runner", "repository": "https://github.com/a/b"}],
        },
    )
    error, registered = run_rejected_program()
    assert registered == []
    assert (
        "gpu-runners:runners[0].name = 'cml-runner': Pulumi.prod.yaml deploys to the same "
        f"project ({TEST_PROJECT_ID}) with the same value, so both stacks would take the "
        "Workload Identity member [cml-runner/cml-runner]" in str(error)
    )
    assert "cluster.name" not in str(error)


def test_two_stacks_with_ci_access_need_their_own_pool(stack_file_dir):
    write_stack_file(
        stack_file_dir,
        "prod",
        {
            "gcp:project": TEST_PROJECT_ID,
            "gpu-runners:cluster": {"name": "mlops-prod"},
            "gpu-runners:ci": {
                "githubRepository": "ml-team/gpu-runners",
                "githubRepositoryId": "812345678",
                "githubOwnerId": "91234567",
                "stateBucket": "ml-team-sandbox-pulumi-state",
                "secretsKey": WITH_CI["gpu-runners:ci"]["secretsKey"],
            },
        },
    )
    error, registered = run_rejected_program(WITH_CI)
    assert registered == []
    assert (
        "gpu-runners:ci.poolId = 'gpu-runners-ci': Pulumi.prod.yaml deploys to the same project"
        in str(error)
    )
    assert "Workload Identity pool gpu-runners-ci" in str(error)
    assert "cluster.name" not in str(error)
    # Its own pool ID, and the stack goes ahead.
    run_program({"gpu-runners:ci": {**WITH_CI["gpu-runners:ci"], "poolId": "dev-ci"}})


def test_stacks_of_other_projects_and_the_stacks_own_file_are_no_collision(stack_file_dir):
    write_stack_file(stack_file_dir, "other", {"gcp:project": "someone-elses-project"})
    write_stack_file(stack_file_dir, "dev", {"gcp:project": TEST_PROJECT_ID})
    (stack_file_dir / "Pulumi.broken.yaml").write_text("config: [unclosed\n")
    assert run_program().of_type("gcp:container/cluster:Cluster")


def test_a_trusted_runner_adds_the_writer_account_to_the_ids_the_stack_takes():
    trusted = {"gpu-runners:runners": [{"name": "main-gpu", "trust": "trusted"}]}
    program = run_program({**WITH_CI, **trusted})
    declared = declared_ids("dev", {**WITH_CI, **trusted})
    assert project_unique_ids(program) == declared
    assert "serviceAccounts/mlops-kubernetes-trusted" in declared
