"""Reading a Ray Tune experiment directory (what `abray sweep` writes) into the tidy schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import pandas as pd

from ..training.config import TrainConfig
from .schema import empty_frame, epochs_frame


def load_tune_experiment(path: Union[str, Path]) -> pd.DataFrame:
    """The tidy frame of a Tune experiment directory (one row per trial and reported epoch)."""
    path = Path(path)
    frames = []
    for params_file in sorted(path.glob("*/params.json")):
        config = TrainConfig.model_validate(json.loads(params_file.read_text())).model_dump()
        result_file = params_file.parent / "result.json"
        lines = result_file.read_text().splitlines() if result_file.exists() else []
        reports = [json.loads(line) for line in lines if line.strip()]
        if reports:
            frames.append(epochs_frame(config, reports, job_id=path.name, trial_id=reports[-1]["trial_id"]))
    return pd.concat(frames, ignore_index=True) if frames else empty_frame("job_id", "trial_id")


def trial_status(path: Union[str, Path]) -> pd.DataFrame:
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
