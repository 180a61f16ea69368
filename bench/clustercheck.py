"""Offline checks of cluster files: Ray cluster-launcher YAMLs and KubeRay RayCluster manifests.

`regbench validate FILE` dispatches here when `is_cluster_file(data)`.

* A launcher YAML (has `provider` or `cluster_name`) is checked the way `ray up` checks it before
  it talks to any cloud: Ray's own schema (ray/autoscaler/ray-schema.json) on the file as written,
  then Ray's `prepare_config` (merge with the provider's defaults.yaml, the on-prem rewrite of the
  `local` provider) and `validate_config` (schema again plus the cross-field rules). Neither
  contacts a cloud: what does (`bootstrap_config`: IAM roles, subnets, key pairs) is the part of
  `ray up` that runs after these and is deliberately not called.
* A KubeRay manifest (`kind: RayCluster`) is checked against the openAPIV3Schema of the RayCluster
  CRD (ray.io/v1), trimmed to the fields a regbench cluster uses: see `RAYCLUSTER_SCHEMA`.

`validate_cluster_file(path)` returns a one-line summary, or raises `UserError` with one line that
names the file and the offending field.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import pathlib
import re
from typing import Any

from bench import yamlfile
from bench.errors import UserError

# Kubernetes resource quantity ("4", "500m", "16Gi", 1) as in the CRD's int-or-string fields.
_QUANTITY = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
}
_RESOURCES = {
    "type": "object",
    "properties": {
        "limits": {"type": "object", "additionalProperties": _QUANTITY},
        "requests": {"type": "object", "additionalProperties": _QUANTITY},
        "claims": {"type": "array"},
    },
    "additionalProperties": False,
}
_ENV_VAR = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "value": {"type": "string"},
        "valueFrom": {
            "type": "object",
            "properties": {
                "secretKeyRef": {
                    "type": "object",
                    "required": ["key"],
                    "properties": {
                        "key": {"type": "string"},
                        "name": {"type": "string"},
                        "optional": {"type": "boolean"},
                    },
                    "additionalProperties": False,
                },
                "configMapKeyRef": {
                    "type": "object",
                    "required": ["key"],
                    "properties": {
                        "key": {"type": "string"},
                        "name": {"type": "string"},
                        "optional": {"type": "boolean"},
                    },
                    "additionalProperties": False,
                },
                "fieldRef": {
                    "type": "object",
                    "required": ["fieldPath"],
                    "properties": {"apiVersion": {"type": "string"}, "fieldPath": {"type": "string"}},
                    "additionalProperties": False,
                },
                "resourceFieldRef": {"type": "object", "required": ["resource"]},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
_CONTAINER = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "image": {"type": "string"},
        "imagePullPolicy": {"type": "string"},
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "workingDir": {"type": "string"},
        "env": {"type": "array", "items": _ENV_VAR},
        "envFrom": {"type": "array", "items": {"type": "object"}},
        "ports": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["containerPort"],
                "properties": {
                    "containerPort": {"type": "integer", "format": "int32"},
                    "hostIP": {"type": "string"},
                    "hostPort": {"type": "integer", "format": "int32"},
                    "name": {"type": "string"},
                    "protocol": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
        "resources": _RESOURCES,
        "volumeMounts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["mountPath", "name"],
                "properties": {
                    "mountPath": {"type": "string"},
                    "name": {"type": "string"},
                    "readOnly": {"type": "boolean"},
                    "subPath": {"type": "string"},
                },
            },
        },
        # Modelled only as objects: lifecycle, probes, securityContext (KubeRay passes them on).
        "lifecycle": {"type": "object"},
        "livenessProbe": {"type": "object"},
        "readinessProbe": {"type": "object"},
        "securityContext": {"type": "object"},
    },
    "additionalProperties": False,
}
_POD_TEMPLATE = {
    "type": "object",
    "properties": {
        "metadata": {
            "type": "object",
            "properties": {
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "name": {"type": "string"},
                "namespace": {"type": "string"},
            },
        },
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
                "initContainers": {"type": "array", "items": _CONTAINER},
                "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
                "tolerations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "effect": {"type": "string"},
                            "key": {"type": "string"},
                            "operator": {"type": "string"},
                            "tolerationSeconds": {"type": "integer", "format": "int64"},
                            "value": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                },
                "volumes": {
                    "type": "array",
                    "items": {"type": "object", "required": ["name"]},
                },
                "serviceAccountName": {"type": "string"},
                "affinity": {"type": "object"},
                "securityContext": {"type": "object"},
                "imagePullSecrets": {"type": "array"},
                "priorityClassName": {"type": "string"},
                "runtimeClassName": {"type": "string"},
            },
            # Other PodSpec fields are valid Kubernetes but not modelled in this trimmed schema.
            "additionalProperties": True,
        },
    },
    "additionalProperties": False,
}
_RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}

#: openAPIV3Schema of the RayCluster CRD (ray.io/v1, KubeRay 1.x:
#: ray-operator/config/crd/bases/ray.io_rayclusters.yaml), trimmed to the fields a regbench
#: cluster uses. Where the CRD is fully modelled here, unknown fields are errors (the API server's
#: strict field validation rejects them too); the PodSpec keeps unmodelled fields open.
RAYCLUSTER_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "RayCluster (ray.io/v1), trimmed",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"type": "string", "enum": ["ray.io/v1"]},
        "kind": {"type": "string", "enum": ["RayCluster"]},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["headGroupSpec"],
            "properties": {
                "rayVersion": {"type": "string"},
                "enableInTreeAutoscaling": {"type": "boolean"},
                "suspend": {"type": "boolean"},
                "managedBy": {"type": "string"},
                "autoscalerOptions": {
                    "type": "object",
                    "properties": {
                        "idleTimeoutSeconds": {"type": "integer", "format": "int32"},
                        "upscalingMode": {"type": "string", "enum": ["Default", "Aggressive", "Conservative"]},
                        "version": {"type": "string", "enum": ["v1", "v2"]},
                        "image": {"type": "string"},
                        "imagePullPolicy": {"type": "string"},
                        "env": {"type": "array", "items": _ENV_VAR},
                        "resources": _RESOURCES,
                    },
                    "additionalProperties": False,
                },
                "headServiceAnnotations": {"type": "object", "additionalProperties": {"type": "string"}},
                "headGroupSpec": {
                    "type": "object",
                    "required": ["template"],
                    "properties": {
                        "enableIngress": {"type": "boolean"},
                        "rayStartParams": _RAY_START_PARAMS,
                        "serviceType": {"type": "string", "enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                        "headService": {"type": "object"},
                        "template": _POD_TEMPLATE,
                    },
                    "additionalProperties": False,
                },
                "workerGroupSpecs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["groupName", "maxReplicas", "template"],
                        "properties": {
                            "groupName": {"type": "string", "minLength": 1},
                            "replicas": {"type": "integer", "format": "int32", "minimum": 0},
                            "minReplicas": {"type": "integer", "format": "int32", "minimum": 0},
                            "maxReplicas": {"type": "integer", "format": "int32", "minimum": 0},
                            "numOfHosts": {"type": "integer", "format": "int32", "minimum": 1},
                            "idleTimeoutSeconds": {"type": "integer", "format": "int32"},
                            "suspend": {"type": "boolean"},
                            "rayStartParams": _RAY_START_PARAMS,
                            "scaleStrategy": {
                                "type": "object",
                                "properties": {"workersToDelete": {"type": "array", "items": {"type": "string"}}},
                                "additionalProperties": False,
                            },
                            "template": _POD_TEMPLATE,
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    },
}


def is_cluster_file(data: Any) -> bool:
    """True for a Ray cluster-launcher YAML or a KubeRay RayCluster manifest (not a suite)."""
    if not isinstance(data, dict):
        return False
    if data.get("kind") == "RayCluster":
        return True
    return "provider" in data or "cluster_name" in data


def _field_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _schema_error(path: pathlib.Path, error) -> UserError:
    """One line from a jsonschema error: the deepest, most specific cause, and its field."""
    best = error
    if error.context:
        import jsonschema.exceptions

        best = jsonschema.exceptions.best_match(error.context) or error
    message = best.message.replace("\n", " ")
    if len(message) > 200:
        message = message[:197] + "..."
    return UserError(f"{path}: invalid field {_field_path(best.absolute_path)}: {message}")


_PROVIDER_FIELDS = {"head_ip", "worker_ips", "coordinator_address", "type", "region", "project_id"}


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # Ray's abort lines look like "2026-.. PANIC config.py:73 -- message"
    return re.sub(r"^.*? -- ", "", lines[-1]) if lines else ""


def _field_in(message: str) -> str:
    """The field a Ray message is about: its first `quoted` name (Ray quotes them that way)."""
    match = re.search(r"`([A-Za-z_][A-Za-z0-9_.]*)`", message)
    if not match:
        return "(top level)"
    name = match.group(1)
    return f"provider.{name}" if name in _PROVIDER_FIELDS else name


def _validate_launcher(path: pathlib.Path, config: dict) -> str:
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema_path = pathlib.Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    # 1. The file as written, so the error names the user's field (not one filled in by defaults).
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise _schema_error(path, errors[0])
    provider = config["provider"].get("type")
    if provider == "local" and "coordinator_address" not in config["provider"]:
        for field in ("head_ip", "worker_ips"):
            if field not in config["provider"]:
                raise UserError(
                    f"{path}: invalid field provider.{field}: required by the local provider "
                    "(use worker_ips: [] for a single machine)"
                )
    # 2. Ray's own preparation and validation, exactly as `ray up` runs them before bootstrapping.
    #    Ray's `local` provider reports problems through cli_logger.abort (SystemExit/click).
    ray_util_logger = logging.getLogger("ray.autoscaler._private.util")
    previous_level = ray_util_logger.level
    ray_util_logger.setLevel(logging.WARNING)  # "setting max workers for ..." is not news
    chatter = io.StringIO()  # Ray's cli_logger prints warnings/aborts; we report one line instead
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            prepared = prepare_config(copy.deepcopy(config))
            validate_config(prepared)
    except jsonschema.ValidationError as exc:
        raise _schema_error(path, exc) from None
    except NotImplementedError as exc:
        raise UserError(f"{path}: invalid field provider.type: {exc}") from None
    except (SystemExit, Exception) as exc:  # noqa: BLE001 - cli_logger.abort raises click/SystemExit
        detail = _one_line(str(exc)) or _one_line(_strip_ansi(chatter.getvalue())) or type(exc).__name__
        raise UserError(f"{path}: invalid field {_field_in(detail)}: {detail}") from None
    finally:
        ray_util_logger.setLevel(previous_level)
    node_types = prepared.get("available_node_types", {})
    if provider == "local":
        workers = len(config["provider"].get("worker_ips") or [])
        return f"{path}: valid Ray cluster config (provider local, head + {workers} worker IPs)"
    return f"{path}: valid Ray cluster config (provider {provider}, {len(node_types)} node types)"


def _validate_kuberay(path: pathlib.Path, manifest: dict) -> str:
    import jsonschema

    validator = jsonschema.Draft7Validator(RAYCLUSTER_SCHEMA)
    errors = sorted(
        validator.iter_errors(manifest),
        key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))),
    )
    if errors:
        raise _schema_error(path, errors[0])
    spec = manifest["spec"]
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        low, high = group.get("minReplicas", 0), group["maxReplicas"]
        if low > high:
            raise UserError(
                f"{path}: invalid field spec.workerGroupSpecs[{index}].minReplicas: "
                f"{low} is more than maxReplicas {high}"
            )
        if "replicas" in group and not low <= group["replicas"] <= high:
            raise UserError(
                f"{path}: invalid field spec.workerGroupSpecs[{index}].replicas: "
                f"{group['replicas']} is outside [minReplicas {low}, maxReplicas {high}]"
            )
    groups = spec.get("workerGroupSpecs") or []
    return f"{path}: valid KubeRay RayCluster (head + {len(groups)} worker groups)"


def validate_cluster_file(path: pathlib.Path) -> str:
    """Check a cluster file offline; return a one-line summary or raise UserError (one line)."""
    path = pathlib.Path(path)
    data = yamlfile.load(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: invalid field (top level): expected a mapping, got {type(data).__name__}")
    if data.get("kind") == "RayCluster" or "apiVersion" in data:
        return _validate_kuberay(path, data)
    if not is_cluster_file(data):
        raise UserError(f"{path}: invalid field provider: not a Ray cluster config (no 'provider' or 'cluster_name')")
    return _validate_launcher(path, data)
