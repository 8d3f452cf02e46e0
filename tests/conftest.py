"""Fixtures every test module shares."""

import pytest
from pulumi.runtime import resource as sdk_resource
from pulumi.runtime.proto import source_pb2

from tests import harness


@pytest.fixture(autouse=True, scope="session")
def a_kubeconfig_of_test_contexts():
    """Stacks on a cluster they do not make read the kubeconfig: the tests' own, never the
    reader's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(harness.REPO / "tests" / "data" / "kubeconfig.yaml"))
        yield


@pytest.fixture(autouse=True, scope="session")
def resources_registered_without_a_stack_trace():
    """The SDK records the Python stack with every resource it registers, for the engine's
    messages; the mocks never read it, and under pytest the stack is deep: without this the
    suite takes a seventh longer. Raises if a new SDK drops the function, rather than
    silently slowing down."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sdk_resource, "_get_stack_trace", source_pb2.StackTrace)
        yield


@pytest.fixture(autouse=True)
def programs_run_afresh_under_monkeypatch(request):
    """A test that patches the program's modules or settings gets its own runs of the program,
    and leaves none behind in run_program's record of earlier runs."""
    patched = "monkeypatch" in request.fixturenames
    if patched:
        harness.forget_programs()
    yield
    if patched:
        harness.forget_programs()
