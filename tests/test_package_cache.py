"""The package cache (issue 28): PyPI through Artifact Registry in the cluster's region, read by
the runner accounts only, and every engine's runner and job pods installing through it as
their Google account, with pip's and uv's standard settings."""

import json
import os
import stat
import tomllib

import pytest
from pip._internal.network import auth as pip_auth

from infra import job_start
from infra.engines.runner_base import KEYRING_PATH, keyring_script
from tests.harness import REPO, TEST_PROJECT_ID, TOKENS, reveal, run_program
from tests.test_containment import job_pods
from tests.test_existing_cluster import job_pod as local_job_pod

REPOSITORY = "gcp:artifactregistry/repository:Repository"
READER = "gcp:artifactregistry/repositoryIamMember:RepositoryIamMember"
INDEX = f"europe-west6-python.pkg.dev/{TEST_PROJECT_ID}/mlops-kubernetes-pypi/simple/"
SETTINGS = {
    "PIP_INDEX_URL": f"https://oauth2accesstoken@{INDEX}",
    "PIP_KEYRING_PROVIDER": "subprocess",
    "UV_DEFAULT_INDEX": f"https://oauth2accesstoken@{INDEX}",
    "UV_KEYRING_PROVIDER": "subprocess",
}
HOST = "europe-west6-python.pkg.dev"
KEYRING_MOUNT = {
    "name": "keyring",
    "mountPath": "/usr/local/sbin/keyring",
    "subPath": "keyring",
    "readOnly": True,
}
# A runner on every engine, trusted and not: tests/test_containment.py's stack.
EVERY_ENGINE = {
    "gpu-runners:runners": [
        {"name": "cml-gpu", "labels": ["cml-gpu"]},
        {"name": "cml-main", "labels": ["cml-main"], "trust": "trusted"},
        {"name": "arc-gpu", "engine": "arc", "labels": ["arc-gpu"]},
        {"name": "gl-gpu", "platform": "gitlab", "labels": ["gl-gpu"]},
    ]
}
RUNNER_TOKENS = {
    "cml-gpu": "ghp_" + "a" * 36,
    "cml-main": "ghp_" + "b" * 36,
    "arc-gpu": "ghp_" + "c" * 36,
    "gl-gpu": "glrt-" + "d" * 20,
}


@pytest.fixture(scope="module")
def every_engine():
    return run_program(EVERY_ENGINE, secrets={TOKENS: RUNNER_TOKENS})


def test_the_cache_is_pypi_in_the_clusters_region(every_engine):
    (repository,) = [r for r in every_engine.of_type(REPOSITORY) if r.name == "packages"]
    inputs = repository.inputs
    assert (inputs["format"], inputs["mode"]) == ("PYTHON", "REMOTE_REPOSITORY")
    assert inputs["location"] == "europe-west6"
    assert inputs["repositoryId"] == "mlops-kubernetes-pypi"
    assert inputs["remoteRepositoryConfig"]["pythonRepository"] == {"publicRepository": "PYPI"}


def test_only_the_runner_accounts_may_read_it(every_engine):
    grants = [
        g.inputs for g in every_engine.of_type(READER) if g.inputs["repository"].endswith("pypi")
    ]
    assert {g["role"] for g in grants} == {"roles/artifactregistry.reader"}
    assert sorted(g["member"] for g in grants) == [
        f"serviceAccount:mlops-kubernetes-runner@{TEST_PROJECT_ID}.iam.gserviceaccount.com",
        f"serviceAccount:mlops-kubernetes-trusted@{TEST_PROJECT_ID}.iam.gserviceaccount.com",
    ]
    project_roles = {
        r.inputs["role"]
        for r in every_engine.of_type("gcp:projects/iAMMember:IAMMember")
        if "runner@" in r.inputs["member"] or "trusted@" in r.inputs["member"]
    }
    assert not any(role.startswith("roles/artifactregistry.") for role in project_roles)


def test_runner_and_job_pods_of_every_engine_install_through_the_cache(every_engine):
    pods = job_pods(every_engine)
    for name in ("cml-gpu", "cml-main", "arc-gpu"):
        (container,) = pods[name]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert SETTINGS.items() <= env.items(), name
        assert KEYRING_MOUNT in container["volumeMounts"], name
        (volume,) = [v for v in pods[name]["volumes"] if v["name"] == "keyring"]
        assert volume["configMap"] == {"name": f"{name}-package-index", "defaultMode": 0o555}
        config_map = every_engine.one("kubernetes:core/v1:ConfigMap", f"{name}-package-index")
        assert config_map.inputs["data"] == {"keyring": keyring_script(HOST)}
    # GitLab's job pods: the variables in each job's environment, the keyring in its build
    # container through the pod patch.
    values = reveal(every_engine.one("kubernetes:helm.sh/v3:Release", "gl-gpu").inputs["values"])
    (runner,) = tomllib.loads(values["runners"]["config"])["runners"]
    assert runner["environment"] == [f"{k}={v}" for k, v in SETTINGS.items()]
    patch = json.loads(runner["kubernetes"]["pod_spec"][0]["patch"])
    assert KEYRING_MOUNT in patch["containers"][0]["volumeMounts"]
    assert patch["volumes"] == [
        {"name": "keyring", "configMap": {"name": "gl-gpu-package-index", "defaultMode": 0o555}}
    ]


