"""gpu-runners: settings -> APIs -> CI access -> GKE cluster -> runner identity -> runners;
or, on a cluster the stack does not make (existingCluster): settings -> (on GKE, runner
identity) -> runners."""

import pulumi
import pulumi_kubernetes as k8s

from infra import settings as stack_settings
from infra.engines.arc import ArcController
from infra.engines.arc_runner import ArcRunner, ArcRunnerArgs
from infra.engines.cml_runner import CmlRunner, CmlRunnerArgs, OnDemandScaling
from infra.engines.gitlab_runner import GitlabRunner, GitlabRunnerArgs
from infra.engines.keda import Keda
from infra.engines.runner_base import (
    SANDBOX_RUNTIME_CLASS,
    SYSTEM_NODES,
    GpuClassPlacement,
    Registries,
    RunnerTarget,
)
from infra.engines.warm_capacity import WarmCapacity, WarmCapacityArgs, WarmNamespace
from infra.gcp.apis import CI_APIS, IDENTITY_APIS, STACK_APIS, ProjectApis
from infra.gcp.ci import CiDeployer, CiDeployerArgs, DeployerClusterAdmin, PreviewerReads
from infra.gcp.cluster import GpuCluster, GpuClusterArgs
from infra.gcp.identity import KubernetesServiceAccount, RunnerIdentity, RunnerIdentityArgs
from infra.gcp.registry import ImageMirror, PackageCache

settings = stack_settings.load()

runner_accounts = [
    # Each runner's namespace and Kubernetes service account are named after the runner.
    KubernetesServiceAccount(namespace=r.name, name=r.name, trusted=r.trust == "trusted")
    for r in settings.runners
]
existing = settings.existing_cluster


def ci_deployer(makes_cluster: bool, opts: pulumi.ResourceOptions) -> CiDeployer | None:
    """CI's previewer and deployer, when the stack grants CI access."""
    ci = settings.ci
    if ci is None or not ci.enabled:
        return None
    return CiDeployer(
        "ci",
        CiDeployerArgs(
            project=settings.project,
            pool_id=ci.pool_id,
            github_repository=ci.github_repository,
            gitlab_project=ci.gitlab_project,
            gitlab_url=ci.gitlab_url,
            github_repository_id=ci.github_repository_id,
            github_owner_id=ci.github_owner_id,
            gitlab_project_id=ci.gitlab_project_id,
            default_branch=ci.default_branch,
            state_bucket=ci.state_bucket,
            secrets_key=ci.secrets_key,
            makes_cluster=makes_cluster,
        ),
        opts=opts,
    )


def ci_apis() -> dict[str, str]:
    """The APIs CI access needs, when the stack grants it."""
    return CI_APIS if settings.ci is not None and settings.ci.enabled else {}


def made_cluster() -> tuple[RunnerTarget, RunnerIdentity, GpuCluster, CiDeployer | None]:
    """The GKE cluster the stack makes, its Google side, and what the runners get there."""
    apis = ProjectApis("apis", settings.project, STACK_APIS | ci_apis())
    # Every Google Cloud resource waits for the APIs it is created through.
    after_apis = pulumi.ResourceOptions(depends_on=[apis])
    deployer = ci_deployer(makes_cluster=True, opts=after_apis)
    ci_members = [deployer.member] if deployer else []
    cluster = GpuCluster(
        "gke",
        GpuClusterArgs(
            project=settings.project,
            cluster=settings.cluster,
            system_pool=settings.system_pool,
            gpu_classes=settings.gpu_classes,
            cpu_pool=settings.cpu_pool if any(r.gpus == 0 for r in settings.runners) else None,
            node_account_users=ci_members,
        ),
        opts=after_apis,
    )
    identity = RunnerIdentity(
        "runner-identity",
        RunnerIdentityArgs(
            project=settings.project,
            workload_pool=cluster.workload_pool,
            cluster_name=settings.cluster.name,
            bucket_location=settings.cluster.region,
            existing_bucket=settings.dvc_remote.bucket,
            force_destroy_bucket=settings.dvc_remote.force_destroy,
            kubernetes_service_accounts=runner_accounts,
            account_admins=ci_members,
        ),
        opts=after_apis,
    )
    # Runner and job images, pulled through the cluster's region.
    mirror = ImageMirror(
        "images",
        project=settings.project,
        region=settings.cluster.region,
        cluster_name=settings.cluster.name,
        readers={"nodes": cluster.node_member},
        admins=ci_members,
        opts=after_apis,
    )
    # Python packages, pulled through the cluster's region, for the runner accounts only.
    runner_members = {"runner": identity.email, "trusted": identity.trusted_email}
    packages = PackageCache(
        "packages",
        project=settings.project,
        region=settings.cluster.region,
        cluster_name=settings.cluster.name,
        readers={
            name: pulumi.Output.concat("serviceAccount:", email)
            for name, email in runner_members.items()
            if email is not None
        },
        admins=ci_members,
        opts=after_apis,
    )
    # What a preview reads in the cluster, for the previewer.
    if deployer:
        PreviewerReads(
            "ci-previewer",
            deployer.previewer_email,
            opts=pulumi.ResourceOptions(providers=[cluster.provider]),
        )
    target = RunnerTarget(
        provider=cluster.provider,
        system_nodes=SYSTEM_NODES,
        registries=mirror.registries,
        package_index=packages.index,
        services_range=cluster.services_range,
        # Runner pods pull their images through the mirror (its repositories and the nodes'
        # grants), install packages through the cache, and select a ComputeClass, which
        # exists first.
        ready=[mirror, packages, *cluster.compute_classes.values()],
        api_server_ports=(443,),
    )
    return target, identity, cluster, deployer


