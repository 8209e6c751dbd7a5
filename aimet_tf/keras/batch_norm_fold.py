"""AIMET's ``aimet_tensorflow.keras.batch_norm_fold``.

* ``fold_all_batch_norms(model) -> (pairs, new_model)``: AIMET's order. A pair is
  ``(conv_or_linear, bn)`` as in AIMET: the folded layer of ``new_model`` and the batch norm of
  ``model`` it absorbed (also for a batch norm that sat before its layer, as AIMET lists those).
* ``fold_given_batch_norms(model, layer_pairs) -> new_model``: AIMET edits ``model`` in place;
  aimet_tf returns the folded copy (use the return value).
* ``fold_all_batch_norms_to_scale(sim) -> pairs``: folds a sim's batch norms into its weights
  and weight grids, in place on the sim as in AIMET.

The implementation is ``aimet_tf.ptq.batch_norm_fold``.
"""

from __future__ import annotations

import keras

from aimet_tf.ptq import batch_norm_fold as _native
from aimet_tf.ptq.batch_norm_fold import fold_all_batch_norms_to_scale, fold_given_batch_norms

__all__ = ["fold_all_batch_norms", "fold_all_batch_norms_to_scale", "fold_given_batch_norms"]


def _find(model: keras.Model, path: str) -> keras.layers.Layer:
    """The layer at ``path`` ("nested/layer" inside nested models)."""
    layer = model
    for part in path.split("/"):
        layer = layer.get_layer(part)
    return layer


def fold_all_batch_norms(model: keras.Model) -> tuple[list[tuple[keras.layers.Layer, keras.layers.Layer]], keras.Model]:
    """Folds every foldable batch norm; returns ``([(folded layer, batch norm), ...], new_model)``.

    ``model`` is not modified. See ``aimet_tf.ptq.fold_all_batch_norms`` for what folds.
    """
    pairs, folded = _native.fold_all_batch_norms(model)
    return [(_find(folded, p.layer), _find(model, p.batch_norm)) for p in pairs], folded
