"""Paired step-time sessions: the baseline and every regularized model of one cell, timed in short
alternating blocks inside ONE fresh process.

Why: on a shared machine fresh processes differ by 7-19% CV in step time, so a ratio of two
separate trials carries that whole between-process spread. Inside one process the baseline and
the regularized model run under the same conditions, block after block, so their ratio does not.
Memory, energy, convergence and end-to-end figures still come from isolated trials (runner.py);
a session measures one thing: each setting's steady-state step time relative to the baseline.

A session (one fresh process; `run_session`, read top to bottom):
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

The ratio of a setting is formed per round: its block against the median of the three baseline
models' blocks of that round. Each model instance has its own speed, a few percent either way on
a shared VM and now and then 14-22% off (two back-to-back runs: 3 of 30 sessions had an A/A
ratio beyond 5%), and every ratio of the session shares the reference: the median of three
instances drops one such instance, where the mean of two moved every ratio of its session by
half of it. The session's estimate is the median over rounds, which resists blocks hit by a
burst of steal time (`round_log_ratios`, shared with the estimates). Across sessions (each one a new
set of instances), bench/session_estimates.py combines the session estimates; the A/A ratio
(second baseline over first) is the noise floor.

A setting whose training step is the baseline's (early stopping only acts at epoch ends: its cost
is the validation pass) is not timed again: its step-time figure is the A/A control, and its
real cost shows in the end-to-end throughput of the isolated trials.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import traceback

import numpy as np

from bench import SCHEMA_VERSION, backends
from bench.regularizers import Recipe, recipe_for, setting_label
from bench.trial import Trial, canonical_json, now_iso

AA_LABEL = "none (A/A)"  # the second baseline model: its ratio to the baseline is the noise floor
THIRD_LABEL = "none (3rd)"  # the third baseline model: with the other two, the reference of every ratio


@dataclasses.dataclass(frozen=True)
class Session:
    """One paired session: the cell's baseline `base` and the regularizer `settings` timed against it."""

    base: Trial  # the cell's baseline trial (regularizers=()); its repeat is the session index
    settings: tuple  # regularizer settings timed, each a tuple of (name, params); () is not listed
    same_step: tuple = ()  # settings whose training step is the baseline's: not timed (see the A/A)
    rounds: int = 12
    block_min_steps: int = 50
    block_min_s: float = 0.15

    kind = "session"

    @property
    def backend(self) -> str:
        return self.base.backend

    @property
    def cpu_threads(self) -> int | None:
        return self.base.cpu_threads

    @property
    def timeout_s(self) -> float:
        return self.base.timeout_s

    @property
    def device(self) -> str | None:
        """The device kind the session's cell runs on ("gpu" | "cpu"; None: the suite's)."""
        return self.base.device

    @property
    def labels(self) -> list[str]:
        return [setting_label(s) for s in self.settings]

    def trial_for(self, setting: tuple) -> Trial:
        """The isolated trial this setting's block times (same cell id as the suite's trials)."""
        return dataclasses.replace(self.base, regularizers=setting)

    @property
    def group_id(self) -> str:
        """Id shared by every session of this cell group (all its repeats)."""
        return hashlib.sha256(canonical_json(self._identity(False)).encode()).hexdigest()[:10]

    @property
    def unit_id(self) -> str:
        b = self.base
        slug = f"paired-{b.workload}-{b.precision}-b{b.batch_size}-{b.backend[:2]}-s{b.repeat}"
        return f"{slug}-{hashlib.sha256(canonical_json(self._identity(True)).encode()).hexdigest()[:10]}"

    session_id = unit_id

    def _identity(self, with_repeat: bool) -> dict:
        d = self.to_dict()
        d["base"] = self.base._identity(with_repeat)
        return d

    def to_dict(self) -> dict:
        listed = lambda ss: [[{"name": n, "params": dict(p)} for n, p in s] for s in ss]  # noqa: E731
        return {"base": self.base.to_dict(), "settings": listed(self.settings), "same_step": listed(self.same_step),
                "rounds": self.rounds, "block_min_steps": self.block_min_steps, "block_min_s": self.block_min_s}

    @classmethod
    def from_dict(cls, d: dict) -> "Session":
        parse = lambda ss: tuple(tuple((r["name"], dict(sorted(r.get("params", {}).items()))) for r in s)  # noqa: E731
                                 for s in ss)
        return cls(base=Trial.from_dict(d["base"]), settings=parse(d["settings"]), same_step=parse(d.get("same_step", [])),
                   rounds=d["rounds"], block_min_steps=d["block_min_steps"], block_min_s=d["block_min_s"])

    def __hash__(self) -> int:
        return hash(self.unit_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Session) and self.unit_id == other.unit_id