def test_a_stack_on_a_cluster_it_does_not_make_leaves_pip_alone():
    pod = local_job_pod(run_program(stack="local"), "local-cml")
    (container,) = pod["containers"]
    assert not {e["name"] for e in container["env"]} & SETTINGS.keys()
    assert "volumes" not in pod


@pytest.fixture
def node_tools(tmp_path, monkeypatch):
    """A node's directories under tmp_path: the keyring command where the stack mounts it, a
    `curl` that answers as the GKE metadata server, and /usr/local/bin as the interpreter's
    scripts directory, as in the python images and Debian's and Ubuntu's newer Pythons."""
    mounted = tmp_path / KEYRING_PATH.lstrip("/")
    mounted.parent.mkdir(parents=True)
    mounted.write_text(keyring_script(HOST))
    mounted.chmod(stat.S_IRWXU)
    scripts = tmp_path / "usr/local/bin"
    scripts.mkdir(parents=True)
    calls = tmp_path / "curl-calls"
    curl = scripts / "curl"
    curl.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n'
        'printf \'{"access_token":"ya29.short-lived","expires_in":3599,"token_type":"Bearer"}\'\n'
    )
    curl.chmod(stat.S_IRWXU)
    for tool in ("sed", "sh"):
        for directory in ("/usr/bin", "/bin"):
            if os.path.exists(f"{directory}/{tool}") and not (scripts / tool).exists():
                (scripts / tool).symlink_to(f"{directory}/{tool}")
    monkeypatch.setenv("PATH", f"{scripts}:{mounted.parent}")
    real_get_path = pip_auth.sysconfig.get_path
    monkeypatch.setattr(
        pip_auth.sysconfig,
        "get_path",
        lambda name, *a, **k: str(scripts) if name == "scripts" else real_get_path(name, *a, **k),
    )
    pip_auth.get_keyring_provider.cache_clear()
    yield calls, mounted, scripts
    pip_auth.get_keyring_provider.cache_clear()


def test_pip_signs_in_to_the_cache_with_the_pods_google_token(node_tools):
    calls, _, _ = node_tools
    # pip's own keyring provider, as PIP_KEYRING_PROVIDER=subprocess makes it: it finds
    # `keyring` on PATH and asks it for the password of the index URL's user.
    provider = pip_auth.get_keyring_provider("subprocess")
    assert isinstance(provider, pip_auth.KeyRingCliProvider)
    url = SETTINGS["PIP_INDEX_URL"].replace("oauth2accesstoken@", "")
    assert provider.get_auth_info(url, "oauth2accesstoken") == (
        "oauth2accesstoken",
        "ya29.short-lived",
    )
    # uv asks with the index's host.
    assert provider.get_auth_info(HOST, "oauth2accesstoken")[1] == "ya29.short-lived"
    asked = calls.read_text()
    assert "Metadata-Flavor: Google" in asked
    assert (
        "metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
        in (asked)
    )
    # Another user, or another index (an --extra-index-url naming the same user), gets no
    # password, and the metadata server is not asked.
    calls.unlink()
    assert provider.get_auth_info(url, "someone") is None
    assert provider.get_auth_info("https://other.example/simple/", "oauth2accesstoken") is None
    assert provider.get_auth_info("other.example", "oauth2accesstoken") is None
    assert not calls.exists()


def test_pip_would_not_run_a_keyring_in_its_own_scripts_directory(node_tools):
    # Why the command is not mounted in /usr/local/bin: pip skips its interpreter's scripts
    # directory when it looks for `keyring`, and would find none.
    _, mounted, scripts = node_tools
    mounted.rename(scripts / "keyring")
    pip_auth.get_keyring_provider.cache_clear()
    assert not isinstance(pip_auth.get_keyring_provider("subprocess"), pip_auth.KeyRingCliProvider)


def test_the_pages_download_figures_are_the_models():
    page = (REPO / "docs" / "speed.md").read_text()
    size = job_start.PYTORCH_CUDA_GB
    assert f"downloads about {size:g} GB of wheels" in page
    assert f"| | Rate | {size:g} GB of wheels |" in page
    for where, rate, cached in (
        ("From PyPI over the internet", job_start.INTERNET_MB_PER_S, False),
        (
            "From the cache in the region, once it holds the files",
            job_start.REGIONAL_CACHE_MB_PER_S,
            True,
        ),
    ):
        minutes = job_start.download_minutes(size, cached)
        assert f"| {where} | {rate} MB/s (assumed) | {minutes:.2f} minutes |" in page
