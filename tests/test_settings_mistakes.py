"""The mistakes users make: each is refused before anything is created, in one line naming the
key, and no message ever shows a secret or anything that looks like a token."""

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.messages import TOKEN_LIKE
from infra.settings import SECTIONS, RunnerSettings, SettingsError
from tests.harness import RUNNERS, TOKENS, fake_token, run_program, run_rejected_program

GPU_POOL = "gpu-runners:gpuPool"
SYSTEM_POOL = "gpu-runners:systemPool"
CLUSTER = "gpu-runners:cluster"
TOKEN = fake_token("cml-runner")


def runner(**fields) -> dict:
    return {RUNNERS: [{"name": "cml-runner", **fields}]}


def rejected(config=None, secrets=None, without=()) -> str:
    error, registered = run_rejected_program(config, secrets, without=without)
    assert isinstance(error, SettingsError)
    assert registered == []
    return str(error)


def problems(message: str) -> list[str]:
    return [line for line in message.splitlines() if line.startswith("  - ")]


# No secret is ever printed.


def test_tokens_set_without_path_are_refused_without_showing_the_token():
    message = rejected(secrets={TOKENS: TOKEN})
    assert "gpu-runners:runnerTokens = [secret]: one value" in message
    assert "was --path left out?" in message
    assert TOKEN not in message and "ConfigTypeError" not in message


@pytest.mark.parametrize("as_secret", [False, True], ids=["plain", "secret"])
def test_a_token_under_an_unknown_key_is_masked(as_secret):
    # A token the stack does not hold elsewhere: masked because it looks like one.
    stray = fake_token("pasted-into-the-wrong-key")
    value = runner(token=stray)
    message = rejected(secrets=value) if as_secret else rejected(value)
    assert "gpu-runners:runners[0].token" in message
    assert "unknown key" in message
    assert "a token belongs only in runnerTokens" in message
    assert stray not in message
    assert "[secret]" in message


def test_a_value_set_as_a_secret_is_never_shown():
    message = rejected(secrets={GPU_POOL: {"zones": ["europe-west6-a"]}})
    assert "gpu-runners:gpuPool.zones = [secret]" in message.replace('["[secret]"]', "[secret]")
    assert "europe-west6-a" not in message


# No key is silently ignored.


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("gpupool", "gpuPool"), ("runner", "runners"), ("Cluster", "cluster")],
)
def test_a_misspelt_top_level_key_is_refused_with_the_closest_key(key, suggestion):
    message = rejected({f"gpu-runners:{key}": {"maxNodes": 2}})
    assert f"gpu-runners:{key}: unknown key (did you mean {suggestion}?)" in message


def test_a_flat_key_from_a_forgotten_path_is_refused_with_the_commands_that_fix_it():
    message = rejected({"gpu-runners:gpuPool.maxNodes": "2"})
    assert "gpu-runners:gpuPool.maxNodes: a key with a path in its name" in message
    assert "`pulumi config rm 'gpuPool.maxNodes'`" in message
    assert "`pulumi config set --path 'gpuPool.maxNodes' <value>`" in message


# Nothing that cannot work is accepted.

