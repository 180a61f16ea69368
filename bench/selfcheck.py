"""`regbench selfcheck`: how much the harness costs and how noisy this machine is.

(a) Harness overhead: in one fresh process, the same compiled digits-MLP baseline is trained
    alternately by a bare `model.fit` timed from outside and by `model.fit` with regbench's
    StepTimer; the per-step cost of each is the difference of a long and a short fit. Overhead =
    with StepTimer / with a no-op batch callback - 1 (any batch-level callback makes Keras
    dispatch batch ends synchronously, so this isolates StepTimer's own cost); also against the
    bare fit (Keras' asynchronous dispatch) and how far the reported step time is from each.
    Threshold: HARNESS_OVERHEAD_MAX.
(b) Noise floor: N baseline trials, each in a fresh process (as in a real run); the CV of their
    median step times across trials, and the mean within-trial step-time CV. Threshold:
    NOISE_CV_MAX; above it, isolated trials' step-time differences of a few percent are noise
    here, and the paired sessions' estimates are the step-time figure to read.

Progress goes to stderr as it works (one line per round and per trial); the output ends with a
verdict: each figure against its threshold. Exit 0 when it measured (whatever the verdict), 1 when
it could not.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.trial import Trial

HARNESS_OVERHEAD_MAX = 0.01  # StepTimer's own cost per step, against a no-op batch callback
NOISE_CV_MAX = 0.05  # step-time CV across fresh-process baseline trials
PROGRESS = "selfcheck: "  # the prefix of progress lines (the overhead process's are passed on, its other output not)

BASELINE = Trial(workload="digits_mlp", regularizers=(), precision="float32", batch_size=64, epochs=6,
                 cpu_threads=1)


def overhead_in_process(rounds: int, short_steps: int = 100, long_steps: int = 500) -> dict:
    """Marginal cost of one training step, bare vs with StepTimer (runs in a fresh process).

    Differencing a long and a short single-epoch fit removes per-fit and per-epoch constants,
    so what remains is the per-step cost: bare_step_s = (T(long) - T(short)) / (long - short).
    """
    import time

    from bench import backends

    backends.configure_process("tensorflow", 1, gpu=False)
    import keras
    import numpy as np

    from bench.measure.timing import StepTimer
    from bench.regularizers import Recipe
    from bench.runner import build_model
    from bench.workloads import digits_mlp

    data = digits_mlp.load(0)
    reps = -(-long_steps * 64 // len(data.x_train))
    x, y = np.tile(data.x_train, (reps, 1)), np.tile(data.y_train, reps)
    model = build_model(BASELINE, digits_mlp, Recipe(), data)  # the step the runner times
    model.fit(x[:64 * short_steps], y[:64 * short_steps], batch_size=64, epochs=1, verbose=0)  # warm up

    def fit_s(steps, callbacks):
        t = time.perf_counter()
        model.fit(x[:64 * steps], y[:64 * steps], batch_size=64, epochs=1, verbose=0, shuffle=False,
                  callbacks=callbacks)
        return time.perf_counter() - t

    class NoOp(keras.callbacks.Callback):
        """A batch-level callback that does nothing: Keras then dispatches batch ends synchronously,
        as it does for StepTimer, so the difference to it is StepTimer's own cost."""

        def on_train_batch_end(self, batch, logs=None):
            pass

    def marginal(make_callbacks):
        return (fit_s(long_steps, make_callbacks()) - fit_s(short_steps, make_callbacks())) / (long_steps - short_steps)

    bare, noop, timed, reported = [], [], [], []
    for i in range(rounds):  # alternate, so drift hits all alike
        print(f"{PROGRESS}harness overhead: round {i + 1}/{rounds}", file=sys.stderr, flush=True)
        bare.append(marginal(list))
        noop.append(marginal(lambda: [NoOp()]))
        timer = StepTimer(warmup_steps=10)
        t_long = fit_s(long_steps, [timer])
        timed.append((t_long - fit_s(short_steps, [StepTimer()])) / (long_steps - short_steps))
        reported.append(timer.result(64)["step_time_mean_s"])
    bare_s, noop_s, timed_s, rep_s = (float(np.median(v)) for v in (bare, noop, timed, reported))
    return {"bare_step_s": bare_s, "noop_callback_step_s": noop_s, "with_harness_step_s": timed_s,
            "reported_step_mean_s": rep_s, "harness_overhead": timed_s / noop_s - 1,
            "harness_vs_default_fit": timed_s / bare_s - 1, "reported_vs_bare": rep_s / bare_s - 1,
            "reported_vs_noop": rep_s / noop_s - 1, "rounds": rounds, "steps": [short_steps, long_steps]}


def _progress(text: str) -> None:
    print(f"{PROGRESS}{text}", file=sys.stderr, flush=True)


