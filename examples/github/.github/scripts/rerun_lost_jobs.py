"""Re-run, once, the jobs of a failed or cancelled workflow run that lost their runner.

A Spot GPU node that Google reclaims takes its runner with it; GitHub then ends the job, as
failed or as cancelled, and writes "The runner has received a shutdown signal" or "The
self-hosted runner: <name> lost communication with the server" into the job's log (since 2026
the log only: the check run's annotation just says "The operation was canceled.",
camunda/camunda#57268). This script reads the logs of the run's failed and cancelled jobs and,
when at least one lost its runner and none failed on its own, asks GitHub to re-run them. A job
that failed on its own merits needs a person, so a run with one is left alone.

Run by .github/workflows/rerun-lost-jobs.yml with GITHUB_TOKEN (actions: write),
GITHUB_REPOSITORY, RUN_ID and RUN_ATTEMPT. Standard library only.
"""

import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import Message

# What GitHub writes into the log of a job whose runner went away.
LOST_RUNNER = re.compile(
    r"The runner has received a shutdown signal|lost communication with the server"
)
ENDED_BADLY = ("failure", "cancelled")


@dataclass(frozen=True)
class Decision:
    """Which jobs to re-run (none: leave the run alone), and why, for the job summary."""

    rerun: tuple[int, ...]
    reason: str


def decide(attempt: int, jobs: Sequence[Mapping], logs: Mapping[int, str]) -> Decision:
    """The decision for a run attempt, from its jobs and the logs of those that ended badly."""
    if attempt > 1:
        return Decision((), f"attempt {attempt} is already a re-run; a lost job is re-run once")
    ended = [job for job in jobs if job.get("conclusion") in ENDED_BADLY]
    if not ended:
        return Decision((), "no job failed or was cancelled")
    lost = [job for job in ended if LOST_RUNNER.search(logs.get(job["id"], ""))]
    if not lost:
        return Decision((), "no job lost its runner")
    # A job cancelled with no lost runner (a matrix sibling, say) does not stop the re-run.
    own = [job for job in ended if job.get("conclusion") == "failure" and job not in lost]
    if own:
        names = ", ".join(job["name"] for job in own)
        return Decision((), f"{names} failed on its own; a person should look first")
    names = ", ".join(job["name"] for job in lost)
    return Decision(tuple(job["id"] for job in lost), f"re-running {names}: the runner was lost")


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    """Hands a redirect back: a job's log is served from another host, without our token."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_KeepRedirects)


def call(method: str, url: str, token: str | None) -> tuple[int, Message, bytes]:
    """One HTTP request; the token goes to GitHub's API only. Redirects are returned."""
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
        request.add_header("Accept", "application/vnd.github+json")
        request.add_header("X-GitHub-Api-Version", "2022-11-28")
    try:
        with _OPENER.open(request) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        if error.code in (301, 302, 303, 307, 308):
            return error.code, error.headers, b""
        raise


def job_log(api: str, repository: str, job_id: int, token: str) -> str:
    """A job's log: GitHub answers with a redirect to a short-lived download address."""
    status, headers, body = call(
        "GET", f"{api}/repos/{repository}/actions/jobs/{job_id}/logs", token
    )
    if status in (301, 302, 303, 307, 308):
        _, _, body = call("GET", headers["Location"], None)
    return body.decode("utf-8", errors="replace")


def main() -> int:
    token = os.environ["GITHUB_TOKEN"]
    api = os.environ.get("GITHUB_API_URL", "https://api.github.com")
    repository = os.environ["GITHUB_REPOSITORY"]
    run_id, attempt = os.environ["RUN_ID"], int(os.environ["RUN_ATTEMPT"])
    run = f"{api}/repos/{repository}/actions/runs/{run_id}"
    _, _, body = call("GET", f"{run}/attempts/{attempt}/jobs?per_page=100", token)
    jobs = json.loads(body)["jobs"]
    logs = {
        job["id"]: job_log(api, repository, job["id"], token)
        for job in jobs
        if job.get("conclusion") in ENDED_BADLY
    }
    decision = decide(attempt, jobs, logs)
    if len(decision.rerun) == 1:
        # Re-runs that job and the jobs that need it, whether it failed or was cancelled.
        call("POST", f"{api}/repos/{repository}/actions/jobs/{decision.rerun[0]}/rerun", token)
    elif decision.rerun:
        call("POST", f"{run}/rerun-failed-jobs", token)
    print(decision.reason)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as out:
            out.write(f"Run {run_id}, attempt {attempt}: {decision.reason}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
