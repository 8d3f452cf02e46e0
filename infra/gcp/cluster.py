"""GpuCluster: a GKE Standard cluster with a CPU system pool, the node pools and ComputeClass
of each GPU class, and a CPU runner pool when the stack has CPU runners."""

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s
import yaml

from infra.engines.runner_base import CPU_JOBS_LABEL
from infra.gcp.gpu_classes import compute_class, gpu_node_config, gpu_node_labels
from infra.gcp.iam import grant_ci_account_role, grant_project_roles
from infra.gcp.names import node_account_id
from infra.options import child_options
from infra.settings import ClusterSettings, CpuPoolSettings, GpuClass, SystemPoolSettings

# What a node needs and nothing more. Kubernetes Engine Default Node Service Account is the role
# GKE asks of a custom node account ("Configure GKE node service accounts": "At a minimum, these
# node service accounts must have" it): write logs, metrics and autoscaling metrics, six
# permissions in all. Image streaming also needs Service Usage Consumer of a custom node account
# (GKE docs, "Use Image streaming", requirements). The nodes read images from the stack's
# mirror repositories only, granted on them (infra/gcp/registry.py).
NODE_ROLES: tuple[str, ...] = (
    "roles/container.defaultNodeServiceAccount",
    "roles/serviceusage.serviceUsageConsumer",
)

# After creating or updating a node pool, and whenever it reads the cluster or a pool (every
# refresh), the provider lists the pools' managed instance groups through the Compute API with
# the caller's own credentials (terraform-provider-google-beta, which pulumi-gcp wraps:
# resource_container_node_pool.go flattenNodePool, instanceGroupManagerCache.refreshIfNeeded,
# InstanceGroupManagers.List since 7.3, .Get before; resource_container_cluster.go
# resourceContainerClusterRead -> flattenClusterNodePools -> flattenNodePool). Container Admin
# holds no compute.* permission: "403 Required 'compute.instanceGroupManagers.get'"
# (MinaProtocol/coda-automation#428). Compute Viewer is a predefined, read-only role with both
# (gcloud's reference for `compute instance-groups managed list-instances` names it).
COMPUTE_READS = (
    "read the node pools' instance groups, as the provider does after every pool change and "
    "on every read of the cluster"
)

# Project roles the person running the first `pulumi up` needs for this component.
DEPLOY_ROLES: dict[str, str] = {
    "roles/container.admin": "the cluster, its node pools, and every Kubernetes object in it "
    "(namespaces, Secrets, workloads, and the CRDs and RBAC of the charts it installs)",
    "roles/compute.viewer": COMPUTE_READS,
    "roles/iam.serviceAccountAdmin": "the node account, and who may use it",
    "roles/iam.serviceAccountUser": "create the cluster and pools running as the node "
    "account, which the same run creates (so it is granted on the project)",
    "roles/resourcemanager.projectIamAdmin": "grant the node account its project roles",
}

# Keeps everything but CPU runner pods (which tolerate it) off the CPU runner pool.
CPU_JOBS_TAINT = {"key": CPU_JOBS_LABEL, "value": "true", "effect": "NO_SCHEDULE"}
# The kubelet's unauthenticated read-only port (10255: pod specs, node metrics) stays closed.
# GKE closes it by default only on clusters created at 1.32 or later ("Disable the kubelet
# read-only port"); the field exists since terraform-provider-google 6.2 and updates a pool in
# place (NodePools.Update with KubeletConfig).
KUBELET_CONFIG = {"insecure_kubelet_readonly_port_enabled": "FALSE"}
AUTOSCALING_PROFILE = "OPTIMIZE_UTILIZATION"
# kube-dns-autoscaler's parameters as GKE starts it (`--default-params` of its
# cluster-proportional-autoscaler; the Kubernetes docs' dns-horizontal-autoscaler.yaml carries
# the same four keys), from which the autoscaler creates its ConfigMap when there is none.
GKE_KUBE_DNS_SCALING = {
    "coresPerReplica": 256,
    "nodesPerReplica": 16,
    "preventSinglePointFailure": True,
    "includeUnschedulableNodes": True,
}
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_AUTH_PLUGIN_HINT = (
    "Install gke-gcloud-auth-plugin: gcloud components install gke-gcloud-auth-plugin "
    "(https://cloud.google.com/kubernetes-engine/docs/how-to/cluster-access-for-kubectl)"
)


