"""Runner and job images come through Artifact Registry in the cluster's region."""

import json
import re

import pytest

from tests.harness import MIRROR, TEST_PROJECT_ID, TOKENS, reveal, run_program
from tests.stacks import SHAPES, WITH_CI

REPOSITORY = "gcp:artifactregistry/repository:Repository"
REPOSITORY_READER = "gcp:artifactregistry/repositoryIamMember:RepositoryIamMember"
NODE_MEMBER = f"serviceAccount:mlops-kubernetes-nodes@{TEST_PROJECT_ID}.iam.gserviceaccount.com"
IMAGE = re.compile(r'image(?:"|\b)\s*[:=]\s*\\?"([^"\\]+)')
PUBLIC_REGISTRIES = ("docker.io/", "ghcr.io/", "registry.gitlab.com/", "iterativeai/cml")


@pytest.fixture(scope="module")
def dev():
    return run_program()


REPOSITORIES = {
    "docker-hub": "mlops-kubernetes-docker-hub",
    "ghcr": "mlops-kubernetes-ghcr",
    "gitlab": "mlops-kubernetes-gitlab",
}
PYPI_REPOSITORY = "mlops-kubernetes-pypi"


def test_one_remote_repository_per_upstream_in_the_clusters_region(dev):
    repositories = {
        r.name.removeprefix("images-"): r.inputs
        for r in dev.of_type(REPOSITORY)
        if r.name.startswith("images-")
    }
    # Named after the cluster: another stack's cluster in the project has its own.
    assert {k: v["repositoryId"] for k, v in repositories.items()} == REPOSITORIES
    for repository in repositories.values():
        # The dev cluster is zonal (europe-west6-b); its region holds the mirror.
        assert repository["location"] == "europe-west6"
        assert repository["format"] == "DOCKER"
        assert repository["mode"] == "REMOTE_REPOSITORY"
    upstream = {k: v["remoteRepositoryConfig"] for k, v in repositories.items()}
    assert upstream["docker-hub"]["dockerRepository"] == {"publicRepository": "DOCKER_HUB"}
    assert upstream["ghcr"]["commonRepository"] == {"uri": "https://ghcr.io"}
    assert upstream["gitlab"]["commonRepository"] == {"uri": "https://registry.gitlab.com"}
    # Not a listed upstream: creation would fail its validation (terraform-provider-google#20803).
    assert upstream["gitlab"]["disableUpstreamValidation"] is True
    assert "disableUpstreamValidation" not in upstream["ghcr"]


def test_the_nodes_may_read_the_mirror_and_no_other_repository(dev):
    grants = [g for g in dev.of_type(REPOSITORY_READER) if g.inputs["member"] == NODE_MEMBER]
    assert {g.inputs["repository"] for g in grants} == set(REPOSITORIES.values())
    assert all(g.inputs["role"] == "roles/artifactregistry.reader" for g in grants)
    others = [g for g in dev.of_type(REPOSITORY_READER) if g not in grants]
    assert {g.inputs["repository"] for g in others} == {PYPI_REPOSITORY}
    project_roles = {
        r.inputs["role"]
        for r in dev.of_type("gcp:projects/iAMMember:IAMMember")
        if r.inputs["member"] == NODE_MEMBER
    }
    assert "roles/artifactregistry.reader" not in project_roles
    # Image streaming with a custom node account needs it (GKE docs, "Use Image streaming").
    assert "roles/serviceusage.serviceUsageConsumer" in project_roles


@pytest.mark.parametrize("shape", SHAPES)
def test_every_runner_and_job_image_comes_through_the_mirror(shape):
    program = run_program(SHAPES[shape], secrets={TOKENS: _tokens(SHAPES[shape])})
    images = []
    for resource in program.resources:
        # Pod specs' `"image": "..."`, and config.toml's `image = "..."` / `helper_image = ...`
        # inside a chart value (JSON-escaped quotes there).
        images += IMAGE.findall(json.dumps(reveal(resource.inputs)))
    assert images, shape
    # The mirror is in the cluster's region, whichever the stack's is.
    (region,) = {r.inputs["location"] for r in program.of_type(REPOSITORY)}
    mirror = f"{region}-docker.pkg.dev/{TEST_PROJECT_ID}"
    for image in images:
        assert image.startswith(f"{mirror}/"), image
        assert not image.startswith(PUBLIC_REGISTRIES), image


def test_the_runners_wait_for_the_mirror_and_its_grants(dev):
    scaled_job = dev.one("kubernetes:keda.sh/v1alpha1:ScaledJob", "cml-runner")
    image = scaled_job.inputs["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"{MIRROR}/mlops-kubernetes-docker-hub/iterativeai/cml:0-dvc3-base1-gpu"
    assert dev.waits_for(scaled_job, dev.one(REPOSITORY, "images-docker-hub"))
    # Otherwise the first pull can be refused while the grant is still on its way.
    assert dev.waits_for(scaled_job, dev.one(REPOSITORY_READER, "images-docker-hub-nodes"))


def test_ci_manages_the_four_repositories_and_no_other():
    program = run_program(WITH_CI)
    admins = [
        g
        for g in program.of_type(REPOSITORY_READER)
        if g.inputs["role"] == "roles/artifactregistry.admin"
    ]
    assert {g.inputs["repository"] for g in admins} == {*REPOSITORIES.values(), PYPI_REPOSITORY}
    assert all(
        g.inputs["member"].startswith("serviceAccount:gpu-runners-ci-deployer@") for g in admins
    )
    project_roles = {r.inputs["role"] for r in program.of_type("gcp:projects/iAMMember:IAMMember")}
    assert not any(role.startswith("roles/artifactregistry.") for role in project_roles)


def test_with_ci_the_repositories_and_cis_grants_on_them_survive_a_ci_destroy():
    # CI cannot create a repository (that takes a right on the project), so its
    # `destroy --exclude-protected` must keep them, and its own admin grants with them.
    program = run_program(WITH_CI)
    kept = [r for r in program.of_type(REPOSITORY_READER) if r.name.endswith("-admin-0")]
    assert len(kept) == 4
    assert all(r.protect for r in [*program.of_type(REPOSITORY), *kept])
    # The nodes' read grants are CI's to remove and give again.
    readers = [r for r in program.of_type(REPOSITORY_READER) if r.name.endswith("-nodes")]
    assert len(readers) == 3 and not any(r.protect for r in readers)


def test_without_ci_nothing_in_the_mirror_is_protected(dev):
    assert not any(r.protect for r in [*dev.of_type(REPOSITORY), *dev.of_type(REPOSITORY_READER)])


def _tokens(config: dict) -> dict:
    """A token of the right kind for every runner: GitLab's own runner takes its glrt- token,
    CML on GitLab an access token."""

    def token(runner: dict) -> str:
        if runner.get("platform") != "gitlab":
            return "ghp_" + "x" * 36
        return "glpat-" + "a" * 20 if runner.get("engine") == "cml" else "glrt-" + "r" * 24

    return {
        r["name"]: token(r) for r in config.get("gpu-runners:runners", [{"name": "cml-runner"}])
    }
