"""Regularize a model that knows nothing of regularizers.

A user's `build()` may ignore the recipe; `regularize(model, recipe)` then rewrites the built
Functional or Sequential model into a fresh one (new weights from the same initializers; the
caller seeds) that carries the recipe's model-side settings, placed as the built-in workloads'
helpers place them (bench/workloads/common.py):

- kernel penalties (l1, l2, l1l2, elastic_net: Keras L1L2) and max-norm constraints on every
  Dense, EinsumDense, Conv (1D/2D/3D, transposed, separable, depthwise) and MultiHeadAttention
  kernel, the output layer's included; a layer the user already gave a kernel regularizer or
  constraint keeps its own (it is part of every setting, the baseline included);
- BatchNormalization before the activation of each hidden Dense/Conv block: Dense(activation=
  "relu") becomes Dense(activation=None, use_bias=False) -> BatchNormalization -> Activation("relu");
  a Dense without activation gets the BatchNormalization right after it (before the activation
  layer that follows); a block already normalized gets none;
- Dropout after each hidden Dense/Conv block (after its activation and normalization layers),
  SpatialDropout1D/2D/3D after each hidden Conv block, dropout on MultiHeadAttention's attention
  probabilities; none where the user already has a dropout layer;
- in-model augmentation (where=model / model_keras) right after the input (GaussianNoise on
  tabular inputs, the image layers on (batch, height, width, channels) inputs).

A hidden block is a Dense or Conv layer with another Dense/Conv/EinsumDense/attention layer
downstream; the output layers (those the model's outputs reach through no other such layer) get
penalties and constraints only. Training-side settings (weight_decay, label_smoothing, mixup,
cutmix, pipeline augmentation, early_stopping, precision) need no rewrite: the model is returned
as it is. `placeable(model, regularizers)` says in one line why a setting cannot be placed (a
subclassed model, no hidden block, weights the rewrite cannot penalize, residual branches it
cannot find), so the plan leaves it out as it does for regularizers.not_applicable.

Each placement is {"regularizer", "layer", "what"} (+ "inserted": the new layer's name, "after":
the layer it follows), for the trial record (model.regularizer_placements).
"""
from __future__ import annotations

import dataclasses

from bench.regularizers import REGISTRY, Recipe, recipe_for

# Recipe fields that act in training only (the model is left as built).
TRAINING_SIDE = {"weight_decay", "label_smoothing", "mixup_alpha", "cutmix_alpha", "early_stopping",
                 "augment_strength"}
# Recipe fields the rewrite places, and the regularizer named in placements when none is given.
MODEL_SIDE = {"l1": "l1", "l2": "l2", "max_norm": "max_norm", "dropout_rate": "dropout",
              "attention_dropout_rate": "dropout", "spatial_dropout_rate": "spatial_dropout",
              "batch_norm": "batch_norm", "augmentation": "augmentation",
              "stochastic_depth_rate": "stochastic_depth"}


class NotPlaceable(ValueError):
    """regularize() was asked for a setting placeable() refuses; the message is its one line."""


def model_side(recipe: Recipe) -> set[str]:
    """The recipe fields that need the model rewritten (pipeline augmentation does not)."""
    default = Recipe()
    changed = {f.name for f in dataclasses.fields(Recipe) if getattr(recipe, f.name) != getattr(default, f.name)}
    if recipe.augmentation not in ("model", "model_keras"):
        changed.discard("augmentation")
    return changed - TRAINING_SIDE


def placeable(model, regularizers) -> str | None:
    """None, or one line why the rewrite cannot place these regularizers on `model`.

    `regularizers`: names (their default parameters) or (name, params) pairs, as in a setting."""
    from bench.regularizers import normalize

    pairs = [normalize(r, None, "regularizers") if isinstance(r, str) else normalize(r[0], r[1], "regularizers")
             for r in regularizers]
    for name, params in pairs:
        reason = _why_not(model, recipe_for([(name, params)]))
        if reason:
            return f"{name}: {reason}" if len(pairs) > 1 else reason
    return None


def regularize(model, recipe: Recipe, regularizers=None, kind: str | None = None):
    """(new_model, placements): `model` rewritten to carry the model-side settings of `recipe`;
    (model, []) when the recipe has none. `regularizers` ([(name, params), ...], the setting)
    names each placement's regularizer (elastic_net rather than l1/l2); `kind` ("tabular" |
    "image") overrides the input kind inferred for in-model augmentation. Raises NotPlaceable with
    placeable()'s line."""
    if not model_side(recipe):
        return model, []
    reason = _why_not(model, recipe, kind)
    if reason:
        raise NotPlaceable(reason)
    return _Rewrite(model, recipe, _names(recipe, regularizers), kind or _input_kind(model)).run()


