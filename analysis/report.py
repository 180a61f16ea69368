"""`regbench report RUN_DIR`: RUN_DIR/report/ with index.html (plots embedded), summary.md, CSVs, PNGs.

`write_report` computes the run's tables (analysis/tables.py), findings (analysis/findings.py),
noise lines and figures once into a `ReportData`; `markdown` and `html_report` render that one
object: what the run found and could not decide first, then each table with its figures and CSV.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import paired, plots, render
from analysis.cells import BASELINE
from analysis.findings import Finding, findings
from analysis.flags import cell_flags
from analysis.overheads import overhead
from analysis.render import write_csv
from analysis.runs import RunData, load
from analysis.speedups import precision_speedup
from analysis.tables import (FLAGS_NOTE, METHOD_NOTE, baselines, failures, flagged_cells, method_links, overhead_wide,
                             run_metadata, speedup_display)

CSVS = (("overhead.csv", "overheads with intervals"), ("precision_speedup.csv", "mixed-precision speedups"),
        ("failures.csv", "trials not ok"), ("flags.csv", "host-bound flags"), ("trials.csv", "every trial"),
        ("curves.csv", "learning curves"))
SECTIONS = {  # figure stem -> the section that shows it
    "overhead_step_time": "overhead", "overhead_memory": "overhead", "cost_benefit": "overhead",
    "accuracy_vs_time": "curves", "loss_vs_time": "curves", "precision_speedup": "precision"}


@dataclasses.dataclass
class ReportData:
    """Everything one run's report shows, computed once; `markdown` and `html_report` render it."""

    title: str
    meta: pd.DataFrame  # run_metadata(): field, value
    findings: list[Finding]  # analysis.findings: what the run found (decided) and could not decide
    noise: list[str]  # stability(): the noise this run measured
    unstable: bool  # stability(): a noise line warns that the result may be unstable
    overhead: pd.DataFrame  # overhead_wide()
    speedup: pd.DataFrame  # speedup_display()
    baselines: pd.DataFrame  # baselines()
    failures: pd.DataFrame  # failures()
    figures: list  # (file stem, caption, PNG bytes)
    flagged: pd.DataFrame  # flagged_cells()
    method: list  # method_links(): (text, href) of the README sections the method note points to
    placements: pd.DataFrame = None  # placements(): where regbench's rewrite put each setting's regularizers

    @property
    def found(self) -> list[Finding]:
        return [f for f in self.findings if f.decided]

    @property
    def undecided(self) -> list[Finding]:
        return [f for f in self.findings if not f.decided]

    def section_figures(self, section: str) -> list:
        return [f for f in self.figures if SECTIONS.get(f[0]) == section]


def placements(trials: pd.DataFrame) -> pd.DataFrame:
    """workload, setting, placements: where regbench's model rewrite put each setting (user workloads)."""
    cols = ["workload", "setting", "regularizer_placements"]
    t = trials[trials["regularizer_placements"].notna()] if "regularizer_placements" in trials else trials.iloc[:0]
    return t.reindex(columns=cols).drop_duplicates().rename(columns={"regularizer_placements": "placements"})


def figures(table: pd.DataFrame, speedup: pd.DataFrame, curves: pd.DataFrame) -> list[tuple[str, str, object]]:
    """(file stem, caption, Figure) for the single-run report."""
    out = [("overhead_step_time", "Step-time overhead of each regularizer vs its paired baseline, by precision.",
            plots.overhead_bars(table, ["step_time"])),
           ("overhead_memory", "Peak memory overhead (host, and device where recorded) vs baseline.",
            plots.overhead_bars(table, ["host_memory", "device_memory"], title="Memory overhead vs baseline")),
           ("accuracy_vs_time", "Validation accuracy against wall time since training start.",
            plots.accuracy_curves(curves)),
           ("loss_vs_time", "Validation loss (cross-entropy, without the L1/L2 penalty) against wall time.",
            plots.loss_curves(curves)),
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
        findings=findings(data.trials, data.sessions, table=table, speedup=speedup), noise=noise, unstable=unstable,
        overhead=overhead_wide(table), speedup=speedup_display(speedup), baselines=baselines(data.trials),
        failures=fails, figures=[], flagged=flagged, method=method_links(out), placements=placements(data.trials))
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
    """summary.md: the findings, then the report's tables as Markdown, figures and CSVs as links."""
    def figs(section: str) -> list[str]:
        return [f"\n![{stem}]({stem}.png)\n\n_{caption}_\n" for stem, caption, _ in r.section_figures(section)]

    parts = [f"# {r.title}\n", "\n## What this run found\n"]
    parts += [f"- {f.text}\n" for f in r.found] or ["- nothing the run could decide\n"]
    parts += ["\n## What could not be decided\n"] + ([f"- {f.text}\n" for f in r.undecided] or ["- nothing\n"])
    parts += ["\n## Run\n", render.md_table(r.meta, None)]
    parts += ["\n## Noise floor and stability\n"] + [f"- {line}\n" for line in r.noise or ["not measured"]]
    links = "; ".join(f"[{text}]({href})" for text, href in r.method)
    parts += ["\n## Overhead vs baseline\n", f"{METHOD_NOTE} In full: {links}.\n\n",
              render.md_table(r.overhead, max_rows), "\n[overhead.csv](overhead.csv)\n"] + figs("overhead")
    if len(r.flagged):
        parts += ["\n## Flagged cells\n", FLAGS_NOTE + "\n\n", render.md_table(r.flagged, max_rows),
                  "\n[flags.csv](flags.csv)\n"]
    if r.placements is not None and len(r.placements):
        parts += ["\n## Where regbench placed the regularizers\n", render.md_table(r.placements, max_rows)]
    parts += ["\n## Learning curves\n", "[curves.csv](curves.csv)\n"] + figs("curves")
    parts += ["\n## Mixed precision: speedup over float32\n", render.md_table(r.speedup, max_rows),
              "\n[precision_speedup.csv](precision_speedup.csv)\n"] + figs("precision")
    parts += ["\n## Baselines\n", render.md_table(r.baselines, max_rows), "\n[trials.csv](trials.csv)\n"]
    fails = r.failures
    linked = fails.assign(log=fails["log"].map(lambda v: f"[{v}]({v})" if v else "")) if len(fails) else fails
    parts += ["\n## Failed, diverged, skipped and unreadable trials\n", render.md_table(linked, max_rows),
              "\n[failures.csv](failures.csv)\n"]
    parts += ["\n## Tables as CSV\n"] + [f"- [{name}]({name}): {what}\n" for name, what in CSVS]
    return "".join(parts)


