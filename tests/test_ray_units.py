"""Fast checks of the Ray executor's pure parts (resource requests, infeasibility messages,
cluster detection) and of the progress display. No Ray instance is started here."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

from bench.executors.ray import connect as rconnect, resources as rx
from bench.progress import Progress
from bench.suite import parse

BASE = {"workloads": ["digits_mlp"], "regularizers": ["none"], "precisions": ["float32"], "batch_sizes": [32],
        "repeats": 2}


def suite(**kw):
    return parse({**BASE, **kw}, "test.yaml")


def node(cpu=2, gpu=0, **custom):
    return {"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": cpu, "GPU": gpu, **custom}}


def test_requests_per_isolation_and_device():
    s = suite(isolation="cpu", cpus_per_trial=2)
    assert rx.request_for(s.trials[0], s, gpu=False) == {"CPU": 2.0}
    s = suite(device="gpu")
    assert rx.request_for(s.trials[0], s, gpu=True) == {"CPU": 1.0, "GPU": 1.0}  # never fractional
    s = suite(isolation="node")
    assert rx.request_for(s.trials[0], s, gpu=False) == {"CPU": 1.0, rx.NODE_SLOT: 1.0}
    s = suite(device="gpu", accelerator_types=["H100", "A100"])
    reqs = [rx.request_for(t, s, gpu=True) for t in s.trials]
    assert {"CPU": 1.0, "GPU": 1.0, "accelerator_type:H100": 0.001} in reqs
    assert {"CPU": 1.0, "GPU": 1.0, "accelerator_type:A100": 0.001} in reqs


def test_device_auto_follows_the_cluster():
    assert rx.wants_gpu(suite(), [node(gpu=0), node(gpu=1)]) is True
    assert rx.wants_gpu(suite(), [node(gpu=0)]) is False
    assert rx.wants_gpu(suite(device="cpu"), [node(gpu=8)]) is False


def test_infeasible_messages_name_what_is_missing():
    cpu_only = [node(cpu=2)]
    assert rx.infeasible_reason({"CPU": 1.0}, cpu_only, "s") is None
    msg = rx.infeasible_reason({"CPU": 1.0, "GPU": 1.0}, cpu_only, "s")
    assert "asks for 1 GPU per trial but no node of this Ray cluster has a GPU" in msg
    msg = rx.infeasible_reason({"CPU": 4.0}, cpu_only, "s")
    assert "asks for 4 CPUs per trial" in msg and "lower cpus_per_trial" in msg
    msg = rx.infeasible_reason({"CPU": 1.0, rx.NODE_SLOT: 1.0}, cpu_only, "s")
    assert "isolation: node" in msg and "regbench_node_slot" in msg
    gpus = [node(gpu=1, **{"accelerator_type:A100": 1})]
    msg = rx.infeasible_reason({"CPU": 1.0, "GPU": 1.0, "accelerator_type:H100": 0.001}, gpus, "s")
    assert "accelerator_type H100" in msg and "offered: A100" in msg
    # a node with everything, but not together: resources must fit on ONE node
    split = [node(cpu=8, gpu=0), node(cpu=0, gpu=1)]
    assert rx.infeasible_reason({"CPU": 1.0, "GPU": 1.0}, split, "s") is not None


def test_cluster_detection(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert rconnect.joins_cluster() is False
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert rconnect.joins_cluster() is True


def test_a_cluster_file_alone_is_not_joined(monkeypatch, tmp_path):
    """Defect caught: a run joining whatever cluster /tmp/ray/ray_current_cluster names, a file any
    user of the machine can write. Only RAY_ADDRESS or `--address` (auto: this node's cluster) join."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # Ray looks for $RAY_TMPDIR/ray/ray_current_cluster
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.255.255.1:6379\n")
    assert rconnect.joins_cluster() is False
    assert rconnect.announced_cluster() == "10.255.255.1:6379"
    assert rconnect.joins_cluster("auto") is True and rconnect.joins_cluster("10.0.0.1:6379") is True
    assert rconnect.joins_cluster("local") is False
    monkeypatch.setenv("RAY_ADDRESS", "local")  # --address wins over the environment
    assert rconnect.joins_cluster("auto") is True


def test_a_local_node_keeps_the_loopback_address():
    """What binds a private instance to loopback (connect._loopback_node), without starting one:
    inside it Ray takes 127.0.0.1 as this node's IP instead of rewriting it to the outward
    address; outside it (joining a cluster) nothing changes. The real ports: test_ray_local_security."""
    import ray
    from ray._private import ray_constants, services

    assert not ray.is_initialized()
    before = ray_constants.ENABLE_RAY_CLUSTER
    with rconnect._loopback_node():
        assert services.resolve_ip_for_localhost(rconnect.LOOPBACK) == "127.0.0.1"
        assert services.get_node_ip_address() == "127.0.0.1"
    assert ray_constants.ENABLE_RAY_CLUSTER == before


def test_trial_process_module_imports_neither_ray_nor_a_framework():
    code = ("import sys, bench.executors.child, bench.executors.trial_process; "
            "print(sorted(m for m in ('ray', 'keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_progress_plain_lines_counts_and_eta():
    stream = io.StringIO()
    p = Progress(4, stream=stream, live=False)
    p.finished({"status": "skipped", "trial_id": "a", "reason": "no fp16 here"}, was_running=False)
    assert p.eta_s() is None  # skipped trials say nothing about how long the others take
    p.started(2)
    p.finished({"status": "ok", "trial_id": "b"})
    p.finished({"status": "failed", "trial_id": "c", "reason": "boom"})
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[1/4] skipped a (no fp16 here)")
    assert lines[1].startswith("[2/4] ok b") and "running 1" in lines[1] and "eta" in lines[1]
    assert lines[2].startswith("[3/4] failed c (boom)")
    assert p.counts == {"ok": 1, "failed": 1, "diverged": 0, "skipped": 1} and p.running == 0
    assert p.eta_s() is not None and p.eta_s() >= 0


def test_progress_live_bar_and_heartbeat():
    stream = io.StringIO()
    p = Progress(3, stream=stream, live=True)
    p.set_running(2)
    p.finished({"status": "ok", "trial_id": "a"})
    text = stream.getvalue()
    assert "\r\033[K[" in text and "1/3 ok 1 running 1 failed 0 skipped 0" in text and "eta" in text
    quiet = io.StringIO()
    q = Progress(3, stream=quiet, live=False, heartbeat_s=0.0001)
    q.started()
    import time

    time.sleep(0.01)
    q.set_running(1)  # any event from the executor refreshes the heartbeat
    assert "elapsed: ok 0, running 1" in quiet.getvalue()


@pytest.mark.parametrize("value,expected", [(5, "5s"), (65, "1m05s"), (3725, "1h02m")])
def test_duration_format(value, expected):
    from bench.progress import _hms

    assert _hms(value) == expected


def test_unreachable_cluster_address_fails_in_seconds(monkeypatch):
    import time

    from bench.errors import UserError

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    t0 = time.monotonic()
    with pytest.raises(UserError, match="cannot join the Ray cluster at 127.0.0.1:1"):
        rconnect.connect()
    assert time.monotonic() - t0 < 15


def test_ray_executor_without_ray_is_a_clear_error(monkeypatch):
    from bench import executors
    from bench.errors import UserError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UserError, match="--executor process"):
        executors.execute(suite(), [], None, "ray", None)
