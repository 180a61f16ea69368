"""Mutation check: do the tests fail when a published number would be wrong?

    python -m tests.mutation                 every mutant against the tests named to kill it
    python -m tests.mutation --only NAME...  some mutants
    python -m tests.mutation --all-fast      every mutant against the whole fast suite (-m "not slow"; long)
    python -m tests.mutation --list          the mutants and their tests

Each mutant is a small edit of the code that makes regbench publish a wrong number without
crashing (a regularizer that is a no-op, every policy run in float32, the step timer not waiting
for the step, ...). For each one, a scratch copy of the repository (tracked and untracked files,
nothing ignored) gets the edit, and pytest runs there: the mutant is killed when a test fails. First
the unmutated copy must pass the same tests (the control), so a kill means the edit was caught, not
that the tests were already red. Prints a table; exits 1 if a mutant survives or the control fails.
The killing tests are ordinary tests of the suite (`make test` runs them), none marked slow.

An edit that no longer matches the code (the code moved on) is an error, not a survivor: update
the mutant with the code.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    breaks: str  # what regbench would publish wrongly
    edits: tuple  # (path, old, new): every occurrence of old is replaced; old must occur
    tests: tuple  # pytest node ids expected to kill it


MODELS = "tests/test_models.py"
CLASSIC = f"{MODELS}::test_each_classic_regularizer_is_in_the_model_on_tensorflow"
PRECISION = f"{MODELS}::test_precision_policy_is_in_effect_on_tensorflow"
PENALTY_LOSS = f"{MODELS}::test_penalty_changes_the_training_loss_by_exactly_its_value"
KNOWN = "tests/test_known_answers.py"
MEASURE = "tests/test_measure.py"
HOST_PEAK = f"{MEASURE}::test_host_peak_is_this_process_and_read_at_the_end_of_the_window"
SESSIONS = (f"{KNOWN}::test_round_log_ratios_pair_within_the_round_against_both_baselines",
            f"{KNOWN}::test_paired_estimates_recover_the_truth_with_a_tight_interval")

MUTANTS = (
    Mutant("regularizers-noop", "every regularizer a no-op: overheads become baseline vs baseline",
           (("bench/regularizers.py", "        REGISTRY[name].apply(recipe, params)", "        pass"),),
           (f"{CLASSIC}[digits_mlp]", f"{PENALTY_LOSS}[digits_mlp]")),
    Mutant("penalties-dropped", "L1/L2/elastic net never reach a kernel",
           (("bench/regularizers.py", "if self.l1 == 0.0 and self.l2 == 0.0:", "if True:"),),
           (f"{CLASSIC}[digits_mlp]", f"{PENALTY_LOSS}[digits_mlp]")),
    Mutant("dense-block-ignores-recipe", "hidden Dense blocks built without penalty, batch norm or dropout",
           (("bench/workloads/common.py", "    x = keras.layers.Dense(units, use_bias=not recipe.batch_norm,",
             "    recipe = type(recipe)()\n    x = keras.layers.Dense(units, use_bias=not recipe.batch_norm,"),),
           (f"{CLASSIC}[digits_mlp]", f"{CLASSIC}[synthetic_cnn]")),
    Mutant("batch-norm-dropped", "batch_norm trials train without BatchNormalization",
           (("bench/workloads/common.py", "    if recipe.batch_norm:", "    if False:"),),
           (f"{CLASSIC}[digits_mlp]", f"{CLASSIC}[cifar10_resnet20]")),
    Mutant("dropout-dropped", "dropout missing after the MLP's hidden blocks",
           (("bench/workloads/common.py", "    if recipe.dropout_rate:", "    if False:"),),
           (f"{CLASSIC}[digits_mlp]",)),
    Mutant("augmentation-dropped", "in-model augmentation layers never added",
           (("bench/workloads/common.py", 'if recipe.augmentation not in ("model", "model_keras"):', "if True:"),),
           (f"{CLASSIC}[digits_mlp]", f"{CLASSIC}[synthetic_cnn]")),
    Mutant("float32-everywhere", "precision.set_policy ignores its argument: mixed precision runs float32",
           (("bench/precision.py", "keras.config.set_dtype_policy(precision)", 'keras.config.set_dtype_policy("float32")'),),
           (f"{PRECISION}[mixed_bfloat16]", f"{PRECISION}[mixed_float16]")),
    Mutant("softmax-head-in-16-bits", "the softmax head computed in float16/bfloat16",
           (("bench/workloads/common.py", 'Activation("softmax", dtype="float32", name="probs")',
             'Activation("softmax", name="probs")'),),
           (f"{PRECISION}[mixed_bfloat16]",)),
    Mutant("early-stopping-on-penalized-loss", "early stopping watches val_loss, which includes the penalty",
           (("bench/runner.py", 'monitor=es["monitor"]', 'monitor="val_loss"'),),
           (f"{MODELS}::test_early_stopping_watches_the_unpenalized_metric",)),
    Mutant("timer-no-host-sync", "StepTimer stamps a step before its work is done (no host sync of the loss)",
           (("bench/measure/timing.py", "    async_safe = False", "    async_safe = True"),
            ("bench/measure/timing.py",
             '        loss = _as_float((logs or {}).get("loss", 0.0))  # the host waits for this step here\n'
             '        now = time.perf_counter()\n',
             '        now = time.perf_counter()\n'
             '        loss = _as_float((logs or {}).get("loss", 0.0))  # the host waits for this step here\n')),
           ("tests/test_sync.py::test_step_times_cover_the_work[jax]",)),
    Mutant("timer-warmup-kept", "a one-epoch run's warm-up steps counted as steady state",
           (("bench/measure/timing.py", "return list(range(len(self.steps)))[self.warmup_steps:]",
             "return list(range(len(self.steps)))"),),
           (f"{MEASURE}::test_single_epoch_run_drops_its_warmup_steps",
            f"{MEASURE}::test_single_epoch_warmup_in_a_real_fit")),
    Mutant("pairing-by-repeat-ignored", "overheads and speedups compared across repeats (drift not cancelled)",
           (("analysis/overheads.py", '    Adds `<column>_ref` for each column and `has_reference`."""\n',
             '    Adds `<column>_ref` for each column and `has_reference`."""\n'
             '    keys = [k for k in keys if k != "repeat"]\n'),),
           (f"{KNOWN}::test_overhead_pairs_by_repeat_and_cancels_the_drift",
            f"{KNOWN}::test_speedup_pairs_by_repeat_and_cancels_the_drift",
            f"{KNOWN}::test_every_verdict_with_known_answers")),
    Mutant("host-peak-of-parent", "host peak read from the parent process",
           (("bench/measure/memory.py", 'open("/proc/self/status")',
             'open("/proc/%d/status" % __import__("os").getppid())'),),
           (HOST_PEAK,)),
    Mutant("host-peak-of-children", "host peak read from the trial's children (RUSAGE_CHILDREN)",
           (("bench/measure/memory.py", 'open("/proc/self/status")', 'open("/nonexistent/status")'),
            ("bench/measure/memory.py", "resource.RUSAGE_SELF", "resource.RUSAGE_CHILDREN")),
           (HOST_PEAK,)),
    Mutant("host-peak-ru-maxrss", "host peak from ru_maxrss, which carries a larger parent's size across exec",
           (("bench/measure/memory.py", 'open("/proc/self/status")', 'open("/nonexistent/status")'),),
           (HOST_PEAK,)),
    Mutant("session-reference-ignores-round", "paired sessions: each block compared with the session-wide baseline",
           (("bench/units/session.py", "    ref = (first + second) / 2\n", "    ref = np.mean((first + second) / 2)\n"),),
           SESSIONS),
    Mutant("session-reference-one-baseline", "paired sessions: only the first baseline instance as reference",
           (("bench/units/session.py", "    ref = (first + second) / 2\n", "    ref = first\n"),),
           SESSIONS),
    Mutant("session-reference-mean-of-three", "paired sessions: the mean, not the median, of the three baseline instances",
           (("bench/units/session.py", "ref = np.median([first, second, np.log(step_time_s[THIRD_LABEL])], axis=0)",
             "ref = np.mean([first, second, np.log(step_time_s[THIRD_LABEL])], axis=0)"),),
           (f"{KNOWN}::test_reference_is_the_median_of_three_baseline_instances",)),
    Mutant("session-reference-third-ignored", "paired sessions: the third baseline instance left out of the reference",
           (("bench/units/session.py", "    if THIRD_LABEL in step_time_s:\n", "    if False:\n"),),
           (f"{KNOWN}::test_reference_is_the_median_of_three_baseline_instances",)),
    Mutant("pipeline-threads-on-one-core", "input-side augmentation on a one-core slot fed by two enqueuer threads "
           "that only take turns with the step (thread hand-offs counted as its cost)",
           (("bench/inputs.py", "    return 1 if cpu_threads == 1 else PIPELINE_WORKERS\n", "    return PIPELINE_WORKERS\n"),),
           ("tests/test_inputs.py::test_a_one_core_slot_feeds_input_side_batches_without_enqueuer_threads",)),
    Mutant("run-budget-ignored", "the default suite's wall-time promise broken on a slow day: added sessions "
           "planned as if the run had started when the planned sessions ended",
           (("bench/plan.py", "        if self.run_budget_s is not None and self.started + self.run_budget_s < deadline:\n",
             "        if False:\n"),),
           ("tests/test_paired.py::test_run_budget_ends_the_added_sessions_on_time_when_the_run_started_slow",)),
    Mutant("noise-spread-unwarned", "a run whose overheads spread between sessions (A/A clean) printed as stable",
           (("bench/session_estimates.py", "        if np.isfinite(half) and half > limit:\n", "        if False:\n"),),
           ("tests/test_paired.py::test_noise_floor_warns_when_the_settings_move_between_sessions_and_the_a_a_does_not",)),
    Mutant("session-mean-not-median", "paired sessions: a session's estimate is the mean over rounds (bursts count)",
           (("bench/session_estimates.py", '"median_log_ratio": float(np.median(L))', '"median_log_ratio": float(np.mean(L))'),),
           SESSIONS[1:]),
    Mutant("session-interval-normal", "a normal instead of a Student t interval over few sessions (and few repeats)",
           (("bench/stats.py", "half = _scipy_stats.t.ppf(0.5 + confidence / 2, n - 1 if df is None else df)",
             "half = _scipy_stats.norm.ppf(0.5 + confidence / 2)"),),
           (f"{KNOWN}::test_session_estimate_matches_a_hand_computation",)),
    Mutant("session-rounds-unpaired", "paired sessions: blocks matched by rank, not by round",
           (("bench/units/session.py", "            out[label] = np.log(blocks) - ref\n",
             "            out[label] = np.sort(np.log(blocks)) - np.sort(ref)\n"),),
           SESSIONS),
    Mutant("session-budget-ignored", "a slow model's paired sessions run every planned round and step, "
           "whatever their time budget (a tiny suite's sessions take hours)",
           (("bench/units/session_run.py", "    if left_s is None or need_s <= left_s:\n", "    if True:\n"),),
           ("tests/test_paired.py::test_fit_rounds_shortens_blocks_then_rounds_to_fit_the_time_left",)),
    Mutant("eta-counts-units", "the ETA counts a session as a trial (it grows as the sessions run)",
           (("bench/progress.py", "        eta = sum(s * scale.get(kind, overall) for kind, s in pending)\n",
             "        eta = len(pending) * elapsed / self._ran\n"),),
           ("tests/test_cost.py::test_eta_weighs_each_unit_by_its_expected_seconds",)),
)


