"""Read regbench runs, compute overheads with confidence intervals, compare runs, draw plots, write reports.

Notebook use (the same numbers as the report and `regbench compare`)::

    import analysis
    data = analysis.load("results/<run-id>")        # RunData: trials, curves, sessions, problems (DataFrames), manifests
    table = analysis.overhead(data.trials, sessions=data.sessions)  # one row per cell x setting x metric, 95% CIs
    speed = analysis.precision_speedup(data.trials)  # mixed precision vs float32, per setting
    both = analysis.load([run_a, run_b])
    side = analysis.compare(both.trials, both.sessions, by="software", manifests=both.manifests)
    side.changes                                     # each group vs the reference, cell by cell, Welch 95% CIs
    gate = analysis.gate.check(both.trials["run"].iloc[0], both.trials, analysis.gate.parse_fail_on("step_time:5"))
    fig = analysis.plots.overhead_bars(table)        # a matplotlib Figure
    found = analysis.findings.findings(data.trials, data.sessions)  # Findings: sentence, decided?, numbers

Every table is a tidy pandas DataFrame (one row per observation; the columns are documented in
each function). Writers used by the CLI: `write_report(run_dir)`, `write_compare(run_dirs, out_dir)`.
"""
from analysis import axes, efficiency, findings, flags, gate, plots, stats
from analysis.comparison import Comparison, compare, write_compare
from analysis.efficiency import load_prices
from analysis.errors import AnalysisInputError
from analysis.overheads import METRICS, format_estimate, overhead
from analysis.report import write_report
from analysis.runs import SCHEMA_VERSION_READ, RunData, load
from analysis.speedups import precision_speedup
from analysis.tables import failures

__all__ = ["AnalysisInputError", "Comparison", "METRICS", "RunData", "SCHEMA_VERSION_READ", "axes", "compare",
           "efficiency", "failures", "findings", "flags", "format_estimate", "gate", "load", "load_prices", "overhead", "plots",
           "precision_speedup", "stats", "write_compare", "write_report"]
