"""The Ray executor on a simulated multi-node cluster (ray.cluster_utils.Cluster, real raylets).

Worker nodes declare fake GPUs and `accelerator_type:*` resources; the driver is `regbench run`
in a subprocess that joins the cluster through RAY_ADDRESS (the path `ray job submit` takes).
A trial on a fake-GPU node still computes on the CPU (the framework sees no GPU, and the record
says so); what these tests check is where Ray put each trial, not what it computed.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import pytest

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]

SUITE = """
name: {name}
workloads:
  - name: digits_mlp
    max_train_samples: 256
regularizers: {regularizers}
precisions: [float32]
batch_sizes: [32]
repeats: 1
epochs: 2
device: gpu
isolation: gpu
timeout_s: 300
max_retries: 2
paired: false
{extra}
"""


@pytest.fixture
def cluster(monkeypatch):
    from ray.cluster_utils import Cluster

    # Fake GPU nodes: a raylet refuses num_gpus when CUDA_VISIBLE_DEVICES hides every GPU (as it
    # does on CPU-only machines that export CUDA_VISIBLE_DEVICES="").
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    c = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        # notice a removed node within ~3 s instead of ~30 s
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4,
                           "health_check_initial_delay_ms": 0},
    })
    try:
        yield c
    finally:
        c.shutdown()


def run_cli(suite: pathlib.Path, out: pathlib.Path, address: str, env_extra=None, background=False):
    env = dict(os.environ, RAY_ADDRESS=address, PYTHONPATH=str(REPO))
    env.pop("REGBENCH_EXECUTOR", None)
    env.update(env_extra or {})
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--suite", str(suite), "--executor", "ray",
                             "--out", str(out), "--no-report"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    if background:
        return proc
    return finish(proc)


def finish(proc, timeout_s=300):
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"run did not finish in {timeout_s} s: {err[-3000:]}")
    return proc.returncode, out, err


def load_run(out: pathlib.Path):
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    files = sorted((run_dir / "trials").iterdir())
    assert all(p.suffix == ".json" and not p.name.startswith(".") for p in files), files
    records = {p.stem: json.loads(p.read_text()) for p in files}
    return records, json.loads((run_dir / "manifest.json").read_text())


def test_placement_one_trial_per_gpu_and_accelerator_pinning(cluster, tmp_path):
    h100 = cluster.add_node(num_cpus=2, num_gpus=2, resources={"accelerator_type:H100": 1})
    a100 = cluster.add_node(num_cpus=2, num_gpus=1, resources={"accelerator_type:A100": 1})
    cluster.wait_for_nodes()
    suite = tmp_path / "pinned.yaml"
    suite.write_text(SUITE.format(name="pinned", regularizers="[none, l2]", extra="accelerator_types: [H100, A100]"))
    rc, out, err = run_cli(suite, tmp_path / "out", cluster.address)
    assert rc == 0, err
    assert f"ray: joined the Ray cluster at {cluster.address} (3 nodes)" in err, err[-3000:]
    # a joined cluster's nodes keep no scratch of the run (worker dirs, TMPDIR of the trials)
    assert not list(pathlib.Path(tempfile.gettempdir()).glob(f"regbench-{out.strip().splitlines()[-1].rsplit('/', 1)[-1]}"))
    records, manifest = load_run(tmp_path / "out")
    assert len(records) == 4, err
    for r in records.values():  # each trial process ran on its fake GPU, saw none, and said so
        assert r["status"] == "failed" and r["reason"].startswith("a GPU trial ran on the CPU"), r["reason"]
    node_of = {h100.node_id: "H100", a100.node_id: "A100"}
    intervals: dict = {}
    for tid, r in records.items():
        info = r["node"]["ray"]
        assert node_of[info["node_id"]] == r["trial"]["accelerator_type"], (tid, info)
        assert len(info["gpu_ids"]) == 1  # num_gpus=1: exactly one (fake) GPU per trial
        assert manifest["placements"][tid]["node_id"] == info["node_id"]
        intervals.setdefault((info["node_id"], info["gpu_ids"][0]), []).append((info["t_start"], info["t_end"]))
    # one trial per GPU: trials that shared a GPU never overlapped in time
    for spans in intervals.values():
        spans.sort()
        for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
            assert s1 >= e0, spans
    # the A100 node has one GPU: its two trials ran one after the other on GPU 0
    assert len(intervals[(a100.node_id, "0")]) == 2
    assert set(manifest["nodes"]) >= {r["node"]["fingerprint_id"] for r in records.values()}


def test_infeasible_accelerator_type_fails_fast(cluster, tmp_path):
    cluster.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:A100": 1})
    cluster.wait_for_nodes()
    suite = tmp_path / "h100only.yaml"
    suite.write_text(SUITE.format(name="h100only", regularizers="[none]", extra="accelerator_types: [H100]"))
    t0 = time.monotonic()
    rc, out, err = run_cli(suite, tmp_path / "out", cluster.address, {"REGBENCH_NODE_WAIT_S": "3"})
    assert rc == 2, err
    assert "pinned to accelerator_type H100 but no node of this Ray cluster offers it (offered: A100)" in err
    assert "waiting up to 3 s more (REGBENCH_NODE_WAIT_S) for a node" in err
    assert err.strip().splitlines()[-1].endswith("(after waiting 3 s for nodes)")
    assert time.monotonic() - t0 < 60


def test_node_removed_mid_run_trial_lands_once_on_another_node(cluster, tmp_path):
    first = cluster.add_node(num_cpus=1)
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    nodes = {first.node_id: first, second.node_id: second}
    markers = tmp_path / "markers"
    markers.mkdir()
    suite = tmp_path / "lose.yaml"
    # A zygote-started trial of 2 short epochs can end before the node is removed; 80 epochs keep the
    # victim running for seconds after its marker appears.
    suite.write_text(SUITE.format(name="lose", regularizers="[none, l2, dropout]", extra="")
                     .replace("device: gpu", "device: cpu").replace("isolation: gpu", "isolation: cpu")
                     .replace("epochs: 2", "epochs: 80"))
    proc = run_cli(suite, tmp_path / "out", cluster.address, {"REGBENCH_RAY_MARKER_DIR": str(markers)},
                   background=True)
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:
        for p in markers.glob("*.json"):
            victim = json.loads(p.read_text())
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended before a trial started: {proc.communicate()[1][-3000:]}")
        time.sleep(0.1)
    assert victim is not None, "no trial started"
    lost = nodes.pop(victim["node_id"])
    (survivor_id,) = nodes
    # A lost machine takes all its processes at once; remove_node kills the raylet and leaves its
    # workers to notice, and a worker that is slow to notice could still deliver the trial's result.
    os.kill(victim["worker_pid"], signal.SIGKILL)
    cluster.remove_node(lost, allow_graceful=False)
    rc, out, err = finish(proc)
    assert rc == 0, err
    records, manifest = load_run(tmp_path / "out")
    assert len(records) == 3 and all(r["status"] == "ok" for r in records.values()), err
    r = records[victim["trial_id"]]
    assert r["node"]["ray"]["node_id"] == survivor_id, (r["node"]["ray"], err[-2000:])
    assert manifest["placements"][victim["trial_id"]]["node_id"] == survivor_id
    with pytest.raises(ProcessLookupError):  # the trial process died with its node
        os.kill(victim["trial_pid"], 0)
    # every attempt left a marker: the first on the lost node, the last on the survivor (a retry Ray
    # placed on the lost node in the moment before it went would add one more there)
    attempts = sorted((json.loads(p.read_text()) for p in markers.glob(f"{victim['trial_id']}.*.json")),
                      key=lambda a: a["ray_attempt"])
    assert [a["ray_attempt"] for a in attempts] == list(range(len(attempts))), attempts
    assert attempts[0]["node_id"] == victim["node_id"] and attempts[-1]["node_id"] == survivor_id, attempts
    assert {a["node_id"] for a in attempts[:-1]} == {victim["node_id"]}, attempts
    # counted even when the worker died before the attempt log heard of it (Ray's attempt number)
    assert r["attempts"] == len(attempts) >= 2 and r["node"]["ray"]["ray_attempt"] == len(attempts) - 1, (
        r["attempts"], r["node"]["ray"], attempts)


def test_devices_gpu_and_cpu_side_by_side_with_reserved_host_cpus(cluster, tmp_path):
    """devices: [gpu, cpu]: each trial once per kind; GPU trials one per GPU inside a placement group
    that holds their host CPUs; CPU trials only on the cores those leave (node `gpu_node`: 3 CPUs - 2
    GPUs x 1 reserved = 1 CPU trial at a time), and on the CPU-only node."""
    gpu_node = cluster.add_node(num_cpus=3, num_gpus=2)
    cpu_node = cluster.add_node(num_cpus=1, num_gpus=0)
    cluster.wait_for_nodes()
    suite = tmp_path / "mixed.yaml"
    suite.write_text(SUITE.format(name="mixed", regularizers="[none, l2, dropout]", extra="").replace(
        "device: gpu\nisolation: gpu", "devices: [gpu, cpu]\ngpu_host_cpus: 1\ncpus_per_trial: 1"))  # SUITE says paired: false
    rc, out, err = run_cli(suite, tmp_path / "out", cluster.address)
    assert rc == 0, err
    records, manifest = load_run(tmp_path / "out")
    assert len(records) == 6, err
    for r in records.values():  # CPU copies train; GPU copies find no real GPU behind the fake one and say so
        if r["trial"]["device"] == "cpu":
            assert r["status"] == "ok", r["reason"]
        else:
            assert r["status"] == "failed" and r["reason"].startswith("a GPU trial ran on the CPU"), r["reason"]
    kinds = sorted((r["trial"]["setting"], r["trial"]["device"]) for r in records.values())
    assert kinds == sorted((s, k) for s in ("none", "l2", "dropout") for k in ("gpu", "cpu"))
    gpu_spans, cpu_on_gpu_node = {}, []
    for r in records.values():
        info, kind = r["node"]["ray"], r["trial"]["device"]
        assert r["node"]["device_kind"] == kind
        if kind == "gpu":
            assert info["node_id"] == gpu_node.node_id and len(info["gpu_ids"]) == 1
            assert info["placement_group_id"], info  # ran inside the host-CPU reservation
            assert r["trial"]["cpu_threads"] == 1
            gpu_spans.setdefault(info["gpu_ids"][0], []).append((info["t_start"], info["t_end"]))
        else:
            assert info["gpu_ids"] == [] and not info["placement_group_id"], info
            assert info["node_id"] in (gpu_node.node_id, cpu_node.node_id)
            if info["node_id"] == gpu_node.node_id:
                cpu_on_gpu_node.append((info["t_start"], info["t_end"]))
    for spans in gpu_spans.values():  # one trial per GPU at a time
        spans.sort()
        assert all(s1 >= e0 for (_, e0), (s1, _) in zip(spans, spans[1:])), spans
    cpu_on_gpu_node.sort()  # the GPU node's one unreserved CPU: its CPU trials never overlapped
    assert all(s1 >= e0 for (_, e0), (s1, _) in zip(cpu_on_gpu_node, cpu_on_gpu_node[1:])), cpu_on_gpu_node
    assert "3 on GPUs, 1 GPU + 1 reserved CPU each; 3 on CPUs" in err
