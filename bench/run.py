"""One run's lifecycle, for `regbench run` and for a notebook: plan, run, resume, finish.

    from bench.run import run_suite
    outcome = run_suite("smoke", out="results", executor="process")
    outcome.run_dir, outcome.counts        # {"ok": 9, "failed": 0, "diverged": 0, "skipped": 3}
    run_suite(resume=outcome.run_dir)      # an interrupted run: only the units without a record

A new run refused before any unit ran (bad input, no GPU, a dataset missing) leaves no run
directory behind. A run holds its directory's lock from start to end (bench/runlock.py), and a
SIGTERM stops it as Ctrl-C does (bench/signals.py): the manifest says "interrupted", every
finished record is kept, and the outcome's exit code is the shell's (130, 143). A full disk is
a StorageError that names the resume command. On completion: the manifest says "complete", an
open retry round (bench/retry.py) is closed, the Parquet tables are written, the noise summary is
logged, and `after_run(run_dir)` is called (the CLI's report; bench/commands.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import sys
from typing import Callable

from bench import executors, retry, runlock, session_estimates, signals, suite as suite_mod, yamlfile
from bench.errors import StorageError, UserError
from bench.plan import RunPlan
from bench.progress import Progress
from bench.store import RunStore, now_iso
from bench.suite import DEFAULT_SUITE


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its directory, "complete" or "interrupted", the unit counts of this call
    (ok, failed, diverged, skipped), the exit code the shell would see, and what after_run returned."""

    run_dir: pathlib.Path
    status: str
    counts: dict
    exit_code: int
    after_run: object = None


@dataclasses.dataclass
class _Started:
    store: RunStore
    suite: suite_mod.Suite
    plan: RunPlan
    done: int  # units finished before this call


def run_suite(suite: str | os.PathLike = DEFAULT_SUITE, *, out: str | os.PathLike = "results",
              resume: str | os.PathLike | None = None, retry_failed: bool = False, executor: str | None = None,
              address: str | None = None, backend: str | None = None, only: str | None = None,
              target_ci_pct: float | None = None, trial_start: str | None = None,
              after_run: Callable[[pathlib.Path], object] | None = None,
              log: Callable[[str], None] = _stderr) -> RunOutcome:
    """Run `suite` (a built-in name or a YAML file) into a new directory under `out`, or finish the
    run `resume` (its own suite; with retry_failed, its failed units again). `executor` is "ray"
    (default: REGBENCH_EXECUTOR, else ray) or "process"; `log` gets the progress lines. Bad input
    raises UserError, an unwritable run directory StorageError (bench/errors.py)."""
    executor = executor or os.environ.get("REGBENCH_EXECUTOR", "ray")
    if retry_failed and not resume:
        raise UserError("--retry-failed: needs --resume RUN_DIR (the run whose failed trials to run again)")
    with signals.stop_on_signals(), contextlib.ExitStack() as held:
        def hold(store: RunStore) -> None:  # the run's lock for the rest of the run (a second driver is refused)
            held.enter_context(runlock.acquire(store.path, log))

        if resume:
            started = _reopen(pathlib.Path(resume), retry_failed, target_ci_pct, hold, log)
        else:
            started = _start(suite, pathlib.Path(out), backend, only, target_ci_pct, executor, hold, log)
        return _execute(started, executor, trial_start, address, bool(resume), after_run, log)


