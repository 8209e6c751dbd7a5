"""Keras callbacks for quantization-aware training with ``sim.model.fit``.

* ``FreezeBatchNormStats``: after N epochs BatchNormalization stops updating its statistics.
* ``FreezeQuantizerRanges``: after N epochs learned quantizer ranges stop changing.
* ``QuantizerRangeLogger``: writes every quantizer's encoding min/max as TensorBoard summaries.

Keras traces ``train_step`` once per ``fit``; flags such as ``BatchNormalization.trainable`` or a
variable's ``trainable`` are read while tracing. The freezing callbacks therefore rebuild the
model's train function after changing them (``model.make_train_function(force=True)``); the fit
loop looks the function up on every step, so the next step already runs the new one. The rebuild
costs one retrace, once.

Example:
    >>> sim.model.compile(keras.optimizers.Adam(1e-4), loss)
    >>> sim.model.fit(x, y, epochs=4, callbacks=[
    ...     FreezeBatchNormStats(after_epochs=2),
    ...     FreezeQuantizerRanges(after_epochs=3),
    ...     QuantizerRangeLogger("logs/qat"),
    ... ])
"""

from __future__ import annotations

import os
import re

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aimet_tf.qat.targets import find_batch_norms, find_quantizers, resolve_model
from aimet_tf.quantization.quantizers import Quantizer
from aimet_tf.quantization.sim import QuantizationSimModel

__all__ = [
    "BN_FREEZE_MODES",
    "freeze_batch_norm_stats",
    "freeze_quantizer_ranges",
    "FreezeBatchNormStats",
    "FreezeQuantizerRanges",
    "QuantizerRangeLogger",
    "histogram_buckets",
    "range_tag",
]

BN_FREEZE_MODES = ("inference", "momentum")
"""How ``freeze_batch_norm_stats`` freezes: see its docstring."""

_KINDS = ("activation", "param")


def _check_after_epochs(after_epochs: int) -> int:
    if isinstance(after_epochs, bool) or not isinstance(after_epochs, (int, np.integer)) or after_epochs < 0:
        raise ValueError(
            f"Expected after_epochs to be an integer >= 0 (0 freezes from the start). Received: "
            f"after_epochs={after_epochs!r}"
        )
    return int(after_epochs)


def _check_kinds(kinds) -> tuple[str, ...]:
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds or set(kinds) - set(_KINDS):
        raise ValueError(f"Expected kinds from {_KINDS}. Received: kinds={kinds!r}")
    return kinds


def _retrace_training(model: keras.Model | None) -> None:
    # Trainability and BN flags are baked into the traced step: build a fresh one. Harmless before
    # the first step (tracing is lazy) and outside fit (train_function is then rebuilt on demand).
    if model is not None and getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)


def freeze_batch_norm_stats(
    sim_or_model: QuantizationSimModel | keras.Model, mode: str = "inference"
) -> list[keras.layers.BatchNormalization]:
    """Stops every BatchNormalization layer from updating its moving statistics.

    Modes:
      * "inference": ``layer.trainable = False``. In Keras 3 this makes BN normalize with its moving
        statistics during training as well (y = gamma * (x - moving_mean) / sqrt(moving_var + eps)
        + beta), so training sees exactly the arithmetic of inference; gamma and beta stop
        training too. This is the usual "freeze BN" of QAT recipes.
      * "momentum": ``layer.momentum = 1.0``. Training still normalizes with batch statistics and
        keeps training gamma/beta, but moving_stat <- 1.0 * moving_stat + 0.0 * batch_stat leaves
        the statistics unchanged.

    Call it outside ``fit`` or use ``FreezeBatchNormStats``; a compiled model's train function is
    rebuilt so that the change takes effect.

    Args:
        sim_or_model: a ``QuantizationSimModel``, its ``sim.model`` or any Keras model.
        mode: "inference" or "momentum".

    Returns:
        The layers that were frozen.

    Raises:
        ValueError: for an unknown mode.
    """
    if mode not in BN_FREEZE_MODES:
        raise ValueError(f"Expected mode in {BN_FREEZE_MODES}. Received: mode={mode!r}")
    layers = find_batch_norms(sim_or_model)
    for layer in layers:
        if mode == "inference":
            layer.trainable = False
        else:
            layer.momentum = 1.0
    _retrace_training(resolve_model(sim_or_model))
    return layers


