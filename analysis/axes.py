"""What `regbench compare --by AXIS` compares: device, software, backend or run, with the rest held equal.

Each trial gets a label on the chosen axis (a column named after the axis). Trials are paired
across labels only when every other pairing key is equal (`held_equal`): the cell keys of
analysis/overheads.py and the regularizer setting, less the axis itself. `changes` then puts each
label's numbers against the reference label's, cell by cell, with a Welch t interval over the
repeats of both sides (the two sides are separate processes, often separate runs: not paired).

- device: the device model (plus the backend when the trials use several: the platform);
- software: the versions that make the numbers, from the node fingerprint in each run's manifest
  (`regbench env`): Python, Keras, NumPy, nvidia-ml-py, the backend's framework (TensorFlow; JAX
  and jaxlib; torch) and, for GPU trials, the driver and CUDA. The label names only what differs
  between the groups present;
- backend: the Keras backend;
- run: the run directory (`--baseline` compares runs).

The data labels (`short_device`, `device_labels`) live here too: plots, efficiency, the gate and
the comparison pages name devices with them.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from analysis import stats
from analysis.cells import CELL_KEYS, with_keys
from analysis.errors import AnalysisInputError
from analysis.overheads import METRICS

AXES = ("device", "software", "backend", "run")
COMMON_PACKAGES = ("python", "keras", "numpy", "nvidia-ml-py")
BACKEND_PACKAGES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}
KEY_NAMES = {"workload": "workload", "setting": "regularizer setting", "precision": "precision",
             "batch_size": "batch size", "backend": "backend", "device_name": "device", "epochs": "epochs",
             "learning_rate": "learning rate", "steps_per_epoch": "steps per epoch",
             "max_train_samples": "training samples", "cpu_threads": "thread cap",
             "start_method": "trial process start method"}
UNKNOWN_SOFTWARE = "unknown software (no fingerprint in the manifest)"
CHANGE_COLUMNS = ["metric", "kind", "unit", "reference", "n_reference", "n", "reference_mean", "mean", "estimate",
                  "ci_low", "ci_high", "change_pct", "ci_low_pct", "ci_high_pct", "mark"]


def key_name(key: str) -> str:
    return KEY_NAMES.get(key, key.replace("_", " "))


def check_axis(axis: str) -> str:
    if axis not in AXES:
        raise AnalysisInputError(f"--by: unknown axis {axis!r} (one of {', '.join(AXES)})")
    return axis


def short_device(name) -> str:
    """'Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.0GHz' -> 'Intel Xeon Platinum 8480+'."""
    s = str(name).replace("(R)", "").replace("(TM)", "").replace("NVIDIA ", "")
    s = s.split(" CPU @")[0].split(" @ ")[0]
    return " ".join(s.split())[:40]


def device_labels(df: pd.DataFrame) -> pd.Series:
    """Short device model, plus backend when more than one backend is present."""
    label = df["device_name"].map(short_device)
    if "device_kind" in df and (df.groupby(label)["device_kind"].nunique() > 1).any():  # a fake or shared name
        label = label + " (" + df["device_kind"].astype(str) + ")"
    if df["backend"].nunique() > 1:
        label = label + " · " + df["backend"].astype(str)
    if "float32_matmul" in df and df["float32_matmul"].nunique(dropna=False) > 1:  # never pooled, so never one label
        label = label + " · float32 " + df["float32_matmul"].fillna("unknown").astype(str)
    return label


def software_versions(fingerprint: dict | None, backend: str, device_kind: str) -> dict | None:
    """name -> version of what makes a trial's numbers (see the module doc); None when unknown."""
    if not isinstance(fingerprint, dict) or not isinstance(fingerprint.get("versions"), dict):
        return None
    v = fingerprint["versions"]
    out = {p: v.get(p) for p in COMMON_PACKAGES + BACKEND_PACKAGES.get(backend, ())}
    gpus = fingerprint.get("gpus") or []
    if device_kind == "gpu" and gpus:
        out["driver"], out["cuda"] = gpus[0].get("driver"), gpus[0].get("cuda_driver")
    return out


def software_table(trials: pd.DataFrame, manifests: dict) -> pd.DataFrame:
    """One row per trial: `software` (label) and `software_versions` (JSON), from the manifests' nodes."""
    found = []
    for run, fid, backend, kind in zip(trials["run"], trials["fingerprint_id"], trials["backend"],
                                       trials["device_kind"]):
        nodes = (manifests.get(run) or {}).get("nodes") or {}
        versions = software_versions(nodes.get(fid), backend, kind)
        found.append(None if versions is None else json.dumps(versions, sort_keys=True))
    distinct = [json.loads(v) for v in dict.fromkeys(f for f in found if f)]
    names = list(dict.fromkeys(k for d in distinct for k in d))
    varying = [k for k in names if len({d.get(k) for d in distinct}) > 1]
    frameworks = {p for ps in BACKEND_PACKAGES.values() for p in ps} - {"jaxlib"}
    shown = varying or [k for k in names if k in frameworks or k == "keras"]  # all the same: name the framework

    def label(text):
        if text is None:
            return UNKNOWN_SOFTWARE
        d = json.loads(text)
        return " · ".join(f"{k} {d.get(k) or 'absent'}" for k in shown if k in d) or "same software"
    return pd.DataFrame({"software": [label(f) for f in found], "software_versions": found}, index=trials.index)


def with_axis(trials: pd.DataFrame, axis: str, manifests: dict | None = None) -> pd.DataFrame:
    """Copy of trials with a label column named `axis` (device, software; backend and run are columns)."""
    check_axis(axis)
    df = trials.copy()
    if axis == "device":
        df["device"] = device_labels(df) if len(df) else pd.Series(dtype=object)
    elif axis == "software":
        soft = software_table(df, manifests or {})
        df["software"], df["software_versions"] = soft["software"], soft["software_versions"]
    return df


