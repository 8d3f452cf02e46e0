"""Re-run, once, the jobs of a failed workflow run that failed because their runner was lost.

A Spot GPU node that Google reclaims takes its runner with it; GitHub then fails the job with
an annotation such as "The runner has received a shutdown signal" or "The self-hosted runner:
<name> lost communication with the server". This script reads the run's failed jobs and their
annotations, and when every failed job was lost that way, asks GitHub to re-run the failed
jobs. A job that failed on its own merits needs a person, so a run with one is left alone.

Run by .github/workflows/rerun-lost-jobs.yml with GITHUB_TOKEN (actions: write, checks: read),
GITHUB_REPOSITORY, RUN_ID and RUN_ATTEMPT. Standard library only.
"""

import json
import os
import re
import sys
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# What GitHub records on a job whose runner went away (annotations of the job's check run).
LOST_RUNNER = re.compile(
    r"The runner has received a shutdown signal|lost communication with the server"
)


@dataclass(frozen=True)
class Decision:
    """Whether to re-run the run's failed jobs, and why, for the job summary."""

    rerun: bool
    reason: str


def decide(
    attempt: int, jobs: Sequence[Mapping], annotations: Mapping[int, Sequence[Mapping]]
) -> Decision:
    """The decision for a run attempt, from its jobs and each failed job's annotations."""
    if attempt > 1:
        return Decision(False, f"attempt {attempt} is already a re-run; a lost job is re-run once")
    failed = [job for job in jobs if job.get("conclusion") == "failure"]
    if not failed:
        return Decision(False, "no job failed")
    lost = [
        job
        for job in failed
        if any(LOST_RUNNER.search(a.get("message", "")) for a in annotations.get(job["id"], []))
    ]
    if not lost:
        return Decision(False, "no failed job lost its runner")
    if len(lost) < len(failed):
        others = ", ".join(job["name"] for job in failed if job not in lost)
        return Decision(False, f"{others} failed on its own; a person should look first")
    names = ", ".join(job["name"] for job in lost)
    return Decision(True, f"re-running {names}: the runner was lost")


def _github(method: str, url: str, token: str) -> Callable[[], object]:
    def call() -> object:
        request = urllib.request.Request(url, method=method)
        request.add_header("Authorization", f"Bearer {token}")
        request.add_header("Accept", "application/vnd.github+json")
        request.add_header("X-GitHub-Api-Version", "2022-11-28")
        with urllib.request.urlopen(request) as response:
            body = response.read()
        return json.loads(body) if body else None

    return call


def main() -> int:
    token = os.environ["GITHUB_TOKEN"]
    api = os.environ.get("GITHUB_API_URL", "https://api.github.com")
    repository = os.environ["GITHUB_REPOSITORY"]
    run_id, attempt = os.environ["RUN_ID"], int(os.environ["RUN_ATTEMPT"])
    runs = f"{api}/repos/{repository}/actions/runs/{run_id}"
    jobs = _github("GET", f"{runs}/attempts/{attempt}/jobs?per_page=100", token)()["jobs"]
    annotations = {
        job["id"]: _github("GET", f"{job['check_run_url']}/annotations", token)()
        for job in jobs
        if job.get("conclusion") == "failure"
    }
    decision = decide(attempt, jobs, annotations)
    if decision.rerun:
        _github("POST", f"{runs}/rerun-failed-jobs", token)()
    print(decision.reason)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as out:
            out.write(f"Run {run_id}, attempt {attempt}: {decision.reason}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
