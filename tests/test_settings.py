"""Bad stack settings fail before anything is registered, naming key, value and what is allowed."""

import pytest

from infra.settings import SettingsError
from tests.harness import RUNNERS, TOKENS, fake_token, run_rejected_program

GPU_POOL = "gpu-runners:gpuPool"
CLUSTER = "gpu-runners:cluster"


def runner(**fields) -> dict:
    """The runners list with one runner, cml-runner, with these fields changed."""
    return {RUNNERS: [{"name": "cml-runner", **fields}]}


BAD_INPUTS = {
    "unknown accelerator": (
        {GPU_POOL: {"acceleratorType": "nvidia-tesla-k80"}},
        "gpu-runners:gpuPool.acceleratorType = 'nvidia-tesla-k80'",
        "unknown accelerator; allowed: nvidia-a100-80gb, nvidia-h100-80gb, nvidia-l4",
    ),
    "L4 on an N1 machine": (
        {GPU_POOL: {"machineType": "n1-standard-4"}},
        "gpu-runners:gpuPool.machineType = 'n1-standard-4'",
        "cannot carry nvidia-l4; allowed: g2-standard-4, g2-standard-8",
    ),
    "T4 on a G2 machine": (
        {GPU_POOL: {"acceleratorType": "nvidia-tesla-t4", "zones": ["europe-west4-a"]}},
        "gpu-runners:gpuPool.machineType = 'g2-standard-4'",
        "attaches to N1 machine types only",
    ),
    "A100 80GB on an A2 standard machine": (
        {GPU_POOL: {"acceleratorType": "nvidia-a100-80gb", "machineType": "a2-highgpu-1g"}},
        "gpu-runners:gpuPool.machineType = 'a2-highgpu-1g'",
        "cannot carry nvidia-a100-80gb; allowed: a2-ultragpu-1g",
    ),
    "a count the G2 machine type does not carry": (
        {GPU_POOL: {"acceleratorCount": 2}},
        "gpu-runners:gpuPool.acceleratorCount = 2",
        "g2-standard-4 carries exactly 1 nvidia-l4; allowed: 1",
    ),
    "a count N1 cannot attach": (
        {
            GPU_POOL: {
                "acceleratorType": "nvidia-tesla-t4",
                "machineType": "n1-standard-4",
                "acceleratorCount": 3,
            }
        },
        "gpu-runners:gpuPool.acceleratorCount = 3",
        "nvidia-tesla-t4 attaches in counts of 1, 2, 4",
    ),
    "more vCPUs than one V100 allows": (
        {
            CLUSTER: {"location": "us-central1"},
            "gpu-runners:systemPool": {"zones": ["us-central1-a"]},
            GPU_POOL: {
                "acceleratorType": "nvidia-tesla-v100",
                "machineType": "n1-standard-16",
                "zones": ["us-central1-a"],
            },
        },
        "gpu-runners:gpuPool.acceleratorCount = (not set)",
        "1 x nvidia-tesla-v100 allows at most 12 vCPUs, n1-standard-16 has 16",
    ),
    "a zone without the accelerator": (
        {GPU_POOL: {"zones": ["europe-west6-a"]}},
        'gpu-runners:gpuPool.zones = ["europe-west6-a"]',
        "does not offer nvidia-l4 according to the zone catalog",
    ),
    "a zone outside the cluster's region": (
        {GPU_POOL: {"zones": ["us-central1-a"]}},
        'gpu-runners:gpuPool.zones = ["us-central1-a"]',
        "'us-central1-a' is not in the cluster's region europe-west6",
    ),
    "minNodes below 0": (
        {GPU_POOL: {"minNodes": -1}},
        "gpu-runners:gpuPool.minNodes = -1",
        "allowed: 0 or more",
    ),
    "minNodes above maxNodes": (
        {GPU_POOL: {"minNodes": 3, "maxNodes": 2}},
        "gpu-runners:gpuPool.minNodes = 3",
        "allowed: 0 to maxNodes (2)",
    ),
    "an invalid label key": (
        {GPU_POOL: {"labels": {"team name": "ml"}}},
        'gpu-runners:gpuPool.labels = {"team name": "ml"}',
        "label key 'team name' is invalid; allowed: at most 63 letters",
    ),
    "an invalid label value": (
        {"gpu-runners:systemPool": {"labels": {"team": "-ml-"}}},
        'gpu-runners:systemPool.labels = {"team": "-ml-"}',
        "label value '-ml-' (key 'team') is invalid",
    ),
    "the gpu label overridden": (
        {GPU_POOL: {"labels": {"gpu": "false"}}},
        'gpu-runners:gpuPool.labels = {"gpu": "false"}',
        "the 'gpu' label is set by the pool itself",
    ),
    "a cluster name with capitals and underscores": (
        {CLUSTER: {"name": "MLOps_Cluster"}},
        "gpu-runners:cluster.name = 'MLOps_Cluster'",
        "allowed: lowercase letters, digits and hyphens, starting with a letter",
    ),
    "a cluster name over 40 characters": (
        {CLUSTER: {"name": "m" * 41}},
        f"gpu-runners:cluster.name = '{'m' * 41}'",
        "at most 40 characters",
    ),
    "a location that is neither zone nor region": (
        {CLUSTER: {"location": "zurich"}},
        "gpu-runners:cluster.location = 'zurich'",
        "allowed: a region (like europe-west6) or a zone (like europe-west6-b)",
    ),
    "a misspelt key": (
        {GPU_POOL: {"minNode": 1}},
        "gpu-runners:gpuPool.minNode = 1",
        "unknown key (did you mean minNodes?); allowed keys: acceleratorType, machineType",
    ),
    "an unknown driver version": (
        {GPU_POOL: {"driverVersion": "R535"}},
        "gpu-runners:gpuPool.driverVersion = 'R535'",
        "allowed: 'DEFAULT' or 'LATEST'",
    ),
    "a GitLab URL for a GitHub runner": (
        runner(platform="github", repository="https://gitlab.com/ml-team/churn-model"),
        "gpu-runners:runners[0].repository = 'https://gitlab.com/ml-team/churn-model'",
        "does not fit platform github; allowed: https://github.com/<owner>/<repo>",
    ),
    "a GitHub URL for a GitLab runner": (
        runner(platform="gitlab", repository="https://github.com/ml-team/churn-model"),
        "gpu-runners:runners[0].repository = 'https://github.com/ml-team/churn-model'",
        "does not fit platform gitlab; allowed: https://gitlab.com/<group>/<project>",
    ),
    "a repository URL that is not a repository": (
        runner(repository="https://github.com/ml-team"),
        "gpu-runners:runners[0].repository = 'https://github.com/ml-team'",
        "does not fit platform github",
    ),
    "empty labels": (
        runner(labels=[]),
        "gpu-runners:runners[0].labels = []",
        "should list at least 1 entry",
    ),
    "a label with a comma": (
        runner(labels=["cml,gpu"]),
        "gpu-runners:runners[0].labels[0] = 'cml,gpu'",
        "no commas or spaces",
    ),
    "a memory quantity Kubernetes refuses": (
        runner(memory="2GB"),
        "gpu-runners:runners[0].memory = '2GB'",
        "not a Kubernetes quantity; allowed: a positive number with an optional suffix",
    ),
    "a zero CPU": (
        runner(cpu=0),
        "gpu-runners:runners[0].cpu = 0",
        "not a Kubernetes quantity",
    ),
    "replicas below 0": (
        runner(replicas=-1),
        "gpu-runners:runners[0].replicas = -1",
        "allowed: 0 or more",
    ),
    "more GPUs than a node carries": (
        runner(gpus=2),
        "gpu-runners:runners[0].gpus = 2",
        "a GPU node of class 'gpu' carries 1 (gpuPool); allowed: 0 to 1",
    ),
    "a GPU runner sent to CPU nodes": (
        runner(gpus=1, nodeSelector={"gpu": "false"}),
        'gpu-runners:runners[0].nodeSelector = {"gpu": "false"}',
        "selects gpu=false nodes, which have no GPU",
    ),
    "a CPU runner sent to the tainted GPU nodes": (
        runner(gpus=0, nodeSelector={"gpu": "true"}),
        'gpu-runners:runners[0].nodeSelector = {"gpu": "true"}',
        "a CPU runner lands on cpuPool",
    ),
    "a runner name Kubernetes refuses": (
        runner(name="CML Runner"),
        "gpu-runners:runners[0].name = 'CML Runner'",
        "allowed: lowercase letters, digits and hyphens",
    ),
    "an unknown platform": (
        runner(platform="bitbucket"),
        "gpu-runners:runners[0].platform = 'bitbucket'",
        "allowed: 'github' or 'gitlab'",
    ),
    "no runners": (
        {RUNNERS: []},
        "gpu-runners:runners = []",
        "should list at least 1 entry",
    ),
    "duplicate runner names": (
        {RUNNERS: [{"name": "cml-runner"}, {"name": "cml-runner", "gpus": 0}]},
        "gpu-runners:runners[1].name = 'cml-runner'",
        "duplicate runner name",
    ),
    "a bucket URL instead of a bucket name": (
        {"gpu-runners:dvcRemote": {"bucket": "gs://acme-data"}},
        "gpu-runners:dvcRemote.bucket = 'gs://acme-data'",
        "without gs://",
    ),
}


