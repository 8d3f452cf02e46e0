"""The stack shapes the tests build, as config overrides of Pulumi.dev.yaml."""

import re
import textwrap
from pathlib import Path

import yaml

_DOCS = Path(__file__).parent.parent / "docs"
_GPU_CLASSES_PAGE = (_DOCS / "gpu-classes.md").read_text()
_YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", _GPU_CLASSES_PAGE, re.DOTALL)
_SPEED_YAML = re.findall(r"```yaml\n(.*?)```", (_DOCS / "speed.md").read_text(), re.DOTALL)

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

# docs/gpu-classes.md's example: a Spot L4 class in two zones that falls back to on demand,
# and an on-demand A100 class, each with its runner.
TWO_CLASSES = {"gpu-runners:gpuPool": None, **yaml.safe_load(_YAML_BLOCKS[0])["config"]}
# docs/gpu-classes.md's time-shared class, for the example's test runner, beside an arc and a
# GitLab runner on the same class.
SHARED_GPUS = {
    **TWO_CLASSES,
    **yaml.safe_load(textwrap.dedent(_YAML_BLOCKS[1])),
    "gpu-runners:runners": [
        {
            **TWO_CLASSES["gpu-runners:runners"][0],
            "gpuPool": "l4-shared",
            "cpu": "1",
            "memory": "4Gi",
        },
        {"name": "arc-shared", "engine": "arc", "labels": ["arc-shared"], "gpuPool": "l4-shared"},
        {"name": "gl-shared", "platform": "gitlab", "labels": ["shared"], "gpuPool": "l4-shared"},
    ],
}

# docs/speed.md's warm hours, on the dev stack's class, with a CML and an ARC runner on it.
WARM_HOURS = {**yaml.safe_load(_SPEED_YAML[0])["config"], **BOTH_ENGINES}

SHAPES = {
    "dev": {},
    "two-runners": TWO_RUNNERS,
    "with-ci": WITH_CI,
    "pool-of-three": POOL_OF_THREE,
    "always": ALWAYS,
    "both-engines": BOTH_ENGINES,
    "gitlab": GITLAB,
    "two-classes": TWO_CLASSES,
    "shared-gpus": SHARED_GPUS,
    "warm-hours": WARM_HOURS,
}
