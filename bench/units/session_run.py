"""Running a paired session (bench/units/session.py) in its fresh process: `run_session`, read top
to bottom:

1. builds every model of the cell with the runner's own code (same data, same compile, same
   input pipeline, same StepTimer), in a seeded random order, plus two more instances of the
   baseline model (the second is the A/A control: its ratio to the first is the noise floor the
   session measured);
2. warms each model up with one short block (trace/compile: `WARMUP_STEPS`, two steps for the
   models left once the budget would be spent) and sizes the blocks from the baseline's step
   time: at least `block_min_steps` steps and `block_min_s` seconds of steps;
   with a time budget (`Session.budget_s`, counted from the start of step 1), `fit_rounds` shortens
   the blocks (to `MIN_BLOCK_STEPS` at least), then the rounds (to one at least), so that the rounds
   fit the time left, from each model's warm-up step time;
3. runs the rounds; each round times one block of every model in a seeded random order
   (recorded), a block being one `fit` epoch over the same tiled training batches; a round that
   would end past the budget (the last one's wall time from now) is not started;
4. records each block's median step time (the first batch of a block, which waits for the
   iterator, is excluded, exactly as in a trial's steady-state window), each model's
   attention path (`attention`: label -> bench.attention.attention_record), and `budget`: the
   budget, the rounds and block steps planned and run, and why they differ (null: they do not).

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
from bench.units.session import AA_LABEL, MIN_BLOCK_STEPS, THIRD_LABEL, WARMUP_STEPS, Session, round_log_ratios


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


def fit_rounds(rounds: int, steps: int, round_step_s: float, left_s: float | None,
               min_steps: int = MIN_BLOCK_STEPS, round_fixed_s: float = 0.0) -> tuple[int, int, str | None]:
    """(rounds, steps per block, why they are fewer) for rounds of blocks that fit `left_s` seconds
    (None: no budget), a round taking `round_step_s` a step (the models' step times summed) plus
    `round_fixed_s` (its blocks' fit overhead). Blocks are shortened first (to `min_steps`, never
    below what was planned), then rounds (to one: a session always times a round)."""
    need_s = rounds * (steps * round_step_s + round_fixed_s)
    if left_s is None or need_s <= left_s:
        return rounds, steps, None
    why = (f"{rounds} round(s) of {steps}-step blocks need ~{need_s:.0f} s; {max(left_s, 0):.0f} s of the "
           "session budget were left after build and warm-up")
    fit_steps = math.floor((left_s / rounds - round_fixed_s) / round_step_s + 1e-9) if left_s > 0 else 0
    if fit_steps >= min(min_steps, steps):
        return rounds, fit_steps, why
    steps = min(min_steps, steps)
    return max(1, math.floor(left_s / (steps * round_step_s + round_fixed_s) + 1e-9) if left_s > 0 else 1), steps, why


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
    t_start = time.perf_counter()  # the budget counts from here: data, build, warm-up and rounds
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
    deadline = None if session.budget_s is None else t_start + session.budget_s
    warm_steps = min(session.block_min_steps, WARMUP_STEPS)
    tile_to(warm_steps)
    warmup: dict = {}
    for label in [*labels, None]:  # None: the baseline's second block, which sizes the blocks
        left_blocks_s = (len(labels) + 1 - len(warmup)) * warm_steps * max(warmup.values(), default=0.0)
        if deadline is not None and warm_steps > 2 and time.perf_counter() + left_blocks_s > deadline:
            warm_steps = 2  # past the budget: the rest warm up with the shortest block that has a step interval
            tile_to(warm_steps)
        if label is None:  # compiled by now: its wall time less its steps is a block's fit overhead
            dts, wall = block(setting_label(()))
            base_step_s = float(np.median(dts))
            block_fixed_s = max(0.0, wall - warm_steps * base_step_s)
        else:
            warmup[label] = float(np.median(block(label)[0]))
    planned_steps = max(session.block_min_steps, math.ceil(session.block_min_s / max(base_step_s, 1e-9)) + 1)
    round_step_s = sum(warmup.values()) - warmup[setting_label(())] + base_step_s
    left_s = None if deadline is None else deadline - time.perf_counter()
    rounds, steps, why = fit_rounds(session.rounds, planned_steps, round_step_s, left_s,
                                    round_fixed_s=len(labels) * block_fixed_s)
    tile_to(steps)
    warmup_s = time.perf_counter() - t

    # 3. rounds of blocks in a seeded random order, none started that would end past the budget
    order, step_time_s, block_wall_s, measured_s = [], {k: [] for k in labels}, {k: [] for k in labels}, 0.0
    t = time.perf_counter()
    for done in range(rounds):
        round_s = (time.perf_counter() - t) / done if done else 0.0
        if done and deadline is not None and time.perf_counter() + round_s > deadline:
            why = (f"{why}; " if why else "") + f"stopped after {done} of {rounds} rounds: the session budget was spent"
            break
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
                        "wall_s": block_wall_s, "warmup_step_time_s": warmup, "warmup_steps": warm_steps}
    record["estimates"] = {label: {"log_ratio_median": float(np.median(L)), "ratio": float(np.exp(np.median(L))),
                                   "rounds": int(len(L))} for label, L in round_log_ratios(record).items()}
    record["budget"] = {"session_budget_s": session.budget_s, "reason": why,
                        "planned": {"rounds": session.rounds, "block_steps": planned_steps},
                        "run": {"rounds": len(order), "block_steps": steps}}
    record["timing"] = {"data_and_build_s": build_s, "warmup_s": warmup_s, "rounds_s": rounds_s,
                        "measured_s": measured_s, "baseline_step_time_s": float(np.median(base_blocks))}
    record["timing"].update(backends.host_sync_record(base.backend, models[AA_LABEL]))  # same optimizer for all
    record["attention"] = {k: attention_record(m, base.backend) for k, m in models.items()}
    record["process"] = {"dtype_policy_at_start": policy_at_start, "keras_backend": keras.config.backend(),
                         "jit_compile": {k: bool(m.jit_compile) for k, m in models.items()}}
    return record
