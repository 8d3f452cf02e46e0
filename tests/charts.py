"""Checks of the values a stack gives a Helm chart, against the chart's own templates."""

import re
from pathlib import Path


def unread_values(chart: Path, values: dict) -> list[str]:
    """Keys given that the chart's templates never read as `.Values.<key>`.

    A key is followed one level down only where the chart reads keys under it and does not
    also render it whole (`toYaml`): a value taken whole (nodeSelector, a security context,
    the pod templates) is Kubernetes data, not more chart keys.
    """
    templates = "\n".join(p.read_text() for p in (chart / "templates").iterdir())
    read = set(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", templates))
    whole = set(re.findall(r"toYaml \(?\.Values\.([A-Za-z0-9_.]+)", templates))
    unread = []
    for key, value in values.items():
        if not any(r == key or r.startswith(f"{key}.") for r in read):
            unread.append(key)
        elif (
            isinstance(value, dict)
            and key not in whole
            and any(r.startswith(f"{key}.") for r in read)
        ):
            unread += [f"{key}.{inner}" for inner in value if f"{key}.{inner}" not in read]
    return unread
