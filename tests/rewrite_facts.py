"""What bench.workloads.rewrite made of recipe-unaware user models, read back from Keras as plain JSON:
the facts tests/test_model_rewrite.py checks on every backend.

    python -m tests.rewrite_facts CASES_JSON     (KERAS_BACKEND set by the caller)

prints one JSON line per case of CASES_JSON (a list of [model_name, regularizers]). The user
models know nothing of regularizers: Dense/Conv layers with their activation inside, as people
write them.
"""
from __future__ import annotations

import json
import sys

import numpy as np


def digits():
    """sklearn's bundled 8x8 digits, scaled, a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return x[:1400], y[:1400].astype("int32"), x[1400:], y[1400:].astype("int32")


def user_model(name: str):
    """The user's model, built the way a recipe-unaware `build()` would."""
    import keras
    from keras import layers

    if name == "functional_mlp":
        inputs = keras.Input(shape=(64,), name="pixels")
        x = layers.Dense(64, activation="relu", name="h1")(inputs)
        x = layers.Dense(32, activation="relu", name="h2")(x)
        return keras.Model(inputs, layers.Dense(10, activation="softmax", name="out")(x), name="user_mlp")
    if name == "sequential_mlp":
        return keras.Sequential([keras.Input(shape=(64,)), layers.Dense(64, activation="relu", name="h1"),
                                 layers.Dense(32, name="h2"), layers.ReLU(name="h2_relu"),
                                 layers.Dense(10, activation="softmax", name="out")], name="user_seq")
    if name == "cnn":
        inputs = keras.Input(shape=(8, 8, 1), name="image")
        x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
        x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
        x = layers.Flatten(name="flat")(x)
        x = layers.Dense(10, name="logits")(x)
        return keras.Model(inputs, layers.Activation("softmax", name="probs")(x), name="user_cnn")
    if name == "zoo":  # every kernel layer kind the rewrite knows, and a residual add
        inputs = keras.Input(shape=(16, 8))
        x = layers.Conv1D(8, 3, padding="same", activation="relu", name="conv")(inputs)
        x = layers.SeparableConv1D(8, 3, padding="same", activation="relu", name="sep")(x)
        x = layers.DepthwiseConv1D(3, padding="same", name="depthwise")(x)
        x = layers.Add(name="add")([x, layers.MultiHeadAttention(2, 4, name="attention")(x, x)])
        x = layers.EinsumDense("abc,cd->abd", output_shape=(None, 8), name="einsum")(x)
        x = layers.GlobalAveragePooling1D(name="pool")(x)
        return keras.Model(inputs, layers.Dense(3, activation="softmax", name="out")(x))
    if name == "logistic":
        inputs = keras.Input(shape=(64,))
        return keras.Model(inputs, layers.Dense(10, activation="softmax", name="out")(inputs))
    if name == "lstm":
        inputs = keras.Input(shape=(8, 8))
        x = layers.LSTM(8, name="rnn")(inputs)
        return keras.Model(inputs, layers.Dense(10, activation="softmax", name="out")(x))
    if name == "subclassed":
        class Tiny(keras.Model):
            def __init__(self):
                super().__init__()
                self.hidden = layers.Dense(32, activation="relu")
                self.out = layers.Dense(10, activation="softmax")

            def call(self, x):
                return self.out(self.hidden(x))

        model = Tiny()
        model(np.zeros((1, 64), "float32"))
        return model
    raise KeyError(name)


def _layer_facts(layer) -> dict:
    cfg = layer.get_config()
    inbound = [t._keras_history[0].name for t in _flat(layer._inbound_nodes[0].input_tensors)] \
        if layer._inbound_nodes else []
    out = {"name": layer.name, "class": type(layer).__name__, "inbound": inbound,
           "activation": cfg.get("activation"), "use_bias": cfg.get("use_bias"), "rate": cfg.get("rate")}
    reg = getattr(layer, "kernel_regularizer", None)
    if reg is not None:
        out["penalty"] = [float(reg.l1), float(reg.l2)]
    con = getattr(layer, "kernel_constraint", None)
    if con is not None:
        out["max_norm"] = [float(con.max_value), con.axis]
    return out


def _flat(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def facts(model_name: str, regularizers: list) -> dict:
    """Rewrite `model_name` for the combination [(name, params), ...]; report the layers, the
    placements, and where a kernel penalty was placed on a digits MLP, one epoch's loss against its
    cross-entropy."""
    import keras

    from bench.workloads.rewrite import placeable, regularize
    from bench.regularizers import normalize, recipe_for

    keras.utils.set_random_seed(0)
    regs = [normalize(n, p, "test") for n, p in regularizers]
    model = user_model(model_name)
    reason = placeable(model, regs)
    out = {"backend": keras.backend.backend(), "model": model_name, "reason": reason}
    if reason:
        return out
    recipe = recipe_for(regs)
    new, placements = regularize(model, recipe, regularizers=regs)
    out.update(same_object=new is model, model_class=type(new).__name__, placements=placements,
               layers=[_layer_facts(layer) for layer in new.layers])
    if model_name.endswith("_mlp") and any(p["what"] == "kernel_regularizer" for p in placements):
        x, y, xv, yv = digits()
        new.compile(optimizer=recipe.make_optimizer(1e-3), loss=recipe.make_loss(), metrics=recipe.metrics())
        hist = new.fit(x, y, batch_size=64, epochs=1, verbose=0).history
        ev = new.evaluate(xv, yv, batch_size=len(xv), verbose=0, return_dict=True)
        penalty = sum(float(keras.ops.convert_to_numpy(layer.kernel_regularizer(layer.kernel))) for layer in new.layers
                      if getattr(layer, "kernel_regularizer", None) is not None)
        out["fit"] = {"loss": hist["loss"][-1], "xent_loss": hist["xent_loss"][-1], "eval_loss": ev["loss"],
                      "eval_xent_loss": ev["xent_loss"], "penalty": penalty}
    return out


if __name__ == "__main__":
    for model_name, regs in json.loads(sys.argv[1]):
        print(json.dumps(facts(model_name, regs)), flush=True)
