"""Small CNN on Fashion-MNIST, staged by bench/data.py (`regbench data fetch fashion_mnist_cnn`)."""
from __future__ import annotations


from bench.workloads.common import (Data, classifier_head, conv_bn, dense_block, model_augmentation, spatial_dropout,
                                    subsample)

NAME = "fashion_mnist_cnn"
DESCRIPTION = "Conv32-Conv64-pool-Dense128 CNN on Fashion-MNIST (28x28x1, 10 classes)"
KIND = "image"
ARCH = "cnn"
DATASET = "fashion_mnist"
DEFAULT_TARGET = 0.85
ACCURACY_MEANINGFUL = True


def load(seed: int, max_train_samples: int | None = None) -> Data:
    from bench.dataset_formats import load_fashion_mnist

    (x_tr, y_tr), (x_va, y_va) = load_fashion_mnist()
    x_tr, y_tr = subsample(x_tr, y_tr, max_train_samples, seed)
    prep = lambda x: (x.astype("float32") / 255.0)[..., None]  # noqa: E731
    return Data(prep(x_tr), y_tr.astype("int32"), prep(x_va), y_va.astype("int32"), num_classes=10, kind=KIND)


def build(recipe, data: Data):
    import keras

    inputs = keras.Input(shape=data.input_shape, name="image")
    x = model_augmentation(inputs, KIND, recipe)
    x = spatial_dropout(conv_bn(x, 32, recipe, "c1"), recipe, "c1")
    x = spatial_dropout(conv_bn(x, 64, recipe, "c2"), recipe, "c2")
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    if recipe.dropout_rate:
        x = keras.layers.Dropout(recipe.dropout_rate, name="pool_dropout")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = dense_block(x, 128, recipe, name="fc")
    return keras.Model(inputs, classifier_head(x, data.num_classes, recipe), name=NAME)
