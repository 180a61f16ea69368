"""`regbench report RUN_DIR`: RUN_DIR/report/ with index.html (plots embedded), summary.md, CSVs, PNGs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots, render, stats
from analysis.runs import RunData, load
from analysis.flags import cell_flags, flag_findings, gpu_baselines_not_gpu_bound
from analysis.overheads import (BASELINE, CELL_KEYS, METRIC_BY_NAME, attention_note, attention_paths, format_estimate,
                                overhead)
from analysis.speedups import ERASES, precision_speedup

METHOD_NOTE = (
    "Step time (steady state) comes from paired sessions where the run has them: the baseline and every "
    "regularized model of a cell alternate in short blocks inside one fresh process, each block's median step "
    "time is compared with the baseline block of the same round, a session's estimate is the median over its "
    "rounds, and the interval is a Student t interval over sessions. Every other column comes from isolated "
    "trials (one fresh process each): each regularized trial is paired with the baseline of the same run, cell "
    "and repeat; ratios are summarized by their geometric mean over repeats, differences (accuracy, gap; in "
    "percentage points) by their mean, with a 95% Student t interval over repeats. Steady-state throughput "
    "excludes the first epoch, the first batch of each epoch and validation; end-to-end throughput is samples "
    "over training wall time after the first step, validation excluded (per-epoch costs count). Step time is the "
    "median of steps each synced on the host (the host's work plus the device's); free-running step time is one "
    "more epoch timed with one sync per window (host and device overlap, as in training without per-step "
    "callbacks), from isolated trials. A repeat that "
    "never reached the target counts its whole training time in time to target. '~noise': the interval "
    "includes no change; 'too few repeats': one value, no interval.")


FLAGS_NOTE = (
    "Cells, regularized ones and baselines alike, whose figures measure the host: not GPU-bound (steady GPU "
    "utilization under 80% or unmeasured), input-side bound (the step waits for the host's batch work: gather, "
    "augmentation, mixup or cutmix in NumPy; timing.input_time_per_batch_s is the input side's time per batch "
    "measured on the feed alone), or synced and free-running step times more than 10% apart (the synced step "
    "carries host work the device would overlap). A row's overheads are host cost, not the regularizer's device cost.")


def varying_keys(df: pd.DataFrame, keys=CELL_KEYS) -> list[str]:
    """The cell keys that take more than one value in df (workload and precision always shown)."""
    return [k for k in keys if k in df and (k in ("workload", "precision") or df[k].nunique(dropna=False) > 1)]


def overhead_wide(table: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and setting, one formatted column per metric that has any data."""
    if table.empty:
        return pd.DataFrame()
    keys = varying_keys(table) + ["setting"]
    t = table.copy()
    t["value"] = [format_estimate(r) for r in t[["mark", "kind", "change_pct", "ci_low_pct", "ci_high_pct",
                                                   "n_repeats"]].to_dict("records")]
    has_data = t.groupby("metric")["mark"].agg(lambda m: (m != stats.NO_DATA).any())
    metrics = [m for m in METRIC_BY_NAME if has_data.get(m, False)]
    t = t[t["metric"].isin(metrics)]
    wide = t.pivot_table(index=keys, columns="metric", values="value", aggfunc="first").reindex(columns=metrics)
    trial_metrics = [m for m in metrics if m != "step_time" or (t.loc[t["metric"] == m, "method"] != "paired sessions").all()]
    n = t[t["metric"] == trial_metrics[0]].set_index(keys)["n_repeats"] if trial_metrics else None
    wide.columns = [_metric_header(m, set(t.loc[t["metric"] == m, "method"].dropna())) for m in metrics]
    wide = wide.reset_index()
    if n is not None:
        wide.insert(len(keys), "repeats", n.reindex(pd.MultiIndex.from_frame(wide[keys])).to_numpy()
                    if len(keys) > 1 else n.reindex(wide[keys[0]]).to_numpy())
    return wide


def _metric_header(name: str, methods=()) -> str:
    m = METRIC_BY_NAME[name]
    how = f", {' / '.join(sorted(methods))}" if name == "step_time" and methods else ""
    return f"{m.label}{how} ({'pp' if m.kind == 'delta' else '%'})"


