"""Every Kubernetes object the stack registers, and every Job KEDA makes from its ScaledJobs,
is valid for the Kubernetes versions GKE runs."""

import kubernetes_validate
import pytest

from tests.harness import reveal, run_program
from tests.stacks import ALWAYS, TWO_RUNNERS

# The minor versions GKE's release channels offer as of 2026-11 (the cluster follows its
# channel, so it may run any of them).
GKE_MINORS = ("1.33", "1.34", "1.35")


# Kinds that upstream Kubernetes defines; KEDA's are checked against its CRDs elsewhere.
UPSTREAM_GROUPS = (
    "kubernetes:core/",
    "kubernetes:apps/",
    "kubernetes:batch/",
    "kubernetes:networking.k8s.io/",
)
SCALED_JOB = "kubernetes:keda.sh/v1alpha1:ScaledJob"


def kubernetes_objects(program) -> list[dict]:
    """Each object's manifest; a patch (ConfigMapPatch…) is checked as the object it patches."""
    objects = []
    for resource in program.resources:
        if resource.type.startswith(UPSTREAM_GROUPS):
            manifest = reveal(resource.inputs)
            group_version, kind = resource.type.split(":", 1)[1].split(":")
            manifest.setdefault("apiVersion", group_version.removeprefix("core/"))
            manifest.setdefault("kind", kind.removesuffix("Patch"))
            objects.append(manifest)
    return objects


def jobs_keda_would_create(program) -> list[dict]:
    """A ScaledJob's jobTargetRef is the spec of each Job KEDA creates from it."""
    return [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "generateName": f"{r.name}-",
                "namespace": reveal(r.inputs["metadata"])["namespace"],
            },
            "spec": reveal(r.inputs["spec"]["jobTargetRef"]),
        }
        for r in program.of_type(SCALED_JOB)
    ]


@pytest.mark.parametrize(
    "config", [{}, TWO_RUNNERS, ALWAYS], ids=["dev", "github-gpu+gitlab-cpu", "always"]
)
@pytest.mark.parametrize("minor", GKE_MINORS)
def test_every_kubernetes_object_passes_strict_schema_validation(config, minor):
    program = run_program(config)
    objects = kubernetes_objects(program) + jobs_keda_would_create(program)
    # ConfigMap: the dev stack's patch of kube-dns-autoscaler.
    kinds = {"Namespace", "ServiceAccount", "Secret", "Job", "ConfigMap", "NetworkPolicy"}
    assert {o["kind"] for o in objects} == kinds
    for manifest in objects:
        kubernetes_validate.validate(manifest, f"{minor}.0", strict=True)


def test_strict_validation_catches_a_misspelt_field():
    (job, *_) = jobs_keda_would_create(run_program())
    job["spec"]["template"]["spec"]["nodeSelecter"] = {"gpu": "true"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, f"{GKE_MINORS[0]}.0", strict=True)
