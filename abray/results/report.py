"""`abray results`: the summary table, the figures and an optional export of a sweep's directory."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from ..training.config import ConfigError
from . import plots
from .experiment import load_tune_experiment, trial_status
from .schema import write_frame
from .summary import summarize


def report(path: Union[str, Path], write: Callable[[str], None] = print, export: Optional[str] = None,
           stable_region: bool = True) -> dict:
    """Summarise an experiment directory: the summary table, the plots, and optional CSV/Parquet export."""
    path = Path(path)
    frame = load_tune_experiment(path)
    status = trial_status(path)
    if frame.empty:
        raise ConfigError(f"no trial results under {path}")
    summary = summarize(frame)
    table = summary.assign(mean=lambda d: (100 * d["mean"]).round(1), std=lambda d: (100 * d["std"]).round(1))
    write(f"final test accuracy (%) by optimizer and delay, {frame.trial_id.nunique()} trials "
          f"({int(status.failed.sum())} failed):")
    write(table.to_string(index=False))
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
