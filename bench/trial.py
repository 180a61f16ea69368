"""Trial: one isolated timed training run, a unit of work (bench/units) and of storage.

A Trial is frozen plain data. Its id is a readable slug plus a short hash of the canonical JSON
of every field that changes what is measured, so the same trial has the same id in every run and
on every machine. `cell_id` is the same hash without the repeat index: analysis pairs on it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from typing import Any

from bench import SCHEMA_VERSION
from bench.regularizers import setting_label


def now_iso() -> str:
    """Current UTC time, ISO 8601 to the second (the timestamps of records and manifests)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:10]


@dataclasses.dataclass(frozen=True)
class Trial:
    """One timed training run. `regularizers` is a tuple of (name, params-dict) pairs."""

    workload: str
    regularizers: tuple  # ((name, {param: value}), ...); () is the baseline
    precision: str
    batch_size: int
    backend: str = "tensorflow"
    repeat: int = 0
    seed: int = 0
    epochs: int = 10
    learning_rate: float = 1e-3  # Adam
    target_val_accuracy: float | None = None
    jit_compile: str = "auto"  # "auto" | "on" | "off"
    max_train_samples: int | None = None
    steps_per_epoch: int | None = None
    cpu_threads: int | None = None  # None: all cores of the node
    timeout_s: float = 900.0
    allow_slow_precision: bool = False
    accelerator_type: str | None = None  # pin to a hardware class, e.g. "H100"
    model: dict | None = None  # the workload's model options ({layers, width, ...}); None: it has none
    device: str | None = None  # "gpu" | "cpu": the device kind this copy runs on (a `devices` suite); None: the suite's
    float32_matmul: str = "ieee"  # "ieee" | "tf32": float32 matmuls/convolutions (bench.backends.set_float32_matmul)
    # code from outside the package (bench/usercode.py): {"workload": ref, "regularizers": {name: ref}};
    # the identity keeps only the hashes (sha256 of source and data), not where the files are
    user_code: dict | None = None

    kind = "trial"  # a unit of work the executors run (bench/units: the other kind is a paired session)
    plural = "trials"

    @classmethod
    def whole_cpu_node(cls, suite) -> bool:
        """On a CPU, a trial runs alone on its node only under `isolation: node`."""
        return suite.isolation == "node"

    # ---- derived names -------------------------------------------------
    @property
    def setting(self) -> str:
        """Readable label of the regularizer set: 'none', 'l2', 'dropout(rate=0.5)+batch_norm'."""
        regs = (self.user_code or {}).get("regularizers") or {}
        return setting_label(self.regularizers, {n: r.get("defaults", {}) for n, r in regs.items()})

    def _identity(self, with_repeat: bool) -> dict:
        d = self.to_dict()
        for k in ("timeout_s",):  # does not change what is measured
            d.pop(k)
        if "user_code" in d:  # what the code is, not where it lies
            w, regs = d["user_code"].get("workload"), d["user_code"].get("regularizers") or {}
            d["user_code"] = {"workload": w and [w["sha256"], w["data_sha256"]],
                              "regularizers": {n: r["sha256"] for n, r in regs.items()}}
        if not with_repeat:  # repeats differ in repeat index and seed only
            d.pop("repeat")
            d.pop("seed")
        return d

    @property
    def cell_id(self) -> str:
        """Id shared by all repeats (and their seeds) of this trial."""
        return _short_hash(self._identity(with_repeat=False))

    @property
    def trial_id(self) -> str:
        slug = "-".join(
            [self.workload, self.setting.replace("(", "_").replace(")", "").replace("=", "").replace(",", "_"),
             self.precision, f"b{self.batch_size}", self.backend[:2], f"r{self.repeat}"] + [self.device] * bool(self.device)
        )
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in slug)[:90]
        return f"{slug}-{_short_hash(self._identity(with_repeat=True))}"

    @property
    def unit_id(self) -> str:
        return self.trial_id

    # ---- plain data ----------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["regularizers"] = [{"name": n, "params": dict(p)} for n, p in self.regularizers]
        for key in ("model", "device", "user_code"):  # absent rather than null: ids of trials without them stay as they were
            if d[key] is None:
                del d[key]
        if d["float32_matmul"] == "ieee":  # absent when default: ids from before the field stay as they were
            del d["float32_matmul"]
        return d

    def to_record(self) -> dict:
        """The `trial` section of a trial file (float32_matmul always stated)."""
        d = self.to_dict()
        d["float32_matmul"] = self.float32_matmul
        d["setting"] = self.setting
        d["cell_id"] = self.cell_id
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Trial":
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        kw["regularizers"] = tuple(
            (r["name"], dict(sorted(r.get("params", {}).items()))) for r in d.get("regularizers", [])
        )
        return cls(**kw)

    def __hash__(self) -> int:  # dict params are unhashable; the id is the identity
        return hash(self.trial_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Trial) and self.trial_id == other.trial_id

    # ---- the unit's face (bench/units; what runs it is bench/units/runners.py)
    def skeleton(self, status: str, reason: str | None, node: dict) -> dict:
        return result_skeleton(self, status, reason, node)


def result_skeleton(trial: Trial, status: str, reason: str | None, node: dict) -> dict:
    """A trial file with the always-present fields; measured sections are added by the runner."""
    return {
        "schema_version": SCHEMA_VERSION,
        "trial_id": trial.trial_id,
        "status": status,
        "reason": reason,
        "trial": trial.to_record(),
        "node": node,
    }
