"""Model compression: spatial SVD, weight SVD, Tucker-2 and channel pruning, with per-layer ratios.

* :mod:`~aimet_tf.compression.decompose`: the decompositions, pure numpy.
* :mod:`~aimet_tf.compression.schemes`: one layer replaced by its decomposition, in a new model; costs and ranks.
* :mod:`~aimet_tf.compression.channel_pruning`: input channels of a Conv2D removed, the kernel re-fit.
* :mod:`~aimet_tf.compression.compressor`: whole models, manual ratios or greedy selection.

Example:
    >>> compressed, stats = compress_model(model, "spatial_svd", evaluate, target_ratio=0.5)
"""

from aimet_tf.compression.channel_pruning import prune_input_channels
from aimet_tf.compression.compressor import CompressionStats, compress_model, compress_with_ratios
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
    "CompressionStats",
    "chain_cost",
    "compress_model",
    "compress_with_ratios",
    "prune_input_channels",
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
