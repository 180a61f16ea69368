"""A workload from outside the package: the contract "regbench.workload v1" (bench/workloads/README.md).

`resolve(spec, ...)` (driver, at plan time) imports the user's module, checks the contract, and
runs `load(0)` and `build()` once in a child process (`python -m bench.workloads.external`, on the
CPU with the suite's backend: the driver never imports the framework) to check what they return,
hash the data, infer KIND and ARCH, and ask the rewriter where it cannot place each regularizer.
It returns a `UserWorkload`: the same face as a built-in workload module (NAME, KIND, ARCH, load,
build, ...), which the trial process rebuilds from the ref each trial carries (`for_ref`).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from bench import usercode
from bench.errors import UserError

CONTRACT = "regbench.workload v1"
KINDS = ("tabular", "image", "tokens")
ARCHS = ("mlp", "cnn", "resnet", "transformer")
CHECK_TIMEOUT_S = 600.0
_CHECKED: dict = {}  # (sha256, files, model options, backend, regularizer names) -> check result, per process


class UserWorkload:
    """A user's module wearing the face of a built-in workload (see bench/workloads/__init__.py)."""

    def __init__(self, module, ref: dict, loaded_from: str | None = None):
        self.module, self.ref = module, ref
        self.NAME = ref["name"]
        self.KIND, self.ARCH = ref["kind"], ref["arch"]
        self.DESCRIPTION = getattr(module, "DESCRIPTION", None) or (module.__doc__ or "").strip().split("\n")[0]
        self.DEFAULT_TARGET = getattr(module, "DEFAULT_TARGET", None)
        self.ACCURACY_MEANINGFUL = bool(getattr(module, "ACCURACY_MEANINGFUL", True))
        self.MODEL = getattr(module, "MODEL", None)
        self.check_model = getattr(module, "check_model", None)
        self.RECIPE_AWARE = bool(getattr(module, "RECIPE_AWARE", False))
        self.UNPLACEABLE = dict(ref.get("unplaceable") or {})  # {regularizer: why the rewrite cannot place it}
        self.loaded_from = loaded_from
        self.placements = None

    def load(self, seed: int, max_train_samples: int | None = None, **model):
        from bench.workloads.common import subsample

        data = as_data(self.module.load(seed, **model), self.KIND, f"load({seed})")
        data.x_train, data.y_train = subsample(data.x_train, data.y_train, max_train_samples, seed)
        data.model = dict(model)
        return data

    def build(self, recipe, data):
        """The user's model; a recipe-unaware one gets the regularizers from bench/workloads/rewrite.py."""
        model = self.module.build(recipe, data)
        if not self.RECIPE_AWARE:
            from bench.workloads.rewrite import regularize

            model, self.placements = regularize(model, recipe, kind=self.KIND if self.KIND in ("tabular", "image") else None)
        return model

    def record(self) -> dict:
        """The trial file's `workload` section: where the code came from and what was inferred or placed."""
        return {"contract": CONTRACT, "source": usercode.source_name(self.ref), "sha256": self.ref["sha256"],
                "data_sha256": self.ref["data_sha256"], "loaded_from": self.loaded_from, "kind": self.KIND,
                "arch": self.ARCH, "inferred": list(self.ref.get("inferred", [])), "recipe_aware": self.RECIPE_AWARE,
                "placements": self.placements}


def for_ref(ref: dict) -> UserWorkload:
    """In a trial process: the workload of a trial's ref, its source checked against the planned hash."""
    module, loaded_from = usercode.activate(ref)
    return UserWorkload(module, ref, loaded_from)


