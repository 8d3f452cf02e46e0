"""RunnerIdentity: runner pods reach the DVC bucket as a Google account, with no key."""

import json

import pytest

from tests.harness import TEST_PROJECT_ID, reveal, run_program
from tests.stacks import SHAPES

ACCOUNT = "gcp:serviceaccount/account:Account"
BUCKET = "gcp:storage/bucket:Bucket"
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
SA_MEMBER = "gcp:serviceaccount/iAMMember:IAMMember"
RUNNER_GSA = f"mlops-kubernetes-runner@{TEST_PROJECT_ID}.iam.gserviceaccount.com"


def test_dev_stack_creates_a_private_bucket_its_untrusted_runner_may_only_read():
    program = run_program()
    assert program.one(ACCOUNT, "runner-identity").inputs["accountId"] == "mlops-kubernetes-runner"
    bucket = program.one(BUCKET).inputs
    assert bucket["location"] == "EUROPE-WEST6"
    assert bucket["uniformBucketLevelAccess"] is True
    assert bucket["publicAccessPrevention"] == "enforced"
    assert bucket["forceDestroy"] is True
    (grant,) = [g.inputs for g in program.of_type(BUCKET_MEMBER)]
    assert grant == {
        "bucket": f"{program.outputs['dvcRemoteUrl'].removeprefix('gs://')}",
        "role": "roles/storage.objectViewer",
        "member": f"serviceAccount:{RUNNER_GSA}",
    }
    # Only the reader exists: no runner is trusted.
    assert [a.inputs["accountId"] for a in program.of_type(ACCOUNT)].count(
        "mlops-kubernetes-trusted"
    ) == 0
    assert "trustedRunnerServiceAccount" not in program.outputs
    assert program.outputs["runnerServiceAccount"] == RUNNER_GSA
    assert program.outputs["dvcRemoteUrl"].startswith("gs://mlops-kubernetes-dvc-")


def test_runner_account_has_no_project_wide_role():
    program = run_program()
    project_grants = program.of_type("gcp:projects/iAMMember:IAMMember")
    assert project_grants
    assert all(RUNNER_GSA not in g.inputs["member"] for g in project_grants)


def test_each_runner_service_account_is_bound_by_workload_identity():
    program = run_program(
        {
            "gpu-runners:runners": [
                {"name": "train-gpu", "gpus": 1, "labels": ["train"]},
                {"name": "eval-cpu", "gpus": 0, "cpu": "500m", "labels": ["eval"]},
            ]
        }
    )
    bindings = sorted(b.inputs["member"] for b in program.of_type(SA_MEMBER))
    assert bindings == [
        f"serviceAccount:{TEST_PROJECT_ID}.svc.id.goog[eval-cpu/eval-cpu]",
        f"serviceAccount:{TEST_PROJECT_ID}.svc.id.goog[train-gpu/train-gpu]",
    ]
    for binding in program.of_type(SA_MEMBER):
        assert binding.inputs["role"] == "roles/iam.workloadIdentityUser"
        assert binding.inputs["serviceAccountId"] == (
            f"projects/{TEST_PROJECT_ID}/serviceAccounts/{RUNNER_GSA}"
        )


def test_an_existing_bucket_is_used_and_not_created():
    program = run_program({"gpu-runners:dvcRemote": {"bucket": "acme-ml-data"}})
    assert program.of_type(BUCKET) == []
    assert program.one(BUCKET_MEMBER).inputs["bucket"] == "acme-ml-data"
    assert program.outputs["dvcRemoteUrl"] == "gs://acme-ml-data"


def test_no_service_account_key_is_created():
    program = run_program()
    assert program.of_type("gcp:serviceaccount/key:Key") == []


@pytest.mark.parametrize("shape", SHAPES)
def test_every_workload_identity_member_waits_for_the_cluster(shape):
    # GKE creates the project's workload pool with the cluster; a grant naming it before then
    # fails with "Identity Pool does not exist".
    program = run_program(SHAPES[shape])
    cluster = program.one("gcp:container/cluster:Cluster")
    naming_the_pool = [
        r
        for r in program.resources
        if ".svc.id.goog" in json.dumps(reveal(r.inputs))
        and r.type.startswith("gcp:")
        and r is not cluster
    ]
    assert naming_the_pool
    late = [r.name for r in naming_the_pool if not program.waits_for(r, cluster)]
    assert late == []


TRUSTED_GSA = f"mlops-kubernetes-trusted@{TEST_PROJECT_ID}.iam.gserviceaccount.com"
MIXED_TRUST = {
    "gpu-runners:runners": [
        {"name": "pr-gpu", "labels": ["pr-gpu"]},
        {"name": "main-gpu", "labels": ["main-gpu"], "trust": "trusted"},
    ]
}


def test_a_trusted_runner_writes_through_its_own_account_and_untrusted_ones_only_read():
    program = run_program(MIXED_TRUST)
    grants = {g.inputs["member"]: g.inputs["role"] for g in program.of_type(BUCKET_MEMBER)}
    assert grants == {
        f"serviceAccount:{RUNNER_GSA}": "roles/storage.objectViewer",
        f"serviceAccount:{TRUSTED_GSA}": "roles/storage.objectUser",
    }
    acts_as = {
        b.inputs["member"].rsplit("[", 1)[1]: b.inputs["serviceAccountId"].rsplit("/", 1)[1]
        for b in program.of_type(SA_MEMBER)
    }
    assert acts_as == {"pr-gpu/pr-gpu]": RUNNER_GSA, "main-gpu/main-gpu]": TRUSTED_GSA}
    annotations = {
        a.name: a.inputs["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        for a in program.of_type("kubernetes:core/v1:ServiceAccount")
    }
    assert annotations == {"pr-gpu": RUNNER_GSA, "main-gpu": TRUSTED_GSA}
    assert program.outputs["trustedRunnerServiceAccount"] == TRUSTED_GSA


def test_the_created_bucket_keeps_replaced_and_deleted_objects_for_recovery():
    bucket = run_program().one(BUCKET).inputs
    assert bucket["versioning"] == {"enabled": True}
    assert bucket["softDeletePolicy"] == {"retentionDurationSeconds": 7 * 24 * 3600}
    (rule,) = bucket["lifecycleRules"]
    assert rule["action"] == {"type": "Delete"}
    assert rule["condition"] == {"daysSinceNoncurrentTime": 30, "withState": "ARCHIVED"}
