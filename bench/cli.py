"""`regbench`: run, plan, env, suites, validate, selfcheck, data; report, compare and export from analysis.

The CLI parses and dispatches: a run's lifecycle is bench/run.py. Commands of other packages
(analysis' report, compare, export) and the report written when a run completes come through
entry points (bench/commands.py): bench imports nothing from analysis. Progress goes to stderr;
`run` prints the run directory as its last stdout line. Errors are one line on stderr with exit
code 2 (bad input) or 1 (a failure while working).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from bench import SCHEMA_VERSION, commands, layout, suite as suite_mod
from bench.errors import StorageError, UserError


def _parser(plugins: dict, loaded: dict) -> argparse.ArgumentParser:
    """Every command; of the entry-point commands (`plugins`), those in `loaded` with their arguments."""
    ap = argparse.ArgumentParser(prog="regbench", description="What regularization costs and buys, measured.")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite (locally, or on the Ray cluster this joins)")
    run.add_argument("--suite", default=suite_mod.DEFAULT_SUITE, help="built-in suite name or YAML file (default: quick)")
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
    plan.add_argument("--suite", default=suite_mod.DEFAULT_SUITE)
    plan.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None)
    plan.add_argument("--only", metavar="PATTERN")
    plan.add_argument("--json", action="store_true")
    plan.add_argument("--calibrate", action="store_true",
                      help="expected durations from one measured 2-epoch baseline trial per cell group "
                           "(default: from the suite's expected_trial_s)")

    for name in plugins:
        command = loaded.get(name)
        p = sub.add_parser(name, help=command.help if command else f"(from {plugins[name].value})")
        if command:
            command.add_arguments(p)

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
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    plugins = commands.found()
    asked = argv[0] if argv and not argv[0].startswith("-") else None
    if asked and asked not in COMMANDS and asked not in plugins and not plugins:
        print(f"regbench: error: no command {asked!r} here, and none is registered under the entry-point group "
              f"{commands.GROUP} (report, compare and export come with analysis: pip install -e . again)",
              file=sys.stderr)
        return 2
    try:  # load only the command asked for (all of them for the top-level help)
        loaded = {name: commands.load(ep) for name, ep in plugins.items() if asked in (None, name)}
    except commands.PluginError as e:
        print(f"regbench: error: {e}", file=sys.stderr)
        return 1
    args = _parser(plugins, loaded).parse_args(argv)
    try:
        return (COMMANDS.get(args.command) or loaded[args.command].run)(args)
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
    """Parse, run (bench/run.py), print the run directory; the report comes from the after-run hooks."""
    from bench.run import run_suite  # here: it imports the executors and scipy, which other commands do without

    after_run = None if args.no_report else _after_run
    if after_run and not commands.found(commands.AFTER_RUN):
        print(f"report: none will be written: nothing is registered under the entry-point group "
              f"{commands.AFTER_RUN} (pip install -e . again, then regbench report RUN_DIR)", file=sys.stderr)
        after_run = None
    outcome = run_suite(args.suite, out=args.out, resume=args.resume, retry_failed=args.retry_failed,
                        executor=args.executor, address=args.address, backend=args.backend, only=args.only,
                        target_ci_pct=args.target_ci, trial_start=args.trial_start, after_run=after_run)
    if outcome.status == "complete":
        print(outcome.run_dir)
    return outcome.exit_code


def _after_run(run_dir: pathlib.Path) -> list:
    """Every registered after-run hook (analysis: the report), loaded when the run completes."""
    try:
        hooks = commands.after_run_hooks()
    except commands.PluginError as e:
        raise StorageError(f"{e}; the run's records are untouched: regbench report {run_dir}") from None
    return [hook(run_dir) for hook in hooks]


def cmd_plan(args) -> int:
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
    cpus = os.cpu_count() or 1
    print(f"{'suite':<8} {'trials':>6} {'settings':>8} {'precisions':>10} {'repeats':>7}  {'expected':>15}  description")
    for name in suite_mod.builtin_names():
        s = suite_mod.load(name)
        r = s.resolved
        minutes = s.expected_duration_s(cpus) / 60
        where = "1 GPU" if s.device == "gpu" else "here"
        print(f"{name:<8} {len(s.trials):>6} {len(r['settings']):>8} {len(r['precisions']):>10} {r['repeats']:>7}  "
              f"{minutes:>6.1f} min {where:<5}  {s.description}")
    return 0


def cmd_validate(args) -> int:
    from bench import clusterfiles, yamlfile

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
        manifest = path.name == layout.MANIFEST
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


COMMANDS = {"run": cmd_run, "plan": cmd_plan, "env": cmd_env, "suites": cmd_suites, "validate": cmd_validate,
            "selfcheck": cmd_selfcheck, "data": cmd_data}

if __name__ == "__main__":
    sys.exit(main())
