"""Summaries of a tidy frame: each trial's last epoch, and final accuracy by optimizer and delay."""

from __future__ import annotations

import pandas as pd

from .schema import CONFIG_COLUMNS


def final_epochs(frame: pd.DataFrame) -> pd.DataFrame:
    """The last reported epoch of every trial."""
    if frame.empty:
        return frame
    keys = ["job_id", "trial_id"] if "trial_id" in frame else CONFIG_COLUMNS
    return frame.sort_values("epoch").groupby(keys, dropna=False).tail(1)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Final test accuracy by optimizer x delay: mean and std over seeds, trial count and divergences."""
    last = final_epochs(frame)
    if last.empty:
        return pd.DataFrame(columns=["optimizer", "delay", "mean", "std", "count", "diverged"])
    grouped = last.groupby(["optimizer", "delay"])
    out = grouped.test_accuracy.agg(["mean", "std", "count"])
    out["diverged"] = grouped.diverged.sum().astype(int)
    return out.reset_index()
