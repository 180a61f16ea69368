"""Run ONE trial in the current (fresh) process and return its trial file as a dict.

Read top to bottom: set up the process, decide whether this device should run the trial at all,
then load data, build, train under the trackers, evaluate, and assemble the record. Every failure
inside a trial (exception, OOM, NaN) becomes a record with a status and a reason; only the
executor's timeout and a killed process are recorded from outside.

Call `run_trial` only in a fresh trial process (bench/executors/trial_process.py): one that has
imported the framework at most, never run an op. The global dtype policy, XLA caches, RNG state
and allocator peaks cannot be reset in place.
"""
from __future__ import annotations

import socket
import time
import traceback

from bench import backends, env, precision
from bench.regularizers import recipe_for
from bench.trial import Trial, now_iso, result_skeleton


def node_record(executor: str, gpu: bool, cpu_threads: int | None) -> dict:
    """Where this trial runs: host, device (the GPU it was given, or the CPU), executor."""
    fp = env.fingerprint()
    gpu_info = env.trial_gpu(fp["gpus"]) if gpu else None
    return {
        "hostname": socket.gethostname(),
        "device_kind": "gpu" if gpu else "cpu",
        "device_name": gpu_info["name"] if gpu_info else fp["cpu"],
        "executor": executor,
        "fingerprint_id": fp["fingerprint_id"],
        "accelerator_type": env.accelerator_type(gpu_info["name"]) if gpu_info else None,
        "compute_capability": gpu_info["compute_capability"] if gpu_info else None,
        "gpu_uuid": gpu_info["uuid"] if gpu_info else None,
        "mig_uuid": gpu_info.get("mig_uuid") if gpu_info else None,
        "cpu_threads": cpu_threads,
        "cpu": fp["cpu"],
    }


def classify_failure(exc: BaseException) -> str:
    if isinstance(exc, backends.WrongDevice):
        return str(exc)[:500]
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    if isinstance(exc, MemoryError) or any(
            s in text for s in ("RESOURCE_EXHAUSTED", "out of memory", "OutOfMemory", "OOM")):
        return "OOM: " + text[:400]
    return text[:500]


def precheck(trial: Trial, executor: str, gpu: bool) -> dict | None:
    """A `skipped` record when this device should not run the trial (no framework import), else None."""
    return skip_record(trial, node_record(executor, gpu, trial.cpu_threads))


def skip_record(trial: Trial, node: dict) -> dict | None:
    """A `skipped` record when `node`'s device should not run the trial, else None."""
    jit = backends.jit_setting(trial.jit_compile, trial.backend, node["device_kind"])
    cc = tuple(node["compute_capability"]) if node.get("compute_capability") else None
    reason = precision.skip_reason(trial.precision, node["device_kind"], trial.backend, jit, cc,
                                   trial.allow_slow_precision)
    if reason is None:
        return None
    record = result_skeleton(trial, "skipped", reason, node)
    record.update(started_at=now_iso(), finished_at=now_iso(), wall_s=0.0)
    return record


def start_process(trial: Trial, executor: str, gpu: bool | None) -> tuple[dict, bool, dict | None]:
    """Set up this fresh trial process for `trial` (a trial, or a session's baseline trial):
    environment and threads, the device (gpu=None: a GPU if the framework sees one), the node
    record. Returns (node, gpu, skipped record or None)."""
    backends.configure_process(trial.backend, trial.cpu_threads, gpu=gpu)
    if gpu is None:
        gpu = backends.gpu_visible(trial.backend)
    node = node_record(executor, gpu, trial.cpu_threads)
    return node, gpu, skip_record(trial, node)


def run_trial(trial: Trial, executor: str = "process", gpu: bool | None = None) -> dict:
    """Measure `trial` in this process. gpu=None: use a GPU if the framework sees one."""
    started, t_wall = now_iso(), time.perf_counter()
    node, gpu, skipped = start_process(trial, executor, gpu)
    if skipped:
        return skipped
    float32_matmul = None  # the framework's own TF32 settings, read back
    try:
        float32_matmul = backends.set_float32_matmul(trial.backend, trial.float32_matmul)
        record = _measure(trial, node, gpu)
    except Exception as exc:  # noqa: BLE001 - a failure is a result
        record = result_skeleton(trial, "failed", classify_failure(exc), node)
        record["traceback"] = traceback.format_exc()[-4000:]
    if float32_matmul is not None:
        record.setdefault("process", {})["float32_matmul"] = float32_matmul
    record.update(started_at=started, finished_at=now_iso(), wall_s=time.perf_counter() - t_wall)
    return record


