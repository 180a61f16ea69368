"""`regbench`: run, plan, report, compare, export, env, suites, validate, selfcheck, data.

Progress goes to stderr; `run` prints the run directory as its last stdout line. Errors are one
line on stderr with exit code 2 (bad input) or 1 (a failure while working).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys

from bench import SCHEMA_VERSION
from bench.errors import STORAGE_ERRNOS, StorageError, UserError

DEFAULT_SUITE = "quick"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="regbench", description="What regularization costs and buys, measured.")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite (locally, or on the Ray cluster this joins)")
    run.add_argument("--suite", default=DEFAULT_SUITE, help="built-in suite name or YAML file (default: quick)")
    run.add_argument("--out", default="results", help="folder for the run directory (default: results)")
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run: only trials without a file")
    run.add_argument("--retry-failed", action="store_true",
                     help="with --resume: run again the trials recorded as failed (not diverged, not skipped); "
                          "their old records move to RUN_DIR/history/")
    run.add_argument("--executor", choices=("ray", "process"), default=None,
                     help="ray (default) or process (one subprocess per trial, no Ray)")
    run.add_argument("--address", metavar="ADDR", default=None,
                     help="with --executor ray: join the Ray cluster at ADDR (host:port, or auto: the cluster this "
                          "node belongs to); default RAY_ADDRESS, else a private local instance")
    run.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None)
    run.add_argument("--only", metavar="PATTERN", help="run only trials whose id matches this glob/substring")
    run.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    run.add_argument("--target-ci", type=float, metavar="PCT", default=None,
                     help="add paired sessions to cell groups until every step-time 95%% CI half-width is at most "
                          "PCT points (capped by the suite's paired.max_sessions and paired.budget_s)")
    run.add_argument("--trial-start", choices=("zygote", "interpreter"), default=None,
                     help="how trial processes start: forked from a pre-imported zygote (default) or a "
                          "plain fresh interpreter each (also REGBENCH_TRIAL_START)")

    plan = sub.add_parser("plan", help="list the trials a run would do")
    plan.add_argument("--suite", default=DEFAULT_SUITE)
    plan.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None)
    plan.add_argument("--only", metavar="PATTERN")
    plan.add_argument("--json", action="store_true")
    plan.add_argument("--calibrate", action="store_true",
                      help="expected durations from one measured 2-epoch baseline trial per cell group "
                           "(default: from the suite's expected_trial_s)")

    rep = sub.add_parser("report", help="write RUN_DIR/report/ (HTML, Markdown, CSV)")
    rep.add_argument("run_dir")

    cmp_ = sub.add_parser("compare", help="devices, software versions, backends or runs side by side; a regression gate")
    cmp_.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="runs to compare (with --baseline: the candidates)")
    cmp_.add_argument("--by", choices=("device", "software", "backend", "run"), default=None,
                      help="the axis to compare across, everything else held equal (default: device)")
    cmp_.add_argument("--baseline", metavar="RUN_DIR", help="compare each RUN_DIR with this run, cell by cell")
    cmp_.add_argument("--fail-on", metavar="METRIC:PCT[,...]",
                      help="with --baseline: exit 1 when a cell got worse by more than PCT (points for accuracy) "
                           "with its 95%% CI excluding no change, e.g. step_time:5,best_val_accuracy:1")
    cmp_.add_argument("--prices", metavar="FILE", help="YAML: device name -> price per hour, for samples per dollar")
    cmp_.add_argument("--out", default=None,
                      help="output folder (default: results/compare-<time>; with --fail-on: no report unless given)")

    ex = sub.add_parser("export", help="a run's trials to MLflow tracking (pip install 'regbench[mlflow]')")
    ex.add_argument("run_dir", metavar="RUN_DIR")
    ex.add_argument("--mlflow", required=True, metavar="URI",
                    help="tracking URI: sqlite:///path/mlflow.db, file:///path/mlruns, http://host:5000")
    ex.add_argument("--experiment", default=None, help="experiment name (default: regbench-<suite name>)")

    e = sub.add_parser("env", help="this node's fingerprint")
    e.add_argument("--json", action="store_true")

    sub.add_parser("suites", help="built-in suites with their size and expected duration")

    v = sub.add_parser("validate", help="check a run, a trial file, a suite YAML or a cluster YAML offline")
    v.add_argument("file", metavar="PATH", help="RUN_DIR, trials/<id>.json, manifest.json, suite or cluster YAML")

    sc = sub.add_parser("selfcheck", help="harness overhead vs bare model.fit, and the noise floor")
    sc.add_argument("--repeats", type=int, default=5, help="fresh-process baseline trials for the noise floor")
    sc.add_argument("--rounds", type=int, default=15, help="alternating bare/harness rounds for the overhead")
    sc.add_argument("--epochs", type=int, default=6)
    sc.add_argument("--json", action="store_true")

    d = sub.add_parser("data", help="stage (fetch), verify or locate the workloads' dataset files on this node")
    d.add_argument("action", choices=("fetch", "verify", "where"))
    d.add_argument("workloads", nargs="*", metavar="WORKLOAD", help="default: every workload that reads files")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"regbench: error: {e}", file=sys.stderr)
        return 2
    except StorageError as e:
        print(f"regbench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM inside a run (bench/signals.py)
        from bench.signals import exit_code

        print("regbench: interrupted", file=sys.stderr)
        return exit_code(e)


# ---- commands ---------------------------------------------------------------

def cmd_run(args) -> int:
    """A run holds its directory's lock from start to end (bench/runlock.py), and a SIGTERM
    stops it as Ctrl-C does (bench/signals.py)."""
    import contextlib

    from bench import signals

    with signals.stop_on_signals(), contextlib.ExitStack() as held:
        return _run(args, held)


def _hold(store, held) -> None:
    """Take the run's lock for the rest of the command (a second driver is refused)."""
    from bench import runlock

    held.enter_context(runlock.acquire(store.path, lambda line: print(line, file=sys.stderr)))


