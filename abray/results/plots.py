"""Figures (matplotlib, PNG and SVG): accuracy against delay, loss curves, the quadratic stable region."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .summary import summarize  # noqa: E402


def _save(fig, out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def accuracy_vs_delay(frame: pd.DataFrame, out: str | Path) -> list[Path]:
    """The paper's figure: final test accuracy against delay, one line per optimizer, std over seeds."""
    summary = summarize(frame)
    fig, ax = plt.subplots(figsize=(6, 4))
    for optimizer, rows in summary.groupby("optimizer"):
        rows = rows.sort_values("delay")
        ax.errorbar(rows.delay, 100 * rows["mean"], yerr=100 * rows["std"].fillna(0), marker="o", capsize=3,
                    label=optimizer)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("delay D (updates)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, Path(out))


def loss_curves(frame: pd.DataFrame, out: str | Path) -> list[Path]:
    """Training loss per epoch, one panel per delay, one line per trial (coloured by optimizer)."""
    delays = sorted(frame.delay.unique())
    fig, axes = plt.subplots(1, len(delays), figsize=(3.2 * len(delays), 3), sharey=True, squeeze=False)
    colours = {o: f"C{i}" for i, o in enumerate(sorted(frame.optimizer.unique()))}
    for ax, delay in zip(axes[0], delays):
        for (_, optimizer), rows in frame[frame.delay == delay].groupby(["trial_id", "optimizer"]):
            ax.plot(rows.epoch, rows.train_loss, color=colours[optimizer], alpha=0.7, label=optimizer)
        ax.set_title(f"D = {delay}")
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("train loss")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines()}
    axes[0][-1].legend(handles.values(), handles.keys())
    return _save(fig, Path(out))


def stable_region(methods: list[str], delays: list[int], out: str | Path, momentum: float = 0.9,
                  steps: int = 1000, **strengths) -> list[Path]:
    """The quadratic model's largest stable eta*lambda against delay, per method."""
    import numpy as np

    from ..theory import max_stable_eta_lambda, max_stable_eta_lambda_simulated

    fig, ax = plt.subplots(figsize=(6, 4))
    grid = np.geomspace(1e-4, 4.0, 61)
    for method in methods:
        if method == "sgdm":
            values = [max_stable_eta_lambda(momentum, d) for d in delays]
        else:
            values = [max_stable_eta_lambda_simulated(method, d, momentum=momentum, steps=steps, grid=grid,
                                                      **strengths.get(method, {})) for d in delays]
        ax.plot([max(d, 0.5) for d in delays], values, marker="o", label=method)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("delay D (updates; D = 0 drawn at 0.5)")
    ax.set_ylabel("largest stable eta * lambda")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, Path(out))
