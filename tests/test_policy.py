"""The policy pack: clean on what the program registers, and every rule catches its mistake."""

import copy
import dataclasses
import json
import tomllib

import pytest
import tomli_w
import yaml
from pulumi.runtime import rpc
from pulumi_policy import EnforcementLevel
from rules import HELM_RELEASE as RELEASE
from rules import POLICIES

from infra.tools import plan
from tests.harness import REPO, TOKENS, Resource, fake_token, run_program
from tests.stacks import BOTH_ENGINES, GITLAB, SHAPES, SHARED_GPUS

BY_NAME = {policy.name: policy for policy in POLICIES}
TOKEN_RULE = "runner-pods-mount-no-api-token"
TOKENS_IN_VALUES = "helm-values-hold-no-literal-tokens"
SECCOMP_RULE = "pods-have-a-seccomp-profile"


def violations(resource: Resource, policy_name: str) -> list[str]:
    """Run one policy on one recorded resource, as `python -m infra.tools.plan` does."""
    return plan.violations(resource, BY_NAME[policy_name])


def crafted(program, type_: str, name: str, change, urn_stack: str | None = None) -> Resource:
    """A copy of a registered resource with its inputs changed by `change`."""
    original = program.one(type_, name)
    inputs = copy.deepcopy(original.inputs)
    change(inputs)
    urn = original.urn.replace(":dev::", f":{urn_stack}::") if urn_stack else original.urn
    return Resource(
        type=original.type,
        name=original.name,
        inputs=inputs,
        urn=urn,
        parent=original.parent,
        depends_on=original.depends_on,
        provider=original.provider,
        ignore_changes=original.ignore_changes,
        protect=original.protect,
    )


@pytest.fixture(scope="module")
def dev():
    return run_program()


def test_the_pack_has_the_mandatory_and_advisory_rules():
    levels = {p.name: p.enforcement_level for p in POLICIES}
    assert levels == {
        "gpu-node-pools-are-labelled-tainted-and-driven": EnforcementLevel.MANDATORY,
        "gpu-workloads-select-and-tolerate-gpu-nodes": EnforcementLevel.MANDATORY,
        "runner-pods-land-on-runner-pools": EnforcementLevel.MANDATORY,
        "gpu-runner-pods-select-a-gpu-class": EnforcementLevel.MANDATORY,
        "runner-pods-mount-no-api-token": EnforcementLevel.MANDATORY,
        "pods-have-a-seccomp-profile": EnforcementLevel.MANDATORY,
        "runner-namespaces-are-isolated": EnforcementLevel.MANDATORY,
        "containers-hold-no-literal-tokens": EnforcementLevel.MANDATORY,
        "helm-values-hold-no-literal-tokens": EnforcementLevel.MANDATORY,
        "no-service-account-keys": EnforcementLevel.MANDATORY,
        "no-primitive-roles": EnforcementLevel.MANDATORY,
        "no-privileged-containers": EnforcementLevel.MANDATORY,
        "prod-clusters-have-deletion-protection": EnforcementLevel.MANDATORY,
        "gpu-pools-use-spot": EnforcementLevel.ADVISORY,
        "gpu-pools-scale-to-zero": EnforcementLevel.ADVISORY,
    }
    assert all(p.description for p in POLICIES)


# The advisories a shape meets by design: docs/gpu-classes.md's A100 class is on demand.
EXPECTED_ADVISORIES = {"two-classes": {("gpu-pools-use-spot", "gke-a100")}}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_rule_passes_on_what_the_program_registers(shape):
    program = run_program(SHAPES[shape])
    advisories = set()
    for policy in POLICIES:
        found = plan.policy_violations(program.resources, policy)
        if policy.enforcement_level == EnforcementLevel.ADVISORY:
            advisories |= {(policy.name, resource.name) for resource, _ in found}
        else:
            assert found == [], policy.name
    assert advisories == EXPECTED_ADVISORIES.get(shape, set())


