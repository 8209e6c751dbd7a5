"""AIMET Keras tensor names: the naming pinned to the measured tf.keras 2 table, and files written
under those names loading back bit-identically."""

import json
import warnings

import keras
import numpy as np
import pytest

from aimet_tf import QuantizationSimModel
from aimet_tf.quantization import aimet_names
from aimet_tf.quantization.primitives import Encoding
from aimet_tf.testing import models

TABLE = json.loads(aimet_names.TABLE_PATH.read_text())


def _built(row: dict) -> tuple[keras.layers.Layer, list[tuple], int]:
    """The Keras 3 layer of a table row, called on inputs of the row's shapes."""
    kwargs = {**row["fixed"], **{k: v for k, v in row["config"].items() if k not in ("input_rank", "num_inputs")}}
    layer = getattr(keras.layers, row["class"])(**kwargs)
    dtype = "int32" if row["class"] == "Embedding" else "float32"
    inputs = [keras.Input(tuple(s), dtype=dtype) for s in row["input_shapes"]]
    if row["class"] == "MultiHeadAttention":
        outputs = layer(*inputs)
    else:
        outputs = layer(inputs if len(inputs) > 1 else inputs[0])
    return layer, [tuple(t.shape) for t in inputs], len(keras.tree.flatten(outputs))


def test_every_measured_row_rebuilt_in_keras3_gets_the_recorded_name():
    wrong = []
    for row in TABLE["layers"]:
        layer, shapes, num_outputs = _built(row)
        ops = aimet_names.output_ops(layer, shapes, num_outputs)
        if ops != row["op"]:
            wrong.append((row["class"], row["config"], ops, row["op"]))
    assert not wrong, wrong
    assert len(TABLE["layers"]) > 300


def test_output_name_is_layer_name_slash_op():
    inputs = keras.Input((8, 8, 3))
    layer = keras.layers.Conv2D(2, 3, use_bias=False, name="stem")
    layer(inputs)
    assert aimet_names.output_name(layer, 0, [(None, 8, 8, 3)]) == "stem/Conv2D:0"
    assert aimet_names.output_name(layer, 1, [(None, 8, 8, 3)]) is None
    assert aimet_names.model_input_name("image") == "image:0"
    with pytest.raises(ValueError, match="output index >= 0"):
        aimet_names.output_name(layer, -1, [(None, 8, 8, 3)])


def test_arguments_the_naming_ignores_were_measured_not_to_change_the_op():
    base = {}
    for row in TABLE["layers"]:
        base.setdefault(row["class"], set()).add(tuple(row["op"]))
    for probe in TABLE["argument_probes"]:
        assert tuple(probe["op"]) in base[probe["class"]], probe


@pytest.mark.parametrize("make, why", [
    (lambda: keras.layers.Conv2D(2, 3, dilation_rate=3, use_bias=False), "dilation not measured"),
    (lambda: keras.layers.Dense(2, activation="hard_sigmoid"), "activation not measured"),
    (lambda: type("MyDense", (keras.layers.Dense,), {})(2), "a subclass is not the Keras class"),
])
def test_layers_the_table_does_not_cover_have_no_name(make, why):
    layer = make()
    shape = (None, 8, 8, 3) if isinstance(layer, keras.layers.Conv2D) else (None, 5)
    layer(keras.Input(shape[1:]))
    assert aimet_names.output_ops(layer, [shape]) is None, why


def test_rank_matters_only_where_it_was_measured_to():
    dense = keras.layers.Dense(2, use_bias=False)
    assert aimet_names.output_ops(dense, [(None, 5)]) == ["MatMul:0"]
    assert aimet_names.output_ops(dense, [(None, 4, 5)]) == ["Tensordot:0"]
    assert aimet_names.output_ops(dense, [(None, 3, 4, 5)]) is None
    assert aimet_names.output_ops(keras.layers.ReLU(), [(None, 5)]) == ["Relu:0"]
    assert aimet_names.output_ops(keras.layers.Add(), [(None, 5)] * 5) is None
    assert aimet_names.output_ops(keras.layers.LSTM(3, return_state=True), [(None, 4, 5)], num_outputs=3) is None


# --- round trips ----------------------------------------------------------------------------------


def _calibrated(model, config_file=None, seed: int = 0):
    data = [models.random_images(16, shape=tuple(t.shape[1:]), seed=seed) for t in model.inputs]
    sim = QuantizationSimModel(model, quant_scheme="tf", config_file=config_file)
    sim.compute_encodings(data if len(data) > 1 else data[0])
    return sim, data if len(data) > 1 else data[0]


