"""Empirical bias correction on a tiny seeded model, simulated at W4A8 / W8A8 per-tensor."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from aimet_tf.ptq.bias_correction import correct_bias
from aimet_tf.quantization import QuantizationSimModel
from aimet_tf.testing import models

L = keras.layers


def _model(seed: int = 0) -> keras.Model:
    """Biased convs with uneven channels (so per-tensor W4 shifts channel means), one bias-free."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    inp = keras.Input((10, 10, 3), name="x")
    x = L.Conv2D(12, 3, padding="same", name="c1")(inp)
    x = L.ReLU(name="r1")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw", activation="relu")(x)
    x = L.Conv2D(10, 1, use_bias=False, name="nobias")(x)
    x = L.ReLU(name="r2")(x)
    x = L.Conv2D(8, 3, name="c2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(5, name="fc")(x)
    model = keras.Model(inp, out, name="bc_model")
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            k = layer.kernel.numpy()
            n = k.shape[-2] if isinstance(layer, L.DepthwiseConv2D) else k.shape[-1]
            spread = np.exp(rng.normal(0, 1.0, n)).astype(np.float32)
            layer.kernel.assign(k * (spread[:, None] if isinstance(layer, L.DepthwiseConv2D) else spread))
            if layer.use_bias:
                layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(np.float32))
    return model


def _calibrated_sim(model, bitwidth, data):
    sim = QuantizationSimModel(model, quant_scheme="tf", default_param_bw=bitwidth, config_file="default")
    sim.compute_encodings(data, batch_size=32)
    return sim


def _mean_error(ref, out) -> float:
    """Norm of the per-output-channel mean error, relative to the output RMS."""
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    return float(np.linalg.norm((out - ref).mean(axis=0)) / np.sqrt(np.mean(ref**2)))


@pytest.mark.parametrize("bitwidth", [4, 8])
def test_bias_correction_reduces_mean_output_error(bitwidth):
    model = _model(seed=1)
    calibration = models.random_images(128, (10, 10, 3), seed=2)
    held_out = models.random_images(128, (10, 10, 3), seed=3)
    sim = _calibrated_sim(model, bitwidth, calibration)
    ref = model.predict(held_out, verbose=0)
    before = _mean_error(ref, sim.model.predict(held_out, verbose=0))
    report = correct_bias(sim, calibration, verbose=0)
    after = _mean_error(ref, sim.model.predict(held_out, verbose=0))
    assert after < 0.5 * before, (before, after)
    assert [r.layer for r in report.corrected] == ["c1", "dw", "c2", "fc"]
    assert report.num_samples == 128


def test_corrected_layers_match_fp32_means_on_calibration_data():
    model = _model(seed=4)
    data = models.random_images(64, (10, 10, 3), seed=5)
    sim = _calibrated_sim(model, 4, data)
    float_model = sim.float_model()
    correct_bias(sim, data, keep_only_improving=False, verbose=0)
    for name in ("c1", "dw", "c2", "fc"):
        wrapper = sim.model.get_layer(name)
        layer = float_model.get_layer(name)
        # Pre-activation outputs: temporarily linear copies of both layers.
        fp_in = keras.Model(float_model.input, layer.input).predict(data, verbose=0)
        sim_in = keras.Model(sim.model.input, wrapper.input).predict(data, verbose=0)
        q = wrapper.input_quantizers[0]
        if q is not None:
            sim_in = q(sim_in)
        fp_out = _linear(layer)(fp_in)
        quantized = _linear(wrapper.layer)
        quantized.kernel.assign(wrapper.param_quantizers_by_path()["kernel"](wrapper.layer.kernel.value))
        sim_out = quantized(sim_in)
        fp_mean = np.mean(np.reshape(fp_out, (-1, fp_out.shape[-1])), axis=0)
        sim_mean = np.mean(np.reshape(sim_out, (-1, sim_out.shape[-1])), axis=0)
        rms = np.sqrt(np.mean(np.square(fp_out)))
        np.testing.assert_allclose(sim_mean, fp_mean, atol=1e-4 * rms, err_msg=name)