def gpu_pool(dev, change) -> Resource:
    return crafted(dev, "gcp:container/nodePool:NodePool", "gke-gpu", change)


def runner(dev, change) -> Resource:
    return crafted(dev, "kubernetes:keda.sh/v1alpha1:ScaledJob", "cml-runner", change)


def pod(inputs: dict) -> dict:
    return inputs["spec"]["jobTargetRef"]["template"]["spec"]


def first_container(inputs: dict) -> dict:
    return pod(inputs)["containers"][0]


def test_a_gpu_pool_without_label_taint_or_driver_is_refused(dev):
    def strip(inputs):
        node = inputs["nodeConfig"]
        node["labels"] = {}
        node["taints"] = []
        node["guestAccelerators"][0]["gpuDriverInstallationConfig"] = {
            "gpuDriverVersion": "INSTALLATION_DISABLED"
        }

    found = violations(gpu_pool(dev, strip), "gpu-node-pools-are-labelled-tainted-and-driven")
    assert len(found) == 4
    assert all(message.startswith("GPU node pool 'gke-gpu' ") for message in found)
    assert "add it to node_config.labels" in found[0]
    assert "declare it in node_config.taints" in found[1]
    assert "belongs to no GPU class" in found[2]
    assert "set gpu_driver_installation_config.gpu_driver_version to LATEST" in found[3]


def test_a_gpu_pool_whose_class_taint_is_missing_is_refused(dev):
    def untaint(inputs):
        inputs["nodeConfig"]["taints"] = inputs["nodeConfig"]["taints"][:1]

    (found,) = violations(gpu_pool(dev, untaint), "gpu-node-pools-are-labelled-tainted-and-driven")
    assert "cloud.google.com/compute-class=<class>" in found


def test_a_cpu_pool_needs_no_gpu_label(dev):
    system = dev.one("gcp:container/nodePool:NodePool", "gke-system")
    assert violations(system, "gpu-node-pools-are-labelled-tainted-and-driven") == []


def test_a_gpu_deployment_that_does_not_target_gpu_nodes_is_refused(dev):
    def untarget(inputs):
        pod(inputs)["nodeSelector"] = {"gpu": "false"}
        del pod(inputs)["tolerations"]

    found = violations(runner(dev, untarget), "gpu-workloads-select-and-tolerate-gpu-nodes")
    assert len(found) == 2
    assert found[0].startswith("ScaledJob 'cml-runner' requests nvidia.com/gpu")
    assert 'add the nodeSelector gpu: "true"' in found[0]
    assert "add the toleration {key: nvidia.com/gpu" in found[1]


@pytest.mark.parametrize(
    ("secret", "kind"),
    [
        (fake_token("x"), "a GitHub token"),
        ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "a GitHub token"),
        ("glpat-" + "a1B2c3D4e5F6g7H8i9J0", "a GitLab token"),
        ("glrt-" + "a1B2c3D4e5F6g7H8i9J0k", "a GitLab token"),
        ("AIza" + "S" * 35, "a Google API key"),
        ("-----BEGIN PRIVATE KEY-----\nMIIE...", "a private key"),
    ],
    ids=["ghp", "github_pat", "glpat", "glrt", "google-api-key", "private-key"],
)
def test_a_literal_token_in_env_or_args_is_refused_without_being_echoed(dev, secret, kind):
    def leak(inputs):
        container = first_container(inputs)
        container["env"][1] = {"name": "REPO_TOKEN", "value": secret}
        container["args"].append(f"--token={secret}")

    found = violations(runner(dev, leak), "containers-hold-no-literal-tokens")
    assert len(found) == 2
    assert found[0] == (
        f"ScaledJob 'cml-runner': container 'runner' env REPO_TOKEN holds {kind} in clear; "
        "store it in a Secret and pass it with env.valueFrom.secretKeyRef."
    )
    assert "container 'runner' args holds" in found[1]
    assert all(secret not in message for message in found)


