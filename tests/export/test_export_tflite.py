"""export_tflite / verify_tflite end to end: sizes, int4 packing, int8 I/O, errors, atomic write."""

import json
import os

import keras
import numpy as np
import pytest

from aimet_tf import QuantizationSimModel
from aimet_tf.export.baselines import tflite_ptq_int8
from aimet_tf.export import (
    TFLITE_CONFIG,
    TfliteExportError,
    export_tflite,
    prepare_model_for_tflite,
    prepare_sim_for_tflite,
    run_tflite,
    verify_tflite,
)
from aimet_tf.testing import models

L = keras.layers


def _cnn(seed=0) -> keras.Model:
    """Conv+BN+ReLU6, depthwise+BN+ReLU6, 1x1 conv, residual Add, pooling, Dense (~5k weights)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3), name="image")
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(max_value=6.0, name="stem_relu")(x)
    y = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = L.BatchNormalization(name="dw_bn")(y)
    y = L.ReLU(max_value=6.0, name="dw_relu")(y)
    y = L.Conv2D(16, 1, name="pw")(y)
    x = L.Add(name="add")([x, y])
    x = L.ReLU(max_value=6.0, name="add_relu")(x)
    x = L.Conv2D(32, 3, strides=2, padding="same", name="conv2")(x)
    x = L.ReLU(name="conv2_relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(10, name="logits")(x)
    model = keras.Model(inp, out, name="cnn")
    return models.randomize_batch_norms(model, seed)


def _calibrated(model, param_bw=8, config=TFLITE_CONFIG, prepare_model=True, seed=1):
    if prepare_model:
        model = prepare_model_for_tflite(model)
    sim = QuantizationSimModel(model, quant_scheme="tf", config_file=config, default_param_bw=param_bw)
    data = models.random_images(48, model.input_shape[1:], seed=seed)
    sim.compute_encodings(data)
    return sim, data


def _tflite_config(**op_types) -> dict:
    with open(TFLITE_CONFIG, encoding="utf-8") as handle:
        config = json.load(handle)
    config["op_type"].update(op_types)
    return config


def _snap(sim, x):
    # Inputs on the model input's grid: see tests/export/conftest.py::on_input_grid.
    for wrapper in sim.wrappers():
        producer = wrapper._inbound_nodes[0].input_tensors[0]._keras_history.operation
        if isinstance(producer, L.InputLayer) and wrapper.input_quantizers:
            return np.asarray(wrapper.input_quantizers[0](x))
    raise AssertionError("no quantizer on the model input")


@pytest.fixture(scope="module")
def cnn_w8_w4(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn")
    out = {}
    for bw in (8, 4):
        sim, data = _calibrated(_cnn(), param_bw=bw)
        out[bw] = (sim, export_tflite(sim, str(folder / f"w{bw}.tflite")), _snap(sim, data))
    return out


def _tflite_ptq_size(model, data) -> int:
    return len(tflite_ptq_int8(model, data))


def test_w8_and_w4_reproduce_the_simulation(cnn_w8_w4):
    for bw, (sim, path, data) in cnn_w8_w4.items():
        report = verify_tflite(sim, path, data)
        assert report.top1_agreement == 1.0, (bw, report.summary())
        assert report.within_one_step == 1.0, (bw, report.summary())
        assert report.exact_fraction >= 0.999, (bw, report.summary())
        assert report.sqnr_db > 40.0


def test_int4_weights_are_packed_and_shrink_the_file(cnn_w8_w4):
    from tensorflow.lite.tools import flatbuffer_utils

    w8, w4 = cnn_w8_w4[8][1], cnn_w8_w4[4][1]
    sim4 = cnn_w8_w4[4][0]
    model = flatbuffer_utils.read_model(w4)
    int4 = 17  # TensorType.INT4
    packed = [t for t in model.subgraphs[0].tensors if t.type == int4]
    assert {t.name.decode() for t in packed} == {"stem/weights", "pw/weights", "conv2/weights",
                                                 "logits/weights"}
    four_bit = sum(int(np.prod(v.shape)) for _, q, v in sim4.param_quantizers() if q.bitwidth == 4)
    shrink = os.path.getsize(w8) - os.path.getsize(w4)
    # Packed conv/dense filters save half a byte each; the 4-bit depthwise filter stays int8
    # (LiteRT 2.3 cannot run int4 DEPTHWISE_CONV_2D) and saves nothing.
    assert shrink >= 0.45 * four_bit, (shrink, four_bit)


def test_int8_file_no_larger_than_tflite_own_ptq(cnn_w8_w4):
    model = _cnn()
    data = models.random_images(48, model.input_shape[1:], seed=1)
    assert os.path.getsize(cnn_w8_w4[8][1]) <= _tflite_ptq_size(model, data)


def test_tensor_names_say_layer_and_role(cnn_w8_w4):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=cnn_w8_w4[8][1])
    names = {t["name"] for t in interpreter.get_tensor_details()}
    assert {"stem/weights", "stem/bias", "stem_relu/output", "logits/output"} <= names


def test_int8_input_and_output(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    sim, data = _calibrated(_cnn())
    path = export_tflite(sim, str(tmp_path / "io.tflite"), input_type="int8", output_type="int8")
    interpreter = Interpreter(model_path=path)
    detail_in = interpreter.get_input_details()[0]
    detail_out = interpreter.get_output_details()[0]
    assert detail_in["dtype"] == np.int8 and detail_out["dtype"] == np.int8
    encoding = sim.model.get_layer("stem").input_quantizers[0].get_encoding()
    np.testing.assert_allclose(detail_in["quantization"][0], encoding.scale, rtol=1e-6)
    assert detail_in["quantization"][1] == int(-encoding.offset) - 128
    report = verify_tflite(sim, path, _snap(sim, data))
    assert report.within_one_step == 1.0 and report.exact_fraction >= 0.999, report.summary()


def test_uncalibrated_sim_rejected_and_nothing_written(tmp_path):
    model = prepare_model_for_tflite(_cnn())
    sim = QuantizationSimModel(model, config_file=TFLITE_CONFIG)
    path = tmp_path / "never.tflite"
    with pytest.raises(TfliteExportError, match="compute_encodings"):
        export_tflite(sim, str(path))
    assert not path.exists() and os.listdir(tmp_path) == []


def test_unfolded_batch_norm_named(tmp_path):
    sim, _ = _calibrated(_cnn(), prepare_model=False)
    with pytest.raises(TfliteExportError, match=r"'stem_bn'.*prepare_model_for_tflite"):
        export_tflite(sim, str(tmp_path / "bn.tflite"))


def test_unsplit_separable_conv_named(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    out = L.SeparableConv2D(4, 3, name="sep")(inp)
    sim, _ = _calibrated(keras.Model(inp, out), prepare_model=False)
    with pytest.raises(TfliteExportError, match=r"'sep'.*split"):
        export_tflite(sim, str(tmp_path / "sep.tflite"))


def _fully_connected_tensors(path) -> dict[str, tuple]:
    """Per Dense layer: (input, filter, bias) tensor details of its FULLY_CONNECTED op."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    out = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] == "FULLY_CONNECTED":
            x, w, b = (tensors.get(i) for i in op["inputs"][:3])  # a zero bias may be dropped
            out[w["name"].split("/")[0]] = (x, w, b)
    return out


