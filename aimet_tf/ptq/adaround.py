"""AdaRound: learn whether each weight rounds up or down (Nagel et al., ICML 2020, arXiv 2004.10568).

Nearest rounding minimises each weight's own error, not the error of the layer's output. AdaRound
keeps every weight on one of its two neighbouring grid points, floor(W/s) or floor(W/s) + 1, and
picks between them per weight by minimising the layer's output error on real data, one layer
at a time, in graph order:

    W_soft = s * clip(floor(W/s) + h(V) - o, 0, 2^b - 1) + s * o
    h(V)   = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),   zeta = 1.1, gamma = -0.1
    loss   = mean_rows ||f(W_soft x_q) - f(W x)||^2 + lambda * sum(1 - |2 h(V) - 1|^beta)

with s, o the weight quantizer's scale and (AIMET, <= 0) offset, x_q the layer's input in the
partly quantized model (earlier layers already AdaRounded, activations quantized), x its input
in the float model, f the layer plus its activation (a built-in one, or an activation layer
that is its only consumer, as AIMET pairs them), ||.||^2 summed over output channels and
averaged over every other axis (AIMET's reconstruction loss). The rounding term is off for the
first ``warm_start`` fraction of iterations; then beta anneals from 20 to 2 on a cosine.
V starts where h(V) = frac(W/s) (the soft weight equals the float weight) and is trained with
Adam (lr 1e-3) on batches of 32 cached samples. The final rounding is hard: h = [V > 0]. One
cached sample in five is held out of the optimisation (``AdaroundParameters.held_out_fraction``):
a layer keeps its learned rounding only if it reconstructs the layer's float output better than
nearest rounding on those samples, so a rounding fitted to the samples it learned on (a Dense
with many inputs on a few hundred samples) is not kept.

Batch norms are folded first (``aimet_tf.ptq.batch_norm_fold``): AdaRound must round the weights
the integer runtime will use.

Each kernel is one "module" (AIMET's unit): a Conv / Depthwise / Dense / EinsumDense layer's
kernel, or one of the four projections (EinsumDense sublayers) of a ``MultiHeadAttention`` that
the sim runs op by op (``aimet_tf.quantization.transformer``). A projection is optimised like a
layer: x_q is what it reads in the simulation (the query projection the layer's first input, the
key and value projections the key / value input, i.e. the first input too for self-attention
``mha(x, x)``, each after the wrapper's input quantizers; the output projection the quantized
attention context, computed with the query, key and value projections already AdaRounded) and
the target its float output on the float model's inputs. Its kernel's encoding is the sim's, so
the exported file names it as the sim does (``mha/query_dense/kernel:0``). The reconstruction
loss sums over a projection's output channels: (heads, head_dim) for the query, key and value.

Speed: each layer's inputs and targets are computed once and cached, by running the quantized and
the float graphs forward from where the previous layer left off (one pass over each model in
total, not one per layer); the optimisation runs as a
compiled ``tf.function`` executing ``steps_per_call`` Adam steps per call inside a
``tf.while_loop`` over pre-sampled batch indices, so Python only runs between calls (progress
bar, callbacks). 1x1 convolutions run as a matmul over channels (faster than the convolution
kernels here). XLA (``jit_compile=True``) is available but off by default: on this CPU it made the
3x3 and depthwise convolution steps 20-300x slower and the 1x1 (matmul) step about as fast
(benchmarks/bench_adaround.py measures it).

Example:
    >>> params = AdaroundParameters(x_calibration, num_batches=63, default_num_iterations=2000)
    >>> ada_model = apply_adaround(model, params, path="out", filename_prefix="ada")
    >>> sim = QuantizationSimModel(ada_model, default_param_bw=4, default_output_bw=8)
    >>> sim.set_and_freeze_param_encodings("out/ada.encodings")
    >>> sim.compute_encodings(x_calibration)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging as pylogging
import math
import os
import time
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aimet_tf import distribute, files
from aimet_tf.graph import GraphRunner, ModelGraph, activation_kind
from aimet_tf.ptq import adaround_checkpoint
from aimet_tf.quantization import calibration_data, encodings_io, graph, primitives, transformer
from aimet_tf.quantization.analyzers import QuantScheme, parse_quant_scheme
from aimet_tf.quantization.quantizers import Quantizer
from aimet_tf.quantization.sim import QuantizationSimModel
from aimet_tf.quantization.wrapper import QuantizationWrapper

__all__ = [
    "ADAROUND_LAYERS",
    "ATTENTION_PROJECTIONS",
    "ZETA",
    "GAMMA",
    "AdaroundParameters",
    "apply_adaround",
    "rectified_sigmoid",
    "initial_rounding_logits",
    "annealed_beta",
    "rounding_regularizer",
    "reconstruction_loss",
    "einsum_output_channel_axes",
]

# Stretch of the rectified sigmoid (paper, section 3.2): h reaches exactly 0 and 1.
ZETA = 1.1
GAMMA = -0.1

_L = keras.layers
# Layers whose single kernel AdaRound optimises (their own call() is reused, so any of them works
# as long as one variable named ``kernel`` holds all the weights). MultiHeadAttention is handled
# per projection (ATTENTION_PROJECTIONS).
ADAROUND_LAYERS: tuple[type, ...] = (
    _L.Conv1D,
    _L.Conv2D,
    _L.DepthwiseConv1D,
    _L.DepthwiseConv2D,
    _L.Dense,
    _L.Conv1DTranspose,
    _L.Conv2DTranspose,
    _L.EinsumDense,
)
# A MultiHeadAttention's four projections (EinsumDense sublayers), each AdaRounded on its own in
# this order: query, key and value read the layer's inputs, the output projection the attention
# context computed from the (already AdaRounded) query, key and value.
ATTENTION_PROJECTIONS: tuple[str, ...] = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
# An activation layer that is a layer's only consumer is part of f() (AIMET's module/activation
# pairs), softmax included; activation layers with a "linear" function are not.


# ----------------------------------------------------------------------------------------------
# Parameters


@dataclasses.dataclass
class AdaroundParameters:
    """AdaRound's settings (AIMET's ``AdaroundParameters``), validated on construction.

    Attributes:
        data_set: calibration inputs, read by ``aimet_tf.quantization.calibration_data``: an
            array [N, ...] or an (x, y) tuple of arrays (cut into batches of ``batch_size``), or a
            list / ``tf.data.Dataset`` / iterable of x or (x, y) batches (a list is always a list
            of batches). May be None when ``apply_adaround`` is given the data itself.
        num_batches: how many batches of ``data_set`` are cached and optimised on (AIMET uses
            about 2,000 samples).
        default_num_iterations: Adam steps per layer.
        default_reg_param: lambda, the weight of the rounding regularizer.
        default_beta_range: (start, end) of beta, annealed on a cosine after the warm start.
        default_warm_start: fraction of the iterations without the rounding term, in [0, 1).
        learning_rate: Adam learning rate (AIMET: torch's default 1e-3).
        batch_size: samples per optimisation step (AIMET: 32), also the batch size used to cut an
            array ``data_set``.
        held_out_fraction: fraction of the cached samples (every k-th one, k = round(1 / fraction),
            so that sorted data is spread evenly) that the rounding is not learned on; a layer keeps
            its learned rounding only where it reconstructs the layer's float output better than
            nearest rounding on these samples. A layer whose fan-in is large against its number of
            output rows (a final Dense on a few hundred samples) can fit its rounding to the
            cached samples and generalise worse than nearest; the held-out samples see it. In
            [0, 0.5]; 0 learns on every sample and compares on them too (AIMET learns on all).
            Fewer than 2 * k samples: nothing is held out.

    Raises:
        ValueError: for a parameter out of range, naming it, its expected range and its value.
    """

    data_set: Any
    num_batches: int
    default_num_iterations: int = 10000
    default_reg_param: float = 0.01
    default_beta_range: tuple[float, float] = (20, 2)
    default_warm_start: float = 0.2
    learning_rate: float = 1e-3
    batch_size: int = 32
    held_out_fraction: float = 0.2

    def __post_init__(self):
        for name in ("num_batches", "default_num_iterations", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(
                    f"AdaroundParameters: expected {name} to be a positive integer. Received: "
                    f"{name}={value!r}"
                )
            setattr(self, name, int(value))
        reg = self.default_reg_param
        if isinstance(reg, bool) or not isinstance(reg, (int, float, np.floating)) or not (
            math.isfinite(reg) and reg >= 0
        ):
            raise ValueError(
                "AdaroundParameters: expected default_reg_param to be a finite number >= 0. "
                f"Received: default_reg_param={reg!r}"
            )
        self.default_reg_param = float(reg)
        beta = self.default_beta_range
        try:
            start, end = (float(b) for b in beta)
        except (TypeError, ValueError):
            raise ValueError(
                "AdaroundParameters: expected default_beta_range to be a (start, end) pair of "
                f"numbers such as (20, 2). Received: default_beta_range={beta!r}"
            ) from None
        if not (math.isfinite(start) and math.isfinite(end) and start >= end > 0):
            raise ValueError(
                "AdaroundParameters: expected default_beta_range=(start, end) with start >= end > 0 "
                f"(beta anneals downwards, e.g. (20, 2)). Received: default_beta_range={beta!r}"
            )
        self.default_beta_range = (start, end)
        warm = self.default_warm_start
        if isinstance(warm, bool) or not isinstance(warm, (int, float, np.floating)) or not 0 <= warm < 1:
            raise ValueError(
                "AdaroundParameters: expected default_warm_start to be a fraction in [0, 1). "
                f"Received: default_warm_start={warm!r}"
            )
        self.default_warm_start = float(warm)
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not (
            math.isfinite(lr) and lr > 0
        ):
            raise ValueError(
                f"AdaroundParameters: expected learning_rate > 0. Received: learning_rate={lr!r}"
            )
        self.learning_rate = float(lr)
        held = self.held_out_fraction
        if isinstance(held, bool) or not isinstance(held, (int, float, np.floating)) or not 0 <= held <= 0.5:
            raise ValueError(
                "AdaroundParameters: expected held_out_fraction to be a fraction in [0, 0.5]. "
                f"Received: held_out_fraction={held!r}"
            )
        self.held_out_fraction = float(held)


# ----------------------------------------------------------------------------------------------
# The maths, as pure functions


def rectified_sigmoid(v: tf.Tensor) -> tf.Tensor:
    """h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1) with zeta = 1.1, gamma = -0.1."""
    return tf.clip_by_value(tf.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_rounding_logits(fraction: np.ndarray) -> np.ndarray:
    """V such that h(V) = fraction (in [0, 1)): V = -log((zeta - gamma) / (fraction - gamma) - 1).

    With this start the soft weight equals the float weight exactly.
    """
    fraction = np.asarray(fraction, np.float64)
    return (-np.log((ZETA - GAMMA) / (fraction - GAMMA) - 1.0)).astype(np.float32)


def annealed_beta(
    iteration: tf.Tensor | float, num_iterations: int, beta_range: tuple[float, float], warm_start: float
) -> tf.Tensor:
    """beta = end + (start - end) / 2 * (1 + cos(pi * r)), r = (t - w T) / (T - w T).

    t is the iteration, T the number of iterations and w the warm-start fraction, so beta runs
    from ``start`` at the end of the warm start to ``end`` at the last iteration.
    """
    start, end = beta_range
    warm_end = warm_start * num_iterations
    rel = (tf.cast(iteration, tf.float32) - warm_end) / max(num_iterations - warm_end, 1e-9)
    return end + 0.5 * (start - end) * (1.0 + tf.cos(rel * math.pi))


def rounding_regularizer(h: tf.Tensor, beta: tf.Tensor | float) -> tf.Tensor:
    """sum(1 - |2h - 1|^beta): 0 when every h is exactly 0 or 1, pushes h there as beta falls."""
    return tf.reduce_sum(1.0 - tf.pow(tf.abs(2.0 * h - 1.0), beta))


def reconstruction_loss(output: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """||output - target||^2 summed over the last (channel) axis, averaged over all other axes."""
    return tf.reduce_mean(tf.reduce_sum(tf.square(output - target), axis=-1))


# ----------------------------------------------------------------------------------------------
# Data


def _collect_samples(data: Any, model: keras.Model, num_batches: int, batch_size: int) -> np.ndarray:
    """The first ``num_batches`` batches of ``data`` (``calibration_data`` rules) as one float32
    array [samples, ...]."""
    batches = list(
        calibration_data.iterate_batches(
            data, calibration_data.model_inputs(model), batch_size, num_batches, purpose="AdaRound data"
        )
    )
    if len(batches) < num_batches:
        raise ValueError(
            f"Expected num_batches={num_batches} batches of AdaRound data. Received: "
            f"{len(batches)} batches (batch size {batch_size} for arrays). Lower num_batches or "
            "pass more data."
        )
    samples = np.concatenate([batch[0] for batch in batches], axis=0)
    if samples.dtype.kind != "f":
        raise ValueError(f"Expected float inputs for AdaRound. Received: dtype={samples.dtype}")
    return samples.astype(np.float32, copy=False)


def _predict(fn: Callable[[tf.Tensor], tf.Tensor], x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    # One trace for every batch size (the last batch is usually smaller).
    step = tf.function(fn, input_signature=[tf.TensorSpec([None, *x.shape[1:]], tf.float32)], autograph=False)
    return np.concatenate(
        [np.asarray(step(tf.constant(x[i : i + batch_size]))) for i in range(0, len(x), batch_size)], axis=0
    )


# ----------------------------------------------------------------------------------------------
# Model preparation


def _fold_batch_norms(model: keras.Model) -> keras.Model:
    """Folds BN into the neighbouring layers with aimet_tf.ptq.batch_norm_fold."""
    from aimet_tf.ptq import batch_norm_fold

    pairs, folded = batch_norm_fold.fold_all_batch_norms(model)
    if not pairs:
        return model
    logging.info("apply_adaround: folded %d batch norms before AdaRound: %s", len(pairs), pairs)
    return folded


@dataclasses.dataclass
class _LayerTask:
    """One kernel to AdaRound: where it sits in the sim and in the float model.

    ``module`` is the layer whose ``kernel`` is optimised and whose call is f(): the wrapped layer
    itself, or one projection (``projection``, e.g. "_query_dense") of a wrapped
    MultiHeadAttention. ``channel_axes`` trailing axes of f's output are its output channels
    (2 for an attention query [B, T, heads, head_dim]); the reconstruction loss sums over them.
    """

    wrapper: QuantizationWrapper
    quantizer: Quantizer
    param_name: str
    activation: keras.layers.Layer | None
    target_layer: str
    module: keras.layers.Layer
    projection: str | None = None
    channel_axes: int = 1

    @property
    def name(self) -> str:
        """The wrapper's name, with the projection for an attention projection ("mha/query_dense")."""
        return self.wrapper.name if self.projection is None else f"{self.wrapper.name}/{self.projection.lstrip('_')}"


