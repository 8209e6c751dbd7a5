"""BatchNormalization statistics re-estimation in the quantized model (AIMET's BN re-estimation).

During QAT the moving statistics of BN are exponential averages over steps whose weights kept
changing, and they were computed under different quantization noise early on. Re-estimating them
after training - a forward pass over ~100 batches with the final, quantized weights - gives
statistics that match what the quantized network really produces:

    moving_mean <- (1/K) * sum_k mean_k,    moving_variance <- (1/K) * sum_k var_k,

where mean_k / var_k are the per-channel batch moments BN computes in training mode on batch k.
Implementation: every BN layer runs with momentum 0 (after each batch its moving statistics
equal that batch's moments) and the per-batch values are summed in-graph.

Example:
    >>> handle = reestimate_bn_stats(sim, train_images, bn_num_batches=100)
    >>> sim.model.evaluate(x_test, y_test)
    >>> handle.remove()          # the statistics from before the call, bit for bit
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aimet_tf.qat.targets import find_batch_norms, resolve_model
from aimet_tf.quantization import calibration_data
from aimet_tf.quantization.sim import QuantizationSimModel

__all__ = ["BNStats", "BNReestimationHandle", "reestimate_bn_stats"]


@dataclasses.dataclass(frozen=True)
class BNStats:
    """Moving statistics of one BatchNormalization layer (copies, float32)."""

    mean: np.ndarray
    variance: np.ndarray


class BNReestimationHandle:
    """Result of ``reestimate_bn_stats``: the statistics before and after, and a way back.

    Also a context manager: leaving the ``with`` block restores the old statistics.

    Attributes:
        layers: the BatchNormalization layers that were re-estimated.
        previous: layer name -> statistics before re-estimation.
        estimated: layer name -> re-estimated statistics.
        num_batches: batches averaged.
    """

    def __init__(
        self,
        layers: list[keras.layers.BatchNormalization],
        previous: list[BNStats],
        estimated: list[BNStats],
        num_batches: int,
    ):
        self.layers = list(layers)
        self._previous = list(previous)
        self.previous = {layer.name: stats for layer, stats in zip(layers, previous)}
        self.estimated = {layer.name: stats for layer, stats in zip(layers, estimated)}
        self.num_batches = num_batches

    def remove(self) -> None:
        """Writes the statistics from before re-estimation back into the layers (exact copies).

        AIMET's name: its handle's ``remove()`` restores the old statistics."""
        _write(self.layers, self._previous)

    def __enter__(self) -> "BNReestimationHandle":
        return self

    def __exit__(self, *exc_info) -> bool:
        self.remove()
        return False

    def __repr__(self) -> str:
        return f"<BNReestimationHandle: {len(self.layers)} BN layers, {self.num_batches} batches>"


def _read(layer: keras.layers.BatchNormalization) -> BNStats:
    return BNStats(
        np.array(layer.moving_mean.numpy(), dtype=np.float32, copy=True),
        np.array(layer.moving_variance.numpy(), dtype=np.float32, copy=True),
    )


def _write(layers: list[keras.layers.BatchNormalization], stats: list[BNStats]) -> None:
    for layer, values in zip(layers, stats):
        layer.moving_mean.assign(values.mean)
        layer.moving_variance.assign(values.variance)


def reestimate_bn_stats(
    model: QuantizationSimModel | keras.Model,
    bn_re_estimation_dataset: Any,
    bn_num_batches: int = 100,
    *,
    batch_size: int = 64,
    verbose: bool = False,
) -> BNReestimationHandle:
    """Replaces every BN layer's moving statistics by their average over ``bn_num_batches`` batches.

    AIMET's signature (``reestimate_bn_stats(model, bn_re_estimation_dataset, bn_num_batches=100)``,
    returning a handle whose ``remove()`` restores the old statistics).

    moving_mean = (1/K) sum_k E_batch_k[x], moving_variance = (1/K) sum_k Var_batch_k[x] per
    channel, with K = min(num_batches, batches available), measured in the model as it is (for a
    sim: with all its quantizers active). The model runs in training mode for these passes, as
    in ``fit``: every BN normalizes with its batch moments while they are measured (AIMET runs BN
    in train mode likewise), and other training-mode layers such as Dropout behave as in
    training. Frozen BN layers (``trainable=False``) are re-estimated too. Momentum and
    trainability are put back afterwards; weights and quantizer ranges are not touched.

    Args:
        model: a ``QuantizationSimModel``, its ``sim.model`` (as AIMET's scripts pass), or a
            float Keras model.
        bn_re_estimation_dataset: read by ``aimet_tf.quantization.calibration_data``: an array (or dict by input
            name, or (x, y) tuple) cut into ``batch_size`` batches, or a list / tf.data.Dataset /
            iterable of x or (x, y[, w]) batches.
        bn_num_batches: batches to average (AIMET's default: 100).
        batch_size: batch size when the data is an array.
        verbose: show a progress bar.

    Returns:
        A ``BNReestimationHandle``; ``handle.remove()`` puts the previous statistics back.

    Raises:
        ValueError: no BN layers, num_batches < 1, empty data or data that does not fit the
            model inputs (shape, dtype, NaN/Inf), BN with renorm (its statistics
            follow another rule), or non-finite statistics (the old ones are then kept).
        RuntimeError: from the sim if an enabled quantizer has no encoding.
    """
    data, num_batches = bn_re_estimation_dataset, bn_num_batches
    if isinstance(num_batches, bool) or not isinstance(num_batches, (int, np.integer)) or num_batches < 1:
        raise ValueError(f"Expected bn_num_batches >= 1. Received: bn_num_batches={num_batches!r}")
    model = resolve_model(model)
    layers = find_batch_norms(model)
    if not layers:
        raise ValueError(
            f"Model {model.name!r} has no BatchNormalization layers: nothing to re-estimate. "
            "(Were they folded into the convolutions already?)"
        )
    renorm = [layer.name for layer in layers if layer.renorm]
    if renorm:
        raise ValueError(
            f"BatchNormalization layers with renorm=True are not supported: {renorm}. Their "
            "moving statistics follow the renorm update rule; re-estimate without renorm."
        )
    previous = [_read(layer) for layer in layers]
    settings = [(layer.momentum, layer.trainable) for layer in layers]
    sums = [
        (
            tf.Variable(tf.zeros_like(layer.moving_mean.value), trainable=False),
            tf.Variable(tf.zeros_like(layer.moving_variance.value), trainable=False),
        )
        for layer in layers
    ]

    @tf.function(reduce_retracing=True)
    def step(x):
        model(x, training=True)
        # Momentum 0: each layer's moving statistics now hold this batch's moments.
        for layer, (mean_sum, var_sum) in zip(layers, sums):
            mean_sum.assign_add(layer.moving_mean.value)
            var_sum.assign_add(layer.moving_variance.value)

    count = 0
    progress = keras.utils.Progbar(num_batches, unit_name="batch") if verbose else None
    try:
        for layer in layers:
            layer.momentum = 0.0
            layer.trainable = True
        inputs = calibration_data.model_inputs(model)
        batches = calibration_data.iterate_batches(
            data, inputs, batch_size, num_batches, purpose="BN re-estimation data"
        )
        for batch in batches:
            step(calibration_data.as_model_input(batch))
            count += 1
            if progress is not None:
                progress.update(count)
        estimated = []
        for layer, (mean_sum, var_sum) in zip(layers, sums):
            mean = (mean_sum.numpy() / count).astype(np.float32)
            variance = (var_sum.numpy() / count).astype(np.float32)
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(variance))):
                raise ValueError(
                    f"Re-estimated statistics of {layer.name!r} are not finite: check the data for "
                    "NaN/Inf and the quantizer ranges. The previous statistics were kept."
                )
            estimated.append(BNStats(mean, variance))
    except BaseException:
        _write(layers, previous)
        raise
    finally:
        for layer, (momentum, trainable) in zip(layers, settings):
            layer.momentum = momentum
            layer.trainable = trainable
    _write(layers, estimated)
    if count < num_batches:
        logging.warning(
            "reestimate_bn_stats: the data gave %d batches, fewer than bn_num_batches=%d.", count, num_batches
        )
    logging.info("reestimate_bn_stats: re-estimated %d BN layers over %d batches", len(layers), count)
    return BNReestimationHandle(layers, previous, estimated, count)
