"""`abray results`: the summary table, the figures and an optional export of a sweep's directory."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import pandas as pd

from ..training.config import ConfigError
from . import plots
from .experiment import load_tune_experiment, trial_status
from .schema import write_frame
from .summary import SUMMARY_COLUMNS, summarize


def summary_table(summary: pd.DataFrame) -> str:
    """The summary as text: accuracy as "mean ± std" in percent, one decimal."""
    keys = [c for c in summary.columns if c not in SUMMARY_COLUMNS]
    shown = summary[keys].copy()
    shown["accuracy (%)"] = [f"{m:.1f}" + ("" if pd.isna(s) else f" ± {s:.1f}")
                             for m, s in zip(summary.accuracy_mean, summary.accuracy_std)]
    shown["trials"], shown["diverged"] = summary["count"], summary["diverged"]
    return shown.to_string(index=False)


def report(path: Union[str, Path], write: Callable[[str], None] = print, export: Optional[str] = None,
           stable_region: bool = True) -> dict:
    """Summarise an experiment directory: the summary table, the plots, and optional CSV/Parquet export."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such directory (give the folder `abray sweep` wrote: "
                          "STORAGE/NAME, e.g. runs/sweeps/demo)")
    frame = load_tune_experiment(path)
    if frame.empty:
        raise ConfigError(f"no trial results under {path} (is it a sweep's folder, with one folder per trial?)")
    status = trial_status(path)
    summary = summarize(frame)
    keys = [c for c in summary.columns if c not in SUMMARY_COLUMNS]
    write(f"final test accuracy (%) by {', '.join(keys)}: mean ± std over seeds; {frame.trial_id.nunique()} "
          f"trials ({int(status.failed.sum())} failed):")
    write(summary_table(summary))
    figures = plots.accuracy_vs_delay(frame, path / "accuracy_vs_delay") + plots.loss_curves(frame, path / "loss_curves")
    if stable_region:
        figures += plots.stable_region(sorted(frame.optimizer.unique()), sorted(int(d) for d in frame.delay.unique()),
                                       path / "stable_region")
    write("plots: " + ", ".join(str(p) for p in figures))
    outputs = {"frame": frame, "summary": summary, "figures": figures}
    if export:
        outputs["export"] = write_frame(frame, export)
        write(f"results: {outputs['export']}")
    return outputs
