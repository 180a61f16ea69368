"""`regbench export RUN --mlflow URI`: a run's trials as MLflow runs (the optional extra `mlflow`).

One MLflow run per trial, in the experiment `regbench-<suite name>` (or `--experiment NAME`):
- params: what was run and where (the trial section, the node's device, host and fingerprint);
- metrics: every number of the trial file's flat view (bench/records.py: step_time_p50_s,
  samples_per_s, host_peak_bytes, energy_per_sample_j, best_val_accuracy, ...; nulls are left
  out, never logged as zero), and the learning curve as `curve/<field>` with the epoch as step;
- tags: `regbench.run_id`, `regbench.trial_id`, `regbench.status`, `regbench.reason`; the MLflow
  run's name is the trial id, its status FINISHED (ok, skipped) or FAILED (failed, diverged), its
  start and end times the trial's;
- artifacts: the trial file (`trial/<trial_id>.json`) and the trial process's output when the run
  kept it (`logs/<trial_id>.log`).

Exporting again adds only the trials not there yet (matched by run id and trial id tags).
MLflow 3 keeps a local `file:` store in maintenance mode and refuses it unless
MLFLOW_ALLOW_FILE_STORE=true; `sqlite:///path/mlflow.db` is its local store of choice (artifacts
then go to `mlartifacts/` beside the database file).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path

from analysis.errors import AnalysisInputError
from bench.errors import UserError
from bench.layout import require_run
from bench.store import RunStore, read_json

PARAM_FIELDS = {"trial": ("workload", "setting", "precision", "batch_size", "backend", "repeat", "seed", "epochs",
                          "learning_rate", "cell_id", "steps_per_epoch", "max_train_samples", "target_val_accuracy",
                          "jit_compile", "device", "accelerator_type", "model", "regularizers"),
                "node": ("hostname", "device_kind", "device_name", "executor", "fingerprint_id", "cpu_threads",
                         "gpu_uuid")}
CURVE_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "xent_loss", "val_xent_loss")
SKIP_METRICS = {"schema_version", "repeat", "seed", "epochs", "batch_size", "learning_rate", "steps_per_epoch",
                "max_train_samples", "target_val_accuracy", "cpu_threads"}  # params, not measurements
MAX_PARAMS, MAX_METRICS = 100, 1000  # per log_batch call


@dataclasses.dataclass
class ExportResult:
    experiment: str
    experiment_id: str
    exported: list  # trial ids exported now
    present: list  # trial ids found exported before


def _ms(iso: str | None) -> int | None:
    if not iso:
        return None
    try:
        return int(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def params_of(record: dict) -> dict[str, str]:
    out = {}
    for section, fields in PARAM_FIELDS.items():
        sec = record.get(section) or {}
        for f in fields:
            if sec.get(f) is not None:
                out[f if section == "trial" or f not in out else f"{section}.{f}"] = _text(sec[f])[:6000]
    return out


def metrics_of(record: dict) -> dict[str, float]:
    """The numbers of the trial file's flat view (finite ones only; booleans as 0/1)."""
    from bench.records import flatten_trial

    out = {}
    for key, value in flatten_trial(record).items():
        if key in SKIP_METRICS or isinstance(value, str) or value is None:
            continue
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


def _client(uri: str):
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise AnalysisInputError("--mlflow: MLflow is not installed; pip install 'regbench[mlflow]'") from None
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # opens the store: a bad URI fails here, in one line
    except MlflowException as e:
        raise AnalysisInputError(f"--mlflow {uri}: {str(e).splitlines()[0][:300]}") from None
    return client


def _experiment(client, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # else MLflow puts artifacts in ./mlruns of whatever folder this runs in
        location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def _exported(client, experiment_id: str, run_id: str) -> set[str]:
    found, token = set(), None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`regbench.run_id` = '{run_id}'",
                                  max_results=1000, page_token=token)
        found |= {r.data.tags.get("regbench.trial_id") for r in page}
        token = page.token
        if not token:
            return found


def export(run_dir, uri: str, experiment: str | None = None) -> ExportResult:
    """Export every trial of `run_dir` to the MLflow tracking store at `uri`; see the module doc."""
    store = RunStore(require_run(run_dir, error=AnalysisInputError).path)  # read only: the manifest is read below
    try:
        manifest = store.manifest()
    except UserError as e:
        raise AnalysisInputError(str(e)) from None
    run_id = manifest.get("run_id") or store.path.name
    suite = manifest.get("suite") or {}
    name = experiment or f"regbench-{suite.get('name', 'run') if isinstance(suite, dict) else 'run'}"
    client = _client(uri)
    from mlflow.entities import Metric, Param

    experiment_id = _experiment(client, name, uri)
    present = _exported(client, experiment_id, run_id)
    done, before = [], []
    for path in sorted(store.trials_dir.glob("*.json")):
        try:
            record = read_json(path)
        except UserError as e:
            raise AnalysisInputError(str(e)) from None
        trial_id = record["trial_id"]
        if trial_id in present:
            before.append(trial_id)
            continue
        status = record.get("status")
        tags = {"regbench.run_id": run_id, "regbench.trial_id": trial_id, "regbench.status": str(status),
                "regbench.reason": str(record.get("reason") or "")[:5000]}
        run = client.create_run(experiment_id, start_time=_ms(record.get("started_at")), tags=tags,
                                run_name=trial_id)
        rid = run.info.run_id
        now = _ms(record.get("finished_at")) or 0
        params = [Param(k, v) for k, v in params_of(record).items()]
        metrics = [Metric(k, v, now, 0) for k, v in metrics_of(record).items()]
        for point in (record.get("convergence") or {}).get("curve") or []:
            for f in CURVE_METRICS:
                v = point.get(f)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    metrics.append(Metric(f"curve/{f}", float(v), now, int(point.get("epoch") or 0)))
        for i in range(0, len(params), MAX_PARAMS):
            client.log_batch(rid, params=params[i:i + MAX_PARAMS])
        for i in range(0, len(metrics), MAX_METRICS):
            client.log_batch(rid, metrics=metrics[i:i + MAX_METRICS])
        client.log_artifact(rid, str(path), "trial")
        log = store.log_path(trial_id)
        if log.is_file():
            client.log_artifact(rid, str(log), "logs")
        client.set_terminated(rid, "FINISHED" if status in ("ok", "skipped") else "FAILED", end_time=now or None)
        done.append(trial_id)
    return ExportResult(name, experiment_id, done, before)