def _linear(layer):
    config = layer.get_config()
    config["activation"] = "linear"
    new = layer.__class__.from_config(config)
    new.build_from_config(layer.get_build_config())
    new.set_weights(layer.get_weights())
    return new


def test_layers_without_bias_are_reported_and_untouched():
    model = _model(seed=6)
    data = models.random_images(32, (10, 10, 3), seed=7)
    sim = _calibrated_sim(model, 8, data)
    kernel = sim.model.get_layer("nobias").layer.kernel.numpy().copy()
    report = correct_bias(sim, data, verbose=0)
    (skip,) = report.skipped
    assert skip[0] == "nobias" and "use_bias=False" in skip[1]
    np.testing.assert_array_equal(sim.model.get_layer("nobias").layer.kernel.numpy(), kernel)
    assert "nobias: skipped" in report.summary()


def test_only_biases_change_and_original_model_is_untouched():
    model = _model(seed=8)
    original = [w.copy() for w in model.get_weights()]
    data = models.random_images(32, (10, 10, 3), seed=9)
    sim = _calibrated_sim(model, 4, data)
    kernels = {n: sim.model.get_layer(n).layer.kernel.numpy().copy() for n in ("c1", "c2", "fc")}
    biases = {n: sim.model.get_layer(n).layer.bias.numpy().copy() for n in ("c1", "c2", "fc")}
    correct_bias(sim, data, verbose=0)
    for name in kernels:
        np.testing.assert_array_equal(sim.model.get_layer(name).layer.kernel.numpy(), kernels[name])
        assert not np.array_equal(sim.model.get_layer(name).layer.bias.numpy(), biases[name])
    assert all(np.array_equal(a, b) for a, b in zip(original, model.get_weights()))


@pytest.mark.parametrize("form", ["dataset", "tuple", "batches", "two_batches"])
def test_accepts_datasets_tuples_and_batch_lists(form):
    model = _model(seed=10)
    x = models.random_images(48, (10, 10, 3), seed=11)
    y = np.zeros(48, np.int64)
    sim = _calibrated_sim(model, 8, x)
    data = {
        "dataset": tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
        "tuple": (x, y),
        "batches": [x[:16], x[16:32], x[32:]],
        "two_batches": [x[:16], x[16:32]],  # a list is batches, never (x, y)
    }[form]
    report = correct_bias(sim, data, num_batches=2, batch_size=16, verbose=0)
    assert report.num_samples == 32


def test_errors_name_the_fix():
    model = _model(seed=12)
    data = models.random_images(16, (10, 10, 3), seed=13)
    sim = QuantizationSimModel(model, quant_scheme="tf", config_file="default")
    with pytest.raises(RuntimeError, match="compute_encodings"):
        correct_bias(sim, data)
    sim.compute_encodings(data)
    with pytest.raises(TypeError, match="QuantizationSimModel"):
        correct_bias(model, data)
    other = models.dense_model()
    with pytest.raises(ValueError, match="has no layer"):
        correct_bias(sim, data, float_model=other, verbose=0)
    with pytest.raises(ValueError, match="empty"):
        correct_bias(sim, np.zeros((0, 10, 10, 3), np.float32), verbose=0)


