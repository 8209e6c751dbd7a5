"""Tests of the output-aware weight range search (aimet_tf/quantization/output_mse.py)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from aimet_tf import QuantizationSimModel
from aimet_tf.quantization import output_mse
from aimet_tf.quantization.primitives import quantize_dequantize_rows


def _layer(kind: str) -> tuple[keras.layers.Layer, np.ndarray]:
    rng = np.random.default_rng(0)
    if kind == "dense":
        layer, x = keras.layers.Dense(6), rng.normal(size=(40, 12))
    elif kind == "conv":
        layer, x = keras.layers.Conv2D(5, 3, strides=2, padding="same"), rng.normal(size=(6, 9, 9, 4))
    elif kind == "conv_dilated_valid":
        layer, x = keras.layers.Conv2D(3, 3, dilation_rate=2, padding="valid"), rng.normal(size=(4, 10, 10, 2))
    else:
        layer, x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), rng.normal(size=(6, 8, 8, 3))
    x = (x * rng.uniform(0.1, 3.0, x.shape[-1])).astype(np.float32)  # unequal input channels
    layer.build(x.shape)
    kernel = rng.laplace(size=layer.kernel.shape) * rng.uniform(0.2, 2.0, layer.kernel.shape[-1])
    layer.kernel.assign(kernel.astype(np.float32))
    return layer, x


def _quantized_kernel(kernel: np.ndarray, lo, hi, depthwise: bool, tight: bool = False) -> np.ndarray:
    """Symmetric 4-bit quantize-dequantize of ``kernel`` per output channel (range lo..hi; ``tight``:
    the grid ``output_mse`` ranges are meant for, see ``compute_encoding``)."""
    if depthwise:
        rows = np.moveaxis(kernel.reshape(kernel.shape[0] * kernel.shape[1], -1), 0, 1)
    else:
        rows = np.moveaxis(kernel.reshape(-1, kernel.shape[-1]), 1, 0)
    lo = np.broadcast_to(lo, (rows.shape[0],))
    hi = np.broadcast_to(hi, (rows.shape[0],))
    q = quantize_dequantize_rows(rows, lo, hi, 4, True, False, False, tight=tight)
    return np.moveaxis(q, 0, 1).reshape(kernel.shape)


def _output_error(layer, x, kernel_q) -> np.ndarray:
    """Per output channel squared error of the real layer's output (bias cancels)."""
    reference = np.asarray(layer(x))
    saved = layer.kernel.numpy()
    layer.kernel.assign(kernel_q)
    try:
        out = np.asarray(layer(x))
    finally:
        layer.kernel.assign(saved)
    return np.sum((out - reference).astype(np.float64) ** 2, axis=tuple(range(out.ndim - 1)))