CANNOT_WORK = {
    "a gpu selector that matches no pool": (
        runner(nodeSelector={"gpu": "yes"}),
        "gpu-runners:runners[0].nodeSelector",
        "gpu: 'yes' matches no node",
    ),
    "a GitLab URL of a page in the project": (
        runner(platform="gitlab", gpus=0, repository="https://gitlab.com/ml/churn/-/tree/main"),
        "gpu-runners:runners[0].repository",
        "ends in a page of the project (/-/tree/main), not the project; allowed: "
        "https://gitlab.com/ml/churn",
    ),
    "a GitHub URL of a page in the repository": (
        runner(repository="https://github.com/ml/churn/tree/main"),
        "gpu-runners:runners[0].repository",
        "(/tree/main), not the repository; allowed: https://github.com/ml/churn",
    ),
    "a GPU machine for the system pool": (
        {SYSTEM_POOL: {"machineType": "g2-standard-4"}},
        "gpu-runners:systemPool.machineType = 'g2-standard-4'",
        "is a GPU machine type",
    ),
    "a machine type that does not exist": (
        {SYSTEM_POOL: {"machineType": "e2-standard"}},
        "gpu-runners:systemPool.machineType = 'e2-standard'",
        "unknown machine type",
    ),
    "a GPU machine size that does not exist": (
        {
            CLUSTER: {"location": "us-central1"},
            SYSTEM_POOL: {"zones": ["us-central1-a"]},
            GPU_POOL: {
                "acceleratorType": "nvidia-tesla-t4",
                "machineType": "n1-standard-3",
                "zones": ["us-central1-a"],
            },
        },
        "gpu-runners:gpuPool.machineType = 'n1-standard-3'",
        "unknown machine type",
    ),
    "more CPU than a GPU node leaves to pods": (
        runner(cpu=8),
        "gpu-runners:runners[0].cpu = 8",
        "more than one gpuPool node leaves to pods (3.92 of its 4 vCPUs",
    ),
    "more memory than a GPU node leaves to pods": (
        runner(memory="32Gi"),
        "gpu-runners:runners[0].memory = '32Gi'",
        # 16 GiB less GKE's reservation (2662 Mi), image streaming's (1065 Mi) and 100 Mi.
        "(12556Mi of its 16 GiB, after GKE's and image streaming's reservations); the pod "
        "would never schedule. Allowed: at most 12556Mi, or a larger gpuPool.machineType",
    ),
    "memory that fits a GPU node only without image streaming's reservation": (
        runner(memory="13000Mi"),
        "gpu-runners:runners[0].memory = '13000Mi'",
        "Allowed: at most 12556Mi",
    ),
    "more memory than a CPU runner node leaves to pods": (
        runner(gpus=0, memory="7Gi"),
        "gpu-runners:runners[0].memory = '7Gi'",
        "more than one cpuPool node leaves to pods",
    ),
    "memory without a unit": (
        runner(memory=2048),
        "gpu-runners:runners[0].memory = 2048",
        "has no unit, so it means 2048 bytes; allowed: a size with a unit, e.g. 2048Mi",
    ),
    "an absurd CPU": (
        runner(cpu=1000),
        "gpu-runners:runners[0].cpu = 1000",
        "the pod would never schedule",
    ),
    "maxRunners on an always runner": (
        runner(mode="always", maxRunners=3),
        "gpu-runners:runners[0].maxRunners = 3",
        "maxRunners applies to mode on-demand",
    ),
    "an image tag that already ends in -gpu": (
        runner(imageTag="0-dvc3-base1-gpu"),
        "gpu-runners:runners[0].imageTag = '0-dvc3-base1-gpu'",
        "allowed: the tag without it (0-dvc3-base1)",
    ),
    "a region name that only fits the pattern": (
        {CLUSTER: {"location": "eu-west1"}},
        "gpu-runners:cluster.location = 'eu-west1'",
        "'eu-west1' is not a Google Cloud region according to the region catalog",
    ),
}


@pytest.mark.parametrize(("config", "key", "allowed"), CANNOT_WORK.values(), ids=list(CANNOT_WORK))
def test_what_cannot_work_is_refused(config, key, allowed):
    message = rejected(config)
    assert key in message
    assert allowed in message


def test_a_region_newer_than_the_catalog_can_be_vouched_for():
    message = rejected(
        {
            CLUSTER: {"location": "europe-west99", "regionsOutsideCatalog": ["europe-west99"]},
            SYSTEM_POOL: {"zones": ["europe-west99-a"]},
        }
    )
    assert "gpu-runners:cluster.location" not in message
    assert "gpuPool.zones" in message  # the GPU zone is still in europe-west6


def test_a_runner_that_fits_its_node_is_accepted():
    program = run_program(runner(cpu="3500m", memory="12Gi"))
    assert program.of_type("kubernetes:keda.sh/v1alpha1:ScaledJob")


# Every problem in one pass.


def test_a_fresh_clone_hears_of_project_repository_and_token_at_once():
    message = rejected(runner(repository=None), without=["gcp:project", TOKENS])
    assert "gcp:project is not set" in message
    assert (
        "gpu-runners:runners[0].repository is not set; run `pulumi config set --path "
        "'runners[0].repository' https://github.com/<owner>/<repo>`"
    ) in message
    assert "gpu-runners:runnerTokens.cml-runner is not set" in message