def _run(args, held) -> int:
    from bench import executors, signals, suite as suite_mod, yamlfile
    from bench.plan import RunPlan
    from bench.progress import Progress
    from bench.store import RunStore, now_iso

    executor = args.executor or os.environ.get("REGBENCH_EXECUTOR", "ray")
    if args.retry_failed and not args.resume:
        raise UserError("--retry-failed: needs --resume RUN_DIR (the run whose failed trials to run again)")
    if args.resume:
        from bench import retry

        store = RunStore.open(pathlib.Path(args.resume))
        _hold(store, held)
        store.tidy()  # writes a killed driver cut short; safe only under the lock
        manifest = store.manifest()
        if "suite_input" not in manifest:
            raise UserError(f"{store.manifest_path}: suite_input missing; cannot resume this run")
        if args.retry_failed or retry.is_open(manifest):  # a plain --resume finishes an interrupted round
            round_no, ids = retry.begin(store)
            print(f"retry round {round_no}: {len(ids)} failed unit(s) to run again; their old records are in "
                  f"{store.path / retry.HISTORY}" if ids else "retry: no failed trial to run again", file=sys.stderr)
        suite = suite_mod.parse(manifest["suite_input"], manifest["suite"]["source"],
                                backend_override=manifest["suite"]["backend"])
        planned = set(manifest.get("trial_ids") or [])
        trials = [t for t in suite.trials if t.trial_id in planned] if planned else list(suite.trials)
        plan = RunPlan.of(suite, trials, args.target_ci if args.target_ci is not None else manifest.get("target_ci_pct"))
        done = len(store.finished_ids("trial")) + len(store.finished_ids("session"))
        print(f"resuming {store.path}: {done} finished, {plan.unit_count - done} to run", file=sys.stderr)
    else:
        path = suite_mod.resolve_path(args.suite)
        raw = yamlfile.load_mapping(path, "suite fields")
        suite = suite_mod.parse(raw, str(path), backend_override=args.backend)
        todo = suite_mod.filter_trials(suite.trials, args.only)
        if not todo:
            raise UserError(f"--only: pattern {args.only!r} matches none of the {len(suite.trials)} trials")
        out = pathlib.Path(args.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out: {out} exists and is not a directory")
        done = 0
        plan = RunPlan.of(suite, todo, args.target_ci)
        store = RunStore.create(out, suite.resolved, [t.trial_id for t in todo])
        _hold(store, held)
        na = (f"; {len(suite.not_applicable)} not-applicable workload x setting pairs left out, see `regbench plan`"
              if suite.not_applicable else "")
        store.update_manifest(suite_input=raw, executor=executor, target_ci_pct=plan.target_ci_pct,
                              session_ids=[s.unit_id for s in plan.sessions])
        print(f"run {store.path}: {len(todo)} trials and {len(plan.sessions)} paired sessions of suite "
              f"{suite.name} ({executor} executor{na})", file=sys.stderr)

    progress = Progress(plan.unit_count - done)
    try:
        store.update_manifest(status="running", executor=executor)
        executors.execute(suite, plan.batches(store, progress), store, executor, progress, args.trial_start,
                          args.address)
    except UserError:
        progress.close()
        if not args.resume and not any(store.trials_dir.iterdir()) and not any(store.unit_dir("session").glob("*")):
            shutil.rmtree(store.path)  # refused before any trial ran: leave no empty run behind
        else:
            store.update_manifest(status="interrupted", finished_at=now_iso())
        raise
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (a scheduler's, `ray stop`'s)
        progress.close()
        store.update_manifest(status="interrupted", finished_at=now_iso())
        what = "terminated (SIGTERM)" if signals.terminated(stop) else "interrupted"
        print(f"{what}; finished trials are kept. Resume with:\n  regbench run --resume {store.path}",
              file=sys.stderr)
        return signals.exit_code(stop)
    except StorageError as e:
        progress.close()
        try:
            store.update_manifest(status="interrupted", finished_at=now_iso())
        except StorageError:
            pass  # the manifest says "running"; --resume reads it all the same
        raise StorageError(f"{e}; every finished trial is kept: free space, then "
                           f"regbench run --resume {store.path}") from None
    progress.close()
    store.update_manifest(status="complete", finished_at=now_iso())
    if args.resume:
        retry.finish(store)  # every unit of an open retry round has its new record now
    store.export_parquet()
    c = progress.counts
    print(f"done: {c['ok']} ok, {c['failed']} failed, {c['diverged']} diverged, {c['skipped']} skipped",
          file=sys.stderr)
    for line in _noise_summary(store, plan):
        print(line, file=sys.stderr)
    if not args.no_report:
        _report(store.path)
    print(store.path)
    return 0


def _noise_summary(store, plan) -> list[str]:
    """What the run's own A/A control says about the noise, and where the CI target was missed."""
    from bench import session_estimates

    table = session_estimates.estimates(store.records("session"))
    lines = [f"noise floor: {line}" for line in session_estimates.noise_lines(table, plan.target_ci_pct)]
    if plan.unmet:
        lines.append(f"paired: {len(plan.unmet)} cell group(s) did not reach +-{plan.target_ci_pct:g} points "
                     "(session cap or time budget); see the report")
    return lines


def _report(run_dir: pathlib.Path) -> pathlib.Path:
    from analysis import write_report

    try:
        index = write_report(pathlib.Path(run_dir))
    except OSError as e:
        why = STORAGE_ERRNOS.get(e.errno) or e.strerror or str(e)
        raise StorageError(f"{getattr(e, 'filename', None) or run_dir}: cannot write the report ({why}); "
                           "the run's records are untouched") from None
    print(f"report: {index}", file=sys.stderr)
    return index


def cmd_plan(args) -> int:
    from bench import suite as suite_mod

    from bench.plan import describe

    suite = suite_mod.load(args.suite, backend=args.backend)
    trials = suite_mod.filter_trials(suite.trials, args.only)
    lines, summary, found = describe(suite, trials, args.calibrate, lambda line: print(line, file=sys.stderr))
    if args.json:  # the trials, each with its expected seconds and why this machine skips it (null: it runs)
        print(json.dumps([{"trial_id": t.trial_id, **t.to_record(), "expected_s": found["estimate"].unit_s[t.unit_id],
                           "skipped_here": found["skipped"].get(t.unit_id)} for t in trials], indent=1))
    else:
        print("\n".join(lines))
    for line in summary:
        print(line, file=sys.stderr)
    for na in suite.not_applicable:
        print(f"not applicable, not run: {na['workload']} x {na['setting']}: {na['reason']}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    run_dir = pathlib.Path(args.run_dir)
    from bench.store import RunStore

    RunStore.open(run_dir)  # a clear error for a folder that is not a run
    import analysis

    try:
        index = _report(run_dir)
    except analysis.AnalysisInputError as e:
        raise UserError(str(e)) from None
    print(index)
    return 0


def cmd_compare(args) -> int:
    """Side by side (`--by`), or each candidate against `--baseline`; with `--fail-on`, the gate:
    one line per offending cell on stdout and exit 1, else exit 0 (analysis/gate.py)."""
    import datetime as dt

    import analysis

    if args.fail_on is not None and not args.baseline:
        raise UserError("--fail-on: needs --baseline RUN_DIR (the run the candidates are held against)")
    if args.baseline and args.by not in (None, "run"):
        raise UserError(f"--by {args.by}: --baseline compares runs (--by run); drop one of them")
    runs = ([pathlib.Path(args.baseline)] if args.baseline else []) + [pathlib.Path(p) for p in args.run_dirs]
    out = pathlib.Path(args.out) if args.out else pathlib.Path("results") / f"compare-{dt.datetime.now():%Y%m%d-%H%M%S}"
    try:
        prices = analysis.load_prices(args.prices) if args.prices else None
        if args.fail_on is None:
            reference = runs[0].name if args.baseline else None
            print(analysis.write_compare(runs, out, by="run" if args.baseline else (args.by or "device"),
                                         prices=prices, reference=reference))
            return 0
        thresholds = analysis.gate.parse_fail_on(args.fail_on)
        data = analysis.load(runs)
        result = analysis.gate.check(next(iter(data.manifests)), data.trials, thresholds)
        if args.out:
            print(f"report: {analysis.write_compare(runs, out, by='run', prices=prices, reference=next(iter(data.manifests)))}",
                  file=sys.stderr)
    except analysis.AnalysisInputError as e:
        raise UserError(str(e)) from None
    for line in result.lines:
        print(line)
    print(result.summary, file=sys.stderr)
    return 1 if result.failed else 0


def cmd_export(args) -> int:
    """One MLflow run per trial, with params, metrics and the trial file as an artifact."""
    from analysis.errors import AnalysisInputError
    from analysis.mlflow_export import export

    try:
        result = export(pathlib.Path(args.run_dir), args.mlflow, args.experiment)
    except AnalysisInputError as e:
        raise UserError(str(e)) from None
    print(f"exported {len(result.exported)} trials of {args.run_dir} to {args.mlflow} (experiment "
          f"{result.experiment}, id {result.experiment_id})" + (f"; {len(result.present)} were there already"
                                                               if result.present else ""))
    return 0


def cmd_env(args) -> int:
    from bench.env import fingerprint

    fp = fingerprint()
    if args.json:
        print(json.dumps(fp, indent=1))
        return 0
    v = fp["versions"]
    print(f"host        {fp['hostname']} ({fp['os']}, {fp['machine']})")
    print(f"cpu         {fp['cpu']} x{fp['cpu_count']}  bf16: {'yes' if fp['cpu_bf16'] else 'no'}")
    print(f"memory      {fp['memory_bytes'] / 2**30:.1f} GiB" if fp["memory_bytes"] else "memory      ?")
    if fp["gpus"]:
        for g in fp["gpus"]:
            print(f"gpu {g['index']}       {g['name']} ({g['memory_bytes'] / 2**30:.0f} GiB, cc {g['compute_capability']}, "
                  f"driver {g['driver']}, CUDA {g['cuda_driver']})")
    else:
        print(f"gpu         none ({fp['gpu_reason']})")
    print("versions    " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
    print(f"fingerprint {fp['fingerprint_id']}")
    return 0


def cmd_suites(args) -> int:
    from bench import suite as suite_mod

    cpus = os.cpu_count() or 1
    print(f"{'suite':<8} {'trials':>6} {'settings':>8} {'precisions':>10} {'repeats':>7}  {'expected':>15}  description")
    for name in suite_mod.builtin_names():
        s = suite_mod.load(name)
        r = s.resolved
        workers = 1 if s.isolation == "node" or s.device == "gpu" else max(1, cpus // s.cpus_per_trial)
        minutes = len(s.trials) * s.expected_trial_s / workers / 60
        where = "1 GPU" if s.device == "gpu" else "here"
        print(f"{name:<8} {len(s.trials):>6} {len(r['settings']):>8} {len(r['precisions']):>10} {r['repeats']:>7}  "
              f"{minutes:>6.1f} min {where:<5}  {s.description}")
    return 0


def cmd_validate(args) -> int:
    from bench import clusterfiles, suite as suite_mod, yamlfile

    path = pathlib.Path(args.file)
    if path.is_dir() or path.suffix == ".json":
        return _validate_results(path)
    data = yamlfile.load(path)
    if clusterfiles.is_cluster_file(data):
        print(clusterfiles.validate_cluster_file(path, data))
        return 0
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of suite fields at the top level")
    from bench.units.session import plan_sessions

    s = suite_mod.parse(data, str(path))
    r = s.resolved
    na = f", less {len(s.not_applicable)} not-applicable workload x setting pairs" if s.not_applicable else ""
    sessions = len(plan_sessions(s.trials, s.paired)) if s.paired else 0  # as `regbench plan` counts them
    print(f"{path}: valid suite {s.name!r}: {len(s.trials)} trials = {len(r['workloads'])} workloads x "
          f"{len(r['settings'])} regularizer settings x {len(r['precisions'])} precisions x "
          f"{len(r['batch_sizes'])} batch sizes x {r['repeats']} repeats{na}; {sessions} paired sessions")
    return 0


def _validate_results(path: pathlib.Path) -> int:
    """A run directory, a trial file or a manifest against the contract (bench/schema): one line per
    problem on stdout, then exit 2; or one summary line and exit 0."""
    from bench import schema

    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        check = schema.check_run(path)
        problems, summary = check.problems, check.summary()
    else:
        manifest = path.name == "manifest.json"
        problems = schema.check_manifest_file(path) if manifest else schema.check_trial_file(path)
        n = len(problems)
        summary = (f"{path}: {n} problem{'s' if n != 1 else ''}" if problems else
                   f"{path}: valid {'manifest' if manifest else 'trial file'} (schema_version {SCHEMA_VERSION})")
    if problems:
        for problem in problems:
            print(problem)
        raise UserError(summary)
    print(summary)
    return 0


def cmd_selfcheck(args) -> int:
    from bench.selfcheck import main as selfcheck

    try:  # exit 0 when it measured, whatever its verdict; 1 when it could not
        return selfcheck(repeats=args.repeats, epochs=args.epochs, as_json=args.json, rounds=args.rounds)
    except RuntimeError as e:
        print(f"regbench: error: {e}", file=sys.stderr)
        return 1


def cmd_data(args) -> int:
    """fetch: stage and verify (under the file lock); verify: check only; where: the folders."""
    from bench import data

    datasets = data.for_workloads(args.workloads)
    if not datasets:
        print(f"no dataset files needed by {', '.join(args.workloads)}", file=sys.stderr)
        return 0
    if args.action == "fetch":
        for name, r in data.prepare(args.workloads).items():
            extra = f" ({', '.join(r['files_fetched'])})" if r["files_fetched"] else ""
            print(f"{name}: {r['state']}{extra}, {r['bytes'] / 1e6:.1f} MB in {r['path']} ({r['seconds']:.1f} s)")
        return 0
    if args.action == "where":
        roots = data.roots()
        print(f"data roots (lookup order; fetch writes to the first): {', '.join(map(str, roots))}")
        for ds in datasets:
            found = data.locate(ds)
            print(f"{ds.name}: {found if found else 'missing'} ({ds.title}: {ds.folder}/{{{','.join(ds.files)}}})")
        return 0
    failed = 0
    for ds in datasets:
        st = data.status(ds)
        if st["state"] == "verified":
            print(f"{ds.name}: verified, {st['bytes'] / 1e6:.1f} MB in {st['path']}")
        else:
            failed += 1
            where = f"{st['path']}: " if st["state"] == "corrupted" else ""
            print(f"{ds.name}: {st['state']}: {where}{st['problem']}")
    return 1 if failed else 0


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "report": cmd_report, "compare": cmd_compare, "export": cmd_export,
            "env": cmd_env,
            "suites": cmd_suites, "validate": cmd_validate, "selfcheck": cmd_selfcheck, "data": cmd_data}

if __name__ == "__main__":
    sys.exit(main())