def _is_activation(layer: keras.layers.Layer) -> bool:
    return activation_kind(layer) is not None


def einsum_output_channel_axes(equation: str) -> int:
    """How many trailing output axes of an ``EinsumDense`` equation come from its kernel.

    Those are the layer's output channels: "abc,cde->abde" (an attention query, [B, T, heads,
    head_dim]) has 2, "abcd,cde->abe" (its output projection) and "ab,bc->ac" have 1.

    Raises:
        ValueError: for an equation that is not "input,kernel->output" or whose output does not
            end with a kernel axis.
    """
    if not isinstance(equation, str) or equation.count("->") != 1 or equation.split("->")[0].count(",") != 1:
        raise ValueError(
            f"Expected an EinsumDense equation 'input,kernel->output' such as 'abc,cde->abde'. "
            f"Received: {equation!r}"
        )
    operands, output = equation.replace(" ", "").split("->")
    kernel = operands.split(",")[1]
    count = 0
    for letter in reversed(output):
        if letter not in kernel:
            break
        count += 1
    if count == 0:
        raise ValueError(
            f"Expected the output of EinsumDense equation {equation!r} to end with a kernel axis "
            f"(its output channels). Received: output {output!r}, kernel {kernel!r}"
        )
    return count


def _channel_axes(module: keras.layers.Layer) -> int:
    if isinstance(module, _L.EinsumDense):
        return einsum_output_channel_axes(module.equation)
    return 1


