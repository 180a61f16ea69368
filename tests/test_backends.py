"""One benchmark on three Keras backends: the smoke suite on JAX and torch (CPU here), with
TensorFlow and Ray made unimportable as on the lent GPU machines; the same trial on two backends
gives comparable, contract-valid files; backend set-up units; the GPU check script on the CPU.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest

def _need(module: str) -> None:
    """Skip unless `module` is installed (without importing it into the test process)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[{module}]')")


from conftest import ROOT, regbench, validate

BLOCKED = ("tensorflow", "ray")


@pytest.fixture(scope="session")
def no_tf_no_ray(tmp_path_factory) -> dict:
    """Environment whose Python processes (workers too) cannot import TensorFlow or Ray."""
    d = tmp_path_factory.mktemp("block")
    # None in sys.modules: `import tensorflow` raises ModuleNotFoundError, find_spec() returns None.
    (d / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({BLOCKED!r}))\n")
    return {"PYTHONPATH": os.pathsep.join([str(d), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _records(run_dir: pathlib.Path) -> dict[str, dict]:
    return {r["trial_id"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "trials").glob("*.json"))}


@pytest.fixture(scope="session")
def backend_smoke(tmp_path_factory, no_tf_no_ray):
    runs = {}

    def get(backend: str) -> pathlib.Path:
        if backend not in runs:
            _need(backend)
            out = tmp_path_factory.mktemp(f"smoke-{backend}")
            proc = regbench("run", "--suite", "smoke", "--backend", backend, "--executor", "process",
                            "--out", out, "--no-report", env=no_tf_no_ray, check=True)
            runs[backend] = pathlib.Path(proc.stdout.strip().splitlines()[-1])
        return runs[backend]

    return get


def test_blocker_really_blocks(no_tf_no_ray):
    code = "import importlib.util as u, sys\ntry:\n import tensorflow\nexcept ImportError: print('blocked')"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **no_tf_no_ray},
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "blocked", out.stderr


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_smoke_suite_on_backend_without_tensorflow_or_ray(backend_smoke, backend):
    run = backend_smoke(backend)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["suite"]["backend"] == backend
    recs = _records(run)
    assert len(recs) == len(manifest["trial_ids"]) == 6
    p50 = {}
    for r in recs.values():
        assert r["trial"]["backend"] == backend and r["node"]["executor"] == "process"
        if r["status"] == "skipped":
            assert r["trial"]["precision"] == "mixed_float16" and backend in r["reason"]
            continue
        assert r["status"] == "ok", (r["trial_id"], r["reason"], r.get("traceback", "")[-1500:])
        t = r["timing"]
        # JAX: XLA always (mixed_float16 runs fused, ~2x float32 on this CPU, not ~100x); torch: eager.
        assert t["jit_compile"] is (backend == "jax") and t["jit_disabled_by"] == []
        # 1437 digits rows // 64 = 22 steps an epoch; epochs 2-3 less their first batch are steady
        assert t["steady_state_steps"] == 42 and t["steps_run"] == 66
        assert 0 < t["step_time_p50_s"] <= t["step_time_p95_s"]
        assert t["samples_per_s"] == pytest.approx(64 / t["step_time_mean_s"], rel=1e-9)
        p50[(r["trial"]["setting"], r["trial"]["precision"])] = t["step_time_p50_s"]
        assert t["free_running_syncs"] == "window" and t["free_running_step_s"] > 0  # no per-step wait here
        assert r["node"]["framework_device"].lower().startswith("cpu")  # where the framework put the model
        assert r["process"]["environment"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert r["process"]["environment"]["OMP_NUM_THREADS"] == "1"  # the suite's cpus_per_trial
        assert r["memory"]["device_peak_bytes"] is None and r["memory"]["null_reasons"]["device_peak_bytes"]
        assert r["energy"]["energy_j"] is None and r["energy"]["null_reasons"]["energy_j"]  # no NVML / CPU trial
        assert r["compute"]["peak_flops_per_s"] > 1e9
        assert r["convergence"]["best_val_accuracy"] > 0.8
    statuses = sorted(r["status"] for r in recs.values())
    assert statuses == (["ok"] * 6 if backend == "jax" else ["ok"] * 3 + ["skipped"] * 3)
    if backend == "jax":  # the claim above: float16 fused by XLA costs a small factor, not emulation's ~100x
        for setting in ("none", "l2", "dropout"):
            assert p50[(setting, "mixed_float16")] / p50[(setting, "float32")] < 10, p50
    assert (run / "trials.parquet").exists()
    proc = validate(run)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-500:]


def test_same_trial_on_two_backends_is_comparable(backend_smoke):
    a, b = (_records(backend_smoke(x)) for x in ("jax", "torch"))

    def key(r):
        t = r["trial"]
        return (t["workload"], t["setting"], t["precision"], t["batch_size"], t["repeat"])

    by_key = {key(r): r for r in b.values()}
    pairs = [(r, by_key[key(r)]) for r in a.values() if r["status"] == "ok" and by_key[key(r)]["status"] == "ok"]
    assert len(pairs) == 3  # none, l2, dropout at float32
    for ra, rb in pairs:
        ta, tb = dict(ra["trial"]), dict(rb["trial"])
        assert ta.pop("backend") == "jax" and tb.pop("backend") == "torch"
        assert ta.pop("cell_id") != tb.pop("cell_id")  # backend is part of the identity...
        assert ta == tb  # ...and nothing else differs
        assert ra["trial_id"] != rb["trial_id"]
        for section in ("timing", "memory", "energy", "compute", "convergence"):
            assert set(ra[section]) == set(rb[section]), section  # same columns for analysis
        # Same model, same data, same budget: same work, similar learning.
        assert ra["compute"]["flops_per_sample"] == rb["compute"]["flops_per_sample"] > 0
        assert ra["timing"]["steps_run"] == rb["timing"]["steps_run"]
        assert len(ra["convergence"]["curve"]) == len(rb["convergence"]["curve"]) == 3
        assert abs(ra["convergence"]["best_val_accuracy"] - rb["convergence"]["best_val_accuracy"]) < 0.08


# ---- units ------------------------------------------------------------------------------------

@pytest.fixture
def restored_environ():
    """configure_process writes os.environ directly; put every variable back afterwards, or a
    leaked CUDA_VISIBLE_DEVICES="" / KERAS_BACKEND=jax changes the tests that run later."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_configure_process_per_backend(monkeypatch, restored_environ):
    from bench import backends

    for var in ("KERAS_BACKEND", "XLA_FLAGS", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    backends.configure_process("jax", 2, gpu=False)
    assert os.environ["KERAS_BACKEND"] == "jax" and os.environ["JAX_PLATFORMS"] == "cpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and os.environ["OMP_NUM_THREADS"] == "2"
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # CUDA numbers GPUs as NVML does
    assert "XLA_FLAGS" not in os.environ  # JAX's CPU threads follow the cores the trial is pinned to
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as Ray sets it for a 1-CPU task
    backends.configure_process("jax", None, gpu=None)  # a GPU trial leaves the platform alone
    assert "JAX_PLATFORMS" not in os.environ and "CUDA_VISIBLE_DEVICES" not in os.environ
    assert "OMP_NUM_THREADS" not in os.environ  # no thread cap: not Ray's 1 either
    assert os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    with pytest.raises(ValueError, match="unknown backend"):
        backends.configure_process("mxnet", None)


def test_jit_setting_and_record():
    from bench import backends

    assert backends.jit_setting("auto", "jax", "cpu") is True
    assert backends.jit_setting("auto", "torch", "gpu") is False
    assert backends.jit_setting("auto", "tensorflow", "cpu") is False
    assert backends.jit_setting("auto", "tensorflow", "gpu") is True
    assert backends.jit_setting("off", "jax", "gpu") is False
    assert backends.compile_arg("auto") == "auto" and backends.compile_arg("on") is True
    assert backends.compile_arg("off") is False


def test_jit_record_of_real_models():
    """Defect caught: a trial recorded as XLA-compiled when Keras silently ran it eagerly (an
    in-model RandomTranslation switches jit off even when it is asked for), or the blocker unnamed.
    Real models, built the runner's way on TensorFlow."""
    from bench import backends
    from bench.regularizers import recipe_for
    from bench.runner import build_model
    from bench.trial import Trial
    from bench.workloads import WORKLOADS
    from tests.model_facts import data_for

    def record(workload, regs, jit):
        t = Trial(workload=workload, regularizers=regs, precision="float32", batch_size=16, jit_compile=jit)
        return backends.jit_record(build_model(t, WORKLOADS[workload], recipe_for(regs), data_for(workload)), jit)

    augment = (("augmentation", {"where": "model", "strength": 0.1}),)
    keras_layers = (("augmentation", {"where": "model_keras", "strength": 0.1}),)
    assert record("synthetic_cnn", (), "on") == {"jit_compile": True, "jit_compile_requested": "on",
                                                 "jit_disabled_by": []}
    assert record("synthetic_cnn", augment, "on")["jit_compile"] is True  # the jit-safe shift-and-flip layer
    assert record("synthetic_cnn", keras_layers, "on") == {"jit_compile": False, "jit_compile_requested": "on",
                                                           "jit_disabled_by": ["RandomTranslation"]}
    assert record("digits_mlp", augment, "on")["jit_compile"] is True  # GaussianNoise compiles
    assert record("synthetic_cnn", (), "off")["jit_compile"] is False


def test_memory_tracker_on_cpu_is_null_with_reason():
    from bench.measure.memory import MemoryTracker

    m = MemoryTracker("jax", gpu=False)
    m.start()
    m.stop()
    out = m.result()
    assert out["host_peak_bytes"] > 10 * 2**20
    assert out["device_peak_bytes"] is None and out["device_reserved_peak_bytes"] is None
    assert "no GPU" in out["null_reasons"]["device_peak_bytes"]


def test_nvml_absent_or_no_gpu_is_null_with_reason(monkeypatch):
    from bench.measure.energy import NvmlSampler

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    s = NvmlSampler()
    s.start()
    s.stop()
    e = s.energy_result(1000)
    assert e["energy_j"] is None and e["input_bound"] is None and e["null_reasons"]["energy_j"]
    assert s.memory_result()["nvml_used_peak_bytes"] is None


# ---- the GPU check script, on the CPU ---------------------------------------------------------

def test_gpu_check_script_on_cpu(tmp_path, no_tf_no_ray):
    """tests/benchmarks/gpu_check.sh end to end in its CPU fallback (no GPU: gpu_check_cpu.yaml), every
    step but the wheel install (tested by hand in a venv with the GPU machine's package set), with TF
    and Ray blocked: torch first, then jax, each within its share of the budget; both get results,
    a backend its share cuts short stops cleanly with what it has, and the summary gives the
    per-trial cost."""
    _need("jax")
    _need("torch")
    import time

    out = tmp_path / "out"
    budget = 80
    env = {**os.environ, **no_tf_no_ray, "OUT": str(out), "PYTHON": sys.executable, "GPUCHECK_WHEELS": "skip",
           "GPUCHECK_BACKENDS": "torch jax nosuchbackend", "GPUCHECK_SYNC": "0", "GPUCHECK_MIN_S": "0",
           "GPUCHECK_BUDGET_S": str(budget), "CUDA_VISIBLE_DEVICES": "", "GPUCHECK_COMMIT": "abc123"}
    t = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "tests" / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    took = time.monotonic() - t
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert took < budget + 2 * 20 + 30, took  # the shares, a stop each, set-up and packing
    dest, script_out = out / "gpucheck", proc.stdout
    files = sorted(p.name for p in dest.iterdir())
    assert files == ["env.json", "log.txt", "run-jax.tar.gz", "run-torch.tar.gz", "summary.txt"], files
    assert all(p.relative_to(out).parts.__len__() <= 3 for p in out.rglob("*"))  # $OUT/a/b/file at most
    summary = (dest / "summary.txt").read_text()
    assert "device: cpu" in summary and "gpu_check_cpu.yaml" in summary and "nosuchbackend: not installed" in summary
    lines = summary.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith(("torch:", "jax:"))] == ["torch", "jax"]
    assert summary.count("  per-trial cost: median ") == 2, summary
    for backend in ("torch", "jax"):
        assert f"-> results/reference/cpu-{backend}/" in summary
        unpacked = tmp_path / "reference" / f"cpu-{backend}"
        unpacked.mkdir(parents=True)
        with tarfile.open(dest / f"run-{backend}.tar.gz") as tar:
            tar.extractall(unpacked)
        recs = _records(unpacked)
        assert any(r["status"] == "ok" for r in recs.values()), (backend, summary)
        assert all(r["status"] == "ok" for r in recs.values()), [r.get("reason") for r in recs.values()]
        manifest = json.loads((unpacked / "manifest.json").read_text())
        assert manifest["status"] in ("complete", "interrupted") and manifest["git_commit"]
        assert len(manifest["trial_ids"]) == 12
        # pairs first: the first cell's baseline and its settings ran before anything else
        ran = sorted(recs.values(), key=lambda r: r["started_at"])
        first = [(r["trial"]["workload"], r["trial"]["precision"], r["trial"]["setting"]) for r in ran[:2]]
        assert first[0][:2] == first[1][:2] and first[0][2] == "none" and first[1][2] != "none", first
        assert f"mkdir -p results/reference/cpu-{backend} && tar xzf" in script_out
        assert f".venv/bin/regbench report results/reference/cpu-{backend}" in script_out
        if manifest["status"] == "complete":
            proc = validate(unpacked)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-500:]


