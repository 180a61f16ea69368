import numpy as np
import pytest

from bench import regularizers as R
from bench.errors import UserError
from tests.model_facts import INPUT_SHAPES, TINY_MODELS, data_for


def test_elastic_net_maps_to_keras_l1l2_with_sklearn_convention():
    name, p = R.normalize("elastic_net", {"alpha": 0.01, "l1_ratio": 0.3}, "f: r[0]")
    recipe = R.recipe_for([(name, p)])
    assert recipe.l1 == pytest.approx(0.003)
    assert recipe.l2 == pytest.approx(0.5 * 0.01 * 0.7)


def test_penalty_matches_keras_on_a_real_layer():
    import keras

    recipe = R.recipe_for([R.normalize("elastic_net", {"alpha": 0.02, "l1_ratio": 0.25}, "w")])
    w = np.random.default_rng(0).standard_normal((5, 3)).astype("float32")
    expected = 0.02 * 0.25 * np.abs(w).sum() + 0.5 * 0.02 * 0.75 * (w ** 2).sum()  # sklearn's objective
    got = float(keras.ops.convert_to_numpy(recipe.kernel_regularizer()(keras.ops.convert_to_tensor(w))))
    assert got == pytest.approx(expected, rel=1e-5)


def test_combination_adds_penalties_and_sets_knobs():
    recipe = R.recipe_for([R.normalize("l1", {}, "w"), R.normalize("l2", {"l2": 0.01}, "w"),
                           R.normalize("dropout", {"rate": 0.2}, "w"), R.normalize("batch_norm", {}, "w"),
                           R.normalize("augmentation", {"where": "pipeline"}, "w"),
                           R.normalize("early_stopping", {"patience": 2}, "w")])
    assert (recipe.l1, recipe.l2, recipe.dropout_rate, recipe.batch_norm) == (1e-4, 0.01, 0.2, True)
    assert recipe.augmentation == "pipeline" and recipe.early_stopping["monitor"] == "val_xent_loss"
    assert R.recipe_for([]).kernel_regularizer() is None


@pytest.mark.parametrize("name,params,message", [
    ("dropout", {"rate": 1.5}, "f: r.rate: 1.5 is out of range (0.0, 1.0)"),
    ("dropout", {"rate": 0}, "f: r.rate: 0.0 is out of range"),
    ("l2", {"l2": "big"}, "f: r.l2: 'big' is not a number"),
    ("early_stopping", {"patience": 1.5}, "f: r.patience: 1.5 is not an integer"),
    ("augmentation", {"where": "gpu"}, "f: r.where: 'gpu' is not one of ['model', 'model_keras', 'pipeline']"),
    ("l1", {"l2": 0.1}, "f: r.l2: unknown parameter of l1 (allowed: l1)"),
    ("dropot", {}, "f: r: unknown regularizer 'dropot' (did you mean 'dropout'?)"),
])
def test_bad_parameters_name_the_field(name, params, message):
    with pytest.raises(UserError) as e:
        R.normalize(name, params, "f: r")
    assert str(e.value).startswith(message)


def test_every_entry_documents_itself_and_defaults_are_valid():
    for name, spec in R.REGISTRY.items():
        assert spec.doc
        R.normalize(name, {}, "defaults")


# ---- the newer entries, read back from what Keras built ------------------------------------------

def setting(*names, **params):
    return [R.normalize(n, params.get(n, {}), "t") for n in names]


def build(name: str, *names, **params):
    from bench.workloads import WORKLOADS

    return WORKLOADS[name].build(R.recipe_for(setting(*names, **params)), data_for(name))


def test_applicability_of_the_newer_entries():
    from bench.workloads import WORKLOADS

    def applies(entry):
        return {w for w, m in WORKLOADS.items() if R.not_applicable(setting(entry), m) is None}

    images = {"fashion_mnist_cnn", "cifar10_resnet20", "synthetic_cnn", "resnet50"}
    assert applies("mixup") == applies("cutmix") == images
    assert applies("spatial_dropout") == images
    assert applies("stochastic_depth") == {"cifar10_resnet20", "resnet50", "transformer_encoder"}
    assert applies("batch_norm") == applies("augmentation") == set(WORKLOADS) - {"transformer_encoder"}
    for entry in ("weight_decay", "label_smoothing", "max_norm", "l2", "dropout", "early_stopping"):
        assert applies(entry) == set(WORKLOADS), entry
    assert R.not_applicable(setting("l2", "mixup"), WORKLOADS["digits_mlp"]) == (
        "mixup: mixes images; the inputs of digits_mlp are tabular")