def format_speedup(r) -> str:
    """'1.65x [1.60, 1.70]' with the same marks as format_estimate."""
    if not np.isfinite(r["speedup"]):
        return r["mark"]
    s = f"{r['speedup']:.2f}x"
    if r["mark"] == stats.TOO_FEW:
        return s + " (too few repeats)"
    return s + f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" + (" ~noise" if r["mark"] == stats.NOISE else "")


def speedup_display(speedup: pd.DataFrame) -> pd.DataFrame:
    if speedup.empty:
        return pd.DataFrame()
    keys = [k for k in varying_keys(speedup, [k for k in CELL_KEYS if k != "precision"])] + ["precision", "setting"]
    out = speedup[keys].copy()
    out["speedup over float32"] = [format_speedup(r) for r in speedup.to_dict("records")]
    out["baseline speedup"] = speedup["baseline_speedup"].map(lambda v: f"{v:.2f}x" if np.isfinite(v) else "")
    out["verdict"] = speedup["verdict"]
    return out.sort_values(keys).reset_index(drop=True)


def failures(data: RunData, link_from: Path | None = None) -> pd.DataFrame:
    """Every trial that is not ok, and every file that could not be used, with its reason. `log`:
    the trial process's output kept in the run (RUN/logs/<trial_id>.log), as a path relative to
    `link_from` (default: the run's report/ folder), or "" when the run kept none."""
    t = data.trials
    bad = t[t["status"] != "ok"]
    logs = []
    for run_dir, trial_id in zip(bad["run_dir"], bad["trial_id"]):
        log = Path(run_dir) / "logs" / f"{trial_id}.log"
        logs.append(os.path.relpath(log, link_from or Path(run_dir) / "report") if log.is_file() else "")
    rows = pd.DataFrame({"run": bad["run"], "trial_id": bad["trial_id"], "status": bad["status"],
                         "workload": bad["workload"], "setting": bad["setting"], "precision": bad["precision"],
                         "device": bad["device_name"], "reason": bad["reason"].fillna("(no reason recorded)"),
                         "log": pd.Series(logs, index=bad.index, dtype=object)})
    if not data.problems.empty:
        pr = data.problems
        rows = pd.concat([rows, pd.DataFrame({
            "run": pr["run"], "trial_id": pr["file"].map(lambda f: Path(f).name), "status": "unreadable",
            "workload": None, "setting": None, "precision": None, "device": None, "reason": pr["reason"],
            "log": ""})], ignore_index=True)
    return rows.reset_index(drop=True)


def baselines(trials: pd.DataFrame) -> pd.DataFrame:
    """Absolute baseline numbers per cell: median step time (ms), throughput, peak host memory, accuracy."""
    ok = trials[(trials["status"] == "ok") & (trials["setting"] == BASELINE)]
    if ok.empty:
        return pd.DataFrame()
    keys = varying_keys(ok)
    ok = ok.assign(gpu_util_steady=pd.to_numeric(ok["steady_gpu_util_mean"], errors="coerce")
                   if "steady_gpu_util_mean" in ok else np.nan)
    g = ok.groupby(keys, dropna=False)
    out = pd.DataFrame({
        "repeats": g.size(),
        "step time p50 (ms)": g["step_time_p50_s"].median() * 1e3,
        "input side per batch (ms)": _median(g, "input_time_per_batch_s") * 1e3,
        "throughput (samples/s)": g["samples_per_s"].median(),
        "peak host memory (MiB)": g["host_peak_bytes"].median() / 2**20,
        "peak device memory (MiB)": g["device_peak_bytes"].median() / 2**20,
        "best val accuracy": g["best_val_accuracy"].median(),
        "GPU util, steady (%)": g["gpu_util_steady"].median(),
        "jit": g["jit_compile"].agg(lambda s: ", ".join(sorted({str(v) for v in s}))),
    }).reset_index()
    return out.dropna(axis=1, how="all").round(4)


def _median(g, column: str):
    """Per group median of a column that older runs lack (NaN there)."""
    return g[column].agg(lambda v: pd.to_numeric(v, errors="coerce").median()) if column in g.obj else g.size() * np.nan


