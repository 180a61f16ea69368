"""Suite YAML -> validated Suite -> list of Trials.

A suite names the matrix: workloads x regularizer settings x precisions x batch sizes x repeats.
Every problem is reported as one line naming the file and the field. See bench/README.md "Suites".

A workload x setting pair where the setting does not apply (mixup on tokens, stochastic depth
without residual blocks; see each registry entry's applies_to) is left out of the trials and
listed in Suite.not_applicable with the reason; a setting that applies to none of the suite's
workloads is an error naming it.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np

from bench import backends, precision, regularizers, yamlfile
from bench.errors import UserError, did_you_mean
from bench.params import as_number, is_number
from bench.trial import Trial

SUITES_DIR = pathlib.Path(__file__).parent / "suites"

TOP_KEYS = {
    "name": "suite name", "description": "one line", "workloads": "list of names or {name, ...}",
    "regularizers": "list of settings", "precisions": "list", "batch_sizes": "list of ints",
    "repeats": "int", "epochs": "int", "seed": "int", "backend": "tensorflow|jax|torch",
    "jit_compile": "auto|on|off", "isolation": "gpu|node|cpu", "cpus_per_trial": "int",
    "device": "auto|gpu|cpu", "devices": "list of device kinds, e.g. [gpu, cpu]: every trial once per kind",
    "gpu_host_cpus": "CPUs reserved for each GPU trial's host threads in a `devices` suite", "timeout_s": "seconds", "allow_slow_precision": "bool",
    "accelerator_types": "list", "expected_trial_s": "seconds", "max_retries": "int",
    "learning_rate": "Adam learning rate",
    "order": "random|pairs: each repeat's cells in a seeded random order (default), or baseline-and-setting "
             "pairs first, by precision then workload (a short run lands complete pairs)",
    "float32_matmul": "ieee|tf32: float32 matmuls and convolutions in IEEE float32 (default) or TensorFloat-32",
    "paired": "paired step-time sessions: {sessions, rounds, block_min_steps, block_min_s, session_budget_s, "
              "isolation, target_ci_pct, max_sessions, budget_s, run_budget_s} or false",
}
PAIRED_DEFAULTS = {  # see bench/units/session.py; bench/README.md "How a trial is measured"
    "sessions": 6,  # fresh processes per cell group: new model instances each (the interval is over sessions)
    "rounds": 3,  # per session; each round times one block of every model, in a random order
    "block_min_steps": 50,  # a block is at least this many steps ...
    "block_min_s": 0.3,  # ... and at least this many seconds of steps
    "session_budget_s": 60.0,  # a session's data, build, warm-up and rounds: shorter blocks, then fewer rounds, past it
    "isolation": "slot",  # slot: sessions side by side like trials; node: one session per node at a time
    "target_ci_pct": None,  # add sessions to groups whose 95% CI half-width is wider (points)
    "max_sessions": 8,  # per group, with target_ci_pct
    "budget_s": 600.0,  # wall time the added sessions may take, with target_ci_pct
    "run_budget_s": None,  # and they end within this much of the run's start (trials and planned sessions included)
}
NAME_MAX = 64  # a suite name is part of the run directory's name: one plain folder name
_NAME = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9_.-]{{0,{NAME_MAX - 1}}}")
MAX_EPOCHS = 100000
DEFAULT_SUITE = "quick"  # `regbench run` and `plan` without --suite
WORKLOAD_KEYS = ("name", "path", "module", "max_train_samples", "steps_per_epoch", "target_val_accuracy", "epochs",
                 "batch_sizes", "model")  # path | module: a user's workload (bench/workloads/README.md)
USER_REGULARIZER_KEYS = ("path", "module", "params")


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    description: str
    source: str
    trials: tuple
    isolation: str
    cpus_per_trial: int
    device: str
    expected_trial_s: float
    max_retries: int
    resolved: dict  # the suite as plain data, defaults filled in (stored in the manifest)
    paired: dict | None = None  # PAIRED_DEFAULTS filled in, or None: no paired sessions
    devices: tuple = ()  # ("gpu", "cpu"): each trial once per kind (device == "mixed"); () otherwise
    gpu_host_cpus: int = 1  # with `devices`: CPUs (and pinned cores) reserved for each GPU trial

    @property
    def paired_isolation(self) -> str:
        return (self.paired or PAIRED_DEFAULTS)["isolation"]
    not_applicable: tuple = ()  # ({workload, setting, reason}, ...): pairs left out of the trials

    def expected_duration_s(self, cpus: int) -> float:
        """The trials' expected wall time on one node with `cpus` CPUs: expected_trial_s each, one
        at a time for isolation node or a GPU suite, else as many side by side as cpus_per_trial allows."""
        side_by_side = 1 if self.isolation == "node" or self.device == "gpu" else max(1, cpus // self.cpus_per_trial)
        return len(self.trials) * self.expected_trial_s / side_by_side


def _fail(where: str, msg: str):
    raise UserError(f"{where}: {msg}")


def _int(where, value, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, f"{value!r} is not an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        _fail(where, f"{value} is out of range [{low}, {'inf' if high is None else high}]")
    return value


def _list(where, value):
    if not isinstance(value, list):
        _fail(where, f"expected a list, got {type(value).__name__}")
    if not value:
        _fail(where, "is empty: the suite would run nothing")
    return value


def _choice(where, value, options):
    if value not in options:
        _fail(where, f"unknown value {value!r}{did_you_mean(value, options)}")
    return value


def _number(where, value, low: float, high: float | None = None) -> float:
    """A finite number in (low, high]; a string YAML read from 1e-3 counts as the number."""
    value = as_number(value)
    if not is_number(value) or not value > low or (high is not None and value > high):
        finite = "finite " if isinstance(value, float) else ""
        _fail(where, f"{value!r} is not a {finite}number in ({low:g}, {'inf' if high is None else f'{high:g}'}]")
    return float(value)


def _name(f: str, value) -> str:
    """The suite name (a plain folder-name slug: it names the run directory); absent: the file's stem, made safe."""
    if value is None:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", pathlib.Path(f).stem).strip(".-")[:NAME_MAX] or "suite"
    if not isinstance(value, str):
        quote = f" (quote it: '{value}')" if isinstance(value, (int, float)) else ""
        _fail(f"{f}: name", f"{value!r} is not a string{quote}")
    if not _NAME.fullmatch(value):
        _fail(f"{f}: name", f"{value!r} is not a plain name: up to {NAME_MAX} letters, digits, '-', '_' or '.', "
                            "not starting with '.'")
    return value


