"""Warnings for the traps a run's settings can fall into, shown to the user of `abray train` (and with a job's
trials in the service). A warning never stops a run: the settings may be what the user wants.

`abray.advisor.delay_warning` adds the one that needs the model's curvature (a delay whose advised lr is far
below the configured one).
"""

from __future__ import annotations

from typing import Sequence

from .config import TrainConfig
from .epochs import EpochMetrics

REVERSED_MOST_OF_THE_TIME = 0.5  # of braked tensors, averaged over the run's epochs


def config_warnings(config: TrainConfig) -> list[str]:
    """What is suspicious in a config on its own."""
    found = []
    if config.warmup_epochs >= config.epochs:
        found.append(f"warmup_epochs ({config.warmup_epochs:g}) >= epochs ({config.epochs}): the learning rate "
                     f"never leaves warmup, so the run never trains at its configured lr {config.lr:g}; use fewer "
                     f"warmup epochs (e.g. --warmup-epochs {max(0, config.epochs // 4)})")
    if config.optimizer in ("ab", "ab_lwp") and config.rho_ramp == 0 and config.rho > 0 and config.delay == 0:
        found.append(f"rho_ramp 0 makes AB brake at full strength (rho {config.rho:g}) with no delay, where braking "
                     "only costs accuracy; the default rho_ramp brakes only stale gradients")
    return found


def history_warnings(config: TrainConfig, history: Sequence[EpochMetrics]) -> list[str]:
    """What a finished (or stopped) run's metrics show: AB's factor 1 - rho c negative most of the time."""
    fractions = [m.reversed_fraction for m in history if m.reversed_fraction is not None]
    found = []
    if fractions and sum(fractions) / len(fractions) > REVERSED_MOST_OF_THE_TIME:
        mean = sum(fractions) / len(fractions)
        found.append(f"AB's braking factor 1 - rho c was negative for {100 * mean:.0f}% of braked tensors on "
                     f"average: it reversed most gradients instead of braking them; a smaller rho (now "
                     f"{config.rho:g}) or lr (now {config.lr:g}) brakes without reversing")
    return found