def test_a_service_account_key_is_refused():
    key = Resource(
        type="gcp:serviceaccount/key:Key",
        name="ci-key",
        inputs={"serviceAccountId": "deployer"},
        urn="urn:pulumi:dev::gpu-runners::gcp:serviceaccount/key:Key::ci-key",
        parent="",
        depends_on=(),
        provider="",
        ignore_changes=(),
        protect=False,
    )
    (message,) = violations(key, "no-service-account-keys")
    assert message.startswith("Key 'ci-key' creates a long-lived service account JSON key")
    assert "use Workload Identity" in message


@pytest.mark.parametrize("role", ["roles/owner", "roles/editor"])
def test_a_primitive_role_is_refused(dev, role):
    grant = crafted(
        dev,
        "gcp:projects/iAMMember:IAMMember",
        "gke-nodes-container.defaultNodeServiceAccount",
        lambda inputs: inputs.update(role=role),
    )
    (message,) = violations(grant, "no-primitive-roles")
    assert message == (
        f"IAMMember 'gke-nodes-container.defaultNodeServiceAccount' grants {role}; grant the "
        "narrow predefined roles the member needs instead."
    )


def test_a_privileged_or_escalating_container_is_refused(dev):
    def escalate(inputs):
        first_container(inputs)["securityContext"] = {"privileged": True}

    found = violations(runner(dev, escalate), "no-privileged-containers")
    assert len(found) == 2
    assert "container 'runner' is privileged; remove securityContext.privileged" in found[0]
    assert "set securityContext.allowPrivilegeEscalation: false" in found[1]


def test_a_prod_cluster_without_deletion_protection_is_refused(dev):
    cluster = dev.one("gcp:container/cluster:Cluster")
    assert cluster.inputs["deletionProtection"] is False
    assert violations(cluster, "prod-clusters-have-deletion-protection") == []
    prod = crafted(dev, "gcp:container/cluster:Cluster", "gke", lambda _: None, "prod-eu")
    (message,) = violations(prod, "prod-clusters-have-deletion-protection")
    assert message == (
        "Cluster 'gke' in stack 'prod-eu' has deletion protection off; set "
        "cluster.deletionProtection: true (the default)."
    )


def test_advisories_for_on_demand_and_always_on_gpu_pools(dev):
    def costly(inputs):
        inputs["nodeConfig"]["spot"] = False
        inputs["autoscaling"]["totalMinNodeCount"] = 1

    pool = gpu_pool(dev, costly)
    (spot,) = violations(pool, "gpu-pools-use-spot")
    assert "runs on-demand VMs; spot: true (gpuPool, or the class in gpuPools)" in spot
    (zero,) = violations(pool, "gpu-pools-scale-to-zero")
    assert "keeps 1 GPU node(s) even when idle; set minNodes: 0 (gpuPool" in zero


def test_a_spot_classes_on_demand_fallback_is_no_spot_advisory(dev):
    fallback = dev.one("gcp:container/nodePool:NodePool", "gke-gpu-on-demand")
    assert fallback.inputs["nodeConfig"]["spot"] is False
    assert violations(fallback, "gpu-pools-use-spot") == []

    def unlabel(inputs):
        del inputs["nodeConfig"]["labels"]["gpu-runners/on-demand-fallback"]

    pool = crafted(dev, "gcp:container/nodePool:NodePool", "gke-gpu-on-demand", unlabel)
    assert len(violations(pool, "gpu-pools-use-spot")) == 1


def test_the_pack_is_a_python_policy_pack_with_pinned_requirements():
    manifest = yaml.safe_load((REPO / "policy/PulumiPolicy.yaml").read_text())
    assert manifest["runtime"]["name"] == "python"
    requirements = (REPO / "policy/requirements.txt").read_text()
    assert "pulumi-policy>=1.21,<2" in requirements
    main = (REPO / "policy/__main__.py").read_text()
    assert "PolicyPack(" in main and "from rules import POLICIES" in main


