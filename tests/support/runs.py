"""The undisturbed reference for distributed runs: the same config in the delay simulator, whose trajectory a
fixed-delay run must reproduce update for update."""

from __future__ import annotations

import torch

from abray.optim.methods import METHODS
from abray.training.build import build_optimizer, make_scheduler
from abray.training.models import build_model
from abray.training.simulator import train_delayed


def simulate(config, data):
    """(the per-epoch metrics, the final weights as one flat numpy array) of `config` in the simulator."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.num_classes)
    opt = build_optimizer(config, model.parameters())
    sched = make_scheduler(config, opt, len(data.train) // config.batch_size)
    history = train_delayed(model, opt, data, delay=config.delay, epochs=config.epochs, batch_size=config.batch_size,
                            seed=config.seed, scheduler=sched,
                            predict=METHODS[config.optimizer].predicts)
    return history, torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
