"""Seaborn figures of overhead tables, curves and hardware comparisons.

Every function takes a table from this package and returns a matplotlib Figure (built without
pyplot, so no display backend is needed and nothing global is touched). Bars show the estimate,
whiskers the 95% confidence interval; pale bars are not distinguishable from noise, hatched bars have too
few repeats for a CI. The value axis holds every estimate and every interval end within CLIP_FACTOR
times the largest estimate; a wider interval is drawn to the axis edge and its end written there.
"""
from __future__ import annotations

import io
import textwrap
import warnings

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from analysis import stats
from analysis.axes import short_device
from analysis.cells import BASELINE
from analysis.overheads import METRIC_BY_NAME

MAX_PANELS = 6  # rows of facets drawn; the rest are in the tables
PRECISION_ORDER = ["float32", "mixed_bfloat16", "mixed_float16"]
_THEME = {"style": "whitegrid", "context": "notebook", "font_scale": 0.9}
CLIP_FACTOR = 3.0  # interval ends beyond this many times the largest |estimate| are clipped at the axis edge


def _figure(n_rows: int, n_cols: int, width: float = 4.6, height: float = 3.0, *, left: float = 1.0,
            right: float = 0.3, top: float = 0.8, bottom: float = 0.9, **kw) -> tuple[Figure, np.ndarray]:
    """Figure with a grid of axes, each `width` x `height` inches (incl. its title), margins in inches.

    Fixed margins instead of constrained layout: layout solving dominated report time on big runs."""
    sns.set_theme(**_THEME)
    w = left + right + width * n_cols
    h = top + bottom + height * n_rows
    fig = Figure(figsize=(w, h))
    grid = dict(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h,
                hspace=0.55 / max(0.5, height - 0.55), wspace=0.12 if kw.get("sharey") else 0.3)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, gridspec_kw=grid, **kw)
    fig.suptitle("", y=1 - 0.1 / h)
    return fig, axes


def _finite(values: pd.Series) -> np.ndarray:
    return np.isfinite(pd.to_numeric(values, errors="coerce").to_numpy(dtype=float))


def _title(fig: Figure, text: str) -> None:
    fig.suptitle(text, fontsize=10, y=1 - 0.1 / fig.get_figheight(), va="top")


def add_panel(df: pd.DataFrame) -> pd.DataFrame:
    """Add a `panel` label: workload, plus batch/device/backend where these vary in df."""
    df = df.copy()
    label = df["workload"].astype(str)
    if "batch_size" in df and df["batch_size"].nunique() > 1:
        label = label + " b" + df["batch_size"].astype(str)
    if "device_name" in df and df["device_name"].nunique() > 1:
        names = df["device_name"].astype(str)
        label = label + " · " + names.map({n: short_device(n) for n in names.unique()})
    if "backend" in df and df["backend"].nunique() > 1:
        label = label + " · " + df["backend"].astype(str)
    for key, short in (("epochs", "ep"), ("learning_rate", "lr"), ("steps_per_epoch", "spe"),
                       ("max_train_samples", "n"), ("cpu_threads", "threads"), ("start_method", "start ")):  # any other pairing key that varies gets its own panel
        if key in df and df[key].nunique() > 1:
            label = label + f" {short}" + df[key].astype(str)
    df["panel"] = label
    return df


def _precisions(df: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(df["precision"]))
    return [p for p in PRECISION_ORDER if p in present] + [p for p in present if p not in PRECISION_ORDER]


def _truncate(panels: list, title: str) -> tuple[list, str]:
    if len(panels) > MAX_PANELS:
        return panels[:MAX_PANELS], f"{title} (first {MAX_PANELS} of {len(panels)} panels; all in the tables)"
    return panels, title


def _empty(message: str) -> Figure:
    """A small figure that says why there is nothing to draw."""
    fig, axes = _figure(1, 1, width=8.0, height=1.0, left=0.2, top=0.2, bottom=0.2)
    axes[0, 0].axis("off")
    axes[0, 0].text(0.5, 0.5, textwrap.fill(message, 90), ha="center", va="center")
    return fig


def axis_range(x, lo, hi, floor: float = 5.0) -> tuple[float, float]:
    """(left, right) of a value axis: 0, every estimate x, and every interval end within CLIP_FACTOR x
    the largest |x| (at least `floor`), with a margin. Ends beyond it are clipped (`whiskers`)."""
    x, lo, hi = (np.asarray(v, dtype=float).ravel() for v in (x, lo, hi))
    x = x[np.isfinite(x)]
    cap = CLIP_FACTOR * max(float(np.abs(x).max()) if x.size else 0.0, floor)
    ends = np.clip(np.concatenate([[0.0], x, lo[np.isfinite(lo)], hi[np.isfinite(hi)]]), -cap, cap)
    pad = 0.06 * ((ends.max() - ends.min()) or 1.0)
    return float(ends.min() - pad), float(ends.max() + pad)


