"""Engine arc: a GitHub runner scale set whose pods never hold the credential that registers it."""

import json

import kubernetes_validate
import pulumi
import pytest

from infra.engines.arc import ArcVersionChange, refuse_version_change
from tests.charts import unread_values
from tests.harness import (
    MIRROR,
    REPO,
    RUNNERS,
    TOKENS,
    fake_token,
    is_secret,
    reveal,
    run_program,
    run_rejected_program,
)
from tests.stacks import BOTH_ENGINES
from tests.test_kubernetes_schema import GKE_MINORS

RELEASE = "kubernetes:helm.sh/v3:Release"
SECRET = "kubernetes:core/v1:Secret"
CHARTS = "oci://ghcr.io/actions/actions-runner-controller-charts"
CHART_FILES = REPO / "tests" / "schemas" / "arc-0.14.2"
ARC = {RUNNERS: [{"name": "gpu-arc", "engine": "arc"}]}
# Made-up App values in the shapes GitHub gives them.
APP = {
    "appId": 123456,
    "installationId": "7890123",
    "privateKey": "-----BEGIN RSA PRIVATE KEY-----\nMIIEfake\n-----END RSA PRIVATE KEY-----\n",
}


@pytest.fixture(scope="module")
def arc():
    return run_program(ARC)


def release(program, chart: str, name: str | None = None):
    (found,) = [
        r
        for r in program.of_type(RELEASE)
        if r.inputs["chart"] == f"{CHARTS}/{chart}" and name in (None, r.name)
    ]
    return found


def scale_set_values(program, name: str = "gpu-arc") -> dict:
    return reveal(release(program, "gha-runner-scale-set", name).inputs["values"])


