"""The stack enables the Google APIs it calls, before anything that calls them, and never
disables them."""

import pytest

from infra.apis import CI_APIS, RESOURCE_MANAGER_API, STACK_APIS
from tests.harness import TEST_PROJECT_ID, run_program
from tests.stacks import SHAPES, WITH_CI

SERVICE = "gcp:projects/service:Service"


def enabled(program) -> dict[str, dict]:
    return {s.inputs["service"]: s.inputs for s in program.of_type(SERVICE)}


def test_dev_stack_enables_what_the_cluster_bucket_accounts_and_runner_pods_need():
    apis = enabled(run_program())
    assert set(apis) == {
        "cloudresourcemanager.googleapis.com",
        "artifactregistry.googleapis.com",
        "compute.googleapis.com",
        "container.googleapis.com",
        "containerfilesystem.googleapis.com",
        "iam.googleapis.com",
        # Workload Identity: runner pods get their Google token through it, CI or not.
        "iamcredentials.googleapis.com",
        "storage.googleapis.com",
    }
    assert set(apis) == set(STACK_APIS)
    for api in apis.values():
        assert api["project"] == TEST_PROJECT_ID
        # Other workloads in the project may depend on them.
        assert api["disableOnDestroy"] is False


def test_ci_access_adds_the_token_exchange_api():
    apis = enabled(run_program(WITH_CI))
    assert set(apis) - set(enabled(run_program())) == {"sts.googleapis.com"}
    assert set(apis) == set(STACK_APIS) | set(CI_APIS)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_google_cloud_resource_waits_for_every_api(shape):
    program = run_program(SHAPES[shape])
    services = program.of_type(SERVICE)
    resource_manager = program.one(SERVICE, "apis-cloudresourcemanager")
    assert resource_manager.inputs["service"] == RESOURCE_MANAGER_API
    for resource in program.resources:
        if resource.type == SERVICE:
            # The provider reads each service back through Resource Manager.
            assert resource is resource_manager or program.waits_for(resource, resource_manager)
        elif resource.type.startswith("gcp:"):
            late = [s.inputs["service"] for s in services if not program.waits_for(resource, s)]
            assert late == [], resource.name
