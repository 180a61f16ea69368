"""What one trial asks Ray for, and failing fast when no node can hold it.

A GPU trial asks for `num_gpus=1` (never fractional; Ray sets CUDA_VISIBLE_DEVICES); a CPU trial
asks for `num_cpus=cpus_per_trial`. `device: auto` means GPU trials when the cluster has a GPU.
Isolation `node` adds one unit of the custom resource `regbench_node_slot` per trial: a local
instance declares it, cluster YAMLs declare `resources: {regbench_node_slot: 1}` on every node
type. `accelerator_type: H100` pins a trial to nodes whose resource `accelerator_type:H100`
exists. A request no node can satisfy fails before anything is submitted (UserError, one line);
REGBENCH_NODE_WAIT_S gives an autoscaling cluster that long to add a node.

A `devices: [gpu, cpu]` suite runs GPU and CPU trials side by side. Its GPU trials ask for one
GPU plus `gpu_host_cpus` CPUs, and those CPUs are held for the whole batch: one placement group
bundle {GPU: 1, CPU: gpu_host_cpus} per GPU (`reserve_gpu_hosts`), in which every GPU trial
runs; CPU trials are scheduled as usual and so get only the cores the bundles leave.
"""
from __future__ import annotations

import json
import os
import time

from bench.errors import UserError

NODE_SLOT = "regbench_node_slot"
NODE_WAIT_ENV = "REGBENCH_NODE_WAIT_S"


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def wants_gpu(suite, nodes: list[dict]) -> bool:
    """Whether the suite's unpinned units run on GPUs (a unit pinned by `devices` says itself)."""
    if suite.device == "gpu":
        return True
    if suite.device == "cpu":
        return False
    return any(n["Resources"].get("GPU", 0) >= 1 for n in nodes)


def request_for(unit, suite, gpu: bool) -> dict:
    """The Ray resources one unit (bench/units) asks for: {'CPU': n, 'GPU': 0|1, custom...}. A unit
    that runs alone on a CPU node (`whole_cpu_node`: a paired session unless the suite says
    `paired: {isolation: slot}`) takes the node's slot there."""
    req = {"CPU": float(unit.cpu_threads or (suite.cpus_per_trial if not gpu else 1))}
    if gpu:
        req["GPU"] = 1.0
    if suite.isolation == "node" or (not gpu and unit.whole_cpu_node(suite)):
        req[NODE_SLOT] = 1.0
    if unit.accelerator_type:
        req[f"accelerator_type:{unit.accelerator_type}"] = 0.001
    return req


def infeasible_reason(req: dict, nodes: list[dict], suite_name: str) -> str | None:
    """None when some alive node can hold `req`, else one line saying what is missing."""
    if any(all(n["Resources"].get(k, 0.0) >= v for k, v in req.items()) for n in nodes):
        return None
    have = lambda key: [n for n in nodes if n["Resources"].get(key, 0.0) >= req[key]]  # noqa: E731
    summary = "; ".join(
        f"{n.get('NodeManagerAddress', '?')}: CPU {n['Resources'].get('CPU', 0):g}, GPU {n['Resources'].get('GPU', 0):g}"
        for n in nodes[:6]) or "no alive node"
    accel = [k for k in req if k.startswith("accelerator_type:")]
    if accel and not have(accel[0]):
        offered = sorted({k.split(":", 1)[1] for n in nodes for k in n["Resources"] if k.startswith("accelerator_type:")})
        return (f"suite {suite_name}: trials pinned to accelerator_type {accel[0].split(':', 1)[1]} but no node of "
                f"this Ray cluster offers it (offered: {', '.join(offered) or 'none'})")
    if "GPU" in req and not have("GPU"):
        return (f"suite {suite_name} asks for 1 GPU per trial but no node of this Ray cluster has a GPU "
                f"({len(nodes)} node(s): {summary}); use device: cpu or a cluster with GPUs")
    if NODE_SLOT in req and not have(NODE_SLOT):
        return (f"suite {suite_name} uses isolation: node, which needs the custom resource {NODE_SLOT}: 1 on "
                f"every node; declare resources: {{{NODE_SLOT}: 1}} in the cluster YAML's node types "
                f"(or ray start --resources='{{\"{NODE_SLOT}\": 1}}')")
    if not have("CPU"):
        return (f"suite {suite_name} asks for {req['CPU']:g} CPUs per trial but no node of this Ray cluster has "
                f"that many ({summary}); lower cpus_per_trial")
    return (f"suite {suite_name}: no single node of this Ray cluster has all of {json.dumps(req)} "
            f"({summary})")


