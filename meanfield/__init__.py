"""meanfield: infinite-width (mean-field) and finite-width analysis of deep networks at initialization.

One network description (`Network`, `mlp`), two engines: `propagate` (the Gram recursion at infinite
width, using the Hermite expansions of `hermite`) and `simulate` (finite-width Monte Carlo); both
return a `Trajectory`.
"""

from meanfield.layers import (
    Activation,
    BatchNorm,
    Block,
    Center,
    Dense,
    GroupLayerNorm,
    LayerNorm,
    Linear,
    MaxPool,
    Residual,
    RMSNorm,
    Scale,
    WeightNormDense,
)
from meanfield.measures import isometry, isometry_gap, potential
from meanfield.network import Network, mlp
from meanfield.propagate import propagate
from meanfield.simulate import simulate, simulate_outputs
from meanfield.trajectory import Trajectory

__all__ = [
    "Activation", "BatchNorm", "Block", "Center", "Dense", "GroupLayerNorm", "LayerNorm", "Linear", "MaxPool",
    "Residual", "RMSNorm", "Scale", "WeightNormDense", "Network", "mlp", "propagate", "simulate",
    "simulate_outputs", "Trajectory",
    "isometry", "isometry_gap", "potential",
]
__version__ = "0.1.0"


_SUBMODULES = ("maps", "bias", "rates", "checks", "layernorm", "weightnorm", "fisher", "transformations",
               "sweep", "plot", "cli", "measures", "simulate", "propagate")


def __getattr__(name):
    """Submodules on first use (``meanfield.rates.beta0(...)``) without importing them all up front."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"meanfield.{name}")
    raise AttributeError(f"module 'meanfield' has no attribute {name!r}")
