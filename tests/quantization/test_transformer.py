"""Attention and layer normalization in the simulation: the layers' maths op by op, each tensor's
quantizer placed as the config says, and the exported int8 file's ops."""

import json

import keras
import numpy as np
import tensorflow as tf
import pytest

from aimet_tf.layers import ClassToken, PositionEmbedding
from aimet_tf.quantization import QuantizationSimModel
from aimet_tf.quantization.config import HardwareConfigError, load_config
from aimet_tf.quantization.transformer import (
    ATTENTION_TENSORS,
    LAYER_NORM_TENSORS,
    attention_forward,
    dense_forward,
    int8_constant,
    layer_norm_forward,
)
from aimet_tf.text_encoder import bert_encoder, random_token_batch

L = keras.layers
RNG = np.random.default_rng(11)
TFLITE = "tflite"


def _identity(name, tensor):
    return tensor


def _recorder(names: list):
    """A ``quantize`` that records the internal tensor names it is called with (not the layer's
    output, which the wrapper's own quantizer handles) and returns the tensor."""
    def quantize(name, tensor):
        if not name.startswith("output:"):
            names.append(name)
        return tensor
    return quantize


def _randomize(model, scale=0.3):
    for v in model.weights:
        v.assign(RNG.normal(size=v.shape).astype("float32") * scale)
    return model


def _tflite_config() -> dict:
    from aimet_tf.export import TFLITE_CONFIG

    with open(TFLITE_CONFIG, encoding="utf-8") as handle:
        return json.load(handle)


def _all_off(sim):
    for wrapper in sim.wrappers():
        for q in wrapper.quantizers():
            q.enabled = False


# --- the maths, every quantizer off ---------------------------------------------------------------

ATTENTION_CASES = {
    "self": dict(call=lambda mha, q, v, m: mha(q, q)),
    "cross_key": dict(call=lambda mha, q, v, m: mha(q, v, key=v * 0.5)),
    "mask": dict(call=lambda mha, q, v, m: mha(q, v, attention_mask=m)),
    "causal": dict(call=lambda mha, q, v, m: mha(q, q, use_causal_mask=True)),
    "scores": dict(call=lambda mha, q, v, m: mha(q, v, return_attention_scores=True)),
}


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention_forward_is_keras_attention(case):
    call = ATTENTION_CASES[case]["call"]
    mha = L.MultiHeadAttention(num_heads=3, key_dim=5, value_dim=4)
    q = RNG.normal(size=(2, 6, 8)).astype("float32")
    v = RNG.normal(size=(2, 7, 8)).astype("float32")
    mask = RNG.random((2, 6, 7)) > 0.3
    mask[:, :, 0] = True
    if case == "causal":
        v = q
    call(mha, q, v, mask)  # builds
    for w in mha.weights:
        w.assign(RNG.normal(size=w.shape).astype("float32") * 0.4)
    expected = call(mha, q, v, mask)

    recorded = {}

    def record(name, tensor):
        if not name.startswith("output:"):  # the layer's output: the wrapper's own quantizer
            recorded[name] = tensor
        return tensor

    args = {
        "self": ((q, q), {}),
        "cross_key": ((q, v), {"key": v * 0.5}),
        "mask": ((q, v), {"attention_mask": mask}),
        "causal": ((q, q), {"use_causal_mask": True}),
        "scores": ((q, v), {"return_attention_scores": True}),
    }[case]
    got = attention_forward(mha, args[0], args[1], False, quantize=record)
    if case == "scores":
        np.testing.assert_allclose(got[0], expected[0], atol=2e-5)
        np.testing.assert_allclose(got[1], expected[1], atol=2e-6)
    else:
        np.testing.assert_allclose(got, expected, atol=2e-5)
    assert set(recorded) == set(ATTENTION_TENSORS)
    # The probabilities sum to one over the keys; masked keys get none of it.
    probs = np.asarray(recorded["attention_probs"])
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    if case == "mask":
        assert np.all(probs[np.broadcast_to(~mask[:, None], probs.shape)] < 1e-6)