def test_rules_look_inside_a_deployment_too(dev):
    """Other workloads in the stack (or a user's own) are checked like the runner's pods."""

    def as_leaky_deployment(inputs):
        template = inputs["spec"]["jobTargetRef"]["template"]
        template["spec"]["containers"][0]["args"].append("--token=" + fake_token("x"))
        del template["spec"]["tolerations"]
        inputs["spec"] = {"template": template}

    scaled_job = crafted(
        dev, "kubernetes:keda.sh/v1alpha1:ScaledJob", "cml-runner", as_leaky_deployment
    )
    deployment = dataclasses.replace(scaled_job, type="kubernetes:apps/v1:Deployment")
    (leak,) = violations(deployment, "containers-hold-no-literal-tokens")
    assert leak.startswith("Deployment 'cml-runner': container 'runner' args holds a GitHub token")
    (untargeted,) = violations(deployment, "gpu-workloads-select-and-tolerate-gpu-nodes")
    assert "does not tolerate the GPU taint" in untargeted


def test_rules_look_inside_an_arc_runner_scale_set():
    program = run_program(BOTH_ENGINES)

    def leak_untarget_and_escalate(inputs):
        runner_pod = inputs["values"]["template"]["spec"]
        runner_pod["containers"][0]["env"] = [{"name": "GH", "value": fake_token("x")}]
        runner_pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
        del runner_pod["tolerations"]

    scale_set = crafted(program, RELEASE, "gpu-arc", leak_untarget_and_escalate)
    (leak,) = violations(scale_set, "containers-hold-no-literal-tokens")
    assert leak.startswith("Release 'gpu-arc': container 'runner' env GH holds a GitHub token")
    (untargeted,) = violations(scale_set, "gpu-workloads-select-and-tolerate-gpu-nodes")
    assert "does not tolerate the GPU taint" in untargeted
    (escalating,) = violations(scale_set, "no-privileged-containers")
    assert "may escalate privileges" in escalating


def test_a_token_in_helm_values_is_refused_without_being_echoed():
    program = run_program(BOTH_ENGINES)

    def inline_the_credential(inputs):
        inputs["values"]["githubConfigSecret"] = {"github_token": fake_token("gpu-arc")}

    scale_set = crafted(program, RELEASE, "gpu-arc", inline_the_credential)
    (found,) = violations(scale_set, "helm-values-hold-no-literal-tokens")
    assert found.startswith(
        "Release 'gpu-arc': values.githubConfigSecret.github_token holds a GitHub token in clear"
    )
    assert fake_token("gpu-arc") not in found
    untouched = program.one(RELEASE, "gpu-arc")
    assert violations(untouched, "helm-values-hold-no-literal-tokens") == []


def test_rules_read_the_job_pods_of_a_gitlab_runner():
    program = run_program(GITLAB, secrets={TOKENS: {"gl-gpu": "glrt-" + "r" * 24}})

    def untarget_and_privilege(inputs):
        config = inputs["values"]["runners"]["config"]
        config = config.replace("[runners.kubernetes.node_tolerations]", "[unused]")
        inputs["values"]["runners"]["config"] = config.replace(
            "privileged = false", "privileged = true"
        )

    runner = crafted(program, RELEASE, "gl-gpu", untarget_and_privilege)
    (untargeted,) = violations(runner, "gpu-workloads-select-and-tolerate-gpu-nodes")
    assert untargeted.startswith("Release 'gl-gpu' requests nvidia.com/gpu")
    assert "does not tolerate the GPU taint" in untargeted
    # The executor-wide flag makes the build, helper and service containers privileged.
    privileged = violations(runner, "no-privileged-containers")
    assert [m.split(":")[1].split("'")[1] for m in privileged] == ["build", "helper", "svc-0"]
    assert all(m.endswith("add only the capabilities it needs.") for m in privileged)
    assert violations(program.one(RELEASE, "gl-gpu"), "no-privileged-containers") == []


