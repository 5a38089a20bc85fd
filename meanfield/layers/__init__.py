"""Layer types, one module per family; each layer class holds its description and its rules for both engines.

Families: `dense` (Dense, WeightNormDense, Linear), `activation`, `norms` (LayerNorm, RMSNorm, GroupLayerNorm,
Center, Scale), `constant_norms` (MeanFieldCenter, MeanFieldScale: Joudaki et al.'s constants of the
activation), `batchnorm`, `mean_only_batchnorm`, `pooling` (MaxPool), `structure` (Residual, Block).
A layer class registers itself when its module is imported: adding a family is one module and one import line
below; `layer_types()` lists every registered class (user-defined ones included) and ``__all__`` exports the
built-in ones.
"""

from meanfield.layers.activation import *  # noqa: F403
from meanfield.layers.base import Layer, layer_from_dict, layer_types, norm_layer_types
from meanfield.layers.batchnorm import *  # noqa: F403
from meanfield.layers.concat import *  # noqa: F403
from meanfield.layers.constant_norms import *  # noqa: F403
from meanfield.layers.dense import *  # noqa: F403
from meanfield.layers.mean_only_batchnorm import *  # noqa: F403
from meanfield.layers.norms import *  # noqa: F403
from meanfield.layers.pooling import *  # noqa: F403
from meanfield.layers.structure import *  # noqa: F403

__all__ = ["Layer", "layer_types", "layer_from_dict", "norm_layer_types",
           *(cls.__name__ for cls in layer_types())]