def describe(placements) -> str | None:
    """One line for reports: 'l2: kernel_regularizer on h1, out; dropout: h1_dropout after h1'."""
    groups: dict = {}
    for p in placements or []:
        parts = groups.setdefault(p["regularizer"], {})
        if p.get("inserted"):
            parts.setdefault("", []).append(f"{p['inserted']} after {p.get('after', p['layer'])}")
        else:
            parts.setdefault(f"{p['what']} on ", []).append(p["layer"])
    return "; ".join(f"{reg}: " + ", ".join(k + ", ".join(v) for k, v in parts.items())
                     for reg, parts in groups.items()) or None


# --- what the model is made of ------------------------------------------------------------------

def _classes():
    from keras import layers as L

    conv = (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose,
            L.SeparableConv1D, L.SeparableConv2D, L.DepthwiseConv1D, L.DepthwiseConv2D)
    return {"dense": (L.Dense,), "conv": conv, "kernel": (L.Dense, L.EinsumDense, L.MultiHeadAttention, *conv),
            "act": (L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.PReLU, L.Softmax),
            "norm": (L.BatchNormalization, L.LayerNormalization, L.GroupNormalization, L.UnitNormalization),
            "drop": (L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
                     L.GaussianDropout, L.AlphaDropout),
            "no_kernel": (L.BatchNormalization, L.LayerNormalization, L.GroupNormalization, L.Embedding)}


@dataclasses.dataclass
class _Graph:
    """Top-level layers, who consumes each layer's output, and which kernel layers are outputs."""

    layers: list
    consumers: dict  # id(layer) -> [layer]
    heads: set  # ids of kernel layers the outputs reach through no other kernel layer


def _graph(model) -> _Graph | str:
    import keras

    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            return "a Sequential model without an input shape (start it with keras.Input(shape=...))"
    elif _is_plain_functional(model):
        functional = model
    else:
        return (f"{type(model).__name__} is a subclassed model: the rewrite sees only Functional and "
                f"Sequential graphs (build it with keras.Input, or apply the recipe in build())")
    kinds = _classes()
    consumers: dict = {}
    for nodes in functional._nodes_by_depth.values():
        for node in nodes:
            for t in node.input_tensors:
                consumers.setdefault(id(t._keras_history[0]), []).append(node.operation)
    heads, seen, stack = set(), set(), [t._keras_history[0] for t in functional.outputs]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, kinds["kernel"]):
            heads.add(id(layer))
            continue
        for node in layer._inbound_nodes:
            stack += [t._keras_history[0] for t in node.input_tensors]
    layers = [op for op in functional.operations if not isinstance(op, keras.layers.InputLayer)]
    return _Graph(layers, consumers, heads)


def _is_plain_functional(model) -> bool:
    """A Functional model whose class runs its graph as Keras does (a subclass overriding call or
    the training step would lose that code in the rewrite)."""
    from keras.src.models.functional import Functional

    return isinstance(model, Functional) and all(
        getattr(type(model), m) is getattr(Functional, m) for m in ("call", "train_step", "compute_loss"))


def _input_kind(model) -> str:
    """'tokens' (integer inputs), 'image' (rank-4 inputs) or 'tabular'."""
    (x, *_) = model.inputs
    if "int" in str(x.dtype):
        return "tokens"
    return "image" if len(x.shape) == 4 else "tabular"


def _why_not(model, recipe: Recipe, kind: str | None = None) -> str | None:
    fields = model_side(recipe)
    if not fields:
        return None
    unknown = sorted(fields - set(MODEL_SIDE))
    if unknown:
        return f"sets recipe.{unknown[0]}, which the model rewrite does not know how to place"
    graph = _graph(model)
    if isinstance(graph, str):
        return graph
    kinds = _classes()
    if fields & {"l1", "l2", "max_norm"}:
        for layer in graph.layers:
            if layer.trainable_weights and not isinstance(layer, kinds["kernel"] + kinds["no_kernel"]):
                return (f"layer {layer.name!r} ({type(layer).__name__}) has weights the rewrite cannot "
                        f"penalize or constrain (it does Dense, EinsumDense, Conv and attention kernels)")
    hidden = [layer for layer in graph.layers
              if isinstance(layer, kinds["dense"] + kinds["conv"]) and id(layer) not in graph.heads]
    if fields & {"dropout_rate", "batch_norm"} and not hidden:
        return "no hidden Dense or Conv block (only output layers) to follow with it"
    if "spatial_dropout_rate" in fields and not any(isinstance(layer, kinds["conv"]) for layer in hidden):
        return "no hidden Conv block to drop feature maps after"
    if "attention_dropout_rate" in fields and "dropout_rate" not in fields and \
            not any(type(layer).__name__ == "MultiHeadAttention" for layer in graph.layers):
        return "no MultiHeadAttention layer"
    if "stochastic_depth_rate" in fields:
        return ("the rewrite does not find residual branches in a model; build them with "
                "bench.workloads.common.drop_path")
    if "augmentation" in fields and len(model.inputs) != 1:
        return f"augments the one input of a model; this model has {len(model.inputs)}"
    if "augmentation" in fields and (kind or _input_kind(model)) == "tokens":
        return "noise, flips and shifts have no meaning for token ids"
    return None


