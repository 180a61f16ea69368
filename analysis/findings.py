"""What a run found, in words and numbers, and what it could not decide, and why.

`findings(trials, sessions)` reads the run's own overhead table (step time from paired sessions
where the run has them, everything else from isolated trials; analysis/overheads.py) and its
mixed-precision speedups, and returns `Finding`s: a sentence with its figures, `decided` True
for what the run measured (a cost whose 95% interval excludes no change, or an interval narrow
enough to say "no measurable change"), False for what it could not tell (an interval too wide,
one repeat, no ok baseline, failed trials, cells that measure the host, a noisy machine). The
report opens with them; the end of `regbench run` can print the first few. Decided findings come
first, the biggest step-time costs leading.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis import paired, stats
from analysis.axes import short_device
from analysis.cells import BASELINE, CELL_KEYS, with_keys
from analysis.flags import cell_flags, flag_findings
from analysis.overheads import METRIC_BY_NAME, attention_note, attention_paths, overhead
from analysis.plots import PRECISION_ORDER
from analysis.speedups import ERASES, REFERENCE, precision_speedup

NARROW_PCT = paired.UNSTABLE_HALF_WIDTH_PCT  # a half-width (points) narrow enough that "no change" is an answer
MERGE_PCT = 2.0  # settings whose costs lie within this many points are said together ("l1 and l2 cost +6% to +7%")
MEMORY_MIN_PCT = 5.0  # memory changes smaller than this are not findings
CONTEXT_KEYS = [k for k in CELL_KEYS if k != "precision"]
_SHORT = {"batch_size": "batch ", "epochs": "epochs ", "learning_rate": "lr ", "steps_per_epoch": "steps/epoch ",
          "max_train_samples": "samples ", "cpu_threads": "threads ", "start_method": "start ",
          "float32_matmul": "float32 matmul "}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One sentence of the run's answer. numbers: the figures it quotes (setting, metric, and per
    precision the change in % or pp with its 95% interval), for a table or JSON."""

    text: str
    decided: bool
    kind: str  # step_time | precision | accuracy | memory | no_change | undecided | failed | host_bound | noise
    numbers: dict = dataclasses.field(default_factory=dict)
    weight: float = 0.0  # how much it matters: the largest |change| it quotes


def findings(trials: pd.DataFrame, sessions=None, *, table: pd.DataFrame | None = None,
             speedup: pd.DataFrame | None = None) -> list[Finding]:
    """The run's findings: decided ones first (step-time costs by size, then mixed precision,
    accuracy, memory, settings with no measurable cost), then what could not be decided.
    table/speedup: the run's analysis.overhead / precision_speedup when already computed."""
    table = overhead(trials, sessions=sessions) if table is None else table
    speedup = precision_speedup(trials) if speedup is None else speedup
    label = _contexts(table if len(table) else with_keys(trials, CELL_KEYS))
    out = []
    if len(table):
        t = with_keys(table, CELL_KEYS)
        for key, rows in t.groupby(CONTEXT_KEYS, sort=False, dropna=False):
            out += _step_time(label(key), rows[rows["metric"] == "step_time"])
            out += _accuracy(label(key), rows[rows["metric"] == "best_val_accuracy"])
            out += _memory(label(key), rows)
    if len(speedup):
        s = with_keys(speedup, CONTEXT_KEYS)
        for key, rows in s.groupby(CONTEXT_KEYS, sort=False, dropna=False):
            out += _precision(label(key), rows)
    out += _failed(trials) + _host_bound(trials) + _noise(sessions)
    order = ["step_time", "precision", "accuracy", "memory", "no_change"]
    return sorted(out, key=lambda f: (not f.decided, order.index(f.kind) if f.kind in order else len(order),
                                      -f.weight))


def _contexts(df: pd.DataFrame):
    """key (CONTEXT_KEYS) -> 'On Intel Xeon, digits_mlp' (+ the keys that vary in the run)."""
    vary = [k for k in CONTEXT_KEYS[1:] if k in df and k != "device_name" and df[k].nunique(dropna=False) > 1]

    def label(key) -> str:
        d = dict(zip(CONTEXT_KEYS, key))
        extra = "".join(f", {_SHORT.get(k, '')}{d[k]}" for k in vary)
        return f"On {short_device(d['device_name'])}, {d['workload']}{extra}"
    return label


