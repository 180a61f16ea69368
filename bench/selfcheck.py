"""`regbench selfcheck`: how much the harness costs and how noisy this machine is.

(a) Harness overhead: in one fresh process, the same compiled digits-MLP baseline is trained
    alternately by a bare `model.fit` timed from outside and by `model.fit` with regbench's
    StepTimer; overhead = wall(fit with StepTimer) / wall(bare fit) - 1, and how far the step
    time regbench reports is from the bare per-step time. Target: <= 1%.
(b) Noise floor: N baseline trials, each in a fresh process (as in a real run); the CV of their
    median step times across trials, and the mean within-trial step-time CV.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.trial import Trial

BASELINE = Trial(workload="digits_mlp", regularizers=(), precision="float32", batch_size=64, epochs=6,
                 cpu_threads=1)


def overhead_in_process(epochs: int, rounds: int) -> dict:
    """Runs inside a fresh process (see main)."""
    import time

    from bench import backends

    backends.configure_process("tensorflow", 1, gpu=False)
    import keras
    import numpy as np

    from bench.measure.timing import StepTimer
    from bench.regularizers import Recipe
    from bench.workloads import digits_mlp

    data = digits_mlp.load(0)
    n = len(data.x_train) // 64 * 64
    x, y = data.x_train[:n], data.y_train[:n]
    keras.utils.set_random_seed(0)
    model = digits_mlp.build(Recipe(), data)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)  # compile and warm up
    bare, timed, reported = [], [], []
    for _ in range(rounds):
        t = time.perf_counter()
        model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
        bare.append((time.perf_counter() - t) / (epochs * n // 64))
        timer = StepTimer()
        t = time.perf_counter()
        model.fit(x, y, batch_size=64, epochs=epochs, verbose=0, callbacks=[timer])
        timed.append((time.perf_counter() - t) / (epochs * n // 64))
        reported.append(timer.result(64)["step_time_mean_s"])
    bare_s, timed_s, rep_s = (float(np.median(v)) for v in (bare, timed, reported))
    return {"bare_step_s": bare_s, "with_harness_step_s": timed_s, "reported_step_mean_s": rep_s,
            "harness_overhead": timed_s / bare_s - 1, "reported_vs_bare": rep_s / bare_s - 1,
            "rounds": rounds, "epochs": epochs, "steps_per_epoch": n // 64}


def noise_floor(repeats: int, epochs: int) -> dict:
    import numpy as np

    p50, cv = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            trial = Trial(**{**BASELINE.to_dict(), "regularizers": (), "repeat": r, "seed": r, "epochs": epochs})
            tf_, out = Path(tmp) / f"t{r}.json", Path(tmp) / f"o{r}.json"
            tf_.write_text(json.dumps(trial.to_dict()))
            subprocess.run([sys.executable, "-m", "bench.worker", str(tf_), str(out), "--cpu"],
                           check=True, capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
            rec = json.loads(out.read_text())
            p50.append(rec["timing"]["step_time_p50_s"])
            cv.append(rec["timing"]["step_time_cv"])
    p50 = np.asarray(p50)
    return {"trials": repeats, "step_time_p50_s": p50.tolist(),
            "across_trial_cv_of_p50": float(p50.std(ddof=1) / p50.mean()) if repeats > 1 else None,
            "mean_within_trial_cv": float(np.mean(cv))}


def main(repeats: int = 5, epochs: int = 6, as_json: bool = False) -> int:
    code = ("import json,sys; from bench.selfcheck import overhead_in_process; "
            f"print(json.dumps(overhead_in_process({epochs}, 7)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    overhead = json.loads(out.stdout.strip().splitlines()[-1])
    noise = noise_floor(repeats, epochs)
    result = {"harness": overhead, "noise": noise}
    if as_json:
        print(json.dumps(result, indent=1))
        return 0
    h = overhead
    print(f"harness overhead   {h['harness_overhead'] * 100:+.2f}% of a bare model.fit "
          f"(bare {h['bare_step_s'] * 1e3:.3f} ms/step, with StepTimer {h['with_harness_step_s'] * 1e3:.3f} ms/step; "
          f"median of {h['rounds']} alternating rounds x {h['epochs']} epochs x {h['steps_per_epoch']} steps)")
    print(f"reported step time {h['reported_vs_bare'] * 100:+.2f}% vs the bare per-step time "
          f"(reported mean {h['reported_step_mean_s'] * 1e3:.3f} ms)")
    cv = noise["across_trial_cv_of_p50"]
    print(f"noise floor        step-time p50 CV across {noise['trials']} fresh-process baseline trials: "
          f"{cv * 100:.2f}%; mean within-trial CV {noise['mean_within_trial_cv'] * 100:.1f}%"
          if cv is not None else "noise floor        needs --repeats >= 2")
    return 0
