"""BatchNormalization's training forward pass through TensorFlow's fused kernel.

Keras 3 trains ``keras.layers.BatchNormalization`` unfused: the batch moments come from
``tf.nn.moments`` and the normalization from ``tf.nn.batch_normalization``, a dozen small ops
forward and more backward, about half of the training step of the bundled CNN on CPU.
``FusedBatchNormV3`` (what tf_keras runs) computes the same training output in one kernel and
its gradient in one more (``FusedBatchNormGradV3``). The ``QuantizationWrapper`` of a batch norm
runs this path in training (``LayerSpec.forward`` of BatchNormalization).

Numerics, matched to Keras's ``BatchNormalization.call``:

* output: gamma * (x - mean_B) / sqrt(var_B + epsilon) + beta, with the batch's biased variance
  (Keras and the kernel both normalize with it);
* moving statistics: ``moving <- moving * momentum + batch * (1 - momentum)``, Keras's formula
  with the layer's current ``momentum``, fed with Keras's biased batch variance: the kernel
  returns the unbiased one (sum / (n - 1), for its own running average), scaled here by
  (n - 1) / n, where n = batch * height * width values per channel (the kernel returns 0 for
  n = 1, as Keras does);
* gradients: the fused gradient kernel differentiates the training output through the batch
  moments, w.r.t. x, gamma and beta, as autodiff of Keras's unfused ops does.

Only where the kernel applies: a 4-D float32 input with channels last (axis 3 or -1) in training
mode, a trainable layer with the stock ``call`` (no subclass override), no renorm, no synchronized
(cross-replica) statistics, no mask, no activity regularizer. Anything else, inference included,
returns None and the wrapper calls the layer itself.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import keras
import tensorflow as tf

__all__ = ["fused_batch_norm_training", "keras_batch_norm_only"]

_ENABLED = [True]


@contextlib.contextmanager
def keras_batch_norm_only() -> Iterator[None]:
    """Within it, batch norms traced in training run Keras's own (unfused) call.

    Tracing is what counts: a model whose train function was traced inside keeps the unfused
    path afterwards. For comparisons of speed or numerics.
    """
    previous = _ENABLED[0]
    _ENABLED[0] = False
    try:
        yield
    finally:
        _ENABLED[0] = previous


def _applies(layer: keras.layers.Layer, args: tuple, kwargs: dict, training) -> bool:
    if not (_ENABLED[0] and training is True and layer.trainable and layer.built):
        return False
    if not isinstance(layer, keras.layers.BatchNormalization):
        return False
    if type(layer).call is not keras.layers.BatchNormalization.call:
        return False
    if layer.renorm or layer.synchronized or layer.activity_regularizer is not None:
        return False
    if len(args) != 1 or set(kwargs) - {"training", "mask"} or kwargs.get("mask") is not None:
        return False
    x = args[0]
    if not tf.is_tensor(x) or isinstance(x, keras.KerasTensor):
        return False
    if getattr(x, "_keras_mask", None) is not None:
        return False
    return (
        x.shape.rank == 4
        and layer.axis in (3, -1)
        and x.dtype == tf.float32
        and layer.compute_dtype == "float32"
    )


def fused_batch_norm_training(layer: keras.layers.Layer, args: tuple, kwargs: dict, training):
    """``layer(*args, **kwargs)`` in training through ``FusedBatchNormV3``, or None if it does not apply.

    Updates ``layer.moving_mean`` / ``layer.moving_variance`` as Keras's call does (see the module
    docstring). Variables are read and assigned through Keras, so a surrounding
    ``keras.StatelessScope`` sees them as it would see Keras's own call.

    Args:
        layer: a ``keras.layers.BatchNormalization``.
        args, kwargs: the call's arguments (one input tensor; ``training`` / ``mask`` keywords).
        training: the resolved training flag of the call (only Python True selects this path).
    """
    if not _applies(layer, args, kwargs, training):
        return None
    x = args[0]
    channels = int(layer.moving_mean.shape[0])
    gamma = layer.gamma.value if layer.scale else tf.ones([channels], tf.float32)
    beta = layer.beta.value if layer.center else tf.zeros([channels], tf.float32)
    empty = tf.zeros([0], tf.float32)
    y, batch_mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=layer.epsilon,
        exponential_avg_factor=1.0, data_format="NHWC", is_training=True,
    )
    count = tf.cast(tf.size(x, out_type=tf.int64) // channels, tf.float32)
    batch_variance = unbiased_variance * ((count - 1.0) / count)
    momentum = layer.momentum
    moving_mean = layer.moving_mean.value
    moving_variance = layer.moving_variance.value
    layer.moving_mean.assign(moving_mean * momentum + batch_mean * (1.0 - momentum))
    layer.moving_variance.assign(moving_variance * momentum + batch_variance * (1.0 - momentum))
    return y