def load_data(trial: Trial, workload, recipe):
    """The workload's data as the recipe needs it (one-hot labels for soft-label losses), with the
    partial last training batch dropped (a smaller batch would retrace/recompile the step).
    Returns (data, x_train, y_train)."""
    data = recipe.prepare_data(workload.load(trial.seed, trial.max_train_samples, **(trial.model or {})))
    n = len(data.x_train) // trial.batch_size * trial.batch_size
    if n == 0:
        raise ValueError(f"batch_size {trial.batch_size} exceeds the {len(data.x_train)} training samples")
    return data, data.x_train[:n], data.y_train[:n]


def build_model(trial: Trial, workload, recipe, data):
    """Seed, set the trial's dtype policy, build and compile the model: the one way every timed
    model is made (trials, paired sessions and selfcheck alike)."""
    import keras

    keras.utils.set_random_seed(trial.seed)
    precision.set_policy(trial.precision)
    model = workload.build(recipe, data)
    model.compile(
        optimizer=recipe.make_optimizer(trial.learning_rate),
        loss=recipe.make_loss(),
        metrics=recipe.metrics(),
        jit_compile=backends.compile_arg(trial.jit_compile),
    )
    return model


def early_stopping_callback(recipe):
    """Keras EarlyStopping as the recipe asks (on an unpenalized metric), or None."""
    if not recipe.early_stopping:
        return None
    import keras

    es = recipe.early_stopping
    return keras.callbacks.EarlyStopping(
        monitor=es["monitor"], patience=es["patience"], min_delta=es["min_delta"],
        mode="max" if es["monitor"].endswith("accuracy") else "min",
        restore_best_weights=es["restore_best_weights"])