def _add_concat_model():
    keras.utils.set_random_seed(3)
    x = keras.Input((6, 6, 3), name="x")
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(x)
    b = keras.layers.Conv2D(4, 1, use_bias=False, name="b")(x)
    s = keras.layers.Add(name="sum")([a, b])
    c = keras.layers.Concatenate(name="cat")([s, a])
    out = keras.layers.Dense(2, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D(name="gap")(c))
    return keras.Model(x, out, name="add_concat")


def _inputs_quantized_config():
    """AIMET's default config with Add and Concat inputs quantized: their input quantizers sit on
    tensors that also have the producer's output quantizer."""
    raw = json.loads((aimet_names.TABLE_PATH.parent.parent / "quantization" / "presets" / "default.json").read_text())
    for op in ("Add", "Concat"):
        raw["op_type"].setdefault(op, {})["is_input_quantized"] = "True"
    return raw


MODELS = {
    "conv_bn_relu": lambda: models.conv_bn_relu_model(),
    "branchy_nested": lambda: models.branchy_model(),
    "sequential": lambda: models.dense_model(),
    "two_input": lambda: models.two_input_model(),
    "add_concat": _add_concat_model,
}


def _round_trip(sim, data, version, config_file=None):
    """Loads the sim's AIMET-named and aimet_tf-named files into fresh sims: outputs must match
    bit for bit (each other and the sim); returns the AIMET-named document and the warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aimet_doc = sim.get_encodings_dict(version)
    ours = sim.get_encodings_dict(version, activation_names="aimet_tf")
    a = QuantizationSimModel(sim._original, quant_scheme="tf", config_file=config_file)
    a.load_encodings_to_sim(aimet_doc)
    b = QuantizationSimModel(sim._original, quant_scheme="tf", config_file=config_file)
    b.load_encodings_to_sim(ours)
    out_a, out_b = a.model.predict(data, verbose=0), b.model.predict(data, verbose=0)
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(out_a, sim.model.predict(data, verbose=0))
    assert a.get_encodings_dict(version) == aimet_doc
    return aimet_doc, [str(w.message) for w in caught]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("version", ["0.6.1", "1.0.0"])
def test_aimet_named_file_loads_bit_identically_to_an_aimet_tf_named_one(name, version):
    sim, data = _calibrated(MODELS[name]())
    doc, caught = _round_trip(sim, data, version)
    names = doc["activation_encodings"]
    names = list(names) if version == "0.6.1" else [e["name"] for e in names]
    ours = [n for n in names if "/output:" in n or "/input:" in n]
    # A Sequential's input is Keras 3's per-session "keras_tensor_<n>": it keeps our name.
    assert ours == (["d1/input:0"] if name == "sequential" else []), ours
    assert bool(caught) == bool(ours)


def test_names_written_for_models_with_merges_nested_models_and_shared_inputs():
    sim, data = _calibrated(models.branchy_model())
    doc, caught = _round_trip(sim, data, "0.6.1")
    acts = doc["activation_encodings"]
    # x feeds a_conv and b_sep: one entry for both input quantizers; the nested model's
    # layers keep their names, its input (read by inner_conv) has no AIMET name.
    assert {"x:0", "a_conv/BiasAdd:0", "b_sep/BiasAdd:0", "inner_relu/Relu:0", "b_lrelu/LeakyRelu:0",
            "cat/concat:0", "head/Relu:0"} <= set(acts)
    assert "a_conv/input:0" not in acts and "b_sep/input:0" not in acts
    sim2, data2 = _calibrated(_add_concat_model())
    doc2, _ = _round_trip(sim2, data2, "0.6.1")
    assert set(doc2["activation_encodings"]) == {"x:0", "a/BiasAdd:0", "b/Conv2D:0", "sum/add:0", "cat/concat:0",
                                                 "gap/Mean:0", "head/Softmax:0"}


def test_bundled_cnn_round_trips_under_aimet_names():
    from aimet_tf.datasets import load_bundled_model, load_fashion_mnist

    model = load_bundled_model()
    x, _ = load_fashion_mnist("calibration")
    sim = QuantizationSimModel(model, quant_scheme="tf")
    sim.compute_encodings(x[:64])
    doc, _ = _round_trip(sim, x[:32], "0.6.1")
    assert all("/output:" not in n and "/input:" not in n for n in doc["activation_encodings"])


def test_input_and_output_quantizers_on_one_tensor_share_one_entry_or_keep_our_names():
    config = _inputs_quantized_config()
    sim, data = _calibrated(_add_concat_model(), config_file=config)
    quantizers = dict(sim.activation_quantizers())
    assert "sum/input:0" in quantizers and "cat/input:1" in quantizers
    doc, _ = _round_trip(sim, data, "0.6.1", config)
    # sum reads a's output: a's output quantizer and sum's input quantizer saw the same data.
    assert "a/BiasAdd:0" in doc["activation_encodings"] and "sum/input:0" not in doc["activation_encodings"]

    # Give cat's second input (a's output, also read by sum) another grid: that tensor's three
    # quantizers keep aimet_tf's names, with a warning, and the file still loads bit-identically.
    q = quantizers["cat/input:1"]
    enc = q.get_encoding()
    q.set_encoding(Encoding(enc.min * 2, enc.max * 2, enc.bitwidth, enc.symmetric))
    doc, caught = _round_trip(sim, data, "0.6.1", config)
    acts = doc["activation_encodings"]
    assert "a/BiasAdd:0" not in acts
    assert {"a/output:0", "sum/input:0", "cat/input:1"} <= set(acts)
    assert any("'a/BiasAdd:0' has quantizers with different encodings" in m for m in caught), caught


def test_two_readers_of_a_model_input_with_different_grids_keep_our_names():
    sim, data = _calibrated(models.branchy_model())
    q = dict(sim.activation_quantizers())["b_sep/input:0"]
    enc = q.get_encoding()
    q.set_encoding(Encoding(enc.min * 3, enc.max * 3, enc.bitwidth, enc.symmetric))
    doc, caught = _round_trip(sim, data, "1.0.0")
    names = {e["name"] for e in doc["activation_encodings"]}
    assert "x:0" not in names and {"a_conv/input:0", "b_sep/input:0"} <= names
    assert any("'x:0' has quantizers with different encodings" in m for m in caught)


def test_a_disabled_reader_keeps_the_tensor_under_our_names():
    sim, data = _calibrated(models.branchy_model())
    dict(sim.activation_quantizers())["b_sep/input:0"].enabled = False
    with pytest.warns(UserWarning, match=r"'x:0' also has quantizers \['b_sep/input:0'\] \(disabled\)"):
        doc = sim.get_encodings_dict()
    assert "a_conv/input:0" in doc["activation_encodings"] and "x:0" not in doc["activation_encodings"]
    fresh = QuantizationSimModel(sim._original, quant_scheme="tf")
    fresh.load_encodings_to_sim(doc, strict=False)
    np.testing.assert_array_equal(fresh.model.predict(data, verbose=0), sim.model.predict(data, verbose=0))


def test_an_aimet_input_name_loads_into_a_single_input_sim_whatever_its_input_is_called(caplog):
    sim, data = _calibrated(models.conv_bn_relu_model())  # input layer "image"
    doc = sim.get_encodings_dict()
    doc["activation_encodings"]["input_1:0"] = doc["activation_encodings"].pop("image:0")
    fresh = QuantizationSimModel(sim._original, quant_scheme="tf")
    with caplog.at_level("WARNING"):
        fresh.load_encodings_to_sim(doc)
    assert "'input_1:0' is taken as this sim's only input 'image'" in caplog.text
    np.testing.assert_array_equal(fresh.model.predict(data, verbose=0), sim.model.predict(data, verbose=0))
    two, _ = _calibrated(models.two_input_model())
    doc = two.get_encodings_dict()
    doc["activation_encodings"]["input_1:0"] = doc["activation_encodings"].pop("image:0")
    with pytest.raises(ValueError, match="'input_1:0': no layer 'input_1' in this sim"):
        QuantizationSimModel(two._original, quant_scheme="tf").load_encodings_to_sim(doc)


def test_export_writes_aimet_names_and_the_files_load_back(tmp_path):
    sim, data = _calibrated(models.conv_bn_relu_model())
    paths = sim.export(tmp_path, "m", convert_to_pb=False)
    names = set(json.loads(open(paths["encodings"]).read())["activation_encodings"])
    assert "add/add:0" in names and "image:0" in names
    fresh = QuantizationSimModel(sim._original, quant_scheme="tf")
    fresh.load_encodings_to_sim(paths["encodings"])
    np.testing.assert_array_equal(fresh.model.predict(data, verbose=0), sim.model.predict(data, verbose=0))
    ours = sim.export(tmp_path / "ours", "m", convert_to_pb=False, activation_names="aimet_tf")
    assert "add/output:0" in json.loads(open(ours["encodings"]).read())["activation_encodings"]
    with pytest.raises(ValueError, match=r"Expected activation_names in \('aimet_keras', 'aimet_tf'\)"):
        sim.get_encodings_dict(activation_names="aimet")
