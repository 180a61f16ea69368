"""Every JAX cell of the gpu suite compiles: no layer switches XLA off (in-model augmentation is the
jit-safe RandomShiftFlip; Keras' RandomTranslation is the separately named `where: model_keras`),
and RandomShiftFlip does what pipeline augmentation does. The models are built the runner's way
in a JAX process (one per distinct workload x setting: the precision changes no layer's jit
support), on the CPU."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PROBE = r"""
import json
import numpy as np
import keras
from bench import backends, suite
from bench.regularizers import recipe_for
from bench.measure.compute import forward_flops_per_sample
from bench.runner import build_model
from bench.workloads import WORKLOADS
from bench.workloads.common import random_shift_flip_layer

out, loaded = {"cells": {}, "built": {}}, {}
for t in suite.load("gpu", backend="jax").trials:
    key = f"{t.workload}|{t.setting}"
    if key not in out["built"]:
        w, recipe = WORKLOADS[t.workload], recipe_for(t.regularizers)
        if t.workload not in loaded:  # the suite's model options; 1 training row (only shapes matter)
            loaded[t.workload] = w.load(t.seed, 1, **(t.model or {}))
        model = build_model(t, w, recipe, recipe.prepare_data(loaded[t.workload]))
        out["built"][key] = {**backends.jit_record(model, t.jit_compile), "layers": sorted({type(l).__name__ for l in model._flatten_layers()})}
        if not t.regularizers:
            out.setdefault("sizes", {})[t.workload] = {
                "train_flops_per_sample": 3 * forward_flops_per_sample(model), "batch_size": t.batch_size,
                "steps_per_epoch": t.max_train_samples // t.batch_size}
    out["cells"][t.trial_id] = key

# RandomShiftFlip is pipeline_augment's transform: each output image is the input flipped or not,
# then shifted by at most the factor, the border reflected.
# The jit-safe layer really traces and runs inside the compiled train step (a small CNN, 2 steps).
import dataclasses
t = next(t for t in suite.load("gpu", backend="jax").trials if t.setting == "augmentation" and t.workload == "synthetic_cnn")
t = dataclasses.replace(t, model={"width": 4}, precision="mixed_bfloat16")
w, recipe = WORKLOADS[t.workload], recipe_for(t.regularizers)
data = w.load(0, 64, width=4)
model = build_model(t, w, recipe, data)
history = model.fit(data.x_train, data.y_train, batch_size=32, epochs=1, verbose=0)
out["trained"] = {"jit_compile": bool(model.jit_compile), "loss": history.history["loss"][-1]}

keras.config.set_dtype_policy("float32")  # build_model left the last cell's policy set
layer = random_shift_flip_layer()(0.25, seed=3)
x = np.random.default_rng(0).random((16, 8, 8, 3)).astype("float32")
y = keras.ops.convert_to_numpy(layer(x, training=True))
def candidates(img):
    for flip in (False, True):
        xi = img[:, ::-1] if flip else img
        padded = np.pad(xi, ((2, 2), (2, 2), (0, 0)), mode="reflect")
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                yield padded[2 - dy: 10 - dy, 2 - dx: 10 - dx]
out["transform_matches"] = [any(np.array_equal(c, y[i]) for c in candidates(x[i])) for i in range(len(x))]
out["distinct_transforms"] = len({y[i].tobytes() for i in range(len(x))})
out["inference_identity"] = bool(np.array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def probe():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_jax_cell_of_the_gpu_suite_compiles(probe):
    assert len(probe["cells"]) > 50  # the whole suite, every precision
    not_compiled = {key: r for key, r in probe["built"].items() if not r["jit_compile"] or r["jit_disabled_by"]}
    assert not_compiled == {}
    aug = [r for key, r in probe["built"].items() if key.endswith("|augmentation")]
    assert aug and all("RandomShiftFlip" in r["layers"] and "RandomTranslation" not in r["layers"] for r in aug)
    assert probe["trained"]["jit_compile"] is True and probe["trained"]["loss"] > 0  # traced and ran under XLA


def test_gpu_suite_is_sized_for_the_gpu(probe):
    """Each steady epoch lasts seconds at an H200's achievable bf16 rate (NVML's power and utilization
    need spans over 1 s), and a step is GPU work rather than Keras host work; FLOPs from the suite's
    own models (gpu.yaml states the same estimates)."""
    bf16_flop_s = 350e12  # ~35% of an H200's dense bf16 peak: the fast end, so the shortest windows
    images_per_s = {"resnet50": 3500.0}  # ResNet-50 reaches far less of the peak; the fast end of H100/H200
    host_step_s = 0.002  # Keras' host work per step, generous
    sizes = probe["sizes"]
    assert set(sizes) == {"transformer_encoder", "resnet50", "synthetic_cnn"}
    for workload, s in sizes.items():
        step_s = (s["batch_size"] / images_per_s[workload] if workload in images_per_s
                  else s["train_flops_per_sample"] * s["batch_size"] / bf16_flop_s)
        assert s["steps_per_epoch"] * step_s >= 2.0, (workload, s, step_s)
        assert step_s >= 5 * host_step_s, (workload, s, step_s)


def test_random_shift_flip_is_the_pipeline_transform(probe):
    assert all(probe["transform_matches"]) and probe["distinct_transforms"] > 4
    assert probe["inference_identity"]


def test_keras_layers_variant_is_kept_and_named():
    from bench import suite
    from bench.regularizers import recipe_for, setting_label

    s = suite.parse({"name": "t", "workloads": ["synthetic_cnn"], "precisions": ["float32"], "batch_sizes": [8],
                     "regularizers": ["augmentation", {"augmentation": {"where": "model_keras"}}]}, "t.yaml")
    labels = sorted({t.setting for t in s.trials})
    assert labels == ["augmentation", "augmentation(where=model_keras)"]
    assert recipe_for([("augmentation", {"where": "model_keras", "strength": 0.1})]).augmentation == "model_keras"
    assert setting_label([("augmentation", {"where": "model", "strength": 0.1})]) == "augmentation"
