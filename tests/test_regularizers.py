import numpy as np
import pytest

from bench import regularizers as R
from bench.errors import UserError


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
    ("augmentation", {"where": "gpu"}, "f: r.where: 'gpu' is not one of ['model', 'pipeline']"),
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