def existing_cluster() -> tuple[RunnerTarget, RunnerIdentity | None, CiDeployer | None]:
    """A cluster the stack does not make: reached through a kubeconfig context; on GKE, the
    runners' Google accounts and DVC bucket, and CI's access."""
    provider = k8s.Provider(
        "existing-cluster",
        context=settings.kube_context,
        # "" keeps the SDK from storing $KUBECONFIG's path in the state: the provider then loads
        # the kubeconfig as kubectl does (every file of $KUBECONFIG), on whichever machine runs
        # it. With no kubeconfig given, pulumi-kubernetes cannot tell clusters apart
        # (pulumi-kubernetes#2771), so the stack names the cluster: on GKE by its project,
        # location and name, elsewhere by the context. Only a change of that replaces the
        # stack's objects; another context for the same GKE cluster is an update.
        kubeconfig="",
        cluster_identifier=stack_settings.gke_context(settings.project, existing.gke)
        if existing.gke
        else settings.kube_context,
    )
    identity = deployer = None
    if existing.gke is not None:
        apis = ProjectApis("apis", settings.project, IDENTITY_APIS | ci_apis())
        after_apis = pulumi.ResourceOptions(depends_on=[apis])
        deployer = ci_deployer(makes_cluster=False, opts=after_apis)
        identity = RunnerIdentity(
            "runner-identity",
            RunnerIdentityArgs(
                project=settings.project,
                # The pool exists: GKE made it with the cluster's Workload Identity.
                workload_pool=f"{settings.project}.svc.id.goog",
                cluster_name=existing.gke.name,
                bucket_location=existing.gke.region,
                existing_bucket=settings.dvc_remote.bucket,
                force_destroy_bucket=settings.dvc_remote.force_destroy,
                kubernetes_service_accounts=runner_accounts,
                account_admins=[deployer.member] if deployer else [],
            ),
            opts=after_apis,
        )
        if deployer:
            in_cluster = pulumi.ResourceOptions(providers=[provider])
            DeployerClusterAdmin("ci-deployer", deployer.email, opts=in_cluster)
            PreviewerReads("ci-previewer", deployer.previewer_email, opts=in_cluster)
    target = RunnerTarget(
        provider=provider,
        system_nodes=existing.system_node_labels,
        registries=Registries(),
        package_index=None,
        services_range=None,
        ready=[],
        # A NetworkPolicy sees the API server's own port, behind the Service's 443: 6443 on
        # kind, k3d and kubeadm clusters, 8443 on minikube.
        api_server_ports=(443, 6443, 8443),
    )
    return target, identity, deployer


if existing is None:
    target, identity, cluster, deployer = made_cluster()
else:
    target, identity, deployer = existing_cluster()
    cluster = None

cml_runners = [r for r in settings.runners if r.runner_engine == "cml"]
arc_runners = [r for r in settings.runners if r.runner_engine == "arc"]
gitlab_runners = [r for r in settings.runners if r.runner_engine == "gitlab-runner"]
on_cluster = pulumi.ResourceOptions(providers=[target.provider])
runner_options = pulumi.ResourceOptions.merge(
    on_cluster, pulumi.ResourceOptions(depends_on=list(target.ready))
)
gpu_classes = {c.name: c for c in settings.gpu_classes}

warm_classes = [c for c in settings.gpu_classes if c.settings.warm_hours is not None]
# KEDA, once, on the system pool, when a CML runner needs it to start its pods or a GPU class
# has warm hours.
keda = (
    Keda("keda", node_selector=target.system_nodes, opts=on_cluster)
    if cml_runners or warm_classes
    else None
)
# actions-runner-controller, once, on the system pool, when a runner uses engine arc.
arc = (
    ArcController("arc", node_selector=target.system_nodes, opts=on_cluster)
    if arc_runners
    else None
)


def runner_gpu_class(runner: stack_settings.RunnerSettings) -> GpuClassPlacement | None:
    """Where a GPU runner's pods land: its class (the stack's only one when it names none)."""
    gpu_class = stack_settings.class_named(gpu_classes, runner.gpu_pool) if runner.gpus else None
    if gpu_class is None:
        return None
    return GpuClassPlacement(gpu_class.name)


