"""Fixtures every test module shares."""

import pytest

from tests import harness


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
