"""Tidy frames made by hand (a trial's config and its epochs), for the results layer's tests."""

import pandas as pd

from abray.results import epochs_frame
from abray.training.config import TrainConfig
from abray.training.epochs import EpochMetrics


def trial(trial_id: str, accuracy: float, diverged: bool = False, epochs: int = 2, **config) -> pd.DataFrame:
    """One trial's rows: loss 1/epoch, accuracy 0.1 until the last epoch, which reaches `accuracy`."""
    values = TrainConfig(**config).model_dump()
    history = [EpochMetrics(epoch=e, steps=10 * e, train_loss=1.0 / e, test_loss=1.0 / e,
                            test_accuracy=accuracy if e == epochs else 0.1, wall_time=0.1, lr_now=0.01,
                            diverged=diverged and e == epochs) for e in range(1, epochs + 1)]
    return epochs_frame(values, history, job_id="j", trial_id=trial_id)


def frame_of(*trials) -> pd.DataFrame:
    return pd.concat(trials, ignore_index=True)
