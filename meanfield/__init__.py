"""meanfield: infinite-width (mean-field) and finite-width analysis of deep networks at initialization.

One network description (`Network`, `mlp`, the layer types of `meanfield.layers`), two engines: `propagate`
(the Gram recursion at infinite width, using the Hermite expansions of `hermite`; module
`meanfield.infinite`) and `simulate` (finite-width Monte Carlo; module `meanfield.finite`); both return a
`Trajectory`. New layer types subclass `Layer` (see `layer_types`).
"""

from meanfield.finite import simulate, simulate_outputs
from meanfield.infinite import propagate
from meanfield.layers import *  # noqa: F403 - every built-in layer type
from meanfield.layers import Layer, layer_types
from meanfield.measures import isometry, isometry_gap, potential
from meanfield.network import Network, mlp
from meanfield.trajectory import Trajectory

__all__ = [
    "Layer", "layer_types", *(cls.__name__ for cls in layer_types()), "Network", "mlp", "propagate", "simulate",
    "simulate_outputs", "Trajectory", "isometry", "isometry_gap", "potential",
]
__version__ = "0.1.0"


_SUBMODULES = ("maps", "qc_maps", "criticality", "bias", "class_fractions", "rates", "bn_gradients", "orthogonality",
               "joudaki", "checks", "layernorm", "separability", "ln_net", "group_size", "weightnorm", "fisher",
               "transformations", "shortcuts", "sweep", "plot", "cli", "measures", "infinite", "finite", "torch",
               "training", "data", "fluctuations", "spread")


def __getattr__(name):
    """Submodules on first use (``meanfield.rates.beta0(...)``) without importing them all up front;
    ``meanfield.train`` (`meanfield.training.train`, needs the torch extra) likewise."""
    if name == "train":
        from meanfield.training import train

        return train
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"meanfield.{name}")
    raise AttributeError(f"module 'meanfield' has no attribute {name!r}")