def _one_layer_sim(data, bitwidth=3, seed=6):
    """conv + built-in ReLU, input quantized, output quantizer off: sim output = relu(W_q x_q + b)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((10, 10, 3), name="x")
    out = L.Conv2D(16, 3, activation="relu", name="c")(inp)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    layer = model.get_layer("c")
    layer.kernel.assign(layer.kernel.numpy() * np.exp(rng.normal(0, 1.0, 16)).astype(np.float32))
    layer.bias.assign(rng.normal(0, 0.3, 16).astype(np.float32))
    sim = _calibrated_sim(model, bitwidth, data)
    sim.model.get_layer("c").output_quantizers[0].enabled = False
    return model, sim


def _channel_sse(a, b):
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return (d * d).reshape(-1, d.shape[-1]).sum(axis=0)


def test_safeguard_keeps_only_shifts_that_bring_the_activated_output_closer():
    data = models.random_images(96, (10, 10, 3), seed=7)
    model, guarded = _one_layer_sim(data)
    _, unguarded = _one_layer_sim(data)
    ref = model.predict(data, verbose=0)
    before = _channel_sse(guarded.model.predict(data, verbose=0), ref)
    bias0 = guarded.model.get_layer("c").layer.bias.numpy().copy()
    report = correct_bias(guarded, data, verbose=0)
    correct_bias(unguarded, data, keep_only_improving=False, verbose=0)
    after = _channel_sse(guarded.model.predict(data, verbose=0), ref)
    raw = _channel_sse(unguarded.model.predict(data, verbose=0), ref)
    unchanged = guarded.model.get_layer("c").layer.bias.numpy() == bias0
    # The unguarded shift makes some channels worse after the ReLU; the safeguard leaves exactly
    # those alone, and no channel ends up worse than before.
    assert np.any(raw > before * (1 + 1e-6))
    assert report.corrected[0].rejected_channels == int(np.sum(unchanged)) > 0
    np.testing.assert_array_equal(unchanged, raw >= before)
    assert np.all(after <= before * (1 + 1e-6))
    assert after.sum() < before.sum()


def test_weight_error_mode_removes_only_the_weight_quantization_mean():
    data = models.random_images(64, (10, 10, 3), seed=8)
    model, sim = _one_layer_sim(data, bitwidth=4)
    wrapper = sim.model.get_layer("c")
    x_q = wrapper.input_quantizers[0](data)
    float_linear = _linear(wrapper.layer)
    correct_bias(sim, data, error="weight", keep_only_improving=False, verbose=0)
    quantized = _linear(wrapper.layer)
    quantized.kernel.assign(wrapper.param_quantizers_by_path()["kernel"](wrapper.layer.kernel.value))
    want = np.mean(np.reshape(float_linear(x_q), (-1, 16)), axis=0)  # W x_q + b (old bias)
    got = np.mean(np.reshape(quantized(x_q), (-1, 16)), axis=0)      # W_q x_q + b (new bias)
    np.testing.assert_allclose(got, want, atol=1e-4 * float(np.sqrt(np.mean(np.square(want)))))
    with pytest.raises(ValueError, match="error in"):
        correct_bias(sim, data, error="both", verbose=0)


@pytest.mark.parametrize("as_layer", [False, True])
def test_softmax_is_not_treated_as_a_channel_wise_activation(as_layer):
    from aimet_tf.ptq import bias_correction
    from aimet_tf.quantization import graph

    keras.utils.set_random_seed(3)
    inp = keras.Input((6,))
    if as_layer:
        out = L.Activation("softmax", name="sm")(L.Dense(4, name="fc")(inp))
    else:
        out = L.Dense(4, activation="softmax", name="fc")(inp)
    sim = QuantizationSimModel(keras.Model(inp, out), quant_scheme="tf", config_file="default")
    consumers = graph.layer_edges(sim.model)[1]
    assert bias_correction._following_activation(sim.model.get_layer("fc"), consumers, sim.model) is None


def test_nan_in_data_raises_and_changes_no_bias():
    # One NaN pixel used to turn every bias into NaN behind a normal-looking report.
    sim = QuantizationSimModel(models.conv_bn_relu_model(), quant_scheme="tf", default_param_bw=4)
    data = models.random_images(16)
    sim.compute_encodings(data)
    before = [w.layer.bias.numpy().copy() for w in sim.wrappers() if getattr(w.layer, "use_bias", False)]
    data[3, 2, 2, 1] = np.nan
    with pytest.raises(ValueError, match=r"Expected finite values in batch 0 of the bias correction data.*Received: 1 NaN"):
        correct_bias(sim, data, verbose=0)
    after = [w.layer.bias.numpy() for w in sim.wrappers() if getattr(w.layer, "use_bias", False)]
    for b0, b1 in zip(before, after):
        np.testing.assert_array_equal(b1, b0)


def test_non_finite_layer_mean_names_layer_and_restores_earlier_biases():
    # NaN in the float reference of a later layer ("fc"): the error names it, and the bias of
    # the layer corrected before it ("dw") is put back.
    model = models.conv_bn_relu_model()
    sim = QuantizationSimModel(model, quant_scheme="tf", default_param_bw=4)
    data = models.random_images(16)
    sim.compute_encodings(data)
    reference = sim.float_model()
    kernel = reference.get_layer("fc").kernel
    kernel.assign(np.where(np.arange(kernel.shape[1]) == 1, np.inf, kernel.numpy()).astype(np.float32))
    dw_before = sim.model.get_layer("dw").layer.bias.numpy().copy()
    with pytest.raises(ValueError, match=r"Expected finite mean outputs of layer 'fc'.*Received: NaN/Inf in 1 of 4 channels of the FP32 reference"):
        correct_bias(sim, data, float_model=reference, keep_only_improving=False, verbose=0)
    np.testing.assert_array_equal(sim.model.get_layer("dw").layer.bias.numpy(), dw_before)
    assert np.all(np.isfinite(sim.model.get_layer("fc").layer.bias.numpy()))


# -- nested models -------------------------------------------------------------------------------


def _nested_model(seed: int) -> keras.Model:
    """A Sequential of biased convs nested in a Functional model, with uneven channel ranges."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    inner = keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            L.Conv2D(12, 3, padding="same", name="ic1"),
            L.ReLU(name="ir"),
            L.Conv2D(10, 3, padding="same", name="ic2"),
        ],
        name="inner",
    )
    inp = keras.Input((10, 10, 3), name="x")
    x = L.ReLU(name="r")(inner(inp))
    x = L.Conv2D(8, 1, name="c3")(x)
    out = L.Dense(5, name="fc")(L.GlobalAveragePooling2D(name="gap")(x))
    model = keras.Model(inp, out, name="nested_bc")
    for layer in [*inner.layers, *model.layers]:
        if isinstance(layer, (L.Conv2D, L.Dense)):
            k = layer.kernel.numpy()
            layer.kernel.assign(k * np.exp(rng.normal(0, 1.0, k.shape[-1])).astype(np.float32))
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(np.float32))
    return model