def _paired(where: str, value) -> dict | None:
    """The `paired` section: false (no sessions), or a mapping over PAIRED_DEFAULTS."""
    if value is False:
        return None
    if value is None or value is True:
        value = {}
    if not isinstance(value, dict):
        _fail(where, f"expected false or a mapping of {', '.join(PAIRED_DEFAULTS)}, got {value!r}")
    for key in value:
        if key not in PAIRED_DEFAULTS:
            _fail(where, f"unknown key {key!r}{did_you_mean(key, PAIRED_DEFAULTS)}")
    out = {**PAIRED_DEFAULTS, **value}
    out["sessions"] = _int(f"{where}.sessions", out["sessions"], 1, 1000)
    out["rounds"] = _int(f"{where}.rounds", out["rounds"], 1, 100000)
    out["block_min_steps"] = _int(f"{where}.block_min_steps", out["block_min_steps"], 2, 1 << 20)
    out["block_min_s"] = _number(f"{where}.block_min_s", out["block_min_s"], 0.0, 3600)
    if out["session_budget_s"] is not None:
        out["session_budget_s"] = _number(f"{where}.session_budget_s", out["session_budget_s"], 0.0)
    _choice(f"{where}.isolation", out["isolation"], ("node", "slot"))
    if out["target_ci_pct"] is not None:
        out["target_ci_pct"] = _number(f"{where}.target_ci_pct", out["target_ci_pct"], 0.0, 1000)
    out["max_sessions"] = _int(f"{where}.max_sessions", out["max_sessions"], out["sessions"], 1000)
    out["budget_s"] = _number(f"{where}.budget_s", out["budget_s"], 0.0)
    if out["run_budget_s"] is not None:
        out["run_budget_s"] = _number(f"{where}.run_budget_s", out["run_budget_s"], 0.0)
    return out


