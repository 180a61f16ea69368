"""`regbench compare RUN_DIR... [--by device|software|backend|run]`: groups side by side.

The groups are the labels on one axis (analysis/axes.py): device models, software versions,
backends or runs. Every comparison pairs cells with everything else held equal and says what that
was. Per group: the regularizers' overheads (each group against its own baselines, the same pairing
and t intervals as a single-run report), mixed-precision speedups, baseline throughput, samples per
joule and per dollar (analysis/efficiency.py); across groups: each group's numbers against the
reference group's, cell by cell (`changes`, the table the regression gate reads).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import axes, efficiency as eff, paired, plots, render, stats
from analysis.axes import device_labels  # noqa: F401 - re-exported
from analysis.errors import AnalysisInputError
from analysis.cells import BASELINE
from analysis.overheads import METRIC_BY_NAME, format_estimate, overhead
from analysis.render import write_csv
from analysis.runs import load
from analysis.speedups import format_speedup, precision_speedup
from analysis.tables import METHOD_NOTE, failures

CHANGE_METRICS = ("step_time", "end_to_end_throughput", "host_memory", "device_memory", "energy_per_sample",
                  "time_to_target", "best_val_accuracy")


@dataclasses.dataclass
class Comparison:
    """What `compare` returns. *_by_axis tables have one column per group (formatted text); every
    other table has a column named after the axis holding the group label."""

    axis: str
    held: dict  # axes.held_equal(): what every pair shares, and the sentence saying so
    throughput: pd.DataFrame  # baseline samples/s per workload, batch, precision, group, with CI and vs_reference
    overhead: pd.DataFrame  # analysis.overhead() per group
    overhead_by_axis: pd.DataFrame  # step-time overhead, settings x groups
    speedup: pd.DataFrame  # analysis.precision_speedup() per group
    speedup_by_axis: pd.DataFrame  # mixed-precision speedup, settings x groups
    changes: pd.DataFrame  # axes.changes(): each group vs the reference group, per cell and metric
    efficiency: pd.DataFrame  # analysis.efficiency per cell and group: samples/J, samples/$ (gaps marked)


def throughput(trials: pd.DataFrame, axis: str = "device") -> pd.DataFrame:
    """Baseline throughput (samples/s, geometric mean over repeats with a 95% t interval formed on
    the log scale, so never negative) per group and precision, and the ratio to the first group listed (vs_reference, x). `trials` carries the
    axis column (axes.with_axis)."""
    keys = ["workload", "batch_size", "precision", axis] + [k for k in ("device_name", "backend", "float32_matmul")
                                                             if k != axis and k in trials]
    ok = trials[(trials["status"] == "ok") & (trials["setting"] == BASELINE)]
    cols = keys + ["samples_per_s", "ci_low", "ci_high", "n_repeats", "mark", "vs_reference"]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    groups = ok.groupby(keys, sort=False, dropna=False).indices
    values = ok["samples_per_s"].to_numpy(dtype=float)
    res = stats.log_mean_ci([values[i] for i in groups.values()])
    out = pd.DataFrame(list(groups.keys()), columns=keys)
    out["samples_per_s"], out["ci_low"], out["ci_high"], out["n_repeats"] = res.T
    out["n_repeats"] = out["n_repeats"].astype(int)
    out["mark"] = np.where(out["n_repeats"] < stats.MIN_REPEATS_FOR_CI, stats.TOO_FEW, "")
    first = out[axis].iloc[0]
    ref = out[out[axis] == first].set_index(["workload", "batch_size", "precision"])["samples_per_s"]
    ref = ref[~ref.index.duplicated()]
    out["vs_reference"] = out["samples_per_s"].to_numpy() / ref.reindex(
        pd.MultiIndex.from_frame(out[["workload", "batch_size", "precision"]])).to_numpy()
    return out[cols]


def _by_axis(df: pd.DataFrame, axis: str, keys: list[str], text: pd.Series) -> pd.DataFrame:
    keys = [k for k in keys if k != axis and (k in ("workload", "precision", "setting") or df[k].nunique() > 1)]
    wide = df.assign(text=text).pivot_table(index=keys, columns=axis, values="text", aggfunc="first")
    return wide.reset_index().rename_axis(columns=None)


def _session_labels(sessions: list, trials: pd.DataFrame, axis: str) -> list:
    """The group label of each paired-session record, read off the isolated trials of its node."""
    if axis == "run":
        return [s.get("_run") for s in sessions]
    label = {}
    for r in trials[["run", "fingerprint_id", "backend", "device_name", axis]].itertuples(index=False):
        label.setdefault((r.run, r.fingerprint_id, r.backend, r.device_name), getattr(r, axis))
    return [label.get((s.get("_run"), (s.get("node") or {}).get("fingerprint_id"), (s.get("session") or {}).get("backend"),
                       (s.get("node") or {}).get("device_name"))) for s in sessions]


def _per_group(trials: pd.DataFrame, sessions: list, axis: str, fn) -> pd.DataFrame:
    """fn(trials of one group, its sessions) for every group, with the axis column first."""
    s_labels = _session_labels(sessions, trials, axis)
    frames = []
    for label in dict.fromkeys(trials[axis]):
        part = fn(trials[trials[axis] == label], [s for s, lab in zip(sessions, s_labels) if lab == label])
        if not part.empty:
            frames.append(part.drop(columns=[axis], errors="ignore").assign(**{axis: label}))
    if not frames:  # the columns, no rows
        frames = [fn(trials.iloc[:0], []).drop(columns=[axis], errors="ignore").assign(**{axis: pd.Series(dtype=object)})]
    out = pd.concat(frames, ignore_index=True)
    return out[[axis] + [c for c in out.columns if c != axis]]


def compare(trials: pd.DataFrame, sessions=None, *, by: str = "device", manifests: dict | None = None,
            prices: dict | None = None, reference: str | None = None) -> Comparison:
    """Side-by-side tables of trials from one or more runs (analysis.load(...): .trials, .sessions,
    .manifests; manifests are needed for by="software")."""
    axis = axes.check_axis(by)
    sessions = paired.session_records(sessions)
    df = axes.with_axis(trials, axis, manifests)
    table = _per_group(df, sessions, axis, lambda t, s: overhead(t, sessions=s))
    step = table[table["metric"] == "step_time"] if not table.empty else table
    keys = ["workload", "batch_size", "precision", "backend", "setting"]
    by_axis = _by_axis(step, axis, keys, pd.Series([format_estimate(r) for r in step.to_dict("records")],
                                                   index=step.index, dtype=object)) if len(step) else pd.DataFrame()
    speed = _per_group(df, sessions, axis, lambda t, s: precision_speedup(t))
    if len(speed):
        text = pd.Series([format_speedup(r) for r in speed.to_dict("records")], index=speed.index, dtype=object)
        speed_by_axis = _by_axis(speed, axis, keys, text)
    else:
        speed_by_axis = pd.DataFrame()
    pair = axes.pair_keys(trials, axis)
    changed = axes.changes(trials, axis, manifests, reference,
                           [METRIC_BY_NAME[m] for m in CHANGE_METRICS])
    effic = eff.efficiency(df, [k for k in pair if k not in ("device_name",)] + [axis] + (
        ["device_name"] if axis != "device" else []), prices)
    return Comparison(axis, axes.held_equal(trials, axis, manifests), throughput(df, axis), table, by_axis, speed,
                      speed_by_axis, changed, effic)


def changes_wide(changed: pd.DataFrame, axis: str) -> pd.DataFrame:
    """One row per cell and group, one formatted column per metric: the change vs the reference."""
    if changed.empty:
        return pd.DataFrame()
    t = changed.copy()
    t["n_repeats"] = t["n"]
    t["value"] = [format_estimate(r) for r in t.to_dict("records")]
    keys = [k for k in changed.columns[:list(changed.columns).index("metric")]
            if k in ("workload", "precision", "setting", axis) or t[k].nunique(dropna=False) > 1]
    metrics = [m for m in CHANGE_METRICS if (t.loc[t["metric"] == m, "mark"] != stats.NO_DATA).any()]
    wide = t[t["metric"].isin(metrics)].pivot_table(index=keys, columns="metric", values="value", aggfunc="first")
    wide = wide.reindex(columns=metrics)
    wide.columns = [f"{METRIC_BY_NAME[m].label} ({'pp' if METRIC_BY_NAME[m].kind == 'delta' else '%'})"
                    for m in metrics]
    wide = wide.reset_index()
    wide.insert(list(wide.columns).index(axis) + 1, "vs", changed["reference"].iloc[0])
    return wide


def efficiency_display(table: pd.DataFrame, axis: str) -> pd.DataFrame:
    if table.empty:
        return pd.DataFrame()
    keys = [k for k in table.columns[:list(table.columns).index("n")]
            if k in ("workload", "precision", "setting", axis) or table[k].nunique(dropna=False) > 1]
    out = table[keys].copy()
    out["end-to-end samples/s"] = table["samples_per_s"].map(lambda v: f"{v:.4g}" if np.isfinite(v) else "")
    out["samples per joule"] = [eff.format_value(v, g) for v, g in zip(table["samples_per_joule"],
                                                                        table["samples_per_joule_gap"])]
    out["samples per dollar"] = [eff.format_value(v, g) for v, g in zip(table["samples_per_dollar"],
                                                                         table["samples_per_dollar_gap"])]
    return out


def figures(c: Comparison) -> list[tuple[str, str, object]]:
    """(file stem, caption, Figure) of a comparison's page; the heatmaps' columns are the groups of
    the axis compared, and named for it."""
    axis = c.axis
    tp = c.throughput.copy()
    if len(tp):  # one bar per group and device model
        tp["device"] = tp[axis].astype(str) + ("" if axis == "device" else " · " + tp["device_name"].map(axes.short_device))
    sp = c.speedup.assign(device=c.speedup[axis]) if not c.speedup.empty else c.speedup
    return [("compare_step_time", f"Step-time overhead of each regularizer per {axis} (%).",
             plots.hardware_heatmap(c.overhead, title=f"Step-time overhead by {axis} (%)", by=axis)),
            ("compare_memory", f"Peak host memory overhead per {axis} (%).",
             plots.hardware_heatmap(c.overhead, "host_memory", f"Host-memory overhead by {axis} (%)", by=axis)),
            ("compare_throughput", f"Baseline throughput per {axis} and precision (samples/s).",
             plots.throughput_bars(tp, title=f"Baseline throughput by {axis} and precision")),
            ("compare_precision_speedup", f"Mixed-precision speedup over float32 per {axis} and regularizer.",
             plots.speedup_bars(sp))]


def write_compare(run_dirs, out_dir, *, by: str = "device", prices: dict | None = None,
                  reference: str | None = None) -> Path:
    """Load every run, write out_dir/{index.html, summary.md, CSVs, PNGs}; return the index.html path."""
    axis = axes.check_axis(by)
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise AnalysisInputError("compare: no run directory given")
    data = load(run_dirs)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnalysisInputError(f"{out}: cannot create output directory ({e.strerror})") from None
    c = compare(data.trials, data.sessions, by=axis, manifests=data.manifests, prices=prices, reference=reference)
    fails = failures(data, link_from=out)
    for name, df in (("throughput", c.throughput), ("overhead", c.overhead), ("precision_speedup", c.speedup),
                     ("changes", c.changes), ("efficiency", c.efficiency), ("failures", fails),
                     ("trials", data.trials)):
        write_csv(df, out / f"{name}.csv")

    pngs = []
    for stem, caption, fig in figures(c):
        png = plots.to_png(fig)
        (out / f"{stem}.png").write_bytes(png)
        pngs.append((stem, caption, png))

    runs = pd.DataFrame({"run": list(data.manifests), "path": [str(p) for p in data.run_dirs],
                         "trials": [int((data.trials["run"] == r).sum()) for r in data.manifests]})
    groups = _groups(data, axis)
    tput = c.throughput.copy()
    if not tput.empty:
        tput["throughput (samples/s)"] = [
            f"{r['samples_per_s']:.4g}" + (f" [{r['ci_low']:.4g}, {r['ci_high']:.4g}]" if np.isfinite(r["ci_low"])
                                           else f" (n={r['n_repeats']}, too few repeats)")
            for r in tput.to_dict("records")]
        tput["vs reference"] = tput["vs_reference"].map(lambda v: f"{v:.2f}x" if np.isfinite(v) else "")
        tput = tput[["workload", "batch_size", "precision", axis, "throughput (samples/s)", "vs reference"]]
    labels = c.held["labels"]
    title = f"regbench comparison by {axis}: {len(run_dirs)} runs, {len(labels)} groups"
    sections = [("Runs", runs), (f"Groups ({axis})", groups),
                (f"Change vs {labels[0] if labels else 'the reference'}, cell by cell", changes_wide(c.changes, axis)),
                ("Baseline throughput", tput), ("Efficiency: samples per joule and per dollar",
                                                 efficiency_display(c.efficiency, axis)),
                (f"Step-time overhead by {axis}", c.overhead_by_axis),
                (f"Mixed-precision speedup over float32 by {axis}", c.speedup_by_axis),
                ("Failed, diverged, skipped and unreadable trials", fails)]
    intro = [c.held["sentence"], "Changes vs the reference group: ratio of geometric means (percent change) or "
             "difference of means (accuracy, percentage points), with a 95% Welch t interval over both sides' "
             "repeats. Samples per dollar use end-to-end training throughput and the --prices table; a gap says "
             "which input is absent.", METHOD_NOTE]
    md = [f"# {title}\n\n"] + [f"{p}\n\n" for p in intro]
    body = [render.h(1, title)] + [render.p(p, "small" if i else "") for i, p in enumerate(intro)]
    for heading, df in sections:
        links = {"log": lambda v: v} if heading.startswith("Failed") else None
        md += [f"\n## {heading}\n", render.md_table(df)]
        body += [render.h(2, heading), render.html_table(df, links=links) if len(df) else render.p("None.")]
        if heading.startswith("Step-time overhead"):
            body += [render.html_image(png, stem, caption) for stem, caption, png in pngs]
    md += ["\n## Figures\n"] + [f"- [{stem}.png]({stem}.png): {caption}\n" for stem, caption, _ in pngs]
    (out / "summary.md").write_text("".join(md))
    index = out / "index.html"
    index.write_text(render.html_page(title, body))
    return index


def _groups(data, axis: str) -> pd.DataFrame:
    """What each group is: its label, trials, runs, device names and (software) versions."""
    df = axes.with_axis(data.trials, axis, data.manifests)
    if df.empty:
        return pd.DataFrame()
    rows = []
    for label, g in df.groupby(axis, sort=False, dropna=False):
        row = {axis: label, "trials": len(g), "runs": ", ".join(dict.fromkeys(g["run"].astype(str))),
               "devices": ", ".join(sorted({str(d) for d in g["device_name"].dropna()}))}
        if axis == "software":
            row["versions"] = "; ".join(sorted({str(v) for v in g["software_versions"].dropna()})) or "unknown"
        rows.append(row)
    return pd.DataFrame(rows)
