"""What a run's config builds: its data, its optimizer (through the method registry) and its LR schedule.
The simulator, the parameter server and the benchmarks all build from a `TrainConfig` here."""

from __future__ import annotations

import math

import torch

from ..optim.methods import build_optimizer as build_method
from . import data as datasets
from .config import TrainConfig


def build_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """The optimizer `config.optimizer` names, with the config's hyperparameters, for its delay."""
    return build_method(
        config.optimizer, params, config.delay, lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay, nesterov=config.nesterov, rho=config.rho, granularity=config.granularity,
        rho_ramp=config.rho_ramp, clip_factor=config.clip_factor, dc_lambda=config.dc_lambda, lookahead=config.lookahead,
    )


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warmup from lr/warmup_steps to lr, then constant, cosine to 0, or x0.1 at 50% and 75%."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))


def make_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    """The per-update LR schedule of a run (warmup, then constant, cosine or step)."""
    total = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total, warmup, config.schedule))


def load_data(config: TrainConfig, validation: bool = False) -> datasets.DataSplit:
    """The config's data set; `validation` swaps the test set for the validation split (in-memory data sets and
    MNIST from files)."""
    if config.dataset in datasets.IN_MEMORY:
        return datasets.IN_MEMORY[config.dataset](validation=validation)
    if config.dataset == "mnist":
        return datasets.mnist(config.data_root, download=config.download, validation=validation)
    if validation:
        raise datasets.DataError(f"dataset {config.dataset!r} has no validation split here")
    if config.dataset == "cifar10":
        return datasets.cifar10(config.data_root, download=config.download)
    return datasets.imagenet(config.data_root)
