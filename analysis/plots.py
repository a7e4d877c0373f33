"""The paper's robustness figures as PNG files (matplotlib, Agg canvas, no pyplot state).

Each function takes a tidy frame from analysis.groups and writes one PNG: one panel per metric,
numbers in %, methods in the paper's order and in fixed colours. The image size is fixed
(`figure_size`), the PNG carries no software or date metadata, so the same frame gives the same file.

    plot_groups      Fig. 1 / 3   bars: popular- vs niche-type users, methods side by side, seed sd bars
    plot_by_length   Fig. 4a      lines: metric per input-length bin (>= 3 bins), seed sd bars
    plot_setting     Fig. 4b/5/6  lines: metric vs a setting (user fraction or sparsity, m, p)
    plot_noise_term  Fig. 7       bars: CSRec-T with and without the noise-matrix term
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.tables import METHOD_NAMES, MODEL_NAMES, DATASET_NAMES, metric_name
from csrec.errors import CSRecError

DPI = 100
PANEL_INCHES = (4.0, 3.2)  # width per metric panel, height
COLOURS = {"base": "#7f7f7f", "softrec": "#ff7f0e", "csrec-m": "#1f77b4", "csrec-d": "#2ca02c", "csrec-t": "#d62728"}
GROUP_NAMES = {"popular": "popular-type", "niche": "niche-type"}
SETTING_NAMES = {"m": "number of teachers m", "subsample_ratio": "sub-sampling ratio p",
                 "user_fraction": "fraction of users kept", "sparsity": "sparsity", "noise_term": "noise-matrix term"}


def figure_size(n_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a figure with `n_panels` metric panels."""
    return round(PANEL_INCHES[0] * n_panels * DPI), round(PANEL_INCHES[1] * DPI)


def _figure(n_panels: int) -> tuple[Figure, list]:
    figure = Figure(figsize=(PANEL_INCHES[0] * n_panels, PANEL_INCHES[1]), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, n_panels, squeeze=False)[0]
    return figure, list(axes)


def _save(figure: Figure, path: str | Path, title: str | None) -> Path:
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()  # rearranges inside the fixed canvas; bbox_inches="tight" would change the size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def _one_cell(frame: pd.DataFrame, what: str, datasets: int = 1) -> str:
    """The default title "Dataset / Model"; an error unless the frame holds one model and (unless
    `datasets` is 0, any number) one data set."""
    if frame.empty:
        raise CSRecError(f"no rows to plot for {what}; the experiment has no finished trial there yet")
    names = [list(dict.fromkeys(frame[column])) for column in ("dataset", "model")]
    if len(names[1]) != 1 or (datasets and len(names[0]) != datasets):
        raise CSRecError(f"{what}: the frame holds data sets {names[0]} and models {names[1]}; "
                         f"filter it to one model{' and one data set' if datasets else ''}")
    shown = DATASET_NAMES.get(names[0][0], names[0][0]) if len(names[0]) == 1 else f"{len(names[0])} data sets"
    return f"{shown} / {MODEL_NAMES.get(names[1][0], names[1][0])}"


def _methods(frame: pd.DataFrame) -> list[str]:
    seen = list(dict.fromkeys(frame["method"]))
    return [m for m in METHOD_NAMES if m in seen] + [m for m in seen if m not in METHOD_NAMES]


def _metrics(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["metric"]))


def _colour(method: str, i: int) -> str:
    return COLOURS.get(method, f"C{i % 10}")


_ERROR_BARS = ", bars: sd over seeds"


def _error(rows: pd.DataFrame, key: tuple) -> float:
    """The seed sd (in %) of one bar; 0 where there is none (one run, or no std column)."""
    if "std" not in rows or key not in rows.index or pd.isna(rows.loc[key, "std"]):
        return 0.0
    return float(rows.loc[key, "std"]) * 100


def _headroom(ax) -> None:
    """Bars start at 0 and leave the top quarter free for the legend."""
    top = ax.get_ylim()[1]
    ax.set_ylim(0, top * 1.3 if np.isfinite(top) and top > 0 else 1)