def test_the_controller_is_installed_once_pinned_on_the_system_pool(arc):
    controller = release(arc, "gha-runner-scale-set-controller").inputs
    assert controller["version"] == "0.14.2"
    assert controller["namespace"] == "arc-systems"
    assert "createNamespace" not in controller
    # Its CRDs come from crds/, which Helm waits for anyway; the Deployment need not be ready.
    assert controller["skipAwait"] is True
    assert "skipAwait" not in release(arc, "gha-runner-scale-set").inputs
    # Its own Namespace resource, so `pulumi destroy` removes it (Helm would leave it).
    namespace = arc.one("kubernetes:core/v1:Namespace", "arc-systems")
    assert arc.waits_for(release(arc, "gha-runner-scale-set-controller"), namespace)
    assert controller["values"] == {
        "nodeSelector": {"gpu": "false"},
        "serviceAccount": {"create": True, "name": "arc-gha-rs-controller"},
        # Not BestEffort on a small system node.
        "resources": {
            "requests": {"cpu": "50m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
    }


def test_a_stack_whose_runners_are_all_arc_installs_no_keda(arc):
    assert [r.inputs["chart"] for r in arc.of_type(RELEASE) if "keda" in r.inputs["chart"]] == []
    assert not [r for r in arc.resources if r.type.startswith("kubernetes:keda.sh/")]


def test_a_stack_with_both_engines_installs_keda_and_the_controller():
    program = run_program(BOTH_ENGINES)
    charts = sorted(r.inputs["chart"] for r in program.of_type(RELEASE))
    assert charts == [
        "keda",
        f"{CHARTS}/gha-runner-scale-set",
        f"{CHARTS}/gha-runner-scale-set-controller",
    ]
    assert scale_set_values(program)["maxRunners"] == 2


def test_the_scale_set_registers_with_the_repository_and_scales_from_zero(arc):
    scale_set = release(arc, "gha-runner-scale-set").inputs
    assert scale_set["version"] == "0.14.2"
    assert scale_set["namespace"] == "gpu-arc"
    values = scale_set_values(arc)
    assert values["githubConfigUrl"] == "https://github.com/ml-team/churn-model"
    assert values["githubConfigSecret"] == "gpu-arc-token"
    assert values["runnerScaleSetName"] == "gpu-arc"
    assert values["scaleSetLabels"] == ["cml-runner"]
    assert (values["minRunners"], values["maxRunners"]) == (0, 1)
    assert values["controllerServiceAccount"] == {
        "namespace": "arc-systems",
        "name": "arc-gha-rs-controller",
    }
    listener = values["listenerTemplate"]["spec"]
    assert listener["nodeSelector"] == {"gpu": "false"}
    # ARC's own 60 s, which a template without one would lower to the API server's 30 s.
    assert listener["terminationGracePeriodSeconds"] == 60
    assert listener["containers"] == [
        {
            "name": "listener",
            "resources": {
                "requests": {"cpu": "25m", "memory": "64Mi"},
                "limits": {"memory": "256Mi"},
            },
        }
    ]
    assert arc.outputs["runners"]["gpu-arc"] == {
        "namespace": "gpu-arc",
        "workload": "AutoscalingRunnerSet/gpu-arc",
        "labels": ["cml-runner"],
    }


def test_an_arc_cpu_runner_also_starts_from_zero():
    program = run_program(
        {RUNNERS: [{"name": "cpu-arc", "engine": "arc", "gpus": 0, "cpu": "500m"}]}
    )
    values = scale_set_values(program, "cpu-arc")
    assert (values["minRunners"], values["maxRunners"]) == (0, 1)
    spec = values["template"]["spec"]
    # The CPU runner pool, never the system pool beside the controllers.
    assert spec["nodeSelector"] == {"gpu": "false", "gpu-runners/cpu-jobs": "true"}
    assert spec["tolerations"] == [
        {"key": "gpu-runners/cpu-jobs", "operator": "Exists", "effect": "NoSchedule"}
    ]


@pytest.mark.parametrize("name", ["arc-systems", "keda"])
def test_a_runner_cannot_take_a_controllers_namespace(name):
    error, registered = run_rejected_program({RUNNERS: [{"name": name, "engine": "arc"}]})
    assert f"runners[0].name = '{name}': allowed:" in str(error)
    assert registered == []


def test_a_missing_arc_credential_names_both_forms():
    error, _ = run_rejected_program(ARC, without=[TOKENS])
    assert "runnerTokens.gpu-arc is not set" in str(error)
    assert "or a GitHub App: `runnerTokens.gpu-arc.appId`" in str(error)


def test_an_always_arc_runner_keeps_replicas_waiting():
    program = run_program({RUNNERS: [{"name": "gpu-arc", "engine": "arc", "mode": "always"}]})
    values = scale_set_values(program)
    assert (values["minRunners"], values["maxRunners"]) == (1, 1)


def test_the_scale_set_is_installed_after_and_removed_before_the_controller(arc):
    scale_set = release(arc, "gha-runner-scale-set")
    controller = release(arc, "gha-runner-scale-set-controller")
    # Pulumi deletes in reverse: the controller outlives the scale set and cleans it up.
    assert arc.waits_for(scale_set, controller)
    assert arc.waits_for(scale_set, arc.one(SECRET, "gpu-arc-token"))
    assert scale_set.inputs["timeout"] == 600


def test_new_labels_make_a_new_scale_set(arc):
    scale_set = release(arc, "gha-runner-scale-set")
    assert scale_set.replace_on_changes == ("values.scaleSetLabels",)
    assert scale_set.delete_before_replace is True


def test_the_runner_pod_lands_on_a_gpu_and_acts_as_the_runner_account(arc):
    template = scale_set_values(arc)["template"]
    spec = template["spec"]
    (runner,) = spec["containers"]
    assert runner["name"] == "runner"
    assert runner["image"] == f"{MIRROR}/mlops-kubernetes-ghcr/actions/actions-runner:2.338.0"
    assert runner["command"] == ["/home/runner/run.sh"]
    assert spec["nodeSelector"] == {"gpu": "true", "cloud.google.com/compute-class": "gpu"}
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {
            "key": "cloud.google.com/compute-class",
            "operator": "Equal",
            "value": "gpu",
            "effect": "NoSchedule",
        },
    ]
    expected = {"cpu": "1", "memory": "2000Mi", "nvidia.com/gpu": "1"}
    assert runner["resources"] == {"requests": expected, "limits": expected}
    assert {"name": "LD_LIBRARY_PATH", "value": "/usr/local/nvidia/lib64"} in runner["env"]
    assert spec["serviceAccountName"] == "gpu-arc"
    account = arc.one("kubernetes:core/v1:ServiceAccount", "gpu-arc").inputs["metadata"]
    assert account["annotations"]["iam.gke.io/gcp-service-account"].startswith(
        "mlops-kubernetes-runner@"
    )
    assert template["metadata"]["annotations"] == {
        "cluster-autoscaler.kubernetes.io/safe-to-evict": "false"
    }


def test_the_runner_pod_meets_the_restricted_pod_security_standard(arc):
    namespace = arc.one("kubernetes:core/v1:Namespace", "gpu-arc").inputs["metadata"]
    assert namespace["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    spec = scale_set_values(arc)["template"]["spec"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (runner,) = spec["containers"]
    assert runner["securityContext"] == {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    # One volume: the package index's keyring command, read-only.
    assert [v["name"] for v in spec["volumes"]] == ["keyring"]
    assert "hostNetwork" not in spec


def test_a_pat_lives_only_in_the_secret_the_controller_reads(arc):
    secret = arc.one(SECRET, "gpu-arc-token").inputs
    assert is_secret(secret["stringData"])
    assert reveal(secret["stringData"]) == {"github_token": fake_token("gpu-arc")}
    for resource in arc.resources:
        inputs = {k: v for k, v in resource.inputs.items() if resource.type != SECRET}
        assert fake_token("gpu-arc") not in json.dumps(reveal(inputs)), resource.name
    assert fake_token("gpu-arc") not in json.dumps(arc.outputs)


def test_a_github_app_is_stored_under_the_keys_arc_reads():
    program = run_program(ARC, secrets={TOKENS: {"gpu-arc": APP}})
    secret = program.one(SECRET, "gpu-arc-token").inputs
    assert is_secret(secret["stringData"])
    assert reveal(secret["stringData"]) == {
        "github_app_id": "123456",
        "github_app_installation_id": "7890123",
        "github_app_private_key": APP["privateKey"],
    }
    for resource in program.resources:
        if resource.type != SECRET:
            assert "PRIVATE KEY" not in json.dumps(reveal(resource.inputs)), resource.name


@pytest.mark.parametrize(
    ("runner", "message_part"),
    [
        (
            {"platform": "gitlab"},
            "runners[0].engine = 'arc': arc (actions-runner-controller) runs GitHub Actions "
            "runners only; allowed for gitlab: gitlab-runner, cml",
        ),
        ({"imageTag": "0-dvc3-base1"}, "runners[0].imageTag = '0-dvc3-base1': applies to"),
        ({"idleTimeoutSeconds": 600}, "runners[0].idleTimeoutSeconds = 600: applies to engine"),
        ({"image": "actions-runner:latest"}, "runners[0].image = 'actions-runner:latest': allowed"),
        ({"engine": "cml", "image": "ghcr.io/a/b:1"}, "image = 'ghcr.io/a/b:1': applies to"),
    ],
    ids=["gitlab", "image-tag", "idle-timeout", "image-without-registry", "image-on-cml"],
)
def test_settings_that_do_not_fit_the_engine_are_refused(runner, message_part):
    error, registered = run_rejected_program(
        {RUNNERS: [{"name": "gpu-arc", "engine": "arc"} | runner]}
    )
    assert message_part in str(error)
    assert registered == []


@pytest.mark.parametrize(
    ("app", "message_part"),
    [
        ({k: v for k, v in APP.items() if k != "privateKey"}, "gpu-arc.privateKey is not set"),
        (APP | {"appId": "my-app"}, "gpu-arc.appId = [secret]: allowed: the App's numeric ID"),
        (APP | {"privateKey": "not a key"}, "gpu-arc.privateKey = [secret]: allowed:"),
        (APP | {"clientSecret": "x"}, "gpu-arc.clientSecret: not a GitHub App key"),
    ],
    ids=["missing-key", "bad-app-id", "not-pem", "unknown-key"],
)
def test_a_bad_github_app_is_refused_without_showing_it(app, message_part):
    error, registered = run_rejected_program(ARC, secrets={TOKENS: {"gpu-arc": app}})
    assert message_part in str(error)
    assert "MIIEfake" not in str(error) and "my-app" not in str(error)
    assert registered == []


def test_a_github_app_on_a_cml_runner_is_refused():
    error, _ = run_rejected_program(
        {RUNNERS: [{"name": "cml-runner"}]}, secrets={TOKENS: {"cml-runner": APP}}
    )
    assert "runnerTokens.cml-runner holds a GitHub App, which only engine arc uses" in str(error)
    assert "MIIEfake" not in str(error)


@pytest.mark.parametrize("chart", ["gha-runner-scale-set", "gha-runner-scale-set-controller"])
def test_every_value_given_is_one_the_chart_reads(chart, arc):
    assert unread_values(CHART_FILES / chart, reveal(release(arc, chart).inputs["values"])) == []


def test_the_chart_check_catches_misspelt_values(arc):
    values = scale_set_values(arc)
    values["maxRunner"] = values.pop("maxRunners")
    values["controllerServiceAccount"]["namespaces"] = "arc-systems"
    assert unread_values(CHART_FILES / "gha-runner-scale-set", values) == [
        "controllerServiceAccount.namespaces",
        "maxRunner",
    ]


@pytest.mark.parametrize("minor", GKE_MINORS)
@pytest.mark.parametrize("template", ["template", "listenerTemplate"])
def test_pod_templates_are_valid_pods(template, minor, arc):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-arc-runner", "namespace": "gpu-arc"},
        "spec": scale_set_values(arc)[template]["spec"],
    }
    kubernetes_validate.validate(pod, f"{minor}.0", strict=True)


def upgrade_hook_args(before, after) -> pulumi.ResourceHookArgs:
    """What the engine hands the controller release's before-update hook, from two runs."""
    old = release(before, "gha-runner-scale-set-controller")
    new = release(after, "gha-runner-scale-set-controller")
    assert old.urn == new.urn
    return pulumi.ResourceHookArgs(
        urn=new.urn,
        id="arc-systems/arc",
        name=new.name,
        type=new.type,
        new_inputs=reveal(new.inputs),
        old_inputs=reveal(old.inputs),
    )


def test_a_minor_version_change_of_arc_is_refused_with_the_steps_that_keep_runners(
    arc, monkeypatch
):
    monkeypatch.setattr("infra.engines.arc.CHART_VERSION", "0.15.0")
    newer = run_program(ARC)
    # The scale sets follow the controller's version, so they change in the same run.
    assert release(newer, "gha-runner-scale-set").inputs["version"] == "0.15.0"
    controller = release(newer, "gha-runner-scale-set-controller")
    assert controller.before_update_hooks == ("arc-version-guard",)
    assert not release(newer, "gha-runner-scale-set").before_update_hooks
    assert newer.waits_for(release(newer, "gha-runner-scale-set"), controller)
    with pytest.raises(ArcVersionChange) as refused:
        refuse_version_change(upgrade_hook_args(arc, newer))
    message = str(refused.value)
    assert "0.14.2 -> 0.15.0" in message
    assert "no ARC release was changed" in message
    # Step 1 takes each runner's namespace and Secret with it (they wait for the controller).
    assert "with its namespace and Secret, then the controller" in message
    assert f"pulumi destroy --target '{controller.urn}' --target-dependents" in message
    assert "kubectl delete crd autoscalinglisteners.actions.github.com" in message
    assert message.endswith("3. pulumi up")
    # And back down: the same refusal.
    with pytest.raises(ArcVersionChange):
        refuse_version_change(upgrade_hook_args(newer, arc))


def test_a_patch_release_of_arc_is_upgraded_in_place(arc, monkeypatch):
    # ARC's controller accepts a scale set whose major.minor matches (IsVersionAllowed).
    monkeypatch.setattr("infra.engines.arc.CHART_VERSION", "0.14.3")
    refuse_version_change(upgrade_hook_args(arc, run_program(ARC)))


def test_a_pre_release_of_arc_is_refused_like_a_minor_change(arc, monkeypatch):
    # ARC's version check cannot parse it, and so deletes the scale sets of any other version.
    monkeypatch.setattr("infra.engines.arc.CHART_VERSION", "0.14.3-rc.1")
    with pytest.raises(ArcVersionChange):
        refuse_version_change(upgrade_hook_args(arc, run_program(ARC)))


def test_the_guard_lets_a_values_change_through(arc):
    other = run_program({RUNNERS: [{"name": "gpu-arc", "engine": "arc", "maxRunners": 3}]})
    refuse_version_change(upgrade_hook_args(arc, other))
