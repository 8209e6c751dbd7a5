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