def _attention_tasks(wrapper: QuantizationWrapper, activation, target: str) -> list[_LayerTask]:
    """One task per projection of a wrapped MultiHeadAttention whose kernel quantizer is enabled."""
    layer = wrapper.layer
    if not wrapper.internal_names:
        # Not decomposed: the layer's own call runs, and the attention context (the output
        # projection's input) is not a tensor the sim produces.
        logging.warning(
            "apply_adaround: %s (MultiHeadAttention) is not simulated op by op (its config entry "
            "has is_decomposed False); its projections keep nearest rounding.", wrapper.name,
        )
        return []
    quantizers = wrapper.param_quantizers_by_path()
    tasks = []
    for projection in ATTENTION_PROJECTIONS:
        path = f"{projection}.kernel"
        quantizer = quantizers.get(path)
        if not isinstance(quantizer, Quantizer) or not quantizer.enabled:
            logging.info("apply_adaround: %s has no enabled quantizer on %s; skipped.", wrapper.name, path)
            continue
        module = getattr(layer, projection)
        last = projection == "_output_dense"
        tasks.append(
            _LayerTask(
                wrapper, quantizer, encodings_io.param_name(wrapper.name, path),
                activation if last else None, target if last else wrapper.name, module, projection,
                _channel_axes(module),
            )
        )
    return tasks


