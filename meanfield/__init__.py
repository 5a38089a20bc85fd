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
    MaxPool,
    Residual,
    RMSNorm,
    Scale,
    WeightNormDense,
)
from meanfield.network import Network, mlp

__all__ = [
    "Activation", "BatchNorm", "Block", "Center", "Dense", "GroupLayerNorm", "LayerNorm", "MaxPool",
    "Residual", "RMSNorm", "Scale", "WeightNormDense", "Network", "mlp",
]
__version__ = "0.1.0"