def flagged_cells(trials: pd.DataFrame) -> pd.DataFrame:
    """The report's table of analysis.flags.cell_flags: the varying cell keys, setting, flag, why."""
    flags = cell_flags(trials)
    if flags.empty:
        return pd.DataFrame()
    return flags[varying_keys(flags) + ["setting", "flag", "why"]].reset_index(drop=True)


def findings(table: pd.DataFrame, speedup: pd.DataFrame, fails: pd.DataFrame, limit: int = 8,
             trials: pd.DataFrame | None = None) -> list[str]:
    """Short sentences for the top of the report (GPU baselines that are not GPU-bound first)."""
    out = []
    if trials is not None:
        for r in gpu_baselines_not_gpu_bound(trials).to_dict("records"):
            out.append(f"WARNING: the GPU baseline of {r['workload']} ({r['precision']}, {r['backend']}, batch "
                       f"{r['batch_size']}): {r['why']}; its overheads show host and launch cost.")
        paths = attention_paths(trials)
        for key in sorted(paths, key=str):
            note = attention_note(paths, key[:-1], key[-1])
            if note:
                cell = dict(zip(CELL_KEYS, key[:-1]))
                out.append(f"{key[-1]} on {cell['workload']} ({cell['precision']}, {cell['backend']}) ran another "
                           f"attention path than its baseline ({note}): its overheads include the kernel switch.")
        out += flag_findings(cell_flags(trials))
    st = table[(table["metric"] == "step_time") & (table["mark"] == stats.SIGNIFICANT)]
    for r in st.sort_values("change_pct", ascending=False).head(limit).to_dict("records"):
        out.append(f"{r['setting']} on {r['workload']} ({r['precision']}): step time {format_estimate(r)}.")
    acc = table[(table["metric"] == "best_val_accuracy") & (table["mark"] == stats.SIGNIFICANT)]
    for r in acc.sort_values("change_pct", ascending=False).head(3).to_dict("records"):
        out.append(f"{r['setting']} on {r['workload']} ({r['precision']}): best val accuracy {format_estimate(r)}.")
    if not speedup.empty:
        for r in speedup[speedup["verdict"] == ERASES].head(limit).to_dict("records"):
            out.append(f"{r['setting']} erases the {r['precision']} gain on {r['workload']} "
                       f"(baseline {r['baseline_speedup']:.2f}x, with {r['setting']} {r['speedup']:.2f}x).")
    noise = int((table["mark"] == stats.NOISE).sum())
    few = table.loc[table["mark"] == stats.TOO_FEW, ["workload", "precision", "setting"]].drop_duplicates()
    nob = table.loc[table["mark"] == stats.NO_BASELINE, ["workload", "precision", "setting"]].drop_duplicates()
    if noise:
        out.append(f"{noise} estimates are not distinguishable from noise (CI includes no change).")
    if len(few):
        out.append(f"{len(few)} cells have too few repeats for a CI (< {stats.MIN_REPEATS_FOR_CI}).")
    if len(nob):
        out.append(f"{len(nob)} cells have no usable baseline.")
    if len(fails):
        counts = fails["status"].value_counts()
        out.append("Not ok: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + " (listed below).")
    return out


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """CSV with a header; pyarrow's writer (several times faster than pandas on big tables)."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        pacsv.write_csv(pa.Table.from_pandas(df, preserve_index=False), path)
    except (ImportError, pa.ArrowException, TypeError, ValueError):
        df.to_csv(path, index=False)


def figures(table: pd.DataFrame, speedup: pd.DataFrame, curves: pd.DataFrame) -> list[tuple[str, str, object]]:
    """(file stem, caption, Figure) for the single-run report."""
    out = [("overhead_step_time", "Step-time overhead of each regularizer vs its paired baseline, by precision.",
            plots.overhead_bars(table, ["step_time"])),
           ("overhead_memory", "Peak memory overhead (host, and device where recorded) vs baseline.",
            plots.overhead_bars(table, ["host_memory", "device_memory"], title="Memory overhead vs baseline")),
           ("accuracy_vs_time", "Validation accuracy against wall time since training start.",
            plots.accuracy_curves(curves)),
           ("cost_benefit", "Cost (step-time overhead) against benefit (best val accuracy gain).",
            plots.cost_benefit(table)),
           ("precision_speedup", "Speedup of each mixed precision over float32 per regularizer.",
            plots.speedup_bars(speedup))]
    return out


def write_report(run_dir) -> Path:
    """Analyse RUN_DIR and write RUN_DIR/report/; return the path of index.html.

    Raises AnalysisInputError when RUN_DIR is not a run. Unreadable trial files are listed, not fatal."""
    run_dir = Path(run_dir)
    data = load(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    table = overhead(data.trials, sessions=data.sessions)
    speedup = precision_speedup(data.trials)
    fails = failures(data)
    manifest = next(iter(data.manifests.values()), {}) or {}

    write_csv(table, out / "overhead.csv")
    write_csv(speedup, out / "precision_speedup.csv")
    write_csv(fails, out / "failures.csv")
    flagged = flagged_cells(data.trials)
    write_csv(cell_flags(data.trials), out / "flags.csv")
    write_csv(data.trials, out / "trials.csv")
    write_csv(data.curves, out / "curves.csv")

    title = f"regbench report: {manifest.get('run_id') or run_dir.name}"
    meta = run_metadata(data, manifest)
    wide, sp, base = overhead_wide(table), speedup_display(speedup), baselines(data.trials)
    facts = findings(table, speedup, fails, trials=data.trials)
    noise, unstable = stability(data)
    figs = []
    for stem, caption, fig in figures(table, speedup, data.curves):
        png = plots.to_png(fig)
        (out / f"{stem}.png").write_bytes(png)
        figs.append((stem, caption, png))

    (out / "summary.md").write_text(markdown(title, meta, facts, noise, unstable, wide, sp, base, fails, figs,
                                             flagged=flagged))
    page = html_report(title, meta, facts, noise, unstable, wide, sp, base, fails, figs, flagged=flagged)
    index = out / "index.html"
    tmp = out / "index.html.tmp"
    tmp.write_text(page)
    tmp.replace(index)
    return index


def run_metadata(data: RunData, manifest: dict) -> pd.DataFrame:
    t = data.trials
    suite = manifest.get("suite") or {}
    devices = ", ".join(sorted({str(d) for d in t["device_name"].dropna().unique()})) or "unknown"
    counts = t["status"].value_counts()
    rows = [("run", manifest.get("run_id") or ", ".join(data.manifests)),
            ("suite", suite.get("name") if isinstance(suite, dict) else str(suite)),
            ("status", manifest.get("status")), ("git commit", manifest.get("git_commit")),
            ("started", manifest.get("started_at")), ("finished", manifest.get("finished_at")),
            ("devices", devices), ("backends", ", ".join(sorted(t["backend"].dropna().unique()))),
            ("trials", f"{len(t)} read: " + ", ".join(f"{n} {s}" for s, n in counts.items())),
            ("unreadable or missing files", str(len(data.problems)))]
    for r in manifest.get("retries") or []:
        rows.append((f"retry round {r.get('round')}", f"{len(r.get('units') or [])} failed unit(s) run again "
                     f"({'finished' if r.get('finished_at') else 'interrupted'}); old records in history/"))
    return pd.DataFrame([(k, "" if v is None else str(v)) for k, v in rows], columns=["field", "value"])


def stability(data: RunData) -> tuple[list[str], bool]:
    """Sentences on the noise this run measured, and whether any says the result may be unstable."""
    from analysis import paired

    lines = []
    est = paired.estimates(data.sessions)
    lines += paired.noise_lines(est)
    if len(est):
        cov = paired.simulated_coverage(data.sessions)
        if cov.get("simulated") is not None:
            lines.append(f"Simulated coverage of the nominal {cov['nominal']:.0%} step-time intervals with this run's "
                         f"own noise, at {cov['sessions']} sessions x {cov['rounds']} rounds: {cov['simulated']:.1%} "
                         f"(between-session sd {cov['between_session_sd'] * 100:.2f}%, {cov['outlier_share']:.1%} "
                         "of rounds off by more than 1.5x).")
    base = data.trials[(data.trials["status"] == "ok") & (data.trials["setting"] == BASELINE)]
    if len(base):
        cv = base.groupby(["run", "cell_id"])["step_time_p50_s"].agg(lambda v: v.std(ddof=1) / v.mean() if len(v) > 1 else np.nan)
        if cv.notna().any():
            lines.append(f"Baseline step time varies {np.nanmedian(cv) * 100:.1f}% CV between fresh-process repeats "
                         "(isolated trials); this is why step-time overheads come from paired sessions.")
    return lines, any(line.startswith("WARNING") for line in lines)


def markdown(title, meta, facts, noise, unstable, wide, sp, base, fails, figs, max_rows: int = 200,
             flagged: pd.DataFrame | None = None) -> str:
    parts = [f"# {title}\n", render.md_table(meta, None), "\n## Findings\n"]
    parts += [f"- {f}\n" for f in facts] or ["- nothing to report\n"]
    parts += ["\n## Noise floor and stability\n"] + [f"- {line}\n" for line in noise or ["not measured"]]
    parts += ["\n## Overhead vs baseline\n", METHOD_NOTE + "\n\n", render.md_table(wide, max_rows)]
    if flagged is not None and len(flagged):
        parts += ["\n## Flagged cells\n", FLAGS_NOTE + "\n\n", render.md_table(flagged, max_rows)]
    parts += ["\n## Mixed precision: speedup over float32\n", render.md_table(sp, max_rows)]
    parts += ["\n## Baselines\n", render.md_table(base, max_rows)]
    linked = fails.assign(log=fails["log"].map(lambda v: f"[{v}]({v})" if v else "")) if len(fails) else fails
    parts += ["\n## Failed, diverged, skipped and unreadable trials\n", render.md_table(linked, max_rows)]
    parts += ["\n## Figures\n"] + [f"- [{stem}.png]({stem}.png): {caption}\n" for stem, caption, _ in figs]
    return "".join(parts)


def html_report(title, meta, facts, noise, unstable, wide, sp, base, fails, figs,
                flagged: pd.DataFrame | None = None) -> str:
    body = [render.h(1, title)]
    if unstable:
        body.append('<p class="warn">The machine was too noisy for some answers of this run: the result may be '
                    'unstable (see <a href="#noise">Noise floor and stability</a>).</p>')
    body += [render.html_table(meta, None), render.h(2, "Findings")]
    body.append("<ul>" + "".join(f"<li>{render.html.escape(f)}</li>" for f in facts) + "</ul>" if facts
                else render.p("Nothing to report."))
    body.append('<h2 id="noise">Noise floor and stability</h2>')
    body.append("<ul>" + "".join(f"<li>{render.html.escape(f)}</li>" for f in noise) + "</ul>" if noise
                else render.p("Not measured (no paired sessions and fewer than two repeats)."))
    if len(fails):
        body.append(f'<p class="warn">{len(fails)} trials are not ok or unreadable: see '
                    '<a href="#failures">the list</a>.</p>')
    body += [render.h(2, "Overhead vs baseline"), render.p(METHOD_NOTE, "small"), render.html_table(wide)]
    if flagged is not None and len(flagged):
        body += [render.h(2, "Flagged cells"), render.p(FLAGS_NOTE, "small"), render.html_table(flagged)]
    for stem, caption, png in figs:
        body.append(render.html_image(png, alt=stem, caption=caption))
    body += [render.h(2, "Mixed precision: speedup over float32"), render.html_table(sp)]
    body += [render.h(2, "Baselines"), render.html_table(base)]
    body += ['<h2 id="failures">Failed, diverged, skipped and unreadable trials</h2>',
             render.html_table(fails, 2000, links={"log": str}) if len(fails) else render.p("None.")]
    body.append(render.p("Tables as CSV next to this page: overhead.csv, precision_speedup.csv, failures.csv, "
                         "flags.csv, trials.csv, curves.csv.", "small"))
    return render.html_page(title, body)