def _plan(float_model: keras.Model, sim: QuantizationSimModel) -> list[_LayerTask]:
    _, consumers = graph.layer_edges(float_model)
    float_graph = ModelGraph(float_model, "AdaRound")
    outputs = {float_graph.producer(t).operation.name for t in float_graph.output_names if float_graph.producer(t)}
    top_level = {layer.name for layer in sim.model.layers}
    tasks = []
    for wrapper in sim.wrappers():
        layer = wrapper.layer
        attention = isinstance(layer, _L.MultiHeadAttention)
        if not (attention or isinstance(layer, ADAROUND_LAYERS)):
            continue
        if wrapper.name not in top_level:
            logging.warning(
                "apply_adaround: %s sits in a nested model; it keeps nearest rounding.", wrapper.name
            )
            continue
        activation = None
        target = wrapper.name
        following = consumers.get(wrapper.name, [])
        if len(following) == 1 and wrapper.name not in outputs:
            candidate = float_model.get_layer(following[0])
            if _is_activation(candidate):
                activation, target = candidate, candidate.name
        if attention:
            tasks.extend(_attention_tasks(wrapper, activation, target))
            continue
        quantizer = wrapper.param_quantizers_by_path().get("kernel")
        if not isinstance(quantizer, Quantizer) or not quantizer.enabled:
            logging.info("apply_adaround: %s has no enabled weight quantizer; skipped.", wrapper.name)
            continue
        tasks.append(
            _LayerTask(
                wrapper, quantizer, encodings_io.param_name(wrapper.name, "kernel"), activation, target,
                layer, channel_axes=_channel_axes(layer),
            )
        )
    return tasks


# ----------------------------------------------------------------------------------------------
# One layer


@dataclasses.dataclass
class _Grid:
    """A kernel on its quantization grid: level r = (W - min) / scale, kept as floor + fraction."""

    floor: np.ndarray
    fraction: np.ndarray
    scale: np.ndarray  # broadcastable to the kernel
    minimum: np.ndarray
    steps: float


def _grid(kernel: np.ndarray, quantizer: Quantizer) -> _Grid:
    enc = quantizer.get_encoding()
    nmin, _, scale, _ = primitives.nudge(enc.min, enc.max, enc.bitwidth, enc.strict)
    shape = [1] * kernel.ndim
    if enc.per_channel:
        axes = primitives.normalize_channel_axis(quantizer.channel_axis, kernel.ndim)
        for axis in axes:
            shape[axis] = kernel.shape[axis]
    scale = np.asarray(scale, np.float32).reshape(shape)
    nmin = np.asarray(nmin, np.float32).reshape(shape)
    # The same float32 arithmetic as TF's fake-quant kernel: (W - min) * (1 / scale).
    levels = (kernel.astype(np.float32) - nmin) * (np.float32(1.0) / scale)
    floor = np.floor(levels)
    return _Grid(floor, np.clip(levels - floor, 0.0, 1.0), scale, nmin, float(enc.steps))


def _soft_kernel(grid_floor, h, scale, minimum, steps):
    """W_soft = scale * clip(floor + h, 0, steps) + min (= s * clip(floor(W/s) + h - o, 0, 2^b-1) + s*o)."""
    return tf.clip_by_value(grid_floor + h, 0.0, steps) * scale + minimum