def runner_node_labels(runner: stack_settings.RunnerSettings) -> dict[str, str] | None:
    """On a cluster the stack does not make, how its GPU or CPU nodes are labelled."""
    if existing is None:
        return None
    return existing.gpu_node_labels if runner.gpus else existing.cpu_node_labels


def runner_base_args(runner: stack_settings.RunnerSettings) -> dict:
    """What every engine's arguments (RunnerBaseArgs) take from a runner's settings."""
    return {
        "repository": runner.repository,
        "labels": runner.labels,
        "cpu": runner.cpu,
        "memory": runner.memory,
        "gpus": runner.gpus,
        "node_selector": runner.node_selector,
        "gpu_class": runner_gpu_class(runner),
        "node_labels": runner_node_labels(runner),
        "google_service_account": identity.email_for(runner.trust == "trusted")
        if identity
        else None,
        "registries": target.registries,
        "package_index": target.package_index,
        "services_range": target.services_range,
        "runtime_class": SANDBOX_RUNTIME_CLASS
        if runner.gpus == 0 and settings.cpu_pool and settings.cpu_pool.sandbox
        else None,
        "trusted": runner.trust == "trusted",
    }


runners: dict[str, CmlRunner | ArcRunner | GitlabRunner] = {
    runner.name: CmlRunner(
        runner.name,
        CmlRunnerArgs(
            **runner_base_args(runner),
            platform=runner.platform,
            token=settings.runner_credentials[runner.name],
            replicas=runner.replica_count,
            idle_timeout_seconds=runner.idle_timeout_seconds,
            image_tag=runner.image_tag,
            on_demand=OnDemandScaling(max_runners=runner.max_runner_count)
            if runner.scaling_mode == "on-demand"
            else None,
        ),
        opts=pulumi.ResourceOptions.merge(
            runner_options, pulumi.ResourceOptions(depends_on=[keda.release])
        ),
    )
    for runner in cml_runners
}
runners |= {
    runner.name: ArcRunner(
        runner.name,
        ArcRunnerArgs(
            **runner_base_args(runner),
            credentials=settings.runner_credentials[runner.name],
            min_runners=runner.runner_range[0],
            max_runners=runner.runner_range[1],
            image=runner.image,
            listener_node_selector=target.system_nodes,
        ),
        # Destroyed before the controller, which must clean the scale set up on GitHub.
        opts=pulumi.ResourceOptions.merge(
            runner_options, pulumi.ResourceOptions(depends_on=[arc.release])
        ),
    )
    for runner in arc_runners
}
runners |= {
    runner.name: GitlabRunner(
        runner.name,
        GitlabRunnerArgs(
            **runner_base_args(runner),
            credentials=settings.runner_credentials[runner.name],
            max_runners=runner.max_runner_count,
            image_tag=runner.image_tag,
            manager_node_selector=target.system_nodes,
            api_server_ports=target.api_server_ports,
            gitlab_url=runner.gitlab_url,
        ),
        opts=runner_options,
    )
    for runner in gitlab_runners
}

# Warm hours: each such class's placeholders, which pull its runners' images ahead.
if warm_classes:
    warm_namespace = WarmNamespace("warm", opts=on_cluster)
    for gpu_class in warm_classes:
        images = [
            image
            for runner in settings.runners
            if (placement := runner_gpu_class(runner)) and placement.name == gpu_class.name
            for image in runners[runner.name].images
        ]
        WarmCapacity(
            f"warm-{gpu_class.name}",
            WarmCapacityArgs(
                gpu_class=GpuClassPlacement(gpu_class.name),
                schedule=gpu_class.settings.warm_hours,
                registries=target.registries,
                images=images,
            ),
            opts=pulumi.ResourceOptions.merge(
                runner_options, pulumi.ResourceOptions(depends_on=[warm_namespace, keda.release])
            ),
        )

if cluster:
    pulumi.export("clusterName", cluster.name)
    pulumi.export("clusterEndpoint", cluster.endpoint)
    pulumi.export("clusterLocation", cluster.location)
    pulumi.export("nodeServiceAccount", cluster.node_service_account)
    pulumi.export("kubeconfig", cluster.kubeconfig)
else:
    pulumi.export("kubeContext", settings.kube_context)
if identity:
    pulumi.export("runnerServiceAccount", identity.email)
    if identity.trusted_email is not None:
        pulumi.export("trustedRunnerServiceAccount", identity.trusted_email)
    pulumi.export("dvcRemoteUrl", identity.bucket_name.apply(lambda bucket: f"gs://{bucket}"))
pulumi.export(
    "runners",
    {
        name: {
            "namespace": deployment.namespace,
            "workload": deployment.workload,
            "labels": deployment.labels,
        }
        for name, deployment in runners.items()
    },
)
if deployer:
    pulumi.export("ciDeployerServiceAccount", deployer.email)
    pulumi.export("ciPreviewerServiceAccount", deployer.previewer_email)
    pulumi.export("ciWorkloadIdentityProviders", deployer.provider_names)