def _reopen(run_dir: pathlib.Path, retry_failed: bool, target_ci_pct, hold, log) -> _Started:
    store = RunStore.open(run_dir)
    hold(store)
    store.tidy()  # writes a killed driver cut short; safe only under the lock
    manifest = store.manifest()
    if "suite_input" not in manifest:
        raise UserError(f"{store.manifest_path}: suite_input missing; cannot resume this run")
    if retry_failed or retry.is_open(manifest):  # a plain --resume finishes an interrupted round
        round_no, ids = retry.begin(store)
        log(f"retry round {round_no}: {len(ids)} failed unit(s) to run again; their old records are in "
            f"{store.layout.history_dir}" if ids else "retry: no failed trial to run again")
    suite = suite_mod.parse(manifest["suite_input"], manifest["suite"]["source"],
                            backend_override=manifest["suite"]["backend"])
    planned = set(manifest.get("trial_ids") or [])
    trials = [t for t in suite.trials if t.trial_id in planned] if planned else list(suite.trials)
    plan = RunPlan.of(suite, trials, target_ci_pct if target_ci_pct is not None else manifest.get("target_ci_pct"))
    done = len(store.finished_ids("trial")) + len(store.finished_ids("session"))
    log(f"resuming {store.path}: {done} finished, {plan.unit_count - done} to run")
    return _Started(store, suite, plan, done)


def _start(name_or_file, out: pathlib.Path, backend, only, target_ci_pct, executor: str, hold, log) -> _Started:
    path = suite_mod.resolve_path(str(name_or_file))
    raw = yamlfile.load_mapping(path, "suite fields")
    suite = suite_mod.parse(raw, str(path), backend_override=backend)
    todo = suite_mod.filter_trials(suite.trials, only)
    if not todo:
        raise UserError(f"--only: pattern {only!r} matches none of the {len(suite.trials)} trials")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    plan = RunPlan.of(suite, todo, target_ci_pct)
    store = RunStore.create(out, suite.resolved, [t.trial_id for t in todo])
    hold(store)
    na = (f"; {len(suite.not_applicable)} not-applicable workload x setting pairs left out, see `regbench plan`"
          if suite.not_applicable else "")
    store.update_manifest(suite_input=raw, executor=executor, target_ci_pct=plan.target_ci_pct,
                          session_ids=[s.unit_id for s in plan.sessions])
    log(f"run {store.path}: {len(todo)} trials and {len(plan.sessions)} paired sessions of suite "
        f"{suite.name} ({executor} executor{na})")
    return _Started(store, suite, plan, 0)


def _execute(started: _Started, executor: str, trial_start, address, resumed: bool, after_run, log) -> RunOutcome:
    store, plan = started.store, started.plan
    progress = Progress(plan.unit_count - started.done)
    try:
        store.update_manifest(status="running", executor=executor)
        executors.execute(started.suite, plan.batches(store, progress), store, executor, progress, trial_start,
                          address)
    except UserError:
        progress.close()
        if not resumed and not any(store.trials_dir.iterdir()) and not any(store.unit_dir("session").glob("*")):
            shutil.rmtree(store.path)  # refused before any trial ran: leave no empty run behind
        else:
            store.update_manifest(status="interrupted", finished_at=now_iso())
        raise
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (a scheduler's, `ray stop`'s)
        progress.close()
        store.update_manifest(status="interrupted", finished_at=now_iso())
        what = "terminated (SIGTERM)" if signals.terminated(stop) else "interrupted"
        log(f"{what}; finished trials are kept. Resume with:\n  regbench run --resume {store.path}")
        return RunOutcome(store.path, "interrupted", dict(progress.counts), signals.exit_code(stop))
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
    if resumed:
        retry.finish(store)  # every unit of an open retry round has its new record now
    store.export_parquet()
    c = progress.counts
    log(f"done: {c['ok']} ok, {c['failed']} failed, {c['diverged']} diverged, {c['skipped']} skipped")
    for line in noise_summary(store, plan):
        log(line)
    after = after_run(store.path) if after_run is not None else None
    return RunOutcome(store.path, "complete", dict(c), 0, after)


def noise_summary(store: RunStore, plan: RunPlan) -> list[str]:
    """What the run's own A/A control says about the noise, and where the CI target was missed."""
    table = session_estimates.estimates(store.records("session"))
    lines = [f"noise floor: {line}" for line in session_estimates.noise_lines(table, plan.target_ci_pct)]
    if plan.unmet:
        lines.append(f"paired: {len(plan.unmet)} cell group(s) did not reach +-{plan.target_ci_pct:g} points "
                     "(session cap or time budget); see the report")
    return lines