def test_tflite_config_quantizes_dense_weights_per_channel():
    # TFLite's own PTQ writes per-channel FULLY_CONNECTED filters; per-tensor ones cost accuracy.
    sim = QuantizationSimModel(models.dense_model(), config_file=TFLITE_CONFIG)
    for name in ("d1", "d2", "d3"):
        q = sim.model.get_layer(name).param_quantizers_by_path()["kernel"]
        assert q.per_channel and q.channel_axis in (-1, (-1,), 1, (1,)), (name, q.channel_axis)


@pytest.mark.parametrize("param_bw", [8, 4, 3])
def test_per_channel_dense_written_per_channel_and_bit_exact(tmp_path, param_bw):
    keras.utils.set_random_seed(0)
    inp = keras.Input((12,))
    x = L.Dense(16, activation="relu", name="fc1")(inp)
    out = L.Dense(8, name="fc2")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    for layer in model.layers[1:]:
        # Units of very different magnitudes: one step per unit matters.
        layer.kernel.assign(layer.kernel.numpy() * rng.uniform(0.02, 3.0, (1, layer.units)))
        layer.bias.assign(rng.normal(0, 0.5, layer.units))
    sim, data = _calibrated(model, param_bw=param_bw)
    path = export_tflite(sim, str(tmp_path / "fc.tflite"))
    for name, (x_t, w_t, b_t) in _fully_connected_tensors(path).items():
        wrapper = sim.model.get_layer(name)
        s_w = wrapper.param_quantizers_by_path()["kernel"].scale_tensor().numpy()
        w_q, b_q = w_t["quantization_parameters"], b_t["quantization_parameters"]
        assert len(w_q["scales"]) == wrapper.layer.units and w_q["quantized_dimension"] == 0
        np.testing.assert_array_equal(w_q["scales"], s_w.astype(np.float32))
        assert not np.any(w_q["zero_points"])
        s_in = x_t["quantization_parameters"]["scales"][0]
        np.testing.assert_allclose(b_q["scales"], s_in * s_w, rtol=1e-6)
        assert b_t["dtype"] == np.int32
    for kernels in ("default", "reference"):
        report = verify_tflite(sim, path, _snap(sim, data), kernels=kernels)
        assert report.exact_fraction == 1.0, (kernels, report.summary())


