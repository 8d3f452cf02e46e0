"""The stack shapes the tests build, as config overrides of Pulumi.dev.yaml."""

# A GitHub GPU runner and a GitLab CPU runner in one stack.
TWO_RUNNERS = {
    "gpu-runners:runners": [
        {"name": "train-gpu", "platform": "github", "labels": ["cml-runner", "gpu"], "gpus": 1},
        {
            "name": "lint-cpu",
            "platform": "gitlab",
            "engine": "cml",
            "labels": ["cml-cpu"],
            "gpus": 0,
            "cpu": "500m",
            "memory": "1Gi",
            "replicas": 2,
        },
    ]
}
# CI access from both forges.
WITH_CI = {
    "gpu-runners:ci": {
        "githubRepository": "ml-team/gpu-runners",
        "githubRepositoryId": "812345678",
        "githubOwnerId": "91234567",
        "gitlabProject": "ml-team/infra/gpu-runners",
        "gitlabProjectId": "52345678",
        "stateBucket": "ml-team-sandbox-pulumi-state",
        "secretsKey": (
            "projects/ml-team-sandbox/locations/europe-west6/keyRings/pulumi/cryptoKeys/dev"
        ),
    }
}
# An on-demand runner with up to three runners at once (a ScaledJob).
POOL_OF_THREE = {"gpu-runners:runners": [{"name": "cml-runner", "maxRunners": 3}]}
# The dev runner kept up all the time, as the chapter's runner was.
ALWAYS = {"gpu-runners:runners": [{"name": "cml-runner", "mode": "always"}]}
# A GPU runner on each engine: CML (KEDA) and actions-runner-controller.
BOTH_ENGINES = {
    "gpu-runners:runners": [
        {"name": "cml-runner"},
        {"name": "gpu-arc", "engine": "arc", "labels": ["gpu-arc"], "maxRunners": 2},
    ]
}
# A GitLab GPU runner on GitLab's own runner (the default engine for GitLab).
GITLAB = {
    "gpu-runners:runners": [
        {"name": "gl-gpu", "platform": "gitlab", "labels": ["gpu"], "maxRunners": 2}
    ]
}

SHAPES = {
    "dev": {},
    "two-runners": TWO_RUNNERS,
    "with-ci": WITH_CI,
    "pool-of-three": POOL_OF_THREE,
    "always": ALWAYS,
    "both-engines": BOTH_ENGINES,
    "gitlab": GITLAB,
}