def test_a_gitlab_toleration_by_key_alone_tolerates_any_value():
    program = run_program(GITLAB, secrets={TOKENS: {"gl-gpu": "glrt-" + "r" * 24}})

    def tolerate_key_only(inputs):
        config = inputs["values"]["runners"]["config"]
        inputs["values"]["runners"]["config"] = config.replace(
            '"nvidia.com/gpu=present"', '"nvidia.com/gpu"'
        )

    runner = crafted(program, RELEASE, "gl-gpu", tolerate_key_only)
    assert violations(runner, "gpu-workloads-select-and-tolerate-gpu-nodes") == []


def test_the_production_example_passes_every_mandatory_rule_and_is_warned_off_spot():
    program = run_program(stack="prod")
    for policy in POLICIES:
        found = plan.policy_violations(program.resources, policy)
        if policy.name == "gpu-pools-use-spot":
            # Advisory: the production example chose on-demand GPUs on purpose.
            assert len(found) == 1
        else:
            assert found == [], policy.name


GITLAB_TOKEN = {TOKENS: {"gl-gpu": "glrt-" + "r" * 24}}


def _cml_job_pod(inputs: dict) -> dict:
    return pod(inputs)


def _arc_job_pod(inputs: dict) -> dict:
    return inputs["values"]["template"]["spec"]


def _gitlab_config_change(change):
    """A change to the TOML text of a GitLab runner's config.toml."""

    def apply(inputs: dict) -> None:
        config = tomllib.loads(inputs["values"]["runners"]["config"])
        change(config["runners"][0]["kubernetes"])
        inputs["values"]["runners"]["config"] = tomli_w.dumps(config)

    return apply


def _engine(engine: str) -> tuple:
    """An engine's job pod carrier: (program, type, name)."""
    if engine == "cml":
        return run_program(), "kubernetes:keda.sh/v1alpha1:ScaledJob", "cml-runner"
    if engine == "arc":
        return run_program(BOTH_ENGINES), RELEASE, "gpu-arc"
    return run_program(GITLAB, secrets=GITLAB_TOKEN), RELEASE, "gl-gpu"


def _mount_token(engine: str):
    if engine == "cml":
        return lambda inputs: _cml_job_pod(inputs).pop("automountServiceAccountToken")
    if engine == "arc":
        return lambda inputs: _arc_job_pod(inputs).update(automountServiceAccountToken=True)
    return _gitlab_config_change(lambda k: k.pop("automount_service_account_token"))


def _drop_seccomp(engine: str):
    if engine == "cml":
        return lambda inputs: _cml_job_pod(inputs).pop("securityContext")
    if engine == "arc":
        return lambda inputs: _arc_job_pod(inputs)["securityContext"].pop("seccompProfile")

    def unpatch(kubernetes: dict) -> None:
        for patch in kubernetes["pod_spec"]:
            body = json.loads(patch["patch"])
            body.pop("securityContext")
            patch["patch"] = json.dumps(body)

    return _gitlab_config_change(unpatch)


def _move_to_system_pool(engine: str):
    def on_system_pool(node_selector: dict) -> None:
        node_selector.clear()
        node_selector["cloud.google.com/gke-nodepool"] = "system"

    if engine == "cml":
        return lambda inputs: on_system_pool(_cml_job_pod(inputs)["nodeSelector"])
    if engine == "arc":
        return lambda inputs: on_system_pool(_arc_job_pod(inputs)["nodeSelector"])
    return _gitlab_config_change(lambda k: on_system_pool(k["node_selector"]))