def _measure(trial: Trial, node: dict, gpu: bool) -> dict:
    import keras

    from bench.attention import attention_record
    from bench.inputs import input_record, trial_inputs, validation_data
    from bench.measure.compute import compute_section, node_peak_flops_per_s
    from bench.measure.convergence import curve_rows, summarize
    from bench.measure.datasheet import dense_peak_flops_per_s
    from bench.measure.energy import NvmlSampler
    from bench.measure.memory import MemoryTracker
    from bench.measure.timing import StepTimer, free_running
    from bench.workloads import for_trial

    workload = for_trial(trial)  # a user's module: re-imported here, its hash checked
    recipe = recipe_for(trial.regularizers)
    process = {"dtype_policy_at_start": keras.config.dtype_policy().name, "keras_backend": keras.config.backend()}

    # 1. data
    t = time.perf_counter()
    data, x_train, y_train = load_data(trial, workload, recipe)
    data_s = time.perf_counter() - t

    # 2. model
    t = time.perf_counter()
    model = build_model(trial, workload, recipe, data)
    build_s = time.perf_counter() - t
    node["framework_device"] = backends.model_device(trial.backend, model)
    backends.check_device(trial.backend, node["framework_device"], gpu)  # WrongDevice: a failed trial

    # 3. timed training: a tf.data pipeline or arrays, or a PyDataset that augments batch by batch
    #    on the input side (bench.inputs.trial_inputs)
    inputs, val_inputs, input_pipeline = trial_inputs(recipe, x_train, y_train, data.x_val, data.y_val,
                                                      trial.batch_size, data.kind, trial.seed, trial.cpu_threads)
    timer = StepTimer()
    early = early_stopping_callback(recipe)
    callbacks = [timer] + ([early] if early else [])
    memory, nvml = MemoryTracker(trial.backend, gpu), NvmlSampler()
    memory.start()
    nvml.start()
    history = model.fit(**inputs, epochs=trial.epochs, steps_per_epoch=trial.steps_per_epoch,
                        validation_data=validation_data(val_inputs),
                        callbacks=callbacks, verbose=0)
    nvml.stop()
    memory.stop()
    timing = timer.result(trial.batch_size)

    # 4. after training, untimed: inference-mode accuracy of the final model, loss-scale skips
    applicable = workload.ACCURACY_MEANINGFUL
    final_train = final_val = None
    if applicable:
        k = min(len(x_train), 4096)
        final_train = float(model.evaluate(x_train[:k], y_train[:k], batch_size=trial.batch_size,
                                           verbose=0, return_dict=True)["accuracy"])
        final_val = float(model.evaluate(**val_inputs, verbose=0, return_dict=True)["accuracy"])
    skipped = None
    if trial.precision == "mixed_float16":
        skipped = timer.steps_run - int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    stopped = (early.stopped_epoch + 1) if early is not None and early.stopped_epoch > 0 else None
    curve = curve_rows(history.history, timer.epoch_wall_s, timer.epoch_validation_s)
    target = trial.target_val_accuracy if trial.target_val_accuracy is not None else workload.DEFAULT_TARGET
    convergence = summarize(curve, target if applicable else None, applicable, stopped,
                            final_train, final_val, skipped)

    # 5. the free-running window (one more epoch, one sync per window): after everything else that
    #    trains, since it trains the model further; the training pipeline's next epoch (reshuffled)
    free = free_running(model, inputs, trial.backend, trial.batch_size, trial.steps_per_epoch)

    # 5b. the input side alone (no step): what producing one batch costs the host, against the step
    feed, feed_reasons = input_record(inputs, x_train, y_train, trial.batch_size, trial.backend,
                                      timing["step_time_p50_s"])

    # 6. compute: analytic FLOPs vs this node's measured matmul peak at this precision, and vs the
    #    board's datasheet dense peak
    dtype = precision.COMPUTE_DTYPE[trial.precision]
    f32_matmul = trial.float32_matmul if dtype == "float32" else None
    peak, peak_note = node_peak_flops_per_s(trial.backend, dtype, gpu, node.get("gpu_uuid") or node["cpu"], f32_matmul)
    sheet = dense_peak_flops_per_s(node["device_name"] if gpu else None, dtype, f32_matmul, bool(node.get("mig_uuid")))
    compute = compute_section(model, timing["samples_per_s"], peak, peak_note, sheet)

    # 7. the record
    mem = memory.result()
    nv_mem = nvml.memory_result()
    mem.update({k: v for k, v in nv_mem.items() if k != "null_reasons"})
    mem["null_reasons"].update(nv_mem["null_reasons"])
    samples_seen = timer.steps_run * trial.batch_size
    status, reason = "ok", None
    if timer.nonfinite:
        status, reason = "diverged", timer.nonfinite
    elif timing["samples_per_s"] is None:
        status, reason = "failed", (f"no steady-state steps ({timer.steps_run} steps run): "
                                    "raise epochs or steps_per_epoch")
    record = result_skeleton(trial, status, reason, node)
    timing_reasons = free.pop("null_reasons")
    attention = attention_record(model, trial.backend)
    timing_reasons.update(attention.pop("null_reasons"))
    record["timing"] = {"data_s": data_s, "build_s": build_s, **timing, **free, "input_pipeline": input_pipeline,
                        **feed, **backends.jit_record(model, trial.jit_compile), **attention,
                        **backends.host_sync_record(trial.backend, model)}
    timing_reasons.update(feed_reasons)
    if timing_reasons:
        record["timing"]["null_reasons"] = {**record["timing"].get("null_reasons", {}), **timing_reasons}
    record["memory"] = mem
    record["energy"] = nvml.energy_result(samples_seen, timer.steady_spans(),
                                          timing["steady_state_steps"] * trial.batch_size)
    record["compute"] = compute
    record["convergence"] = convergence
    record["process"] = {**process, "first_step_unix": timer.first_step_unix}
    if hasattr(workload, "record"):  # a user's workload: its source, what was inferred, where regularizers went
        record["workload"] = workload.record()
        record["model"] = {"regularizer_placements": record["workload"]["placements"] or [],
                           "workload_kind_inferred": bool(record["workload"]["inferred"])}
    return record
