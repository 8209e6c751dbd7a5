"""Model compression: spatial SVD, weight SVD, Tucker-2 and channel pruning, with per-layer ratios.

* :mod:`~aimet_tf.compression.decompose`: the decompositions, pure numpy.
* :mod:`~aimet_tf.compression.schemes`: one layer replaced by its decomposition, in a new model; costs and ranks.
"""

from aimet_tf.compression.decompose import spatial_svd, tucker2, weight_svd
from aimet_tf.compression.schemes import (
    chain_cost,
    compressible_layers,
    layer_cost,
    rank_for_ratio,
    spatial_svd_layer,
    tucker2_layer,
    weight_svd_layer,
)

__all__ = [
    "chain_cost",
    "compressible_layers",
    "layer_cost",
    "rank_for_ratio",
    "spatial_svd",
    "spatial_svd_layer",
    "tucker2",
    "tucker2_layer",
    "weight_svd",
    "weight_svd_layer",
]