def kubeconfig_yaml(context: str, endpoint: str, ca_certificate: str) -> str:
    """A kubeconfig for one cluster that authenticates through gke-gcloud-auth-plugin."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": context,
                    "cluster": {
                        "server": f"https://{endpoint}",
                        "certificate-authority-data": ca_certificate,
                    },
                }
            ],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
            "current-context": context,
            "users": [
                {
                    "name": context,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "gke-gcloud-auth-plugin",
                            "installHint": _AUTH_PLUGIN_HINT,
                            "provideClusterInfo": True,
                            "interactiveMode": "Never",
                        }
                    },
                }
            ],
        },
        sort_keys=False,
    )


@dataclass(frozen=True)
class GpuClusterArgs:
    """What GpuCluster builds."""

    project: str
    cluster: ClusterSettings
    system_pool: SystemPoolSettings
    gpu_classes: Sequence[GpuClass]
    """Each a ComputeClass over node pools of its own."""
    cpu_pool: CpuPoolSettings | None
    """The pool of CPU runners, when the stack has any."""
    node_account_users: Sequence[pulumi.Input[str]] = ()
    """Members (the CI deployer) that may create node pools running as the node account.

    These grants are protected: a `pulumi destroy --exclude-protected` keeps them and the
    node account, which such a member could not create again."""


class GpuCluster(pulumi.ComponentResource):
    """A GKE cluster, its node account, a system pool (gpu=false), and for each GPU class a
    ComputeClass and its node pools (gpu=true)."""

    name: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    location: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    node_service_account: pulumi.Output[str]
    node_member: pulumi.Output[str]
    """`serviceAccount:<node account>`, for grants to the nodes."""
    services_range: pulumi.Output[str]
    """The cluster's Service IP range (VPC-native, GKE's default), once the cluster exists."""
    workload_pool: pulumi.Output[str]
    """The cluster's Workload Identity pool, `<project>.svc.id.goog`, once the cluster exists."""
    provider: k8s.Provider
    compute_classes: dict[str, k8s.apiextensions.CustomResource]
    """Each GPU class's ComputeClass, which its runners' pods select."""

    def __init__(
        self, name: str, args: GpuClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("gpu-runners:index:GpuCluster", name, None, opts)
        child = child_options(self, opts)
        settings = args.cluster

        node_sa = gcp.serviceaccount.Account(
            f"{name}-nodes",
            project=args.project,
            account_id=node_account_id(settings.name),
            display_name=f"GKE nodes of {settings.name}",
            opts=child,
        )
        grant_project_roles(f"{name}-nodes", args.project, NODE_ROLES, node_sa.member, child)

        # Creating a node pool that runs as the node account needs actAs on that account only.
        node_account_grants = grant_ci_account_role(
            f"{name}-nodes-user",
            node_sa,
            "roles/iam.serviceAccountUser",
            args.node_account_users,
            child,
        )

        cluster = gcp.container.Cluster(
            name,
            name=settings.name,
            project=args.project,
            location=settings.location,
            # GKE needs a first pool to create the cluster; it is deleted at once and the pools
            # below replace it. It runs as the node account so it needs no default Compute SA.
            remove_default_node_pool=True,
            initial_node_count=1,
            node_config={"service_account": node_sa.email, "oauth_scopes": [CLOUD_PLATFORM_SCOPE]},
            release_channel={"channel": settings.release_channel},
            workload_identity_config={"workload_pool": f"{args.project}.svc.id.goog"},
            enable_shielded_nodes=True,
            **_network_policy_enforcement(settings.dataplane_v2),
            master_authorized_networks_config=_authorized_networks(settings.authorized_networks),
            node_pool_defaults={"node_config_defaults": KUBELET_CONFIG},
            # Removes empty nodes sooner than the default profile, which keeps an unneeded
            # node for 10 minutes: what a GPU node costs after its last job ("GKE cluster
            # autoscaler", autoscaling profiles; upstream FAQ for the 10-minute default).
            # `enabled` is node auto-provisioning, which stays off.
            cluster_autoscaling={"enabled": False, "autoscaling_profile": AUTOSCALING_PROFILE},
            deletion_protection=settings.deletion_protection,
            opts=pulumi.ResourceOptions.merge(
                child,
                pulumi.ResourceOptions(
                    ignore_changes=["nodeConfig", "initialNodeCount"],
                    depends_on=node_account_grants,
                ),
            ),
        )

        pool_options = pulumi.ResourceOptions.merge(
            child,
            pulumi.ResourceOptions(
                ignore_changes=["initialNodeCount"], depends_on=node_account_grants
            ),
        )

        system_pool = self._node_pools(name, args, cluster.name, node_sa.email, pool_options)

        context = f"gke_{args.project}_{settings.location}_{settings.name}"
        self.name = cluster.name
        self.endpoint = cluster.endpoint
        self.location = cluster.location
        self.node_service_account = node_sa.email
        self.node_member = node_sa.member
        self.services_range = cluster.ip_allocation_policy.apply(
            lambda policy: policy.services_ipv4_cidr_block
        )
        self.workload_pool = cluster.workload_identity_config.apply(
            lambda config: config.workload_pool
        )
        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(cluster.endpoint, cluster.master_auth.cluster_ca_certificate).apply(
                lambda parts: kubeconfig_yaml(context, parts[0], parts[1])
            )
        )
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            # Kubernetes objects are created after the system pool, which runs the controllers,
            # and deleted before it. None waits for the GPU pool: runner pods wait for GPU
            # nodes by themselves, and `pulumi up` need not wait minutes for that pool.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[system_pool]),
        )
        self._manage_kube_dns_scaling(name, settings.single_dns_replica)
        on_cluster = pulumi.ResourceOptions(parent=self, provider=self.provider)
        self.compute_classes = {
            c.name: compute_class(f"{name}-{c.name}-class", c, on_cluster) for c in args.gpu_classes
        }
        self.register_outputs(
            {
                "name": self.name,
                "endpoint": self.endpoint,
                "location": self.location,
                "kubeconfig": self.kubeconfig,
                "nodeServiceAccount": self.node_service_account,
            }
        )

    def _node_pools(
        self,
        name: str,
        args: GpuClusterArgs,
        cluster_name: pulumi.Output[str],
        node_account: pulumi.Output[str],
        opts: pulumi.ResourceOptions,
    ) -> gcp.container.NodePool:
        """The system pool, each GPU class's pools and (with CPU runners) the CPU runner pool,
        running as the node account; the system pool, which the controllers need, is
        returned."""

        def node_pool(
            pool: str,
            zones: Sequence[str],
            initial_nodes: int,
            size: tuple[int, int],
            location_policy: str,
            node_config: dict,
            auto_repair: bool = True,
        ) -> gcp.container.NodePool:
            """A pool of this cluster, autoscaled between size[0] and size[1] nodes."""
            return gcp.container.NodePool(
                f"{name}-{pool}",
                name=pool,
                project=args.project,
                cluster=cluster_name,
                location=args.cluster.location,
                node_locations=list(zones),
                initial_node_count=initial_nodes,
                autoscaling={
                    "total_min_node_count": size[0],
                    "total_max_node_count": size[1],
                    "location_policy": location_policy,
                },
                management={"auto_repair": auto_repair, "auto_upgrade": True},
                node_config=node_config,
                opts=opts,
            )

        system = args.system_pool
        system_pool = node_pool(
            "system",
            system.zones,
            1,
            (system.min_nodes, system.max_nodes),
            "BALANCED",
            _node_config(node_account, system.machine_type, system.disk_size_gb, system.node_labels)
            | {"spot": system.spot},
        )
        for gpu_class in args.gpu_classes:
            gpu = gpu_class.settings
            for pool in gpu_class.node_pools:
                node_pool(
                    pool.name,
                    gpu.zones,
                    0,
                    (pool.min_nodes, pool.max_nodes),
                    # ANY takes a GPU in whichever zone has one, which matters for scarce GPUs
                    # and Spot: GKE's autoscaler backs a zone off after a stockout and tries
                    # the pool's other zones before the class's next pool.
                    "ANY",
                    _node_config(
                        node_account,
                        gpu.machine_type,
                        gpu.disk_size_gb,
                        gpu_node_labels(gpu_class, pool),
                    )
                    | gpu_node_config(gpu_class, pool),
                    # Flex-start pools run without auto-repair, as GKE creates them.
                    auto_repair=not pool.flex_start,
                )
        cpu = args.cpu_pool
        if cpu is not None:
            node_pool(
                "cpu",
                cpu.zones or system.zones,
                0,
                (cpu.min_nodes, cpu.max_nodes),
                "ANY",
                _node_config(node_account, cpu.machine_type, cpu.disk_size_gb, cpu.node_labels)
                | {"spot": cpu.spot, "taints": [CPU_JOBS_TAINT]}
                # GKE Sandbox: each pod in its own gVisor kernel. sandbox_config replaces the
                # pool when changed (ForceNew in the provider); `type` replaces the
                # deprecated `sandbox_type`. GKE requires Container-Optimized OS, which the
                # pools use, and another pool beside it, which the system pool is.
                | ({"sandbox_config": {"type": "GVISOR"}} if cpu.sandbox else {}),
            )
        return system_pool

    def _manage_kube_dns_scaling(self, name: str, single_replica: bool) -> None:
        """kube-dns-autoscaler's parameters: GKE's own, or one replica for a one-node pool."""
        # With `single_dns_replica`: kube-dns-autoscaler keeps two kube-dns replicas once the
        # cluster has two nodes (preventSinglePointFailure). A GPU node counts, but kube-dns
        # does not tolerate its taint, so the second replica needs a second system node, which
        # it then keeps for ever on a small pool.
        # The patch stays when the setting is switched off, holding GKE's own parameters again:
        # deleting it would give up its one key, and the autoscaler, which re-creates the
        # ConfigMap only when the whole object is missing, would then stop scaling with
        # "invalid configMap format" (kubernetes-sigs/cluster-proportional-autoscaler,
        # autoscaler_server.go syncConfigWithServer, plugin.go EnsureController). For the same
        # reason it is never deleted (retain_on_delete): a destroy deletes the cluster anyway.
        k8s.core.v1.ConfigMapPatch(
            f"{name}-kube-dns-autoscaler",
            metadata={
                "name": "kube-dns-autoscaler",
                "namespace": "kube-system",
                "annotations": {"pulumi.com/patchForce": "true"},
            },
            data={"linear": json.dumps(kube_dns_scaling(single_replica))},
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider, retain_on_delete=True),
        )


