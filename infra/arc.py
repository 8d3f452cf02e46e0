"""ArcController: GitHub's actions-runner-controller for runner scale sets, installed once."""

from collections.abc import Mapping

import pulumi
import pulumi_kubernetes as k8s

from infra.options import child_options
from infra.runner_base import app_labels

CHART_REPOSITORY = "oci://ghcr.io/actions/actions-runner-controller-charts"
CONTROLLER_CHART = f"{CHART_REPOSITORY}/gha-runner-scale-set-controller"
SCALE_SET_CHART = f"{CHART_REPOSITORY}/gha-runner-scale-set"
# Controller and scale sets must share major.minor: the controller deletes an
# AutoscalingRunnerSet of another version (actions-runner-controller, IsVersionAllowed).
CHART_VERSION = "0.14.2"
NAMESPACE = "arc-systems"
# Named here, not discovered: the scale-set chart otherwise looks for the controller's
# Deployment with Helm's `lookup` (templates/_helpers.tpl, managerServiceAccountName), which
# fails when it finds none (a client-side render) or more than one controller in the cluster.
SERVICE_ACCOUNT = "arc-gha-rs-controller"


class ArcController(pulumi.ComponentResource):
    """The gha-runner-scale-set-controller chart, pinned, in namespace arc-systems.

    It watches every namespace for the runner scale sets of ArcRunner and holds their GitHub
    credentials; runner pods get only a one-job registration from it. The chart's CRDs
    (actions.github.com) stay in the cluster when it is uninstalled: Helm never deletes CRDs.
    """

    release: k8s.helm.v3.Release

    def __init__(
        self,
        name: str,
        node_selector: Mapping[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gpu-runners:index:ArcController", name, None, opts)
        # A namespace of its own, not Helm's create_namespace: Helm never deletes that one.
        namespace = k8s.core.v1.Namespace(
            NAMESPACE,
            metadata={"name": NAMESPACE, "labels": app_labels("arc-controller", name)},
            opts=child_options(self, opts),
        )
        self.release = k8s.helm.v3.Release(
            name,
            name=name,
            chart=CONTROLLER_CHART,
            version=CHART_VERSION,
            namespace=namespace.metadata.name,
            values={
                "nodeSelector": dict(node_selector),
                "serviceAccount": {"create": True, "name": SERVICE_ACCOUNT},
            },
            # What the scale sets need from this release is its CRDs, which Helm installs
            # from crds/ and waits for whether or not the release waits (helm, install.go); the
            # chart has no admission webhook. So `pulumi up` does not wait for the controller
            # Deployment: a scale set created first is simply reconciled once it runs.
            skip_await=True,
            opts=child_options(self, opts),
        )
        self.register_outputs({"status": self.release.status})