def whiskers(ax, x, y, lo, hi, limits: tuple[float, float], fmt: str = "{:+.0f}%") -> None:
    """95% interval whiskers [lo, hi] around x at y; an end beyond `limits` is drawn to the axis edge
    with an arrow and its value written beside it (ax.texts), never off the page."""
    x, y, lo, hi = (np.asarray(v, dtype=float) for v in (x, y, lo, hi))
    ok = np.isfinite(x) & np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return
    left, right = limits
    clo, chi = np.clip(lo, left, right), np.clip(hi, left, right)
    ax.errorbar(x[ok], y[ok], xerr=[x[ok] - clo[ok], chi[ok] - x[ok]], fmt="none", ecolor="0.15", capsize=2.5,
                linewidth=1)
    for xi, yi, l, h in zip(x[ok], y[ok], lo[ok], hi[ok]):
        if h > right:
            ax.text(right, yi, f"CI to {fmt.format(h)} \u25b8", ha="right", va="bottom", fontsize=7, color="firebrick")
        if l < left:
            ax.text(left, yi, f"\u25c2 CI to {fmt.format(l)}", ha="left", va="bottom", fontsize=7, color="firebrick")
    ax.set_xlim(left, right)


def _bars_with_ci(ax, y, rows: pd.DataFrame, column: str, h: float, color, label: str,
                  limits: tuple[float, float], fmt: str) -> np.ndarray:
    """Horizontal bars of rows[column] at y with whiskers from rows' ci_low/ci_high; returns x."""
    x = rows[column].to_numpy(dtype=float)
    good = np.isfinite(x)
    ax.barh(y[good], x[good], height=h * 0.9, color=color, label=label)
    whiskers(ax, x, y, rows["ci_low"], rows["ci_high"], limits, fmt)
    return x