def _network_policy_enforcement(dataplane_v2: bool) -> dict:
    """Cluster arguments that make GKE enforce NetworkPolicies.

    Dataplane V2 always enforces them ("GKE Dataplane V2"), but choosing it replaces a cluster
    (datapath_provider is ForceNew in terraform-provider-google). A cluster made without it
    enforces them through Calico instead, switched on in place: the add-on first, then
    enforcement, which re-creates the nodes (GKE docs, "Enable network policy enforcement";
    the provider applies addons_config before network_policy in one update).
    """
    if dataplane_v2:
        return {"datapath_provider": "ADVANCED_DATAPATH"}
    return {
        "addons_config": {"network_policy_config": {"disabled": False}},
        "network_policy": {"enabled": True, "provider": "CALICO"},
    }


def _authorized_networks(cidrs: Sequence[str] | None) -> dict | None:
    """Who may reach the control plane besides the cluster's own nodes: anyone when unset."""
    if cidrs is None:
        return None
    return {
        "cidr_blocks": [{"cidr_block": cidr, "display_name": cidr} for cidr in cidrs],
        "gcp_public_cidrs_access_enabled": False,
    }


def kube_dns_scaling(single_replica: bool) -> dict:
    """kube-dns-autoscaler's linear parameters: GKE's, or one replica for a one-node pool."""
    return GKE_KUBE_DNS_SCALING | {"preventSinglePointFailure": not single_replica}


def _node_config(
    service_account: pulumi.Input[str], machine_type: str, disk_size_gb: int, labels: dict[str, str]
) -> dict:
    """Node settings both pools share: hardened, Workload Identity metadata, image streaming."""
    return {
        "machine_type": machine_type,
        "disk_size_gb": disk_size_gb,
        "image_type": "COS_CONTAINERD",
        "service_account": service_account,
        "oauth_scopes": [CLOUD_PLATFORM_SCOPE],
        "labels": labels,
        "metadata": {"disable-legacy-endpoints": "true"},
        "workload_metadata_config": {"mode": "GKE_METADATA"},
        "gcfs_config": {"enabled": True},
        "kubelet_config": KUBELET_CONFIG,
        # Secure boot holds with GKE-installed GPU drivers on COS: the COS GPU installer loads
        # drivers signed by Google and refuses unsigned ones unless told to
        # (cos-gpu-installer, install.go, -allow-unsigned-driver).
        "shielded_instance_config": {
            "enable_secure_boot": True,
            "enable_integrity_monitoring": True,
        },
    }