def test_attention_forward_without_quantize_lets_the_layer_run():
    mha = L.MultiHeadAttention(num_heads=2, key_dim=3)
    x = RNG.normal(size=(1, 4, 6)).astype("float32")
    mha(x, x)
    assert attention_forward(mha, (x, x), {}, False, quantize=None) is None


def test_gated_attention_is_refused():
    mha = L.MultiHeadAttention(num_heads=2, key_dim=3)
    x = RNG.normal(size=(1, 4, 6)).astype("float32")
    mha(x, x)
    mha._use_gate = True
    with pytest.raises(NotImplementedError, match="use_gate"):
        attention_forward(mha, (x, x), {}, False, quantize=_identity)


@pytest.mark.parametrize(
    "kwargs,shape",
    [
        ({}, (3, 5, 8)),
        ({"epsilon": 1e-6}, (2, 7, 16)),
        ({"axis": (1, 2)}, (2, 4, 6)),
        ({"axis": 1}, (2, 5, 3)),
        ({"rms_scaling": True}, (2, 5, 8)),
        ({"center": False}, (2, 5, 8)),
        ({"scale": False}, (2, 5, 8)),
    ],
)
def test_layer_norm_forward_is_keras_layer_norm(kwargs, shape):
    ln = L.LayerNormalization(**kwargs)
    x = (RNG.normal(size=shape) * 3 + 1).astype("float32")
    ln(x)
    for w in ln.weights:
        w.assign(RNG.normal(size=w.shape).astype("float32"))
    recorded = []
    got = layer_norm_forward(ln, (x,), {}, False, quantize=_recorder(recorded))
    # beta goes through its int8 grid (int8_constant): within half a step of max|beta| / 127.
    tolerance = 1e-4 + (0.5 * float(np.abs(ln.beta.numpy()).max()) / 127 if ln.beta is not None else 0)
    np.testing.assert_allclose(got, ln(x), atol=tolerance)
    expected = [n for n in LAYER_NORM_TENSORS if n != "scaled" or ln.gamma is not None]
    assert recorded == expected


def test_int8_constant_holds_a_scalar_exactly_and_rounds_a_vector_to_its_grid():
    assert float(np.asarray(int8_constant(0.25))[0]) == 0.25
    assert float(np.asarray(int8_constant(1e-6))[0]) == pytest.approx(1e-6, rel=1e-6)
    v = np.array([1.0, -0.4, 0.3, 0.001], np.float32)  # no ties (TF rounds them up)
    got = np.asarray(int8_constant(v))
    step = 1.0 / 127
    np.testing.assert_allclose(got, np.round(v / step) * step, atol=1e-7)


@pytest.mark.parametrize("shape", [(3, 5, 8), (2, 3, 4, 8)])
def test_dense_forward_is_dense_on_sequences(shape):
    dense = L.Dense(6, activation="gelu")
    x = RNG.normal(size=shape).astype("float32")
    expected = dense(x)
    got = dense_forward(dense, (x,), {}, False)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert dense_forward(dense, (x.reshape(-1, 8),), {}, False) is None  # rank 2: the layer's call


# --- placement: what the config says --------------------------------------------------------------

def _block_model():
    x = keras.Input((6, 8))
    h = L.LayerNormalization(name="ln")(x)
    h = L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(h, h)
    h = L.Add(name="add")([x, h])
    h = L.Dense(16, activation="gelu", name="mlp")(h)
    return _randomize(keras.Model(x, h))


def _internal(sim, name):
    return sim.get_quant_wrapper_for_layer_name(name).internal_quantizers


def test_tflite_config_quantizes_every_attention_and_norm_tensor():
    sim = QuantizationSimModel(_block_model(), config_file=TFLITE)
    assert set(_internal(sim, "mha")) == set(ATTENTION_TENSORS)
    assert all(q is not None for q in _internal(sim, "mha").values())
    assert set(_internal(sim, "ln")) == set(LAYER_NORM_TENSORS)
    assert all(q is not None for q in _internal(sim, "ln").values())


def test_aimet_default_config_keeps_layer_norm_whole_but_decomposes_attention():
    sim = QuantizationSimModel(_block_model(), config_file="default")
    assert _internal(sim, "ln") == {}
    assert set(_internal(sim, "mha")) == set(ATTENTION_TENSORS)


