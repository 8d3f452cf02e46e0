"""GPU classes (issue 26): node pools and a ComputeClass per class, Spot first and on demand
after, runners on their class, time-sharing and flex-start, and the checks before any of it."""

import copy
import functools

import jsonschema
import pytest
import yaml

from tests.harness import REPO, Program, read_yaml, reveal, run_program, run_rejected_program
from tests.stacks import SHAPES, SHARED_GPUS, TWO_CLASSES
from tests.test_scaling import strict

NODE_POOL = "gcp:container/nodePool:NodePool"
COMPUTE_CLASS = "kubernetes:cloud.google.com/v1:ComputeClass"
SCALED_JOB = "kubernetes:keda.sh/v1alpha1:ScaledJob"
CLASS_LABEL = "cloud.google.com/compute-class"
CRD = REPO / "tests/schemas/compute-class-api-8067eae/cloud.google.com_computeclasses.yaml"
GPU_POOLS = "gpu-runners:gpuPools"
RUNNERS = "gpu-runners:runners"


@pytest.fixture(scope="module")
def two_classes() -> Program:
    return run_program(TWO_CLASSES)


@pytest.fixture(scope="module")
def shared() -> Program:
    return run_program(SHARED_GPUS)


def pools(program: Program) -> dict[str, dict]:
    return {r.inputs["name"]: r.inputs for r in program.of_type(NODE_POOL)}


def compute_classes(program: Program) -> dict[str, dict]:
    return {
        r.inputs["metadata"]["name"]: reveal(r.inputs)["spec"]
        for r in program.of_type(COMPUTE_CLASS)
    }


def job_pod(program: Program, runner: str) -> dict:
    scaled_job = program.one(SCALED_JOB, runner).inputs
    return scaled_job["spec"]["jobTargetRef"]["template"]["spec"]


def test_each_class_tries_its_spot_pool_then_its_on_demand_pool(two_classes):
    classes = compute_classes(two_classes)
    assert classes["l4"]["priorities"] == [
        {"nodepools": ["l4"]},
        {"nodepools": ["l4-on-demand"]},
    ]
    assert classes["a100"]["priorities"] == [{"nodepools": ["a100"]}]
    for spec in classes.values():
        # Pending rather than a node of the cluster's default kind; no pool GKE makes itself;
        # no draining of a fallback node that runs a job.
        assert spec["whenUnsatisfiable"] == "DoNotScaleUp"
        assert spec["nodePoolAutoCreation"] == {"enabled": False}
        assert spec["activeMigration"] == {"optimizeRulePriority": False}


def test_each_pool_has_its_class_accelerator_spot_labels_and_taints(two_classes):
    found = pools(two_classes)
    assert set(found) == {"system", "l4", "l4-on-demand", "a100"}
    expected = {
        "l4": ("l4", "nvidia-l4", "g2-standard-8", True, (0, 2)),
        "l4-on-demand": ("l4", "nvidia-l4", "g2-standard-8", False, (0, 2)),
        "a100": ("a100", "nvidia-tesla-a100", "a2-highgpu-1g", False, (0, 1)),
    }
    for name, (gpu_class, accelerator, machine, spot, size) in expected.items():
        pool, node = found[name], found[name]["nodeConfig"]
        assert pool["nodeLocations"] == ["europe-west4-a", "europe-west4-b"]
        assert pool["autoscaling"]["locationPolicy"] == "ANY"
        limits = pool["autoscaling"]["totalMinNodeCount"], pool["autoscaling"]["totalMaxNodeCount"]
        assert limits == size
        assert node["machineType"] == machine
        assert node["guestAccelerators"][0]["type"] == accelerator
        assert node["spot"] is spot
        assert node["labels"]["gpu"] == "true"
        assert node["labels"][CLASS_LABEL] == gpu_class
        assert {"key": CLASS_LABEL, "value": gpu_class, "effect": "NO_SCHEDULE"} in node["taints"]
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"} in (
            node["taints"]
        )
    assert found["l4-on-demand"]["nodeConfig"]["labels"]["gpu-runners/on-demand-fallback"] == (
        "true"
    )
    assert "gpu-runners/on-demand-fallback" not in found["l4"]["nodeConfig"]["labels"]


def test_each_runner_selects_and_tolerates_its_class(two_classes):
    for runner, gpu_class in (("gpu-tests", "l4"), ("gpu-train", "a100")):
        pod = job_pod(two_classes, runner)
        assert pod["nodeSelector"] == {"gpu": "true", CLASS_LABEL: gpu_class}
        assert {
            "key": CLASS_LABEL,
            "operator": "Equal",
            "value": gpu_class,
            "effect": "NoSchedule",
        } in pod["tolerations"]