def source_files() -> list[str]:
    """Tracked and untracked, not ignored, files of the working tree (what a scratch copy needs)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                         check=True).stdout.decode()
    return [p for p in out.split("\0") if p and (ROOT / p).is_file()]


def scratch_copy(dest: pathlib.Path, files: list[str]) -> pathlib.Path:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return dest


def apply(copy: pathlib.Path, mutant: Mutant) -> None:
    for rel, old, new in mutant.edits:
        path = copy / rel
        text = path.read_text()
        if old not in text:
            raise SystemExit(f"mutant {mutant.name}: {rel} no longer contains {old.strip()!r}; update tests/mutation.py")
        path.write_text(text.replace(old, new))


def environment(copy: pathlib.Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    env.update(PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1", CUDA_VISIBLE_DEVICES="")
    return env


def check_imports_from(copy: pathlib.Path) -> None:
    """The scratch copy's modules are the ones imported there (not an installed regbench)."""
    code = "import bench, analysis, tests; print(bench.__file__); print(analysis.__file__); print(list(tests.__path__)[0])"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=environment(copy), capture_output=True,
                         text=True, check=True).stdout.split()
    wrong = [p for p in out if not pathlib.Path(p).resolve().is_relative_to(copy.resolve())]
    if wrong:
        raise SystemExit(f"the scratch copy imports modules from elsewhere: {wrong}")