@pytest.mark.parametrize(
    "op_type,entry,off",
    [
        ("Softmax", {"is_output_quantized": "False"}, {"attention_probs"}),
        ("MatMul", {"is_output_quantized": "False"}, {"attention_scores", "attention_context"}),
        ("Gemm", {"is_output_quantized": "False"}, {"query", "key", "value"}),
        ("Mul", {"is_output_quantized": "False"}, {"scaled_scores"}),
    ],
)
def test_an_op_type_turned_off_in_the_config_gets_no_quantizer(op_type, entry, off):
    config = _tflite_config()
    config["op_type"][op_type] = entry
    sim = QuantizationSimModel(_block_model(), config_file=config)
    slots = _internal(sim, "mha")
    assert {n for n, q in slots.items() if q is None} == off


def test_norm_internals_follow_their_op_types():
    config = _tflite_config()
    config["op_type"]["ReduceMean"] = {"is_output_quantized": "False"}
    sim = QuantizationSimModel(_block_model(), config_file=config)
    slots = _internal(sim, "ln")
    assert {n for n, q in slots.items() if q is None} == {"mean", "variance"}


def test_is_decomposed_false_quantizes_attention_as_one_op():
    config = _tflite_config()
    config["op_type"]["MultiHeadAttention"] = {"is_decomposed": "False"}
    config["op_type"]["LayerNormalization"] = {"is_decomposed": "False"}
    model = _block_model()
    sim = QuantizationSimModel(model, config_file=config)
    assert _internal(sim, "mha") == {} and _internal(sim, "ln") == {}
    _all_off(sim)
    x = RNG.normal(size=(4, 6, 8)).astype("float32")
    np.testing.assert_allclose(sim.model(x), model(x), atol=1e-6)


def test_is_decomposed_must_be_a_boolean():
    config = _tflite_config()
    config["op_type"]["LayerNormalization"] = {"is_decomposed": "yes"}
    with pytest.raises(HardwareConfigError, match="is_decomposed"):
        load_config(config)


def test_decomposed_sim_with_quantizers_off_is_the_float_model():
    model = _block_model()
    sim = QuantizationSimModel(model, config_file=TFLITE)
    _all_off(sim)
    x = RNG.normal(size=(4, 6, 8)).astype("float32")
    np.testing.assert_allclose(sim.model(x), model(x), atol=2e-5)


def test_internal_quantizers_calibrate_and_quantize():
    model = _block_model()
    sim = QuantizationSimModel(model, config_file=TFLITE)
    x = RNG.normal(size=(32, 6, 8)).astype("float32")
    sim.compute_encodings(x)
    for name, q in {**_internal(sim, "mha"), **_internal(sim, "ln")}.items():
        assert q.get_encoding() is not None, name
    scores = _internal(sim, "mha")["attention_scores"].get_encoding()
    assert scores.max > scores.min
    y = np.asarray(sim.model(x))
    assert not np.allclose(y, np.asarray(model(x)), atol=1e-4)  # quantization changes something
    assert np.abs(y - np.asarray(model(x))).max() < 0.5


def test_class_token_and_position_table_are_per_tensor_even_in_a_per_channel_config():
    x = keras.Input((4, 8))
    h = ClassToken(name="cls")(x)
    h = PositionEmbedding(name="pos")(h)
    model = _randomize(keras.Model(x, L.Dense(3, name="head")(h)))
    sim = QuantizationSimModel(model, config_file=TFLITE)
    assert sim.get_quant_wrapper_for_layer_name("head").param_quantizers_by_path()["kernel"].per_channel
    for name, path in (("cls", "token"), ("pos", "embeddings")):
        q = sim.get_quant_wrapper_for_layer_name(name).param_quantizers_by_path()[path]
        assert q is not None and not q.per_channel


# --- masks in the quantized path ------------------------------------------------------------------