def freeze_quantizer_ranges(
    sim_or_model: QuantizationSimModel | keras.Model, kinds: tuple[str, ...] = _KINDS
) -> list[tuple[str, Quantizer]]:
    """Makes quantizer ranges fixed: encoding_min/max become non-trainable and the quantizers frozen.

    With range learning, ``fit`` stops updating the ranges from the next step on (the optimizer
    only receives gradients for trainable variables, so Adam moments of the ranges simply stop).
    ``frozen`` also keeps a later ``sim.compute_encodings`` from overwriting the learned ranges,
    and it is saved with the model: a reloaded sim keeps the ranges fixed. Static ranges never
    train; they are only marked frozen.

    Args:
        sim_or_model: a ``QuantizationSimModel`` or its ``sim.model``.
        kinds: "activation" and/or "param" quantizers.

    Returns:
        (name, quantizer) of every quantizer frozen.
    """
    kinds = _check_kinds(kinds)
    pairs = find_quantizers(sim_or_model, kinds)
    for _, q in pairs:
        q.frozen = True  # also makes encoding_min/max non-trainable
    _retrace_training(resolve_model(sim_or_model))
    return pairs


class FreezeBatchNormStats(keras.callbacks.Callback):
    """Freezes BatchNormalization statistics once ``after_epochs`` epochs have run.

    At the start of epoch ``after_epochs`` (0-based; 0 freezes before the first step) it calls
    ``freeze_batch_norm_stats(self.model, mode)``, so the statistics seen in the first
    ``after_epochs`` epochs adapt to the quantization noise and stay fixed afterwards.

    Args:
        after_epochs: number of epochs to train with BN updating.
        mode: "inference" (BN uses moving statistics, gamma/beta frozen) or "momentum" (statistics
            frozen, batch statistics still used, gamma/beta still trained).

    Attributes:
        frozen_at_epoch: the epoch at which the freeze happened, or None.
    """

    def __init__(self, after_epochs: int, mode: str = "inference"):
        super().__init__()
        self.after_epochs = _check_after_epochs(after_epochs)
        if mode not in BN_FREEZE_MODES:
            raise ValueError(f"Expected mode in {BN_FREEZE_MODES}. Received: mode={mode!r}")
        self.mode = mode
        self.frozen_at_epoch: int | None = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if self.frozen_at_epoch is None and epoch >= self.after_epochs:
            layers = freeze_batch_norm_stats(self.model, self.mode)
            self.frozen_at_epoch = epoch
            logging.info(
                "FreezeBatchNormStats: froze %d BatchNormalization layers (mode=%s) at epoch %d",
                len(layers), self.mode, epoch,
            )


class FreezeQuantizerRanges(keras.callbacks.Callback):
    """Freezes quantizer ranges once ``after_epochs`` epochs have run.

    At the start of epoch ``after_epochs`` (0-based) it calls ``freeze_quantizer_ranges``: with
    range learning the ranges then stay where training put them while the weights keep training
    on the fixed grid.

    Args:
        after_epochs: number of epochs during which ranges may learn.
        kinds: "activation" and/or "param" quantizers to freeze.

    Attributes:
        frozen_at_epoch: the epoch at which the freeze happened, or None.
    """

    def __init__(self, after_epochs: int, kinds: tuple[str, ...] = _KINDS):
        super().__init__()
        self.after_epochs = _check_after_epochs(after_epochs)
        self.kinds = _check_kinds(kinds)
        self.frozen_at_epoch: int | None = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if self.frozen_at_epoch is None and epoch >= self.after_epochs:
            pairs = freeze_quantizer_ranges(self.model, self.kinds)
            self.frozen_at_epoch = epoch
            logging.info(
                "FreezeQuantizerRanges: froze %d quantizer ranges (%s) at epoch %d",
                len(pairs), "+".join(self.kinds), epoch,
            )


_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_./-]")
_HISTOGRAM_BUCKETS = 30


def _metadata(plugin: str) -> tf.compat.v1.SummaryMetadata:
    return tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name=plugin)
    )


