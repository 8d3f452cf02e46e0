"""What a CI job waits for, from its push to its first step, on a cold GPU node and on a warm
one (warm hours), and how long its Python packages take to download: the model behind
docs/speed.md and the estimate's per-job figures. Each term names its source; those marked
as estimates are not published by Google or the projects, and only a real cluster measures
them (docs/speed.md says how)."""

from dataclasses import dataclass

from infra.engines.keda import POLLING_SECONDS


@dataclass(frozen=True)
class Term:
    """One wait on the way to a job's first step, in minutes."""

    what: str
    cold: float
    """On a cold node: none of the class's nodes is up with room for the job."""
    warm: float
    """On a warm node: a placeholder holds the room, and has pulled the runner image."""
    billed: bool
    """Whether a GPU node is billed while it passes (from the VM's boot on)."""
    source: str


TERMS: tuple[Term, ...] = (
    Term(
        "KEDA sees the queued job",
        POLLING_SECONDS / 2 / 60,
        POLLING_SECONDS / 2 / 60,
        False,
        f"half of KEDA's pollingInterval ({POLLING_SECONDS} s) on average",
    ),
    Term(
        "The autoscaler asks for a node",
        1,
        0,
        False,
        "estimate; cluster-autoscaler scans every 10 s, then Compute Engine creates the VM",
    ),
    Term(
        "The VM boots, the node registers",
        1,
        0,
        True,
        "estimate; GKE publishes no figure",
    ),
    Term(
        "GKE installs the NVIDIA driver",
        2,
        0,
        True,
        "estimate; cluster-autoscaler's utils/gpu allows up to 15 minutes before a new "
        "node's GPU is allocatable",
    ),
    Term(
        "The runner pod takes the node",
        0,
        0.1,
        True,
        "estimate; the scheduler preempts the placeholder, whose grace period is 0 s",
    ),
    Term(
        "The runner image",
        1,
        0,
        True,
        'estimate: streamed from the image mirror in the region (GKE, "Use Image '
        'streaming": containers start before the whole image is pulled); on a warm node the '
        "placeholder pulled it ahead",
    ),
    Term(
        "CML downloads and registers the GitHub runner",
        0.5,
        0.5,
        True,
        "estimate; iterative/cml, src/drivers/github.js, startRunner",
    ),
)


def first_step_minutes(warm: bool) -> float:
    """Minutes from a job's push to its first step."""
    return sum(t.warm if warm else t.cold for t in TERMS)


def billed_start_minutes(warm: bool) -> float:
    """Minutes a GPU node is billed before the job's first step."""
    return sum((t.warm if warm else t.cold) for t in TERMS if t.billed)


# A CUDA build of PyTorch, as pip installs it from PyPI with its NVIDIA libraries: torch
# 766.7 MB, cudnn 664.8, cublas 363.4, triton 253.1, cufft 211.5, cusparse 207.5, nccl 188.7,
# cusparselt 150.1, cusolver 127.9 and smaller ones (a pip log of torch 2.6.0); "Most of that
# 2.4GB is not torch, it's CUDA" (pytorch/pytorch#26340).
PYTORCH_CUDA_GB = 2.8
# Download rates a GPU node gets, in MB/s: neither is published. From PyPI's CDN over the
# internet, and from an Artifact Registry repository in the cluster's region once it holds the
# files (the first download of each file goes to PyPI, as without the cache).
INTERNET_MB_PER_S = 50
REGIONAL_CACHE_MB_PER_S = 200


def download_minutes(gigabytes: float, cached: bool) -> float:
    """Minutes to download that many GB of packages, from the regional cache or PyPI."""
    rate = REGIONAL_CACHE_MB_PER_S if cached else INTERNET_MB_PER_S
    return gigabytes * 1000 / rate / 60