def _setting(where: str, item) -> tuple:
    """One regularizer setting -> ((name, params), ...)."""
    if item == regularizers.BASELINE or item is None:
        return ()
    parts = item if isinstance(item, list) else [item]
    if not parts:
        _fail(where, "an empty combination; write 'none' for the baseline")
    out, seen = [], set()
    for j, part in enumerate(parts):
        w = f"{where}[{j}]" if isinstance(item, list) else where
        if isinstance(part, str):
            name, params = part, {}
        elif isinstance(part, dict) and set(part) <= {"name", "params"} and "name" in part:
            name, params = part["name"], part.get("params") or {}
        elif isinstance(part, dict) and len(part) == 1:
            (name, params), = part.items()
            params = params or {}
        else:
            _fail(w, f"expected a regularizer name or {{name: {{param: value}}}}, got {part!r}")
        if name == regularizers.BASELINE:
            _fail(w, "'none' cannot be part of a combination")
        if not isinstance(params, dict):
            _fail(f"{w}.{name}", f"parameters must be a mapping, got {params!r}")
        if name in seen:
            _fail(w, f"{name} appears twice in one combination")
        seen.add(name)
        out.append(regularizers.normalize(name, params, f"{w}.{name}" if name in regularizers.REGISTRY else w))
    return tuple(out)


def resolve_path(name_or_file: str) -> pathlib.Path:
    p = pathlib.Path(name_or_file)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in name_or_file:
        return p
    builtin = SUITES_DIR / f"{name_or_file}.yaml"
    if not builtin.exists():
        raise UserError(f"--suite: unknown suite {name_or_file!r}{did_you_mean(name_or_file, builtin_names())}")
    return builtin


def builtin_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load(name_or_file: str, backend: str | None = None) -> Suite:
    path = resolve_path(name_or_file)
    return parse(yamlfile.load_mapping(path, "suite fields"), str(path), backend_override=backend)


ORDERS = {
    "random": "cells in a random order per repeat, seeded by (seed, repeat)",
    "pairs": "pairs first: per repeat, by precision then workload, each baseline then its settings",
}


def _cell_order(cells: list[dict], order: str, precisions: list, seed) -> list[int]:
    """Indices of `cells` in the order one repeat runs them (see ORDERS)."""
    if order == "random":
        return list(np.random.default_rng(seed).permutation(len(cells)))
    workloads = list(dict.fromkeys(c["workload"] for c in cells))
    return sorted(range(len(cells)), key=lambda i: (precisions.index(cells[i]["precision"]),
                                                    workloads.index(cells[i]["workload"]),
                                                    cells[i]["batch_size"], cells[i]["device"] or "",
                                                    bool(cells[i]["regularizers"]), i))