def test_runners_wait_for_the_compute_classes_they_select(two_classes):
    classes = two_classes.of_type(COMPUTE_CLASS)
    scaled_job = two_classes.one(SCALED_JOB, "gpu-train")
    for compute_class in classes:
        assert two_classes.waits_for(scaled_job, compute_class)


@functools.cache
def crd_validator() -> jsonschema.Draft7Validator:
    crd = read_yaml(CRD)
    (version,) = crd["spec"]["versions"]
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("shape", ["dev", "two-classes", "shared-gpus"])
def test_compute_classes_validate_against_the_crd(shape):
    program = run_program(SHAPES[shape])
    validator = crd_validator()
    assert program.of_type(COMPUTE_CLASS)
    for resource in program.of_type(COMPUTE_CLASS):
        manifest = reveal(resource.inputs)
        assert (manifest["apiVersion"], manifest["kind"]) == ("cloud.google.com/v1", "ComputeClass")
        assert [e.message for e in validator.iter_errors(manifest)] == []
        # The CRD's CEL rule, which jsonschema does not run: "Nodepool field cannot be set
        # along with other nodepool configuration fields".
        for priority in manifest["spec"]["priorities"]:
            assert set(priority) == {"nodepools"}
        # "The name of your ComputeClass can't begin with gke or autopilot."
        assert not manifest["metadata"]["name"].startswith(("gke", "autopilot"))


def test_the_crd_check_refuses_a_misspelt_field(two_classes):
    manifest = reveal(two_classes.of_type(COMPUTE_CLASS)[0].inputs)
    manifest["spec"]["whenUnsatisfiable"] = "ScaleUp"
    manifest["spec"]["priorities"][0]["nodePools"] = ["l4"]
    assert len(list(crd_validator().iter_errors(manifest))) == 2


def test_a_time_shared_class_shares_its_gpus_and_its_pods_land_on_it(shared):
    for name in ("l4-shared", "l4-shared-on-demand"):
        (accelerator,) = pools(shared)[name]["nodeConfig"]["guestAccelerators"]
        assert accelerator["gpuSharingConfig"] == {
            "gpuSharingStrategy": "TIME_SHARING",
            "maxSharedClientsPerGpu": 4,
        }
    # The class alone confines the pods to shared GPUs: every pool of it shares them. GKE's
    # sharing labels are not selected, which beside a ComputeClass would need GKE 1.32.3.
    in_class = {"gpu": "true", CLASS_LABEL: "l4-shared"}
    assert job_pod(shared, "gpu-tests")["nodeSelector"] == in_class
    arc = shared.one("kubernetes:helm.sh/v3:Release", "arc-shared").inputs
    assert arc["values"]["template"]["spec"]["nodeSelector"] == in_class
    config = reveal(shared.one("kubernetes:helm.sh/v3:Release", "gl-shared").inputs)["values"]
    assert '"cloud.google.com/compute-class" = "l4-shared"' in config["runners"]["config"]
    assert "gke-max-shared-clients-per-gpu" not in config["runners"]["config"]


def test_a_flex_start_class_gets_its_on_demand_nodes_through_flex_start():
    flex = {"gpu-runners:gpuPool": {"flexStart": True}}
    found = pools(run_program(flex))
    spot, fallback = found["gpu"], found["gpu-on-demand"]
    assert "flexStart" not in spot["nodeConfig"]
    assert fallback["nodeConfig"]["flexStart"] is True
    assert fallback["nodeConfig"]["reservationAffinity"] == {
        "consumeReservationType": "NO_RESERVATION"
    }
    assert fallback["management"]["autoRepair"] is False
    assert spot["management"]["autoRepair"] is True
    only = pools(run_program({"gpu-runners:gpuPool": {"flexStart": True, "spot": False}}))
    assert set(only) == {"system", "gpu"}
    assert only["gpu"]["nodeConfig"]["flexStart"] is True


def test_a_spot_class_may_stay_on_spot_only():
    program = run_program({"gpu-runners:gpuPool": {"onDemandFallback": False}})
    assert set(pools(program)) == {"system", "gpu"}
    assert compute_classes(program)["gpu"]["priorities"] == [{"nodepools": ["gpu"]}]


def test_moving_gpu_pool_into_gpu_pools_as_class_gpu_changes_nothing():
    before = run_program()
    single = copy.deepcopy(before)
    moved = run_program(
        {
            "gpu-runners:gpuPool": None,
            GPU_POOLS: [{"name": "gpu", **_dev_gpu_pool()}],
        }
    )
    assert {r.urn: r.inputs for r in moved.resources} == {r.urn: r.inputs for r in single.resources}


def _dev_gpu_pool() -> dict:
    config = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())["config"]
    return config["gpu-runners:gpuPool"]


def classes(*entries: dict) -> dict:
    return {"gpu-runners:gpuPool": None, GPU_POOLS: list(entries)}