# Messages in the user's words.


def test_a_single_value_where_a_list_belongs_says_list():
    message = rejected({GPU_POOL: {"zones": "europe-west6-b"}})
    assert "gpu-runners:gpuPool.zones = 'europe-west6-b': should be a list" in message
    assert "tuple" not in message


def test_a_bad_label_is_one_line():
    message = rejected(runner(labels=["bad label"]))
    assert len(problems(message)) == 1
    assert "runners[0].labels[0] = 'bad label'" in message


def test_an_unquoted_boolean_gets_a_hint_to_quote_it():
    message = rejected(runner(nodeSelector={"gpu": True}))
    assert "gpu-runners:runners[0].nodeSelector.gpu = true: should be text" in message
    assert 'quote it ("true")' in message


@pytest.mark.parametrize(
    "url",
    ["https://github.com/ml-team/churn-model.git", "https://github.com/ml-team/churn-model/"],
)
def test_a_url_with_git_or_a_trailing_slash_is_normalised(url):
    program = run_program(runner(repository=url))
    spec = program.one("kubernetes:keda.sh/v1alpha1:ScaledJob").inputs["spec"]
    args = spec["jobTargetRef"]["template"]["spec"]["containers"][0]["args"]
    assert "--repo=https://github.com/ml-team/churn-model" in args


# Generated bad input: whatever a user types into any key.

FIELDS = [
    (f"gpu-runners:{key}", field.alias)
    for key, model in SECTIONS.items()
    for field in model.model_fields.values()
] + [(RUNNERS, field.alias) for field in RunnerSettings.model_fields.values()]
TOKENS_LIKE = st.from_regex(r"(ghp_|github_pat_|glpat-|glrt-)[A-Za-z0-9]{20,40}", fullmatch=True)
BAD_VALUES = st.one_of(
    TOKENS_LIKE,
    st.builds(lambda t: {"nested": t}, TOKENS_LIKE),
    st.builds(lambda t, n: [t, n], TOKENS_LIKE, st.integers()),
    st.builds(lambda k, n: {k: {"deeper": n}}, st.text(min_size=1, max_size=8), st.integers()),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELDS), BAD_VALUES, st.booleans())
def test_generated_bad_values_are_refused_without_showing_a_secret(field, value, as_secret):
    key, name = field
    config = (
        {key: [{"name": "cml-runner", name: value}]} if key == RUNNERS else {key: {name: value}}
    )
    message = rejected(secrets=config) if as_secret else rejected(config)
    lines = problems(message)
    assert lines
    assert all(re.match(r"  - (gpu-runners|gcp):", line) for line in lines), message
    assert not re.search(TOKEN_LIKE.pattern + r"[A-Za-z0-9]", message.replace("…", " "))
    for text in _strings(value):
        if as_secret or TOKEN_LIKE.search(text):
            assert text not in message


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value] if len(value) >= 4 else []
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


# A credential of the wrong kind for the runner's forge or engine: one place decides
# (settings._credential_problem), and no message shows the token.
GITLAB_RUNNER = {"name": "gl", "platform": "gitlab", "labels": ["gpu"]}
GITLAB_CML = {**GITLAB_RUNNER, "engine": "cml", "mode": "always"}
WRONG_CREDENTIALS = {
    "a GitLab access token on a GitHub runner": (
        [{"name": "cml-runner"}],
        {"cml-runner": "glpat-" + "a" * 20},
        "a GitLab token on a GitHub runner",
    ),
    "a GitLab runner token on a GitHub runner": (
        [{"name": "cml-runner"}],
        {"cml-runner": "glrt-" + "r" * 24},
        "a GitLab token on a GitHub runner",
    ),
    "a GitHub token on a GitLab runner": (
        [GITLAB_RUNNER],
        {"gl": "ghp_" + "x" * 36},
        "a GitHub token on a GitLab runner",
    ),
    "a GitLab deploy token": (
        [GITLAB_RUNNER],
        {"gl": "gldt-" + "d" * 20},
        "a GitLab deploy token, which can neither register a runner nor use the API",
    ),
    "a runner token on CML, which registers through the API": (
        [GITLAB_CML],
        {"gl": "glrt-" + "r" * 24},
        "a runner authentication token, which CML cannot use",
    ),
    "a token with a trailing newline": (
        [{"name": "cml-runner"}],
        {"cml-runner": TOKEN + "\n"},
        "has spaces or a line break around it",
    ),
    "a GitHub App pasted as one JSON value": (
        [{"name": "cml-runner", "engine": "arc"}],
        {"cml-runner": '{"appId": "1", "installationId": "2", "privateKey": "k"}'},
        "looks like JSON, a GitHub App pasted as one value",
    ),
}