def test_per_tensor_dense_still_exports(tmp_path):
    config = _tflite_config(Gemm={"per_channel_quantization": "False"})
    sim, data = _calibrated(models.dense_model(), config=config)
    path = export_tflite(sim, str(tmp_path / "dense.tflite"))
    for _, w_t, _ in _fully_connected_tensors(path).values():
        assert len(w_t["quantization_parameters"]["scales"]) == 1
    report = verify_tflite(sim, path, _snap(sim, data))
    assert report.exact_fraction >= 0.999, report.summary()


def test_per_channel_transposed_conv_rejected_with_fix(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    out = L.Conv2DTranspose(4, 3, name="up")(inp)
    config = _tflite_config(ConvTranspose={"per_channel_quantization": "True"})
    sim, _ = _calibrated(keras.Model(inp, out), config=config)
    with pytest.raises(TfliteExportError, match=r"'up'.*per-channel.*per-tensor"):
        export_tflite(sim, str(tmp_path / "up.tflite"))


def test_asymmetric_weights_and_16_bit_activations_rejected(tmp_path):
    config = _tflite_config()
    config["defaults"]["params"]["is_symmetric"] = "False"
    sim, _ = _calibrated(models.dense_model(), config=config)
    with pytest.raises(TfliteExportError, match="asymmetric"):
        export_tflite(sim, str(tmp_path / "asym.tflite"))
    sim16 = QuantizationSimModel(models.dense_model(), config_file=TFLITE_CONFIG, default_output_bw=16)
    sim16.compute_encodings(np.random.default_rng(0).normal(size=(16, 10)).astype(np.float32))
    with pytest.raises(TfliteExportError, match="16 bits"):
        export_tflite(sim16, str(tmp_path / "a16.tflite"))


def test_layer_left_in_float_is_named(tmp_path):
    # A conv whose output carries no quantizer (and no fused successor) stays a float op.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="lonely_conv")(inp)
    x = L.MaxPooling2D(2, name="pool")(x)
    out = L.Conv2D(2, 1, name="head")(x)
    config = _tflite_config(Conv={"is_output_quantized": "False"})
    sim, _ = _calibrated(keras.Model(inp, out), config=config)
    with pytest.raises(TfliteExportError, match=r"float.*'lonely_conv'"):
        export_tflite(sim, str(tmp_path / "float.tflite"))
    assert not (tmp_path / "float.tflite").exists()


def test_bad_io_type_rejected(cnn_w8_w4, tmp_path):
    with pytest.raises(ValueError, match="input_type"):
        export_tflite(cnn_w8_w4[8][0], str(tmp_path / "x.tflite"), input_type="uint8")


def test_write_is_atomic(cnn_w8_w4, tmp_path, monkeypatch):
    sim = cnn_w8_w4[8][0]
    path = tmp_path / "model.tflite"
    path.write_bytes(b"previous")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        export_tflite(sim, str(path))
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["model.tflite"]  # no temporary file left behind
    monkeypatch.undo()
    export_tflite(sim, str(path))
    assert path.read_bytes()[4:8] == b"TFL3" and os.listdir(tmp_path) == ["model.tflite"]
    assert os.stat(path).st_mode & 0o044  # readable like any file written with open()


@pytest.mark.parametrize("name, reason", [("", "empty"), (".hidden.tflite", "starts with '.'"),
                                          ("..", "names a folder")])
def test_bad_file_name_rejected_before_converting(cnn_w8_w4, tmp_path, monkeypatch, name, reason):
    import aimet_tf.export.tflite as tflite_module

    monkeypatch.setattr(tflite_module, "_convert", lambda *a: pytest.fail("converted anyway"))
    target = os.path.join(str(tmp_path), name) if name else str(tmp_path) + os.sep
    with pytest.raises(ValueError, match=rf"Expected the file name of path to be a plain file name.*{reason}"):
        export_tflite(cnn_w8_w4[8][0], target)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_exported_file_mode_follows_umask(cnn_w8_w4, tmp_path, umask):
    old = os.umask(umask)
    try:
        path = export_tflite(cnn_w8_w4[8][0], str(tmp_path / "model.tflite"))
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_prepare_is_idempotent_and_keeps_float_exactness():
    model = prepare_model_for_tflite(_cnn())
    sim = QuantizationSimModel(model, quant_scheme="tf", config_file=TFLITE_CONFIG)
    first = prepare_sim_for_tflite(sim)   # before calibration: links follow compute_encodings
    data = models.random_images(32, model.input_shape[1:])
    sim.compute_encodings(data)
    before = sim.model.predict(data, verbose=0)
    second = prepare_sim_for_tflite(sim)
    assert first == second
    assert set(first.bias_quantizers) == {"stem", "dw", "pw", "conv2", "logits"}
    np.testing.assert_array_equal(sim.model.predict(data, verbose=0), before)
    with sim.quantizers_disabled():
        np.testing.assert_array_equal(sim.model.predict(data, verbose=0), model.predict(data, verbose=0))


def test_prepared_sim_saves_and_reloads(cnn_w8_w4, tmp_path):
    sim, _, data = cnn_w8_w4[8]
    path = tmp_path / "sim.keras"
    sim.model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(data, verbose=0), sim.model.predict(data, verbose=0))


