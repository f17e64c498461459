"""The tidy results schema: one row per (job, trial, epoch), config columns then metric columns.

The metric columns are the fields of `EpochMetrics`, in order; `metric_row` is the one conversion from an
epoch's metrics to a row, and a row is also what a Tune trial reports (`ray.tune.report`) and what the job
store keeps. Every producer (`abray train`, Tune sweeps, the database, the REST API) builds its frames with
`epochs_frame`, so the columns are the same everywhere.
"""

from __future__ import annotations

import io
import json
import typing
from dataclasses import asdict, fields
from pathlib import Path
from typing import Iterable, Union

import pandas as pd

from ..training.config import ConfigError
from ..training.epochs import EpochMetrics

CONFIG_COLUMNS = [
    "dataset", "model", "optimizer", "lr", "momentum", "rho", "granularity", "rho_ramp", "clip_factor", "dc_lambda",
    "lookahead", "weight_decay", "nesterov", "mode", "workers", "server_shards", "device",
    "delay", "epochs", "batch_size", "warmup_epochs", "schedule", "seed",
]
METRIC_COLUMNS = [f.name for f in fields(EpochMetrics)]


def metric_types() -> dict[str, tuple[type, bool]]:
    """Each metric column's Python type (int, float, bool, or str for the JSON histogram) and whether it may be
    missing (None), from EpochMetrics' annotations: what the job store makes its columns of."""
    found = {}
    for name, hint in typing.get_type_hints(EpochMetrics).items():
        args = typing.get_args(hint)
        nullable = typing.get_origin(hint) is Union and type(None) in args
        kind = next(a for a in args if a is not type(None)) if nullable else hint
        found[name] = (str if kind is dict else kind, nullable or kind is float)
    return found


def metric_row(metrics: Union[EpochMetrics, dict]) -> dict:
    """One epoch's metrics as the schema's METRIC_COLUMNS, with the staleness histogram as a JSON string: what a
    Tune trial reports, what the job store writes, and what a frame's row holds. A dict (a Tune report, a row
    read back) passes through, with its other keys dropped."""
    row = asdict(metrics) if isinstance(metrics, EpochMetrics) else dict(metrics)
    hist = row.get("staleness_hist")
    if hist is not None and not isinstance(hist, str):
        row["staleness_hist"] = json.dumps({str(k): v for k, v in hist.items()})
    return {c: row.get(c) for c in METRIC_COLUMNS}


def epochs_frame(config: dict, history: Iterable[Union[EpochMetrics, dict]], **ids) -> pd.DataFrame:
    """A tidy frame from a run's config and its per-epoch metrics (EpochMetrics or rows)."""
    rows = [{**ids, **{c: config.get(c) for c in CONFIG_COLUMNS}, **metric_row(m)} for m in history]
    frame = pd.DataFrame(rows, columns=list(ids) + CONFIG_COLUMNS + METRIC_COLUMNS)
    return frame.astype({"diverged_step": "Int64"})


def empty_frame(*ids: str) -> pd.DataFrame:
    return pd.DataFrame(columns=list(ids) + CONFIG_COLUMNS + METRIC_COLUMNS)


EXPORT_SUFFIXES = (".csv", ".parquet")


def export_path(path: Union[str, Path]) -> Path:
    """`path` as a place to write a frame to, or a ConfigError saying why not (checked before any work starts)."""
    path = Path(path)
    if path.suffix not in EXPORT_SUFFIXES:
        raise ConfigError(f"export: {str(path)!r} must end in .csv or .parquet")
    if path.is_dir():
        raise ConfigError(f"export: {str(path)!r} is a directory; name a .csv or .parquet file")
    return path


def write_frame(frame: pd.DataFrame, path: Union[str, Path]) -> Path:
    """Write `frame` as Parquet (a .parquet path) or CSV (a .csv path)."""
    path = export_path(path)
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

