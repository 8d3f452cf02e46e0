"""Warm hours (issue 28): placeholders that keep a GPU class's nodes ready on a schedule, which
runner pods preempt; what they cost; and the model of what a job waits for."""

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import kubernetes_validate
import pytest
import yaml

from infra import job_start
from infra.engines import warm_capacity
from infra.tools import estimate
from tests import test_estimate
from tests.harness import (
    REPO,
    RUNNERS,
    TOKENS,
    Program,
    reveal,
    run_program,
    run_rejected_program,
)
from tests.stacks import GITLAB, WARM_HOURS
from tests.test_containment import job_pods
from tests.test_estimate import by_label
from tests.test_kubernetes_schema import GKE_MINORS
from tests.test_package_cache import EVERY_ENGINE, RUNNER_TOKENS
from tests.test_scaling import crd_validator

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"
PRIORITY_CLASS = "kubernetes:scheduling.k8s.io/v1:PriorityClass"
KEDA_RELEASE = "kubernetes:helm.sh/v3:Release"
WARM_TYPES = (DEPLOYMENT, SCALED_OBJECT, PRIORITY_CLASS)
GPU_POOL = "gpu-runners:gpuPool"
SPEED = (REPO / "docs" / "speed.md").read_text()
ZURICH = ZoneInfo("Europe/Zurich")


@pytest.fixture(scope="module")
def warm() -> Program:
    return run_program(WARM_HOURS)


def placeholder(program: Program) -> dict:
    return program.one(DEPLOYMENT, "warm-gpu").inputs["spec"]["template"]["spec"]