def test_concat_and_pool_grids_tied_in_the_sim():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(inp)
    b = L.Conv2D(5, 1, name="b")(inp)
    x = L.Concatenate(name="cat")([a, b])
    x = L.AveragePooling2D(2, name="pool")(x)
    out = L.Dense(3, name="fc")(L.Flatten(name="flat")(x))
    sim, _ = _calibrated(keras.Model(inp, out))
    report = prepare_sim_for_tflite(sim)
    assert report.tied == [("a/output:0", "b/output:0", "cat/output:0", "pool/output:0")]
    leader = sim.model.get_layer("cat").output_quantizers[0]
    for name in ("a", "b", "pool"):
        enc = sim.model.get_layer(name).output_quantizers[0].get_encoding()
        np.testing.assert_array_equal(enc.min, leader.get_encoding().min)


def test_verify_report_fields_and_validation(cnn_w8_w4):
    sim, path, data = cnn_w8_w4[8]
    labels = np.arange(len(data)) % 10
    report = verify_tflite(sim, path, data, labels=labels, batch_size=16)
    assert report.num_samples == len(data) and report.file_size_bytes == os.path.getsize(path)
    assert 0.0 <= report.accuracy_sim <= 1.0 and report.accuracy_sim == report.accuracy_tflite
    assert report.output_step == pytest.approx(
        sim.model.get_layer("logits").output_quantizers[0].get_encoding().scale, rel=1e-6
    )
    assert "top-1 agreement" in report.summary()
    reference = verify_tflite(sim, path, data, kernels="reference")
    assert reference.kernels == "reference" and reference.within_one_step > 0.9
    with pytest.raises(ValueError, match="kernels"):
        verify_tflite(sim, path, data, kernels="gpu")
    with pytest.raises(ValueError, match="label"):
        verify_tflite(sim, path, data, labels=labels[:3])
    with pytest.raises(ValueError, match="at least one"):
        verify_tflite(sim, path, data[:0])


def test_run_tflite_batches_like_one_call(cnn_w8_w4):
    _, path, data = cnn_w8_w4[8]
    np.testing.assert_array_equal(run_tflite(path, data, batch_size=7)[0],
                                  run_tflite(path, data, batch_size=64)[0])


def test_multi_input_multi_output_file_runs_in_keras_order(tmp_path):
    # Inputs and outputs of different shapes: a swapped order fails on shapes or on values.
    keras.utils.set_random_seed(3)
    a, b = keras.Input((3,), name="zeta"), keras.Input((7,), name="alpha")
    joined = keras.layers.Concatenate(name="cat")([keras.layers.Dense(4, name="da")(a), keras.layers.Dense(4, name="db")(b)])
    model = keras.Model([a, b], [keras.layers.Dense(2, name="small")(joined), keras.layers.Dense(5, name="big")(joined)])
    rng = np.random.default_rng(0)
    data = [rng.normal(size=(40, 3)).astype("float32"), rng.normal(size=(40, 7)).astype("float32")]
    sim = QuantizationSimModel(prepare_model_for_tflite(model), quant_scheme="tf", config_file=TFLITE_CONFIG)
    sim.compute_encodings(tuple(data))
    path = export_tflite(sim, tmp_path / "two.tflite")
    small, big = run_tflite(path, {"zeta": data[0], "alpha": data[1]})
    assert small.shape == (40, 2) and big.shape == (40, 5)
    report = verify_tflite(sim, path, data)  # in the Keras model's input order, as predict takes them
    assert report.num_samples == 40 and report.exact_fraction == 1.0, report.summary()
    with pytest.raises(ValueError, match=r"Expected a dict .* 2 inputs \(names: \['alpha', 'zeta'\]\)"):
        run_tflite(path, data)
    with pytest.raises(ValueError, match=r"by name: \['alpha', 'zeta'\]. Received: \['a', 'zeta'\]"):
        run_tflite(path, {"zeta": data[0], "a": data[1]})
    with pytest.raises(ValueError, match="same number of samples"):
        run_tflite(path, {"zeta": data[0], "alpha": data[1][:5]})
    with pytest.raises(ValueError, match="Expected 2 input array"):
        verify_tflite(sim, path, data[:1])