@pytest.mark.parametrize(
    ("config", "key_and_value", "allowed"), BAD_INPUTS.values(), ids=BAD_INPUTS
)
def test_bad_input_is_rejected_before_anything_is_registered(config, key_and_value, allowed):
    error, registered = run_rejected_program(config)
    assert isinstance(error, SettingsError)
    message = str(error)
    assert key_and_value in message
    assert allowed in message
    assert registered == []


def test_missing_project_is_rejected():
    error, registered = run_rejected_program(without=["gcp:project"])
    assert isinstance(error, SettingsError)
    assert "gcp:project is not set; run `pulumi config set gcp:project <your-project-id>`" in str(
        error
    )
    assert registered == []


def test_every_problem_is_reported_at_once():
    error, registered = run_rejected_program(
        {
            CLUSTER: {"name": "Bad_Name"},
            GPU_POOL: {"acceleratorType": "nvidia-k80", "minNodes": -2},
            "gpu-runners:systemPool": {"maxNodes": 0},
        },
        without=["gcp:project"],
    )
    message = str(error)
    for key in (
        "gcp:project",
        "gpu-runners:cluster.name",
        "gpu-runners:gpuPool.acceleratorType",
        "gpu-runners:gpuPool.minNodes",
        "gpu-runners:systemPool.maxNodes",
    ):
        assert key in message
    assert message.startswith("Invalid stack configuration (Pulumi.dev.yaml); nothing was created.")
    assert registered == []


