"""`regbench export RUN --mlflow URI` against MLflow's own local stores, read back with MLflow's client."""
from __future__ import annotations

import json

import pytest

from tests.conftest import regbench

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[mlflow]')")


def _read_back(uri: str, run_dir, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client, client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.parametrize("store", ["file", "sqlite"])
def test_export_one_mlflow_run_per_trial_read_back_through_mlflow(smoke_run, tmp_path, store):
    uri = (tmp_path / "mlruns").as_uri() if store == "file" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_ALLOW_FILE_STORE": "true"} if store == "file" else {}
    proc = regbench("export", smoke_run, "--mlflow", uri, env=env, timeout=300, check=True)
    trials = {p.stem: json.loads(p.read_text()) for p in (smoke_run / "trials").glob("*.json")}
    assert proc.stdout.startswith(f"exported {len(trials)} trials of {smoke_run} to {uri} (experiment regbench-smoke")
    import os

    os.environ.update(env)
    try:
        client, runs = _read_back(uri, smoke_run, "regbench-smoke")
        assert sorted(r.data.tags["regbench.trial_id"] for r in runs) == sorted(trials)
        for run in runs:
            rec = trials[run.data.tags["regbench.trial_id"]]
            assert run.info.run_name == rec["trial_id"]
            assert run.data.tags["regbench.status"] == rec["status"]
            assert run.info.status == ("FINISHED" if rec["status"] in ("ok", "skipped") else "FAILED")
            p = run.data.params
            assert (p["workload"], p["setting"], p["precision"], p["batch_size"]) == (
                rec["trial"]["workload"], rec["trial"]["setting"], rec["trial"]["precision"], str(rec["trial"]["batch_size"]))
            assert p["device_name"] == rec["node"]["device_name"] and p["fingerprint_id"] == rec["node"]["fingerprint_id"]
            m = run.data.metrics
            if rec["status"] == "ok":
                assert m["step_time_p50_s"] == pytest.approx(rec["timing"]["step_time_p50_s"])
                assert m["host_peak_bytes"] == pytest.approx(rec["memory"]["host_peak_bytes"])
                assert m["best_val_accuracy"] == pytest.approx(rec["convergence"]["best_val_accuracy"])
                assert "energy_per_sample_j" not in m  # null on this CPU: left out, not a zero
                curve = client.get_metric_history(run.info.run_id, "curve/val_accuracy")
                curve = sorted(curve, key=lambda h: h.step)
                assert [h.step for h in curve] == [c["epoch"] for c in rec["convergence"]["curve"]]
                assert [h.value for h in curve] == pytest.approx([c["val_accuracy"] for c in rec["convergence"]["curve"]])
            else:
                assert "step_time_p50_s" not in m
            files = {f.path for f in client.list_artifacts(run.info.run_id, "trial")}
            assert files == {f"trial/{rec['trial_id']}.json"}
            local = client.download_artifacts(run.info.run_id, f"trial/{rec['trial_id']}.json", str(tmp_path / "dl"))
            assert json.loads(open(local).read()) == rec  # the trial file, byte for byte in content
        if store == "sqlite":  # artifacts beside the database, not in the current folder
            assert (tmp_path / "mlartifacts").is_dir()
    finally:
        for k in env:
            os.environ.pop(k, None)
    if store == "file":  # exporting again adds nothing (the same code path for every store)
        again = regbench("export", smoke_run, "--mlflow", uri, env=env, timeout=300, check=True)
        assert again.stdout.startswith("exported 0 trials") and f"{len(trials)} were there already" in again.stdout


def test_export_bad_input_is_one_line(tmp_path):
    proc = regbench("export", tmp_path, "--mlflow", f"sqlite:///{tmp_path / 'm.db'}", timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"regbench: error: {tmp_path}: not a regbench run (no manifest.json)"
