"""ImageMirror: Artifact Registry remote repositories that pull runner and job images through
the cluster's own region."""

from collections.abc import Mapping, Sequence

import pulumi
import pulumi_gcp as gcp

from infra.engines.runner_base import Registries
from infra.gcp.names import repository_id
from infra.options import child_options

# Repository -> its upstream. Remote repositories cache what they pull, so a new node gets a
# multi-gigabyte runner image from its own region instead of Docker Hub (with its anonymous pull
# limits), and GKE image streaming works for them (GKE docs, "Use Image streaming to pull
# container images": standard or remote Artifact Registry repositories).
DOCKER_HUB = "docker-hub"
UPSTREAMS: dict[str, dict] = {
    DOCKER_HUB: {"docker_repository": {"public_repository": "DOCKER_HUB"}},
    # Any registry by URI (`common_repository`, which replaces the deprecated
    # docker_repository.custom_repository): actions-runner-controller's runner image, and
    # GitLab Runner's helper image.
    "ghcr": {"common_repository": {"uri": "https://ghcr.io"}},
    # Artifact Registry validates a remote repository's upstream when it creates one ("Failed to
    # validate remote upstream", terraform-provider-google#20803; the validation came with
    # disable_upstream_validation, #17589). Its remote-repository page lists Docker Hub and
    # ghcr.io among the upstreams, not registry.gitlab.com, so that check is skipped for it
    # (provider 5.26+); pulls are not affected.
    "gitlab": {
        "common_repository": {"uri": "https://registry.gitlab.com"},
        "disable_upstream_validation": True,
    },
}
READER = "roles/artifactregistry.reader"
ADMIN = "roles/artifactregistry.admin"

# Project roles the person running the first `pulumi up` needs for this component.
DEPLOY_ROLES: dict[str, str] = {
    "roles/artifactregistry.admin": "the image mirror's repositories, and who may read them",
}


class ImageMirror(pulumi.ComponentResource):
    """A remote Docker repository per upstream registry, readable by the given members only."""

    registries: Registries
    """Where to pull Docker Hub, ghcr.io and registry.gitlab.com images through."""

    def __init__(
        self,
        name: str,
        project: str,
        region: str,
        cluster_name: str,
        readers: Mapping[str, pulumi.Input[str]],
        admins: Sequence[pulumi.Input[str]] = (),
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """`cluster_name` names the repositories, so that stacks of other clusters in the
        project keep their own; `readers`: a name for each member (the node account) that pulls
        images; `admins`: members (the CI deployer) that manage these repositories, and no
        other. With admins, the repositories and the admins' grants are protected: a
        `destroy --exclude-protected` by such a member keeps them, since creating a repository
        takes a right on the project that it does not have."""
        super().__init__("gpu-runners:index:ImageMirror", name, None, opts)
        child = child_options(self, opts)
        kept_for_admins = child_options(self, opts, protect=bool(admins))
        hosts = {}
        for upstream_name, upstream in UPSTREAMS.items():
            repository = gcp.artifactregistry.Repository(
                f"{name}-{upstream_name}",
                project=project,
                location=region,
                repository_id=repository_id(cluster_name, upstream_name),
                format="DOCKER",
                mode="REMOTE_REPOSITORY",
                description=f"gpu-runners ({cluster_name}): pulls through to {upstream_name}",
                remote_repository_config={"description": upstream_name, **upstream},
                opts=kept_for_admins,
            )
            # On the repository, not the project: the nodes read these images only, and CI
            # manages these repositories only.
            members = [(reader, READER, member, child) for reader, member in readers.items()]
            members += [
                (f"admin-{i}", ADMIN, member, kept_for_admins) for i, member in enumerate(admins)
            ]
            for role_name, role, member, options in members:
                gcp.artifactregistry.RepositoryIamMember(
                    f"{name}-{upstream_name}-{role_name}",
                    project=project,
                    location=region,
                    repository=repository.repository_id,
                    role=role,
                    member=member,
                    opts=options,
                )
            # A plain string, known on a first preview (the policy pack reads image
            # references). Whatever pulls through it waits for this component (depends_on,
            # __main__.py), reader grants included, so no pod starts before its node may pull.
            hosts[upstream_name] = (
                f"{region}-docker.pkg.dev/{project}/{repository_id(cluster_name, upstream_name)}"
            )

        self.registries = Registries(
            docker_hub=hosts[DOCKER_HUB], ghcr=hosts["ghcr"], gitlab=hosts["gitlab"]
        )
        self.register_outputs({})