@pytest.mark.parametrize(
    ("runners", "tokens", "reason"), WRONG_CREDENTIALS.values(), ids=list(WRONG_CREDENTIALS)
)
def test_a_credential_the_runner_cannot_use_is_refused_without_showing_it(runners, tokens, reason):
    message = rejected({RUNNERS: runners}, secrets={TOKENS: tokens})
    (name,) = tokens
    assert f"gpu-runners:runnerTokens.{name} = [secret]: {reason}" in message
    assert tokens[name].strip() not in message


def test_the_right_credentials_pass():
    run_program(
        {
            RUNNERS: [
                {"name": "cml-runner"},
                GITLAB_RUNNER,
                {**GITLAB_CML, "name": "gl-cml", "labels": ["cml"], "gpus": 0, "cpu": "500m"},
            ]
        },
        secrets={
            TOKENS: {
                "cml-runner": TOKEN,
                "gl": "glrt-" + "r" * 24,
                "gl-cml": "glpat-" + "a" * 20,
            }
        },
    )


CLASSIC_TOKEN = "0123456789abcdef0123456789abcdef01234567"  # 40 hex: no prefix to spot


def test_a_token_in_a_repository_url_is_refused_and_never_shown():
    url = f"https://ml-bot:{CLASSIC_TOKEN}@github.com/ml-team/churn-model"
    message = rejected(runner(repository=url))
    assert (
        "gpu-runners:runners[0].repository = 'https://[secret]@github.com/ml-team/churn-model'"
        in (message)
    )
    assert "holds a name or token before '@'" in message
    assert CLASSIC_TOKEN not in message


@pytest.mark.parametrize(
    ("config", "key", "allowed"),
    [
        (
            runner(repository="https://github.com/enterprises/ml-team"),
            "gpu-runners:runners[0].repository",
            "is an enterprise or organisation page, not a repository",
        ),
        (
            {"gpu-runners:ci": {"githubRepository": "ml-team/gpu-runners.git"}},
            "gpu-runners:ci.githubRepository = 'ml-team/gpu-runners.git'",
            "allowed: owner/repo of the infrastructure repository",
        ),
        (
            {"gpu-runners:ci": {"gitlabProject": "ml-team/infra.git"}},
            "gpu-runners:ci.gitlabProject = 'ml-team/infra.git'",
            "allowed: group/project",
        ),
        (
            {"gpu-runners:ci": {"poolId": "1-runners-ci"}},
            "gpu-runners:ci.poolId = '1-runners-ci'",
            "starting with a letter",
        ),
    ],
    ids=["enterprise URL", "ci repository .git", "ci project .git", "pool ID digit"],
)
def test_urls_and_ids_the_forge_or_provider_would_refuse_are_refused(config, key, allowed):
    message = rejected(config)
    assert key in message and allowed in message


def test_good_input_that_looked_odd_is_accepted():
    digest = "sha256:" + "a" * 64
    program = run_program(
        {
            RUNNERS: [
                {
                    "name": "cml-runner",
                    "engine": "arc",
                    # Tag and digest, as dependency bots pin.
                    "image": f"ghcr.io/ml-team/runner:2.338.0@{digest}",
                    # A host name in capitals: host names are not case-sensitive.
                    "repository": "https://GitHub.com/ml-team/churn-model",
                }
            ]
        }
    )
    (release,) = [
        r for r in program.of_type("kubernetes:helm.sh/v3:Release") if r.name == "cml-runner"
    ]
    values = release.inputs["values"]
    assert values["githubConfigUrl"] == "https://github.com/ml-team/churn-model"
    assert values["template"]["spec"]["containers"][0]["image"].endswith(digest)


