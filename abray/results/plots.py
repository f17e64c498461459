"""Figures (matplotlib, PNG and SVG): accuracy against delay, loss curves, the quadratic stable region.

Each `*_figure` function draws and returns the Figure (what the tests inspect); the function of the same name
without `_figure` saves it next to `out` as PNG and SVG. Legends sit outside the axes, so they never cover a curve.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from ..training.data import CLASSES  # noqa: E402
from .summary import POOLED, SUMMARY_COLUMNS, final_epochs, grouping_columns, setting_label, summarize  # noqa: E402

SEED_STYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3))]
LOSS_AXIS_HEADROOM = 10.0  # the loss axis ends at this many times the largest first-epoch loss


def _save(fig, out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def _outside_legend(ax, handles=None, labels=None, below: bool = False):
    """A legend next to the axes (right) or under them (below), never over the data."""
    kwargs = dict(fontsize="small", frameon=False)
    if below:
        kwargs.update(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    else:
        kwargs.update(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if handles is None:
        return ax.legend(**kwargs)
    return ax.legend(handles, labels, **kwargs)


def _colours(labels) -> dict[str, str]:
    """A colour per setting, in sorted order: the accuracy and loss figures agree."""
    return {label: f"C{i % 10}" for i, label in enumerate(sorted(labels))}


def _setting_keys(frame: pd.DataFrame) -> list[str]:
    """What tells trials' settings apart, besides delay and seed: optimizer and every other swept column."""
    return [k for k in grouping_columns(final_epochs(frame)) if k != "delay"]


def _trial_key(frame: pd.DataFrame) -> list[str]:
    """The columns that name one trial: its id where the frame has one (Tune, the service), else its config."""
    return ["trial_id"] if "trial_id" in frame else grouping_columns(final_epochs(frame)) + [POOLED]