def test_the_class_keeps_a_placeholder_per_node_that_holds_one_gpu(warm):
    pod = placeholder(warm)
    assert pod["nodeSelector"] == {"gpu": "true", "cloud.google.com/compute-class": "gpu"}
    assert {
        "key": "cloud.google.com/compute-class",
        "operator": "Equal",
        "value": "gpu",
    }.items() <= (pod["tolerations"][1].items())
    (pause,) = pod["containers"]
    assert pause["resources"]["limits"]["nvidia.com/gpu"] == 1
    (anti,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert anti["labelSelector"]["matchLabels"] == pod_labels(warm)
    deployment = warm.one(DEPLOYMENT, "warm-gpu").inputs
    # KEDA owns the count: a `replicas` here would fight it on every `pulumi up`.
    assert "replicas" not in deployment["spec"]
    # `pulumi up` does not wait for a GPU node; a changed placeholder replaces the old ones in
    # place, where a rolling update would need a node beyond maxNodes.
    assert deployment["metadata"]["annotations"] == {"pulumi.com/skipAwait": "true"}
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def pod_labels(program: Program) -> dict:
    return program.one(DEPLOYMENT, "warm-gpu").inputs["spec"]["template"]["metadata"]["labels"]


def test_any_runner_pod_preempts_a_placeholder_and_a_placeholder_preempts_nothing(warm):
    (priority,) = warm.of_type(PRIORITY_CLASS)
    assert priority.inputs["value"] == -10 == warm_capacity.PLACEHOLDER_PRIORITY
    assert priority.inputs["preemptionPolicy"] == "Never"
    assert priority.inputs["globalDefault"] is False
    assert placeholder(warm)["priorityClassName"] == priority.inputs["metadata"]["name"]
    # Runner and job pods of every engine set no priority class, so they have 0, above the
    # placeholders' -10, which is still high enough to make the autoscaler add a node (its
    # cutoff is -10).
    program = run_program(
        {**WARM_HOURS, RUNNERS: EVERY_ENGINE[RUNNERS]}, secrets={TOKENS: RUNNER_TOKENS}
    )
    pods = job_pods(program)
    assert len(pods) == len(EVERY_ENGINE[RUNNERS])
    for name, pod in pods.items():
        assert "priorityClassName" not in pod and "priority_class_name" not in pod, name


def test_placeholders_pull_the_class_runners_images_ahead(warm):
    pulls = [c["image"] for c in placeholder(warm)["initContainers"]]
    assert len(pulls) == 2
    assert pulls[0].endswith("/iterativeai/cml:0-dvc3-base1-gpu")
    assert pulls[1].endswith("/actions/actions-runner:2.338.0")
    # From the image mirror, as the runners pull them.
    assert all(image.startswith("europe-west6-docker.pkg.dev/") for image in pulls)
    for container in [*placeholder(warm)["initContainers"], *placeholder(warm)["containers"]]:
        assert container["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_keda_keeps_the_nodes_in_the_hours_and_none_outside(warm):
    spec = warm.one(SCALED_OBJECT, "warm-gpu").inputs["spec"]
    assert spec["scaleTargetRef"] == {"name": "warm-gpu"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 1)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "cron"
    assert trigger["metadata"]["timezone"] == "Europe/Zurich"
    assert trigger["metadata"]["desiredReplicas"] == "1"
    release = warm.one(KEDA_RELEASE, "keda")
    assert warm.waits_for(warm.one(SCALED_OBJECT, "warm-gpu"), release)


def next_fire(expression: str, after: datetime) -> datetime:
    """The next minute a `M H * * d,d` cron expression fires, strictly after `after`
    (robfig/cron's Schedule.Next, for this form; cron counts days from Sunday, 0)."""
    minute, hour, _, _, days = expression.split()
    at = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(8 * 24 * 60):
        weekday = (at.weekday() + 1) % 7
        if (at.minute, at.hour) == (int(minute), int(hour)) and str(weekday) in days.split(","):
            return at
        at += timedelta(minutes=1)
    raise AssertionError(f"{expression} never fires")


def keda_cron_active(metadata: dict, now: datetime) -> bool:
    """KEDA 2.20.2's cron scaler: active when the next end comes before the next start
    (pkg/scalers/cron_scaler.go, GetMetricsAndActivity)."""
    local = now.astimezone(ZoneInfo(metadata["timezone"]))
    return next_fire(metadata["end"], local) < next_fire(metadata["start"], local)


@pytest.mark.parametrize(
    ("when", "active"),
    [
        ("2026-12-07 07:59:30", False),  # a Monday, before start
        ("2026-12-07 08:00:30", True),
        ("2026-12-09 13:00:00", True),  # Wednesday
        ("2026-12-11 18:59:30", True),  # Friday
        ("2026-12-11 19:00:30", False),
        ("2026-12-12 12:00:00", False),  # Saturday
        ("2026-12-13 09:00:00", False),  # Sunday
        ("2026-07-06 08:30:00", True),  # a summer Monday: the zone's own time
    ],
)
def test_the_schedule_means_what_the_stack_file_says(warm, when, active):
    (trigger,) = warm.one(SCALED_OBJECT, "warm-gpu").inputs["spec"]["triggers"]
    now = datetime.fromisoformat(when).replace(tzinfo=ZURICH)
    assert keda_cron_active(trigger["metadata"], now) is active


def test_without_warm_hours_nothing_of_it_is_made():
    program = run_program()
    assert not [r for r in program.resources if r.type in WARM_TYPES and "warm" in r.name]
    assert not program.of_type(PRIORITY_CLASS)


def test_warm_hours_alone_bring_keda():
    # GitLab's runner needs no KEDA; a class with warm hours does.
    program = run_program({**GITLAB, GPU_POOL: WARM_HOURS[GPU_POOL]})
    assert program.one(KEDA_RELEASE, "keda")
    assert [c["image"] for c in placeholder(program)["initContainers"]] == [
        "europe-west6-docker.pkg.dev/ml-team-sandbox/mlops-kubernetes-docker-hub/"
        "iterativeai/cml:0-dvc3-base1-gpu"
    ]


def warm_hours(**changes) -> dict:
    return {
        GPU_POOL: {"maxNodes": 2, "warmHours": {**WARM_HOURS[GPU_POOL]["warmHours"], **changes}}
    }


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            warm_hours(timezone="Europe/Zurch"),
            "gpu-runners:gpuPool.warmHours.timezone = 'Europe/Zurch': unknown time zone; "
            "allowed: an IANA time zone name",
        ),
        (
            warm_hours(start="19:00", end="08:00"),
            "gpu-runners:gpuPool.warmHours.end = '08:00': is not after start (19:00)",
        ),
        (warm_hours(days=[]), "gpu-runners:gpuPool.warmHours.days = []:"),
        (warm_hours(days=["Mon", "Mon"]), "Mon given twice; allowed: each day once"),
        (warm_hours(start="8:00"), 'allowed: a time of day as "HH:MM"'),
        (
            warm_hours(nodes=3),
            "gpu-runners:gpuPool.warmHours = {",
        ),
        (
            {"gpu-runners:cpuPool": {"warmHours": WARM_HOURS[GPU_POOL]["warmHours"]}},
            "gpu-runners:cpuPool.warmHours",
        ),
    ],
    ids=[
        "unknown zone",
        "end before start",
        "no days",
        "a day twice",
        "not HH:MM",
        "too many",
        "cpu",
    ],
)
def test_a_schedule_that_cannot_be_read_is_refused_naming_the_key(config, expected):
    error, registered = run_rejected_program(config)
    assert registered == []
    assert expected in str(error)


def test_more_warm_nodes_than_the_class_may_have_is_refused():
    error, _ = run_rejected_program(warm_hours(nodes=3))
    assert "nodes = 3: more warm nodes than the class's maxNodes (2); allowed: 1 to 2" in str(error)


def stack(name: str, **overrides) -> dict:
    return test_estimate.stack(name) | overrides