def pair_keys(trials: pd.DataFrame, axis: str) -> list[str]:
    """The keys two trials must share to be compared across `axis` (setting included)."""
    mixed_kinds = "device_kind" in trials and trials["device_kind"].nunique() > 1  # GPU vs CPU: host threads differ
    drop = {"device": {"device_name"} | ({"backend"} if trials["backend"].nunique() > 1 else set())
            | ({"cpu_threads"} if mixed_kinds else set()),
            "backend": {"backend"}, "software": set(), "run": set()}[axis]
    return [k for k in CELL_KEYS if k not in drop] + ["setting"]


def held_equal(trials: pd.DataFrame, axis: str, manifests: dict | None = None) -> dict:
    """What the comparison held equal: {"axis", "labels", "held" (key names), "also_equal",
    "differs" (the other axes: equal in every pair, or differing in some), "sentence"}."""
    df = with_axis(trials[trials["status"] == "ok"], axis, manifests)
    keys = pair_keys(trials, axis)
    labels = list(dict.fromkeys(df[axis].astype(str))) if len(df) else []
    own = {"device": "device_name", "backend": "backend"}.get(axis)
    also, differs = [], [f"{key_name(k)} (goes with the {axis})" for k in CELL_KEYS if k not in keys and k != own]
    multi: list = []  # the cells with trials in more than one group: the compared ones
    if len(df):
        other = {a: with_axis(df, a, manifests)[a].astype(str) for a in AXES if a != axis}
        keyed = with_keys(df, [k for k in keys if k != "setting"])
        cells = keyed.groupby(keys, dropna=False).indices.values()
        multi = [i for i in cells if df[axis].iloc[i].nunique() > 1]
        for a, col in other.items():
            n = sum(col.iloc[i].nunique() > 1 for i in multi)
            (differs if n else also).append(a if not n else f"{a} (in {n} of {len(multi)} compared cells)")
        if not multi:  # nothing was paired: nothing to say about the pairs
            also, differs = [], []
    held = [key_name(k) for k in keys]
    paired = bool(multi)
    sentence = (f"Compared across {axis} ({len(labels)} groups: {', '.join(labels) or 'none'}). Held equal in every "
                f"pair: {', '.join(held)}." + (f" Also the same in every pair: {', '.join(also)}." if also else "")
                + (f" Not held equal: {', '.join(differs)}." if differs else "")
                + ("" if paired else f" No cell has trials in more than one {axis} group: nothing was paired."))
    return {"axis": axis, "labels": labels, "held": held, "also_equal": also, "differs": differs,
            "sentence": sentence}


def changes(trials: pd.DataFrame, axis: str, manifests: dict | None = None, reference: str | None = None,
            metrics=METRICS) -> pd.DataFrame:
    """Each axis label against the reference label (default: the first seen), per cell and metric.

    estimate is the ratio of geometric means (ratio metrics) or the difference of means (accuracy,
    gap), with a 95% Welch t interval over both sides' repeats; change_pct the same in % or
    percentage points. mark: significant | noise | too few repeats (fewer than 2 on a side) | no data.
    Only ok trials are used."""
    df = with_axis(trials[trials["status"] == "ok"], axis, manifests)
    keys = pair_keys(trials, axis)
    out_cols = keys + [axis] + CHANGE_COLUMNS
    if df.empty:
        return pd.DataFrame(columns=out_cols)
    df = with_keys(df, [k for k in keys if k != "setting"])
    labels = list(dict.fromkeys(df[axis].astype(str)))
    reference = labels[0] if reference is None else reference
    if reference not in labels:
        raise AnalysisInputError(f"reference {reference!r} is not one of the {axis} groups ({', '.join(labels)})")
    rows = []
    for cell, g in df.groupby(keys, sort=True, dropna=False):
        ref = g[g[axis].astype(str) == reference]
        if ref.empty:
            continue
        for label, side in g.groupby(g[axis].astype(str), sort=False):
            if label == reference:
                continue
            for m in metrics:
                a = pd.to_numeric(ref[m.column], errors="coerce").to_numpy(dtype=float)
                b = pd.to_numeric(side[m.column], errors="coerce").to_numpy(dtype=float)
                rows.append((*cell, label, *_change(m, a, b), reference))
    cols = keys + [axis, "metric", "kind", "unit", "n_reference", "n", "reference_mean", "mean", "estimate",
                   "ci_low", "ci_high", "change_pct", "ci_low_pct", "ci_high_pct", "mark", "reference"]
    return pd.DataFrame(rows, columns=cols)[out_cols] if rows else pd.DataFrame(columns=out_cols)


def _change(m, a: np.ndarray, b: np.ndarray) -> tuple:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if m.kind == "ratio":
        a, b = a[a > 0], b[b > 0]
        d, lo, hi, n = stats.diff_ci(np.log(a), np.log(b))
        est, lo, hi = np.exp(d), np.exp(lo), np.exp(hi)
        pct, null = (lambda x: (x - 1.0) * 100.0), 1.0
    else:
        est, lo, hi, n = stats.diff_ci(a, b)
        pct, null = (lambda x: x * 100.0), 0.0
    mark = str(stats.marks([n], [lo], [hi], null)[0])
    mean = lambda x: float(x.mean()) if x.size else np.nan  # noqa: E731
    return (m.name, m.kind, m.unit, int(a.size), int(b.size), mean(a), mean(b), est, lo, hi,
            pct(est), pct(lo), pct(hi), mark)