def _items(lines) -> str:
    return "<ul>" + "".join(f"<li>{render.html.escape(line)}</li>" for line in lines) + "</ul>"


def _link(name: str, text: str | None = None) -> str:
    return f'<a href="{render.html.escape(name, quote=True)}">{render.html.escape(text or name)}</a>'


def html_report(r: ReportData) -> str:
    """index.html: findings first, then the tables with their figures and CSVs; one self-contained page."""
    def figs(section: str) -> list[str]:
        return [render.html_image(png, alt=stem, caption=caption) for stem, caption, png in r.section_figures(section)]

    body = [render.h(1, r.title)]
    if r.unstable:
        body.append('<p class="warn">The machine was too noisy for some answers of this run: the result may be '
                    'unstable (see <a href="#noise">Noise floor and stability</a>).</p>')
    body += [render.h(2, "What this run found"),
             _items(f.text for f in r.found) if r.found else render.p("Nothing the run could decide.")]
    body += [render.h(2, "What could not be decided"),
             _items(f.text for f in r.undecided) if r.undecided else render.p("Nothing: every estimate decided.")]
    body += [render.h(2, "Run"), render.html_table(r.meta, None)]
    body.append('<h2 id="noise">Noise floor and stability</h2>')
    body.append(_items(r.noise) if r.noise else render.p("Not measured (no paired sessions and fewer than two repeats)."))
    if len(r.failures):
        body.append(f'<p class="warn">{len(r.failures)} trials are not ok or unreadable: see '
                    '<a href="#failures">the list</a>.</p>')
    method = "; ".join(_link(href, text) for text, href in r.method)
    body += [render.h(2, "Overhead vs baseline"),
             f'<p class="small">{render.html.escape(METHOD_NOTE)} In full: {method}.</p>',
             render.html_table(r.overhead), render.p_html(f"Table: {_link('overhead.csv')}", "small")]
    body += figs("overhead")
    if len(r.flagged):
        body += [render.h(2, "Flagged cells"), render.p(FLAGS_NOTE, "small"), render.html_table(r.flagged),
                 render.p_html(f"Table: {_link('flags.csv')}", "small")]
    if r.placements is not None and len(r.placements):
        body += [render.h(2, "Where regbench placed the regularizers"), render.html_table(r.placements)]
    body += [render.h(2, "Learning curves"), render.p_html(f"Per epoch: {_link('curves.csv')}", "small"),
             '<div class="row">' + "".join(figs("curves")) + "</div>"]
    body += [render.h(2, "Mixed precision: speedup over float32"), render.html_table(r.speedup),
             render.p_html(f"Table: {_link('precision_speedup.csv')}", "small")] + figs("precision")
    body += [render.h(2, "Baselines"), render.html_table(r.baselines),
             render.p_html(f"Every trial: {_link('trials.csv')}", "small")]
    body += ['<h2 id="failures">Failed, diverged, skipped and unreadable trials</h2>',
             render.html_table(r.failures, 2000, links={"log": str}) if len(r.failures) else render.p("None."),
             render.p_html(f"Table: {_link('failures.csv')}", "small")]
    body += [render.h(2, "Tables as CSV"),
             "<ul>" + "".join(f"<li>{_link(name)}: {render.html.escape(what)}</li>" for name, what in CSVS) + "</ul>"]
    return render.html_page(r.title, body)
