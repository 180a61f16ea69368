"""bench.inputs: what a trial's and a session's `fit` is fed on TensorFlow."""
import numpy as np

from bench.regularizers import Recipe


def _epoch(ds):
    xs, ys = zip(*[(bx.numpy(), by.numpy()) for bx, by in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_trial_inputs_reshuffle_every_epoch_and_keep_rows_whole():
    """Defect caught: a pipeline shuffled once (every epoch the same order), x and y shuffled apart,
    rows lost or repeated, or a validation set fed in a shuffled or partial order."""
    from bench.inputs import TF_PIPELINE, trial_inputs, validation_data

    x = np.arange(50 * 3, dtype="float32").reshape(50, 3)
    y = np.arange(50)
    xv, yv = x[:20] + 1000, y[:20] + 1000
    train, val, desc = trial_inputs(Recipe(), x, y, xv, yv, 8, "tabular", seed=3)
    assert desc == TF_PIPELINE and set(train) == {"x"}
    orders = []
    for _ in range(3):
        ex, ey = _epoch(train["x"])
        assert sorted(ey.tolist()) == y.tolist()  # every row once per epoch, the partial batch kept
        assert np.array_equal(ex[:, 0] / 3, ey)  # each x still with its own y
        orders.append(ey.tolist())
    assert orders[0] != y.tolist() and len({tuple(o) for o in orders}) == 3
    vx, vy = _epoch(validation_data(val))
    assert vy.tolist() == yv.tolist() and np.array_equal(vx, xv)
    # the same seed gives the same first epoch (a trial's order is reproducible)
    again, _, _ = trial_inputs(Recipe(), x, y, xv, yv, 8, "tabular", seed=3)
    assert _epoch(again["x"])[1].tolist() == orders[0]


def test_input_side_recipes_keep_their_pydataset():
    from bench.inputs import TransformedBatches, trial_inputs, validation_data

    recipe = Recipe(augmentation="pipeline")
    x, y = np.zeros((32, 4), "float32"), np.zeros(32)
    train, val, desc = trial_inputs(recipe, x, y, x[:8], y[:8], 8, "tabular", seed=0)
    assert isinstance(train["x"], TransformedBatches) and desc.startswith("PyDataset")
    assert validation_data(val)[0] is val["x"]


def test_a_one_core_slot_feeds_input_side_batches_without_enqueuer_threads():
    """Defect caught: the enqueuer's two threads on a slot of one core (they only take turns with
    the step there), or a slot with cores to spare losing them; and batches that depend on the feed."""
    from bench.inputs import PIPELINE_WORKERS, block_inputs, trial_inputs
    from bench.regularizers import recipe_for

    recipe = recipe_for((("augmentation", {"strength": 0.1, "where": "pipeline"}),))
    x, y = np.random.default_rng(0).normal(size=(64, 4)).astype("float32"), np.arange(64)
    one, _, desc_one = trial_inputs(recipe, x, y, x[:8], y[:8], 8, "tabular", seed=0, cpu_threads=1)
    many, _, desc_many = trial_inputs(recipe, x, y, x[:8], y[:8], 8, "tabular", seed=0, cpu_threads=None)
    assert one["x"].workers == 1 and "workers=1" in desc_one
    assert many["x"].workers == PIPELINE_WORKERS > 1 and f"{PIPELINE_WORKERS} threads" in desc_many
    assert block_inputs(recipe, x, y, 8, "tabular", 0, cpu_threads=1)["x"].workers == 1
    assert block_inputs(recipe, x, y, 8, "tabular", 0, cpu_threads=2)["x"].workers == PIPELINE_WORKERS
    for i in (0, 3, 7):  # the same transformed batches whichever feed runs them
        assert np.array_equal(one["x"][i][0], many["x"][i][0]) and np.array_equal(one["x"][i][1], many["x"][i][1])
    assert not np.array_equal(one["x"][0][0], x[one["x"].order[:8]])  # and they are transformed
