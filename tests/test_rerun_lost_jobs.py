"""The GitHub example's re-run of jobs lost with their Spot node, fed recorded API responses."""

import copy
import importlib.util
import io
import json

import pytest

from tests.harness import REPO

DATA = REPO / "tests" / "data" / "github"
SCRIPT = REPO / "examples" / "github" / ".github" / "scripts" / "rerun_lost_jobs.py"


def load_script():
    spec = importlib.util.spec_from_file_location("rerun_lost_jobs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rerun = load_script()


def recorded(name: str):
    return json.loads((DATA / f"{name}.json").read_text())


JOBS = recorded("jobs-spot-reclaimed")["jobs"]
TRAIN = JOBS[0]["id"]


@pytest.mark.parametrize(
    "annotations", ["annotations-shutdown-signal", "annotations-lost-communication"]
)
def test_a_job_lost_with_its_runner_is_rerun(annotations):
    decision = rerun.decide(1, JOBS, {TRAIN: recorded(annotations)})
    assert decision.rerun is True
    assert decision.reason == "re-running train: the runner was lost"


def test_a_job_that_failed_on_its_own_is_not_rerun():
    decision = rerun.decide(1, JOBS, {TRAIN: recorded("annotations-script-failure")})
    assert decision.rerun is False
    assert decision.reason == "no failed job lost its runner"


def test_a_run_with_a_real_failure_beside_a_lost_job_is_left_to_a_person():
    jobs = copy.deepcopy(JOBS)
    jobs[1].update(conclusion="failure", name="evaluate")
    annotations = {
        TRAIN: recorded("annotations-shutdown-signal"),
        jobs[1]["id"]: recorded("annotations-script-failure"),
    }
    decision = rerun.decide(1, jobs, annotations)
    assert decision.rerun is False
    assert "evaluate failed on its own" in decision.reason


def test_a_rerun_is_never_rerun_again():
    decision = rerun.decide(2, JOBS, {TRAIN: recorded("annotations-shutdown-signal")})
    assert decision.rerun is False


def test_the_script_reads_the_attempts_jobs_and_annotations_then_reruns_failed_jobs(
    monkeypatch, tmp_path
):
    calls = []
    answers = {
        "https://api.github.com/repos/ml-team/churn-model/actions/runs/5308905824/attempts/1/"
        "jobs?per_page=100": recorded("jobs-spot-reclaimed"),
        f"{JOBS[0]['check_run_url']}/annotations": recorded("annotations-shutdown-signal"),
        "https://api.github.com/repos/ml-team/churn-model/actions/runs/5308905824/"
        "rerun-failed-jobs": None,
    }

    def urlopen(request):
        calls.append((request.get_method(), request.full_url))
        assert request.get_header("Authorization") == "Bearer test-token"
        body = answers[request.full_url]
        return _Response(io.BytesIO(b"" if body is None else json.dumps(body).encode()))

    monkeypatch.setattr(rerun.urllib.request, "urlopen", urlopen)
    summary = tmp_path / "summary.md"
    for name, value in {
        "GITHUB_TOKEN": "test-token",
        "GITHUB_REPOSITORY": "ml-team/churn-model",
        "RUN_ID": "5308905824",
        "RUN_ATTEMPT": "1",
        "GITHUB_STEP_SUMMARY": str(summary),
    }.items():
        monkeypatch.setenv(name, value)
    assert rerun.main() == 0
    assert calls == [
        ("GET", next(iter(answers))),
        ("GET", f"{JOBS[0]['check_run_url']}/annotations"),
        ("POST", list(answers)[2]),
    ]
    assert "re-running train" in summary.read_text()


class _Response:
    """What urlopen returns, as a context manager over the recorded body."""

    def __init__(self, body: io.BytesIO) -> None:
        self.body = body

    def __enter__(self):
        return self.body

    def __exit__(self, *_):
        return None
