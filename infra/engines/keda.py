"""KEDA: the install that starts runner Jobs, and the triggers that say how many."""

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
# The labels GitHub gives every self-hosted Linux x64 runner, which a job's labels may name
# besides the trigger's (KEDA 2.20.2, github_runner_scaler.go, reservedLabels; compared in any
# case).
GITHUB_DEFAULT_LABELS = ("self-hosted", "linux", "x64")
# Stops a ScaledJob from starting Jobs; Jobs already running go on (KEDA 2.20,
# controllers/keda/scaledjob_controller.go, checkIfPaused).
PAUSED = "autoscaling.keda.sh/paused"
# What KEDA's three pods reserve on the system pool; the chart asks 100m CPU each
# (kedacore/charts, keda/values.yaml, resources), a third of a small node's allocatable CPU,
# while they idle at a few millicores. Limits stay the chart's.
REQUESTS = {
    "operator": {"requests": {"cpu": "50m", "memory": "100Mi"}},
    "metricServer": {"requests": {"cpu": "25m", "memory": "100Mi"}},
    "webhooks": {"requests": {"cpu": "25m", "memory": "100Mi"}},
}


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
            values={
                "nodeSelector": dict(node_selector),
                "resources": REQUESTS,
                # By default the operator may list and watch every Secret of the cluster
                # (templates/manager/clusterrole.yaml), the forge credentials of ARC and
                # GitLab included; restricted, it reads Secrets in its own namespace only
                # (KEDA_RESTRICT_SECRET_ACCESS; pkg/scaling/resolver/scale_resolvers.go,
                # resolveAuthSecret), where the CML scalers' tokens are
                # (infra/engines/cml_runner.py).
                "permissions": {"operator": {"restrict": {"secret": True}}},
            },
            # No skip_await: KEDA's CRDs are chart templates (templates/crds), which Helm does
            # not wait for unless the release waits, and the ScaledJobs need them. Its
            # admission webhook fails open (failurePolicy Ignore), so it blocks nothing.
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"status": self.release.status})


def github_runner_trigger(
    repository: str, labels: Sequence[str], authentication: pulumi.Input[str]
) -> dict:
    """KEDA's github-runner trigger for one repository's jobs that target these labels.

    It counts queued and in-progress jobs, so a running job keeps its runner. ETags stay off:
    with them on, the scaler can miss jobs and count too few.

    A job counts when each of its labels is one of these or a default label (self-hosted,
    linux, x64, any case). A job with no labels at all (`runs-on: {group: ...}`) would count
    for every trigger, and start a GPU runner that idles and exits for as long as that job
    runs elsewhere; with matchUnlabeledJobsWithUnlabeledRunners it counts only for a trigger
    without labels, which this never is (KEDA 2.20.2, pkg/scalers/github_runner_scaler.go,
    canRunnerMatchLabels; added in 2.18, kedacore/keda#6900. KEDA's docs page states the
    opposite of what the code does).
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
            "matchUnlabeledJobsWithUnlabeledRunners": "true",
        },
        "authenticationRef": {"name": authentication, "kind": "ClusterTriggerAuthentication"},
    }


def own_pods_trigger(pod_selector: str) -> dict:
    """KEDA's kubernetes-workload trigger: the number of live pods matching the selector.

    For a ScaledJob whose minReplicaCount equals its maxReplicaCount, which needs a trigger
    but never scales by one. It reads only the cluster: no token, no call to the forge.
    """
    return {
        "type": "kubernetes-workload",
        "metadata": {"podSelector": pod_selector, "value": "1"},
    }
