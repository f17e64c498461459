"""The algorithm: `ABSGD` and its functional kernels, the peer methods, linear weight prediction, the registry
of methods by name, and the definition of delay and staleness.

The bottom layer of abray: it imports torch and numpy, nothing from the layers above (no Ray, pandas,
SQLAlchemy or FastAPI), so `from abray.optim import ABSGD` costs torch alone.
"""

from .absgd import ABSGD, DEFAULT_GRANULARITY, DEFAULT_RHO, DEFAULT_RHO_RAMP, braking_strength, check_hyperparameters
from .functional import GRANULARITIES, absgd, brake, cosines

__all__ = ["ABSGD", "DEFAULT_GRANULARITY", "DEFAULT_RHO", "DEFAULT_RHO_RAMP", "GRANULARITIES", "absgd", "brake",
           "braking_strength", "check_hyperparameters", "cosines"]