def session_skeleton(session: Session, status: str, reason: str | None, node: dict) -> dict:
    b = session.base
    return {
        "schema_version": SCHEMA_VERSION, "kind": "paired_session", "session_id": session.unit_id,
        "status": status, "reason": reason,
        "session": {**session.to_dict(), "group_id": session.group_id, "workload": b.workload,
                    "precision": b.precision, "batch_size": b.batch_size, "backend": b.backend,
                    "float32_matmul": b.float32_matmul,
                    "repeat": b.repeat, "seed": b.seed, "labels": [AA_LABEL, THIRD_LABEL, *session.labels],
                    "cell_ids": {AA_LABEL: b.cell_id, THIRD_LABEL: b.cell_id, **{setting_label(s): session.trial_for(s).cell_id
                                                         for s in session.settings + session.same_step}},
                    "same_step_as_baseline": [setting_label(s) for s in session.same_step]},
        "node": node,
    }


def precheck(session: Session, executor: str, gpu: bool) -> dict | None:
    """A `skipped` record when this device should not run the session's precision, else None."""
    from bench.runner import node_record, skip_record

    node = node_record(executor, gpu, session.cpu_threads)
    skipped = skip_record(session.base, node)
    if skipped is None:
        return None
    record = session_skeleton(session, "skipped", skipped["reason"], node)
    record.update(started_at=now_iso(), finished_at=now_iso(), wall_s=0.0)
    return record


def run_session(session: Session, executor: str = "process", gpu: bool | None = None) -> dict:
    """Time `session` in this fresh process and return its record."""
    from bench.runner import classify_failure, start_process

    started, t_wall = now_iso(), time.perf_counter()
    node, gpu, skipped = start_process(session.base, executor, gpu)
    if skipped:
        record = session_skeleton(session, skipped["status"], skipped["reason"], node)
    else:
        try:
            float32_matmul = backends.set_float32_matmul(session.backend, session.base.float32_matmul)
            record = _time_blocks(session, node, gpu)
            record["process"]["float32_matmul"] = float32_matmul  # the framework's settings, read back
        except Exception as exc:  # noqa: BLE001 - a failure is a result
            record = session_skeleton(session, "failed", classify_failure(exc), node)
            record["traceback"] = traceback.format_exc()[-4000:]
    record.update(started_at=started, finished_at=now_iso(), wall_s=time.perf_counter() - t_wall)
    return record


def round_log_ratios(record: dict) -> dict[str, np.ndarray]:
    """label -> per-round log ratios of a session record's blocks (`blocks.step_time_s`): each
    setting's block against the round's reference, the median of the three baseline models'
    blocks (the geometric mean of two in sessions recorded before the third); for the A/A label,
    the second baseline over the first."""
    step_time_s = {k: np.asarray(v, dtype=float) for k, v in record["blocks"]["step_time_s"].items()}
    first, second = np.log(step_time_s[setting_label(())]), np.log(step_time_s[AA_LABEL])
    baselines = (setting_label(()), AA_LABEL, THIRD_LABEL)
    if THIRD_LABEL in step_time_s:
        ref = np.median([first, second, np.log(step_time_s[THIRD_LABEL])], axis=0)
    else:
        ref = (first + second) / 2
    out = {AA_LABEL: second - first}
    for label, blocks in step_time_s.items():
        if label not in baselines:
            out[label] = np.log(blocks) - ref
    return out


def _tile(x, rows: int):
    reps = -(-rows // len(x))
    return np.concatenate([x] * reps)[:rows] if reps > 1 else x[:rows]


def _time_blocks(session: Session, node: dict, gpu: bool) -> dict:
    import keras

    from bench.attention import attention_record
    from bench.inputs import block_inputs
    from bench.measure.timing import StepTimer
    from bench.runner import build_model, load_data
    from bench.workloads import WORKLOADS

    base = session.base
    workload = WORKLOADS[base.workload]
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
    record = session_skeleton(session, "ok", None, node)
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


def plan_sessions(trials, spec: dict) -> list[Session]:
    """The sessions of a suite: one per cell group (trials that differ only in their regularizer
    setting, repeat and seed) and session index, every setting of the group timed against its
    baseline. Groups without a baseline setting get no session."""
    groups: dict = {}
    for t in trials:
        key = json.dumps(dataclasses.replace(t, regularizers=(), repeat=0, seed=0).to_dict(), sort_keys=True)
        groups.setdefault(key, []).append(t)
    sessions = []
    for members in groups.values():
        by_label = {setting_label(t.regularizers): t.regularizers for t in members}
        settings = list(by_label.values())
        if () not in settings or len(settings) < 2:
            continue
        first = members[0]
        suite_seed = first.seed - first.repeat  # trials use suite seed + repeat; sessions + 1000 + index
        same = tuple(s for s in settings if s != () and recipe_for(s).training_step() == Recipe())
        timed = tuple(s for s in settings if s != () and s not in same)
        for i in range(spec["sessions"]):
            base = dataclasses.replace(first, regularizers=(), repeat=i, seed=suite_seed + 1000 + i)
            sessions.append(Session(base=base, settings=timed, same_step=same, rounds=spec["rounds"],
                                    block_min_steps=spec["block_min_steps"], block_min_s=spec["block_min_s"]))
    return sessions
