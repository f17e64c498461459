"""Summaries of a tidy frame: each trial's last epoch, and final accuracy by every swept setting.

The one summary of the project: `abray results`, the demo, the API's /summary (and the dashboard, which reads
it) all call `summarize`. Trials are grouped by optimizer, delay and every other config column that varies
across the frame's trials, except seed: only seeds are pooled into a mean and a std, never two settings.
Accuracy is in percent (0-100) everywhere a summary goes.
"""

from __future__ import annotations

import pandas as pd

from .schema import CONFIG_COLUMNS

ALWAYS_GROUPED = ["optimizer", "delay"]
POOLED = "seed"  # what a mean and a std are taken over
SUMMARY_COLUMNS = ["accuracy_mean", "accuracy_std", "count", "diverged"]


def final_epochs(frame: pd.DataFrame) -> pd.DataFrame:
    """The last reported epoch of every trial."""
    if frame.empty:
        return frame
    # a frame written before a column joined the schema lacks it (server_shards, say)
    keys = ["job_id", "trial_id"] if "trial_id" in frame else [c for c in CONFIG_COLUMNS if c in frame]
    return frame.sort_values("epoch").groupby(keys, dropna=False).tail(1)


def grouping_columns(frame: pd.DataFrame) -> list[str]:
    """Optimizer, delay, then every other config column whose value differs between the frame's trials (seed
    excepted), in the schema's order."""
    varying = [c for c in CONFIG_COLUMNS if c in frame and c not in ALWAYS_GROUPED + [POOLED]
               and frame[c].nunique(dropna=False) > 1]
    return ALWAYS_GROUPED + varying


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Final test accuracy (%) per setting: mean and std over seeds, trial count and divergences. One row per
    combination of `grouping_columns`, sorted by them."""
    last = final_epochs(frame)
    if last.empty:
        return pd.DataFrame(columns=ALWAYS_GROUPED + SUMMARY_COLUMNS)
    keys = grouping_columns(last)
    grouped = last.assign(accuracy=100 * last.test_accuracy.astype(float)).groupby(keys, dropna=False, sort=True)
    out = grouped.accuracy.agg(accuracy_mean="mean", accuracy_std="std", count="count")
    out["diverged"] = grouped.diverged.sum().astype(int)
    return out.reset_index()


def setting_label(row, keys: list[str]) -> str:
    """A summary row's setting as text, optimizer first: "ab rho=0.5" (delay left out: it is the x axis)."""
    rest = [f"{k}={row[k]}" for k in keys if k not in ALWAYS_GROUPED]
    return " ".join([str(row["optimizer"]), *rest])
