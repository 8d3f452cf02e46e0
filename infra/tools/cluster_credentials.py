"""CI's sign-in to the cluster of a stack on an existing GKE cluster (`existingCluster.gke`):
`gcloud container clusters get-credentials`, as the Google account CI acts as, writes the
kubeconfig context the stack reaches its cluster through (the settings hold that context to
the one this writes). No key: the kubeconfig runs gke-gcloud-auth-plugin, which takes a
short-lived token from gcloud's federated credentials. A stack that makes its cluster needs
nothing here: its provider's kubeconfig comes from the cluster it makes.

    python -m infra.tools.cluster_credentials Pulumi.<stack>.yaml
"""

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from infra.settings.existing_cluster import EXISTING_CLUSTER_KEY, ExistingGkeSettings
from infra.tools.stack_file import PROJECT, StackFileError, read_config


def credentials_command(config: dict[str, Any]) -> list[str] | None:
    """The gcloud command that signs in to the stack's existing GKE cluster, or None when the
    stack makes its cluster or its cluster is not GKE."""
    existing = config.get(f"{PROJECT}:{EXISTING_CLUSTER_KEY}")
    if not isinstance(existing, dict) or existing.get("gke") is None:
        return None
    gke = ExistingGkeSettings.model_validate(existing["gke"])
    project = config.get("gcp:project")
    if not isinstance(project, str) or not project:
        raise ValueError("gcp:project is not set; allowed: the project of the GKE cluster")
    return [
        "gcloud",
        "container",
        "clusters",
        "get-credentials",
        gke.name,
        "--location",
        gke.location,
        "--project",
        project,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.tools.cluster_credentials", description=__doc__
    )
    parser.add_argument("stack_file", type=Path)
    args = parser.parse_args(argv)
    try:
        command = credentials_command(read_config(args.stack_file).values)
    except (StackFileError, ValidationError, ValueError) as error:
        print(f"Cannot sign in to the cluster of {args.stack_file}:\n{error}", file=sys.stderr)
        return 2
    if command is None:
        print(f"{args.stack_file}: the stack makes its cluster, or is not on GKE: nothing to do.")
        return 0
    print(" ".join(command))
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
