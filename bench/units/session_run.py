"""Running a paired session (bench/units/session.py) in its fresh process: `run_session`, read top
to bottom:

1. builds every model of the cell with the runner's own code (same data, same compile, same
   input pipeline, same StepTimer), in a seeded random order, plus two more instances of the
   baseline model (the second is the A/A control: its ratio to the first is the noise floor the
   session measured);
2. warms each model up with one block (trace/compile) and sizes the blocks from the baseline's
   step time: at least `block_min_steps` steps and `block_min_s` seconds of steps;
3. runs `rounds` rounds; each round times one block of every model in a seeded random order
   (recorded), a block being one `fit` epoch over the same tiled training batches;
4. records each block's median step time (the first batch of a block, which waits for the
   iterator, is excluded, exactly as in a trial's steady-state window), and each model's
   attention path (`attention`: label -> bench.attention.attention_record).

The record's per-session estimates use the session's ratio rule (session.py `round_log_ratios`).
"""
from __future__ import annotations

import math
import time
import traceback

import numpy as np

from bench import backends, runner
from bench.regularizers import Recipe, recipe_for, setting_label
from bench.runner import build_model, classify_failure, load_data, start_process
from bench.trial import now_iso
from bench.units.session import AA_LABEL, THIRD_LABEL, Session, round_log_ratios


def precheck(session: Session, executor: str, gpu: bool) -> dict | None:
    """A `skipped` record when this device should not run the session's precision (its baseline
    trial's decision), else None."""
    skipped = runner.precheck(session.base, executor, gpu)
    if skipped is None:
        return None
    record = session.skeleton("skipped", skipped["reason"], skipped["node"])
    record.update(started_at=now_iso(), finished_at=now_iso(), wall_s=0.0)
    return record


def run_session(session: Session, executor: str = "process", gpu: bool | None = None) -> dict:
    """Time `session` in this fresh process and return its record."""
    started, t_wall = now_iso(), time.perf_counter()
    node, gpu, skipped = start_process(session.base, executor, gpu)
    if skipped:
        record = session.skeleton(skipped["status"], skipped["reason"], node)
    else:
        try:
            float32_matmul = backends.set_float32_matmul(session.backend, session.base.float32_matmul)
            record = _time_blocks(session, node, gpu)
            record["process"]["float32_matmul"] = float32_matmul  # the framework's settings, read back
        except Exception as exc:  # noqa: BLE001 - a failure is a result
            record = session.skeleton("failed", classify_failure(exc), node)
            record["traceback"] = traceback.format_exc()[-4000:]
    record.update(started_at=started, finished_at=now_iso(), wall_s=time.perf_counter() - t_wall)
    return record


def _tile(x, rows: int):
    reps = -(-rows // len(x))
    return np.concatenate([x] * reps)[:rows] if reps > 1 else x[:rows]


def _time_blocks(session: Session, node: dict, gpu: bool) -> dict:
    import keras

    from bench.attention import attention_record
    from bench.inputs import block_inputs
    from bench.measure.timing import StepTimer
    from bench.workloads import for_trial

    base = session.base
    workload = for_trial(base)
    policy_at_start = keras.config.dtype_policy().name

    # 1. one dataset, every model built the runner's way (plus two more baseline instances: the A/A twin, the 3rd)
    t = time.perf_counter()
    data, x_train, _ = load_data(base, workload, Recipe())
    labels = [AA_LABEL, setting_label(()), THIRD_LABEL, *session.labels]
    settings = dict(zip(labels, [(), (), (), *session.settings]))
    rng = np.random.default_rng([base.seed, base.repeat, 7919])
    build_order = [labels[i] for i in rng.permutation(len(labels))]  # no model is always built first
    models, recipes, labels_y = {}, {}, {}
    for label in build_order:
        recipes[label] = recipe_for(settings[label])
        prepared = recipes[label].prepare_data(data)  # one-hot labels where the loss wants soft labels
        labels_y[label] = prepared.y_train[:len(x_train)]
        models[label] = build_model(session.trial_for(settings[label]), workload, recipes[label], prepared)
    build_s = time.perf_counter() - t
    node["framework_device"] = backends.model_device(base.backend, models[AA_LABEL])
    backends.check_device(base.backend, node["framework_device"], gpu)

    tiled: dict = {}

    def tile_to(steps: int) -> None:
        """Each model's fit data: the training set repeated to `steps` batches (bench.inputs.block_inputs)."""
        rows = steps * base.batch_size
        x = _tile(x_train, rows)
        tiled.update({k: block_inputs(recipes[k], x, _tile(v, rows), base.batch_size, data.kind, base.seed,
                                      base.cpu_threads) for k, v in labels_y.items()})

    def block(label: str) -> tuple[np.ndarray, float]:
        """One block: a fit epoch over the tiled training set; returns its step intervals and wall time."""
        timer = StepTimer()
        t0 = time.perf_counter()
        models[label].fit(**tiled[label], epochs=1, verbose=0, callbacks=[timer])
        wall = time.perf_counter() - t0
        if timer.nonfinite:
            raise FloatingPointError(f"{label}: {timer.nonfinite}")
        return np.asarray([dt for _, _, dt in timer.steps], dtype=float), wall

    # 2. warm up (trace/compile) and size the blocks from the baseline's step time
    t = time.perf_counter()
    tile_to(session.block_min_steps)
    warmup = {label: float(np.median(block(label)[0])) for label in labels}
    base_step_s = float(np.median(block(setting_label(()))[0]))
    steps = max(session.block_min_steps, math.ceil(session.block_min_s / max(base_step_s, 1e-9)) + 1)
    tile_to(steps)
    warmup_s = time.perf_counter() - t

    # 3. rounds of blocks in a seeded random order
    order, step_time_s, block_wall_s, measured_s = [], {k: [] for k in labels}, {k: [] for k in labels}, 0.0
    t = time.perf_counter()
    for _ in range(session.rounds):
        this_round = [labels[i] for i in rng.permutation(len(labels))]
        order.append(this_round)
        for label in this_round:
            dts, wall = block(label)
            step_time_s[label].append(float(np.median(dts)))
            block_wall_s[label].append(wall)
            measured_s += float(dts.sum())
    rounds_s = time.perf_counter() - t

    # 4. the record: raw block medians (the estimate is recomputed by analysis), per-session summaries
    base_blocks = np.asarray(step_time_s[setting_label(())])
    record = session.skeleton("ok", None, node)
    record["blocks"] = {"steps": steps, "build_order": build_order, "order": order, "step_time_s": step_time_s,
                        "wall_s": block_wall_s, "warmup_step_time_s": warmup}
    record["estimates"] = {label: {"log_ratio_median": float(np.median(L)), "ratio": float(np.exp(np.median(L))),
                                   "rounds": int(len(L))} for label, L in round_log_ratios(record).items()}
    record["timing"] = {"data_and_build_s": build_s, "warmup_s": warmup_s, "rounds_s": rounds_s,
                        "measured_s": measured_s, "baseline_step_time_s": float(np.median(base_blocks))}
    record["timing"].update(backends.host_sync_record(base.backend, models[AA_LABEL]))  # same optimizer for all
    record["attention"] = {k: attention_record(m, base.backend) for k, m in models.items()}
    record["process"] = {"dtype_policy_at_start": policy_at_start, "keras_backend": keras.config.backend(),
                         "jit_compile": {k: bool(m.jit_compile) for k, m in models.items()}}
    return record
