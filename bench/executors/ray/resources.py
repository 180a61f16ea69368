"""What one trial asks Ray for, and failing fast when no node can hold it.

A GPU trial asks for `num_gpus=1` (never fractional; Ray sets CUDA_VISIBLE_DEVICES); a CPU trial
asks for `num_cpus=cpus_per_trial`. `device: auto` means GPU trials when the cluster has a GPU.
Isolation `node` adds one unit of the custom resource `regbench_node_slot` per trial: a local
instance declares it, cluster YAMLs declare `resources: {regbench_node_slot: 1}` on every node
type. `accelerator_type: H100` pins a trial to nodes whose resource `accelerator_type:H100`
exists. A request no node can satisfy fails before anything is submitted (UserError, one line);
REGBENCH_NODE_WAIT_S gives an autoscaling cluster that long to add a node.
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
    if suite.device == "gpu":
        return True
    if suite.device == "cpu":
        return False
    return any(n["Resources"].get("GPU", 0) >= 1 for n in nodes)


def request_for(unit, suite, gpu: bool) -> dict:
    """The Ray resources one trial or paired session asks for: {'CPU': n, 'GPU': 0|1, custom...}.
    A paired session on a CPU takes the node's slot (one session per node at a time, nothing
    else timed beside it) unless the suite says `paired: {isolation: slot}`."""
    req = {"CPU": float(unit.cpu_threads or (suite.cpus_per_trial if not gpu else 1))}
    if gpu:
        req["GPU"] = 1.0
    if suite.isolation == "node" or (unit.kind == "session" and not gpu and suite.paired_isolation == "node"):
        req[NODE_SLOT] = 1.0
    accelerator = unit.base.accelerator_type if unit.kind == "session" else unit.accelerator_type
    if accelerator:
        req[f"accelerator_type:{accelerator}"] = 0.001
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