def run_pytest(copy: pathlib.Path, tests: list[str], log: pathlib.Path) -> tuple[int, list[str], float]:
    """pytest in the copy; (exit code, failed node ids, seconds)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-rf", *tests]
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=copy, env=environment(copy), capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    failed = [m.group(1) for m in re.finditer(r"^FAILED (\S+)", proc.stdout, re.M)]
    return proc.returncode, failed, time.monotonic() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    ap.add_argument("--all-fast", action="store_true", help='run the whole fast suite (-m "not slow") per mutant')
    ap.add_argument("--no-control", action="store_true", help="skip the unmutated control run")
    ap.add_argument("--list", action="store_true", help="list the mutants and their tests")
    ap.add_argument("--keep", metavar="DIR", help="keep scratch copies and logs under DIR")
    args = ap.parse_args(argv)

    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        ap.error(f"unknown mutant(s): {', '.join(sorted(unknown))}")
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.breaks}\n    " + "\n    ".join(m.tests))
        return 0

    files = source_files()
    work = pathlib.Path(args.keep) if args.keep else pathlib.Path(tempfile.mkdtemp(prefix="regbench-mutation-"))
    work.mkdir(parents=True, exist_ok=True)
    tests_of = (lambda m: ["tests"]) if args.all_fast else (lambda m: list(m.tests))
    rows, ok = [], True
    try:
        if not args.no_control:
            control = scratch_copy(work / "control", files)
            check_imports_from(control)
            union = ["tests"] if args.all_fast else sorted({t for m in mutants for t in m.tests})
            code, failed, secs = run_pytest(control, union, work / "control.log")
            print(f"control (no mutation): pytest exit {code} in {secs:.0f} s", flush=True)
            if code != 0:
                print(f"the unmutated copy fails {failed or '(see ' + str(work / 'control.log') + ')'}: "
                      "fix the tests first", file=sys.stderr)
                return 1
            if not args.keep:
                shutil.rmtree(control)
        for m in mutants:
            copy = scratch_copy(work / m.name, files)
            apply(copy, m)
            code, failed, secs = run_pytest(copy, tests_of(m), work / f"{m.name}.log")
            if code == 1 and failed:
                result = "killed"
            elif code == 0:
                result, ok = "SURVIVED", False
            else:
                result, ok = f"error (pytest exit {code}, see {work / (m.name + '.log')})", False
            rows.append((m.name, m.breaks, result, failed, secs))
            print(f"{m.name}: {result} in {secs:.0f} s" + (f" by {', '.join(failed)}" if failed else ""), flush=True)
            if not args.keep:
                shutil.rmtree(copy)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print("\n| mutant | what it would publish wrongly | result | killed by | s |\n|---|---|---|---|---|")
    for name, breaks, result, failed, secs in rows:
        by = "<br>".join(f.replace("tests/", "") for f in failed) or "-"
        print(f"| {name} | {breaks} | {result} | {by} | {secs:.0f} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