def _nested_preactivation_means(sim, float_model, name, data):
    """Per-channel means of nested layer ``name``'s output before its activation: (FP32 model on
    FP32 inputs, sim with quantized inputs and weights), and the FP32 output RMS."""
    inner_sim, inner_fp = sim.model.get_layer("inner"), float_model.get_layer("inner")
    wrapper, layer = inner_sim.get_layer(name), inner_fp.get_layer(name)
    sim_in = keras.Model(inner_sim.inputs, wrapper.input).predict(data, verbose=0)  # inner reads x
    fp_in = keras.Model(inner_fp.inputs, layer.input).predict(data, verbose=0)
    q = wrapper.input_quantizers[0]
    if q is not None and q.enabled:
        sim_in = q(sim_in)
    quantized = _linear(wrapper.layer)
    quantized.kernel.assign(wrapper.param_quantizers_by_path()["kernel"](wrapper.layer.kernel.value))
    fp_out = np.asarray(_linear(layer)(fp_in), np.float64)
    sim_out = np.asarray(quantized(sim_in), np.float64)
    fp_mean = fp_out.reshape(-1, fp_out.shape[-1]).mean(axis=0)
    sim_mean = sim_out.reshape(-1, sim_out.shape[-1]).mean(axis=0)
    return fp_mean, sim_mean, float(np.sqrt(np.mean(fp_out**2)))