def noise_floor(repeats: int, epochs: int) -> dict:
    """Step-time p50 of `repeats` baseline trials, each in its own fresh trial process."""
    import numpy as np

    from bench.executors.trial_process import Launcher, wait_and_collect

    p50, cv = [], []
    with tempfile.TemporaryDirectory() as tmp:
        launcher = Launcher(Path(tmp), "process")
        try:
            for r in range(repeats):
                trial = Trial(**{**BASELINE.to_dict(), "regularizers": (), "repeat": r, "seed": r, "epochs": epochs})
                proc = launcher.launch(trial, None)
                rec = wait_and_collect(proc, "process").record
                if rec is None or rec["status"] != "ok":
                    raise RuntimeError(f"selfcheck baseline trial {r} failed: "
                                       f"{(rec or {}).get('reason') or proc.log_tail()}")
                p50.append(rec["timing"]["step_time_p50_s"])
                cv.append(rec["timing"]["step_time_cv"])
                _progress(f"noise floor: trial {r + 1}/{repeats} in a fresh process, step-time p50 "
                          f"{p50[-1] * 1e3:.3f} ms")
        finally:
            launcher.close()
    p50 = np.asarray(p50)
    return {"trials": repeats, "step_time_p50_s": p50.tolist(),
            "across_trial_cv_of_p50": float(p50.std(ddof=1) / p50.mean()) if repeats > 1 else None,
            "mean_within_trial_cv": float(np.mean(cv))}


def _overhead_process(rounds: int) -> dict:
    """overhead_in_process in a fresh process; its progress lines are passed on to stderr."""
    code = ("import json,sys; from bench.selfcheck import overhead_in_process; "
            f"print(json.dumps(overhead_in_process({rounds}, 100, 1000)))")
    _progress(f"harness overhead: {rounds} alternating rounds in a fresh process (starting it)")
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        tail: list[str] = []
        for line in proc.stderr:
            if line.startswith(PROGRESS):
                print(line, end="", file=sys.stderr, flush=True)
            tail = (tail + [line.rstrip()])[-5:]
        if proc.wait() != 0:
            raise RuntimeError(f"selfcheck: the overhead process exited {proc.returncode}: {' | '.join(tail)}")
        out.seek(0)
        return json.loads(out.read().strip().splitlines()[-1])


def verdict(result: dict) -> list[dict]:
    """Each figure against its threshold: {name, value, threshold, ok} (ok None: not measured)."""
    cv = result["noise"]["across_trial_cv_of_p50"]
    return [{"name": "harness overhead", "value": result["harness"]["harness_overhead"],
             "threshold": HARNESS_OVERHEAD_MAX, "ok": result["harness"]["harness_overhead"] <= HARNESS_OVERHEAD_MAX},
            {"name": "noise floor", "value": cv, "threshold": NOISE_CV_MAX, "ok": None if cv is None else cv <= NOISE_CV_MAX}]


def verdict_lines(checks: list[dict]) -> list[str]:
    advice = {"harness overhead": "StepTimer costs more than the threshold per step here: short steps "
                                  "carry a timing cost; compare settings, not absolute step times",
              "noise floor": "fresh processes differ more than the threshold here: read the paired "
                             "sessions' step-time estimates, not isolated trials' ratios"}
    out = []
    for c in checks:
        if c["ok"] is None:
            out.append(f"verdict  {c['name']}: not measured (needs --repeats >= 2)")
        else:
            mark = "OK" if c["ok"] else "ABOVE THRESHOLD"
            out.append(f"verdict  {c['name']} {c['value'] * 100:+.2f}% vs <= {c['threshold'] * 100:g}%: {mark}"
                       + ("" if c["ok"] else f" ({advice[c['name']]})"))
    return out


def main(repeats: int = 5, epochs: int = 6, as_json: bool = False, rounds: int = 15) -> int:
    overhead = _overhead_process(rounds)
    _progress(f"noise floor: {repeats} baseline trials of {epochs} epochs, each in a fresh process")
    noise = noise_floor(repeats, epochs)
    result = {"harness": overhead, "noise": noise}
    result["verdict"] = verdict(result)
    if as_json:
        print(json.dumps(result, indent=1))
        return 0
    h = overhead
    ms = lambda key: f"{h[key] * 1e3:.3f} ms/step"  # noqa: E731
    print(f"per-step cost      bare model.fit {ms('bare_step_s')}, with a no-op batch callback "
          f"{ms('noop_callback_step_s')}, with StepTimer {ms('with_harness_step_s')} (marginal cost of "
          f"{h['steps'][1]} vs {h['steps'][0]} steps, median of {h['rounds']} alternating rounds)")
    print(f"harness overhead   {h['harness_overhead'] * 100:+.2f}% (StepTimer vs the no-op callback: its own cost); "
          f"{h['harness_vs_default_fit'] * 100:+.2f}% vs the bare fit (Keras' asynchronous callback dispatch)")
    print(f"reported step time {h['reported_vs_noop'] * 100:+.2f}% vs the no-op-callback step, "
          f"{h['reported_vs_bare'] * 100:+.2f}% vs the bare step (reported mean {h['reported_step_mean_s'] * 1e3:.3f} ms)")
    cv = noise["across_trial_cv_of_p50"]
    print(f"noise floor        step-time p50 CV across {noise['trials']} fresh-process baseline trials: "
          f"{cv * 100:.2f}%; mean within-trial CV {noise['mean_within_trial_cv'] * 100:.1f}%"
          if cv is not None else "noise floor        needs --repeats >= 2")
    for line in verdict_lines(result["verdict"]):
        print(line)
    return 0
