"""`regbench run --resume RUN --retry-failed`: failed trials run again exactly once, the old records kept."""
from __future__ import annotations

import json

from bench import retry
from bench.store import RunStore
from tests.conftest import regbench
from tests.fixtures.run_copies import copy_run


def _mark(setting: str, status: str):
    def edit(rec):
        if rec["trial"]["setting"] == setting and rec["trial"]["precision"] == "float32":
            rec.update(status=status, reason=f"{status} on purpose")
    return edit


def _records(run):
    return {p.stem: json.loads(p.read_text()) for p in (run / "trials").glob("*.json")}


def test_retry_failed_runs_failed_trials_once_and_keeps_the_old_records(smoke_run, tmp_path):
    def edit(rec):
        _mark("l2", "failed")(rec)
        _mark("dropout", "diverged")(rec)
    run = copy_run(smoke_run, tmp_path / "run", jitter=0.0, edit=edit)
    before = _records(run)
    (failed_id,) = [i for i, r in before.items() if r["status"] == "failed"]
    proc = regbench("run", "--resume", run, "--retry-failed", "--executor", "process", "--no-report", check=True)
    assert "retry round 1: 1 failed unit(s) to run again" in proc.stderr
    after = _records(run)
    assert set(after) == set(before)
    assert after[failed_id]["status"] == "ok"  # ran again, landed once
    for tid, rec in before.items():  # diverged, skipped and ok records were not touched
        if tid != failed_id:
            assert after[tid] == rec
    history = list((run / "history" / "trials").iterdir())
    assert [p.name for p in history] == [f"{failed_id}.1.json"]
    assert json.loads(history[0].read_text()) == before[failed_id]
    manifest = json.loads((run / "manifest.json").read_text())
    (round1,) = manifest["retries"]
    assert round1["round"] == 1 and round1["units"] == [{"kind": "trial", "id": failed_id}] and round1["finished_at"]
    assert manifest["status"] == "complete"
    # nothing failed any more: a second --retry-failed runs nothing and moves nothing
    again = regbench("run", "--resume", run, "--retry-failed", "--executor", "process", "--no-report", check=True)
    assert "retry: no failed trial to run again" in again.stderr and "0 to run" in again.stderr
    assert _records(run) == after and len(list((run / "history" / "trials").iterdir())) == 1
    assert validate_ok(run)


def validate_ok(run) -> bool:
    proc = regbench("validate", run, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return True


def test_an_interrupted_round_is_finished_never_repeated(smoke_run, tmp_path):
    run = copy_run(smoke_run, tmp_path / "run", jitter=0.0, edit=_mark("none", "failed"))
    store = RunStore.open(run)
    (failed_id,) = [i for i, r in _records(run).items() if r["status"] == "failed"]
    assert retry.begin(store) == (1, [failed_id])
    # the driver dies here; the retried trial then lands failed again in a later resume ...
    store.write_trial({**json.loads(store.layout.history("trial", failed_id, 1).read_text())})
    # ... and the next --retry-failed finishes round 1 instead of retrying the same failure again
    assert retry.begin(store) == (1, [failed_id])
    assert (run / "trials" / f"{failed_id}.json").exists()
    assert len(list((run / "history" / "trials").iterdir())) == 1
    retry.finish(store)
    assert retry.begin(store) == (2, [failed_id])  # a new, explicit request: round 2
    assert sorted(p.name for p in (run / "history" / "trials").iterdir()) == [f"{failed_id}.1.json",
                                                                             f"{failed_id}.2.json"]


def test_a_plain_resume_finishes_a_round_interrupted_before_its_records_moved(smoke_run, tmp_path):
    """Defect caught: --resume without --retry-failed closing an open round whose failed records
    were never moved, so they are never run again."""
    run = copy_run(smoke_run, tmp_path / "run", jitter=0.0, edit=_mark("l2", "failed"))
    store = RunStore.open(run)
    (failed_id,) = [i for i, r in _records(run).items() if r["status"] == "failed"]
    # the round is recorded first; the driver dies before the record moves
    store.update_manifest(retries=[{"round": 1, "units": [{"kind": "trial", "id": failed_id}],
                                    "started_at": "2026-01-01T00:00:00+00:00", "finished_at": None}])
    regbench("run", "--resume", run, "--executor", "process", "--no-report", check=True)
    assert _records(run)[failed_id]["status"] == "ok"
    assert [p.name for p in (run / "history" / "trials").iterdir()] == [f"{failed_id}.1.json"]
    assert json.loads((run / "manifest.json").read_text())["retries"][0]["finished_at"]


def test_retry_failed_needs_resume(tmp_path):
    proc = regbench("run", "--retry-failed", "--suite", "smoke", "--out", tmp_path, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "regbench: error: --retry-failed: needs --resume RUN_DIR (the run whose failed trials to run again)"


def test_the_failure_list_links_each_failed_trials_log(smoke_run, tmp_path):
    import analysis

    run = copy_run(smoke_run, tmp_path / "run", jitter=0.0, edit=_mark("l2", "failed"))
    (failed_id,) = [i for i, r in _records(run).items() if r["status"] == "failed"]
    log = run / "logs" / f"{failed_id}.log"
    assert log.stat().st_size > 0  # the trial process's output, kept by the executor
    index = analysis.write_report(run)
    html, md = index.read_text(), (index.parent / "summary.md").read_text()
    assert f'<a href="../logs/{failed_id}.log">../logs/{failed_id}.log</a>' in html
    assert f"[../logs/{failed_id}.log](../logs/{failed_id}.log)" in md
    assert (index.parent / f"../logs/{failed_id}.log").resolve() == log.resolve()
    skipped = [i for i, r in _records(run).items() if r["status"] == "skipped"]
    fails = analysis.failures(analysis.load(run)).set_index("trial_id")
    assert fails.loc[failed_id, "log"] == f"../logs/{failed_id}.log"
    assert (fails.loc[skipped, "log"] == "").all()  # decided without a process: no log to link
    # the notebook API gives the report's numbers
    import pandas as pd

    data = analysis.load(run)
    api = analysis.overhead(data.trials, sessions=data.sessions)
    csv = pd.read_csv(index.parent / "overhead.csv")
    assert len(api) == len(csv) and len(api)
    key = ["setting", "metric", "method"]
    merged = api.merge(csv, on=key, suffixes=("", "_csv"))
    assert len(merged) == len(api)
    assert (merged["estimate"] - merged["estimate_csv"]).abs().max() < 1e-9