@pytest.mark.parametrize("engine", ["cml", "arc", "gitlab-runner"])
def test_job_pods_with_a_token_without_seccomp_or_beside_the_controllers_are_refused(engine):
    program, type_, name = _engine(engine)
    untouched = program.one(type_, name)
    for rule in (TOKEN_RULE, SECCOMP_RULE):
        assert violations(untouched, rule) == []
    placement = BY_NAME["runner-pods-land-on-runner-pools"]
    assert plan.policy_violations(program.resources, placement) == []

    (token,) = violations(crafted(program, type_, name, _mount_token(engine)), TOKEN_RULE)
    assert "runs CI jobs with a Kubernetes API token mounted" in token
    (seccomp,) = violations(crafted(program, type_, name, _drop_seccomp(engine)), SECCOMP_RULE)
    assert "runs without a seccomp profile" in seccomp
    moved = crafted(program, type_, name, _move_to_system_pool(engine))
    resources = [moved if r.urn == moved.urn else r for r in program.resources]
    ((resource, placed),) = plan.policy_violations(resources, placement)
    assert resource.name == name
    assert "selects neither the GPU pool nor the CPU runner pool" in placed


def test_the_gitlab_manager_keeps_its_token_but_not_without_seccomp():
    program = run_program(GITLAB, secrets=GITLAB_TOKEN)

    def unfilter_the_manager(inputs: dict) -> None:
        inputs["values"]["podSecurityContext"].pop("seccompProfile")

    manager = crafted(program, RELEASE, "gl-gpu", unfilter_the_manager)
    (found,) = violations(manager, SECCOMP_RULE)
    assert found.startswith("Release 'gl-gpu': container 'manager' runs without a seccomp")


@pytest.mark.parametrize("engine", ["cml", "arc", "gitlab-runner"])
def test_a_runner_namespace_without_its_isolation_is_refused(engine):
    program, type_, name = _engine(engine)
    policy = BY_NAME["runner-namespaces-are-isolated"]
    assert plan.policy_violations(program.resources, policy) == []
    opened = [r for r in program.resources if r.name != f"{name}-isolation"]
    ((resource, message),) = plan.policy_violations(opened, policy)
    assert (resource.type, resource.name) == (type_, name)
    assert f"runs CI jobs in namespace {name!r}, which no NetworkPolicy closes" in message


def test_tokens_in_lists_and_secret_values_of_helm_values_are_refused():
    program = run_program(BOTH_ENGINES)

    def hide_in_a_list(inputs):
        # The analyzer passes a list as a read-only sequence (pulumi-policy's proxies).
        inputs["values"]["template"]["spec"]["imagePullSecrets"] = [{"name": fake_token("gpu-arc")}]

    (found,) = violations(crafted(program, RELEASE, "gpu-arc", hide_in_a_list), TOKENS_IN_VALUES)
    assert "values.template.spec.imagePullSecrets[0].name holds a GitHub token" in found

    def mark_it_secret(inputs):
        # Marked secret in the program, the value is still in clear in the release's history.
        secret = {rpc._special_sig_key: rpc._special_secret_sig, "value": fake_token("gpu-arc")}
        inputs["values"]["githubConfigUrl"] = secret

    (found,) = violations(crafted(program, RELEASE, "gpu-arc", mark_it_secret), TOKENS_IN_VALUES)
    assert "values.githubConfigUrl holds a GitHub token" in found


def test_the_gitlab_job_pod_model_reads_the_build_containers_own_security_context():
    program = run_program(GITLAB, secrets=GITLAB_TOKEN)

    def privilege_the_build_container(kubernetes: dict) -> None:
        kubernetes["build_container_security_context"] = {"privileged": True}

    def privilege_through_a_patch(kubernetes: dict) -> None:
        (patch,) = kubernetes["pod_spec"]
        body = json.loads(patch["patch"])
        body["containers"][0]["securityContext"] = {"allowPrivilegeEscalation": True}
        patch["patch"] = json.dumps(body)

    privileged = crafted(
        program, RELEASE, "gl-gpu", _gitlab_config_change(privilege_the_build_container)
    )
    (found,) = violations(privileged, "no-privileged-containers")
    assert "container 'build' is privileged" in found

    def privilege_all_but_the_build_container(kubernetes: dict) -> None:
        kubernetes["privileged"] = True
        kubernetes["build_container_security_context"] = {"privileged": False}

    helpers = crafted(
        program, RELEASE, "gl-gpu", _gitlab_config_change(privilege_all_but_the_build_container)
    )
    found = violations(helpers, "no-privileged-containers")
    assert [m.split("'")[3] for m in found] == ["helper", "svc-0"]
    patched = crafted(program, RELEASE, "gl-gpu", _gitlab_config_change(privilege_through_a_patch))
    (found,) = violations(patched, "no-privileged-containers")
    assert "container 'build' may escalate privileges" in found


