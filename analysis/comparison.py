"""`regbench compare RUN_DIR...`: hardware (and backends) side by side.

A device is the device model plus backend (`device` column). Throughput, overhead and
mixed-precision speedup use the same pairing and t intervals as a single-run report; runs on
the same device model pool their repeats.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots, render, stats
from analysis.errors import AnalysisInputError
from analysis.runs import load
from analysis.overheads import BASELINE, format_estimate, overhead
from analysis.speedups import precision_speedup
from analysis.report import METHOD_NOTE, failures, format_speedup, write_csv

_THROUGHPUT_KEYS = ["workload", "batch_size", "precision", "device", "device_name", "backend", "float32_matmul"]


@dataclasses.dataclass
class Comparison:
    """What `compare` returns. *_by_device tables have one column per device (formatted text)."""

    throughput: pd.DataFrame  # baseline samples/s per workload, batch, precision, device, with CI
    overhead: pd.DataFrame  # analysis.overhead() of all runs, plus a `device` column
    overhead_by_device: pd.DataFrame  # step-time overhead, settings x devices
    speedup: pd.DataFrame  # analysis.precision() of all runs, plus `device`
    speedup_by_device: pd.DataFrame  # mixed-precision speedup, settings x devices


def device_labels(df: pd.DataFrame) -> pd.Series:
    """Short device model, plus backend when more than one backend is present, plus the float32
    matmul policy when runs used different ones (their cells are never paired or pooled)."""
    label = df["device_name"].map(plots.short_device)
    if df["backend"].nunique() > 1:
        label = label + " · " + df["backend"].astype(str)
    if "float32_matmul" in df and df["float32_matmul"].nunique(dropna=False) > 1:
        label = label + " · float32 " + df["float32_matmul"].fillna("unknown").astype(str)
    return label


def throughput(trials: pd.DataFrame) -> pd.DataFrame:
    """Baseline throughput (samples/s, mean over repeats with a 95% t interval) per device and precision,
    and the ratio to the first device listed (vs_first_device, x)."""
    ok = trials[(trials["status"] == "ok") & (trials["setting"] == BASELINE)].copy()
    if ok.empty:
        return pd.DataFrame(columns=_THROUGHPUT_KEYS + ["samples_per_s", "ci_low", "ci_high", "n_repeats", "mark",
                                                        "vs_first_device"])
    ok["device"] = device_labels(ok)
    groups = ok.groupby(_THROUGHPUT_KEYS, sort=False, dropna=False).indices
    values = ok["samples_per_s"].to_numpy(dtype=float)
    res = stats.mean_ci([values[i] for i in groups.values()])
    out = pd.DataFrame(list(groups.keys()), columns=_THROUGHPUT_KEYS)
    out["samples_per_s"], out["ci_low"], out["ci_high"], out["n_repeats"] = res.T
    out["n_repeats"] = out["n_repeats"].astype(int)
    out["mark"] = np.where(out["n_repeats"] < stats.MIN_REPEATS_FOR_CI, stats.TOO_FEW, "")
    first = out["device"].iloc[0]
    ref = out[out["device"] == first].set_index(["workload", "batch_size", "precision"])["samples_per_s"]
    ref = ref[~ref.index.duplicated()]
    out["vs_first_device"] = out["samples_per_s"].to_numpy() / ref.reindex(
        pd.MultiIndex.from_frame(out[["workload", "batch_size", "precision"]])).to_numpy()
    return out


def _by_device(df: pd.DataFrame, keys: list[str], text: pd.Series) -> pd.DataFrame:
    keys = [k for k in keys if k in ("workload", "precision", "setting") or df[k].nunique() > 1]
    wide = df.assign(text=text).pivot_table(index=keys, columns="device", values="text", aggfunc="first")
    return wide.reset_index().rename_axis(columns=None)


def compare(trials: pd.DataFrame, sessions: list | None = None) -> Comparison:
    """Side-by-side tables of trials from one or more runs (analysis.load(...).trials)."""
    table = overhead(trials, sessions=sessions)
    if not table.empty:
        table.insert(0, "device", device_labels(table))
    step = table[table["metric"] == "step_time"] if not table.empty else table
    by_device = _by_device(step, ["workload", "batch_size", "precision", "setting"],
                           pd.Series([format_estimate(r) for r in step.to_dict("records")], index=step.index,
                                     dtype=object)) if not step.empty else pd.DataFrame()
    speed = precision_speedup(trials)
    if not speed.empty:
        speed.insert(0, "device", device_labels(speed))
        text = pd.Series([format_speedup(r) for r in speed.to_dict("records")], index=speed.index, dtype=object)
        speed_by_device = _by_device(speed, ["workload", "batch_size", "precision", "setting"], text)
    else:
        speed_by_device = pd.DataFrame()
    return Comparison(throughput(trials), table, by_device, speed, speed_by_device)


def write_compare(run_dirs, out_dir) -> Path:
    """Load every run, write out_dir/{index.html, summary.md, CSVs, PNGs}; return the index.html path."""
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise AnalysisInputError("compare: no run directory given")
    data = load(run_dirs)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnalysisInputError(f"{out}: cannot create output directory ({e.strerror})") from None
    c = compare(data.trials, data.sessions)
    fails = failures(data)
    write_csv(c.throughput, out / "throughput.csv")
    write_csv(c.overhead, out / "overhead.csv")
    write_csv(c.speedup, out / "precision_speedup.csv")
    write_csv(fails, out / "failures.csv")
    write_csv(data.trials, out / "trials.csv")

    figs = [("hardware_step_time", "Step-time overhead of each regularizer on each device (%).",
             plots.hardware_heatmap(c.overhead)),
            ("hardware_memory", "Peak host memory overhead on each device (%).",
             plots.hardware_heatmap(c.overhead, "host_memory", "Host-memory overhead by device (%)")),
            ("hardware_throughput", "Baseline throughput per device and precision (samples/s).",
             plots.throughput_bars(c.throughput)),
            ("hardware_precision_speedup", "Mixed-precision speedup over float32 per device and regularizer.",
             plots.speedup_bars(c.speedup))]
    pngs = []
    for stem, caption, fig in figs:
        png = plots.to_png(fig)
        (out / f"{stem}.png").write_bytes(png)
        pngs.append((stem, caption, png))

    devices = sorted(set(device_labels(data.trials.dropna(subset=["device_name"])))) if len(data.trials) else []
    runs = pd.DataFrame({"run": list(data.manifests), "path": [str(p) for p in data.run_dirs],
                         "trials": [int((data.trials["run"] == r).sum()) for r in data.manifests]})
    tp = c.throughput.copy()
    if not tp.empty:
        tp["throughput (samples/s)"] = [
            f"{r['samples_per_s']:.4g}" + (f" [{r['ci_low']:.4g}, {r['ci_high']:.4g}]" if np.isfinite(r["ci_low"])
                                           else f" (n={r['n_repeats']}, too few repeats)")
            for r in tp.to_dict("records")]
        tp["vs first device"] = tp["vs_first_device"].map(lambda v: f"{v:.2f}x" if np.isfinite(v) else "")
        tp = tp[["workload", "batch_size", "precision", "device", "throughput (samples/s)", "vs first device"]]
    title = f"regbench comparison: {len(run_dirs)} runs, {len(devices)} devices"
    sections = [("Runs", runs), ("Baseline throughput", tp), ("Step-time overhead by device", c.overhead_by_device),
                ("Mixed-precision speedup over float32 by device", c.speedup_by_device),
                ("Failed, diverged, skipped and unreadable trials", fails)]
    md = [f"# {title}\n\nDevices: {', '.join(devices) or 'none'}\n\n{METHOD_NOTE}\n"]
    body = [render.h(1, title), render.p("Devices: " + (", ".join(devices) or "none")), render.p(METHOD_NOTE, "small")]
    for heading, df in sections:
        md += [f"\n## {heading}\n", render.md_table(df)]
        body += [render.h(2, heading), render.html_table(df) if len(df) else render.p("None.")]
        if heading == "Step-time overhead by device":
            body += [render.html_image(png, stem, caption) for stem, caption, png in pngs]
    md += ["\n## Figures\n"] + [f"- [{stem}.png]({stem}.png): {caption}\n" for stem, caption, _ in pngs]
    (out / "summary.md").write_text("".join(md))
    index = out / "index.html"
    index.write_text(render.html_page(title, body))
    return index