def test_every_applicable_model_regularizer_changes_every_workloads_model():
    """No silent no-op: where an entry applies, the workload's built model differs from the baseline."""
    from bench.workloads import WORKLOADS

    assert set(WORKLOADS) == set(INPUT_SHAPES) | set(TINY_MODELS)  # a new workload: add its shapes here
    for name, module in WORKLOADS.items():
        base = module.build(R.recipe_for([]), data_for(name)).to_json()
        for entry in ("l2", "dropout", "batch_norm", "augmentation", "spatial_dropout", "max_norm", "stochastic_depth"):
            if R.not_applicable(setting(entry), module) is None:
                assert build(name, entry).to_json() != base, (name, entry)


def test_weight_decay_is_the_optimizers_decoupled_decay():
    import keras

    model = build("digits_mlp", "weight_decay", "batch_norm", weight_decay={"weight_decay": 0.05})
    recipe = R.recipe_for(setting("weight_decay", weight_decay={"weight_decay": 0.05}))
    model.compile(optimizer=recipe.make_optimizer(0.01), loss=recipe.make_loss())
    opt = model.optimizer
    assert isinstance(opt, keras.optimizers.AdamW) and opt.weight_decay == 0.05
    variables = model.trainable_variables
    opt.build(variables)
    rng = np.random.default_rng(0)
    for v in variables:  # no zeros (a decayed zero bias would still be zero)
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
    before = {v.path: keras.ops.convert_to_numpy(v) for v in variables}
    opt.apply_gradients([(keras.ops.zeros_like(v), v) for v in variables])  # zero gradients: Adam moves nothing
    decayed = set()
    for v in variables:
        after, b = keras.ops.convert_to_numpy(v), before[v.path]
        if v.name == "kernel":
            np.testing.assert_allclose(after, b * (1 - 0.01 * 0.05), rtol=1e-6)  # w -= lr * wd * w
            decayed.add(v.path)
        else:
            np.testing.assert_array_equal(after, b)  # biases, BatchNorm gamma/beta: not decayed
    assert len(decayed) == 3 and any(v.name in ("gamma", "beta") for v in variables)
    base = R.recipe_for([]).make_optimizer(0.01)
    assert type(base) is keras.optimizers.Adam and not base.weight_decay


def test_weight_decay_under_mixed_float16_sits_inside_the_loss_scale_optimizer():
    import keras

    keras.config.set_dtype_policy("mixed_float16")
    try:
        recipe = R.recipe_for(setting("weight_decay"))
        model = build("digits_mlp", "weight_decay")
        model.compile(optimizer=recipe.make_optimizer(1e-3), loss=recipe.make_loss())
    finally:
        keras.config.set_dtype_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.optimizer.inner_optimizer.weight_decay == 0.01