def _names(recipe: Recipe, regularizers) -> dict:
    """Recipe field -> the regularizer of the setting that set it (fallback: MODEL_SIDE)."""
    names = dict(MODEL_SIDE)
    if recipe.l1 and recipe.l2:
        names["l1"] = names["l2"] = "l1l2"
    for name, params in regularizers or []:
        for field in model_side(recipe_for([(name, params)])) if name in REGISTRY else ():
            names[field] = name
    return names


# --- the rewrite ----------------------------------------------------------------------------------

class _Rewrite:
    """One rewrite: a plan per original layer (config changes of its clone, layers to insert after
    it), then a clone of the Functional graph or of the Sequential list with those inserted."""

    def __init__(self, model, recipe: Recipe, names: dict, kind: str):
        self.model, self.recipe, self.names, self.kind = model, recipe, names, kind
        self.graph, self.kinds = _graph(model), _classes()
        self.placements: list[dict] = []
        self.taken = {layer.name for layer in self.graph.layers} | {t.name for t in model.inputs}
        self.after: dict = {}  # id(original layer) -> [(name, make(name) -> layer)], applied in order
        self.changes: dict = {}  # id(original layer) -> config changes of its clone
        self.built: set = set()  # names of the inserted layers made so far

    def run(self):
        for layer in self.graph.layers:
            self.changes[id(layer)] = self.plan_layer(layer)
        import keras

        inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in self.model.inputs]
        augment = self.augmentation()
        if isinstance(self.model, keras.Sequential):
            new = keras.Sequential([inputs[0], *augment] + [x for layer in self.model.layers
                                                            for x in [self.clone(layer), *self.made(layer)]],
                                   name=self.model.name)
        else:
            fed = {id(inputs[0]): _apply(augment, inputs[0])} if augment else {}
            originals: dict = {}

            def clone(layer):
                new_layer = self.clone(layer)
                originals[id(new_layer)] = layer
                return new_layer

            def call(layer, *args, **kwargs):
                from keras import tree

                args, kwargs = tree.map_structure(lambda t: fed.get(id(t), t), (args, kwargs))
                return _apply(self.made(originals[id(layer)]), layer(*args, **kwargs))

            new = keras.models.clone_model(self.model, input_tensors=inputs if len(inputs) > 1 else inputs[0],
                                           clone_function=clone, call_function=call)
        if self.recipe.max_norm:
            from bench.workloads.common import attention_output_max_norm

            for layer in new.layers:
                if isinstance(layer, keras.layers.MultiHeadAttention):
                    attention_output_max_norm(layer, self.recipe)
        return new, self.placements

    def clone(self, layer):
        """A fresh layer from `layer`'s config and its planned changes (unclonable weightless
        custom layers, which get no changes, are reused as they are)."""
        changes = self.changes.get(id(layer), {})
        try:
            return type(layer).from_config({**layer.get_config(), **changes})
        except (NotImplementedError, TypeError):
            if changes or layer.weights:
                raise
            return layer

    def made(self, layer) -> list:
        """New instances of the layers planned after `layer` (a shared layer gets its own per call)."""
        out = []
        for name, make in self.after.get(id(layer), []):
            out.append(make(name if name not in self.built else self.fresh_name(name)))
            self.built.add(out[-1].name)
        return out

    def augmentation(self) -> list:
        if "augmentation" not in model_side(self.recipe):
            return []
        from bench.workloads.common import augmentation_layers

        layers = augmentation_layers(self.kind, self.recipe)
        prev = self.model.inputs[0].name
        for layer in layers:
            self.placements.append({"regularizer": self.names["augmentation"], "layer": self.model.inputs[0].name,
                                    "what": "augmentation_after_input", "inserted": layer.name, "after": prev})
            prev = layer.name
        return layers

    def place(self, field: str, layer, what: str, **extra) -> None:
        self.placements.append({"regularizer": self.names[field], "layer": layer.name, "what": what, **extra})

    def fresh_name(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name

    def insert(self, field: str | None, layer, what: str, at, suffix: str, make) -> None:
        """make(name) after `at`'s output (after what is already planned there); placed for `layer`."""
        queue = self.after.setdefault(id(at), [])
        prev = queue[-1][0] if queue else at.name
        name = self.fresh_name(f"{layer.name}_{suffix}")
        queue.append((name, make))
        if field:
            self.place(field, layer, what, inserted=name, after=prev)

    def block(self, layer) -> list:
        """The activation and normalization layers that alone follow `layer`, in order."""
        out, end = [], layer
        while True:
            nxt = self.graph.consumers.get(id(end), [])
            if len(nxt) != 1 or not isinstance(nxt[0], self.kinds["act"] + self.kinds["norm"]):
                return out
            end = nxt[0]
            out.append(end)

    def plan_layer(self, layer) -> dict:
        """The config changes of `layer`'s clone; plans what goes after it."""
        import keras

        r, k, config = self.recipe, self.kinds, {}
        if isinstance(layer, k["kernel"]):
            config.update(self.penalties(layer))
        if isinstance(layer, keras.layers.MultiHeadAttention) and r.attention_dropout_rate and not layer._dropout:
            config["dropout"] = r.attention_dropout_rate
            self.place("attention_dropout_rate", layer, "attention_dropout")
        if not isinstance(layer, k["dense"] + k["conv"]) or id(layer) in self.graph.heads:
            return config
        block = self.block(layer)
        end = block[-1] if block else layer
        activation = getattr(layer, "activation", None)
        if r.batch_norm and not any(isinstance(b, k["norm"]) for b in block):
            axis = 1 if getattr(layer, "data_format", None) == "channels_first" else -1
            config.update(activation=None, use_bias=False)
            self.insert("batch_norm", layer, "batch_norm_before_activation", layer, "bn",
                        lambda name: keras.layers.BatchNormalization(axis=axis, name=name))
            if activation is not None and activation is not keras.activations.linear:
                self.insert(None, layer, "activation", layer, "act",
                            lambda name: keras.layers.Activation(activation, name=name))
        followed = self.graph.consumers.get(id(end), [])
        if len(followed) == 1 and isinstance(followed[0], k["drop"]):
            return config  # the user's own dropout is already there
        rank = len(layer.output.shape) - 2
        if r.spatial_dropout_rate and isinstance(layer, k["conv"]) and 1 <= rank <= 3:
            cls = getattr(keras.layers, f"SpatialDropout{rank}D")
            self.insert("spatial_dropout_rate", layer, "spatial_dropout_after", end, "spatial_dropout",
                        lambda name: cls(r.spatial_dropout_rate, name=name))
        if r.dropout_rate:
            self.insert("dropout_rate", layer, "dropout_after", end, "dropout",
                        lambda name: keras.layers.Dropout(r.dropout_rate, name=name))
        return config

    def penalties(self, layer) -> dict:
        """Config entries putting the recipe's penalty and max-norm on `layer`'s kernels, each
        MaxNorm over the kernel's input axes (those of one output unit's incoming weights)."""
        import keras

        r, L = self.recipe, keras.layers
        rank = getattr(layer, "rank", 0)
        if isinstance(layer, (L.Dense, L.MultiHeadAttention)):  # attention: its output kernel is fixed after build
            slots = {"kernel": 0}
        elif isinstance(layer, L.EinsumDense):
            ins, out = layer.equation.split("->")
            slots = {"kernel": [i for i, c in enumerate(ins.split(",")[1]) if c not in out]}
        elif isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
            slots = {"depthwise": list(range(rank))}
        elif isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
            slots = {"depthwise": list(range(rank)), "pointwise": list(range(rank + 1))}
        elif isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
            slots = {"kernel": list(range(rank)) + [rank + 1]}  # kernel (*spatial, out, in)
        else:
            slots = {"kernel": list(range(rank + 1))}  # kernel (*spatial, in, out)
        cfg, config = layer.get_config(), {}
        for slot, axis in slots.items():
            if (r.l1 or r.l2) and cfg.get(f"{slot}_regularizer") is None:
                config[f"{slot}_regularizer"] = r.kernel_regularizer()
                self.place("l1" if r.l1 else "l2", layer, f"{slot}_regularizer")
            if r.max_norm and cfg.get(f"{slot}_constraint") is None:
                config[f"{slot}_constraint"] = r.kernel_constraint(axis=axis)
                self.place("max_norm", layer, f"{slot}_constraint")
        return config


def _apply(layers: list, x):
    for layer in layers:
        x = layer(x)
    return x