def _precisions(rows: pd.DataFrame) -> pd.DataFrame:
    rank = {p: i for i, p in enumerate(PRECISION_ORDER)}
    return rows.assign(_rank=rows["precision"].map(lambda p: rank.get(p, len(rank)))).sort_values("_rank")


def _half(r) -> float:
    return (r["ci_high_pct"] - r["ci_low_pct"]) / 2


def _pm(v: float) -> str:
    return "±<0.1" if v < 0.05 else f"±{v:.1f}" if v < 1 else f"±{v:.0f}"


def _numbers(r) -> dict:
    return {"precision": r["precision"], "change": float(r["change_pct"]), "ci_low": float(r["ci_low_pct"]),
            "ci_high": float(r["ci_high_pct"]), "method": r["method"], "n": int(r["n_repeats"])}


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _step_time(where: str, rows: pd.DataFrame) -> list[Finding]:
    """Costs (interval excludes no change), 'no measurable change' (narrow interval around it), and
    the settings the run could not tell, with the reason."""
    out, costs, flat = [], [], []
    for setting, g in rows.groupby("setting", sort=False):
        g = _precisions(g)
        sig = g[g["mark"] == stats.SIGNIFICANT]
        narrow = g[(g["mark"] == stats.NOISE) & (g.apply(_half, axis=1) <= NARROW_PCT)]
        if len(sig) == len(g):
            costs.append((setting, sig))
        elif len(narrow) == len(g):
            flat.append((setting, narrow))
        else:
            out += [_cost(where, [(setting, sig)])] if len(sig) else []
            flat += [(setting, narrow)] if len(narrow) else []
        out += _undecided(where, setting, g[~g.index.isin(sig.index) & ~g.index.isin(narrow.index)])
    costs.sort(key=lambda c: -c[1]["change_pct"].max())
    group: list = []
    for item in costs:  # say settings of about the same cost together
        values = pd.concat([g["change_pct"] for _, g in group + [item]])
        if group and (values.max() - values.min() > MERGE_PCT
                      or list(item[1]["precision"]) != list(group[0][1]["precision"])):
            out.append(_cost(where, group))
            group = []
        group.append(item)
    if group:
        out.append(_cost(where, group))
    if flat:
        rows_ = pd.concat([g for _, g in flat])
        names = list(dict.fromkeys(s for s, _ in flat))
        precisions = list(dict.fromkeys(rows_["precision"]))
        out.append(Finding(
            f"{where}: {_join(names)} {'has' if len(names) == 1 else 'have'} no measurable step-time cost in "
            f"{_join(precisions)} (every interval includes no change and is within {_pm(rows_.apply(_half, axis=1).max())} "
            "points).", True, "no_change",
            {"metric": "step_time", "settings": names, "rows": [_numbers(r) for _, r in rows_.iterrows()]}))
    return out


def _cost(where: str, group: list) -> Finding:
    names = [s for s, _ in group]
    rows = pd.concat([g for _, g in group])
    precisions = list(dict.fromkeys(rows["precision"]))
    weight = float(rows["change_pct"].abs().max())
    verb = "costs" if len(names) == 1 else "cost"
    if len(names) == 1:
        parts = [f"{r['change_pct']:+.0f}%{' step time' if i == 0 else ''} ({_pm(_half(r))}) in {r['precision']}"
                 for i, (_, r) in enumerate(rows.iterrows())]
        text = f"{where}: {names[0]} {verb} {_join(parts)}."
    else:
        lo, hi = rows["change_pct"].min(), rows["change_pct"].max()
        span = f"{lo:+.0f}%" if f"{lo:+.0f}" == f"{hi:+.0f}" else f"{lo:+.0f}% to {hi:+.0f}%"
        text = (f"{where}: {_join(names)} {verb} {span} step time in {_join(precisions)} "
                f"(intervals within {_pm(rows.apply(_half, axis=1).max())}).")
    numbers = {"metric": "step_time", "setting": names[0] if len(names) == 1 else None, "settings": names,
               "rows": [{"setting": s, **_numbers(r)} for s, g in group for _, r in g.iterrows()]}
    return Finding(text, True, "step_time", numbers, weight)