def test_always_on_gpu_runners_the_pool_can_never_hold_are_refused():
    message = rejected(runner(mode="always", replicas=5000))
    assert (
        "gpu-runners:runners[0].replicas = 5000: always-on runners of GPU class 'gpu' would "
        "hold 5000 GPUs, and its first pool has room for 1 (gpuPool.maxNodes 1 times 1 per node)"
    ) in message


@pytest.mark.parametrize(
    ("labels", "shared"),
    [
        ((["gpu", "train"], ["gpu"]), "gpu"),
        ((["gpu", "train"], ["cpu", "Train"]), "train"),
        ((["a", "b"], ["B", "A", "c"]), "a, b"),
    ],
    ids=["one carries all the other's", "one label in common, any case", "two in common"],
)
def test_runners_of_a_repository_that_share_a_label_are_refused(labels, shared):
    first, second = labels
    message = rejected(
        {
            RUNNERS: [
                {"name": "train-gpu", "labels": first},
                {"name": "lint-cpu", "gpus": 0, "cpu": "500m", "labels": second},
            ]
        }
    )
    # A job that asks for the shared labels matches both: KEDA starts both, GitHub gives the
    # job to either, and the other idles on its node until it times out.
    assert (
        f"gpu-runners:runners[1].labels = {json.dumps(second)}: runners[0] (train-gpu) on the "
        f"same repository carries {shared} too, so a job that asks for"
    ) in message


def test_labels_apart_but_for_githubs_defaults_or_on_other_repositories_are_no_clash():
    run_program(
        {
            RUNNERS: [
                {"name": "train-gpu", "labels": ["gpu", "linux"]},
                {"name": "lint-cpu", "gpus": 0, "cpu": "500m", "labels": ["cpu", "Linux", "X64"]},
                {
                    "name": "other-repo",
                    "labels": ["gpu"],
                    "repository": "https://github.com/ml-team/other-model",
                },
            ]
        }
    )


def test_a_runner_with_only_githubs_default_labels_is_refused():
    message = rejected({RUNNERS: [{"name": "cml-runner", "labels": ["self-hosted", "Linux"]}]})
    assert (
        'gpu-runners:runners[0].labels = ["self-hosted", "Linux"]: only GitHub\'s default '
        "labels (self-hosted, linux, x64), which every self-hosted runner carries"
    ) in message
    # On GitLab they are tags like any other.
    run_program(
        {RUNNERS: [{"name": "gl-gpu", "platform": "gitlab", "labels": ["linux"], "maxRunners": 1}]}
    )


@pytest.mark.parametrize(
    "key",
    [
        "-----BEGIN RSA PRIVATE KEY-----\\nMIIEfake\\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\n",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEfake\n-----END PRIVATE KEY-----\n",
    ],
    ids=["one line with literal \\n", "only the BEGIN line", "END of another kind"],
)
def test_a_github_app_key_arc_cannot_sign_with_is_refused_unshown(key):
    app = {"appId": "123456", "installationId": "7890123", "privateKey": key}
    message = rejected(runner(engine="arc"), secrets={TOKENS: {"cml-runner": app}})
    assert "gpu-runners:runnerTokens.cml-runner.privateKey = [secret]" in message
    assert "MIIEfake" not in message


@pytest.mark.parametrize(
    ("selector", "pool_changes", "missing"),
    [
        ({"gpu": "true", "team": "vision"}, {}, "team=vision"),
        (
            {"gpu": "true", "topology.kubernetes.io/zone": "europe-west6-c"},
            {},
            "topology.kubernetes.io/zone=europe-west6-c",
        ),
        (
            {"cloud.google.com/gke-nodepool": "system"},
            {"onDemandFallback": False},
            "cloud.google.com/gke-nodepool=system",
        ),
    ],
    ids=["a label no pool sets", "a zone of the region the class has not", "the system pool"],
)
def test_a_node_selector_no_pool_satisfies_is_refused(selector, pool_changes, missing):
    message = rejected({**runner(nodeSelector=selector), GPU_POOL: pool_changes})
    assert "gpu-runners:runners[0].nodeSelector = " in message
    assert f"the gpuPool nodes it must land on carry no {missing}" in message