def test_gpu_check_script_fails_when_no_pair_lands(tmp_path, no_tf_no_ray):
    """Defect caught: the check exited 0 and named a results/reference/ folder for a run whose
    every trial failed, which would bless a failed run as the GPU reference."""
    _need("torch")
    suite = tmp_path / "failing.yaml"
    suite.write_text("name: failing\nworkloads: [{name: digits_mlp, max_train_samples: 32}]\n"
                     "regularizers: [none, dropout]\nprecisions: [float32]\nbatch_sizes: [64]\nrepeats: 1\n"
                     "epochs: 1\nisolation: cpu\ncpus_per_trial: 1\nmax_retries: 0\npaired: false\n")
    out = tmp_path / "out"
    env = {**os.environ, **no_tf_no_ray, "OUT": str(out), "PYTHON": sys.executable, "GPUCHECK_WHEELS": "skip",
           "GPUCHECK_BACKENDS": "torch", "GPUCHECK_SYNC": "0", "GPUCHECK_MIN_S": "0", "GPUCHECK_BUDGET_S": "120",
           "GPUCHECK_SUITE": str(suite), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(ROOT / "tests" / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    summary = (out / "gpucheck" / "summary.txt").read_text()
    assert proc.returncode == 5, proc.stdout[-3000:]
    assert "0 ok pair(s): nothing to commit" in summary and "results/reference/cpu-torch" not in summary
    assert "no ok pair landed" in proc.stdout and "mkdir -p results/reference" not in proc.stdout


def test_gpu_check_script_stops_at_its_budget(tmp_path):
    """A backend started with too little budget left is not run; the summary says so, and with no
    pair landed the script exits 5."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPUCHECK_WHEELS": "skip",
           "GPUCHECK_BACKENDS": "jax", "GPUCHECK_BUDGET_S": "0", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(ROOT / "tests" / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 5, proc.stdout[-2000:]
    assert "jax: not run (budget)" in (out / "gpucheck" / "summary.txt").read_text()


def test_gpu_check_script_without_wheels_says_how_to_get_them(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "GPUCHECK_WHEELS": str(tmp_path / "none")}
    proc = subprocess.run(["bash", str(ROOT / "tests" / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3 and "no keras wheel" in proc.stdout