def parse(data: dict, source: str, backend_override: str | None = None) -> Suite:
    from bench.workloads import WORKLOADS

    f = source
    for key in data:
        if key not in TOP_KEYS:
            _fail(f, f"unknown key {key!r}{did_you_mean(key, TOP_KEYS)}")
    for key in ("workloads", "regularizers", "precisions", "batch_sizes"):
        if key not in data:
            _fail(f, f"missing required key {key!r}")

    name = _name(f, data.get("name"))
    description = data.get("description")
    description = "" if description is None else description
    if not isinstance(description, str):
        _fail(f"{f}: description", f"{description!r} is not a string")
    backend = backend_override or data.get("backend", "tensorflow")
    _choice(f"{f}: backend", backend, backends.BACKENDS)
    jit = _choice(f"{f}: jit_compile", data.get("jit_compile", "auto"), ("auto", "on", "off"))
    f32 = _choice(f"{f}: float32_matmul", data.get("float32_matmul", "ieee"), backends.FLOAT32_MATMUL)
    isolation = _choice(f"{f}: isolation", data.get("isolation", "gpu"), ("gpu", "node", "cpu"))
    device = _choice(f"{f}: device", data.get("device", "auto"), ("auto", "gpu", "cpu"))
    order = _choice(f"{f}: order", data.get("order", "random"), ORDERS)
    kinds, host_cpus = _devices(f, data, isolation)
    if len(kinds) == 1:
        device, kinds = kinds[0], ()
    elif kinds:
        device = "mixed"
    repeats = _int(f"{f}: repeats", data.get("repeats", 3), 1, 1000)
    epochs = _int(f"{f}: epochs", data.get("epochs", 10), 1, MAX_EPOCHS)
    seed = _int(f"{f}: seed", data.get("seed", 0), 0)
    cpus = _int(f"{f}: cpus_per_trial", data.get("cpus_per_trial", 1), 1, 1024)
    retries = _int(f"{f}: max_retries", data.get("max_retries", 2), 0, 20)
    timeout = _number(f"{f}: timeout_s", data.get("timeout_s", 900), 0.0)
    allow_slow = data.get("allow_slow_precision", False)
    if not isinstance(allow_slow, bool):
        _fail(f"{f}: allow_slow_precision", f"{allow_slow!r} is not true/false")
    lr = _number(f"{f}: learning_rate", data.get("learning_rate", 1e-3), 0.0)
    expected = _number(f"{f}: expected_trial_s", data.get("expected_trial_s", 10), 0.0)

    precisions = [_choice(f"{f}: precisions[{i}]", p, precision.POLICIES)
                  for i, p in enumerate(_list(f"{f}: precisions", data["precisions"]))]
    batch_sizes = [_int(f"{f}: batch_sizes[{i}]", b, 1, 1 << 20)
                   for i, b in enumerate(_list(f"{f}: batch_sizes", data["batch_sizes"]))]
    user_regs = {}  # name -> ref of a user's regularizer ({path: ...} or {module: ...} entries)
    items = [_user_regularizer(f"{f}: regularizers[{i}]", item, pathlib.Path(f).parent, user_regs)
             for i, item in enumerate(_list(f"{f}: regularizers", data["regularizers"]))]
    settings = [_setting(f"{f}: regularizers[{i}]", item) for i, item in enumerate(items)]
    accel = data.get("accelerator_types", [None])
    accel = [None] if accel in (None, []) else _list(f"{f}: accelerator_types", accel)
    for i, a in enumerate(accel):
        if a is not None and not isinstance(a, str):
            _fail(f"{f}: accelerator_types[{i}]", f"{a!r} is not a string (an accelerator type, e.g. H100)")

    workloads, modules = [], dict(WORKLOADS)  # modules: name -> workload module, or a user's (UserWorkload)
    reg_names = sorted({n for s in settings for n, _ in s})
    for i, w in enumerate(_list(f"{f}: workloads", data["workloads"])):
        where = f"{f}: workloads[{i}]"
        spec = {"name": w} if isinstance(w, str) else w
        user = isinstance(spec, dict) and ("path" in spec or "module" in spec)
        if not isinstance(spec, dict) or not (user or "name" in spec) or ("path" in spec and "module" in spec):
            _fail(where, f"expected a workload name or a mapping with one of 'name', 'path', 'module', got {w!r}")
        for key in spec:
            if key not in WORKLOAD_KEYS:
                _fail(where, f"unknown key {key!r}{did_you_mean(key, WORKLOAD_KEYS)}")
        if user:
            from bench.workloads import external

            uw = external.resolve(spec, pathlib.Path(f).parent, where, backend, reg_names)
            if uw.NAME in modules:
                _fail(where, f"workload {uw.NAME!r} is named twice; give one a NAME (or `name:`) of its own")
            modules[uw.NAME] = uw
            spec = {**spec, "name": uw.NAME, "model": uw.model}
        else:
            _choice(f"{where}.name", spec["name"], list(WORKLOADS))
        for key, high in (("max_train_samples", 1 << 31), ("steps_per_epoch", 1 << 24), ("epochs", MAX_EPOCHS)):
            if spec.get(key) is not None:
                _int(f"{where}.{key}", spec[key], 1, high)
        tgt = as_number(spec.get("target_val_accuracy"))
        if tgt is not None and (not is_number(tgt) or not 0 < tgt <= 1):
            _fail(f"{where}.target_val_accuracy", f"{tgt!r} is not in (0, 1]")
        spec = {**spec, "target_val_accuracy": tgt} if tgt is not None else spec
        wb = spec.get("batch_sizes")
        if wb is not None:
            wb = [_int(f"{where}.batch_sizes[{j}]", b, 1, 1 << 20) for j, b in enumerate(_list(f"{where}.batch_sizes", wb))]
        module = modules[spec["name"]]
        model = spec.get("model")
        if user:
            pass  # checked by external.resolve
        elif getattr(module, "MODEL", None):
            from bench.workloads.common import model_options

            model = model_options(module.MODEL, model, f"{where}.model", getattr(module, "check_model", None))
        elif model is not None:
            _fail(f"{where}.model", f"{spec['name']} has no model options")
        workloads.append({**spec, "batch_sizes": wb, "model": model})

    names = [regularizers.setting_label(s) for s in settings]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        _fail(f"{f}: regularizers", f"setting {sorted(dupes)[0]!r} is listed twice")

    not_applicable = []
    for i, reg in enumerate(settings):
        reasons = [regularizers.not_applicable(reg, modules[w["name"]]) for w in workloads]
        if all(reasons):
            where, what = f"{f}: regularizers[{i}]", names[i]
            for j, (name, _) in enumerate(reg):  # name the entry that applies nowhere, if one does
                if all(regularizers.not_applicable([(name, {})], modules[w["name"]]) for w in workloads):
                    where += (f"[{j}]" if isinstance(data["regularizers"][i], list) else "") + f".{name}"
                    what = name
                    break
            _fail(where, f"{what} applies to none of this suite's workloads ({'; '.join(dict.fromkeys(reasons))})")
        not_applicable += [{"workload": w["name"], "setting": names[i], "reason": r}
                           for w, r in zip(workloads, reasons) if r]
    skip = {(n["workload"], n["setting"]) for n in not_applicable}

    cells = []
    for w in workloads:
        for reg in settings:
            if (w["name"], regularizers.setting_label(reg)) in skip:
                continue
            for prec in precisions:
                for bs in w["batch_sizes"] or batch_sizes:
                    for kind, acc in _placements(kinds, accel):
                        threads = host_cpus if kind == "gpu" else cpus  # GPU trials are capped too
                        cells.append(dict(
                            workload=w["name"], regularizers=reg, precision=prec, batch_size=bs,
                            backend=backend, epochs=w.get("epochs") or epochs, learning_rate=float(lr),
                            target_val_accuracy=w.get("target_val_accuracy"), jit_compile=jit,
                            max_train_samples=w.get("max_train_samples"), steps_per_epoch=w.get("steps_per_epoch"),
                            cpu_threads=threads, timeout_s=float(timeout), device=kind,
                            allow_slow_precision=allow_slow, accelerator_type=acc, model=w["model"],
                            float32_matmul=f32, user_code=_user_code(modules[w["name"]], reg, user_regs)))
    # Repeats interleave (all cells of repeat 0, then repeat 1, ...) and the cells of each repeat run
    # in a random order, seeded (suite seed, repeat): drift and neighbours hit every setting alike;
    # or, with order: pairs, each baseline beside its settings so a run cut short holds whole pairs.
    trials = tuple(Trial(**cells[i], repeat=r, seed=seed + r)
                   for r in range(repeats) for i in _cell_order(cells, order, precisions, [seed, r]))
    paired = _paired(f"{f}: paired", data.get("paired"))

    resolved = {
        "name": name, "description": description, "source": source, "backend": backend,
        "workloads": workloads, "regularizers": [[{"name": n, "params": p} for n, p in s] for s in settings],
        "settings": names, "precisions": precisions, "batch_sizes": batch_sizes, "repeats": repeats,
        "epochs": epochs, "seed": seed, "learning_rate": float(lr), "jit_compile": jit, "float32_matmul": f32,
        "isolation": isolation, "device": device, "cpus_per_trial": cpus, "devices": list(kinds),
        "gpu_host_cpus": host_cpus, "timeout_s": float(timeout), "allow_slow_precision": allow_slow,
        "accelerator_types": accel, "max_retries": retries, "expected_trial_s": float(expected),
        "order": ORDERS[order], "paired": paired or False,
        "not_applicable": not_applicable,
    }
    return Suite(name=name, description=resolved["description"], source=source, trials=trials,
                 isolation=isolation, cpus_per_trial=cpus, device=device, expected_trial_s=float(expected),
                 max_retries=retries, resolved=resolved, paired=paired,
                 not_applicable=tuple(not_applicable), devices=tuple(kinds), gpu_host_cpus=host_cpus)