def _write_scalar(tag: str, value: float) -> None:
    # tf.summary.write in TensorBoard's own layout ("scalars" plugin, float32 scalar tensor), so
    # that logging needs no tensorboard package; TensorBoard reads the files as usual.
    tf.summary.write(tag, tf.constant(value, tf.float32), metadata=_metadata("scalars"))


def histogram_buckets(values: np.ndarray, bucket_count: int = _HISTOGRAM_BUCKETS) -> np.ndarray:
    """TensorBoard histogram tensor [k, 3] of (left edge, right edge, count), float64.

    k equal-width buckets from min to max; all-equal values give one bucket [v, v, n].
    """
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size == 0:
        return np.zeros((0, 3), np.float64)
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        return np.array([[lo, hi, float(values.size)]], np.float64)
    counts, edges = np.histogram(values, bins=bucket_count, range=(lo, hi))
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)


def _write_histogram(tag: str, values: np.ndarray) -> None:
    tf.summary.write(tag, tf.constant(histogram_buckets(values)), metadata=_metadata("histograms"))


def range_tag(name: str, field: str, prefix: str = "quantizer_ranges") -> str:
    """TensorBoard tag of one range field: "quantizer_ranges/conv1/output_0/max"."""
    return f"{prefix}/{_TAG_UNSAFE.sub('_', name)}/{field}"


class QuantizerRangeLogger(keras.callbacks.Callback):
    """Writes every calibrated quantizer's range to TensorBoard event files.

    Per-tensor quantizers get scalars ``quantizer_ranges/<tensor>/min`` and ``.../max``; per-channel
    quantizers get scalars ``.../min_mean`` and ``.../max_mean`` (the channel averages) and, with
    ``histograms``, histograms ``.../min`` and ``.../max`` over channels. Tensor names are those of
    the encodings file with ':' replaced by '_' (e.g. ``conv1/output_0``, ``conv1/kernel_0``).
    The ranges are logged when training starts and then after every epoch (step = epochs done
    with this callback) or every ``update_freq`` batches (step = batches done). View with
    ``tensorboard --logdir <log_dir>``. The files are written with ``tf.summary.write`` in
    TensorBoard's scalar/histogram layout, so the tensorboard package is only needed to view them.

    Args:
        log_dir: folder for the event files (created if missing).
        update_freq: "epoch" or a number of batches between two logs.
        histograms: also write per-channel histograms.
        kinds: "activation" and/or "param" quantizers.

    Attributes:
        steps_logged: the summary steps written so far.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        update_freq: str | int = "epoch",
        histograms: bool = True,
        kinds: tuple[str, ...] = _KINDS,
    ):
        super().__init__()
        if update_freq != "epoch" and (
            isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1
        ):
            raise ValueError(
                f"Expected update_freq='epoch' or a positive number of batches. Received: "
                f"update_freq={update_freq!r}"
            )
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self.histograms = bool(histograms)
        self.kinds = _check_kinds(kinds)
        self.steps_logged: list[int] = []
        self._writer = None
        self._batches = 0
        self._epochs = 0

    def _log(self, step: int) -> None:
        pairs = [(n, q) for n, q in find_quantizers(self.model, self.kinds) if q.enabled and q.is_initialized]
        with self._writer.as_default(step=step):
            for name, q in pairs:
                mn = np.asarray(q.encoding_min.numpy())
                mx = np.asarray(q.encoding_max.numpy())
                if mn.ndim == 0:
                    _write_scalar(range_tag(name, "min"), float(mn))
                    _write_scalar(range_tag(name, "max"), float(mx))
                else:
                    _write_scalar(range_tag(name, "min_mean"), float(mn.mean()))
                    _write_scalar(range_tag(name, "max_mean"), float(mx.mean()))
                    if self.histograms:
                        _write_histogram(range_tag(name, "min"), mn)
                        _write_histogram(range_tag(name, "max"), mx)
        self._writer.flush()
        self.steps_logged.append(step)

    def on_train_begin(self, logs=None) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        self._log(self._epochs if self.update_freq == "epoch" else self._batches)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self._batches += 1
        if self.update_freq != "epoch" and self._batches % self.update_freq == 0:
            self._log(self._batches)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self._epochs += 1
        if self.update_freq == "epoch":
            self._log(self._epochs)

    def on_train_end(self, logs=None) -> None:
        if self._writer is not None:
            self._writer.flush()
