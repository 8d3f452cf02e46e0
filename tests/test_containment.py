"""What a pull request's CI job can reach, on every engine: no API token, a seccomp profile, a
runner pool (never the system pool), a namespace that lets it out only to DNS, the metadata
server and the internet, and, on a trusted runner, jobs of protected refs only."""

import subprocess
import tomllib

import pytest

from infra.engines.runner_base import PROTECTED_REFS_ONLY
from tests.harness import (
    RUNNERS,
    TOKENS,
    fake_token,
    reveal,
    run_program,
    run_rejected_program,
)
from tests.stacks import SHAPES

SCALED_JOB = "kubernetes:keda.sh/v1alpha1:ScaledJob"
RELEASE = "kubernetes:helm.sh/v3:Release"
SERVICE_ACCOUNT = "kubernetes:core/v1:ServiceAccount"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
NAMESPACE = "kubernetes:core/v1:Namespace"
NODE_POOL = "gcp:container/nodePool:NodePool"
CLUSTER = "gcp:container/cluster:Cluster"
GITLAB_TOKEN = "glrt-" + "r" * 24
# One runner of each engine, one of them a CPU runner, and a trusted one on each forge.
EVERY_ENGINE = {
    RUNNERS: [
        {"name": "cml-gpu", "labels": ["cml-gpu"]},
        {"name": "cml-main", "labels": ["cml-main"], "trust": "trusted"},
        {"name": "arc-cpu", "engine": "arc", "labels": ["arc-cpu"], "gpus": 0, "cpu": "500m"},
        {"name": "arc-main", "engine": "arc", "labels": ["arc-main"], "trust": "trusted"},
        {"name": "gl-gpu", "platform": "gitlab", "labels": ["gl-gpu"]},
        {"name": "gl-cpu", "platform": "gitlab", "labels": ["gl-cpu"], "gpus": 0},
    ]
}
GITLAB_SECRETS = {
    TOKENS: {
        **{name: fake_token(name) for name in ("cml-gpu", "cml-main", "arc-cpu", "arc-main")},
        "gl-gpu": GITLAB_TOKEN,
        "gl-cpu": GITLAB_TOKEN.replace("r", "s"),
    }
}


GITLAB_SHAPE_SECRETS = {"gitlab": {TOKENS: {"gl-gpu": GITLAB_TOKEN}}}


@pytest.fixture(scope="module")
def every_engine():
    return run_program(EVERY_ENGINE, secrets=GITLAB_SECRETS)


def job_pods(program) -> dict[str, dict]:
    """Each runner's job pod spec, as its engine would create it (GitLab's from config.toml)."""
    pods = {}
    for job in program.of_type(SCALED_JOB):
        pods[job.name] = reveal(job.inputs["spec"]["jobTargetRef"]["template"]["spec"])
    for release in program.of_type(RELEASE):
        values = reveal(release.inputs["values"])
        if "template" in values:
            pods[release.name] = values["template"]["spec"]
        elif "runners" in values:
            (runner,) = tomllib.loads(values["runners"]["config"])["runners"]
            pods[release.name] = runner["kubernetes"]
    return pods


def test_no_job_pod_on_any_engine_mounts_an_api_token(every_engine):
    pods = job_pods(every_engine)
    assert len(pods) == 6
    for name, pod in pods.items():
        mounted = pod.get(
            "automountServiceAccountToken", pod.get("automount_service_account_token")
        )
        assert mounted is False, name
    for account in every_engine.of_type(SERVICE_ACCOUNT):
        assert account.inputs["automountServiceAccountToken"] is False, account.name


def test_gitlab_job_pods_get_runtime_default_seccomp_through_a_locked_feature_flag(every_engine):
    for name in ("gl-gpu", "gl-cpu"):
        values = reveal(every_engine.one(RELEASE, name).inputs["values"])
        (runner,) = tomllib.loads(values["runners"]["config"])["runners"]
        (patch,) = runner["kubernetes"]["pod_spec"]
        assert '"seccompProfile": {"type": "RuntimeDefault"}' in patch["patch"]
        # In [runners.feature_flags], which a job's variables cannot turn off.
        assert runner["feature_flags"]["FF_USE_ADVANCED_POD_SPEC_CONFIGURATION"] is True


def shape_program(shape: str):
    if shape == "every-engine":
        return run_program(EVERY_ENGINE, secrets=GITLAB_SECRETS)
    return run_program(SHAPES[shape], secrets=GITLAB_SHAPE_SECRETS.get(shape))


ALL_SHAPES = [*SHAPES, "every-engine"]