L4 = {"name": "l4", "spot": True}
A100 = {
    "name": "a100",
    "acceleratorType": "nvidia-tesla-a100",
    "machineType": "a2-highgpu-1g",
    "zones": ["europe-west4-a"],
}
IN_NL = {
    "gcp:region": "europe-west4",
    "gpu-runners:cluster": {"location": "europe-west4-a"},
    "gpu-runners:systemPool": {"zones": ["europe-west4-a"]},
}


def rejected(config: dict) -> str:
    error, registered = run_rejected_program(config)
    assert registered == []
    assert str(error).startswith("Invalid stack configuration (Pulumi.dev.yaml); nothing was")
    return str(error)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {**classes(L4), RUNNERS: [{"name": "cml-runner", "gpuPool": "a100"}]},
            "gpu-runners:runners[0].gpuPool = 'a100': no GPU class of that name; allowed: l4 "
            "(gpuPools[0])",
        ),
        (
            classes(L4, {"name": "l4"}),
            "gpu-runners:gpuPools = [",
        ),
        (
            {GPU_POOLS: [L4]},
            "gpu-runners:gpuPool and gpu-runners:gpuPools are both set; allowed: one of them",
        ),
        (
            {**IN_NL, **classes({**L4, "zones": ["europe-west4-a"]}, A100)},
            "gpu-runners:runners[0].gpus = 1: a GPU runner on a stack of several GPU classes "
            "names its class; set this runner's gpuPool, allowed: l4, a100",
        ),
        (
            {
                **classes({**L4, "timeSharingClientsPerGpu": 4, "machineType": "g2-standard-24"}),
                RUNNERS: [{"name": "cml-runner", "gpus": 2}],
            },
            "gpu-runners:runners[0].gpus = 2: class 'l4' shares each GPU between up to 4 pods "
            "(gpuPools[0].timeSharingClientsPerGpu), and a pod there gets one GPU; allowed: 1",
        ),
        (
            {
                **IN_NL,
                **classes({**L4, "zones": ["europe-west4-a"]}, A100),
                RUNNERS: [{"name": "cml-runner", "gpuPool": "l4", "memory": "64Gi"}],
            },
            "gpu-runners:runners[0].memory = '64Gi': more than one gpuPools[0] node leaves to pods",
        ),
        (
            {**classes(L4), RUNNERS: [{"name": "cml-runner", "gpus": 0, "gpuPool": "l4"}]},
            "gpu-runners:runners[0].gpus = 0: a CPU runner lands on cpuPool, yet gpuPool names "
            "the GPU class 'l4'",
        ),
        (
            classes({**L4, "zones": ["europe-west6-a"]}),
            "gpu-runners:gpuPools[0].zones = [\"europe-west6-a\"]: 'europe-west6-a' does not "
            "offer nvidia-l4",
        ),
        (
            classes({"name": "system"}),
            "gpu-runners:gpuPools[0].name = 'system': names a node pool the stack makes itself",
        ),
        (
            classes({"name": "gke-l4"}),
            "gpu-runners:gpuPools[0].name = 'gke-l4': GKE keeps names beginning with gke",
        ),
        (
            {"gpu-runners:gpuPool": {"spot": False, "onDemandFallback": True}},
            "gpu-runners:gpuPool.onDemandFallback = true: only read with spot: true",
        ),
        (
            {"gpu-runners:gpuPool": {"onDemandFallback": False, "flexStart": True}},
            "gpu-runners:gpuPool.flexStart = true: flex-start provisions the class's on-demand "
            "nodes, and onDemandFallback: false leaves it none",
        ),
        (
            {"gpu-runners:gpuPool": {"spot": False, "minNodes": 1, "flexStart": True}},
            "gpu-runners:gpuPool.flexStart = true: a flex-start pool starts from zero nodes",
        ),
        (
            {"gpu-runners:gpuPool": {"timeSharingClientsPerGpu": 49}},
            "gpu-runners:gpuPool.timeSharingClientsPerGpu = 49:",
        ),
    ],
    ids=[
        "a class that does not exist",
        "two classes with one name",
        "gpuPool and gpuPools",
        "no class on a stack of several",
        "two GPUs on a shared GPU",
        "a class too small for its runner",
        "a CPU runner on a GPU class",
        "zones without the accelerator",
        "a pool name the stack takes",
        "a name GKE keeps",
        "a fallback without Spot",
        "flex-start with no on-demand pool",
        "flex-start kept warm",
        "more sharing than GKE allows",
    ],
)
def test_bad_gpu_classes_are_refused_naming_the_key(config, expected):
    assert expected in rejected(config)


def test_two_classes_with_one_name_say_which():
    message = rejected(classes(L4, {"name": "l4"}))
    assert "two classes are named l4; allowed: a name per class" in message