def _user_regularizer(where: str, item, base_dir: pathlib.Path, user_regs: dict):
    """A `{path: my_reg.py}` or `{module: ...}` entry (optionally with params): the user's regularizer
    registered (bench.regularizers.from_module) and the entry as a setting of it; others as they are."""
    if not (isinstance(item, dict) and ("path" in item or "module" in item)):
        return item
    from bench import usercode

    for key in item:
        if key not in USER_REGULARIZER_KEYS:
            _fail(where, f"unknown key {key!r}{did_you_mean(key, USER_REGULARIZER_KEYS)}")
    ref, module = usercode.resolve(item, base_dir, where)
    field = f"{where}.{'path' if 'path' in item else 'module'}"
    entry = regularizers.from_module(module, f"{field}: {usercode.source_name(ref)}")
    if entry.name in user_regs and user_regs[entry.name]["sha256"] != ref["sha256"]:
        _fail(field, f"regularizer {entry.name!r} is named by two different files")
    regularizers.REGISTRY[entry.name] = entry
    user_regs[entry.name] = {**ref, "defaults": {k: p.default for k, p in entry.params.items()}}
    return {"name": entry.name, "params": item.get("params") or {}}


def _user_code(workload, setting, user_regs: dict) -> dict | None:
    """The trial's `user_code`: the refs of the user's workload and regularizers it runs, or None."""
    w = getattr(workload, "ref", None)
    regs = {n: user_regs[n] for n, _ in setting if n in user_regs}
    return {"workload": w, "regularizers": regs} if w or regs else None


