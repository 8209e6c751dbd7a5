"""Channel pruning: remove input channels of a Conv2D, re-fit its kernel by least squares.

For a Conv2D ``L`` with kernel ``W [kh, kw, c_in, c_out]`` whose input channels come from one
producer ``P`` (a Conv/Dense layer, through channel-wise layers such as BatchNormalization, ReLU
or DepthwiseConv2D with multiplier 1):

1. Patches ``X [rows, kh kw, c_in]`` of L's input are sampled from calibration data on the current
   model, and targets ``Y = X_ref W`` (L's output before bias and activation) from the reference
   model (the uncompressed one, so that earlier prunings are corrected for too).
2. Channel ``c`` is scored by the output energy it carries, ``|X[:, :, c] W[:, c, :]|^2``: the
   reconstruction error of removing it alone. The ``k = max(1, round(ratio c_in))`` highest stay.
3. ``L``'s kernel on the kept channels is re-fit by least squares, ``min |X_kept W' - Y|^2``
   (with a 1e-6 relative ridge), which never does worse on the samples than plain removal.
4. ``aimet_tf.graph.keep_channels`` removes the other output channels of ``P`` and slices every
   layer between them, so the model stays consistent; it refuses, naming the reason, where the
   channels are tied (e.g. P's output also feeds a residual Add).
"""

from __future__ import annotations

import dataclasses
import keras
import numpy as np
import tensorflow as tf

from aimet_tf.graph import GraphRunner, ModelGraph, channel_group, keep_channels

__all__ = ["PruneRecord", "kept_channel_count", "producer_of", "prune_input_channels"]

_L = keras.layers
_PRODUCERS = (_L.Conv1D, _L.Conv2D, _L.Conv3D, _L.Dense, _L.SeparableConv1D, _L.SeparableConv2D, _L.Conv2DTranspose)


@dataclasses.dataclass(frozen=True)
class PruneRecord:
    """What :func:`prune_input_channels` did.

    Attributes:
        layer: the pruned Conv2D; producer: the layer whose output channels went with them.
        kept: the kept input channels of ``layer`` (increasing).
        removal_error: relative output error on the samples with the channels just removed.
        refit_error: the same after the least-squares re-fit (<= removal_error).
    """

    layer: str
    producer: str
    kept: tuple[int, ...]
    removal_error: float
    refit_error: float


def producer_of(model: keras.Model, name: str) -> str:
    """The Conv/Dense layer whose output channels are layer ``name``'s input channels.

    Raises:
        ValueError: for a layer fed by the model input, by a merge, or whose producer's channels
            also reach other layers (naming them).
    """
    graph = ModelGraph(model, "channel pruning")
    producers, _ = graph.layer_edges()
    current = name
    while True:
        sources = producers.get(current, [])
        if len(sources) != 1:
            raise ValueError(
                f"Cannot prune the input channels of {name!r}: {current!r} reads {len(sources)} tensors "
                f"({', '.join(sources) or 'none'}). Expected one producer chain."
            )
        current = sources[0]
        layer = graph.model.get_layer(current)
        if isinstance(layer, _L.InputLayer):
            raise ValueError(f"Cannot prune the input channels of {name!r}: they are the model input's.")
        if isinstance(layer, _PRODUCERS):
            break
    group = channel_group(model, current)
    if group.consumers != (name,):
        raise ValueError(
            f"Cannot prune the input channels of {name!r}: the output channels of its producer {current!r} "
            f"also reach {[c for c in group.consumers if c != name]}. Expected {name!r} to be the only consumer."
        )
    return current


def kept_channel_count(channels: int, ratio: float, multiplicity: int = 1) -> int:
    """round(ratio * channels), at least 1, rounded to a multiple of ``multiplicity`` (at least one
    multiple, at most ``channels``)."""
    keep = max(1, int(round(float(ratio) * channels)))
    if multiplicity > 1:
        keep = min(channels, max(multiplicity, int(round(keep / multiplicity)) * multiplicity))
    return keep


def _patches(x: np.ndarray, layer) -> np.ndarray:
    """[positions, kh kw, c_in] patches of ``layer``'s input ``x`` [n, h, w, c_in]."""
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    patches = tf.image.extract_patches(
        tf.convert_to_tensor(x, tf.float32), sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1],
        rates=[1, dh, dw, 1], padding=layer.padding.upper(),
    ).numpy()
    return patches.reshape(-1, kh * kw, x.shape[-1]).astype(np.float64)


