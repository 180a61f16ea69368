"""Read regbench runs, compute overheads with confidence intervals, compare runs, draw plots, write reports.

Notebook use (the same numbers as the report)::

    import analysis
    data = analysis.load("results/<run-id>")        # RunData: trials, curves, problems, manifests
    table = analysis.overhead(data.trials)           # one row per cell x setting x metric, with 95% CIs
    speed = analysis.precision_speedup(data.trials)  # mixed precision vs float32, per setting
    side = analysis.compare(analysis.load([run_a, run_b]).trials)
    fig = analysis.plots.overhead_bars(table)        # a matplotlib Figure

Writers used by the CLI: `write_report(run_dir)` and `write_compare(run_dirs, out_dir)`.
"""
from analysis import plots, stats
from analysis.comparison import Comparison, compare, write_compare
from analysis.errors import AnalysisInputError
from analysis.overheads import METRICS, format_estimate, overhead
from analysis.report import write_report
from analysis.runs import SCHEMA_VERSION_READ, RunData, load
from analysis.speedups import precision_speedup

__all__ = ["AnalysisInputError", "Comparison", "METRICS", "RunData", "SCHEMA_VERSION_READ", "compare",
           "format_estimate", "load", "overhead", "plots", "precision_speedup", "stats", "write_compare",
           "write_report"]
