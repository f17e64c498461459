"""The tidy results schema: one row per (job, trial, epoch), config columns then metric columns.

Every producer (the simulator's CLI run, Tune sweeps, the database, the REST API) builds its frames
with `epochs_frame`, so the columns are the same everywhere.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import pandas as pd

CONFIG_COLUMNS = [
    "dataset", "model", "optimizer", "lr", "momentum", "rho", "granularity", "dc_lambda", "lookahead",
    "weight_decay", "nesterov", "mode", "workers", "device",
    "delay", "epochs", "batch_size", "warmup_epochs", "schedule", "seed",
]
METRIC_COLUMNS = [
    "epoch", "steps", "train_loss", "test_loss", "test_accuracy", "wall_time", "lr_now", "diverged", "diverged_step",
    "staleness_mean", "staleness_max", "staleness_hist",
]


def metric_row(m) -> dict:
    """One epoch's metrics (EpochMetrics or its dict) as the schema's METRIC_COLUMNS: `lr` becomes `lr_now` and
    the staleness histogram a JSON string. The tidy frames and the job store both write rows through this."""
    metrics = asdict(m) if not isinstance(m, dict) else dict(m)
    metrics["lr_now"] = metrics.pop("lr")
    hist = metrics.get("staleness_hist", {})
    if hist is not None and not isinstance(hist, str):
        metrics["staleness_hist"] = json.dumps({str(k): v for k, v in hist.items()})
    return {c: metrics.get(c) for c in METRIC_COLUMNS}


def epochs_frame(config: dict, history: Iterable, **ids) -> pd.DataFrame:
    """A tidy frame from a run's config and its per-epoch metrics (EpochMetrics or dicts)."""
    rows = [{**ids, **{c: config.get(c) for c in CONFIG_COLUMNS}, **metric_row(m)} for m in history]
    columns = list(ids) + CONFIG_COLUMNS + METRIC_COLUMNS
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({"diverged_step": "Int64"})


def metrics_from_report(report: dict) -> dict:
    """One epoch's metrics (EpochMetrics' fields) from a trial's `tune.report` dict (see sweep.trainable)."""
    metrics = {k: report.get(k) for k in ("epoch", "steps", "train_loss", "test_loss", "test_accuracy", "wall_time",
                                          "diverged", "staleness_mean", "staleness_max", "staleness_hist")}
    step = report.get("diverged_step", -1)
    return metrics | {"lr": report.get("lr_now"), "diverged_step": None if step in (-1, None) else step}


def write_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


FORMATS = {"json": "application/json", "csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def frame_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """The frame as a download: JSON records, CSV or Parquet (what pandas.read_json/csv/parquet read back)."""
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()
    if fmt == "csv":
        return frame.to_csv(index=False).encode()
    if fmt == "json":
        return frame.to_json(orient="records").encode()
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def load_tune_experiment(path: str | Path) -> pd.DataFrame:
    """The tidy frame of a Tune experiment directory (one row per trial and reported epoch)."""
    path = Path(path)
    frames = []
    for params_file in sorted(path.glob("*/params.json")):
        trial_dir = params_file.parent
        from .config import TrainConfig

        config = TrainConfig.model_validate(json.loads(params_file.read_text())).model_dump()
        result_file = trial_dir / "result.json"
        lines = result_file.read_text().splitlines() if result_file.exists() else []
        results = [json.loads(line) for line in lines if line.strip()]
        if not results:
            continue
        history = [metrics_from_report(r) for r in results]
        frames.append(epochs_frame(config, history, job_id=path.name, trial_id=results[-1]["trial_id"]))
    columns = ["job_id", "trial_id"] + CONFIG_COLUMNS + METRIC_COLUMNS
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def trial_status(path: str | Path) -> pd.DataFrame:
    """One row per trial directory: its id, whether it reported, finished or failed (with the error)."""
    rows = []
    for trial_dir in sorted(p for p in Path(path).iterdir() if p.is_dir() and (p / "params.json").exists()):
        error = trial_dir / "error.txt"
        result = trial_dir / "result.json"
        rows.append({"trial_dir": trial_dir.name, "failed": error.exists(),
                     "error": error.read_text().strip().splitlines()[-1] if error.exists() else None,
                     "epochs_reported": sum(1 for line in result.read_text().splitlines() if line.strip())
                     if result.exists() else 0})
    return pd.DataFrame(rows, columns=["trial_dir", "failed", "error", "epochs_reported"])


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