def as_data(out, kind: str | None, call: str):
    """What load() returned, as a bench Data: a Data as is, or (x_train, y_train, x_val, y_val)
    with integer class ids. ValueError with one line saying what is wrong."""
    from bench.workloads.common import Data

    if isinstance(out, Data):
        return out
    if not isinstance(out, (tuple, list)) or len(out) != 4:
        raise ValueError(f"{call} returned {type(out).__name__}; expected (x_train, y_train, x_val, y_val) or a Data")
    names = ("x_train", "y_train", "x_val", "y_val")
    arrays = [np.asarray(a) for a in out]
    for name, a in zip(names, arrays):
        if a.ndim == 0:
            raise ValueError(f"{call} returned a scalar as {name}")
    for x, y, part in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "val")):
        if len(x) != len(y):
            raise ValueError(f"{call} returned {len(x)} rows of x_{part} but {len(y)} of y_{part}")
        if len(x) == 0:
            raise ValueError(f"{call} returned no x_{part} rows")
    for name, y in (("y_train", arrays[1]), ("y_val", arrays[3])):
        if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.array_equal(y, np.round(y))) or y.min() < 0:
            raise ValueError(f"{call}: {name} must be a 1-D array of integer class ids >= 0")
    if arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise ValueError(f"{call}: x_train rows are {arrays[0].shape[1:]} but x_val rows {arrays[2].shape[1:]}")
    x_tr = arrays[0] if arrays[0].dtype in (np.uint8, np.int32) else arrays[0].astype("float32")
    x_va = arrays[2].astype(x_tr.dtype)
    classes = int(max(arrays[1].max(), arrays[3].max())) + 1
    return Data(x_tr, arrays[1].astype("int32"), x_va, arrays[3].astype("int32"), num_classes=classes,
                kind=kind or infer_kind(x_tr))


def infer_kind(x: np.ndarray) -> str:
    """tokens: integer ids in rows; image: (N, H, W, C) or uint8 (N, H, W); tabular otherwise."""
    if x.ndim == 4 or (x.ndim == 3 and x.dtype == np.uint8):
        return "image"
    if np.issubdtype(x.dtype, np.integer) and x.ndim == 2 and x.dtype != np.uint8:
        return "tokens"
    return "tabular"


def infer_arch(model) -> str:
    """transformer: an attention layer; resnet: convolutions and an Add; cnn: convolutions; else mlp."""
    names = {type(layer).__name__ for layer in model._flatten_layers(include_self=False, recursive=True)}
    if "MultiHeadAttention" in names or "GroupedQueryAttention" in names:
        return "transformer"
    conv = any(n.startswith(("Conv", "DepthwiseConv", "SeparableConv")) for n in names)
    if conv and "Add" in names:
        return "resnet"
    return "cnn" if conv else "mlp"


def data_sha256(data) -> str:
    """Hash of the arrays (bytes, dtypes, shapes) and the class count: two data versions never pair."""
    h = hashlib.sha256()
    for a in (data.x_train, data.y_train, data.x_val, data.y_val):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    h.update(str(data.num_classes).encode())
    return h.hexdigest()


def resolve(spec: dict, base_dir: pathlib.Path, where: str, backend: str, regularizer_names: list[str]) -> UserWorkload:
    """The UserWorkload of a suite's `{path: ...}` or `{module: ...}` entry, checked; UserError
    naming `where` and the field for anything the contract does not allow."""
    from bench.workloads import WORKLOADS
    from bench.workloads.common import model_options

    ref, module = usercode.resolve(spec, base_dir, where)
    field = f"{where}.{'path' if 'path' in spec else 'module'}"
    label = usercode.source_name(ref)
    for fn in ("load", "build"):
        if not callable(getattr(module, fn, None)):
            raise UserError(f"{field}: {label} has no {fn}() ({CONTRACT}: load(seed), build(recipe, data))")
    name = spec.get("name") or getattr(module, "NAME", None) or pathlib.Path(label.replace(".", "/")).stem
    if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
        raise UserError(f"{field}: NAME {name!r} is not a plain name (letters, digits, '_', '-')")
    if name in WORKLOADS:
        raise UserError(f"{field}: NAME {name!r} is a built-in workload; give the module another NAME")
    for attr, options in (("KIND", KINDS), ("ARCH", ARCHS)):
        value = getattr(module, attr, None)
        if value is not None and value not in options:
            raise UserError(f"{field}: {attr} {value!r} is not one of {', '.join(options)}")
    model = spec.get("model")
    if getattr(module, "MODEL", None):
        model = model_options(module.MODEL, model, f"{where}.model", getattr(module, "check_model", None))
    elif model is not None:
        raise UserError(f"{where}.model: {label} has no MODEL options")
    request = {**ref, "name": name, "model": model or {},
               "regularizers": [] if getattr(module, "RECIPE_AWARE", False) else sorted(regularizer_names)}
    key = json.dumps([request, backend], sort_keys=True)
    if key not in _CHECKED:
        _CHECKED[key] = _check_in_child(request, backend, field)
    found = _CHECKED[key]
    inferred = [a for a in ("KIND", "ARCH") if getattr(module, a, None) is None]
    full = {**ref, "name": name, "data_sha256": found["data_sha256"], "inferred": inferred,
            "kind": getattr(module, "KIND", None) or found["kind"], "arch": getattr(module, "ARCH", None) or found["arch"],
            "unplaceable": found["unplaceable"]}
    w = UserWorkload(module, full)
    w.model = model
    return w


