"""Encodings files: consistency checks, bitwidths that load truthfully, and a fuzzed parser."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aimet_tf import QuantizationSimModel, compute_encoding
from aimet_tf.quantization import encodings_io
from aimet_tf.quantization.encodings_io import EncodingsFormatError
from aimet_tf.testing import fuzzing, models

DATA = models.random_images(32, shape=(10,))


def _sim(param_bw: int = 8) -> QuantizationSimModel:
    sim = QuantizationSimModel(models.dense_model(), quant_scheme="tf", default_param_bw=param_bw)
    sim.compute_encodings(DATA)
    return sim


@pytest.fixture(scope="module")
def sim8():
    return _sim(8)


def _first_param(doc: dict) -> tuple[str, dict]:
    name = sorted(doc["param_encodings"])[0]
    return name, doc["param_encodings"][name][0]


def test_scale_contradicting_min_max_is_rejected_with_tensor_values_and_tolerance(sim8):
    doc = sim8.get_encodings_dict()
    name, entry = _first_param(doc)
    entry["scale"] *= 2.0
    with pytest.raises(EncodingsFormatError) as info:
        sim8.load_encodings_to_sim(doc)
    message = str(info.value)
    assert name in message and "scale contradicts min/max" in message
    assert f"Received: scale={entry['scale']!r}" in message
    assert f"relative tolerance of {encodings_io.SCALE_RTOL:g}" in message


def test_offset_contradicting_min_max_is_rejected(sim8):
    doc = sim8.get_encodings_dict()
    name, entry = _first_param(doc)
    entry["offset"] += 3
    with pytest.raises(EncodingsFormatError, match=rf"{name}.*offset contradicts min/max"):
        encodings_io.from_dict(doc)


def test_scale_rounding_noise_is_accepted(sim8):
    doc = sim8.get_encodings_dict()
    for entries in doc["param_encodings"].values():
        for entry in entries:
            entry["scale"] *= 1.0 + 1e-6  # float64 vs float32 writers
    acts, params = encodings_io.from_dict(doc)
    assert len(params) == len(doc["param_encodings"]) and len(acts) == len(doc["activation_encodings"])


@pytest.mark.parametrize("version", ["0.6.1", "1.0.0"])
def test_4bit_param_encodings_load_as_4bit_and_header_says_so(sim8, version):
    sim4 = _sim(4)
    fresh = QuantizationSimModel(models.dense_model(), quant_scheme="tf", default_param_bw=8)
    fresh.load_encodings_to_sim(sim4.get_encodings_dict(version))
    assert {q.bitwidth for _, q, _ in fresh.param_quantizers()} == {4}
    header = fresh.get_encodings_dict(version)["quantizer_args"]
    assert header["param_bitwidth"] == 4 and header["activation_bitwidth"] == 8
    assert sim8.get_encodings_dict()["quantizer_args"]["param_bitwidth"] == 8
    np.testing.assert_array_equal(fresh.model.predict(DATA, verbose=0), sim4.model.predict(DATA, verbose=0))


def test_mixed_bitwidths_header_keeps_the_default_and_entries_tell_the_grid():
    sim = _sim(8)
    doc = _sim(4).get_encodings_dict()
    first, _ = _first_param(doc)
    sim.set_and_freeze_param_encodings({first: doc["param_encodings"][first]})
    out = sim.get_encodings_dict()
    assert sorted({e[0]["bitwidth"] for e in out["param_encodings"].values()}) == [4, 8]
    assert out["param_encodings"][first][0]["bitwidth"] == 4
    assert out["quantizer_args"]["param_bitwidth"] == 8


# --- fuzzing -----------------------------------------------------------------------------------

_JSON = fuzzing.json_values(
    scalars=["True", "False", "INT", "PER_TENSOR", "PER_CHANNEL", "0.6.1", "1.0.0", 4, 8, -128],
    keys=["version", "activation_encodings", "param_encodings", "bitwidth", "min", "max", "scale",
          "offset", "is_symmetric", "name", "enc_type", "bw", "is_sym", "dtype"],
)


def _valid_docs() -> list[dict]:
    act = compute_encoding(-1.0, 3.0, 8, symmetric=False)
    weight = compute_encoding(np.array([-0.5, -2.0]), np.array([0.7, 1.0]), 4, symmetric=True, strict=True)
    return [
        encodings_io.to_dict({"d1/output:0": act}, {"d1/kernel:0": weight}, version=v)
        for v in encodings_io.SUPPORTED_VERSIONS
    ]


def _parse_or_own_error(doc) -> None:
    try:
        encodings_io.from_dict(doc)
    except EncodingsFormatError as error:
        assert str(error)  # a message, naming what was expected
    # Anything else (KeyError, TypeError, AttributeError, IndexError, ...) fails the test.


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzzing.mutated(_valid_docs(), _JSON))
def test_fuzzed_encodings_end_in_own_error_type(doc):
    _parse_or_own_error(doc)


@settings(max_examples=200, deadline=None)
@given(_JSON)
def test_random_json_encodings_end_in_own_error_type(doc):
    _parse_or_own_error(doc)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_file_ends_in_own_error_type(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("enc") / "x.encodings"
    path.write_bytes(data)
    try:
        encodings_io.from_dict(encodings_io.read_json(path))
    except EncodingsFormatError as error:
        assert str(error)


def test_own_error_type_is_a_value_error():
    assert issubclass(EncodingsFormatError, ValueError)
    with pytest.raises(EncodingsFormatError, match=r"param 'k' min: expected a finite number\. Received: 'x'"):
        encodings_io.from_dict(
            {"version": "0.6.1", "param_encodings": {"k": [{"bitwidth": 8, "min": "x", "max": 1.0}]}}
        )
    json.dumps(_valid_docs())  # the seeds of the fuzzer are valid documents
    for doc in _valid_docs():
        encodings_io.from_dict(doc)


# --- AIMET Keras names, float entries, non-strict loading -----------------------------------------


def _named_sim():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="input_1")
    x = keras.layers.Dense(4, activation="tanh", name="dense")(inputs)
    x = keras.layers.ReLU(name="re_lu")(keras.layers.Dense(4, name="dense_1")(x))
    sim = QuantizationSimModel(keras.Model(inputs, x), quant_scheme="tf")
    sim.compute_encodings(models.random_images(16, shape=(6,)))
    return sim


def _as_aimet_names(doc: dict) -> dict:
    names = {"dense/input:0": "input_1:0", "dense/output:0": "dense/Tanh:0", "re_lu/output:0": "re_lu/Relu:0"}
    assert set(doc["activation_encodings"]) == set(names)  # dense_1 is fused with re_lu
    doc["activation_encodings"] = {names[n]: e for n, e in doc["activation_encodings"].items()}
    return doc


def test_aimet_tf_op_names_load_by_layer():
    sim = _named_sim()
    fresh = QuantizationSimModel(sim._original, quant_scheme="tf")
    fresh.load_encodings_to_sim(_as_aimet_names(sim.get_encodings_dict(activation_names="aimet_tf")))
    x = models.random_images(8, shape=(6,))
    np.testing.assert_array_equal(fresh.model.predict(x, verbose=0), sim.model.predict(x, verbose=0))


def test_written_activation_names_are_aimet_keras_names_by_default():
    sim = _named_sim()
    ours = sim.get_encodings_dict(activation_names="aimet_tf")
    assert sim.get_encodings_dict() == _as_aimet_names(ours)


@pytest.mark.parametrize("name, problem", [
    ("dense_9/BiasAdd:0", "no layer 'dense_9' in this sim"),
    ("dense_1/BiasAdd:0", "layer 'dense_1' has no output quantizer"),
])
def test_unmatched_aimet_name_lists_the_sims_tensors(name, problem):
    sim = _named_sim()
    doc = sim.get_encodings_dict()
    doc["activation_encodings"][name] = doc["activation_encodings"]["re_lu/Relu:0"]
    with pytest.raises(ValueError, match=problem) as info:
        sim.load_encodings_to_sim(doc)
    assert "dense/input:0, dense/output:0, re_lu/output:0" in str(info.value)


def test_two_names_for_one_quantizer_are_refused():
    sim = _named_sim()
    doc = sim.get_encodings_dict(activation_names="aimet_tf")
    doc["activation_encodings"]["re_lu/Relu:0"] = doc["activation_encodings"]["re_lu/output:0"]
    with pytest.raises(ValueError, match="'re_lu/output:0' and 're_lu/Relu:0' both set 're_lu/output:0'"):
        sim.load_encodings_to_sim(doc)


@pytest.mark.parametrize("version", ["0.6.1", "1.0.0"])
def test_float_entries_disable_their_quantizers_with_a_warning(version, caplog):
    sim = _named_sim()
    doc = sim.get_encodings_dict(version, activation_names="aimet_tf")
    if version == "0.6.1":
        doc["activation_encodings"]["dense/Tanh:0"] = [{"bitwidth": 16, "dtype": "float"}]
        del doc["activation_encodings"]["dense/output:0"]
    else:
        entry = next(e for e in doc["activation_encodings"] if e["name"] == "dense/output:0")
        entry.clear()
        entry.update({"name": "dense/Tanh:0", "dtype": "FLOAT", "bw": 16})
    fresh = QuantizationSimModel(sim._original, quant_scheme="tf")
    with caplog.at_level("WARNING"):
        fresh.load_encodings_to_sim(doc)
    quantizers = dict(fresh.activation_quantizers())
    assert not quantizers["dense/output:0"].enabled and quantizers["re_lu/output:0"].enabled
    assert "keep 1 tensors in float" in caplog.text and "dense/output:0" in caplog.text


def test_float_entry_is_refused_where_only_grids_make_sense():
    doc = {"version": "0.6.1", "activation_encodings": {"a:0": [{"bitwidth": 16, "dtype": "float"}]}}
    with pytest.raises(EncodingsFormatError, match="expected an integer encoding"):
        encodings_io.from_dict(doc)
    doc["activation_encodings"]["a:0"][0]["bitwidth"] = 8
    with pytest.raises(EncodingsFormatError, match=r"a float bitwidth in \(16, 32\)"):
        encodings_io.from_dict(doc, allow_float=True)


def test_non_strict_load_disables_quantizers_without_encodings_in_one_warning(caplog):
    sim = _named_sim()
    doc = sim.get_encodings_dict(activation_names="aimet_tf")
    del doc["activation_encodings"]["re_lu/output:0"]
    fresh = QuantizationSimModel(sim._original, quant_scheme="tf")
    with pytest.raises(ValueError, match="missing for 1 enabled quantizers"):
        fresh.load_encodings_to_sim(doc)
    with caplog.at_level("WARNING"):
        fresh.load_encodings_to_sim(doc, strict=False)
    assert not dict(fresh.activation_quantizers())["re_lu/output:0"].enabled
    warnings = [r for r in caplog.records if "strict=False" in r.getMessage()]
    assert len(warnings) == 1 and "re_lu/output:0" in warnings[0].getMessage()