def _finite(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").replace([np.inf, -np.inf], np.nan)


def accuracy_figure(frame: pd.DataFrame):
    """The paper's figure: final test accuracy against delay, one line per setting (optimizer and every other
    swept field), mean and std over seeds; ticks at the delays run, and chance level."""
    summary = summarize(frame)
    keys = [c for c in summary.columns if c not in SUMMARY_COLUMNS]
    settings = [k for k in keys if k != "delay"]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    lines = {setting_label(rows.iloc[0], keys): rows for _, rows in summary.groupby(settings, dropna=False)}
    colours = _colours(lines)
    for label, rows in sorted(lines.items()):
        rows = rows.sort_values("delay")
        ax.errorbar(rows.delay, rows.accuracy_mean, yerr=rows.accuracy_std.fillna(0), marker="o", capsize=3,
                    color=colours[label], label=label)
    delays = sorted(int(d) for d in summary.delay.unique())
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(delays, [str(d) for d in delays])
    ax.xaxis.set_minor_locator(NullLocator())
    for dataset in sorted(frame.dataset.dropna().unique()):
        if dataset in CLASSES:
            chance = 100 / CLASSES[dataset]
            ax.axhline(chance, color="0.4", linestyle=":", linewidth=1,
                       label=f"chance ({chance:g}%{'' if frame.dataset.nunique() == 1 else ', ' + dataset})")
    ax.set_xlabel("delay D (updates)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    _outside_legend(ax)
    return fig


def accuracy_vs_delay(frame: pd.DataFrame, out: str | Path) -> list[Path]:
    return _save(accuracy_figure(frame), Path(out))


def loss_axis_limits(frame: pd.DataFrame, column: str = "train_loss") -> tuple[float, float]:
    """The loss axis' range: from the smallest loss to LOSS_AXIS_HEADROOM times the largest first-epoch loss, so
    a diverging run does not flatten every other curve."""
    values = _finite(frame[column])
    positive = values[values > 0]
    if positive.empty:
        return 0.1, 10.0
    first = frame.loc[positive.index].sort_values("epoch").groupby(_trial_key(frame), dropna=False)[column].first()
    low, top = positive.min(), min(positive.max(), LOSS_AXIS_HEADROOM * first.max())
    return low / 1.25, top * 1.25


def loss_figure(frame: pd.DataFrame, column: str = "train_loss"):
    """A loss per epoch, one panel per delay, one line per trial: colour by setting (optimizer and every other
    swept field), line style by seed, a legend per panel under it. Losses above the axis (diverging runs) are
    clipped, and the panel says so."""
    settings = _setting_keys(frame)
    frame = frame.assign(**{column: _finite(frame[column])})
    colours = _colours({setting_label(row, settings) for _, row in final_epochs(frame).iterrows()})
    seeds = sorted(frame[POOLED].dropna().unique())
    delays = sorted(frame.delay.unique())
    low, high = loss_axis_limits(frame, column)
    fig, axes = plt.subplots(1, len(delays), figsize=(3.4 * len(delays), 3.2), sharey=True, squeeze=False)
    trial_key = _trial_key(frame)
    for ax, delay in zip(axes[0], delays):
        shown_settings, shown_seeds, clipped = {}, {}, False
        for _, rows in frame[frame.delay == delay].groupby(trial_key, dropna=False):
            rows = rows.sort_values("epoch")
            first = rows.iloc[0]
            label, seed = setting_label(first, settings), first[POOLED]
            colour, style = colours[label], SEED_STYLES[seeds.index(seed) % len(SEED_STYLES)]
            ax.plot(rows.epoch, rows[column], color=colour, linestyle=style, alpha=0.8)
            shown_settings[label], shown_seeds[seed] = colour, style
            clipped |= bool((rows[column] > high).any() or (rows.diverged.astype(bool).any()))
        ax.set_title(f"D = {delay}")
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.set_ylim(low, high)
        if clipped:
            ax.text(0.98, 0.98, "diverged: off scale", transform=ax.transAxes, ha="right", va="top",
                    fontsize="small", color="#9a3412")
        handles = [Line2D([], [], color=c) for c in shown_settings.values()]
        handles += [Line2D([], [], color="0.3", linestyle=s) for s in shown_seeds.values()]
        names = list(shown_settings) + [f"seed {s}" for s in shown_seeds]
        _outside_legend(ax, handles, names, below=True)
    axes[0][0].set_ylabel(column.replace("_", " "))
    return fig


def loss_curves(frame: pd.DataFrame, out: str | Path) -> list[Path]:
    return _save(loss_figure(frame), Path(out))


def stable_region_figure(methods: list[str], delays: list[int], momentum: float = 0.9, steps: int = 1000,
                         **strengths):
    """The quadratic model's largest stable eta*lambda against delay, per method: theory on L(w) = lambda w^2 / 2,
    not a measurement on the trained network."""
    from ..theory import max_stable_eta_lambda, max_stable_eta_lambda_simulated

    fig, ax = plt.subplots(figsize=(6.4, 4))
    grid = np.geomspace(1e-4, 4.0, 61)
    for method in methods:
        if method == "sgdm":
            values = [max_stable_eta_lambda(momentum, d) for d in delays]
        else:
            values = [max_stable_eta_lambda_simulated(method, d, momentum=momentum, steps=steps, grid=grid,
                                                      **strengths.get(method, {})) for d in delays]
        ax.plot([max(d, 0.5) for d in delays], values, marker="o", label=method)
    ax.set_title(f"Quadratic model L(w) = λw²/2, momentum {momentum:g} (theory, not the trained network)",
                 fontsize="medium")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([max(d, 0.5) for d in delays], [str(d) for d in delays])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("delay D (updates; D = 0 drawn at 0.5)")
    ax.set_ylabel("largest stable η·λ")
    ax.grid(alpha=0.3, which="both")
    _outside_legend(ax)
    return fig


def stable_region(methods: list[str], delays: list[int], out: str | Path, momentum: float = 0.9,
                  steps: int = 1000, **strengths) -> list[Path]:
    return _save(stable_region_figure(methods, delays, momentum=momentum, steps=steps, **strengths), Path(out))