def _check_in_child(request: dict, backend: str, field: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(pathlib.Path(__file__).resolve().parents[2]), *sys.path])}
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.workloads.external"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise UserError(f"{field}: load(0) and build() did not finish in {CHECK_TIMEOUT_S:g} s") from None
    lines = proc.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{field}: checking load(0) and build() failed (exit {proc.returncode}: {tail[:300]})") from None
    if "error" in answer:
        raise UserError(f"{field}: {answer['error']}")
    return answer


def _check(request: dict) -> dict:
    """In the child: load(0), build(baseline recipe), check them; the facts the plan needs."""
    import traceback

    from bench.regularizers import Recipe

    ref = {k: request[k] for k in ("path", "module", "sha256") if k in request}
    module, _ = usercode.activate(ref)
    label = usercode.source_name(ref)
    try:
        out = module.load(0, **request["model"])
    except Exception as e:  # noqa: BLE001 - the user's code: its error, one line
        return {"error": f"load(0) raised {usercode._one_line(e)} ({_where_in(traceback.format_exc(), label)})"}
    try:
        data = as_data(out, getattr(module, "KIND", None), "load(0)")
    except ValueError as e:
        return {"error": str(e)}
    try:
        model = module.build(Recipe(), data)
    except Exception as e:  # noqa: BLE001
        return {"error": f"build() raised {usercode._one_line(e)} ({_where_in(traceback.format_exc(), label)})"}
    import keras

    if not isinstance(model, keras.Model):
        return {"error": f"build() returned {type(model).__name__}, not an uncompiled keras.Model"}
    shape = tuple(model.outputs[0].shape) if getattr(model, "outputs", None) else None
    if shape is None or len(model.outputs) != 1 or len(shape) != 2 or shape[-1] != data.num_classes:
        return {"error": f"build() returned a model whose output shape is {shape}; for {data.num_classes} classes "
                         f"it must be (None, {data.num_classes})"}
    unplaceable = {}
    if request["regularizers"]:
        from bench.workloads.rewrite import placeable

        for name in request["regularizers"]:
            reason = placeable(model, [name])
            if reason:
                unplaceable[name] = reason
    return {"data_sha256": data_sha256(data), "kind": data.kind, "arch": infer_arch(model),
            "num_classes": data.num_classes, "unplaceable": unplaceable}


def _where_in(tb: str, label: str) -> str:
    """The user's line the error came from, as 'file, line N'."""
    lines = [ln.strip() for ln in tb.splitlines() if ln.strip().startswith("File ")]
    mine = [ln for ln in lines if pathlib.Path(label).name in ln] or lines
    return mine[-1] if mine else "no traceback"


if __name__ == "__main__":
    print(json.dumps(_check(json.loads(sys.stdin.read()))))