def test_a_zone_error_lists_the_zones_that_do_offer_the_accelerator():
    error, _ = run_rejected_program({GPU_POOL: {"zones": ["europe-west6-a"]}})
    assert "allowed in europe-west6: europe-west6-b, europe-west6-c" in str(error)
    assert str(error).count("gpu-runners:gpuPool.zones = ") == 1
    assert "list it in zonesOutsideCatalog" in str(error)


def test_a_missing_token_is_rejected_with_the_command_that_sets_it():
    error, registered = run_rejected_program(without=[TOKENS])
    assert (
        "gpu-runners:runnerTokens.cml-runner is not set: the runner's GitHub or GitLab token; run "
        "`pulumi config set --secret --path 'runnerTokens.cml-runner' <token>`"
    ) in str(error)
    assert registered == []


def test_a_token_stored_in_plain_text_is_rejected_without_showing_it():
    token = fake_token("cml-runner")
    error, registered = run_rejected_program({TOKENS: {"cml-runner": token}})
    assert "gpu-runners:runnerTokens is stored in plain text" in str(error)
    assert token not in str(error)
    assert registered == []


def test_a_token_for_no_runner_is_rejected():
    tokens = {"cml-runner": fake_token("cml-runner"), "old-runner": fake_token("old-runner")}
    error, _ = run_rejected_program(secrets={TOKENS: tokens})
    assert "gpu-runners:runnerTokens.old-runner: no runner is named 'old-runner'" in str(error)
    assert fake_token("old-runner") not in str(error)


def test_no_error_message_shows_a_token():
    tokens = {"a-runner": fake_token("a-runner"), "b-runner": fake_token("b-runner")}
    error, _ = run_rejected_program(
        {RUNNERS: [{"name": "a-runner", "memory": "2GB"}, {"name": "b-runner", "gpus": 9}]},
        secrets={TOKENS: tokens},
    )
    assert "runners[0].memory" in str(error)
    assert "runners[1].gpus" in str(error)
    for token in tokens.values():
        assert token not in str(error)
