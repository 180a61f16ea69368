"""Read regbench runs, compute overheads with bootstrap CIs, compare hardware, draw plots, write reports.

Notebook use::

    import analysis
    data = analysis.load(["results/run-a", "results/run-b"])   # RunData: trials, curves, problems
    table = analysis.overhead(data.trials)                      # one row per cell x setting x metric
    side_by_side = analysis.compare(data.trials)                # hardware comparison tables
    analysis.plots.overhead_bars(table)                         # matplotlib Figure

CLI entry points: `analysis.report.write_report(run_dir)` and
`analysis.compare.write_compare(run_dirs, out_dir)`.
"""
from analysis.errors import AnalysisInputError
from analysis import load, stats, overhead, precision, compare, plots, report  # noqa: E402  (callable modules)
from analysis.load import RunData, SCHEMA_VERSION_READ

__all__ = ["AnalysisInputError", "RunData", "SCHEMA_VERSION_READ", "load", "stats", "overhead",
           "precision", "compare", "plots", "report"]
