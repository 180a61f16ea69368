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


# ---------------------------------------------------------------------------- the feed of synthetic images

TINY_IMAGES = {"synthetic_cnn": {"width": 4}, "resnet50": {"image_size": 32, "classes": 10, "depth": 14, "width": 4}}


def test_synthetic_images_are_fed_as_uint8_and_cast_on_the_device():
    """Defect caught: float32 images fed from the host (4x the bytes over the host link in every
    step), or a cast that changes the scale the model sees (not x / 255 in [0, 1])."""
    import keras

    from bench.inputs import input_feed
    from bench.regularizers import Recipe
    from bench.workloads import WORKLOADS

    for name, model in TINY_IMAGES.items():
        data = WORKLOADS[name].load(0, 32, **model)
        assert data.x_train.dtype == np.uint8 and data.x_val.dtype == np.uint8, name
        assert data.x_train.max() > 200 and data.x_train.min() < 50  # the full 0-255 range is used
        assert input_feed(data.x_train) == "uint8-cast-on-device"
        m = WORKLOADS[name].build(Recipe(), data)
        assert m.inputs[0].dtype == "uint8", name
        cast = keras.Model(m.inputs, m.get_layer("image_rescale").output)
        seen = keras.ops.convert_to_numpy(cast([data.x_train[:4]]))
        assert seen.dtype == np.float32 and np.allclose(seen, data.x_train[:4] / 255.0, atol=1e-6), name
    assert input_feed(np.zeros((2, 4), "float32")) == "float32-host"
    assert input_feed(np.zeros((2, 4), "int32")) == "int32-host"


def test_mixup_cutmix_and_pipeline_augmentation_of_uint8_images_keep_the_scale():
    """Defect caught: uint8 images mixed by truncation (every mixed pixel up to 1/255 low), promoted
    to float64, or augmented differently from the float images they stand for."""
    from bench.workloads.common import mix_batch, pipeline_augment

    rng = np.random.default_rng(1)
    x8 = rng.integers(0, 256, size=(16, 8, 8, 3), dtype=np.uint8)
    xf = x8.astype("float32") / 255.0
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, 16)]
    for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0)):
        for seed in range(5):
            m8, y8 = mix_batch(x8, y, mixup, cutmix, np.random.default_rng(seed))
            mf, yf = mix_batch(xf, y, mixup, cutmix, np.random.default_rng(seed))
            assert m8.dtype == np.uint8 and np.array_equal(y8, yf)  # the same lam, the same labels
            assert np.abs(m8 / 255.0 - mf).max() <= 0.5 / 255 + 1e-6  # rounded, not truncated
    a8 = pipeline_augment(x8, "image", 0.25, np.random.default_rng(2))
    af = pipeline_augment(xf, "image", 0.25, np.random.default_rng(2))
    assert a8.dtype == np.uint8 and np.array_equal(a8 / np.float32(255.0), af)


# ---------------------------------------------------------------------------- the input side's time per batch

def test_input_side_is_timed_on_each_feed_alone():
    """Defect caught: no record of what a batch costs the host, or a measurement that moves the
    feed on (a PyDataset's epoch or order changed by timing it)."""
    from bench.inputs import TransformedBatches, fit_inputs, input_side, trial_inputs
    from bench.regularizers import recipe_for

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, size=(64, 8, 8, 3), dtype=np.uint8), np.eye(4, dtype="float32")[np.arange(64) % 4]
    mixup = recipe_for((("mixup", {"alpha": 0.2}),))
    cases = [  # (fit keywords, backend, workers, overlaps the step)
        (trial_inputs(Recipe(), x, y, x[:8], y[:8], 8, "image", 0)[0], "tensorflow", 1, True),  # tf.data
        (fit_inputs(Recipe(), x, y, 8, "image", 0)[0], "jax", 1, False),  # arrays: gathered between steps
        (fit_inputs(mixup, x, y, 8, "image", 0, cpu_threads=1)[0], "torch", 1, False),  # called between steps
        (fit_inputs(mixup, x, y, 8, "image", 0, cpu_threads=1)[0], "tensorflow", 1, True),  # tf.data prefetching
        (fit_inputs(mixup, x, y, 8, "image", 0, cpu_threads=4)[0], "jax", 2, True),  # the enqueuer's threads
    ]
    for inputs, backend, workers, overlaps in cases:
        ds = inputs["x"]
        before = (ds.epoch, ds.order.copy()) if isinstance(ds, TransformedBatches) else None
        got = input_side(inputs, 8, backend)
        assert got["input_time_per_batch_s"] > 0
        assert (got["input_workers"], got["input_overlaps_step"]) == (workers, overlaps), (backend, got)
        if before:
            assert ds.epoch == before[0] and np.array_equal(ds.order, before[1])


def test_input_side_bound_compares_the_input_with_the_rest_of_its_step():
    """Defect caught: a cell whose step waits for the host read as a GPU figure. Between steps, the
    input's time is part of the step: bound when it is (nearly) as long as the rest. Overlapping
    the step, its workers share the batches: bound when they take (nearly) as long as the step."""
    from bench.inputs import INPUT_SIDE_MARGIN, input_side_bound

    assert 0.5 < INPUT_SIDE_MARGIN <= 1
    assert input_side_bound(0.004, 1, False, 0.010) is False  # 4 ms of a 10 ms step: the rest is 6 ms
    assert input_side_bound(0.006, 1, False, 0.010) is True  # 6 ms of a 10 ms step: the rest is 4 ms
    assert input_side_bound(0.020, 2, True, 0.0105) is True  # two workers: 10 ms a batch, the step waits
    assert input_side_bound(0.010, 2, True, 0.020) is False  # 5 ms a batch against a 20 ms step: hidden
    assert input_side_bound(None, 1, False, 0.01) is None and input_side_bound(0.01, 1, True, None) is None


def test_a_feed_that_cannot_be_timed_leaves_a_null_with_its_reason():
    """Defect caught: the trial failed (all its figures lost) because its feed could not be timed alone."""
    from bench.inputs import input_record

    x, y = np.zeros((16, 4), "float32"), np.zeros(16, "int32")
    fields, reasons = input_record({"x": object()}, x, y, 8, "jax", 0.01)
    assert fields == {"input_feed": "float32-host", "input_batch_bytes": 8 * (16 + 4),
                      "input_time_per_batch_s": None, "input_side_bound": None}
    assert set(reasons) == {"input_time_per_batch_s", "input_side_bound"}
    assert "timing the feed alone failed" in reasons["input_side_bound"]
    fields, reasons = input_record({"x": x, "y": y, "batch_size": 8}, x, y, 8, "jax", None)
    assert fields["input_side_bound"] is None and reasons == {"input_side_bound": "no steady-state step time to "
                                                                                  "compare with"}