def test_quantized_bert_ignores_padded_tokens():
    model = _randomize(bert_encoder(vocab_size=50, seq_len=12, dim=16, depth=1, num_heads=2, ffn_dim=32), 0.2)
    ids, mask = random_token_batch(64, 12, 50, seed=3, min_len=4)
    sim = QuantizationSimModel(model, config_file=TFLITE)
    sim.compute_encodings([ids, mask])
    before = np.asarray(sim.model([ids, mask]))
    changed = ids.copy()
    changed[mask == 0] = 7  # other ids under the padding
    after = np.asarray(sim.model([changed, mask]))
    np.testing.assert_array_equal(before, after)
    # The same change moves the logits once those tokens count.
    full = np.ones_like(mask)
    assert not np.allclose(np.asarray(sim.model([ids, full])), np.asarray(sim.model([changed, full])))


# --- export ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("param_bw", [8, 4])
def test_transformer_block_exports_full_integer_with_the_ops_the_sim_models(tmp_path, param_bw):
    from ai_edge_litert.interpreter import Interpreter

    from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite

    model = prepare_model_for_tflite(_block_model())
    sim = QuantizationSimModel(model, config_file=TFLITE, default_param_bw=param_bw)
    x = RNG.normal(size=(64, 6, 8)).astype("float32")
    sim.compute_encodings(x)
    path = export_tflite(sim, str(tmp_path / "block.tflite"))  # raises on any float op
    interpreter = Interpreter(model_path=path)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert {"BATCH_MATMUL", "SOFTMAX", "RSQRT", "MEAN", "SUB", "GELU", "FULLY_CONNECTED"} <= ops
    probs = sim.get_quant_wrapper_for_layer_name("mha").internal_quantizers["attention_probs"]
    enc = probs.get_encoding()
    assert probs.frozen and enc.min == 0.0 and enc.max == pytest.approx(255 / 256)
    report = verify_tflite(sim, path, x)
    assert report.sqnr_db > 25.0


@pytest.mark.parametrize("param_bw", [8, 4])
def test_transformer_block_export_is_bit_exact_with_the_reference_kernels(tmp_path, param_bw):
    """Prepared for LiteRT's BUILTIN_REF kernels, the sim gives the file's integers exactly, on
    inputs from a wider distribution than the calibration's."""
    from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite

    model = prepare_model_for_tflite(_block_model())
    sim = QuantizationSimModel(model, config_file=TFLITE, default_param_bw=param_bw)
    sim.compute_encodings(RNG.normal(size=(64, 6, 8)).astype("float32"))
    path = export_tflite(sim, str(tmp_path / "block.tflite"), kernels="reference")
    report = verify_tflite(sim, path, (RNG.normal(size=(128, 6, 8)) * 1.5).astype("float32"))
    assert report.kernels == "reference"
    assert report.exact_fraction == 1.0, report.summary()


def test_masked_bert_export_is_bit_exact_with_the_reference_kernels(tmp_path):
    from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite

    model = _randomize(bert_encoder(vocab_size=50, seq_len=12, dim=16, depth=1, num_heads=2, ffn_dim=32), 0.2)
    sim = QuantizationSimModel(prepare_model_for_tflite(model), config_file=TFLITE)
    sim.compute_encodings(list(random_token_batch(64, 12, 50, seed=3, min_len=4)))
    path = export_tflite(sim, str(tmp_path / "bert.tflite"), kernels="reference")
    report = verify_tflite(sim, path, list(random_token_batch(128, 12, 50, seed=4, min_len=1)))
    assert report.exact_fraction == 1.0, report.summary()


def test_rms_norm_forward_is_keras_rms_norm_and_decomposes_under_tflite():
    from aimet_tf.quantization.transformer import RMS_NORM_TENSORS, rms_norm_forward

    norm = L.RMSNormalization()
    x = (RNG.normal(size=(3, 5, 8)) * 2).astype("float32")
    norm(x)
    norm.scale.assign(RNG.normal(size=norm.scale.shape).astype("float32"))
    recorded = []
    got = rms_norm_forward(norm, (x,), {}, False, quantize=_recorder(recorded))
    np.testing.assert_allclose(got, norm(x), atol=1e-4)
    assert recorded == list(RMS_NORM_TENSORS)

    inp = keras.Input((5, 8))
    model = keras.Model(inp, L.RMSNormalization(name="rms")(L.Dense(8, name="d")(inp)))
    sim = QuantizationSimModel(model, config_file=TFLITE)
    assert set(_internal(sim, "rms")) == set(RMS_NORM_TENSORS)
    assert _internal(QuantizationSimModel(model, config_file="default"), "rms") == {}


