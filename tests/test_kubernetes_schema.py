"""Every Kubernetes object the stack registers is valid for the Kubernetes versions GKE runs."""

import kubernetes_validate
import pytest

from tests.harness import reveal, run_program
from tests.stacks import TWO_RUNNERS

# The minor versions GKE's release channels offer as of 2026-11 (the cluster follows its
# channel, so it may run any of them).
GKE_MINORS = ("1.33", "1.34", "1.35")


# Kinds that upstream Kubernetes defines; KEDA's are checked against its CRDs elsewhere.
UPSTREAM_GROUPS = ("kubernetes:core/", "kubernetes:apps/", "kubernetes:batch/")


def kubernetes_objects(program) -> list[dict]:
    return [reveal(r.inputs) for r in program.resources if r.type.startswith(UPSTREAM_GROUPS)]


@pytest.mark.parametrize("config", [{}, TWO_RUNNERS], ids=["dev", "github-gpu+gitlab-cpu"])
@pytest.mark.parametrize("minor", GKE_MINORS)
def test_every_kubernetes_object_passes_strict_schema_validation(config, minor):
    objects = kubernetes_objects(run_program(config))
    assert {o["kind"] for o in objects} == {"Namespace", "ServiceAccount", "Secret", "Deployment"}
    for manifest in objects:
        kubernetes_validate.validate(manifest, f"{minor}.0", strict=True)


def test_strict_validation_catches_a_misspelt_field():
    deployment = next(o for o in kubernetes_objects(run_program()) if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["nodeSelecter"] = {"gpu": "true"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, f"{GKE_MINORS[0]}.0", strict=True)
