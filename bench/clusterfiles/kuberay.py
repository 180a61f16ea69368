"""KubeRay RayCluster manifests (`kind: RayCluster`, ray.io/v1), checked offline.

raycluster.schema.json is derived from KubeRay's CRD (its header names the release and the commit;
tests/tools/derive_raycluster_schema.py regenerates it): the fields regbench relies on are checked in
full, every other KubeRay field by its type only, and unknown fields pass (a newer KubeRay adds
them), except near-miss spellings of a known field. Then the cross-field rules the operator or
Kubernetes apply later, when a mistake costs a failed pod instead of one line here.
"""
from __future__ import annotations

import difflib
import functools
import json
import pathlib

from bench.clusterfiles import invalid
from bench.schema import error_problems, field_path

SCHEMA_PATH = pathlib.Path(__file__).with_name("raycluster.schema.json")
GPU = "nvidia.com/gpu"
INT32_MAX = 2147483647  # the CRD's default maxReplicas


@functools.cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(path: pathlib.Path, manifest: dict) -> str:
    """A one-line summary of a valid RayCluster, or UserError naming the file and the field."""
    import jsonschema

    for where, known in _near_misses(schema(), manifest, []):
        raise invalid(path, field_path(where), f"unknown field; did you mean {known!r}?")
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(manifest),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        problem = error_problems(errors[0])[0]
        raise invalid(path, problem.field, problem.message)
    spec = manifest["spec"]
    groups = [("spec.headGroupSpec", spec["headGroupSpec"])] + [
        (f"spec.workerGroupSpecs[{i}]", g) for i, g in enumerate(spec.get("workerGroupSpecs") or [])]
    for where, group in groups[1:]:
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", INT32_MAX)
        if low > high:
            raise invalid(path, f"{where}.minReplicas", f"{low} is more than maxReplicas {high}")
        if "replicas" in group and not low <= group["replicas"] <= high:
            raise invalid(path, f"{where}.replicas",
                          f"{group['replicas']} is outside [minReplicas {low}, maxReplicas {high}]")
    for where, group in groups:
        _check_group(path, where, group)
    return (f"{path}: valid KubeRay RayCluster (head + {len(groups) - 1} worker groups), "
            f"checked against the CRD of KubeRay {schema()['x-kuberay-version']}")


def _check_group(path: pathlib.Path, where: str, group: dict) -> None:
    params = group.get("rayStartParams") or {}
    if "resources" in params and _ray_resources(params["resources"]) is None:
        raise invalid(path, f"{where}.rayStartParams.resources",
                      f"{params['resources']!r} is not a JSON object of resource amounts, "
                      """e.g. '{"regbench_node_slot": 1}'""")
    # ray-operator/controllers/ray/utils/validation.go validateRayGroupResources
    if group.get("resources") and any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
        raise invalid(path, f"{where}.resources", "set in both rayStartParams and resources; KubeRay accepts one")
    for i, container in enumerate(group["template"]["spec"]["containers"]):
        resources = container.get("resources") or {}
        limit, request = (resources.get(k, {}).get(GPU) for k in ("limits", "requests"))
        if limit is not None and request is not None and int(limit) != int(request):
            raise invalid(path, f"{where}.template.spec.containers[{i}].resources.requests.{GPU}",
                          f"{request} differs from limits {limit}: Kubernetes requires them equal for GPUs")


def _ray_resources(value: str) -> dict | None:
    """rayStartParams.resources as KubeRay (quotes trimmed) or the shell (a quoted JSON string) reads it."""
    candidates = [value.strip("'\"` ")]
    try:
        inner = json.loads(value)
        if isinstance(inner, str):
            candidates.append(inner)
    except ValueError:
        pass
    for text in candidates:
        try:
            parsed = json.loads(text)
        except ValueError:
            continue
        if isinstance(parsed, dict) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in parsed.values()):
            return parsed
    return None


def _near_misses(node: dict, value, path: list):
    """(path, known name) for each unknown key that is a near miss of a field the schema knows."""
    if isinstance(value, dict) and "properties" in node and "additionalProperties" not in node:
        known = node["properties"]
        for key, sub in value.items():
            if key in known:
                yield from _near_misses(known[key], sub, path + [key])
                continue
            close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.85)
            if close:
                yield path + [key], close[0]
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            yield from _near_misses(node["items"], item, path + [i])
