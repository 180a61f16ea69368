"""analysis' `regbench` commands (report, compare, export) and the report written when a run completes.

bench never imports analysis: pyproject.toml declares these objects under the entry-point groups
`regbench.commands` and `regbench.after_run`, and `regbench` finds them there (bench/commands.py).
Each command parses its arguments here, runs, prints, and returns the exit code; input analysis
cannot use is a UserError (one line, exit 2), a report that cannot be written a StorageError (exit 1).
"""
from __future__ import annotations

import datetime as dt
import pathlib
import sys

from analysis import gate
from analysis.comparison import write_compare
from analysis.efficiency import load_prices
from analysis.errors import AnalysisInputError
from analysis.mlflow_export import export
from analysis.report import write_report
from bench.commands import Command
from bench.errors import STORAGE_ERRNOS, StorageError, UserError
from bench.store import RunStore


def report_after_run(run_dir) -> pathlib.Path:
    """Write RUN_DIR/report/ and name its index.html on stderr; returns that path."""
    try:
        index = write_report(pathlib.Path(run_dir))
    except AnalysisInputError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        why = STORAGE_ERRNOS.get(e.errno) or e.strerror or str(e)
        raise StorageError(f"{getattr(e, 'filename', None) or run_dir}: cannot write the report ({why}); "
                           "the run's records are untouched") from None
    print(f"report: {index}", file=sys.stderr)
    return index


def _report_arguments(ap) -> None:
    ap.add_argument("run_dir")


def _report(args) -> int:
    RunStore.open(pathlib.Path(args.run_dir))  # a clear error for a folder that is not a run
    print(report_after_run(args.run_dir))
    return 0


def _compare_arguments(ap) -> None:
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="runs to compare (with --baseline: the candidates)")
    ap.add_argument("--by", choices=("device", "software", "backend", "run"), default=None,
                    help="the axis to compare across, everything else held equal (default: device)")
    ap.add_argument("--baseline", metavar="RUN_DIR", help="compare each RUN_DIR with this run, cell by cell")
    ap.add_argument("--fail-on", metavar="METRIC:PCT[,...]",
                    help="with --baseline: exit 1 when a cell got worse by more than PCT (points for accuracy) "
                         "with its 95%% CI excluding no change, e.g. step_time:5,best_val_accuracy:1")
    ap.add_argument("--prices", metavar="FILE", help="YAML: device name -> price per hour, for samples per dollar")
    ap.add_argument("--out", default=None,
                    help="output folder (default: results/compare-<time>; with --fail-on: no report unless given)")


def _compare(args) -> int:
    """Side by side (`--by`), or each candidate against `--baseline`; with `--fail-on`, the gate:
    one line per offending cell on stdout and exit 1, else exit 0 (analysis/gate.py)."""
    if args.fail_on is not None and not args.baseline:
        raise UserError("--fail-on: needs --baseline RUN_DIR (the run the candidates are held against)")
    if args.baseline and args.by not in (None, "run"):
        raise UserError(f"--by {args.by}: --baseline compares runs (--by run); drop one of them")
    runs = ([pathlib.Path(args.baseline)] if args.baseline else []) + [pathlib.Path(p) for p in args.run_dirs]
    out = pathlib.Path(args.out) if args.out else pathlib.Path("results") / f"compare-{dt.datetime.now():%Y%m%d-%H%M%S}"
    try:
        prices = load_prices(args.prices) if args.prices else None
        if args.fail_on is None:
            reference = runs[0].name if args.baseline else None
            print(write_compare(runs, out, by="run" if args.baseline else (args.by or "device"), prices=prices,
                                reference=reference))
            return 0
        result, data = gate.against_baseline(runs[0], runs[1:], args.fail_on)
        if args.out:
            index = write_compare(runs, out, by="run", prices=prices, reference=next(iter(data.manifests)))
            print(f"report: {index}", file=sys.stderr)
    except AnalysisInputError as e:
        raise UserError(str(e)) from None
    for line in result.lines:
        print(line)
    print(result.summary, file=sys.stderr)
    return 1 if result.failed else 0


def _export_arguments(ap) -> None:
    ap.add_argument("run_dir", metavar="RUN_DIR")
    ap.add_argument("--mlflow", required=True, metavar="URI",
                    help="tracking URI: sqlite:///path/mlflow.db, file:///path/mlruns, http://host:5000")
    ap.add_argument("--experiment", default=None, help="experiment name (default: regbench-<suite name>)")


def _export(args) -> int:
    """One MLflow run per trial, with params, metrics and the trial file as an artifact."""
    try:
        result = export(pathlib.Path(args.run_dir), args.mlflow, args.experiment)
    except AnalysisInputError as e:
        raise UserError(str(e)) from None
    print(f"exported {len(result.exported)} trials of {args.run_dir} to {args.mlflow} (experiment "
          f"{result.experiment}, id {result.experiment_id})" + (f"; {len(result.present)} were there already"
                                                               if result.present else ""))
    return 0


REPORT = Command("write RUN_DIR/report/ (HTML, Markdown, CSV)", _report_arguments, _report)
COMPARE = Command("devices, software versions, backends or runs side by side; a regression gate",
                  _compare_arguments, _compare)
EXPORT = Command("a run's trials to MLflow tracking (pip install 'regbench[mlflow]')", _export_arguments, _export)