class _LayerOptimizer:
    """Owns V, Adam's moments and the compiled multi-step training function of one layer."""

    def __init__(
        self, task: _LayerTask, grid: _Grid, params: AdaroundParameters, jit_compile: bool,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.strategy = strategy
        self.layer = task.module
        self.kernel = self.layer.kernel
        self.activation = task.activation
        self.channel_axes = task.channel_axes
        self.params = params
        self.floor = tf.constant(grid.floor)
        self.scale = tf.constant(grid.scale)
        self.minimum = tf.constant(grid.minimum)
        self.steps = float(grid.steps)
        self.v = tf.Variable(initial_rounding_logits(grid.fraction), name="adaround_v")
        self.m1 = tf.Variable(tf.zeros_like(self.v))
        self.m2 = tf.Variable(tf.zeros_like(self.v))
        self.pointwise = _is_pointwise(self.layer)

        def run(xs, ys, indices, start):
            return self._run(xs, ys, indices, start)

        # A fresh function per layer (one trace each, so TF's frequent-retracing warning does not
        # fire); autograph=False: the loop is an explicit tf.while_loop, nothing needs converting.
        # XLA cannot compile the cross-replica reduction.
        self.run = tf.function(run, jit_compile=jit_compile and strategy is None, reduce_retracing=True, autograph=False)

    def forward(self, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        """f(x): the layer with ``kernel`` in place of its weights, then its activation."""
        if self.pointwise:
            # A 1x1, stride-1 convolution is a matmul over channels; oneDNN's matmul and its
            # gradient are ~25% faster than the convolution kernels for these shapes.
            y = tf.tensordot(x, kernel[0, 0], axes=1)
            if self.layer.use_bias:
                y = y + self.layer.bias
            y = self.layer.activation(y)
        else:
            with keras.StatelessScope(state_mapping=[(self.kernel, kernel)]):
                y = self.layer(x)
        y = self.activation(y) if self.activation is not None else y
        return _merge_channel_axes(y, self.channel_axes)

    def hard_kernel_levels(self) -> np.ndarray:
        """clip(floor(W/s) - o + [V > 0], 0, steps): the final integer levels."""
        return np.clip(self.floor.numpy() + (self.v.numpy() > 0), 0.0, self.steps)

    def _run(self, xs, ys, indices, start):
        """``len(indices)`` Adam steps on batches xs[indices[i]]; returns mean (total, recon, round) loss."""
        p = self.params
        total_steps = float(p.default_num_iterations)
        warm_end = p.default_warm_start * total_steps
        beta1, beta2, eps = 0.9, 0.999, 1e-8

        def body(i, total, recon_sum, round_sum):
            step = tf.cast(start + i, tf.float32)
            x = tf.gather(xs, indices[i])
            y = tf.gather(ys, indices[i])
            beta = annealed_beta(step, p.default_num_iterations, p.default_beta_range, p.default_warm_start)
            if self.strategy is None:
                with tf.GradientTape() as tape:
                    h = rectified_sigmoid(self.v)
                    out = self.forward(x, _soft_kernel(self.floor, h, self.scale, self.minimum, self.steps))
                    recon = reconstruction_loss(out, y)
                    round_term = p.default_reg_param * rounding_regularizer(h, beta)
                    round_term = tf.where(step < warm_end, 0.0, round_term)
                    loss = recon + round_term
                grad = tape.gradient(loss, self.v)
            else:
                recon, round_term, grad = self._replica_loss(x, y, beta, step < warm_end)
                loss = recon + round_term
            # Adam (torch's form, as AIMET uses): bias-corrected moments, eps added after the sqrt.
            t = step + 1.0
            self.m1.assign(beta1 * self.m1 + (1.0 - beta1) * grad)
            self.m2.assign(beta2 * self.m2 + (1.0 - beta2) * tf.square(grad))
            denom = tf.sqrt(self.m2) / tf.sqrt(1.0 - tf.pow(beta2, t)) + eps
            self.v.assign_sub(p.learning_rate / (1.0 - tf.pow(beta1, t)) * self.m1 / denom)
            return i + 1, total + loss, recon_sum + recon, round_sum + round_term

        n = tf.shape(indices)[0]
        zero = tf.constant(0.0)
        _, total, recon, rounding = tf.while_loop(
            lambda i, *_: i < n, body, (tf.constant(0), zero, zero, zero)
        )
        count = tf.cast(n, tf.float32)
        return total / count, recon / count, rounding / count

    def _replica_loss(self, x: tf.Tensor, y: tf.Tensor, beta: tf.Tensor, warming: tf.Tensor):
        """(reconstruction loss, rounding term, gradient of their sum in V) of batch (x, y), the
        batch's rows split across the strategy's replicas: replica r of R takes rows
        [r n / R, (r + 1) n / R) with its loss weighted by its share of rows, and 1/R of the
        rounding term, so the sums over replicas are the whole batch's (the loss is a mean over
        rows of equal size), up to float reduction order. Every worker holds the whole batch (it
        caches the same layer data), so only these three values cross replicas."""
        p = self.params

        def replica(x, y):
            context = tf.distribute.get_replica_context()
            r, count = context.replica_id_in_sync_group, context.num_replicas_in_sync
            n = tf.shape(x)[0]
            lo, hi = r * n // count, (r + 1) * n // count
            # Differentiated in the value of V this replica reads (a mirrored variable's local copy
            # when the sim was built under the strategy's scope).
            v = tf.convert_to_tensor(self.v)
            with tf.GradientTape() as tape:
                tape.watch(v)
                h = rectified_sigmoid(v)
                out = self.forward(x[lo:hi], _soft_kernel(self.floor, h, self.scale, self.minimum, self.steps))
                recon = reconstruction_loss(out, y[lo:hi]) * tf.cast(hi - lo, tf.float32) / tf.cast(n, tf.float32)
                round_term = p.default_reg_param * rounding_regularizer(h, beta) / float(count)
                round_term = tf.where(warming, 0.0, round_term)
                total = recon + round_term
            return recon, round_term, tape.gradient(total, v)

        summed = self.strategy.run(replica, args=(x, y))
        return tuple(self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in summed)

    def reconstruction_error(self, xs: tf.Tensor, ys: tf.Tensor, kernel: tf.Tensor, batch: int = 500) -> float:
        """AIMET's reconstruction loss of ``kernel`` over all cached samples (eager: no tracing)."""
        total, count = 0.0, 0
        for i in range(0, int(xs.shape[0]), batch):
            y = ys[i : i + batch]
            error = tf.square(self.forward(xs[i : i + batch], kernel) - y)
            total += float(tf.reduce_sum(error))
            count += int(np.prod(y.shape[:-1]))
        return total / max(count, 1)


def _merge_channel_axes(y, channel_axes: int):
    """``y`` with its last ``channel_axes`` axes flattened into one channel axis."""
    if channel_axes == 1:
        return y
    shape = tf.shape(y)
    return tf.reshape(y, tf.concat([shape[:-channel_axes], [-1]], axis=0))


def _is_pointwise(layer: keras.layers.Layer) -> bool:
    """A channels-last Conv2D with a 1x1 kernel, stride 1, no dilation and no groups."""
    if type(layer) is not _L.Conv2D:
        return False
    config = layer.get_config()
    return (
        tuple(config["kernel_size"]) == (1, 1)
        and tuple(config["strides"]) == (1, 1)
        and tuple(config["dilation_rate"]) == (1, 1)
        and config.get("groups", 1) == 1
        and config.get("data_format", "channels_last") == "channels_last"
    )


class _RetracingWarningFilter(pylogging.Filter):
    """Drops TF's "frequent retracing" warning: each layer's loop is a new function traced once."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_retracing_warning() -> Iterator[None]:
    logger = pylogging.getLogger("tensorflow")
    quiet = _RetracingWarningFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _split_held_out(num_samples: int, fraction: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(indices learned on, indices held out): every k-th sample, k = round(1 / fraction), held out
    (evenly spread over sorted data); None held out for fraction 0 or fewer than 2 * k samples."""
    if fraction <= 0:
        return np.arange(num_samples), None
    k = max(2, int(round(1.0 / fraction)))
    if num_samples < 2 * k:
        return np.arange(num_samples), None
    index = np.arange(num_samples)
    held = index % k == k - 1
    return index[~held], index[held]


def _batch_indices(rng: np.random.Generator, num_samples: int, num_steps: int, batch_size: int) -> np.ndarray:
    """[num_steps, batch] sample indices: shuffled passes over the cache, no repeats within a pass."""
    batch_size = min(batch_size, num_samples)
    per_pass = num_samples // batch_size
    passes = -(-num_steps // per_pass)
    rows = [rng.permutation(num_samples)[: per_pass * batch_size].reshape(per_pass, batch_size) for _ in range(passes)]
    return np.concatenate(rows, axis=0)[:num_steps].astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Entry point


def apply_adaround(
    model: keras.Model,
    params: AdaroundParameters,
    path: str | os.PathLike | None = None,
    filename_prefix: str = "adaround",
    default_param_bw: int = 4,
    default_quant_scheme: str | QuantScheme = "auto",
    config_file: Any = None,
    *,
    default_output_bw: int = 8,
    quantize_activations: bool = True,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    verbose: int = 1,
    steps_per_call: int = 250,
    jit_compile: bool = False,
    seed: int = 0,
) -> keras.Model:
    """Optimises the rounding of every Conv/Depthwise/Dense/EinsumDense kernel and of the four
    projections of every MultiHeadAttention, and returns the AdaRounded model.

    Batch norms are folded first (``aimet_tf.ptq.batch_norm_fold``). A quantization simulation of
    the folded model (``default_quant_scheme``, ``default_param_bw``, ``config_file``)
    provides each weight's encoding and, with ``quantize_activations``, the quantized activations
    that feed later layers. Layers are processed in graph order; see the module docstring for the
    loss. Afterwards each kernel holds its hard-rounded, dequantized value
    s * (clip(floor(W/s) + [V > 0] - o, 0, 2^b - 1) + o), exactly on the encoding's grid.

    Called under a ``tf.distribute`` strategy's scope with several replicas (MirroredStrategy,
    MultiWorkerMirroredStrategy), each step's batch is split across the replicas and their losses
    and gradients summed (``_LayerOptimizer._replica_loss``): the same result as one device up to
    float reduction order (measured identical on the bundled model, ``tests/test_distribute.py``).
    Every worker caches the layer data itself, from the same ``params.data_set``.

    Args:
        model: Functional or Sequential Keras model with one input. It is not modified.
        params: ``AdaroundParameters``; its ``data_set`` holds the calibration data.
        path: folder for ``{filename_prefix}.encodings``, the AIMET 0.6.1 parameter encodings
            to load with ``QuantizationSimModel.set_and_freeze_param_encodings``; checked for
            writability before anything runs. It also holds the per-layer checkpoint
            ``{filename_prefix}.adaround_checkpoint/`` (``aimet_tf.ptq.adaround_checkpoint``): a
            rerun with the same model, data and settings skips the layers finished before an
            interruption and gives the same result. The checkpoint is deleted after a complete
            run (kept when a callback stopped it). Every file is replaced atomically. None
            writes no file and keeps no checkpoint.
        filename_prefix: file name stem.
        default_param_bw: weight bitwidth (AIMET's default 4).
        default_quant_scheme: "auto" (the sim's default: weights ``output_mse``, activations
            ``tf_enhanced``), "tf", "tf_enhanced" or "mse" (how weight/activation ranges are picked).
        config_file: hardware config (None = AIMET's default config, "htp", a JSON path, a dict).
        default_output_bw: activation bitwidth of the simulation feeding later layers.
        quantize_activations: feed each layer activations quantized to ``default_output_bw``
            (AIMET's own AdaRound disables activation quantizers instead: pass False for that).
        callbacks: Keras callbacks. Each layer is an "epoch": ``on_epoch_end(layer_index, logs)``
            gets loss, iterations, recon_error_nearest and recon_error_adaround (reconstruction
            loss of both roundings on the held-out samples, see
            ``AdaroundParameters.held_out_fraction``; on all cached samples when none are held
            out), kept_nearest (the learned rounding reconstructed worse than nearest rounding
            there, so the layer keeps nearest),
            changed_fraction (weights rounded differently from nearest), seconds (the layer, caching included),
            optimization_seconds and first_call_seconds (tracing); a layer taken from the
            checkpoint reports its stored values plus resumed=1. Each call of
            ``steps_per_call`` steps is a "batch": ``on_train_batch_end(call_index, logs)`` with
            the call's mean loss, recon_loss, round_loss and the iteration reached.
            ``callback.model`` is the internal simulation's Keras model; setting its
            ``stop_training = True`` stops AdaRound: the current layer takes the hard rounding
            reached so far (or nearest, if that reconstructs better), the remaining layers keep their float weights (nearest rounding once
            the exported encodings are applied).
        verbose: 1 shows a progress bar per layer, 0 is silent.
        steps_per_call: optimisation steps per compiled call (progress/callback granularity).
        jit_compile: compile the step loop with XLA (slower on CPU convolutions; see above).
        seed: seeds the batch sampling.

    Returns:
        A new Keras model (BN folded) whose AdaRounded kernels are the dequantized weights.

    Raises:
        ValueError: bad arguments, data, or a model with several inputs.
        OSError: ``path`` cannot be created or written to (raised before optimising).
        TypeError: a model that is not a Functional or Sequential Keras model.

    Example:
        >>> params = AdaroundParameters(x_cal, num_batches=8, default_num_iterations=500)
        >>> ada = apply_adaround(model, params, path="/tmp/ada", filename_prefix="m")
    """
    if not isinstance(params, AdaroundParameters):
        raise TypeError(
            f"Expected params to be an AdaroundParameters. Received: {type(params).__name__}"
        )
    scheme = parse_quant_scheme(default_quant_scheme)
    accepted = (QuantScheme.post_training_tf, QuantScheme.post_training_tf_enhanced,
                QuantScheme.post_training_mse, QuantScheme.post_training_auto)
    if scheme not in accepted:
        raise ValueError(
            f"Expected default_quant_scheme in {[s.value for s in accepted]} for AdaRound. Received: "
            f"default_quant_scheme={default_quant_scheme!r}"
        )
    if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, int) or steps_per_call < 1:
        raise ValueError(f"Expected steps_per_call >= 1. Received: steps_per_call={steps_per_call!r}")
    data = params.data_set
    if data is None:
        raise ValueError(
            "Expected calibration data in AdaroundParameters.data_set (AdaroundParameters(data_set, "
            "num_batches, ...)). Received: data_set=None."
        )
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model. Received: {type(model).__name__}")
    strategy = distribute.replica_strategy(model)
    if strategy is not None and params.batch_size < strategy.num_replicas_in_sync:
        raise ValueError(
            f"Expected AdaroundParameters.batch_size >= the {strategy.num_replicas_in_sync} replicas "
            f"each step's batch is split across. Received: batch_size={params.batch_size}"
        )
    if len(model.inputs or []) != 1:
        raise ValueError(
            f"apply_adaround supports models with one input. Received: model {model.name!r} with "
            f"{len(model.inputs or [])} inputs."
        )

    if path is not None:
        files.check_file_name(filename_prefix, "filename_prefix")
        path = adaround_checkpoint.check_writable_folder(path)
    samples = _collect_samples(data, model, params.num_batches, params.batch_size)
    checkpoint = None
    if path is not None:
        settings = {
            "params": {
                f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.name != "data_set"
            },
            "default_param_bw": default_param_bw,
            "default_quant_scheme": scheme.value,
            "config_file": config_file,
            "default_output_bw": default_output_bw,
            "quantize_activations": quantize_activations,
            "jit_compile": jit_compile,
            "seed": seed,
        }
        checkpoint = adaround_checkpoint.LayerCheckpoint(
            os.path.join(path, f"{filename_prefix}{adaround_checkpoint.CHECKPOINT_SUFFIX}"),
            adaround_checkpoint.run_fingerprint(model, samples, settings),
        )
    if graph.has_nested_models(model):
        # Every layer on one graph level, so that nested layers get AdaRound too.
        model = graph.flatten_nested_models(model)
    float_model = _fold_batch_norms(model)
    if isinstance(float_model, keras.Sequential):
        float_model = keras.Model(float_model.inputs, float_model.outputs, name=float_model.name)

    sim = QuantizationSimModel(
        float_model,
        quant_scheme=scheme,
        default_output_bw=default_output_bw,
        default_param_bw=default_param_bw,
        config_file=config_file,
    )
    if not quantize_activations:
        for _, q in sim.activation_quantizers():
            q.enabled = False
    sim.compute_encodings(samples, batch_size=256)
    tasks = _plan(float_model, sim)
    logging.info(
        "apply_adaround: %d layers, %d samples, %d iterations each: %s",
        len(tasks), len(samples), params.default_num_iterations, [t.name for t in tasks],
    )

    callback_list = keras.callbacks.CallbackList(list(callbacks or []), model=sim.model)
    sim.model.stop_training = False
    rng = np.random.default_rng(seed)
    callback_list.on_train_begin({"num_layers": len(tasks)})
    quantized = GraphRunner(sim.model, samples)
    reference = GraphRunner(float_model, samples, keep=[t.target_layer for t in tasks])
    resumed = _resumable(checkpoint, tasks)
    finished, stopped = 0, False
    for index, task in enumerate(tasks):
        callback_list.on_epoch_begin(index, {"num_iterations": params.default_num_iterations})
        if index < len(resumed):
            stats = _resume_layer(task, resumed[index], rng)
            logging.info("apply_adaround: %s resumed from the checkpoint in %s", task.name, path)
            finished += 1
            callback_list.on_epoch_end(index, stats)
            continue
        started = time.perf_counter()
        with _quiet_retracing_warning():
            stats, stopped = _adaround_layer(
                task, index, len(tasks), sim, quantized, reference, params, callback_list,
                rng, verbose, steps_per_call, jit_compile,
            )
        stats["seconds"] = time.perf_counter() - started
        finished += 1
        logging.info(
            "apply_adaround: layer %d/%d %s done in %.1f s, reconstruction error nearest %.6g -> "
            "AdaRound %.6g",
            index + 1, len(tasks), task.name, stats["seconds"], stats["recon_error_nearest"],
            stats["recon_error_adaround"],
        )
        if checkpoint is not None and not stopped:
            # Before on_epoch_end: a callback that raises there finds this layer saved.
            checkpoint.add(task.name, task.module.kernel.numpy(), stats, rng.bit_generator.state)
        callback_list.on_epoch_end(index, stats)
        if stopped:
            logging.warning(
                "apply_adaround: stopped by a callback after %d of %d layers (the last one after "
                "%d iterations); the remaining layers keep nearest rounding.",
                finished, len(tasks), stats["iterations"],
            )
            break

    encodings = _param_encodings(sim)
    if checkpoint is not None:
        target = files.output_path(path, filename_prefix, ".encodings")
        checkpoint.publish(encodings, target)
        logging.info("apply_adaround: wrote parameter encodings to %s", target)
        if not stopped:
            checkpoint.remove()
    callback_list.on_train_end({"num_layers": len(tasks)})
    return sim.float_model()


def _resumable(checkpoint: adaround_checkpoint.LayerCheckpoint | None, tasks: list) -> list[dict]:
    """The checkpoint's finished layers when they are a prefix of ``tasks`` (else none)."""
    if checkpoint is None:
        return []
    records = checkpoint.open()
    names = [task.name for task in tasks]
    if [r["name"] for r in records] != names[: len(records)]:
        logging.warning(
            "apply_adaround: the checkpoint in %s lists layers %s, not a prefix of %s; starting afresh.",
            checkpoint.folder, [r["name"] for r in records], names,
        )
        checkpoint.remove()
        return checkpoint.open()
    if records:
        logging.info(
            "apply_adaround: resuming: %d of %d layers finished in %s", len(records), len(tasks),
            checkpoint.folder,
        )
    return records


def _resume_layer(task: _LayerTask, record: dict, rng: np.random.Generator) -> dict:
    """Puts a finished layer's kernel back and the sampling RNG where the layer left it."""
    kernel = task.module.kernel
    if tuple(record["kernel"].shape) != tuple(kernel.shape):
        raise ValueError(
            f"Expected a checkpointed kernel of shape {tuple(kernel.shape)} for layer "
            f"{task.name!r}. Received: shape={tuple(record['kernel'].shape)}."
        )
    kernel.assign(record["kernel"])
    rng.bit_generator.state = record["rng_state"]
    return {**record["stats"], "resumed": 1.0}


def _param_encodings(sim: QuantizationSimModel) -> dict:
    params = {
        name: q.get_encoding() for name, q, _ in sim.param_quantizers() if q.enabled and q.is_initialized
    }
    return encodings_io.to_dict(
        {},
        params,
        version="0.6.1",
        quantizer_args={
            "param_bitwidth": sim.default_param_bw,
            "quant_scheme": sim.quant_scheme.value,
            "dtype": "int",
            "per_channel_quantization": any(e.per_channel for e in params.values()),
        },
    )


def _layer_data(task: _LayerTask, quantized: GraphRunner, reference: GraphRunner):
    """(quantized-model inputs after the layer's input quantizer, float-model targets) of a layer,
    the targets' channel axes merged into one."""
    if task.projection is not None:
        return _projection_data(task, quantized, reference)
    inputs = quantized.inputs_of(task.wrapper.name)
    quantizer = task.wrapper.input_quantizers[0] if task.wrapper.input_quantizers else None
    if quantizer is not None and quantizer.enabled:
        inputs = _predict(quantizer, inputs)
    return inputs, _merge_channels_np(reference.output_of(task.target_layer), task.channel_axes)


def _merge_channels_np(y: np.ndarray, channel_axes: int) -> np.ndarray:
    return y if channel_axes == 1 else y.reshape(*y.shape[:-channel_axes], -1)


def _attention_operand(layer: keras.layers.Layer, projection: str, args: tuple, kwargs: dict):
    """The tensor a query / key / value projection reads in a ``MultiHeadAttention`` call: the
    query; the key, or the value when the call passes no key (``mha(x, x)``); the value."""
    call = transformer._bind_attention_call(layer, args, kwargs)
    if projection == "_query_dense":
        return call["query"]
    if projection == "_key_dense" and call["key"] is not None:
        return call["key"]
    return call["value"]


def _projection_data(task: _LayerTask, quantized: GraphRunner, reference: GraphRunner):
    """(inputs, targets) of one attention projection.

    Inputs come from the sim, like every other layer's: the MultiHeadAttention wrapper runs on the
    quantized model's inputs to it, and records what its projection reads there (the query or
    key/value after the wrapper's input quantizers; for the output projection the attention
    context after its quantizer, computed with the already AdaRounded projections). Targets are
    the float model's: its projection on its float operand, or (output projection) its layer's
    output.
    """
    wrapper, projection = task.wrapper, task.projection
    inputs = []
    for args, kwargs in quantized.call_batches(wrapper.name):
        args, kwargs = tf.nest.map_structure(_as_tensor, (args, kwargs))
        with wrapper.recording() as record:
            wrapper(*args, **kwargs)
        if projection == "_output_dense":
            inputs.append(np.asarray(record.internal["attention_context"][0]))
        else:
            call_args, call_kwargs = record.calls[0]
            inputs.append(np.asarray(_attention_operand(wrapper.layer, projection, call_args, call_kwargs)))
    inputs = np.concatenate(inputs, axis=0)
    if projection == "_output_dense":
        return inputs, _merge_channels_np(reference.output_of(task.target_layer), task.channel_axes)
    float_layer = reference.graph.node(wrapper.name).operation
    float_projection = getattr(float_layer, projection)
    targets = []
    for args, kwargs in reference.call_batches(wrapper.name):
        args, kwargs = tf.nest.map_structure(_as_tensor, (args, kwargs))
        targets.append(np.asarray(float_projection(_attention_operand(float_layer, projection, args, kwargs))))
    return inputs, _merge_channels_np(np.concatenate(targets, axis=0), task.channel_axes)


def _as_tensor(value):
    return tf.constant(value) if isinstance(value, np.ndarray) else value


def _adaround_layer(
    task, index, count, sim, quantized, reference, params, callback_list, rng, verbose, steps_per_call, jit_compile
) -> tuple[dict, bool]:
    name = task.name
    inputs, targets = _layer_data(task, quantized, reference)
    kernel = task.module.kernel
    original = np.asarray(kernel.numpy())
    grid = _grid(original, task.quantizer)
    optimizer = _LayerOptimizer(task, grid, params, jit_compile, distribute.replica_strategy(sim.model))
    learn, held_out = _split_held_out(len(inputs), params.held_out_fraction)
    if held_out is None:
        xs, ys = tf.constant(inputs), tf.constant(targets)
        check_xs, check_ys = xs, ys
    else:
        xs, ys = tf.constant(inputs[learn]), tf.constant(targets[learn])
        check_xs, check_ys = tf.constant(inputs[held_out]), tf.constant(targets[held_out])
    del inputs, targets

    total = params.default_num_iterations
    indices = _batch_indices(rng, int(xs.shape[0]), total, params.batch_size)
    if verbose:
        print(f"AdaRound layer {index + 1}/{count}: {name} ({type(task.module).__name__}"
              f"{' + ' + task.activation.name if task.activation is not None else ''})")
    bar = keras.utils.Progbar(
        total, verbose=verbose, stateful_metrics=["loss", "recon", "round", "beta"], unit_name="step"
    )
    done, call_index, stopped, loss = 0, 0, False, float("nan")
    first_call, started = 0.0, time.perf_counter()
    while done < total:
        n = min(steps_per_call, total - done)
        loss_t, recon_t, round_t = optimizer.run(xs, ys, tf.constant(indices[done : done + n]), tf.constant(done))
        done += n
        loss, recon, rounding = float(loss_t), float(recon_t), float(round_t)
        if call_index == 0:
            # The first call includes tracing (and XLA compilation).
            first_call = time.perf_counter() - started
        beta = float(annealed_beta(max(done - 1, 0), total, params.default_beta_range, params.default_warm_start))
        bar.update(done, values=[("loss", loss), ("recon", recon), ("round", rounding), ("beta", beta)])
        callback_list.on_train_batch_end(
            call_index, {"loss": loss, "recon_loss": recon, "round_loss": rounding, "iteration": done}
        )
        call_index += 1
        if getattr(sim.model, "stop_training", False):
            stopped = True
            break

    optimization_seconds = time.perf_counter() - started
    nearest = task.quantizer(tf.constant(original))
    on_grid = optimizer.hard_kernel_levels() * grid.scale + grid.minimum
    # Through the quantizer itself, so the stored weight is exactly what the sim reproduces.
    adarounded = task.quantizer(tf.constant(on_grid.astype(np.float32)))
    error_nearest = optimizer.reconstruction_error(check_xs, check_ys, nearest)
    error_adaround = optimizer.reconstruction_error(check_xs, check_ys, adarounded)
    # The learned rounding is kept only where it reconstructs the layer's float output better than
    # nearest rounding on the held-out samples (the annealed regulariser can end worse on small
    # layers, and a layer with few output rows per weight can fit its rounding to the samples it
    # learned on: seen on MLTK resnet8's final Dense, 144 samples for 64 weights per channel).
    kept_nearest = not error_adaround <= error_nearest
    stats = {
        "loss": loss,
        "iterations": done,
        "recon_error_nearest": error_nearest,
        "recon_error_adaround": error_adaround,
        "kept_nearest": kept_nearest,
        "changed_fraction": 0.0 if kept_nearest else float(np.mean(adarounded.numpy() != nearest.numpy())),
        "optimization_seconds": optimization_seconds,
        "first_call_seconds": first_call,
    }
    if kept_nearest:
        logging.info(
            "apply_adaround: %s keeps nearest rounding (reconstruction error %.6g, AdaRound's %.6g)",
            name, error_nearest, error_adaround,
        )
    kernel.assign(nearest if kept_nearest else adarounded)
    return stats, stopped