def test_label_smoothing_smooths_the_loss_and_not_the_xent_metric():
    import keras

    recipe = R.recipe_for(setting("label_smoothing", label_smoothing={"smoothing": 0.2}))
    data = recipe.prepare_data(data_for("digits_mlp"))
    assert data.y_train.shape == (16, 10) and data.y_train.dtype == np.float32
    keras.utils.set_random_seed(0)
    model = build("digits_mlp", "label_smoothing", label_smoothing={"smoothing": 0.2})
    model.compile(optimizer=recipe.make_optimizer(1e-3), loss=recipe.make_loss(), metrics=recipe.metrics())
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)
    assert model.loss.get_config()["label_smoothing"] == 0.2
    p = model.predict(data.x_train, verbose=0)
    hist = model.fit(data.x_train, data.y_train, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    target = 0.8 * data.y_train + 0.2 / 10  # Keras: y * (1 - e) + e / classes
    assert hist["loss"][0] == pytest.approx(float(np.mean(-(target * np.log(p)).sum(1))), rel=1e-4)
    assert hist["xent_loss"][0] == pytest.approx(float(np.mean(-(data.y_train * np.log(p)).sum(1))), rel=1e-4)
    assert hist["accuracy"][0] == pytest.approx(float(np.mean(p.argmax(1) == data.y_train.argmax(1))))


def _mixed_batches(entries: dict, batches: int = 12, n: int = 16, batch: int = 8):
    """Batches from the training input of images whose pixels all equal their sample index, each
    sample its own class: what every output pixel and label came from can be read back."""
    from bench.inputs import fit_inputs

    recipe = R.recipe_for([R.normalize(k, v, "t") for k, v in entries.items()])
    assert recipe.soft_labels and recipe.mixes_batches
    x = np.repeat(np.arange(n, dtype="float32"), 8 * 8).reshape(n, 8, 8, 1)
    ds = fit_inputs(recipe, x, np.eye(n, dtype="float32"), batch, "image", seed=0)[0]["x"]
    out = []
    for epoch in range(batches // len(ds)):
        out += [ds[i] for i in range(len(ds))]
        ds.on_epoch_end()
    return out


def test_mixup_mixes_images_and_labels_with_one_weight():
    mixed_rows = 0
    for xb, yb in _mixed_batches({"mixup": {"alpha": 1.0}}):
        np.testing.assert_allclose(yb.sum(1), 1.0, rtol=1e-6)
        for img, w in zip(xb, yb):
            np.testing.assert_allclose(img, (w * np.arange(len(w))).sum(), rtol=1e-5)  # lam*a + (1-lam)*b
            mixed_rows += int((w > 0).sum() == 2)
        assert len({round(float(np.sort(w)[-1]), 5) for w in yb if (w > 0).sum() == 2}) <= 2  # one lam per batch
    assert mixed_rows > 20


def test_cutmix_pastes_a_box_and_labels_follow_its_area():
    cut_rows = 0
    for xb, yb in _mixed_batches({"cutmix": {"alpha": 1.0}}):
        for img, w in zip(xb, yb):
            values, counts = np.unique(img, return_counts=True)
            for v, c in zip(values, counts):
                assert w[int(v)] == pytest.approx(c / img.size)  # label weight = share of pixels from that image
            cut_rows += int(len(values) == 2)
    assert cut_rows > 10


def test_mixup_and_cutmix_together_alternate_per_batch():
    kinds = set()
    for xb, _ in _mixed_batches({"mixup": {"alpha": 1.0}, "cutmix": {"alpha": 1.0}}, batches=20):
        fractional = not np.allclose(xb, np.round(xb))
        kinds.add("mixup" if fractional else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_spatial_dropout_layers_where_conv_blocks_are():
    import keras

    expected = {"synthetic_cnn": 4, "fashion_mnist_cnn": 2, "cifar10_resnet20": 9, "resnet50": 4}  # depth 14: 4 blocks
    for name, count in expected.items():
        layers = [la for la in build(name, "spatial_dropout", spatial_dropout={"rate": 0.25}).layers
                  if isinstance(la, keras.layers.SpatialDropout2D)]
        assert len(layers) == count and {la.rate for la in layers} == {0.25}, name
        assert not any(isinstance(la, keras.layers.SpatialDropout2D) for la in build(name).layers)


def test_stochastic_depth_drops_whole_branches_with_linearly_growing_rates():
    import keras

    paths = [la for la in build("resnet50", "stochastic_depth", stochastic_depth={"rate": 0.2}).layers
             if la.name.endswith("_drop_path")]
    assert [la.rate for la in paths] == pytest.approx([0.05, 0.1, 0.15, 0.2])  # 4 blocks at depth 14
    assert {la.noise_shape for la in paths} == {(None, 1, 1, 1)}  # one draw per sample
    paths = [la for la in build("transformer_encoder", "stochastic_depth", stochastic_depth={"rate": 0.2}).layers
             if la.name.endswith("_drop_path")]
    assert [la.rate for la in paths] == pytest.approx([0.1, 0.1, 0.2, 0.2])  # attention and MLP of 2 blocks
    assert {la.noise_shape for la in paths} == {(None, 1, 1)}
    assert len([la for la in build("cifar10_resnet20", "stochastic_depth").layers if la.name.endswith("_drop_path")]) == 9
    out = keras.ops.convert_to_numpy(paths[-1](np.ones((64, 8, 16), "float32"), training=True))
    per_sample = {tuple(np.unique(s).round(4)) for s in out}
    assert per_sample == {(0.0,), (1.25,)}  # a sample keeps or drops its whole branch; kept ones scaled 1/(1-p)


def test_max_norm_constrains_every_kernel_and_training_respects_it():
    import keras

    recipe = R.recipe_for(setting("max_norm", max_norm={"max_value": 0.05}))
    data = data_for("transformer_encoder", n=64)
    model = build("transformer_encoder", "max_norm", max_norm={"max_value": 0.05})
    kernels = [v for v in model.trainable_variables if v.name == "kernel"]
    assert len(kernels) == 2 * (4 + 2) + 1  # per block: q, k, v, out, mlp_in, mlp_out; plus the head
    assert all(isinstance(v.constraint, keras.constraints.MaxNorm) and v.constraint.max_value == 0.05 for v in kernels)
    axes = {v.path.split("/", 1)[1]: v.constraint.axis for v in kernels if "attention" in v.path}
    assert axes["attention_output/kernel"] == [0, 1] and axes["query/kernel"] == 0
    model.compile(optimizer=recipe.make_optimizer(0.05), loss=recipe.make_loss())
    model.fit(data.x_train, data.y_train, batch_size=32, epochs=1, verbose=0)
    for v in kernels:
        w = keras.ops.convert_to_numpy(v)
        norms = np.sqrt((w ** 2).sum(axis=tuple(np.atleast_1d(v.constraint.axis))))
        assert norms.max() <= 0.05 * (1 + 1e-4), v.path
    conv = build("resnet50", "max_norm")
    assert all(v.constraint.axis == [0, 1, 2] for v in conv.trainable_variables if v.path.endswith("_conv/kernel"))
    assert all(v.constraint is None for v in build("resnet50").trainable_variables)
