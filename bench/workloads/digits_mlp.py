"""MLP on scikit-learn's bundled 8x8 digits (1,797 real images; no download)."""
from __future__ import annotations


from bench.workloads.common import Data, classifier_head, dense_block, model_augmentation, subsample

NAME = "digits_mlp"
DESCRIPTION = "2x256 MLP on sklearn digits (8x8, 10 classes), 80/20 stratified split"
KIND = "tabular"
ARCH = "mlp"
DEFAULT_TARGET = 0.95
ACCURACY_MEANINGFUL = True


def load(seed: int, max_train_samples: int | None = None) -> Data:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    # The split is fixed (seed 0) so every trial validates on the same rows; `seed` varies init/shuffle.
    x_tr, x_va, y_tr, y_va = train_test_split(x, y.astype("int32"), test_size=0.2, random_state=0, stratify=y)
    x_tr, y_tr = subsample(x_tr, y_tr, max_train_samples, seed)
    return Data(x_tr, y_tr, x_va, y_va, num_classes=10, kind=KIND)


def build(recipe, data: Data):
    import keras

    inputs = keras.Input(shape=data.input_shape, name="pixels")
    x = model_augmentation(inputs, KIND, recipe)
    for i in range(2):
        x = dense_block(x, 256, recipe, name=f"hidden{i}")
    return keras.Model(inputs, classifier_head(x, data.num_classes, recipe), name=NAME)
