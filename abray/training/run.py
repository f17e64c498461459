"""One training run from a `TrainConfig`: in the simulator, or on Ray (modes distributed and free)."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..optim.methods import METHODS
from .build import build_optimizer, load_data, make_scheduler
from .config import TrainConfig
from .data import DataSplit
from .epochs import EpochMetrics
from .models import build_model
from .simulator import train_delayed


def run(
    config: TrainConfig,
    data: Optional[DataSplit] = None,
    on_step: Optional[Callable[[int, float], None]] = None,
    on_epoch: Optional[Callable[[EpochMetrics], None]] = None,
) -> list[EpochMetrics]:
    """Train as `config` says and return the metrics of every epoch (`abray.results.epochs_frame` makes them
    the tidy frame). `data` defaults to the config's data set."""
    data = data if data is not None else load_data(config)
    if config.mode == "simulated":
        torch.manual_seed(config.seed)
        model = build_model(config.model, data.num_classes)
        optimizer = build_optimizer(config, model.parameters())
        scheduler = make_scheduler(config, optimizer, len(data.train) // config.batch_size)
        return train_delayed(
            model, optimizer, data, delay=config.delay, epochs=config.epochs, batch_size=config.batch_size,
            seed=config.seed, scheduler=scheduler, predict=METHODS[config.optimizer].predicts,
            device=config.device, on_step=on_step, on_epoch=on_epoch,
        )
    from .distributed import train_distributed  # Ray, only for the modes that use it

    return train_distributed(config, data, on_step=on_step, on_epoch=on_epoch).history
