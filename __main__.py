"""gpu-runners: stack settings -> GKE cluster with a GPU pool -> stack outputs."""

import pulumi

from infra import settings as stack_settings
from infra.cluster import GpuCluster, GpuClusterArgs

settings = stack_settings.load()

cluster = GpuCluster(
    "gke",
    GpuClusterArgs(
        project=settings.project,
        cluster=settings.cluster,
        system_pool=settings.system_pool,
        gpu_pool=settings.gpu_pool,
    ),
)

pulumi.export("clusterName", cluster.name)
pulumi.export("clusterEndpoint", cluster.endpoint)
pulumi.export("clusterLocation", cluster.location)
pulumi.export("nodeServiceAccount", cluster.node_service_account)
pulumi.export("kubeconfig", cluster.kubeconfig)