def _undecided(where: str, setting: str, rows: pd.DataFrame, what: str = "step time") -> list[Finding]:
    out = []
    for _, r in rows.iterrows():
        p = r["precision"]
        if r["mark"] == stats.NOISE:
            why = (f"{r['change_pct']:+.0f}% [{r['ci_low_pct']:+.0f}, {r['ci_high_pct']:+.0f}]: the interval is too "
                   f"wide ({_pm(_half(r))} points) to tell; more repeats or sessions, or a quieter machine, would")
        elif r["mark"] == stats.TOO_FEW:
            unit = "session" if r["method"] == "paired sessions" else "repeat"
            why = f"{r['change_pct']:+.0f}% from one {unit}, no interval; {unit}s: 2 or more would decide it"
        elif r["mark"] == stats.NO_BASELINE:
            why = f"no baseline to compare with ({r['note'] or 'no ok baseline trial'})"
        else:
            continue  # no data: a metric this device does not record
        out.append(Finding(f"{where}: could not tell what {setting} does to {what} in {p}: {why}.", False, "undecided",
                           {"metric": r["metric"], "setting": setting, **_numbers(r), "mark": r["mark"]}))
    return out


def _accuracy(where: str, rows: pd.DataFrame) -> list[Finding]:
    out = []
    for setting, g in rows.groupby("setting", sort=False):
        sig = _precisions(g[g["mark"] == stats.SIGNIFICANT])
        if len(sig):
            parts = [f"{r['change_pct']:+.1f} pp ({_pm(_half(r))}) in {r['precision']}" for _, r in sig.iterrows()]
            out.append(Finding(f"{where}: {setting} changes best validation accuracy by {_join(parts)}.", True,
                               "accuracy", {"metric": "best_val_accuracy", "setting": setting,
                                            "rows": [_numbers(r) for _, r in sig.iterrows()]},
                               float(sig["change_pct"].abs().max())))
    for mark, why in ((stats.NOISE, "intervals include no change, up to {} pp"),
                      (stats.TOO_FEW, "one repeat, no interval")):
        wide = rows[rows["mark"] == mark]
        if len(wide):
            names = list(dict.fromkeys(wide["setting"]))
            half = _pm(wide.apply(_half, axis=1).max()) if mark == stats.NOISE else ""
            out.append(Finding(f"{where}: could not tell whether {_join(names)} change{'s' if len(names) == 1 else ''}"
                               f" best validation accuracy ({why.format(half)}).", False, "undecided",
                               {"metric": "best_val_accuracy", "settings": names, "mark": mark}))
    return out


def _memory(where: str, rows: pd.DataFrame) -> list[Finding]:
    out = []
    for metric in ("device_memory", "host_memory"):
        m = rows[(rows["metric"] == metric) & (rows["mark"] == stats.SIGNIFICANT)
                 & (rows["change_pct"].abs() >= MEMORY_MIN_PCT)]
        if m.empty:
            continue
        parts = [f"{s} {_join([f'{r.change_pct:+.0f}% in {r.precision}' for r in _precisions(g).itertuples()])}"
                 for s, g in m.groupby("setting", sort=False)]
        out.append(Finding(f"{where}: {METRIC_BY_NAME[metric].label}: {'; '.join(parts)}.", True, "memory",
                           {"metric": metric, "rows": [{"setting": r["setting"], **_numbers(r)} for _, r in m.iterrows()]},
                           float(m["change_pct"].abs().max())))
    return out


