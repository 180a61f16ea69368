"""The regression gate: `regbench compare --baseline RUN CANDIDATE... --fail-on METRIC:PCT[,...]`.

Each candidate run is compared with the baseline run cell by cell (analysis/axes.py, axis "run":
workload, setting, precision, batch size, backend, device, budget and thread cap all equal). A
cell fails the gate when a metric got worse by more than PCT (percent for ratios; percentage
points for best val accuracy and the generalization gap) AND its 95% Welch interval excludes no
change; a cell with fewer than 2 repeats on a side has no interval and cannot fail. A cell whose
baseline trials were ok and whose candidate trials all failed or diverged fails too.

`against_baseline` is the command's flow (analysis/commands.py prints it). Exit codes: 1 with one
line per offending cell on stdout; 0 otherwise; 2 on bad input (an unknown metric, a bad PCT, a
path that is not a run, no cell in common).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis import axes, stats
from analysis.cells import with_keys
from analysis.errors import AnalysisInputError
from analysis.overheads import METRIC_BY_NAME, METRICS, Metric
from analysis.runs import RunData, load
from bench.errors import did_you_mean


@dataclasses.dataclass(frozen=True)
class Threshold:
    metric: Metric
    pct: float  # percent (ratio metrics) or percentage points (accuracy deltas)


@dataclasses.dataclass
class GateResult:
    thresholds: list
    changes: pd.DataFrame  # axes.changes() of the gated metrics, with `limit_pct` and `worse`
    lines: list[str]  # one per offending cell
    summary: str  # one line: what was checked

    @property
    def failed(self) -> bool:
        return bool(self.lines)


def parse_fail_on(text: str) -> list[Threshold]:
    """'step_time:5,best_val_accuracy:1' -> thresholds; AnalysisInputError (one line) when malformed."""
    out = []
    for part in [p.strip() for p in str(text).split(",")]:
        name, sep, pct = part.partition(":")
        if not sep or not name:
            raise AnalysisInputError(f"--fail-on: {part!r} is not METRIC:PCT (e.g. step_time:5)")
        if name not in METRIC_BY_NAME:
            raise AnalysisInputError(f"--fail-on: unknown metric {name!r}{did_you_mean(name, METRIC_BY_NAME)} "
                                     f"(one of {', '.join(m.name for m in METRICS)})")
        try:
            value = float(pct)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value) or value < 0:
            raise AnalysisInputError(f"--fail-on: {name}: {pct!r} is not a percentage >= 0")
        if any(t.metric.name == name for t in out):
            raise AnalysisInputError(f"--fail-on: {name} is given twice")
        out.append(Threshold(METRIC_BY_NAME[name], value))
    return out


def _worse(row, pct: float, lower_is_better: bool) -> bool:
    """Worse by more than pct with the interval excluding no change."""
    if row["mark"] != stats.SIGNIFICANT:
        return False
    if lower_is_better:
        return row["change_pct"] > pct and row["ci_low_pct"] > 0
    return row["change_pct"] < -pct and row["ci_high_pct"] < 0


def _cell_text(row, keys: list[str]) -> str:
    parts = [str(row["workload"]), str(row["setting"]), str(row["precision"]), f"b{row['batch_size']}",
             str(row["backend"]), axes.short_device(row["device_name"])]
    extra = {"epochs": "epochs", "learning_rate": "lr", "steps_per_epoch": "steps/epoch",
             "max_train_samples": "samples", "cpu_threads": "threads"}
    parts += [f"{extra[k]} {row[k]}" for k in keys if k in extra]
    return " · ".join(parts)


def check(baseline: str, trials: pd.DataFrame, thresholds: list[Threshold]) -> GateResult:
    """Gate every candidate run in `trials` (analysis.load of the baseline and the candidates)
    against the run named `baseline`."""
    runs = list(dict.fromkeys(trials["run"]))
    if baseline not in runs:
        raise AnalysisInputError(f"--baseline: run {baseline} has no readable trials")
    metrics = [t.metric for t in thresholds]
    changed = axes.changes(trials, "run", reference=baseline, metrics=metrics or [METRIC_BY_NAME["step_time"]])
    keys = axes.pair_keys(trials, "run")
    candidates = [r for r in runs if r != baseline]
    if not candidates:
        raise AnalysisInputError("--baseline: no candidate run with readable trials to compare")
    if changed.empty:
        raise AnalysisInputError(f"no cell of {', '.join(candidates)} matches a cell of the baseline {baseline} "
                                 f"(pairs need equal {', '.join(axes.key_name(k) for k in keys)}; ok trials only)")
    varying = [k for k in keys if k not in ("workload", "setting", "precision", "batch_size", "backend", "device_name")
               and changed[k].nunique(dropna=False) > 1]
    limit = {t.metric.name: t for t in thresholds}
    changed["limit_pct"] = changed["metric"].map(lambda m: limit[m].pct if m in limit else np.nan)
    changed["worse"] = [m in limit and _worse(r, limit[m].pct, limit[m].metric.lower_is_better)
                        for m, r in zip(changed["metric"], changed.to_dict("records"))]
    lines = []
    for r in changed[changed["worse"]].to_dict("records"):
        unit = "pp" if r["kind"] == "delta" else "%"
        lines.append(f"REGRESSION {r['metric']}: {r['change_pct']:+.1f}{unit} [{r['ci_low_pct']:+.1f}, "
                     f"{r['ci_high_pct']:+.1f}] worse than the limit of {limit[r['metric']].pct:g}{unit}: "
                     f"{_cell_text(r, varying)} (run {r['run']} vs baseline {baseline}; n={r['n']} vs {r['n_reference']})")
    lines += _new_failures(trials, baseline, keys, varying) if thresholds else []
    gated = changed[changed["metric"].isin(limit)]
    cells = gated.drop_duplicates(keys + ["run"])
    no_ci = int((cells["mark"] == stats.TOO_FEW).sum())
    summary = (f"gate: {len(cells)} cells of {len(candidates)} candidate run(s) vs baseline {baseline}, "
               f"{len(thresholds)} metric(s): {len(lines)} regression(s)"
               + (f"; {no_ci} cells have too few repeats for an interval and cannot fail" if no_ci else ""))
    return GateResult(thresholds, changed, lines, summary)


def against_baseline(baseline, candidates, fail_on: str) -> tuple[GateResult, RunData]:
    """The gate's flow: the --fail-on thresholds (checked before any run is read), the baseline and
    candidate runs read, each candidate checked against the baseline. Returns the result and the
    runs read (the baseline is the first of `data.manifests`)."""
    thresholds = parse_fail_on(fail_on)
    data = load([baseline, *candidates])
    return check(next(iter(data.manifests)), data.trials, thresholds), data


def _new_failures(trials: pd.DataFrame, baseline: str, keys: list[str], varying: list[str]) -> list[str]:
    """Cells that were ok in the baseline and have only failed or diverged trials in a candidate."""
    df = with_keys(trials, [k for k in keys if k != "setting"])
    ok_base = df[(df["run"] == baseline) & (df["status"] == "ok")]
    base_cells = set(map(tuple, ok_base[keys].itertuples(index=False)))
    lines = []
    for (run, *cell), g in df[df["run"] != baseline].groupby(["run"] + keys, sort=True, dropna=False):
        if tuple(cell) in base_cells and not (g["status"] == "ok").any() and g["status"].isin(["failed", "diverged"]).any():
            row = dict(zip(keys, cell))
            reason = str(g["reason"].dropna().iloc[0])[:160] if g["reason"].notna().any() else "no reason recorded"
            lines.append(f"REGRESSION {'/'.join(sorted(set(g['status'])))}: {_cell_text(row, varying)} "
                         f"(run {run}: {reason}; ok in baseline {baseline})")
    return lines