def _subset(samples: np.ndarray, model: keras.Model, name: str, rows: int, seed: int) -> np.ndarray:
    """Enough samples (chosen at random) for about 4x ``rows`` patch rows of layer ``name``."""
    out_shape = ModelGraph(model, "channel pruning").output_specs(name)[0][0]
    positions = int(np.prod(out_shape[1:-1]))
    count = min(len(samples), max(1, -(-4 * rows // positions)))
    return samples[np.sort(np.random.default_rng(seed).permutation(len(samples))[:count])]


def _rows(count: int, limit: int, seed: int) -> np.ndarray:
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def prune_input_channels(
    model: keras.Model,
    name: str,
    ratio: float,
    samples: np.ndarray,
    reference_model: keras.Model | None = None,
    *,
    num_reconstruction_samples: int = 4096,
    multiplicity: int = 1,
    seed: int = 0,
) -> tuple[keras.Model, PruneRecord]:
    """Keeps ``ratio`` of Conv2D ``name``'s input channels (see the module docstring).

    Args:
        model: the model to prune (Functional or Sequential, single input).
        name: a Conv2D (groups=1, channels_last) layer of ``model``.
        ratio: the fraction of input channels kept, in (0, 1].
        samples: calibration inputs of the model (an array of samples).
        reference_model: where the targets come from (default: ``model``); must have a layer
            ``name`` with the same kernel shape.
        num_reconstruction_samples: patch rows used for scoring and the re-fit.
        multiplicity: the kept count is rounded to a multiple of it (see :func:`kept_channel_count`).
        seed: for the choice of rows.

    Returns:
        ``(new model, record)``; ``model`` is untouched.

    Raises:
        ValueError: for a ratio outside (0, 1], a layer that is not a Conv2D, or one whose channels
            cannot be pruned alone (see :func:`producer_of`).
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating)) or not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"Expected a ratio of kept channels in (0, 1]. Received: {ratio!r}")
    layer = model.get_layer(name)
    if type(layer) is not _L.Conv2D or layer.groups != 1 or layer.data_format != "channels_last":
        raise ValueError(
            f"Channel pruning applies to channels_last Conv2D layers with groups=1. Received: {type(layer).__name__} {name!r}"
        )
    producer = producer_of(model, name)
    reference = model if reference_model is None else reference_model
    kernel = layer.kernel.numpy().astype(np.float64)
    kh, kw, c_in, c_out = kernel.shape
    samples = _subset(np.asarray(samples), model, name, num_reconstruction_samples, seed)
    x = _patches(GraphRunner(model, samples).inputs_of(name), layer)
    x_ref = x if reference is model else _patches(GraphRunner(reference, samples).inputs_of(name), reference.get_layer(name))
    rows = _rows(len(x), num_reconstruction_samples, seed)
    x, x_ref = x[rows], x_ref[rows]
    w = kernel.reshape(kh * kw, c_in, c_out)
    y = np.einsum("rpc,pco->ro", x_ref, reference.get_layer(name).kernel.numpy().astype(np.float64).reshape(kh * kw, c_in, c_out))
    keep = kept_channel_count(c_in, ratio, multiplicity)
    energy = np.array([np.sum((x[:, :, c] @ w[:, c, :]) ** 2) for c in range(c_in)])
    kept = np.sort(np.argsort(-energy, kind="stable")[:keep])
    x_kept = x[:, :, kept].reshape(len(x), -1)
    plain = x_kept @ w[:, kept, :].reshape(-1, c_out)
    gram = x_kept.T @ x_kept
    ridge = 1e-6 * np.trace(gram) / max(len(gram), 1)
    refit = np.linalg.solve(gram + ridge * np.eye(len(gram)), x_kept.T @ y)
    norm = max(float(np.linalg.norm(y)), 1e-30)
    record = PruneRecord(
        layer=name,
        producer=producer,
        kept=tuple(int(c) for c in kept),
        removal_error=float(np.linalg.norm(plain - y)) / norm,
        refit_error=float(np.linalg.norm(x_kept @ refit - y)) / norm,
    )
    new = keep_channels(model, producer, kept.tolist())
    new.get_layer(name).kernel.assign(refit.reshape(kh, kw, keep, c_out).astype(np.float32))
    return new, record