def _precision(where: str, rows: pd.DataFrame) -> list[Finding]:
    """The baseline's step time in each mixed precision against float32, and settings that erase the gain."""
    out = []
    for _, r in _precisions(rows[rows["setting"] == BASELINE]).iterrows():
        p, s = r["precision"], r["speedup"]
        if not np.isfinite(s):
            continue
        pct, lo, hi = (1 / s - 1) * 100, (1 / r["ci_high"] - 1) * 100, (1 / r["ci_low"] - 1) * 100
        nums = {"precision": p, "step_time_change": pct, "ci_low": lo, "ci_high": hi, "speedup": s,
                "n": int(r["n_repeats"])}
        if r["mark"] == stats.SIGNIFICANT:
            text = (f"{where}: {p} steps are {abs(pct):.0f}% {'faster' if pct < 0 else 'slower'} than {REFERENCE} "
                    f"here (baseline model, {_pm((hi - lo) / 2)}).")
            out.append(Finding(text, True, "precision", nums, abs(pct)))
        elif r["mark"] == stats.NOISE and (hi - lo) / 2 <= NARROW_PCT:
            out.append(Finding(f"{where}: {p} steps take as long as {REFERENCE} here (baseline model, "
                               f"{pct:+.0f}%, within {_pm((hi - lo) / 2)}).", True, "precision", nums))
        else:
            why = "one repeat, no interval" if r["mark"] == stats.TOO_FEW else f"interval [{lo:+.0f}, {hi:+.0f}] too wide"
            out.append(Finding(f"{where}: could not tell whether {p} steps are faster than {REFERENCE} "
                               f"({pct:+.0f}% step time; {why}).", False, "undecided", nums))
    for _, r in rows[rows["verdict"] == ERASES].iterrows():
        out.append(Finding(f"{where}: {r['setting']} erases the {r['precision']} gain (baseline {r['baseline_speedup']:.2f}x "
                           f"faster than {REFERENCE}, with {r['setting']} {r['speedup']:.2f}x).", True, "precision",
                           {"setting": r["setting"], "precision": r["precision"], "speedup": float(r["speedup"]),
                            "baseline_speedup": float(r["baseline_speedup"])}, float(r["baseline_speedup"] - 1) * 100))
    return out


def _failed(trials: pd.DataFrame) -> list[Finding]:
    """Per workload, device and status: how many trials were not ok, and the most common reason."""
    bad = trials[trials["status"] != "ok"] if len(trials) else trials
    out = []
    for (workload, device, status), g in bad.groupby(["workload", "device_name", "status"], sort=True, dropna=False):
        reasons = g["reason"].fillna("no reason recorded").map(lambda s: str(s).splitlines()[0][:160]).value_counts()
        precisions = _join(list(dict.fromkeys(_precisions(g)["precision"])))
        device = short_device(device) if isinstance(device, str) else "an unknown device"
        out.append(Finding(f"On {device}, {workload}: {len(g)} trials {status} ({precisions}), so "
                           f"nothing is measured there; most common reason: {reasons.index[0]} ({reasons.iloc[0]}x).",
                           False, "failed", {"workload": workload, "status": status, "trials": len(g),
                                             "reason": reasons.index[0], "reason_count": int(reasons.iloc[0])}))
    return out


def _host_bound(trials: pd.DataFrame) -> list[Finding]:
    """Cells whose figures measure the host, and settings that ran another attention kernel."""
    flags = cell_flags(trials)
    base = flags[(flags["flag"] == "not_gpu_bound") & (flags["setting"] == BASELINE)]
    out = [Finding(f"WARNING: the GPU baseline of {r['workload']} ({r['precision']}, {r['backend']}, batch "
                   f"{r['batch_size']}): {r['why']}; its overheads show host and launch cost.", False, "host_bound",
                   {"workload": r["workload"], "precision": r["precision"], "flag": r["flag"]})
           for r in base.to_dict("records")]
    out += [Finding(text, False, "host_bound") for text in flag_findings(flags)]
    paths = attention_paths(trials)
    for key in sorted(paths, key=str):
        note = attention_note(paths, key[:-1], key[-1])
        if note:
            cell = dict(zip(CELL_KEYS, key[:-1]))
            out.append(Finding(f"{key[-1]} on {cell['workload']} ({cell['precision']}, {cell['backend']}) ran another "
                               f"attention path than its baseline ({note}): its overheads include the kernel switch.",
                               False, "host_bound", {"setting": key[-1], "workload": cell["workload"]}))
    return out


def _noise(sessions) -> list[Finding]:
    """The A/A control's warnings: the machine moved under the run."""
    lines = paired.noise_lines(paired.estimates(sessions)) if len(paired.session_records(sessions)) else []
    return [Finding(line, False, "noise") for line in lines if line.startswith("WARNING")]
