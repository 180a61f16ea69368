"""Offline checks of cluster files: Ray cluster-launcher YAMLs (launcher.py) and KubeRay RayCluster
manifests (kuberay.py, against raycluster.schema.json derived from KubeRay's CRD).

`regbench validate FILE` dispatches here when `is_cluster_file(data)`. `validate_cluster_file(path)`
returns a one-line summary, or raises UserError with one line that names the file and the field.
"""
from __future__ import annotations

import pathlib
from typing import Any

from bench import yamlfile
from bench.errors import UserError


def is_cluster_file(data: Any) -> bool:
    """True for a Ray cluster-launcher YAML or a KubeRay RayCluster manifest (not a suite)."""
    if not isinstance(data, dict):
        return False
    if data.get("kind") == "RayCluster":
        return True
    return "provider" in data or "cluster_name" in data


def validate_cluster_file(path: pathlib.Path, data: Any = None) -> str:
    """Check a cluster file offline (`data`: its YAML, when already loaded); a one-line summary or UserError."""
    path = pathlib.Path(path)
    if data is None:
        data = yamlfile.load(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: invalid field (top level): expected a mapping, got {type(data).__name__}")
    if data.get("kind") == "RayCluster" or "apiVersion" in data:
        from bench.clusterfiles import kuberay

        return kuberay.validate(path, data)
    if not is_cluster_file(data):
        raise UserError(f"{path}: invalid field provider: not a Ray cluster config (no 'provider' or 'cluster_name')")
    from bench.clusterfiles import launcher

    return launcher.validate(path, data)


def invalid(path: pathlib.Path, field: str, message: str) -> UserError:
    """The one line every cluster-file problem is: `FILE: invalid field FIELD: MESSAGE`."""
    return UserError(f"{path}: invalid field {field or '(top level)'}: {message}")