@pytest.mark.parametrize("kind", ["dense", "conv", "conv_dilated_valid", "depthwise"])
def test_moment_formula_equals_the_real_layer_output_error(kind):
    layer, x = _layer(kind)
    kernel = layer.kernel.numpy()
    moment = output_mse.input_moment(layer, x)
    depthwise = kind == "depthwise"
    absmax = np.max(np.abs(kernel)) * 0.6
    kernel_q = _quantized_kernel(kernel, -absmax, absmax, depthwise)
    delta = kernel_q - kernel
    rows = (np.moveaxis(delta.reshape(delta.shape[0] * delta.shape[1], -1), 0, 1) if depthwise
            else np.moveaxis(delta.reshape(-1, delta.shape[-1]), 1, 0))
    predicted = output_mse._output_errors(rows, moment, kernel.shape)
    np.testing.assert_allclose(predicted, _output_error(layer, x, kernel_q), rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("kind", ["dense", "conv", "depthwise"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_chosen_range_never_loses_to_minmax_or_sqnr_in_the_layer_output(kind, per_channel):
    from aimet_tf.quantization.analyzers import MinMaxAnalyzer, SqnrAnalyzer

    layer, x = _layer(kind)
    kernel = layer.kernel.numpy()
    depthwise = kind == "depthwise"
    axis = ((2, 3) if depthwise else kernel.ndim - 1) if per_channel else None
    lo, hi = output_mse.choose_range(kernel, output_mse.input_moment(layer, x), 4, True, False, per_channel)
    chosen = _output_error(layer, x, _quantized_kernel(kernel, lo, hi, depthwise, tight=True))
    for cls in (MinMaxAnalyzer, SqnrAnalyzer):
        analyzer = cls(axis)
        analyzer.observe(kernel)
        a_lo, a_hi = analyzer.compute_range(4, True, unsigned_symmetric=False)
        other = _output_error(layer, x, _quantized_kernel(kernel, a_lo, a_hi, depthwise))
        if per_channel:
            assert np.all(chosen <= other * (1 + 1e-3) + 1e-6), cls.__name__
        else:
            assert chosen.sum() <= other.sum() * (1 + 1e-3) + 1e-6, cls.__name__


def _conv_dw_dense_with_unequal_inputs() -> tuple[keras.Model, np.ndarray]:
    """Conv -> depthwise -> Dense, and inputs whose three channels differ in scale by 50x."""
    rng = np.random.default_rng(1)
    inp = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
    y = keras.layers.DepthwiseConv2D(3, name="dw")(y)
    y = keras.layers.Flatten()(y)
    out = keras.layers.Dense(4, name="fc")(y)
    x = rng.normal(size=(64, 8, 8, 3)).astype(np.float32) * np.array([0.1, 1.0, 5.0], np.float32)
    return keras.Model(inp, out), x


def test_sim_auto_searches_kernels_from_data_and_falls_back_with_a_callback():
    model, x = _conv_dw_dense_with_unequal_inputs()
    from_data = QuantizationSimModel(model, quant_scheme="auto", default_param_bw=4, config_file="htp")
    from_data.compute_encodings(x, batch_size=16)
    from_callback = QuantizationSimModel(model, quant_scheme="auto", default_param_bw=4, config_file="htp")
    from_callback.compute_encodings(lambda m, _: m.predict(x, verbose=0), None)
    weight_mse = QuantizationSimModel(model, quant_scheme="tf_enhanced", default_param_bw=4, config_file="htp")
    for _, q, _ in weight_mse.param_quantizers():
        q.quant_scheme = "mse"
    weight_mse.compute_encodings(x, batch_size=16)
    searched = {n: q.get_encoding().max for n, q, _ in from_data.param_quantizers()}
    fallback = {n: q.get_encoding().max for n, q, _ in from_callback.param_quantizers()}
    plain = {n: q.get_encoding().max for n, q, _ in weight_mse.param_quantizers()}
    for name in searched:
        np.testing.assert_array_equal(fallback[name], plain[name])  # callback: weight-only mse
    # With data, the conv kernel's ranges follow its very unequal input channels, not only the weights.
    assert any(not np.array_equal(searched[n], plain[n]) for n in searched)


def test_auto_range_learning_starts_from_the_output_mse_kernel_grids():
    model, x = _conv_dw_dense_with_unequal_inputs()
    sims = {}
    for scheme in ("auto", "auto_range_learning", "mse_range_learning"):
        sims[scheme] = QuantizationSimModel(model, quant_scheme=scheme, default_param_bw=4, config_file="htp")
        sims[scheme].compute_encodings(x, batch_size=16)
    kernels = {s: {n: q.get_encoding().max for n, q, _ in sim.param_quantizers() if "kernel" in n}
               for s, sim in sims.items()}
    assert len(kernels["auto"]) == 3
    for name, ptq in kernels["auto"].items():
        np.testing.assert_allclose(kernels["auto_range_learning"][name], ptq, rtol=1e-6)
    # The searched grids differ from a weight-only mse start on this input.
    assert any(not np.allclose(kernels["mse_range_learning"][n], kernels["auto"][n]) for n in kernels["auto"])
    assert all(q.range_learning for _, q, _ in sims["auto_range_learning"].param_quantizers())


def test_subclasses_are_searched_only_when_they_keep_the_base_computation():
    class Compat(keras.layers.DepthwiseConv2D):  # a loader's subclass: same call
        pass

    class Scaled(keras.layers.DepthwiseConv2D):  # a different function: not expressible as dW^T H dW
        def call(self, x):
            return 2.0 * super().call(x)

    assert output_mse.supports(Compat(3)) and not output_mse.supports(Scaled(3))
    layer, x = _layer("depthwise")
    compat = Compat(3, depth_multiplier=2, padding="same")
    compat.build(x.shape)
    assert output_mse.input_moment(compat, x).depthwise


def _model_output_error(sim, x) -> float:
    reference = sim.float_model()(x)
    return float(np.sum((np.asarray(sim.model(x)) - np.asarray(reference)) ** 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_keeps_whichever_of_searched_and_min_max_grids_gives_the_lower_model_output_error(seed):
    model, x = _conv_dw_dense_with_unequal_inputs()
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # heavy-tailed kernels, different per seed
        if hasattr(layer, "kernel"):
            layer.kernel.assign((rng.standard_t(2, layer.kernel.shape) * 0.2).astype(np.float32))
    sim = QuantizationSimModel(model, quant_scheme="auto", default_param_bw=4, config_file="htp")
    sim.compute_encodings(x, batch_size=16)
    assert sim.output_mse_choice in ("output_mse", "min_max")
    kept = _model_output_error(sim, x)
    kernels = [(q, var) for _, q, var in sim.param_quantizers()]
    chosen = [q.get_encoding() for q, _ in kernels]
    for q, var in kernels:
        q.set_encoding(q.min_max_encoding(np.asarray(var.numpy())))
    min_max = _model_output_error(sim, x)
    if sim.output_mse_choice == "min_max":
        np.testing.assert_allclose(kept, min_max, rtol=1e-6)
    else:
        assert kept <= min_max
    # The tight min/max grid: scale max(max / 7, -min / 8) per output channel (4 bits, offset -8).
    q, var = kernels[0]
    w = np.asarray(var.numpy()).reshape(-1, q.num_channels)
    np.testing.assert_allclose(q.get_encoding().scale, np.maximum(w.max(0) / 7, -w.min(0) / 8), rtol=1e-5)
    for q, enc in zip([q for q, _ in kernels], chosen):
        q.set_encoding(enc)
