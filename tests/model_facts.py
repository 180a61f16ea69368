"""What a built regbench model really contains, read back from Keras: the facts tests/test_models.py
checks on every backend.

`facts(workload, regularizers, precision)` builds the model the runner's way
(bench.runner.build_model: seed, dtype policy, workload.build, compile) on data with the
workload's shapes (tiny sizes, no dataset files) and returns plain JSON: every kernel's penalty
coefficients as its variable carries them, the penalty the model adds to the loss, the layer graph
(which layer feeds which), dropout rates, augmentation behaviour in training and inference, compute
and variable dtypes, the optimizer compile() chose, and optionally one training step's loss and
unpenalized cross-entropy on a fixed batch.

    python -m tests.model_facts PLAN_JSON     (KERAS_BACKEND set by the caller)

prints one JSON line of facts per case of the plan (a list of [workload, regularizers, precision,
fit]); tests/test_models.py runs it on JAX and torch and checks the same facts as on TensorFlow.
"""
from __future__ import annotations

import json
import sys

import numpy as np

# Tiny sizes of the workloads whose sizes are options; the others get random inputs of their shape.
TINY_MODELS = {"transformer_encoder": {"layers": 2, "width": 16, "heads": 2, "seq_len": 8, "vocab": 16, "classes": 4},
               "resnet50": {"image_size": 32, "classes": 10, "depth": 14, "width": 4}}
INPUT_SHAPES = {"digits_mlp": (64,), "fashion_mnist_cnn": (28, 28, 1), "cifar10_resnet20": (32, 32, 3),
                "synthetic_cnn": (32, 32, 3)}


def data_for(name: str, n: int = 16):
    """Data with the workload's shapes (no dataset files needed)."""
    from bench.workloads import WORKLOADS
    from bench.workloads.common import Data

    if name in TINY_MODELS:
        return WORKLOADS[name].load(0, n, **TINY_MODELS[name])
    x = np.random.default_rng(0).random((n, *INPUT_SHAPES[name])).astype("float32")
    y = np.arange(n, dtype="int32") % 10
    return Data(x, y, x, y, num_classes=10, kind=WORKLOADS[name].KIND)


def _np(x) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float64")


def _producers(layer) -> list[str]:
    names = []
    for node in layer._inbound_nodes[:1]:
        for t in node.input_tensors:
            history = getattr(t, "_keras_history", None)
            if history is not None:
                names.append(history.operation.name)
    return names


def facts(workload: str, regularizers, precision: str, fit: bool = False, seed: int = 0) -> dict:
    """The facts of one built model (see the module docstring). The global dtype policy is put back
    to float32 afterwards."""
    import keras

    from bench.regularizers import recipe_for, setting_label
    from bench.runner import build_model, early_stopping_callback
    from bench.trial import Trial
    from bench.workloads import WORKLOADS

    regs = tuple((n, dict(p)) for n, p in regularizers)
    recipe = recipe_for(regs)
    trial = Trial(workload=workload, regularizers=regs, precision=precision, batch_size=16, seed=seed,
                  model=TINY_MODELS.get(workload))
    data = recipe.prepare_data(data_for(workload))
    try:
        model = build_model(trial, WORKLOADS[workload], recipe, data)
        out = {"workload": workload, "setting": setting_label(regs), "precision": precision,
               "backend": keras.config.backend(), "policy": keras.config.dtype_policy().name}
        out["kernels"] = {}
        layers = list(model._flatten_layers(include_self=False, recursive=True))
        for layer in layers:
            kernel = getattr(layer, "kernel", None) if not isinstance(layer, keras.layers.Embedding) else None
            if kernel is None or not hasattr(kernel, "regularizer"):
                continue
            reg, w = kernel.regularizer, _np(kernel)
            out["kernels"][kernel.path] = {
                "class": type(layer).__name__, "dtype": str(kernel.dtype),
                "regularizer": type(reg).__name__ if reg is not None else None,
                "l1": float(getattr(reg, "l1", 0.0)) if reg is not None else None,
                "l2": float(getattr(reg, "l2", 0.0)) if reg is not None else None,
                "abs": float(np.abs(w).sum()), "sq": float((w ** 2).sum())}
        out["penalty"] = float(sum(float(_np(x)) for x in model.losses))
        out["layers"] = [[type(la).__name__, la.name, _producers(la)] for la in model.layers]
        out["dropout"] = {la.name: float(la.rate) for la in model.layers if isinstance(la, keras.layers.Dropout)}
        out["attention_dropout"] = {la.name: float(la.dropout) for la in layers
                                    if isinstance(la, keras.layers.MultiHeadAttention)}
        out["compute_dtypes"] = {la.name: la.compute_dtype for la in layers if not isinstance(la, keras.layers.InputLayer)}
        out["variable_dtypes"] = {v.path: str(v.dtype) for v in model.weights}
        out["layer_variable_dtypes"] = {la.name: la.variable_dtype for la in layers if la.weights}
        out["logits_dtype"] = str(model.get_layer("logits").output.dtype)
        out["output_dtype"] = str(model.output.dtype)
        opt = model.optimizer
        out["optimizer"] = type(opt).__name__
        out["inner_optimizer"] = type(opt.inner_optimizer).__name__ if hasattr(opt, "inner_optimizer") else None
        early = early_stopping_callback(recipe)
        out["early_stopping"] = None if early is None else {
            "monitor": early.monitor, "mode": early.mode, "patience": early.patience,
            "restore_best_weights": early.restore_best_weights}
        x = data.x_train[:8]
        out["augmentation"] = {}
        for la in model.layers:
            if la.name.startswith("aug_"):
                inference, training = _np(la(x, training=False)), _np(la(x, training=True))
                config = la.get_config()
                out["augmentation"][la.name] = {
                    "class": type(la).__name__,
                    "config": {k: config[k] for k in ("stddev", "mode", "height_factor", "width_factor", "fill_mode")
                               if k in config},
                    "inference_max_change": float(np.abs(inference - x).max()),
                    "training_max_change": float(np.abs(training - x).max())}
        if fit:
            h = model.fit(data.x_train, data.y_train, batch_size=len(data.x_train), epochs=1, shuffle=False,
                          verbose=0).history
            out["fit"] = {"loss": float(h["loss"][0]), "xent_loss": float(h["xent_loss"][0])}
        return out
    finally:
        keras.config.set_dtype_policy("float32")


def main(argv: list[str]) -> int:
    for workload, regs, precision, fit in json.loads(argv[0]):
        print(json.dumps(facts(workload, [tuple(r) for r in regs], precision, fit)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
