"""Derive bench/clusterfiles/raycluster.schema.json from KubeRay's RayCluster CRD.

    git clone --depth 1 --branch v1.7.0 https://github.com/ray-project/kuberay
    python tests/tools/derive_raycluster_schema.py kuberay/ray-operator/config/crd/bases/ray.io_rayclusters.yaml \
        --version v1.7.0 --commit 59d663aeec13760646da3db9c1cf8cfe883e30b7 > bench/clusterfiles/raycluster.schema.json

From the CRD's ray.io/v1 openAPIV3Schema it keeps, in full, the fields regbench relies on (KEEP: what
clusters/kuberay-gpu.yaml sets and regbench reads: rayStartParams, the containers' image, command,
env, ports and resources, tolerations, replica counts). Every object on the way to them keeps all its
CRD properties, each reduced to its type, so a wrong type on any KubeRay field is caught but what
lies inside fields regbench does not use is not checked. Nothing is `additionalProperties: false`:
fields of newer KubeRay versions pass (bench/clusterfiles/kuberay.py flags near-miss typos of known
names instead). OpenAPI `nullable` becomes a null type; descriptions, defaults, formats and
x-kubernetes-* extensions are dropped; a CRD `required` field that has a default is optional (the
API server fills it in before it validates). ADDITIONS are regbench's own rules, each with its source.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys

import yaml

GROUPS = ("spec.headGroupSpec", "spec.workerGroupSpecs[]")
POD = ("template.metadata", "template.spec.tolerations", "template.spec.nodeSelector") + tuple(
    f"template.spec.containers[].{f}" for f in ("name", "image", "command", "args", "env", "ports", "resources"))
KEEP = {
    "spec.rayVersion", "spec.enableInTreeAutoscaling", "spec.headServiceAnnotations",
    "spec.autoscalerOptions.upscalingMode", "spec.autoscalerOptions.idleTimeoutSeconds",
    "spec.headGroupSpec.serviceType",
    *(f"spec.workerGroupSpecs[].{f}" for f in ("groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts")),
    *(f"{g}.rayStartParams" for g in GROUPS), *(f"{g}.{p}" for g in GROUPS for p in POD),
}
WHOLE_GPUS = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^[0-9]+$"}],
              "x-error": "must be a whole number of GPUs (Kubernetes extended resources are not fractional)"}
ADDITIONS = {
    "": {"required": ["apiVersion", "kind", "metadata", "spec"]},
    "apiVersion": {"const": "ray.io/v1"},
    "kind": {"const": "RayCluster"},
    # ray-operator/controllers/ray/utils/validation.go ValidateRayClusterMetadata: DNS-1035 label, <= 53
    "metadata": {"required": ["name"], "properties": {"name": {
        "type": "string", "maxLength": 53, "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"}}},
    # validation.go ValidateRayClusterSpec: "workerGroupSpec should have at least one container"
    **{f"{g}.template.spec.containers": {"minItems": 1} for g in GROUPS},
    # Kubernetes: extended resources (nvidia.com/gpu) are whole numbers
    **{f"{g}.template.spec.containers[].resources.{kind}": {"properties": {"nvidia.com/gpu": WHOLE_GPUS}}
       for g in GROUPS for kind in ("limits", "requests")},
}
DROP = {"description", "default", "format"}


def clean(node):
    """A CRD subtree as JSON Schema: nullable -> null type; no descriptions, defaults, x-kubernetes-*."""
    if isinstance(node, list):
        return [clean(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in DROP or key.startswith("x-kubernetes-") or key == "nullable":
            continue
        out[key] = {k: clean(v) for k, v in value.items()} if key == "properties" else clean(value)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return _optional_defaults(out, node)


def _optional_defaults(out: dict, node: dict) -> dict:
    """Drop from `required` what has a default: the API server fills it in before it validates."""
    if "required" in node and "properties" in node:
        required = [r for r in node["required"] if "default" not in node["properties"].get(r, {})]
        out.pop("required", None)
        if required:
            out["required"] = required
    return out


def shallow(node: dict) -> dict:
    """Only the type of a field regbench does not use (its whole schema when it is a scalar)."""
    if node.get("type") in ("object", "array"):
        return clean({k: v for k, v in node.items() if k in ("type", "nullable")})
    return clean(node)


def derive(node: dict, path: str) -> dict:
    if path in KEEP:
        out = clean(node)
    elif any(k.startswith(path + ".") or k.startswith(path + "[]") for k in KEEP) or path == "":
        out = clean({k: v for k, v in node.items() if k not in ("properties", "items")})
        if "properties" in node:
            out["properties"] = {name: derive(sub, f"{path}.{name}" if path else name)
                                 for name, sub in node["properties"].items() if not (path == "" and name == "status")}
        if "items" in node:
            out["items"] = derive(node["items"], path + "[]")
        _optional_defaults(out, node)
    else:
        out = shallow(node)
    return out


def add(schema: dict, path: str, extra: dict) -> None:
    node = schema
    for part in filter(None, path.replace("[]", ".[]").split(".")):
        node = node["items"] if part == "[]" else node.setdefault("properties", {}).setdefault(part, {})
    for key, value in extra.items():
        if key == "properties":
            for name, sub in value.items():
                node.setdefault("properties", {}).setdefault(name, {}).update(copy.deepcopy(sub))
        else:
            node[key] = copy.deepcopy(value)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("crd")
    ap.add_argument("--version", required=True, help="KubeRay release tag, e.g. v1.7.0")
    ap.add_argument("--commit", required=True, help="the kuberay commit the CRD file was read at")
    args = ap.parse_args(argv)
    crd = yaml.safe_load(open(args.crd))
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    body = derive(v1, "")
    for path, extra in ADDITIONS.items():
        add(body, path, extra)
    source = "ray-operator/config/crd/bases/ray.io_rayclusters.yaml"
    header = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:regbench:schema:kuberay-raycluster:{args.version}",
        "title": f"RayCluster (ray.io/v1) as regbench checks it, derived from KubeRay {args.version}",
        "x-kuberay-version": args.version,
        "x-source": f"https://github.com/ray-project/kuberay/blob/{args.commit}/{source}",
        "x-source-commit": args.commit,
        "$comment": "Generated by tests/tools/derive_raycluster_schema.py (its docstring says what is kept); do not edit.",
    }
    json.dump({**header, **body}, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
