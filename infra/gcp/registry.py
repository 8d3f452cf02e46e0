"""ImageMirror: Artifact Registry remote repositories that pull runner and job images through
the cluster's own region."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.engines.runner_base import PackageIndex, Registries
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
    "roles/artifactregistry.admin": (
        "the image mirror's and the package cache's repositories, and who may read them"
    ),
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
            remote_repository(
                f"{name}-{upstream_name}",
                RemoteRepositoryArgs(
                    project=project,
                    region=region,
                    repository_id=repository_id(cluster_name, upstream_name),
                    format="DOCKER",
                    description=f"gpu-runners ({cluster_name}): pulls through to {upstream_name}",
                    upstream={"description": upstream_name, **upstream},
                    readers=readers,
                    admins=admins,
                ),
                child,
                kept_for_admins,
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


@dataclass(frozen=True)
class RemoteRepositoryArgs:
    """An Artifact Registry remote repository, and who may read and manage it."""

    project: str
    region: str
    repository_id: str
    format: str
    description: str
    upstream: dict
    """remote_repository_config."""
    readers: Mapping[str, pulumi.Input[str]]
    admins: Sequence[pulumi.Input[str]]


def remote_repository(
    name: str,
    args: RemoteRepositoryArgs,
    child: pulumi.ResourceOptions,
    kept_for_admins: pulumi.ResourceOptions,
) -> gcp.artifactregistry.Repository:
    """The repository, with its grants on the repository itself, not the project: its readers
    read it only, and CI manages it only."""
    repository = gcp.artifactregistry.Repository(
        name,
        project=args.project,
        location=args.region,
        repository_id=args.repository_id,
        format=args.format,
        mode="REMOTE_REPOSITORY",
        description=args.description,
        remote_repository_config=args.upstream,
        opts=kept_for_admins,
    )
    members = [(reader, READER, member, child) for reader, member in args.readers.items()]
    members += [
        (f"admin-{i}", ADMIN, member, kept_for_admins) for i, member in enumerate(args.admins)
    ]
    for role_name, role, member, options in members:
        gcp.artifactregistry.RepositoryIamMember(
            f"{name}-{role_name}",
            project=args.project,
            location=args.region,
            repository=repository.repository_id,
            role=role,
            member=member,
            opts=options,
        )
    return repository


# PyPI, cached in the cluster's region: the Python remote repository of Artifact Registry
# (pulumi-gcp, artifactregistry.Repository: format PYTHON, mode REMOTE_REPOSITORY,
# remote_repository_config.python_repository.public_repository PYPI).
PYPI = "pypi"


class PackageCache(pulumi.ComponentResource):
    """A pull-through cache of PyPI in the cluster's region, which only the runner accounts
    may read (through Workload Identity, runner_base.PackageIndex)."""

    index: PackageIndex

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
        """As ImageMirror: `readers` by name (the runner accounts), `admins` (the CI deployer)
        manage it, and with admins the repository and their grants are protected."""
        super().__init__("gpu-runners:index:PackageCache", name, None, opts)
        repository = repository_id(cluster_name, PYPI)
        remote_repository(
            name,
            RemoteRepositoryArgs(
                project=project,
                region=region,
                repository_id=repository,
                format="PYTHON",
                description=f"gpu-runners ({cluster_name}): pulls through to PyPI",
                upstream={"description": PYPI, "python_repository": {"public_repository": "PYPI"}},
                readers=readers,
                admins=admins,
            ),
            child_options(self, opts),
            child_options(self, opts, protect=bool(admins)),
        )
        # A plain string, as the mirror's hosts (the policy pack and a first preview read it).
        self.index = PackageIndex(f"https://{region}-python.pkg.dev/{project}/{repository}/simple/")
        self.register_outputs({})