def check_feasible(requests: dict, suite_name: str, note=None) -> list[dict]:
    """Fail fast (UserError) when a request fits no node. REGBENCH_NODE_WAIT_S (default 0) first
    waits that long for such a node to join: set it where nodes are still coming (right after
    `ray up`, autoscaling node types with min_workers: 0)."""
    wait_s = float(os.environ.get(NODE_WAIT_ENV) or 0)
    deadline = time.monotonic() + wait_s
    while True:
        nodes = alive_nodes()
        reasons = [r for r in (infeasible_reason(req, nodes, suite_name) for req in requests.values()) if r]
        if not reasons:
            return nodes
        if time.monotonic() >= deadline:
            waited = f" (after waiting {wait_s:g} s for nodes)" if wait_s else ""
            raise UserError(reasons[0] + waited)
        if note is not None:
            note(f"waiting up to {deadline - time.monotonic():.0f} s more ({NODE_WAIT_ENV}) for a node: {reasons[0]}")
            note = None
        time.sleep(2.0)


def on_gpu(unit, batch_gpu: bool) -> bool:
    """Does this unit run on a GPU: its own device pin (a `devices` suite), else the batch's choice."""
    return unit.device == "gpu" if unit.device else batch_gpu


def host_reservation(gpu_requests: list[dict], cpu_requests: list[dict], nodes: list[dict],
                     suite_name: str) -> list[tuple[dict, int]]:
    """(bundle, count) per GPU request shape: one bundle per GPU that can hold the shape's host CPUs,
    at most one per GPU unit waiting for it. UserError when the cores the bundles leave cannot hold
    any CPU unit (the batch would wait forever)."""
    out = []
    reserved = {n["NodeID"]: 0.0 for n in nodes}
    for req, units in gpu_requests:
        fits = [n for n in nodes if all(n["Resources"].get(k, 0.0) >= v for k, v in req.items())]
        per_node = {n["NodeID"]: int(min(n["Resources"]["GPU"] // req["GPU"], n["Resources"]["CPU"] // req["CPU"]))
                    for n in fits}
        for node_id, k in per_node.items():
            reserved[node_id] += k * req["CPU"]
        out.append((req, min(units, sum(per_node.values()))))
    for req in cpu_requests:
        if not any(all(n["Resources"].get(k, 0.0) - (reserved[n["NodeID"]] if k == "CPU" else 0.0) >= v
                       for k, v in req.items()) for n in nodes):
            free = ", ".join(f"{n.get('NodeManagerAddress', '?')}: {n['Resources'].get('CPU', 0) - reserved[n['NodeID']]:g}"
                             for n in nodes[:6])
            raise UserError(f"suite {suite_name}: after reserving each GPU trial's host CPUs (gpu_host_cpus), no node "
                            f"has the {req['CPU']:g} CPUs a CPU trial asks for (CPUs left: {free}); lower "
                            "gpu_host_cpus or cpus_per_trial, or add CPU nodes")
    return [(req, n) for req, n in out if n > 0]


def reserve_gpu_hosts(shapes: list[tuple[dict, int]], note=None) -> dict:
    """One placement group per GPU request shape with `count` bundles of that shape; returns
    {shape key: placement group} once every group is placed (waits, saying so once)."""
    from ray.util import placement_group

    groups = {json.dumps(req, sort_keys=True): placement_group([dict(req)] * n, strategy="PACK", name="regbench-gpu-hosts")
              for req, n in shapes}
    for pg in groups.values():
        if not pg.wait(30) and note is not None:
            note("ray: waiting for GPUs and their host CPUs to be free (placement group pending)")
        while not pg.wait(30):
            pass
    return groups