@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_no_runner_pod_can_land_on_the_system_pool(shape):
    program = shape_program(shape)
    system = program.one(NODE_POOL, "gke-system").inputs["nodeConfig"]
    assert system["labels"].get("gpu") == "false"
    assert "gpu-runners/cpu-jobs" not in system["labels"]
    assert "taints" not in system
    for name, pod in job_pods(program).items():
        selector = pod.get("nodeSelector", pod.get("node_selector"))
        # The GPU pool's label, or the CPU runner pool's: the system nodes carry neither.
        assert selector.get("gpu") == "true" or selector.get("gpu-runners/cpu-jobs") == "true", name


@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_in_every_shape_job_pods_mount_no_token_and_every_runner_namespace_is_isolated(shape):
    program = shape_program(shape)
    pods = job_pods(program)
    assert pods
    for name, pod in pods.items():
        mounted = pod.get(
            "automountServiceAccountToken", pod.get("automount_service_account_token")
        )
        assert mounted is False, name
    isolated = {
        p.inputs["metadata"]["namespace"]
        for p in program.of_type(NETWORK_POLICY)
        if p.inputs["spec"]["podSelector"] == {}
        and p.inputs["spec"]["policyTypes"] == ["Ingress", "Egress"]
    }
    assert set(pods) <= isolated