def test_layers_of_a_nested_model_are_corrected():
    model = _nested_model(seed=21)
    calibration = models.random_images(128, (10, 10, 3), seed=22)
    held_out = models.random_images(128, (10, 10, 3), seed=23)
    sim = _calibrated_sim(model, 4, calibration)
    nested = ("ic1", "ic2")
    biases = {n: sim.model.get_layer("inner").get_layer(n).layer.bias.numpy().astype(np.float64) for n in nested}
    shift_before = {}
    for name in nested:
        fp_mean, sim_mean, _ = _nested_preactivation_means(sim, model, name, calibration)
        shift_before[name] = fp_mean - sim_mean  # E[W x] - E[W_q x_q]: the quantization's mean shift
    ref = model.predict(held_out, verbose=0)
    out_before = sim.model.predict(held_out, verbose=0)

    report = correct_bias(sim, calibration, keep_only_improving=False, verbose=0)
    assert [r.layer for r in report.corrected] == ["ic1", "ic2", "c3", "fc"]
    assert report.skipped == []
    for name in nested:
        change = sim.model.get_layer("inner").get_layer(name).layer.bias.numpy() - biases[name]
        before = shift_before[name]
        fp_mean, sim_mean, rms = _nested_preactivation_means(sim, model, name, calibration)
        # The bias moved towards removing the shift, channel by channel, and removed it.
        big = np.abs(before) > 0.2 * np.max(np.abs(before))
        np.testing.assert_array_equal(np.sign(change[big]), np.sign(before[big]), err_msg=name)
        assert np.linalg.norm(fp_mean - sim_mean) < 0.05 * np.linalg.norm(before), name
        np.testing.assert_allclose(sim_mean, fp_mean, atol=1e-4 * rms, err_msg=name)
    # ic1 reads the model input, so nothing upstream was corrected: its change is its shift.
    ic1_change = sim.model.get_layer("inner").get_layer("ic1").layer.bias.numpy() - biases["ic1"]
    np.testing.assert_allclose(ic1_change, shift_before["ic1"], atol=1e-4 * np.max(np.abs(shift_before["ic1"])))
    # ... and the model's output error against FP32 goes down on held-out data.
    out_after = sim.model.predict(held_out, verbose=0)
    assert _mean_error(ref, out_after) < 0.5 * _mean_error(ref, out_before)
    assert np.mean((out_after - ref) ** 2) < np.mean((out_before - ref) ** 2)


def test_nested_sim_stays_nested_and_usable_after_correction(tmp_path):
    model = _nested_model(seed=24)
    original = [w.copy() for w in model.get_weights()]
    data = models.random_images(64, (10, 10, 3), seed=25)
    sim = _calibrated_sim(model, 4, data)
    inner = sim.model.get_layer("inner")
    biases = {n: inner.get_layer(n).layer.bias.numpy().copy() for n in ("ic1", "ic2")}
    report = correct_bias(sim, data, float_model=model, verbose=0)  # the original, nested, as reference
    assert {"ic1", "ic2"} <= {r.layer for r in report.corrected}
    for name, bias in biases.items():
        assert not np.array_equal(inner.get_layer(name).layer.bias.numpy(), bias), name
    assert sim.model.get_layer("inner") is inner and isinstance(inner, keras.Model)
    assert all(np.array_equal(a, b) for a, b in zip(original, model.get_weights()))
    sim.compute_encodings(data)
    sim.export(str(tmp_path), "nested")
    assert (tmp_path / "nested.encodings").exists()
    exported = sim.float_model().get_layer("inner").get_layer("ic1").bias.numpy()
    np.testing.assert_array_equal(exported, inner.get_layer("ic1").layer.bias.numpy())


def test_nested_layer_name_clash_names_the_fix():
    keras.utils.set_random_seed(26)
    inner = keras.Sequential([keras.Input((10, 10, 3)), L.Conv2D(4, 3, name="conv")], name="inner")
    inp = keras.Input((10, 10, 3), name="x")
    model = keras.Model(inp, L.Conv2D(3, 1, name="conv")(inner(inp)))
    data = models.random_images(16, (10, 10, 3), seed=27)
    sim = _calibrated_sim(model, 8, data)
    before = [w.layer.bias.numpy().copy() for w in sim.wrappers()]
    with pytest.raises(ValueError, match=r"Expected unique layer names.*Received: \['conv'\].*inline_nested_models"):
        correct_bias(sim, data, verbose=0)
    for w, b in zip(sim.wrappers(), before):
        np.testing.assert_array_equal(w.layer.bias.numpy(), b)
    # The fix works: one level, the nested "conv" renamed.
    from aimet_tf.graph import inline_nested_models

    flat_sim = _calibrated_sim(inline_nested_models(model), 8, data)
    report = correct_bias(flat_sim, data, verbose=0)
    assert sorted(r.layer for r in report.corrected) == ["conv", "inner_conv"]
