"""Samples per joule and samples per dollar, per cell and compared group.

- samples per joule = 1 / energy per sample (NVML energy over the training window; GPUs only);
- samples per dollar = end-to-end training throughput (samples/s) x 3600 / the device's price
  per hour, from a price table the user passes (`--prices prices.yaml`: device name -> price per
  hour), as Lambda's GPU benchmark tables do.

An absent input is a marked gap, never a zero: the value is NaN and `*_gap` says why (no energy
measured and the recorded reason, or no price for that device in the table).

prices.yaml::

    NVIDIA H100 80GB HBM3: 2.49     # the device name as trials record it ...
    L4: 0.80                        # ... or its short name / accelerator type
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis import axes
from analysis.errors import AnalysisInputError
from bench import yamlfile
from bench.env import accelerator_type
from bench.errors import UserError

COLUMNS = ["n", "samples_per_s", "energy_per_sample_j", "samples_per_joule", "samples_per_joule_gap",
           "price_per_hour", "samples_per_dollar", "samples_per_dollar_gap"]


def load_prices(path) -> dict[str, float]:
    """Read a price table (device name -> price per hour); AnalysisInputError naming file and field."""
    path = Path(path)
    try:
        data = yamlfile.load(path)  # bounded: size, nesting, aliases, duplicate keys
    except UserError as e:
        raise AnalysisInputError(str(e)) from None
    if not isinstance(data, dict) or not data:
        raise AnalysisInputError(f"{path}: expected a mapping of device name -> price per hour")
    out = {}
    for name, price in data.items():
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not np.isfinite(price) or price <= 0:
            raise AnalysisInputError(f"{path}: {name}: {price!r} is not a positive price per hour")
        out[str(name)] = float(price)
    return out


def price_for(device_name, prices: dict[str, float]) -> float | None:
    """The price of a device: its recorded name, else its short name or accelerator type (any case)."""
    if not prices or not isinstance(device_name, str):
        return None
    if device_name in prices:
        return prices[device_name]
    lower = {k.lower(): v for k, v in prices.items()}
    for alias in (device_name, axes.short_device(device_name), accelerator_type(device_name)):
        if alias and alias.lower() in lower:
            return lower[alias.lower()]
    return None


def _energy_gap(reasons) -> str:
    for text in reasons:
        if isinstance(text, str):
            for part in text.split("; "):
                if part.startswith(("energy_per_sample_j:", "energy_j:")):
                    return "no energy measured (" + part.split(": ", 1)[1] + ")"
    return "no energy measured"


def efficiency(trials: pd.DataFrame, keys: list[str], prices: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per group of ok trials (`keys`): mean end-to-end samples/s and energy per sample,
    samples per joule and per dollar, with the reason for each gap."""
    ok = trials[trials["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=keys + COLUMNS)
    rows = []
    for key, g in ok.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        tput = pd.to_numeric(g["end_to_end_samples_per_s"], errors="coerce").dropna()
        eps = pd.to_numeric(g["energy_per_sample_j"], errors="coerce")
        eps = eps[eps > 0]
        spj = float(np.mean(1.0 / eps)) if len(eps) else np.nan
        names = g["device_name"].dropna().unique()
        price = price_for(names[0], prices or {}) if len(names) == 1 else None
        if not len(tput):
            dollar_gap = "no end-to-end throughput"
        elif prices is None:
            dollar_gap = "no price table (--prices)"
        elif price is None:
            dollar_gap = f"no price for {names[0] if len(names) == 1 else 'several devices'}"
        else:
            dollar_gap = ""
        rows.append((*key, len(g), float(tput.mean()) if len(tput) else np.nan,
                     float(eps.mean()) if len(eps) else np.nan, spj, "" if len(eps) else _energy_gap(g["null_reasons"]),
                     price if price is not None else np.nan,
                     float(tput.mean()) * 3600.0 / price if not dollar_gap else np.nan, dollar_gap))
    return pd.DataFrame(rows, columns=keys + COLUMNS)


def format_value(value: float, gap: str) -> str:
    """'1.23e+04' or 'gap: <why>' (never a zero for an absent input)."""
    return f"gap: {gap}" if gap or not np.isfinite(value) else f"{value:.4g}"
