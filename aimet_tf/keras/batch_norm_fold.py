"""AIMET's ``aimet_tensorflow.keras.batch_norm_fold``, with AIMET's in-place behaviour.

* ``fold_all_batch_norms(model) -> (pairs, new_model)``: AIMET's order. A pair is
  ``(conv_or_linear, bn)``, both layer objects of ``model``.
* ``fold_given_batch_norms(model, layer_pairs) -> new_model``: exactly the given batch norms.
* ``fold_all_batch_norms_to_scale(sim) -> pairs``: folds a sim's batch norms into its weights
  and weight grids, in place on the sim as in AIMET.

As in AIMET, folding edits ``model``'s layers: each folded Conv/Dense layer gets the folded
kernel and bias (a layer without bias gets one), and ``new_model`` is built over those same layer
objects without the folded batch norms, so layers picked from either model afterwards (for
``CrossLayerScaling.scale_cls_sets``, say) are the folded ones. Unlike AIMET, ``model`` itself
stays correct: each folded batch norm becomes an identity (gamma 1, beta 0, mean 0, variance
1 - epsilon), its own gamma and beta kept as ``bn.original_gamma`` / ``bn.original_beta`` for
``HighBiasFold`` (AIMET's attribute names). Batch norms inside nested models are folded and
become identities but stay in ``new_model``.

The folding itself is ``aimet_tf.ptq.batch_norm_fold`` (which never edits its input).
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from aimet_tf.graph import as_functional
from aimet_tf.graph.in_place import add_bias, without_layers
from aimet_tf.ptq import batch_norm_fold as _native
from aimet_tf.ptq.batch_norm_fold import fold_all_batch_norms_to_scale

__all__ = ["fold_all_batch_norms", "fold_all_batch_norms_to_scale", "fold_given_batch_norms"]


def _find(model: keras.Model, path: str) -> keras.layers.Layer:
    """The layer at ``path`` ("nested/layer" inside nested models)."""
    layer = model
    for part in path.split("/"):
        layer = layer.get_layer(part)
    return layer


def _make_identity(bn: keras.layers.BatchNormalization) -> None:
    """Turns ``bn`` into an identity in place, keeping its first gamma/beta as original_gamma/beta."""
    channels = int(bn.moving_mean.shape[0])
    if not hasattr(bn, "original_gamma"):
        bn.original_gamma = np.asarray(bn.gamma.numpy() if bn.scale else np.ones(channels), np.float32)
        bn.original_beta = np.asarray(bn.beta.numpy() if bn.center else np.zeros(channels), np.float32)
    if bn.scale:
        bn.gamma.assign(np.ones(channels, np.float32))
    if bn.center:
        bn.beta.assign(np.zeros(channels, np.float32))
    bn.moving_mean.assign(np.zeros(channels, np.float32))
    bn.moving_variance.assign(np.full(channels, 1.0 - bn.epsilon, np.float32))


def _fold_in_place(model: keras.Model, names: Sequence[tuple[str, str]], folded: keras.Model) -> keras.Model:
    """Copies the folded weights of ``folded`` into ``model``'s layers and returns ``model``
    without its top-level folded batch norms, over the same layer objects."""
    for layer_path, bn_path in names:
        layer, new = _find(model, layer_path), _find(folded, layer_path)
        if not layer.use_bias and new.use_bias:
            add_bias(layer)
        layer.set_weights(new.get_weights())
        _make_identity(_find(model, bn_path))
    for attribute in ("predict_function", "test_function", "train_function"):
        if getattr(model, attribute, None) is not None:
            setattr(model, attribute, None)  # traced before the edit: retrace
    top_level = [bn for _, bn in names if "/" not in bn]
    return without_layers(as_functional(model, "batch-norm folding"), top_level)


def fold_all_batch_norms(model: keras.Model) -> tuple[list[tuple[keras.layers.Layer, keras.layers.Layer]], keras.Model]:
    """Folds every foldable batch norm; returns ``([(conv_or_linear, bn), ...], new_model)``.

    ``model``'s folded layers are edited in place (see the module docstring); see
    ``aimet_tf.ptq.fold_all_batch_norms`` for what folds.
    """
    pairs, folded = _native.fold_all_batch_norms(model)
    names = [(p.layer, p.batch_norm) for p in pairs]
    layers = [(_find(model, layer), _find(model, bn)) for layer, bn in names]
    return layers, _fold_in_place(model, names, folded)


def _as_pair(item) -> tuple:
    """AIMET's pair forms: ``(layer, bn)``, ``(bn, layer)`` and ``(layer, bn, is_batch_norm_second)``."""
    if isinstance(item, (tuple, list)) and len(item) == 3 and isinstance(item[2], (bool, np.bool_)):
        first, second, bn_second = item
        return (first, second) if bn_second else (second, first)
    return item


def _name(item) -> str:
    return item if isinstance(item, str) else getattr(item, "name", repr(item))


def fold_given_batch_norms(model: keras.Model, layer_pairs) -> keras.Model:
    """Folds exactly the given batch norms; returns the new model without them.

    Args:
        model: a Functional or built Sequential model; its folded layers are edited in place
            (see the module docstring).
        layer_pairs: ``(layer, bn)`` for a batch norm after its layer, ``(bn, layer)`` for one
            before it, or AIMET's ``(layer, bn, is_batch_norm_second)``; layers of ``model``'s
            top level or their names.

    Returns:
        The new model over ``model``'s layer objects, without the folded batch norms (AIMET
        returns None for a Sequential model, which it edits in place; aimet_tf returns the model
        in every case).

    Raises:
        ValueError / TypeError: as ``aimet_tf.ptq.fold_given_batch_norms``, before anything is
            edited.
    """
    pairs = [_as_pair(item) for item in layer_pairs]
    folded = _native.fold_given_batch_norms(model, pairs)  # validates every pair
    names = []
    for first, second in pairs:
        first, second = _name(first), _name(second)
        bn_first = isinstance(model.get_layer(first), keras.layers.BatchNormalization)
        names.append((second, first) if bn_first else (first, second))
    return _fold_in_place(model, names, folded)