def plot_groups(frame: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Fig. 3: per metric, bars for popular- and niche-type users, one bar per method.

    `frame`: group_metrics rows of one (dataset, model); the "all" group is not drawn.
    """
    default = _one_cell(frame, "plot_groups")
    frame = frame[frame["group"].isin(GROUP_NAMES)]
    methods, metrics = _methods(frame), _metrics(frame)
    figure, axes = _figure(len(metrics))
    width = 0.8 / len(methods)
    for ax, metric in zip(axes, metrics):
        rows = frame[frame["metric"] == metric].set_index(["method", "group"])
        for i, method in enumerate(methods):
            heights = [rows["value"].get((method, g), np.nan) * 100 for g in GROUP_NAMES]
            errors = [_error(rows, (method, g)) for g in GROUP_NAMES]
            ax.bar(np.arange(len(GROUP_NAMES)) + (i - (len(methods) - 1) / 2) * width, heights, width,
                   yerr=errors, capsize=2, error_kw={"elinewidth": 0.8},
                   label=METHOD_NAMES.get(method, method), color=_colour(method, i))
        ax.set_xticks(range(len(GROUP_NAMES)), list(GROUP_NAMES.values()))
        ax.set_ylabel(f"{metric_name(metric)} (%){_ERROR_BARS if 'std' in frame else ''}")
        _headroom(ax)
    axes[0].legend(fontsize=7, ncol=3, loc="upper center")
    return _save(figure, path, title or default)


MIN_LENGTH_BINS = 3  # fewer bins do not show a trend over input length: the plot is refused


def plot_by_length(frame: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Fig. 4a: per metric, one line per method over the input-length bins (by_input_length rows),
    each bin labelled with its users; error bars: the sd over the seeds (the frame's `std`).

    Fewer than MIN_LENGTH_BINS bins (a file whose sequences have one length, Last.FM's windows) is
    an error: one or two points on a zoomed axis make a small gap look like a trend."""
    default = _one_cell(frame, "plot_by_length")
    methods, metrics = _methods(frame), _metrics(frame)
    labels = frame.drop_duplicates("bin_index").sort_values("bin_index")
    if len(labels) < MIN_LENGTH_BINS:
        shown = ", ".join(f"{b} ({n} users)" for b, n in zip(labels["bin"], labels["n_users"]))
        raise CSRecError(f"the test users' input lengths give {len(labels)} bin(s) ({shown}); a plot by input length "
                         f"needs at least {MIN_LENGTH_BINS}, so it is left out")
    figure, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        for i, method in enumerate(methods):
            rows = frame[(frame["metric"] == metric) & (frame["method"] == method)].sort_values("bin_index")
            errors = rows["std"] * 100 if "std" in rows else None
            ax.errorbar(rows["bin_index"], rows["value"] * 100, yerr=errors, marker="o", capsize=2,
                        label=METHOD_NAMES.get(method, method), color=_colour(method, i))
        ax.set_xticks(labels["bin_index"].tolist(), [f"{b}\nn={n}" for b, n in zip(labels["bin"], labels["n_users"])])
        ax.set_xlabel("input length (test users per bin)")
        ax.set_ylabel(f"{metric_name(metric)} (%){_ERROR_BARS if 'std' in frame else ''}")
    axes[0].legend(fontsize=7)
    return _save(figure, path, title or default)


def plot_setting(frame: pd.DataFrame, path: str | Path, x: str = "value", title: str | None = None) -> Path:
    """Fig. 4b, 5, 6: per metric, test mean (%) against column `x` of setting_study rows.

    x: "value" (the setting: m, p, user fraction) or "sparsity". A method the setting does not
    change (value NaN: Base for m, say) is a dashed horizontal line at its mean over the rows.
    One model; several data sets are allowed for the sparsity study (one data set per user fraction).
    """
    default = _one_cell(frame, "plot_setting", datasets=0)
    if x not in frame.columns:
        raise CSRecError(f"plot_setting: no column {x!r}; use 'value' or 'sparsity'")
    methods, metrics = _methods(frame), _metrics(frame)
    setting = frame["setting"].iloc[0] if "setting" in frame.columns and x == "value" else x
    figure, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        for i, method in enumerate(methods):
            rows = frame[(frame["metric"] == metric) & (frame["method"] == method)]
            name, colour = METHOD_NAMES.get(method, method), _colour(method, i)
            if rows["value"].isna().all():
                ax.axhline(rows["mean"].mean() * 100, linestyle="--", linewidth=1, label=name, color=colour)
                continue
            points = rows.dropna(subset=[x]).groupby(x, sort=True)["mean"].mean()
            ax.plot(points.index, points.to_numpy() * 100, marker="o", label=name, color=colour)
        ticks = sorted(frame[x].dropna().unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])  # the settings run, not a continuous scale
        ax.set_xlabel(SETTING_NAMES.get(setting, setting))
        ax.set_ylabel(f"{metric_name(metric)} (%)")
    axes[0].legend(fontsize=7)
    return _save(figure, path, title or default)


def plot_noise_term(frame: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Fig. 7: CSRec-T's test metrics with and without the noise-matrix term (setting_study rows of
    setting "noise_term"; value 1 is with, 0 without), one pair of bars per metric."""
    frame = frame[(frame["method"] == "csrec-t") & frame["value"].notna()]
    default = _one_cell(frame, "plot_noise_term")
    metrics = _metrics(frame)
    figure, axes = _figure(1)
    ax, width = axes[0], 0.35
    for i, (flag, label, colour) in enumerate(((1.0, "with", "#d62728"), (0.0, "without", "#9467bd"))):
        means = frame[frame["value"] == flag].groupby("metric")["mean"].mean()
        heights = [means.get(m, np.nan) * 100 for m in metrics]
        ax.bar(np.arange(len(metrics)) + (i - 0.5) * width, heights, width, label=label, color=colour)
    ax.set_xticks(range(len(metrics)), [metric_name(m) for m in metrics])
    ax.set_ylabel("CSRec-T test metric (%)")
    _headroom(ax)
    ax.legend(fontsize=7, ncol=2, loc="upper center")
    return _save(figure, path, title or default)
