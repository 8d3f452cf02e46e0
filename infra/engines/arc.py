"""ArcController: GitHub's actions-runner-controller for runner scale sets, installed once."""

import re
from collections.abc import Mapping

import pulumi
import pulumi_kubernetes as k8s

from infra.engines.runner_base import app_labels
from infra.options import child_options

CHART_REPOSITORY = "oci://ghcr.io/actions/actions-runner-controller-charts"
CONTROLLER_CHART = f"{CHART_REPOSITORY}/gha-runner-scale-set-controller"
SCALE_SET_CHART = f"{CHART_REPOSITORY}/gha-runner-scale-set"
# Controller and scale sets must share major.minor: the controller deletes an
# AutoscalingRunnerSet of another version, and removes its scale set from GitHub on the way
# (actions-runner-controller 0.14.2, apis/actions.github.com/v1alpha1/version.go
# IsVersionAllowed; autoscalingrunnerset_controller.go Reconcile, cleanUpResources).
CHART_VERSION = "0.14.2"
# ARC's CRDs, which Helm installs from the chart's crds/ once and never upgrades or deletes.
CRDS = (
    "autoscalinglisteners.actions.github.com",
    "autoscalingrunnersets.actions.github.com",
    "ephemeralrunners.actions.github.com",
    "ephemeralrunnersets.actions.github.com",
)
UPGRADE_GUIDE = "docs/upgrading-arc.md"
# What the controller and each listener ask of the system pool. The charts set none (the
# controller's values.yaml only has a commented example of 100m/128Mi), which leaves them
# BestEffort: first evicted when a small system node runs short. Sized for a few scale sets;
# no upstream measurement exists, and the memory limits only stop a runaway.
CONTROLLER_RESOURCES = {
    "requests": {"cpu": "50m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}
LISTENER_RESOURCES = {"requests": {"cpu": "25m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
# ARC gives a listener 60 s to stop, but copies the listener template's grace period over it
# even when the template has none, which the API server then sets to 30 s
# (controllers/actions.github.com/resourcebuilder.go, newScaleSetListenerPod,
# mergeListenerPodWithTemplate): the template states it.
LISTENER_GRACE_SECONDS = 60
NAMESPACE = "arc-systems"
# Named here, not discovered: the scale-set chart otherwise looks for the controller's
# Deployment with Helm's `lookup` (templates/_helpers.tpl, managerServiceAccountName), which
# fails when it finds none (a client-side render) or more than one controller in the cluster.
SERVICE_ACCOUNT = "arc-gha-rs-controller"


class ArcVersionChange(Exception):
    """A change of ARC's major.minor version that `pulumi up` must not make by itself."""


def _same_line(old: str, new: str) -> bool:
    """Whether the controller accepts scale sets of `old` once it runs `new`: both plain
    releases with the same major.minor (IsVersionAllowed, which refuses what it cannot parse,
    pre-releases included)."""
    release = re.compile(r"^(\d+)\.(\d+)\.\d+$")
    old_match, new_match = release.match(old), release.match(new)
    return bool(old_match and new_match) and old_match.groups() == new_match.groups()


def refuse_version_change(args: pulumi.ResourceHookArgs) -> None:
    """Before the controller's release is updated (and on preview): refuse a major.minor
    version change. The scale sets' releases share the version and wait for the controller's,
    so none of them changes either.

    An in-place `helm upgrade` would let the new controller delete every scale set of the old
    version, on GitHub too, with Helm and Pulumi reporting success (actions-runner-controller
    #4422), and would keep the old CRDs. ARC's documented upgrade is: uninstall the scale
    sets, wait for their cleanup, uninstall the controller, replace changed CRDs, install
    again ("Upgrading ARC"; maintainers in #3562 and #3726). A patch release passes the
    controller's version check and is upgraded in place.
    """
    old = (args.old_inputs or {}).get("version")
    new = (args.new_inputs or {}).get("version")
    if not isinstance(old, str) or not isinstance(new, str):
        return
    if old == new or _same_line(old, new):
        return
    raise ArcVersionChange(
        f"{args.name}: actions-runner-controller {old} -> {new} is not a patch release. "
        "Upgraded in place, the new controller would delete every runner scale set of the old "
        "version, on GitHub too, and Helm would keep the old CRDs; no ARC release was "
        f"changed. Upgrade in three steps ({UPGRADE_GUIDE}):\n"
        f"  1. pulumi destroy --target '{args.urn}' --target-dependents\n"
        "     (removes each arc runner's scale set, waiting for ARC to clean it up, with its "
        "namespace and Secret, then the controller)\n"
        f"  2. kubectl delete crd {' '.join(CRDS)}\n"
        "  3. pulumi up"
    )


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
        # Runs on preview too, so `pulumi preview` already stops at such a change.
        version_guard = pulumi.ResourceHook(
            f"{name}-version-guard",
            refuse_version_change,
            pulumi.ResourceHookOptions(on_dry_run=True),
        )
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
                "resources": CONTROLLER_RESOURCES,
            },
            # What the scale sets need from this release is its CRDs, which Helm installs
            # from crds/ and waits for whether or not the release waits (helm, install.go); the
            # chart has no admission webhook. So `pulumi up` does not wait for the controller
            # Deployment: a scale set created first is simply reconciled once it runs.
            skip_await=True,
            opts=child_options(
                self, opts, hooks=pulumi.ResourceHookBinding(before_update=[version_guard])
            ),
        )
        self.register_outputs({"status": self.release.status})
