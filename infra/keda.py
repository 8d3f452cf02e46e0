"""KEDA: the install that scales runners from zero, and the trigger that says when to."""

from collections.abc import Mapping, Sequence

import pulumi
import pulumi_kubernetes as k8s

CHART = "keda"
CHART_VERSION = "2.20.2"
CHART_REPOSITORY = "https://kedacore.github.io/charts"
NAMESPACE = "keda"
API_VERSION = "keda.sh/v1alpha1"
# How often KEDA asks GitHub for queued and running jobs (GitHub's API allows 5000 calls an
# hour per token; two calls a runner every 30 s stays far below).
POLLING_SECONDS = 30


class Keda(pulumi.ComponentResource):
    """The kedacore/keda Helm chart, pinned, in namespace keda, on the nodes given."""

    release: k8s.helm.v3.Release

    def __init__(
        self,
        name: str,
        node_selector: Mapping[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpu-runners:index:Keda", name, None, opts)
        self.release = k8s.helm.v3.Release(
            name,
            name=CHART,
            chart=CHART,
            version=CHART_VERSION,
            repository_opts={"repo": CHART_REPOSITORY},
            namespace=NAMESPACE,
            create_namespace=True,
            values={"nodeSelector": dict(node_selector)},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"status": self.release.status})


def github_runner_trigger(
    repository: str, labels: Sequence[str], authentication: pulumi.Input[str]
) -> dict:
    """KEDA's github-runner trigger for one repository's jobs that target these labels.

    It counts queued and in-progress jobs, so a running job keeps its runner. ETags stay off:
    with them on, the scaler can miss jobs and count too few.
    """
    owner, repo = repository.removeprefix("https://github.com/").split("/")
    return {
        "type": "github-runner",
        "metadata": {
            "owner": owner,
            "repos": repo,
            "runnerScope": "repo",
            "labels": ",".join(labels),
            "targetWorkflowQueueLength": "1",
        },
        "authenticationRef": {"name": authentication},
    }