def test_cpu_runners_get_a_tainted_pool_of_their_own_that_scales_to_zero(every_engine):
    pool = every_engine.one(NODE_POOL, "gke-cpu").inputs
    assert pool["name"] == "cpu"
    assert pool["autoscaling"]["totalMinNodeCount"] == 0
    assert pool["nodeConfig"]["labels"] == {"gpu": "false", "gpu-runners/cpu-jobs": "true"}
    assert pool["nodeConfig"]["taints"] == [
        {"key": "gpu-runners/cpu-jobs", "value": "true", "effect": "NO_SCHEDULE"}
    ]
    # Only CPU runners tolerate it.
    pods = job_pods(every_engine)
    assert pods["arc-cpu"]["tolerations"] == [
        {"key": "gpu-runners/cpu-jobs", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pods["gl-cpu"]["node_tolerations"] == {"gpu-runners/cpu-jobs": "NoSchedule"}


def test_a_stack_without_cpu_runners_has_no_cpu_pool():
    assert sorted(p.name for p in run_program().of_type(NODE_POOL)) == [
        "gke-gpu",
        "gke-gpu-on-demand",
        "gke-system",
    ]


def allowed_destinations(policy: dict) -> list[tuple[str, list[int]]]:
    """Each (peer, ports) a NetworkPolicy's egress allows, a peer as text."""
    allowed = []
    for rule in policy["spec"]["egress"]:
        ports = [p["port"] for p in rule.get("ports", [])]
        for peer in rule.get("to", [{"ipBlock": {"cidr": "0.0.0.0/0"}}]):
            allowed.append((str(peer), ports))
    return allowed


# Each link-local or cluster address a job may reach, and on which ports only.
NARROW_DESTINATIONS = {
    "169.254.20.10/32": {53},  # NodeLocal DNSCache
    "169.254.169.254/32": {53, 80},  # Cloud DNS, and the metadata server on Dataplane V2
    "169.254.169.252/32": {988},  # the metadata server on the legacy dataplane
    "34.118.224.0/20": {53},  # the cluster's Services (kube-dns untranslated), from the mocks
}
PRIVATE = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"]


def test_every_runner_namespace_denies_traffic_in_and_lets_jobs_out_to_the_internet_only(
    every_engine,
):
    isolation = {
        p.inputs["metadata"]["namespace"]: p.inputs
        for p in every_engine.of_type(NETWORK_POLICY)
        if p.name.endswith("-isolation")
    }
    assert set(isolation) == {r["name"] for r in EVERY_ENGINE[RUNNERS]}
    for namespace, policy in isolation.items():
        spec = policy["spec"]
        assert spec["podSelector"] == {}, namespace
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert "ingress" not in spec
        ports: dict[str, set[int]] = {}
        for rule in spec["egress"]:
            for peer in rule["to"]:
                if "ipBlock" not in peer:
                    # Only kube-dns's pods, and only on port 53.
                    assert peer["namespaceSelector"] == {
                        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                    }
                    assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
                    assert {p["port"] for p in rule["ports"]} == {53}
                    continue
                cidr = peer["ipBlock"]["cidr"]
                ports.setdefault(cidr, set()).update(p["port"] for p in rule["ports"])
                if cidr == "0.0.0.0/0":
                    # The internet: no private or link-local address, HTTPS and HTTP only.
                    assert sorted(peer["ipBlock"]["except"]) == sorted(PRIVATE)
        assert ports == NARROW_DESTINATIONS | {"0.0.0.0/0": {80, 443}}, namespace


def test_the_gitlab_manager_alone_reaches_private_addresses_on_https(every_engine):
    egress = every_engine.one(NETWORK_POLICY, "gl-gpu-manager-egress")
    manager = egress.inputs["spec"]
    assert manager["podSelector"] == {
        "matchLabels": {"app": "gl-gpu"},
        "matchExpressions": [{"key": "job.runner.gitlab.com/pod", "operator": "DoesNotExist"}],
    }
    assert manager["egress"] == [{"ports": [{"protocol": "TCP", "port": 443}]}]
    # The chart's manager pods carry app: <fullnameOverride>.
    values = reveal(every_engine.one(RELEASE, "gl-gpu").inputs["values"])
    assert values["fullnameOverride"] == "gl-gpu"
    others = [p.name for p in every_engine.of_type(NETWORK_POLICY) if "manager" in p.name]
    assert sorted(others) == ["gl-cpu-manager-egress", "gl-gpu-manager-egress"]
    # The manager's exception exists before the namespace is closed, so it never loses GitLab.
    isolation = every_engine.one(NETWORK_POLICY, "gl-gpu-isolation")
    assert every_engine.waits_for(isolation, egress)


def test_a_new_cluster_enforces_network_policy_with_dataplane_v2():
    cluster = run_program().one(CLUSTER).inputs
    assert cluster["datapathProvider"] == "ADVANCED_DATAPATH"
    assert "networkPolicy" not in cluster


def test_a_cluster_kept_on_the_legacy_dataplane_enforces_it_with_calico():
    cluster = run_program({"gpu-runners:cluster": {"dataplaneV2": False}}).one(CLUSTER).inputs
    assert "datapathProvider" not in cluster
    assert cluster["networkPolicy"] == {"enabled": True, "provider": "CALICO"}
    assert cluster["addonsConfig"] == {"networkPolicyConfig": {"disabled": False}}


def test_the_kubelet_read_only_port_is_closed_on_every_pool(every_engine):
    cluster = every_engine.one(CLUSTER).inputs
    closed = {"insecureKubeletReadonlyPortEnabled": "FALSE"}
    assert cluster["nodePoolDefaults"] == {"nodeConfigDefaults": closed}
    pools = every_engine.of_type(NODE_POOL)
    assert {p.name for p in pools} == {"gke-system", "gke-gpu", "gke-gpu-on-demand", "gke-cpu"}
    for pool in pools:
        assert pool.inputs["nodeConfig"]["kubeletConfig"] == closed, pool.name


def test_authorized_networks_limit_who_reaches_the_control_plane():
    assert "masterAuthorizedNetworksConfig" not in run_program().one(CLUSTER).inputs
    limited = run_program({"gpu-runners:cluster": {"authorizedNetworks": ["203.0.113.7/32"]}})
    assert limited.one(CLUSTER).inputs["masterAuthorizedNetworksConfig"] == {
        "cidrBlocks": [{"cidrBlock": "203.0.113.7/32", "displayName": "203.0.113.7/32"}],
        "gcpPublicCidrsAccessEnabled": False,
    }


@pytest.mark.parametrize("cidr", ["203.0.113.7/24", "0.0.0.0/0", "2001:db8::/32", "everyone"])
def test_a_bad_authorized_network_is_refused(cidr):
    error, registered = run_rejected_program(
        {"gpu-runners:cluster": {"authorizedNetworks": [cidr]}}
    )
    assert f"gpu-runners:cluster.authorizedNetworks[0] = {cidr!r}" in str(error)
    assert "allowed: the addresses that may reach the control plane" in str(error)
    assert registered == []


def test_trusted_github_runners_run_the_protected_refs_hook_before_every_job(every_engine):
    pods = job_pods(every_engine)
    for name in ("cml-main", "arc-main"):
        (container,) = pods[name]["containers"]
        hook = {"name": "ACTIONS_RUNNER_HOOK_JOB_STARTED"}
        assert (
            hook | {"value": "/opt/gpu-runners/hooks/protected-refs-only.sh"} in (container["env"])
        )
        assert {"name": "job-hooks", "mountPath": "/opt/gpu-runners/hooks", "readOnly": True} in (
            container["volumeMounts"]
        )
        assert {
            "name": "job-hooks",
            "configMap": {"name": f"{name}-job-hooks", "defaultMode": 0o555},
        } in pods[name]["volumes"]
        config_map = every_engine.one("kubernetes:core/v1:ConfigMap", f"{name}-job-hooks")
        assert config_map.inputs["data"] == {"protected-refs-only.sh": PROTECTED_REFS_ONLY}
    for name in ("cml-gpu", "arc-cpu"):
        (container,) = pods[name]["containers"]
        # The package index's keyring only.
        assert [m["name"] for m in container["volumeMounts"]] == ["keyring"], name
        assert [v["name"] for v in pods[name]["volumes"]] == ["keyring"], name


@pytest.mark.parametrize(
    ("event", "protected", "runs"),
    [
        ("push", "true", True),
        ("schedule", "true", True),
        ("workflow_dispatch", "true", True),
        ("push", "false", False),
        ("pull_request", "true", False),
        ("pull_request_target", "true", False),
        ("workflow_run", "true", False),
    ],
)
def test_the_hook_lets_only_jobs_of_protected_refs_run(tmp_path, event, protected, runs):
    script = tmp_path / "protected-refs-only.sh"
    script.write_text(PROTECTED_REFS_ONLY)
    env = {"GITHUB_EVENT_NAME": event, "GITHUB_REF_PROTECTED": protected, "GITHUB_REF": "x"}
    # As the runner runs it: bash -e <file> (GitHub docs, "Running scripts before or after a job").
    result = subprocess.run(["bash", "-e", str(script)], env=env, capture_output=True, text=True)
    assert (result.returncode == 0) is runs
    if not runs:
        assert result.stdout.startswith("::error::This runner is trusted")


def test_a_trusted_gitlab_runner_made_by_the_stack_is_protected():
    trusted = {RUNNERS: [{"name": "gl-gpu", "platform": "gitlab", "trust": "trusted"}]}
    program = run_program(trusted, secrets={TOKENS: {"gl-gpu": "glpat-" + "a" * 20}})
    runner = program.one("gitlab:index/userRunner:UserRunner", "gl-gpu").inputs
    assert runner["accessLevel"] == "ref_protected"


def test_a_trusted_cml_runner_on_gitlab_is_refused():
    runner = {"name": "cml-gl", "platform": "gitlab", "engine": "cml", "trust": "trusted"}
    error, registered = run_rejected_program({RUNNERS: [runner]})
    assert "gpu-runners:runners[0].trust = 'trusted': CML registers its GitLab runner" in str(error)
    assert registered == []


def test_a_trusted_gitlab_runner_from_a_runner_token_is_refused_without_showing_it():
    trusted = {RUNNERS: [{"name": "gl-gpu", "platform": "gitlab", "trust": "trusted"}]}
    error, registered = run_rejected_program(trusted, secrets={TOKENS: {"gl-gpu": GITLAB_TOKEN}})
    message = str(error)
    assert "gpu-runners:runners[0].trust = 'trusted': runnerTokens.gl-gpu is a runner" in message
    assert "which it registers protected, or trust: untrusted" in message
    assert GITLAB_TOKEN not in message
    assert registered == []


def test_a_sandboxed_cpu_pool_runs_every_engines_cpu_runners_in_gvisor():
    program = run_program(
        {**EVERY_ENGINE, "gpu-runners:cpuPool": {"sandbox": True}}, secrets=GITLAB_SECRETS
    )
    pool = program.one(NODE_POOL, "gke-cpu").inputs["nodeConfig"]
    assert pool["sandboxConfig"] == {"type": "GVISOR"}
    assert pool["imageType"] == "COS_CONTAINERD"
    pods = job_pods(program)
    assert pods["arc-cpu"]["runtimeClassName"] == "gvisor"
    assert pods["gl-cpu"]["runtime_class_name"] == "gvisor"
    # GPU runners are not sandboxed: GKE offers GPUs in GKE Sandbox in Preview only.
    assert "sandboxConfig" not in program.one(NODE_POOL, "gke-gpu").inputs["nodeConfig"]
    for name in ("cml-gpu", "cml-main", "arc-main", "gl-gpu"):
        assert "runtimeClassName" not in pods[name] and "runtime_class_name" not in pods[name]


def test_cpu_pools_are_not_sandboxed_unless_asked(every_engine):
    assert "sandboxConfig" not in every_engine.one(NODE_POOL, "gke-cpu").inputs["nodeConfig"]
    assert "runtimeClassName" not in job_pods(every_engine)["arc-cpu"]