@pytest.mark.parametrize("shape", SHAPES)
def test_on_a_first_preview_every_rule_runs_on_known_values_and_passes(shape):
    # The cluster does not exist yet: every Kubernetes output and every value the cloud
    # computes is unknown, as on a real first `pulumi preview`. A rule that read one would
    # only warn ("can't run policy … during preview"); here it would be a violation.
    program = run_program(SHAPES[shape], first_preview=True)
    unknown = [r for r in program.resources if rpc.UNKNOWN in json.dumps(r.inputs)]
    assert unknown, "the first preview left every value known: the simulation is not running"
    advisories = set()
    for policy in POLICIES:
        found = plan.policy_violations(program.resources, policy)
        assert not any(plan.CANNOT_RUN in message for _, message in found), policy.name
        if policy.enforcement_level == EnforcementLevel.ADVISORY:
            advisories |= {(policy.name, resource.name) for resource, _ in found}
        else:
            assert found == [], policy.name
    assert advisories == EXPECTED_ADVISORIES.get(shape, set())


def test_a_mandatory_violation_in_a_helm_release_is_caught_on_a_first_preview():
    program = run_program(GITLAB, secrets=GITLAB_TOKEN, first_preview=True)

    def privilege(kubernetes: dict) -> None:
        kubernetes["privileged"] = True

    release = crafted(program, RELEASE, "gl-gpu", _gitlab_config_change(privilege))
    found = violations(release, "no-privileged-containers")
    assert found[0].startswith("Release 'gl-gpu': container 'build' is privileged")
    assert not any(plan.CANNOT_RUN in message for message in found)


def test_a_rule_that_reads_a_value_unknown_on_a_first_preview_fails_instead_of_warning():
    program = run_program(GITLAB, secrets=GITLAB_TOKEN, first_preview=True)

    def from_the_cloud(inputs: dict) -> None:
        inputs["values"]["runners"]["config"] = rpc.UNKNOWN

    release = crafted(program, RELEASE, "gl-gpu", from_the_cloud)
    (found,) = violations(release, "no-privileged-containers")
    assert found.startswith(f"{plan.CANNOT_RUN}: string value at .values.runners.config")
    assert "would only warn on a first preview" in found


def test_a_gpu_runner_placed_by_zone_passes_the_placement_rules():
    # The settings accept a zone of the class; the program adds the pool's gpu label and the
    # class to it, so the rules (gpu: "true", a class of the stack) and the settings agree.
    by_zone = {"topology.kubernetes.io/zone": "europe-west6-b"}
    program = run_program(
        {"gpu-runners:runners": [{"name": "cml-runner", "nodeSelector": by_zone}]}
    )
    job = program.one("kubernetes:keda.sh/v1alpha1:ScaledJob", "cml-runner")
    assert pod(job.inputs)["nodeSelector"] == {
        "topology.kubernetes.io/zone": "europe-west6-b",
        "gpu": "true",
        "cloud.google.com/compute-class": "gpu",
    }
    assert violations(job, "gpu-workloads-select-and-tolerate-gpu-nodes") == []
    assert plan.policy_violations(program.resources, BY_NAME[GPU_CLASS_RULE]) == []


GPU_CLASS_RULE = "gpu-runner-pods-select-a-gpu-class"