def test_the_estimate_prices_the_warm_hours_into_the_idle_month():
    dev = by_label(estimate.estimate(stack("dev")))
    gpu_pool = {**stack("dev")[GPU_POOL], **WARM_HOURS[GPU_POOL]}
    warm = by_label(estimate.estimate(stack("dev", **{GPU_POOL: gpu_pool})))
    node_hour = estimate.node_hour("europe-west6", "g2-standard-4", True, 100)
    # 11 hours on 5 days a week, in a 730-hour month.
    warm_month = 1 * 55 * 730 / 168 * node_hour
    assert warm["Warm hours of class gpu, in the month while idle"] == pytest.approx(warm_month)
    assert warm["Month while idle"] == pytest.approx(dev["Month while idle"] + warm_month)
    # A job in the hours is billed from taking the warm node on: 0.6 minutes to its first
    # step, the job, then the autoscaler's tail.
    assert warm["10-minute job on a warm node, runner cml-runner"] == pytest.approx(
        (0.6 + 10 + 10) / 60 * node_hour
    )
    assert "10-minute job on a warm node, runner cml-runner" not in dev


def test_a_placeholder_on_a_node_that_is_up_anyway_costs_nothing_more():
    # With minNodes 1 the class keeps a node up while idle; its free GPU holds the one
    # placeholder, so the warm hours add no node.
    gpu_pool = {**stack("dev")[GPU_POOL], **WARM_HOURS[GPU_POOL], "minNodes": 1}
    figures = by_label(estimate.estimate(stack("dev", **{GPU_POOL: gpu_pool})))
    assert figures["Warm hours of class gpu, in the month while idle"] == 0
    two = {**gpu_pool, "warmHours": {**gpu_pool["warmHours"], "nodes": 2}}
    node_hour = estimate.node_hour("europe-west6", "g2-standard-4", True, 100)
    figures = by_label(estimate.estimate(stack("dev", **{GPU_POOL: two})))
    assert figures["Warm hours of class gpu, in the month while idle"] == pytest.approx(
        55 * 730 / 168 * node_hour
    )


def test_a_warm_node_takes_a_job_to_its_first_step_in_under_a_minute():
    assert job_start.first_step_minutes(warm=True) < 1
    assert job_start.first_step_minutes(warm=False) == pytest.approx(5.75)


def test_the_page_shows_the_model_as_the_code_has_it():
    for term in job_start.TERMS:
        billed = "yes" if term.billed else "no"
        row = f"| {term.what} | {term.cold:g} | {term.warm:g} | {billed} | {term.source} |"
        assert row in SPEED, term.what
    cold, warm = (job_start.first_step_minutes(w) for w in (False, True))
    assert f"| **Push to first step** | **{cold:g}** | **{warm:g}** | | |" in SPEED


def test_the_pages_trade_off_figures_come_from_the_estimate():
    gpu_pool = {**stack("dev")[GPU_POOL], **WARM_HOURS[GPU_POOL]}
    figures = by_label(estimate.estimate(stack("dev", **{GPU_POOL: gpu_pool})))
    month = figures["Warm hours of class gpu, in the month while idle"]
    cold = figures["10-minute job on a cold node, runner cml-runner"]
    warm = figures["10-minute job on a warm node, runner cml-runner"]
    assert f"| Warm hours of class gpu, 1 node, 55 h a week | {month:.2f} a month |" in SPEED
    assert f"(24.5 GPU minutes billed) | {cold:.2f} |" in SPEED
    assert f"(20.6 GPU minutes billed beyond the warm hours) | {warm:.2f} |" in SPEED
    saved = job_start.first_step_minutes(False) - job_start.first_step_minutes(True)
    jobs = 20 * 5 * 730 / 168
    assert f"starts {saved:.1f} minutes sooner" in SPEED
    assert f"({jobs:.0f} a month), that is {jobs * saved / 60:.1f} hours" in SPEED
    assert f"for {month:.2f}, less the {jobs * (cold - warm):.2f} those" in SPEED


def test_the_example_on_the_page_is_the_one_the_tests_plan():
    (block,) = re.findall(r"```yaml\n(.*?)```", SPEED, re.DOTALL)
    assert yaml.safe_load(block)["config"][GPU_POOL] == WARM_HOURS[GPU_POOL]
    assert RUNNERS in WARM_HOURS


@pytest.mark.parametrize("minor", GKE_MINORS)
def test_the_warm_objects_pass_strict_schema_validation(warm, minor):
    upstream = [
        r
        for r in warm.resources
        if r.type in (DEPLOYMENT, PRIORITY_CLASS)
        or (r.type.startswith("kubernetes:") and r.name == "warm" and "Warm" not in r.type)
    ]
    assert {r.type.rsplit(":", 1)[-1] for r in upstream} == {
        "Deployment",
        "Namespace",
        "NetworkPolicy",
        "PriorityClass",
    }
    for resource in upstream:
        kubernetes_validate.validate(reveal(resource.inputs), f"{minor}.0", strict=True)
    scaled_object = reveal(warm.one(SCALED_OBJECT, "warm-gpu").inputs)
    assert [e.message for e in crd_validator("ScaledObject").iter_errors(scaled_object)] == []
