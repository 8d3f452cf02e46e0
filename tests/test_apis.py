"""The stack enables the Google APIs it calls, before anything that calls them, and never
disables them."""

import pytest

from infra.gcp.apis import CI_APIS, RESOURCE_MANAGER_API, SETTLE_SECONDS, STACK_APIS
from tests.harness import TEST_PROJECT_ID, run_program
from tests.stacks import SHAPES, TWO_RUNNERS, WITH_CI

SERVICE = "gcp:projects/service:Service"
SETTLE = "command:local:Command"


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


def test_ci_access_adds_the_token_exchange_and_key_apis():
    apis = enabled(run_program(WITH_CI))
    assert set(apis) - set(enabled(run_program())) == {
        "sts.googleapis.com",
        "cloudkms.googleapis.com",
    }
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
            assert program.waits_for(resource, program.one(SETTLE)), resource.name


def test_the_stack_waits_a_minute_after_enabling_apis_and_again_when_it_enables_more():
    # A newly enabled API may refuse calls for a while (the provider's "Newly activated
    # service errors" guide), and nothing retries that error.
    dev, with_ci = run_program(), run_program(WITH_CI)
    settle = dev.one(SETTLE).inputs
    assert settle["create"] == f"sleep {SETTLE_SECONDS}"
    assert all(dev.waits_for(dev.one(SETTLE), s) for s in dev.of_type(SERVICE))
    # Its triggers replace it, so it runs again, when the list of APIs changes, and only then.
    assert settle["triggers"] == sorted(STACK_APIS)
    assert with_ci.one(SETTLE).inputs["triggers"] == sorted(STACK_APIS | CI_APIS)
    more_runners = run_program(TWO_RUNNERS).one(SETTLE).inputs
    assert more_runners == settle