@pytest.mark.parametrize("engine", ["cml", "arc", "gitlab-runner"])
def test_a_gpu_runner_outside_every_class_is_refused_on_every_engine(engine):
    program = run_program(SHARED_GPUS)
    type_, name = {
        "cml": ("kubernetes:keda.sh/v1alpha1:ScaledJob", "gpu-tests"),
        "arc": (RELEASE, "arc-shared"),
        "gitlab-runner": (RELEASE, "gl-shared"),
    }[engine]
    rule = BY_NAME[GPU_CLASS_RULE]
    assert plan.policy_violations(program.resources, rule) == []

    def elsewhere(inputs):
        text = json.dumps(inputs).replace('l4-shared\\"', 'l4\\"').replace('"l4-shared"', '"l4"')
        inputs.clear()
        inputs.update(json.loads(text))

    changed = crafted(program, type_, name, elsewhere)
    resources = [changed if r.urn == changed.urn else r for r in program.resources]
    ((resource, message),) = plan.policy_violations(resources, rule)
    assert resource.name == name
    assert "selects no GPU class of the stack" in message


def test_a_pod_on_shared_gpus_that_takes_two_is_refused():
    program = run_program(SHARED_GPUS)

    def two_gpus(inputs):
        for container in pod(inputs)["containers"]:
            container["resources"]["limits"]["nvidia.com/gpu"] = "2"

    job = crafted(program, "kubernetes:keda.sh/v1alpha1:ScaledJob", "gpu-tests", two_gpus)
    resources = [job if r.urn == job.urn else r for r in program.resources]
    ((_, message),) = plan.policy_violations(resources, BY_NAME[GPU_CLASS_RULE])
    assert "time-shared GPUs (class 'l4-shared')" in message


def test_a_compute_class_naming_a_pool_the_stack_does_not_bind_is_refused(dev):
    def elsewhere(inputs):
        inputs["spec"]["priorities"].append({"nodepools": ["system"]})

    cls = crafted(dev, "kubernetes:cloud.google.com/v1:ComputeClass", "gke-gpu-class", elsewhere)
    resources = [cls if r.urn == cls.urn else r for r in dev.resources]
    ((_, message),) = plan.policy_violations(resources, BY_NAME[GPU_CLASS_RULE])
    assert "names node pool 'system', which is no GPU pool of the stack bound to it" in message


def test_the_token_digest_the_policy_pack_leaves_unread_is_the_managers_annotation():
    from rules import TOKEN_DIGEST_ANNOTATION

    from infra.engines.gitlab_runner import TOKEN_VERSION_ANNOTATION

    assert TOKEN_DIGEST_ANNOTATION == TOKEN_VERSION_ANNOTATION
    # Anywhere else, a token in clear is still found.
    program = run_program(GITLAB, secrets=GITLAB_TOKEN)

    def elsewhere(inputs):
        inputs["values"]["podAnnotations"]["note"] = fake_token("gl-gpu")

    (found,) = violations(crafted(program, RELEASE, "gl-gpu", elsewhere), TOKENS_IN_VALUES)
    assert "values.podAnnotations.note holds a GitHub token" in found


@pytest.mark.parametrize("first_preview", [False, True])
def test_the_first_preview_simulation_leaves_every_kubernetes_output_unknown(first_preview):
    import pulumi_kubernetes as k8s

    from infra.tools.mock_engine import run_mocked

    def build():
        namespace = k8s.core.v1.Namespace("ns", metadata={"name": "ns"})
        k8s.core.v1.ConfigMap("cm", metadata={"name": "cm", "namespace": namespace.metadata.name})

    run = run_mocked(build, {}, (), "components", first_preview=first_preview)
    assert run.error is None
    (config_map,) = [r for r in run.registered if r.name == "cm"]
    namespace = config_map.inputs["metadata"]["namespace"]
    assert namespace == (rpc.UNKNOWN if first_preview else "ns")