def overhead_bars(table: pd.DataFrame, metrics=("step_time",), title: str | None = None) -> Figure:
    """Horizontal bars of percent change vs baseline per setting, rows of workloads, columns of precisions.

    table: analysis.overhead() output. metrics: one or more metric names, drawn side by side.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    df = table[table["metric"].isin(metrics) & _finite(table["change_pct"])]
    metrics = [m for m in metrics if (df["metric"] == m).any()] or metrics
    labels = {m: METRIC_BY_NAME[m].label for m in metrics}
    title = title or ("Overhead vs baseline: " + ", ".join(labels.values()))
    if df.empty:
        return _empty(f"{title}: no data")
    df = add_panel(df)
    panels, title = _truncate(list(dict.fromkeys(df["panel"])), title)
    precisions = _precisions(df)
    settings = sorted(df["setting"].unique())
    fig, axes = _figure(len(panels), len(precisions), height=0.7 + 0.25 * len(settings) * len(metrics),
                        left=0.3 + 0.075 * max(len(s) for s in settings), sharex=True)
    palette = dict(zip(metrics, sns.color_palette("deep", len(metrics))))
    h = 0.8 / len(metrics)
    limits = axis_range(df["change_pct"], df["ci_low_pct"], df["ci_high_pct"])
    for i, panel in enumerate(panels):
        for j, precision in enumerate(precisions):
            ax = axes[i, j]
            sub = df[(df["panel"] == panel) & (df["precision"] == precision)]
            for k, m in enumerate(metrics):
                rows = sub[sub["metric"] == m].set_index("setting").reindex(settings)
                y = np.arange(len(settings)) - 0.4 + h * (k + 0.5)
                x = rows["change_pct"].to_numpy(dtype=float)
                mk = rows["mark"].fillna(stats.NO_DATA).to_numpy()
                alpha = np.where(mk == stats.SIGNIFICANT, 1.0, 0.35)
                for yy, xx, a, mm in zip(y, x, alpha, mk):
                    if np.isfinite(xx):
                        ax.barh(yy, xx, height=h * 0.9, color=palette[m], alpha=a,
                                hatch="//" if mm == stats.TOO_FEW else None, edgecolor="0.3", linewidth=0.4)
                unit = "{:+.0f} pp" if METRIC_BY_NAME[m].kind == "delta" else "{:+.0f}%"
                whiskers(ax, x, y, rows["ci_low_pct"], rows["ci_high_pct"], limits, unit)
            ax.set_xlim(*limits)
            ax.axvline(0, color="0.2", linewidth=0.8)
            ax.set_yticks(np.arange(len(settings)), settings if j == 0 else [""] * len(settings))
            ax.invert_yaxis()
            ax.set_title(f"{panel} · {precision}", fontsize=9)
            if i == len(panels) - 1:
                unit = "pp" if all(METRIC_BY_NAME[m].kind == "delta" for m in metrics) else "%"
                ax.set_xlabel(f"change vs baseline ({unit})")
    handles = [Patch(color=palette[m], label=labels[m]) for m in metrics] if len(metrics) > 1 else []
    handles += [Patch(facecolor="0.5", alpha=1.0, label="CI excludes 0"),
                Patch(facecolor="0.5", alpha=0.35, label="CI includes 0 (noise)"),
                Patch(facecolor="white", edgecolor="0.3", hatch="//", label="too few repeats (no CI)")]
    fig.legend(handles=handles, loc="lower center", ncols=min(len(handles), 5), fontsize=8, frameon=False)
    _title(fig, f"{title}\nbars: estimate; whiskers: 95% confidence interval")
    return fig


def accuracy_curves(curves: pd.DataFrame, title: str = "Validation accuracy vs wall time") -> Figure:
    """Mean validation accuracy per epoch against mean wall time, one line per setting."""
    return learning_curves(curves, "val_accuracy", "validation accuracy", title)


def loss_curves(curves: pd.DataFrame, title: str = "Validation loss vs wall time") -> Figure:
    """Mean validation cross-entropy per epoch (without the L1/L2 penalty, so settings compare;
    the total loss where a trial recorded no cross-entropy) against mean wall time."""
    df = curves
    if "val_xent_loss" in df and "val_loss" in df:
        df = df.assign(val_xent_loss=pd.to_numeric(df["val_xent_loss"], errors="coerce").fillna(
            pd.to_numeric(df["val_loss"], errors="coerce")))
    return learning_curves(df, "val_xent_loss" if "val_xent_loss" in df else "val_loss",
                           "validation loss (cross-entropy)", title)


def learning_curves(curves: pd.DataFrame, column: str, label: str, title: str) -> Figure:
    """Mean `column` per epoch against mean wall time, one line per setting, panels by workload and precision."""
    df = curves.dropna(subset=[column, "wall_s"]) if column in curves else curves.iloc[:0]
    if df.empty:
        return _empty(f"{title}: no curves")
    keys = [k for k in ("workload", "batch_size", "device_name", "backend") if k in df]
    mean = df.groupby(keys + ["precision", "setting", "epoch"], sort=False, dropna=False)[
        ["wall_s", column]].mean().reset_index()
    mean = add_panel(mean)
    panels, title = _truncate(list(dict.fromkeys(mean["panel"])), title)
    precisions = _precisions(mean)
    settings = sorted(mean["setting"].unique())
    palette = dict(zip(settings, sns.color_palette("tab10" if len(settings) <= 10 else "husl", len(settings))))
    fig, axes = _figure(len(panels), len(precisions), width=3.3, height=2.8, left=0.8, right=0.3 + 0.08 * max(
        len(s) for s in settings) + 0.3, top=0.6, bottom=0.7, sharey="row")  # narrow: accuracy and loss side by side
    for i, panel in enumerate(panels):
        for j, precision in enumerate(precisions):
            ax = axes[i, j]
            sub = mean[(mean["panel"] == panel) & (mean["precision"] == precision)]
            if not sub.empty:
                sns.lineplot(sub, x="wall_s", y=column, hue="setting", palette=palette, marker="o",
                             markersize=4, sort=False, estimator=None, ax=ax, legend=False,
                             units="setting", linewidth=1.2)
            else:
                ax.text(0.5, 0.5, "no curves", ha="center", va="center", transform=ax.transAxes, color="0.4")
            ax.set_title(f"{panel} · {precision}", fontsize=9)
            ax.set_xlabel("wall time since start (s)" if i == len(panels) - 1 else "")
            ax.set_ylabel(label if j == 0 else "")
    handles = [Patch(color=palette[s], label=s) for s in settings]
    fig.legend(handles=handles, loc="upper right", fontsize=8, title="setting", frameon=False,
               bbox_to_anchor=(1.0, 1 - 0.5 / fig.get_figheight()))
    _title(fig, f"{title} (mean over repeats per epoch)")
    return fig


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of points not dominated when minimizing x and maximizing y."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.ones(len(x), bool)
    for i in range(len(x)):
        dominated = (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        keep[i] = not dominated.any()
    return keep


def cost_benefit(table: pd.DataFrame, title: str = "Cost vs benefit of each regularizer") -> Figure:
    """Step-time overhead (%) against best-val-accuracy gain (pp); the Pareto front is outlined."""
    cost = table[table["metric"] == "step_time"]
    gain = table[table["metric"] == "best_val_accuracy"]
    keys = [c for c in table.columns if c in ("workload", "precision", "batch_size", "backend", "device_name",
                                              "epochs", "learning_rate", "steps_per_epoch", "max_train_samples",
                                              "setting")]
    df = cost[keys + ["change_pct"]].merge(gain[keys + ["change_pct"]], on=keys, suffixes=("_cost", "_gain"))
    df = df.dropna(subset=["change_pct_cost", "change_pct_gain"])
    if df.empty:
        return _empty(f"{title}: needs step time and accuracy for at least one regularizer")
    base = df.drop_duplicates([k for k in keys if k != "setting"]).assign(
        setting=BASELINE, change_pct_cost=0.0, change_pct_gain=0.0)
    df = add_panel(pd.concat([base, df], ignore_index=True))
    panels, title = _truncate(list(dict.fromkeys(df["panel"])), title)
    precisions = _precisions(df)
    palette = dict(zip(precisions, sns.color_palette("deep", len(precisions))))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = _figure(rows, cols, width=5.2, height=4.0, left=0.8, top=0.6, bottom=0.7)
    for n, panel in enumerate(panels):
        ax = axes[n // cols, n % cols]
        sub = df[df["panel"] == panel]
        sns.scatterplot(sub, x="change_pct_cost", y="change_pct_gain", hue="precision", palette=palette, s=40,
                        ax=ax, legend=n == 0, hue_order=precisions)
        for precision, group in sub.groupby("precision"):
            front = group[pareto_front(group["change_pct_cost"], group["change_pct_gain"])]
            front = front.sort_values("change_pct_cost")
            ax.plot(front["change_pct_cost"], front["change_pct_gain"], color=palette[precision], linewidth=1.5,
                    drawstyle="steps-post", alpha=0.8)
            ax.scatter(front["change_pct_cost"], front["change_pct_gain"], s=110, facecolors="none",
                       edgecolors=palette[precision], linewidths=1.8)
        for row in sub.itertuples():
            ax.annotate(row.setting, (row.change_pct_cost, row.change_pct_gain), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        ax.axhline(0, color="0.5", linewidth=0.6)
        ax.axvline(0, color="0.5", linewidth=0.6)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("step-time overhead vs baseline (%)")
        ax.set_ylabel("best val accuracy gain (pp)")
    for n in range(len(panels), rows * cols):
        axes[n // cols, n % cols].axis("off")
    _title(fig, f"{title}: upper left is better; circled points form the Pareto front")
    return fig


def speedup_bars(speedup: pd.DataFrame, title: str = "Mixed-precision speedup over float32") -> Figure:
    """Speedup (float32 step time / mixed step time) per setting, one bar per precision; x marks erased gains."""
    df = speedup[_finite(speedup["speedup"])]
    if df.empty:
        return _empty(f"{title}: no data (needs ok trials at float32 and at a mixed precision of the same cell)")
    df = add_panel(df)
    panels, title = _truncate(list(dict.fromkeys(df["panel"])), title)
    precisions = _precisions(df)
    settings = sorted(df["setting"].unique(), key=lambda s: (s != BASELINE, s))
    palette = dict(zip(precisions, sns.color_palette("deep", len(precisions))))
    fig, axes = _figure(len(panels), 1, width=7.0, height=0.8 + 0.25 * len(settings) * len(precisions),
                        left=0.3 + 0.075 * max(len(s) for s in settings))
    h = 0.8 / len(precisions)
    for i, panel in enumerate(panels):
        ax = axes[i, 0]
        sub = df[df["panel"] == panel]
        limits = axis_range(sub["speedup"], sub["ci_low"], sub["ci_high"], floor=1.0)
        for k, precision in enumerate(precisions):
            rows = sub[sub["precision"] == precision].set_index("setting").reindex(settings)
            y = np.arange(len(settings)) - 0.4 + h * (k + 0.5)
            x = _bars_with_ci(ax, y, rows, "speedup", h, palette[precision], precision, limits, "{:.2f}x")
            for yy, xx, verdict in zip(y, x, rows["verdict"].fillna("")):
                if verdict == "erases the mixed-precision gain":
                    ax.text(xx, yy, "  gain erased", va="center", fontsize=7, color="firebrick")
        ax.axvline(1.0, color="0.2", linewidth=0.8)
        ax.set_yticks(np.arange(len(settings)), settings)
        ax.invert_yaxis()
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("speedup over float32 (x, float32 step time / mixed step time)")
        ax.legend(fontsize=8, loc="lower right")
    _title(fig, f"{title}\nwhiskers: 95% t interval; line at 1 = no gain")
    return fig


def hardware_heatmap(table: pd.DataFrame, metric: str = "step_time",
                     title: str = "Step-time overhead by device (%)", by: str | None = None) -> Figure:
    """Heatmap: rows workload · precision · setting, columns device (· backend), or the labels in
    column `by`; cells percent change.

    '~' marks a CI that includes no change, '?' too few repeats."""
    df = table[(table["metric"] == metric)].copy() if len(table) else table
    df = df[_finite(df["change_pct"])] if len(df) else df
    if df.empty:
        return _empty(f"{title}: no data")
    if by is not None:
        df["group"] = df[by].astype(str)
    else:
        df["group"] = df["device_name"].map(short_device)
        if df["backend"].nunique() > 1:
            df["group"] = df["group"] + " · " + df["backend"]
    df["row"] = df["workload"] + " · " + df["precision"] + " · " + df["setting"]
    df["label"] = df["change_pct"].map(lambda v: f"{v:+.0f}") + df["mark"].map(
        {stats.NOISE: "~", stats.TOO_FEW: "?"}).fillna("")
    df["group"] = df["group"].str.replace(" · ", "\n")
    values = df.pivot_table(index="row", columns="group", values="change_pct", aggfunc="mean")
    labels = df.pivot_table(index="row", columns="group", values="label", aggfunc="first").reindex_like(values)
    rows_max = 60
    if len(values) > rows_max:
        values, labels = values.iloc[:rows_max], labels.iloc[:rows_max]
        title += f" (first {rows_max} rows; all in the tables)"
    fig, axes = _figure(1, 1, width=1.6 + 1.6 * values.shape[1], height=0.28 * len(values),
                        left=0.3 + 0.07 * max(len(str(r)) for r in values.index), top=0.8, bottom=1.1)
    lim = float(np.nanpercentile(np.abs(values.to_numpy()), 95)) if values.size else 1.0
    with warnings.catch_warnings():  # seaborn 0.13 calls a matplotlib API that warns of its deprecation
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        sns.heatmap(values, annot=labels.fillna("").to_numpy(), fmt="", cmap="vlag", center=0, vmin=-lim, vmax=lim,
                    linewidths=0.5, ax=axes[0, 0], cbar_kws={"label": "change vs baseline (%)"},
                    annot_kws={"size": 8})
    axes[0, 0].set_xlabel(by or "device")
    axes[0, 0].set_ylabel("workload · precision · setting")
    _title(fig, f"{title}\n~ CI includes 0 (noise), ? too few repeats")
    return fig


def throughput_bars(throughput: pd.DataFrame, title: str = "Baseline throughput by device and precision") -> Figure:
    """Baseline samples/s per device, one bar per precision, with a 95% t interval (compare view)."""
    df = throughput.dropna(subset=["samples_per_s"])
    if df.empty:
        return _empty(f"{title}: no data")
    workloads = list(dict.fromkeys(df["workload"]))
    workloads, title = _truncate(workloads, title)
    precisions = _precisions(df)
    fig, axes = _figure(len(workloads), 1, width=7.0, height=0.8 + 0.3 * df["device"].nunique() * len(precisions),
                        left=0.3 + 0.075 * max(len(str(d)) for d in df["device"]))
    palette = dict(zip(precisions, sns.color_palette("deep", len(precisions))))
    for i, w in enumerate(workloads):
        ax = axes[i, 0]
        sub = df[df["workload"] == w]
        devices = list(dict.fromkeys(sub["device"]))
        h = 0.8 / len(precisions)
        limits = axis_range(sub["samples_per_s"], sub["ci_low"], sub["ci_high"], floor=0.0)
        limits = (max(0.0, limits[0]), limits[1])  # a throughput axis starts at 0
        for k, p in enumerate(precisions):
            rows = sub[sub["precision"] == p].drop_duplicates("device").set_index("device").reindex(devices)
            y = np.arange(len(devices)) - 0.4 + h * (k + 0.5)
            _bars_with_ci(ax, y, rows, "samples_per_s", h, palette[p], p, limits, "{:.4g}")
        ax.set_yticks(np.arange(len(devices)), devices)
        ax.invert_yaxis()
        ax.set_title(w, fontsize=9)
        ax.set_xlabel("throughput (samples/s)")
        ax.legend(fontsize=8, loc="lower right")
    _title(fig, f"{title}\nwhiskers: 95% t interval over repeats")
    return fig


def to_png(fig: Figure, dpi: int = 96) -> bytes:
    """PNG bytes of a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
