"""BERT-style encoder classifier on synthetic token sequences (generated from the seed, no download).

Task: token t in [0, vocab) belongs to group t % classes; a sequence's label is the group with the
most tokens in it (ties: the lowest group), a deterministic function of the tokens that a model
can learn exactly. Sequences are uniform random tokens with SIGNAL of their positions redrawn from
one random group, so most majorities are clear, but the model has to learn every token's group
and count. Convergence and time-to-target are meaningful (unlike synthetic_cnn's random labels).

Model (pre-LN, as in GPT-2/ViT; BERT itself is post-LN): token embedding + learned position
embedding; `layers` blocks x += Attention(LN(x)), x += MLP(LN(x)) with heads x (width / heads)
attention and MLP = Dense(4 * width, gelu) -> Dense(width); final LayerNorm, mean over positions,
Dense(classes) with the softmax in float32. Regularizers: L1/L2 penalties and max-norm on every
Dense and attention kernel; `dropout` on the attention probabilities, on both residual branches
(after the attention projection, after the MLP) and on the MLP hidden layer (`dropout_no_attention`:
the same without the attention probabilities, so the fused attention kernel stays); stochastic depth on
both residual branches of block l with probability rate * l / layers. Sizes come from the suite:
`model: {layers, width, heads, seq_len, vocab, classes}`.
"""
from __future__ import annotations

import numpy as np

from bench.params import Param
from bench.workloads.common import Data, attention_output_max_norm, classifier_head, drop_path, model_options, subsample

NAME = "transformer_encoder"
DESCRIPTION = "pre-LN transformer encoder classifier on synthetic token sequences (majority token group)"
KIND = "tokens"
ARCH = "transformer"
DEFAULT_TARGET = 0.90
ACCURACY_MEANINGFUL = True
MODEL = {
    "layers": Param(4, low=1, high=64, kind=int),
    "width": Param(256, low=8, high=16384, kind=int),
    "heads": Param(4, low=1, high=256, kind=int),
    "seq_len": Param(128, low=4, high=16384, kind=int),
    "vocab": Param(1000, low=4, high=1_000_000, kind=int),
    "classes": Param(4, low=2, high=100, kind=int),
}
SIGNAL = 0.2  # share of positions redrawn from the sequence's group
TRAIN_SAMPLES, VAL_SAMPLES = 16384, 2048
LN_EPSILON = 1e-6


def check_model(o: dict) -> tuple[str, str] | None:
    if o["width"] % o["heads"]:
        return "heads", f"width {o['width']} is not divisible by heads {o['heads']}"
    if o["vocab"] < 2 * o["classes"]:
        return "vocab", f"{o['vocab']} tokens leave fewer than 2 per group for {o['classes']} classes"
    return None


def options(model: dict | None) -> dict:
    return model_options(MODEL, model, f"{NAME}.model", check_model)


def make_sequences(n: int, seq_len: int, vocab: int, classes: int, rng: np.random.Generator):
    """n token sequences (int32, n x seq_len) and their labels (the majority group, int32)."""
    x = rng.integers(0, vocab, size=(n, seq_len))
    group = rng.integers(0, classes, size=n)
    k = max(1, round(SIGNAL * seq_len))
    positions = np.argsort(rng.random((n, seq_len)), axis=1)[:, :k]  # k distinct positions per row
    tokens = rng.integers(0, vocab // classes, size=(n, k)) * classes + group[:, None]  # all < vocab
    np.put_along_axis(x, positions, tokens, axis=1)
    counts = np.stack([(x % classes == g).sum(axis=1) for g in range(classes)], axis=1)
    return x.astype("int32"), counts.argmax(axis=1).astype("int32")


def load(seed: int, max_train_samples: int | None = None, **model) -> Data:
    o = options(model)
    rng = np.random.default_rng(seed)
    n = max(TRAIN_SAMPLES, max_train_samples or 0)  # more training sequences when the suite asks for more
    x, y = make_sequences(n + VAL_SAMPLES, o["seq_len"], o["vocab"], o["classes"], rng)
    x_tr, y_tr = subsample(x[:n], y[:n], max_train_samples, seed)
    return Data(x_tr, y_tr, x[n:], y[n:], num_classes=o["classes"], kind=KIND, model=o)


def _position_embedding(name: str):
    import keras

    class PositionEmbedding(keras.layers.Layer):
        """x + P, P a learned (seq_len, width) table."""

        def build(self, input_shape):
            self.embeddings = self.add_weight(shape=tuple(input_shape[1:]), initializer="uniform", name="embeddings")

        def call(self, x):
            return x + keras.ops.cast(self.embeddings, x.dtype)

    return PositionEmbedding(name=name)


def _block(x, recipe, index: int, count: int, heads: int, width: int):
    import keras

    layers, rate, name = keras.layers, recipe.dropout_rate, f"block{index}"
    dense_kw = dict(kernel_regularizer=recipe.kernel_regularizer(), kernel_constraint=recipe.kernel_constraint())
    h = layers.LayerNormalization(epsilon=LN_EPSILON, name=f"{name}_ln1")(x)
    attention = layers.MultiHeadAttention(heads, width // heads, dropout=recipe.attention_dropout_rate,
                                          name=f"{name}_attention",
                                          kernel_regularizer=recipe.kernel_regularizer(),
                                          kernel_constraint=recipe.kernel_constraint())
    h = attention(h, h)
    attention_output_max_norm(attention, recipe)
    if rate:
        h = layers.Dropout(rate, name=f"{name}_attention_dropout")(h)
    h = drop_path(h, recipe, index, count, f"{name}_attention")
    x = layers.Add(name=f"{name}_add1")([x, h])
    h = layers.LayerNormalization(epsilon=LN_EPSILON, name=f"{name}_ln2")(x)
    h = layers.Dense(4 * width, activation="gelu", name=f"{name}_mlp_in", **dense_kw)(h)
    if rate:
        h = layers.Dropout(rate, name=f"{name}_mlp_dropout")(h)
    h = layers.Dense(width, name=f"{name}_mlp_out", **dense_kw)(h)
    if rate:
        h = layers.Dropout(rate, name=f"{name}_mlp_out_dropout")(h)
    h = drop_path(h, recipe, index, count, f"{name}_mlp")
    return layers.Add(name=f"{name}_add2")([x, h])


def build(recipe, data: Data):
    import keras

    o = options(data.model)
    tokens = keras.Input(shape=(o["seq_len"],), dtype="int32", name="tokens")
    x = keras.layers.Embedding(o["vocab"], o["width"], name="token_embedding")(tokens)
    x = _position_embedding("position_embedding")(x)
    for i in range(o["layers"]):
        x = _block(x, recipe, i, o["layers"], o["heads"], o["width"])
    x = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name="final_ln")(x)
    x = keras.layers.GlobalAveragePooling1D(name="mean_pool")(x)
    return keras.Model(tokens, classifier_head(x, data.num_classes, recipe), name=NAME)