@pytest.mark.parametrize("kernels", ["reference", "default"])
def test_position_embedding_add_runs_the_kernels_integer_add(tmp_path, kernels):
    # input + table is one int8 ADD of two grids (the activation's and the table's): the sim's
    # requantizer must take the quantized table as the second operand, as it takes an Add's.
    from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite

    x = keras.Input((16, 12))
    h = PositionEmbedding(name="pos")(L.Dense(12, name="proj")(x))
    model = _randomize(keras.Model(x, L.Dense(5, name="head")(h)), 0.4)
    sim = QuantizationSimModel(prepare_model_for_tflite(model), config_file=TFLITE)
    sim.compute_encodings(RNG.normal(size=(64, 16, 12)).astype("float32"))
    path = export_tflite(sim, str(tmp_path / "pos.tflite"), kernels=kernels)
    requantizer = sim.get_quant_wrapper_for_layer_name("pos").requantizer
    assert requantizer is not None and requantizer.enabled
    assert len(requantizer.linked().operands) == 2
    report = verify_tflite(sim, path, RNG.normal(size=(1024, 16, 12)).astype("float32"))
    assert report.exact_fraction == 1.0, report.summary()


class _Grids:
    """A ``quantize`` for the decomposed ops, prepared for LiteRT's ``kernels``: tensors named in
    ``grids`` (name -> (step, zero point)) are rounded half to even onto their int8 grid."""

    def __init__(self, kernels, grids):
        self.kernels, self.grids = kernels, grids

    def scale(self, name):
        return tf.constant(self.grids[name][0], tf.float32)

    def minimum(self, name):
        step, zero_point = self.grids[name]
        return tf.constant(step * (-128 - zero_point), tf.float32)

    def __call__(self, name, x):
        step, zero_point = self.grids[name]
        return (tf.clip_by_value(tf.round(x / step) + zero_point, -128, 127) - zero_point) * step


@pytest.mark.parametrize("power", [-2, 0, 3])
def test_decomposed_mul_is_xnnpack_mul_on_every_pair_of_codes(power):
    # XNNPACK's MUL: float32(q_1 * q_2) * float32(float32(s_1 * s_2) / s_y), ties to even. With
    # M = 2^k the products are exact ties, which float-then-round of dequantized values misses.
    from aimet_tf.kernels.litert import interpreter
    from aimet_tf.quantization.transformer import _requantized
    from tests.kernels.test_transformer_ops import _q
    from tests.kernels.tflite_models import op_model

    s_1, s_2, z_1, z_2, z_y = 0.0372, 0.0141, 3, -7, 5
    s_y = float(np.float32(np.float32(s_1) * np.float32(s_2) * 2.0**power))
    codes = np.arange(-128, 128, dtype=np.int8)
    x_1, x_2 = np.repeat(codes, 256).reshape(1, 256, 256), np.tile(codes, 256).reshape(1, 256, 256)
    model = op_model("MUL", [_q((1, 256, 256), s_1, z_1), _q((1, 256, 256), s_2, z_2)], [_q((1, 256, 256), s_y, z_y)])
    litert = interpreter(model, "default")
    litert.allocate_tensors()
    for detail, x in zip(litert.get_input_details(), (x_1, x_2)):
        litert.set_tensor(detail["index"], x)
    litert.invoke()
    expected = litert.get_tensor(litert.get_output_details()[0]["index"]).astype(np.int64)

    quantize = _Grids("default", {"a": (s_1, z_1), "b": (s_2, z_2), "y": (s_y, z_y)})
    a = tf.constant((x_1.astype(np.float32) - z_1) * np.float32(s_1))
    b = tf.constant((x_2.astype(np.float32) - z_2) * np.float32(s_2))
    y = _requantized(quantize, "y", a * b, "mul", [(a, quantize.scale("a")), (b, quantize.scale("b"))])
    got = np.round(y.numpy() / np.float32(s_y)).astype(np.int64) + z_y
    np.testing.assert_array_equal(got, expected)