@pytest.mark.parametrize(
    "label",
    [
        "cloud.google.com/gke-accelerator",
        "cloud.google.com/gke-spot",
        "node.kubernetes.io/instance-type",
        "cloud.google.com/compute-class",
    ],
)
def test_a_gpu_runner_selecting_what_its_compute_class_decides_is_refused(label):
    # GKE rejects a pod that selects a ComputeClass and such a label ("About custom
    # ComputeClasses"): refused before anything is created, naming the way to choose instead.
    message = rejected(runner(nodeSelector={"gpu": "true", label: "x"}))
    assert "gpu-runners:runners[0].nodeSelector = {" in message
    assert f"selects {label}, which a GPU runner's pods cannot" in message
    assert "allowed: gpuPool to choose the class" in message


def test_a_gpu_runner_pinning_one_pool_of_its_class_is_refused():
    # It would never reach the class's on-demand fallback.
    message = rejected(runner(nodeSelector={"cloud.google.com/gke-nodepool": "gpu"}))
    assert "gpu-runners:runners[0].nodeSelector = " in message
    assert "pins the node pool 'gpu' of class 'gpu', whose pods then never reach" in message
    # A class with one pool may be pinned.
    one_pool = {"onDemandFallback": False}
    run_program(
        {**runner(nodeSelector={"cloud.google.com/gke-nodepool": "gpu"}), GPU_POOL: one_pool}
    )


@pytest.mark.parametrize(
    "label", ["gpu-runners/on-demand-fallback", "cloud.google.com/compute-class", "gpu"]
)
def test_a_label_the_pools_set_themselves_is_refused_in_a_pools_labels(label):
    message = rejected({GPU_POOL: {"spot": False, "labels": {label: "true"}}})
    assert (
        f'gpu-runners:gpuPool.labels = {{"{label}": "true"}}: the \'{label}\' label is set by '
        in message
    )


def test_a_cpu_runner_may_still_select_spot_nodes():
    selector = {"gpu": "false", "cloud.google.com/gke-spot": "true"}
    cpu = {"gpus": 0, "mode": "always", "replicas": 1, "nodeSelector": selector}
    run_program({**runner(**cpu), "gpu-runners:cpuPool": {"spot": True}})


def test_a_node_selector_the_pool_satisfies_is_accepted():
    selector = {
        "gpu": "true",
        "team": "vision",
        "topology.kubernetes.io/zone": "europe-west6-b",
        # A GKE label this stack does not track is left to GKE.
        "cloud.google.com/gke-os-distribution": "cos",
    }
    run_program({**runner(nodeSelector=selector), GPU_POOL: {"labels": {"team": "vision"}}})


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"repository": "https://gitlab.com/ml-team/churn-model"}, "a repository on gitlab.com"),
        ({"engine": "gitlab-runner"}, "the engine gitlab-runner"),
    ],
)
def test_a_gitlab_runner_left_on_the_default_platform_is_told_to_set_it(fields, why):
    message = rejected(runner(labels=["gpu"], **fields))
    assert (
        f"gpu-runners:runners[0].platform is not set, so github, but the runner names {why}; "
        "run `pulumi config set --path 'runners[0].platform' gitlab`"
    ) in message


def test_a_tag_yaml_read_as_a_number_gets_no_wrong_hint():
    message = rejected(runner(imageTag=0.20))
    assert "gpu-runners:runners[0].imageTag = 0.2: should be text; YAML read a number" in message
    assert '"0.2"' not in message


def test_a_label_that_looks_like_a_classic_token_is_refused_unshown():
    message = rejected(runner(labels=["gpu", CLASSIC_TOKEN]))
    assert "gpu-runners:runners[0].labels[1] = '[secret]': looks like a token" in message
    assert CLASSIC_TOKEN not in message


def test_a_repository_that_is_no_url_is_named_not_a_crash():
    message = rejected(runner(repository="https://[::1/g/p"))
    assert "gpu-runners:runners[0].repository = 'https://[::1/g/p'" in message


def test_always_on_cpu_runners_the_cpu_pool_can_never_hold_are_refused():
    message = rejected(runner(gpus=0, cpu="500m", mode="always", replicas=5000))
    assert "gpu-runners:runners[0].replicas = 5000: always-on CPU runners would ask for 2500" in (
        message
    )
    assert "cpuPool.maxNodes 2" in message
