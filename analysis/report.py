"""`regbench report RUN_DIR`: RUN_DIR/report/ with index.html (plots embedded), summary.md, CSVs, PNGs.

`write_report` computes the run's tables (analysis/tables.py), findings, noise lines and figures
once into a `ReportData`; `markdown` and `html_report` render that one object.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import paired, plots, render, stats
from analysis.cells import BASELINE, CELL_KEYS
from analysis.flags import cell_flags, flag_findings, gpu_baselines_not_gpu_bound
from analysis.overheads import attention_note, attention_paths, format_estimate, overhead
from analysis.render import write_csv
from analysis.runs import RunData, load
from analysis.speedups import ERASES, precision_speedup
from analysis.tables import (FLAGS_NOTE, METHOD_NOTE, baselines, failures, flagged_cells, overhead_wide, run_metadata,
                             speedup_display)


@dataclasses.dataclass
class ReportData:
    """Everything one run's report shows, computed once; `markdown` and `html_report` render it."""

    title: str
    meta: pd.DataFrame  # run_metadata(): field, value
    findings: list[str]  # findings(): sentences for the top of the page
    noise: list[str]  # stability(): the noise this run measured
    unstable: bool  # stability(): a noise line warns that the result may be unstable
    overhead: pd.DataFrame  # overhead_wide()
    speedup: pd.DataFrame  # speedup_display()
    baselines: pd.DataFrame  # baselines()
    failures: pd.DataFrame  # failures()
    figures: list  # (file stem, caption, PNG bytes)
    flagged: pd.DataFrame  # flagged_cells()
    placements: pd.DataFrame = None  # placements(): where regbench's rewrite put each setting's regularizers


def placements(trials: pd.DataFrame) -> pd.DataFrame:
    """workload, setting, placements: where regbench's model rewrite put each setting (user workloads)."""
    cols = ["workload", "setting", "regularizer_placements"]
    t = trials[trials["regularizer_placements"].notna()] if "regularizer_placements" in trials else trials.iloc[:0]
    return t.reindex(columns=cols).drop_duplicates().rename(columns={"regularizer_placements": "placements"})


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

    noise, unstable = stability(data)
    report = ReportData(
        title=f"regbench report: {manifest.get('run_id') or run_dir.name}", meta=run_metadata(data, manifest),
        findings=findings(table, speedup, fails, trials=data.trials), noise=noise, unstable=unstable,
        overhead=overhead_wide(table), speedup=speedup_display(speedup), baselines=baselines(data.trials),
        failures=fails, figures=[], flagged=flagged, placements=placements(data.trials))
    for stem, caption, fig in figures(table, speedup, data.curves):
        png = plots.to_png(fig)
        (out / f"{stem}.png").write_bytes(png)
        report.figures.append((stem, caption, png))

    (out / "summary.md").write_text(markdown(report))
    page = html_report(report)
    index = out / "index.html"
    tmp = out / "index.html.tmp"
    tmp.write_text(page)
    tmp.replace(index)
    return index


def stability(data: RunData) -> tuple[list[str], bool]:
    """Sentences on the noise this run measured, and whether any says the result may be unstable."""
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


def markdown(r: ReportData, max_rows: int = 200) -> str:
    """summary.md: the report's tables as Markdown, figures as links to their PNGs."""
    parts = [f"# {r.title}\n", render.md_table(r.meta, None), "\n## Findings\n"]
    parts += [f"- {f}\n" for f in r.findings] or ["- nothing to report\n"]
    parts += ["\n## Noise floor and stability\n"] + [f"- {line}\n" for line in r.noise or ["not measured"]]
    parts += ["\n## Overhead vs baseline\n", METHOD_NOTE + "\n\n", render.md_table(r.overhead, max_rows)]
    if len(r.flagged):
        parts += ["\n## Flagged cells\n", FLAGS_NOTE + "\n\n", render.md_table(r.flagged, max_rows)]
    if r.placements is not None and len(r.placements):
        parts += ["\n## Where regbench placed the regularizers\n", render.md_table(r.placements, max_rows)]
    parts += ["\n## Mixed precision: speedup over float32\n", render.md_table(r.speedup, max_rows)]
    parts += ["\n## Baselines\n", render.md_table(r.baselines, max_rows)]
    fails = r.failures
    linked = fails.assign(log=fails["log"].map(lambda v: f"[{v}]({v})" if v else "")) if len(fails) else fails
    parts += ["\n## Failed, diverged, skipped and unreadable trials\n", render.md_table(linked, max_rows)]
    parts += ["\n## Figures\n"] + [f"- [{stem}.png]({stem}.png): {caption}\n" for stem, caption, _ in r.figures]
    return "".join(parts)


def html_report(r: ReportData) -> str:
    """index.html: the report's tables, figures embedded, one self-contained page."""
    body = [render.h(1, r.title)]
    if r.unstable:
        body.append('<p class="warn">The machine was too noisy for some answers of this run: the result may be '
                    'unstable (see <a href="#noise">Noise floor and stability</a>).</p>')
    body += [render.html_table(r.meta, None), render.h(2, "Findings")]
    body.append("<ul>" + "".join(f"<li>{render.html.escape(f)}</li>" for f in r.findings) + "</ul>" if r.findings
                else render.p("Nothing to report."))
    body.append('<h2 id="noise">Noise floor and stability</h2>')
    body.append("<ul>" + "".join(f"<li>{render.html.escape(f)}</li>" for f in r.noise) + "</ul>" if r.noise
                else render.p("Not measured (no paired sessions and fewer than two repeats)."))
    if len(r.failures):
        body.append(f'<p class="warn">{len(r.failures)} trials are not ok or unreadable: see '
                    '<a href="#failures">the list</a>.</p>')
    body += [render.h(2, "Overhead vs baseline"), render.p(METHOD_NOTE, "small"), render.html_table(r.overhead)]
    if len(r.flagged):
        body += [render.h(2, "Flagged cells"), render.p(FLAGS_NOTE, "small"), render.html_table(r.flagged)]
    for stem, caption, png in r.figures:
        body.append(render.html_image(png, alt=stem, caption=caption))
    if r.placements is not None and len(r.placements):
        body += [render.h(2, "Where regbench placed the regularizers"), render.html_table(r.placements)]
    body += [render.h(2, "Mixed precision: speedup over float32"), render.html_table(r.speedup)]
    body += [render.h(2, "Baselines"), render.html_table(r.baselines)]
    body += ['<h2 id="failures">Failed, diverged, skipped and unreadable trials</h2>',
             render.html_table(r.failures, 2000, links={"log": str}) if len(r.failures) else render.p("None.")]
    body.append(render.p("Tables as CSV next to this page: overhead.csv, precision_speedup.csv, failures.csv, "
                         "flags.csv, trials.csv, curves.csv.", "small"))
    return render.html_page(r.title, body)
