"""QuantizationSimModel end to end on tiny models: wrapping, calibration, save/load, encodings."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import aimet_tf.quantization.quantizers
from aimet_tf import QuantizationSimModel, Quantizer
from aimet_tf.quantization.wrapper import LOAD_HINT, QuantizationWrapper
from aimet_tf.testing import models


def _sqnr_db(ref, test):
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - test) ** 2), 1e-30))


@pytest.fixture(scope="module")
def calibrated():
    model = models.conv_bn_relu_model()
    data = models.random_images(96)
    sim = QuantizationSimModel(model, quant_scheme="tf_enhanced", config_file="htp")
    sim.compute_encodings(data)
    return model, sim, data


def test_original_model_untouched_and_wrapped(calibrated):
    model, sim, _ = calibrated
    assert not any(isinstance(l, QuantizationWrapper) for l in model.layers)
    wrapped = [l for l in sim.model.layers if isinstance(l, QuantizationWrapper)]
    assert {w.name for w in wrapped} == {l.name for l in model.layers if not isinstance(l, keras.layers.InputLayer)}
    for w in wrapped:
        assert w.layer is not model.get_layer(w.name)


def test_supergroups_leave_no_quantizer_inside(calibrated):
    _, sim, _ = calibrated
    names = {n for n, _ in sim.activation_quantizers()}
    # Conv -> BN -> ReLU6 fused: only the ReLU6 output is quantized; DW -> ReLU likewise.
    assert "c1/output:0" not in names and "bn1/output:0" not in names and "r1/output:0" in names
    assert "dw/output:0" not in names and "r2/output:0" in names
    assert "c1/input:0" in names  # model input
    assert "fc/output:0" in names  # model output


def test_htp_params_per_channel_symmetric(calibrated):
    _, sim, _ = calibrated
    params = {n: q for n, q, _ in sim.param_quantizers()}
    assert params["c1/kernel:0"].per_channel and params["c1/kernel:0"].symmetric
    assert params["c1/kernel:0"].get_encoding().min.shape == (8,)
    assert params["dw/kernel:0"].get_encoding().min.shape == (8,)  # 8 in x multiplier 1


def test_w8a8_close_to_float(calibrated):
    model, sim, data = calibrated
    ref = model.predict(data, verbose=0)
    out = sim.model.predict(data, verbose=0)
    assert _sqnr_db(ref, out) > 25.0
    assert not np.array_equal(ref, out)  # quantization really happens


def test_all_disabled_is_bit_exact_float(calibrated):
    model, sim, data = calibrated
    with sim.quantizers_disabled():
        out = sim.model.predict(data, verbose=0)
    np.testing.assert_array_equal(out, model.predict(data, verbose=0))


def test_wrapper_never_writes_quantized_weights(calibrated):
    model, sim, data = calibrated
    before = [v.numpy().copy() for v in sim.model.get_layer("c1").layer.weights]
    sim.model(data[:4])
    after = [v.numpy() for v in sim.model.get_layer("c1").layer.weights]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(before[0], model.get_layer("c1").kernel.numpy())


def test_save_and_reload_identical(calibrated, tmp_path):
    _, sim, data = calibrated
    path = tmp_path / "sim.keras"
    sim.model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(data, verbose=0), sim.model.predict(data, verbose=0))


def test_reload_without_importing_aimet_tf_says_import_aimet_tf(calibrated, tmp_path):
    # A user loads a saved sim with plain Keras in a fresh process: Keras cannot know aimet_tf's
    # classes, and its error must tell them what to do.
    _, sim, _ = calibrated
    path = tmp_path / "sim.keras"
    sim.model.save(path)
    script = (
        "import sys, keras\n"
        f"try:\n    keras.models.load_model({str(path)!r})\n"
        "except TypeError as exc:\n    print('ERROR', 'aimet_tf' in sys.modules, str(exc))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ERROR False "), result.stdout[:500]  # aimet_tf never imported
    assert "run `import aimet_tf` before keras.models.load_model" in result.stdout
    assert LOAD_HINT in result.stdout


def test_sim_saved_without_the_load_hint_still_loads(calibrated):
    _, sim, data = calibrated
    wrapper = next(l for l in sim.model.layers if isinstance(l, QuantizationWrapper))
    config = wrapper.get_config()
    assert next(iter(config)) == "aimet_tf_load_hint" and config["aimet_tf_load_hint"] == LOAD_HINT
    del config["aimet_tf_load_hint"]
    clone = QuantizationWrapper.from_config(config)
    assert clone.name == wrapper.name and len(clone.quantizers()) == len(wrapper.quantizers())


@pytest.mark.parametrize("version", ["0.6.1", "1.0.0"])
def test_encodings_round_trip(calibrated, tmp_path, version):
    model, sim, data = calibrated
    paths = sim.export(tmp_path, "m", encoding_version=version)
    doc = json.loads(open(paths["encodings"]).read())
    assert doc["version"] == version
    fresh = QuantizationSimModel(model, quant_scheme="tf_enhanced", config_file="htp")
    fresh.load_encodings_to_sim(paths["encodings"])
    a = sim.model.predict(data, verbose=0)
    b = fresh.model.predict(data, verbose=0)
    if version == "0.6.1":
        np.testing.assert_array_equal(b, a)  # min/max stored exactly
    else:
        np.testing.assert_allclose(b, a, atol=1e-5)  # scale*offset may differ in the last bit
    exported = keras.models.load_model(paths["model"])
    np.testing.assert_array_equal(exported.predict(data, verbose=0), model.predict(data, verbose=0))


def test_061_layout(calibrated):
    _, sim, _ = calibrated
    doc = sim.get_encodings_dict("0.6.1")
    entry = doc["param_encodings"]["c1/kernel:0"]
    assert len(entry) == 8
    assert set(entry[0]) == {"bitwidth", "dtype", "is_symmetric", "max", "min", "offset", "scale"}
    assert entry[0]["is_symmetric"] == "True" and entry[0]["offset"] == -128
    act = doc["activation_encodings"]["r1/Relu6:0"][0]
    assert act["offset"] <= 0 and act["bitwidth"] == 8


def test_uncalibrated_sim_refuses_to_run():
    sim = QuantizationSimModel(models.conv_bn_relu_model())
    with pytest.raises(RuntimeError, match="compute_encodings"):
        sim.model(models.random_images(2))


def test_nan_calibration_data_rejected_and_nothing_changes():
    sim = QuantizationSimModel(models.conv_bn_relu_model(), quant_scheme="tf")
    data = models.random_images(8)
    data[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sim.compute_encodings(data)
    assert all(not q.is_initialized for _, q in sim.activation_quantizers())


def test_empty_calibration_data_rejected():
    sim = QuantizationSimModel(models.conv_bn_relu_model(), quant_scheme="tf")
    with pytest.raises(ValueError, match="empty"):
        sim.compute_encodings(np.zeros((0, 16, 16, 3), np.float32))


def test_callback_style_compute_encodings_and_dataset():
    model = models.conv_bn_relu_model()
    data = models.random_images(32)
    a = QuantizationSimModel(model, quant_scheme="tf")
    a.compute_encodings(lambda m, args: m.predict(args, batch_size=8, verbose=0), data)
    b = QuantizationSimModel(model, quant_scheme="tf")
    b.compute_encodings(tf.data.Dataset.from_tensor_slices((data, np.zeros(32))).batch(8))
    np.testing.assert_array_equal(a.model.predict(data, verbose=0), b.model.predict(data, verbose=0))


def test_subclassed_model_rejected_with_advice():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    m = Sub()
    m(np.zeros((1, 3), np.float32))
    with pytest.raises(TypeError, match=r"subclassed keras.Model .*aimet_tf.graph.prepare_model\(model\)"):
        QuantizationSimModel(m)
    # Following the advice works: the prepared model simulates.
    from aimet_tf.graph import prepare_model

    sim = QuantizationSimModel(prepare_model(m))
    sim.compute_encodings(np.ones((4, 3), np.float32))
    assert sim.model(np.ones((1, 3), np.float32)).shape == (1, 2)


def test_shared_layer_rejected():
    shared = keras.layers.Dense(4, name="shared")
    a, b = keras.Input((4,)), keras.Input((4,))
    out = keras.layers.Add()([shared(a), shared(b)])
    with pytest.raises(ValueError, match="layer 'shared' is shared by 2 call sites.*prepare_model"):
        QuantizationSimModel(keras.Model([a, b], out))


def test_unknown_layer_names_registration_call():
    class Weird(keras.layers.Layer):
        def call(self, x):
            return x * 2

    inp = keras.Input((3,))
    model = keras.Model(inp, Weird(name="weird")(keras.layers.Dense(3)(inp)))
    with pytest.raises(NotImplementedError, match="register_layer"):
        QuantizationSimModel(model)


def test_mismatched_encodings_rejected_and_sim_unchanged(calibrated, tmp_path):
    model, sim, _ = calibrated
    doc = sim.get_encodings_dict("0.6.1")
    doc["activation_encodings"]["nonexistent/output:0"] = doc["activation_encodings"]["r1/Relu6:0"]
    fresh = QuantizationSimModel(model, config_file="htp")
    with pytest.raises(ValueError, match="'nonexistent/output:0': no layer 'nonexistent' in this sim"):
        fresh.load_encodings_to_sim(doc)
    assert all(not q.is_initialized for _, q in fresh.activation_quantizers())
    doc = sim.get_encodings_dict("0.6.1")
    doc["param_encodings"]["c1/kernel:0"] = doc["param_encodings"]["c1/kernel:0"][:3]
    with pytest.raises(ValueError, match="shape"):
        fresh.load_encodings_to_sim(doc)


def test_set_and_freeze_param_encodings(calibrated):
    model, sim, data = calibrated
    doc = sim.get_encodings_dict("0.6.1")
    fresh = QuantizationSimModel(model, quant_scheme="tf", config_file="htp")
    fresh.set_and_freeze_param_encodings({"version": "0.6.1", "param_encodings": doc["param_encodings"]})
    frozen = {n: q for n, q, _ in fresh.param_quantizers()}
    assert all(q.frozen for q in frozen.values())
    fresh.compute_encodings(data)
    np.testing.assert_array_equal(
        frozen["c1/kernel:0"].get_encoding().min,
        {n: q for n, q, _ in sim.param_quantizers()}["c1/kernel:0"].get_encoding().min,
    )


def test_nested_and_sequential_models():
    branchy = models.branchy_model()
    data = np.random.default_rng(1).normal(size=(16, 12, 12, 4)).astype(np.float32)
    sim = QuantizationSimModel(branchy, quant_scheme="tf")
    sim.compute_encodings(data)
    assert _sqnr_db(branchy.predict(data, verbose=0), sim.model.predict(data, verbose=0)) > 20
    assert any(w.name == "inner_conv" for w in sim.wrappers())
    mlp = models.dense_model()
    x = np.random.default_rng(2).normal(size=(32, 10)).astype(np.float32)
    sim2 = QuantizationSimModel(mlp, quant_scheme="tf", default_param_bw=4)
    sim2.compute_encodings(x)
    out = sim2.model.predict(x, verbose=0)
    assert _sqnr_db(mlp.predict(x, verbose=0), out) > 10
    with sim2.quantizers_disabled():
        np.testing.assert_array_equal(sim2.model.predict(x, verbose=0), mlp.predict(x, verbose=0))


def test_bitwidth_validation_in_sim():
    with pytest.raises(ValueError, match="bitwidth"):
        QuantizationSimModel(models.dense_model(), default_param_bw=1)
    with pytest.raises(ValueError, match="bitwidth"):
        QuantizationSimModel(models.dense_model(), default_output_bw=33)


def test_fit_moves_weights_not_static_ranges():
    model = models.dense_model()
    x = np.random.default_rng(3).normal(size=(64, 10)).astype(np.float32)
    y = np.random.default_rng(4).normal(size=(64, 2)).astype(np.float32)
    sim = QuantizationSimModel(model, quant_scheme="tf")
    sim.compute_encodings(x)
    q = sim.model.get_layer("d1").output_quantizers[0]
    rng_before = (q.encoding_min.numpy(), q.encoding_max.numpy())
    kernel_before = sim.model.get_layer("d1").layer.kernel.numpy().copy()
    sim.model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    sim.model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert not np.array_equal(sim.model.get_layer("d1").layer.kernel.numpy(), kernel_before)
    assert q.encoding_min.numpy() == rng_before[0] and q.encoding_max.numpy() == rng_before[1]


def test_range_learning_moves_ranges():
    model = models.dense_model()
    x = np.random.default_rng(3).normal(size=(64, 10)).astype(np.float32)
    y = np.random.default_rng(4).normal(size=(64, 2)).astype(np.float32) * 3
    sim = QuantizationSimModel(model, quant_scheme="tf_range_learning", default_output_bw=4)
    sim.compute_encodings(x)
    q = sim.model.get_layer("d3").output_quantizers[0]
    before = float(q.encoding_max.numpy())
    sim.model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    sim.model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert float(q.encoding_max.numpy()) != before


def test_quantizer_state_and_errors():
    q = Quantizer(bitwidth=8, channel_axis=-1, symmetric=True)
    q.build((3, 4))
    assert q.num_channels == 4
    with pytest.raises(ValueError, match="shape"):
        from aimet_tf.quantization.primitives import compute_encoding

        q.set_encoding(compute_encoding(-1.0, 1.0, 8, True))
    with pytest.raises(ValueError, match="bitwidth"):
        Quantizer(bitwidth=1)
    q.enabled = False
    x = tf.constant(np.ones((3, 4), np.float32))
    np.testing.assert_array_equal(q(x).numpy(), x.numpy())


@pytest.mark.parametrize("scheme", ["tf", "tf_enhanced", "percentile"])
def test_inf_inside_callback_forward_pass_rejected(scheme):
    # The callback path has no up-front data check: the in-graph observation must catch it.
    sim = QuantizationSimModel(models.conv_bn_relu_model(), quant_scheme=scheme)
    data = models.random_images(8)
    data[2, 1, 1, 1] = np.inf
    with pytest.raises((ValueError, tf.errors.OpError), match="finite"):
        sim.compute_encodings(lambda m, a: m(a, training=False), data)
    assert all(not q.is_initialized for _, q in sim.activation_quantizers())


def test_predict_follows_quantizer_changes_made_after_tracing():
    model = models.conv_bn_relu_model()
    data = models.random_images(16)
    sim = QuantizationSimModel(model, quant_scheme="tf", default_param_bw=4, config_file="htp")
    sim.compute_encodings(data)
    quantized = sim.model.predict(data, verbose=0)
    state = aimet_tf.quantization.quantizers.traced_state(sim.model)
    np.testing.assert_array_equal(sim.model.predict(data, verbose=0), quantized)
    # Running traced functions changes no quantizer state (no retrace on every call), and neither
    # does building another sim.
    QuantizationSimModel(model, quant_scheme="tf", config_file="htp")
    assert aimet_tf.quantization.quantizers.traced_state(sim.model) == state
    traces = sim.model.predict_function
    sim.model.predict(data, verbose=0)
    assert sim.model.predict_function is traces
    for q in [q for w in sim.wrappers() for q in w.quantizers()]:
        q.enabled = False  # set directly on the quantizers, not through the sim
    np.testing.assert_allclose(sim.model.predict(data, verbose=0), model.predict(data, verbose=0), rtol=1e-5, atol=1e-6)
    for q in [q for w in sim.wrappers() for q in w.quantizers()]:
        q.enabled = True
    np.testing.assert_array_equal(sim.model.predict(data, verbose=0), quantized)
    # evaluate and fit trace again too.
    sim.model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.zeros(16, np.int64)
    before = sim.model.evaluate(data, labels, verbose=0)
    sim.activation_quantizers()[-1][1].enabled = False
    assert sim.model.evaluate(data, labels, verbose=0) != before


def test_recalibration_does_not_retrace_predict():
    # Encodings live in variables: compute_encodings + predict cycles reuse the one trace, and the
    # reused trace reads the new encodings (outputs equal a fresh sim calibrated on the same data).
    model = models.conv_bn_relu_model()
    data = models.random_images(32)
    sim = QuantizationSimModel(model, quant_scheme="tf", config_file="htp")
    sim.compute_encodings(data)
    sim.model.predict(data, verbose=0)
    traced = sim.model.predict_function
    assert traced.experimental_get_tracing_count() == 1
    for scale in (0.5, 2.0, 3.0):
        sim.compute_encodings(data * scale)
        out = sim.model.predict(data, verbose=0)
        assert sim.model.predict_function is traced
        assert traced.experimental_get_tracing_count() == 1
        fresh = QuantizationSimModel(model, quant_scheme="tf", config_file="htp")
        fresh.compute_encodings(data * scale)
        np.testing.assert_array_equal(out, fresh.model.predict(data, verbose=0))


@pytest.mark.parametrize("where", ["global", "model"])
def test_half_precision_policy_refused_at_construction(where):
    # mixed_float16 used to calibrate and then fail inside predict: refuse it up front.
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("mixed_float16")
        model = models.conv_bn_relu_model()
        if where == "global":
            keras.config.set_dtype_policy("float32")
            model = models.conv_bn_relu_model()
            keras.config.set_dtype_policy("mixed_float16")
        else:
            keras.config.set_dtype_policy("float32")
        with pytest.raises(ValueError, match="Expected (the float32 dtype policy|float32 layers).*mixed_float16"):
            QuantizationSimModel(model, quant_scheme="tf", config_file="htp")
    finally:
        keras.config.set_dtype_policy(previous)
    sim = QuantizationSimModel(models.conv_bn_relu_model(), quant_scheme="tf", config_file="htp")
    sim.compute_encodings(models.random_images(8))
    assert np.all(np.isfinite(sim.model.predict(models.random_images(4), verbose=0)))


@pytest.mark.parametrize("path", ["data", "callback", "predict_callback"])
def test_overflow_inside_fused_group_names_the_layer(path):
    # 3e38 is finite, but the conv inside the fused conv -> BN -> ReLU6 group overflows to Inf/NaN
    # and ReLU6 turns that into finite values: no quantizer sees it. Calibration must still raise,
    # naming the conv, and leave every encoding as it was.
    sim = QuantizationSimModel(models.conv_bn_relu_model(), quant_scheme="tf", config_file="htp")
    data = np.full((4, 16, 16, 3), 3e38, np.float32)
    with pytest.raises(ValueError, match=r"Expected only finite values.*Received: the first layer whose output held NaN/Inf is 'c1' \(1 batch"):
        if path == "data":
            sim.compute_encodings(data)
        elif path == "callback":
            sim.compute_encodings(lambda m, x: m(x, training=False), data)
        else:
            sim.compute_encodings(lambda m, x: m.predict(x, verbose=0), data)
    assert sim.uncalibrated_quantizers() == [n for n, _ in sim.activation_quantizers()] + [
        n for n, _, _ in sim.param_quantizers()
    ]
    # The watches are gone after calibration, and a good pass still works on the same sim.
    assert all(w._finite_watch is None for w in sim.wrappers())
    sim.compute_encodings(models.random_images(8))
    assert np.all(np.isfinite(sim.model.predict(models.random_images(4), verbose=0)))


@pytest.mark.parametrize("where", ["parameter", "encoding"])
def test_export_refuses_non_finite_state(tmp_path, where):
    sim = QuantizationSimModel(models.conv_bn_relu_model(), quant_scheme="tf", config_file="htp")
    sim.compute_encodings(models.random_images(8))
    if where == "parameter":
        bias = sim.model.get_layer("fc").layer.bias
        bias.assign(np.full(bias.shape, np.nan, np.float32))
        pattern = r"Received: NaN/Inf in 1 tensors: fc/bias"
    else:
        q = dict(sim.activation_quantizers())["r1/output:0"]
        q.encoding_max.assign(np.inf)
        pattern = r"Received: NaN/Inf in 1 tensors: encoding of r1/output:0"
    with pytest.raises(ValueError, match="Expected finite parameters and encodings to export. " + pattern):
        sim.export(tmp_path / "out", "model")
    assert not (tmp_path / "out").exists()


# --- construction checks and weights round trip (issue 12) ---------------------------------------


@pytest.mark.parametrize("config", [{}, {"defaults": {"ops": {}, "params": {"is_quantized": "False"}}}])
def test_config_that_quantizes_nothing_is_rejected(config):
    with pytest.raises(ValueError, match=r"The config quantizes nothing in this model: the "
                                         r"simulation would have 0 quantizers.*Received: config_file="):
        QuantizationSimModel(models.dense_model(), config_file=config)


@pytest.mark.parametrize("percentile", ["abc", None, True, 80.0])
def test_bad_percentile_names_the_argument(percentile):
    with pytest.raises(ValueError, match=r"Expected a percentile in \[90, 100\], as a number\. "
                                         rf"Received: percentile={percentile!r}"):
        QuantizationSimModel(models.dense_model(), quant_scheme="percentile", percentile=percentile)


def _kernel(activation: int, param: int) -> dict:
    return {"activation": {"bitwidth": activation, "dtype": "int"},
            "param": {"bitwidth": param, "dtype": "int"}}


def test_supported_kernels_that_exclude_the_sim_bitwidths_are_rejected():
    from aimet_tf.quantization.config import HardwareConfigError

    raw = json.loads(open(aimet_tf.quantization.config._PRESET_DIR + "/default.json").read())
    raw["defaults"]["supported_kernels"] = [_kernel(8, 4), _kernel(16, 8)]
    with pytest.raises(HardwareConfigError, match=r"Received: default_output_bw=8, default_param_bw=8"):
        QuantizationSimModel(models.dense_model(), config_file=raw)
    sim = QuantizationSimModel(models.dense_model(), config_file=raw, default_param_bw=4)
    assert {q.bitwidth for _, q, _ in sim.param_quantizers()} == {4}
    raw["op_type"]["Gemm"] = {"supported_kernels": [{"activation": {"bitwidth": 16, "dtype": "int"}}]}
    with pytest.raises(HardwareConfigError, match=r"'Gemm' layers"):
        QuantizationSimModel(models.dense_model(), config_file=raw, default_param_bw=4)


def test_save_weights_load_weights_into_fresh_sim_keeps_calibration(tmp_path):
    x = models.random_images(64, shape=(10,))
    sim = QuantizationSimModel(models.dense_model(), quant_scheme="tf_enhanced", config_file="htp")
    sim.compute_encodings(x)
    path = tmp_path / "sim.weights.h5"
    sim.model.save_weights(path)
    fresh = QuantizationSimModel(models.dense_model(seed=7), quant_scheme="tf_enhanced", config_file="htp")
    assert fresh.uncalibrated_quantizers()
    fresh.model.load_weights(path)
    assert fresh.uncalibrated_quantizers() == []
    np.testing.assert_array_equal(fresh.model.predict(x, verbose=0), sim.model.predict(x, verbose=0))
    assert fresh.get_encodings_dict() == sim.get_encodings_dict()


def test_load_weights_of_an_uncalibrated_sim_leaves_quantizers_uncalibrated(tmp_path):
    path = tmp_path / "raw.weights.h5"
    QuantizationSimModel(models.dense_model()).model.save_weights(path)
    sim = QuantizationSimModel(models.dense_model())
    sim.compute_encodings(models.random_images(32, shape=(10,)))
    sim.model.load_weights(path)
    assert sorted(sim.uncalibrated_quantizers()) == sorted(
        [n for n, _ in sim.activation_quantizers()] + [n for n, _, _ in sim.param_quantizers()]
    )
    with pytest.raises(RuntimeError, match="has no encoding"):
        sim.model(models.random_images(2, shape=(10,)))


def test_auto_scheme_gives_weights_output_mse_and_activations_sqnr():
    model = models.conv_bn_relu_model()
    data = models.random_images(32)
    sim = QuantizationSimModel(model, quant_scheme="auto", default_param_bw=4, config_file="htp")
    assert sim.quant_scheme.value == "auto"
    params = [q for _, q, _ in sim.param_quantizers()]
    assert params and all(q.quant_scheme.value == "output_mse" for q in params)
    assert all(q.quant_scheme.value == "tf_enhanced" for _, q in sim.activation_quantizers())
    sim.compute_encodings(data)
    # Per weight tensor, the weight error stays close to min/max's (the search minimises the
    # layer-output error instead; test_output_mse pins that guarantee).
    for name, q, variable in sim.param_quantizers():
        if not q.enabled:
            continue
        w = variable.numpy()
        axis = q.channel_axis
        minmax = Quantizer(bitwidth=4, symmetric=q.symmetric, strict=q.strict, unsigned_symmetric=False,
                           channel_axis=axis, quant_scheme="tf")
        minmax.build(w.shape)
        analyzer = minmax.make_analyzer()
        analyzer.observe(w)
        minmax.set_encoding(minmax.encoding_from_range(*minmax.compute_range(analyzer)))
        err_auto = float(np.sum((q(tf.constant(w)).numpy() - w) ** 2))
        err_minmax = float(np.sum((minmax(tf.constant(w)).numpy() - w) ** 2))
        assert err_auto <= err_minmax * 4 + 1e-9, name


def test_a_quantizer_refuses_a_per_kind_scheme():
    with pytest.raises(ValueError, match="'output_mse' for a parameter quantizer or 'tf_enhanced'"):
        Quantizer(quant_scheme="auto")
