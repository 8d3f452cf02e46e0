"""The GitHub example's re-run of jobs lost with their Spot node, fed recorded API responses."""

import copy
import importlib.util
import json
from email.message import Message

import pytest

from tests.harness import REPO

DATA = REPO / "tests" / "data" / "github"
SCRIPT = REPO / "examples" / "github" / ".github" / "scripts" / "rerun_lost_jobs.py"
API = "https://api.github.com/repos/ml-team/churn-model"


def load_script():
    spec = importlib.util.spec_from_file_location("rerun_lost_jobs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rerun = load_script()


def log(name: str) -> str:
    return (DATA / f"log-{name}.txt").read_text()


JOBS = json.loads((DATA / "jobs-spot-reclaimed.json").read_text())["jobs"]
TRAIN = JOBS[0]["id"]


def with_job(conclusion: str, name: str) -> list[dict]:
    """The recorded jobs, the second one ended with `conclusion` under another name."""
    jobs = copy.deepcopy(JOBS)
    jobs[1].update(conclusion=conclusion, name=name)
    return jobs


@pytest.mark.parametrize("conclusion", ["failure", "cancelled"])
@pytest.mark.parametrize("lost", ["shutdown-signal", "lost-communication"])
def test_a_job_lost_with_its_runner_is_rerun_whether_failed_or_cancelled(conclusion, lost):
    jobs = copy.deepcopy(JOBS)
    jobs[0]["conclusion"] = conclusion
    decision = rerun.decide(1, jobs, {TRAIN: log(lost)})
    assert decision == rerun.Decision((TRAIN,), "re-running train: the runner was lost")


def test_a_job_that_failed_on_its_own_is_not_rerun():
    decision = rerun.decide(1, JOBS, {TRAIN: log("script-failure")})
    assert decision == rerun.Decision((), "no job lost its runner")


def test_a_run_cancelled_by_a_person_is_not_rerun():
    jobs = copy.deepcopy(JOBS)
    jobs[0]["conclusion"] = "cancelled"
    assert rerun.decide(1, jobs, {TRAIN: log("cancelled")}).rerun == ()


def test_a_run_with_a_real_failure_beside_a_lost_job_is_left_to_a_person():
    jobs = with_job("failure", "evaluate")
    logs = {TRAIN: log("shutdown-signal"), jobs[1]["id"]: log("script-failure")}
    decision = rerun.decide(1, jobs, logs)
    assert decision == rerun.Decision((), "evaluate failed on its own; a person should look first")


def test_a_sibling_cancelled_with_the_lost_job_does_not_stop_the_rerun():
    jobs = with_job("cancelled", "train-fold-2")
    logs = {TRAIN: log("lost-communication"), jobs[1]["id"]: log("cancelled")}
    assert rerun.decide(1, jobs, logs).rerun == (TRAIN,)


def test_two_lost_jobs_are_both_named():
    jobs = with_job("failure", "train-fold-2")
    logs = {TRAIN: log("shutdown-signal"), jobs[1]["id"]: log("lost-communication")}
    decision = rerun.decide(1, jobs, logs)
    assert decision.rerun == (TRAIN, jobs[1]["id"])
    assert decision.reason == "re-running train, train-fold-2: the runner was lost"


def test_a_rerun_is_never_rerun_again():
    assert rerun.decide(2, JOBS, {TRAIN: log("shutdown-signal")}).rerun == ()


class FakeGitHub:
    """Answers the script's requests from recorded responses and records what it sent."""

    def __init__(self, jobs: list[dict], logs: dict[int, str]) -> None:
        self.jobs, self.logs = jobs, logs
        self.sent: list[tuple[str, str, str | None]] = []

    def call(self, method: str, url: str, token: str | None):
        self.sent.append((method, url, token))
        if url == f"{API}/actions/runs/5308905824/attempts/1/jobs?per_page=100":
            return 200, Message(), json.dumps({"jobs": self.jobs}).encode()
        if url.startswith(f"{API}/actions/jobs/") and url.endswith("/logs"):
            job_id = int(url.split("/")[-2])
            headers = Message()
            headers["Location"] = f"https://results-receiver.example/logs/{job_id}?sig=x"
            return 302, headers, b""
        if url.startswith("https://results-receiver.example/logs/"):
            job_id = int(url.split("/")[-1].split("?")[0])
            return 200, Message(), self.logs[job_id].encode()
        if method == "POST":
            return 201, Message(), b"{}"
        raise AssertionError(f"unexpected request {method} {url}")


def run_main(monkeypatch, tmp_path, github: FakeGitHub) -> str:
    monkeypatch.setattr(rerun, "call", github.call)
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
    return summary.read_text()


def test_one_lost_job_is_rerun_by_itself_and_the_token_stays_with_github(monkeypatch, tmp_path):
    github = FakeGitHub(JOBS, {TRAIN: log("shutdown-signal")})
    summary = run_main(monkeypatch, tmp_path, github)
    assert github.sent == [
        ("GET", f"{API}/actions/runs/5308905824/attempts/1/jobs?per_page=100", "test-token"),
        ("GET", f"{API}/actions/jobs/{TRAIN}/logs", "test-token"),
        ("GET", f"https://results-receiver.example/logs/{TRAIN}?sig=x", None),
        ("POST", f"{API}/actions/jobs/{TRAIN}/rerun", "test-token"),
    ]
    assert summary == "Run 5308905824, attempt 1: re-running train: the runner was lost\n"


def test_several_lost_jobs_rerun_the_failed_jobs_of_the_run(monkeypatch, tmp_path):
    jobs = with_job("failure", "train-fold-2")
    github = FakeGitHub(
        jobs, {TRAIN: log("shutdown-signal"), jobs[1]["id"]: log("shutdown-signal")}
    )
    run_main(monkeypatch, tmp_path, github)
    assert github.sent[-1] == (
        "POST",
        f"{API}/actions/runs/5308905824/rerun-failed-jobs",
        "test-token",
    )


def test_nothing_is_posted_when_a_job_failed_on_its_own(monkeypatch, tmp_path):
    github = FakeGitHub(JOBS, {TRAIN: log("script-failure")})
    summary = run_main(monkeypatch, tmp_path, github)
    assert [method for method, _, _ in github.sent] == ["GET", "GET", "GET"]
    assert "no job lost its runner" in summary


def test_a_redirect_is_handed_back_not_followed_with_the_token():
    handler = rerun._KeepRedirects()
    assert handler.redirect_request(None, None, 302, "Found", Message(), "https://x") is None