def _devices(f: str, data: dict, isolation: str) -> tuple[list, int]:
    """`devices: [gpu, cpu]` (every trial once per kind) and `gpu_host_cpus`; ([], 1) when absent."""
    host_cpus = _int(f"{f}: gpu_host_cpus", data.get("gpu_host_cpus", 1), 1, 1024)
    if "devices" not in data:
        return [], host_cpus
    if "device" in data:
        _fail(f"{f}: devices", "give either device (one kind) or devices (several), not both")
    kinds = _list(f"{f}: devices", data["devices"])
    for i, k in enumerate(kinds):
        _choice(f"{f}: devices[{i}]", k, ("gpu", "cpu"))
        if k in kinds[:i]:
            _fail(f"{f}: devices[{i}]", f"{k} is listed twice")
    if len(kinds) > 1 and isolation == "node":
        _fail(f"{f}: isolation", "node (one trial per node) cannot run GPU and CPU trials side by side; "
                                 "use isolation: gpu with devices")
    return kinds, host_cpus


def _placements(kinds, accel) -> list[tuple]:
    """(device kind, accelerator type) of each copy of a cell: GPU copies once per accelerator type,
    CPU copies once (an accelerator type pins GPUs only)."""
    if not kinds:
        return [(None, a) for a in accel]
    return [("gpu", a) for a in accel] * ("gpu" in kinds) + [("cpu", None)] * ("cpu" in kinds)


def filter_trials(trials, pattern: str | None):
    """--only PATTERN: glob over trial ids (e.g. '*l2*float32*')."""
    if not pattern:
        return list(trials)
    import fnmatch

    return [t for t in trials if fnmatch.fnmatch(t.trial_id, pattern) or pattern in t.trial_id]
