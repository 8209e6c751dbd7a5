"""Tests for the BERT-style text encoder: aimet_tf.text_encoder and PaddingAttentionMask."""

from __future__ import annotations

import math
import pathlib

import keras
import numpy as np
import pytest

from aimet_tf.graph.prepare import prepare_model
from aimet_tf.layers import PaddingAttentionMask, PositionEmbedding, gelu_approximate
from aimet_tf.text_encoder import bert_encoder, random_token_batch

# A small non-default configuration, so that no size coincides with another.
_SMALL = {"vocab_size": 50, "seq_len": 8, "dim": 12, "depth": 3, "num_heads": 3, "ffn_dim": 20,
          "classes": 5}


def _expected_params(vocab_size: int = 1000, seq_len: int = 32, dim: int = 64, depth: int = 2,
                     num_heads: int = 4, ffn_dim: int = 128, classes: int = 2) -> int:
    """BERT's parameter count, layer by layer (independent of Keras)."""
    embeddings = vocab_size * dim + seq_len * dim + 2 * dim  # token table, position table, LN
    head_dim = dim // num_heads
    attention = 3 * (dim * num_heads * head_dim + num_heads * head_dim)  # query, key, value
    attention += num_heads * head_dim * dim + dim  # output projection
    ffn = dim * ffn_dim + ffn_dim + ffn_dim * dim + dim
    block = attention + ffn + 2 * (2 * dim)  # two LayerNormalizations
    head = dim * dim + dim + dim * classes + classes  # pooler, logits
    return embeddings + depth * block + head


def _predict(model: keras.Model, token_ids: np.ndarray, padding_mask: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict([token_ids, padding_mask], verbose=0))


def _sequence_model(model: keras.Model) -> keras.Model:
    """The same layers, ending at the last block's ``[N, T, D]`` output."""
    depth = sum(isinstance(layer, keras.layers.MultiHeadAttention) for layer in model.layers)
    return keras.Model(model.inputs, model.get_layer(f"block{depth}_ln2").output)


# --- PaddingAttentionMask and gelu_approximate ------------------------------------------------


@pytest.mark.parametrize("dtype", ["int32", "bool", "float32"])
def test_padding_attention_mask_masks_padding_keys(dtype: str) -> None:
    padding = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]).astype(dtype)
    layer = PaddingAttentionMask(name="mask")
    mask = keras.ops.convert_to_numpy(layer(padding))
    assert mask.dtype == np.bool_ and mask.shape == (3, 4, 4)
    for n in range(3):
        for i in range(4):  # every query row, padding rows included, sees the real keys only
            np.testing.assert_array_equal(mask[n, i], padding[n].astype(bool))
    assert layer.compute_output_shape((None, 4)) == (None, 4, 4)
    assert layer.weights == []


def test_padding_attention_mask_symbolic_output_is_bool() -> None:
    out = PaddingAttentionMask()(keras.Input((6,), dtype="int32"))
    assert out.dtype == "bool" and tuple(out.shape) == (None, 6, 6)


def test_padding_attention_mask_refuses_other_ranks() -> None:
    with pytest.raises(ValueError, match=r"padding mask of shape \[N, T\].*\(None, 4, 4\)"):
        PaddingAttentionMask(name="mask").build((None, 4, 4))


def test_gelu_approximate_is_the_tanh_form() -> None:
    x = np.linspace(-5.0, 5.0, 101).astype(np.float32)
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    erf_form = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    y = keras.ops.convert_to_numpy(gelu_approximate(x))
    np.testing.assert_allclose(y, tanh_form, atol=1e-6)
    assert np.max(np.abs(y - erf_form)) > 1e-4  # it is not the exact form


# --- builder: layout ----------------------------------------------------------------------------


@pytest.mark.parametrize("mask_dtype", ["int32", "bool"])
def test_bert_encoder_inputs_and_outputs(mask_dtype: str) -> None:
    model = bert_encoder(mask_dtype=mask_dtype, **_SMALL)
    token_ids, padding_mask = model.inputs
    assert token_ids.name == "token_ids" and token_ids.dtype == "int32"
    assert padding_mask.name == "padding_mask" and padding_mask.dtype == mask_dtype
    assert tuple(token_ids.shape) == tuple(padding_mask.shape) == (None, 8)
    assert model.output_shape == (None, 5)
    ids, mask = random_token_batch(3, 8, 50, seed=0)
    assert _predict(model, ids, mask.astype(mask_dtype)).shape == (3, 5)


@pytest.mark.parametrize("kwargs", [{}, _SMALL])
def test_bert_encoder_parameter_count(kwargs: dict) -> None:
    assert bert_encoder(**kwargs).count_params() == _expected_params(**kwargs)


def test_bert_encoder_layer_names_and_types() -> None:
    model = bert_encoder(depth=2)
    block = ["mha", "add1", "ln1", "ffn1", "ffn2", "add2", "ln2"]
    expected = (["token_ids", "token_embed", "pos_embed", "padding_mask", "embed_ln",
                 "attention_mask"]
                + [f"block{i}_{part}" for i in (1, 2) for part in block]
                + ["cls_crop", "cls_flatten", "pooler", "logits"])
    assert [layer.name for layer in model.layers] == expected
    assert [layer.name for layer in bert_encoder(depth=2).layers] == expected  # deterministic

    assert isinstance(model.get_layer("token_embed"), keras.layers.Embedding)
    assert model.get_layer("token_embed").embeddings.shape == (1000, 64)
    assert isinstance(model.get_layer("pos_embed"), PositionEmbedding)
    assert model.get_layer("pos_embed").embeddings.shape == (1, 32, 64)
    assert isinstance(model.get_layer("attention_mask"), PaddingAttentionMask)
    mha = model.get_layer("block1_mha")
    assert isinstance(mha, keras.layers.MultiHeadAttention)
    assert (mha.num_heads, mha.key_dim) == (4, 16)
    for name in ("embed_ln", "block1_ln1", "block2_ln2"):
        assert model.get_layer(name).epsilon == 1e-12
    assert model.get_layer("block1_ffn1").activation is keras.activations.gelu
    assert model.get_layer("block1_ffn2").activation is keras.activations.linear
    assert model.get_layer("pooler").activation is keras.activations.tanh
    assert model.get_layer("logits").activation is keras.activations.linear
    # Post-norm: each block's LayerNormalization reads its residual Add.
    assert model.get_layer("block2_ln1").input is model.get_layer("block2_add1").output
    assert model.get_layer("block2_ln2").output is model.get_layer("cls_crop").input


def test_bert_encoder_gelu_approximate_layout() -> None:
    model = bert_encoder(gelu_approximate=True, depth=1)
    assert model.get_layer("block1_ffn1").activation is keras.activations.linear
    gelu = model.get_layer("block1_ffn1_gelu")
    assert isinstance(gelu, keras.layers.Activation) and gelu.activation is gelu_approximate
    assert gelu.input is model.get_layer("block1_ffn1").output
    assert model.get_layer("block1_ffn2").input is gelu.output
    assert model.count_params() == _expected_params(depth=1)


def test_both_gelu_forms_prepare_to_the_same_layer_names() -> None:
    # aimet_tf.graph.prepare splits the exact form out of the Dense under the name the
    # approximate form already has; the prepared models compute what the originals do.
    ids, mask = random_token_batch(4, 8, 50, seed=1)
    names = []
    for approximate in (False, True):
        model = bert_encoder(gelu_approximate=approximate, **_SMALL)
        prepared = prepare_model(model)
        names.append([layer.name for layer in prepared.layers])
        np.testing.assert_allclose(_predict(prepared, ids, mask), _predict(model, ids, mask),
                                   atol=1e-6)
    assert names[0] == names[1]
    assert "block3_ffn1_gelu" in names[0]


# --- builder: what the model computes -----------------------------------------------------------


def test_tokens_under_padding_do_not_change_the_logits() -> None:
    model = bert_encoder(**_SMALL)
    ids, mask = random_token_batch(64, 8, 50, seed=2, min_len=1)
    assert 0 < mask.sum() < mask.size  # some padding, some real tokens
    other = np.random.default_rng(3).integers(1, 50, size=ids.shape).astype(np.int32)
    changed = np.where(mask == 1, ids, other)
    assert np.any(changed != ids)
    reference = _predict(model, ids, mask)
    np.testing.assert_allclose(_predict(model, changed, mask), reference, atol=1e-5)

    # The same change matters once the mask says those tokens are real: the test can fail.
    everything_real = np.ones_like(mask)
    assert np.max(np.abs(_predict(model, changed, everything_real)
                         - _predict(model, ids, everything_real))) > 1e-3
    # And a change of a real token matters too.
    real_changed = ids.copy()
    real_changed[:, 0] = (ids[:, 0] % 49) + 1
    assert np.max(np.abs(_predict(model, real_changed, mask) - reference)) > 1e-3


def test_bool_and_int32_masks_give_the_same_logits() -> None:
    int_model = bert_encoder(**_SMALL)
    bool_model = bert_encoder(mask_dtype="bool", **_SMALL)
    bool_model.set_weights(int_model.get_weights())
    ids, mask = random_token_batch(16, 8, 50, seed=4)
    np.testing.assert_array_equal(_predict(bool_model, ids, mask.astype(bool)),
                                  _predict(int_model, ids, mask))


@pytest.mark.parametrize("position", [1, 4, 7])
def test_causal_model_earlier_outputs_ignore_later_tokens(position: int) -> None:
    model = bert_encoder(causal=True, **_SMALL)
    sequence = _sequence_model(model)
    ids, _ = random_token_batch(8, 8, 50, seed=5, min_len=8)
    mask = np.ones_like(ids)
    changed = ids.copy()
    changed[:, position] = (ids[:, position] % 49) + 1
    before, after = _predict(sequence, ids, mask), _predict(sequence, changed, mask)
    np.testing.assert_allclose(after[:, :position], before[:, :position], atol=1e-6)
    assert np.min(np.max(np.abs(after[:, position:] - before[:, position:]), axis=-1)) > 1e-4


def test_bidirectional_model_earlier_outputs_see_later_tokens() -> None:
    # Without causal=True the same change reaches position 0 (so the causal test can fail).
    sequence = _sequence_model(bert_encoder(**_SMALL))
    ids, _ = random_token_batch(8, 8, 50, seed=5, min_len=8)
    mask = np.ones_like(ids)
    changed = ids.copy()
    changed[:, 7] = (ids[:, 7] % 49) + 1
    difference = np.abs(_predict(sequence, changed, mask) - _predict(sequence, ids, mask))
    assert np.min(np.max(difference[:, 0], axis=-1)) > 1e-4


def test_serialization_round_trip_is_bit_exact(tmp_path: pathlib.Path) -> None:
    model = bert_encoder(gelu_approximate=True, causal=True, mask_dtype="bool", **_SMALL)
    path = tmp_path / "bert.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, compile=False)
    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in model.layers]
    assert type(reloaded.get_layer("attention_mask")) is PaddingAttentionMask
    assert reloaded.get_layer("block1_ffn1_gelu").activation is gelu_approximate
    for before, after in zip(model.weights, reloaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(before),
                                      keras.ops.convert_to_numpy(after))
    ids, mask = random_token_batch(16, 8, 50, seed=6)
    np.testing.assert_array_equal(_predict(reloaded, ids, mask.astype(bool)),
                                  _predict(model, ids, mask.astype(bool)))
    # The causal mask survived: a later token still does not reach position 0.
    changed = ids.copy()
    changed[:, 7] = (ids[:, 7] % 49) + 1
    full = np.ones_like(mask, dtype=bool)
    sequence = _sequence_model(reloaded)
    np.testing.assert_allclose(_predict(sequence, changed, full)[:, 0],
                               _predict(sequence, ids, full)[:, 0], atol=1e-6)


def test_float_tflite_matches_keras() -> None:
    from ai_edge_litert.interpreter import Interpreter

    from aimet_tf.export.baselines import tflite_float
    from aimet_tf.kernels.tflite_model import read_tflite

    model = bert_encoder(**_SMALL)
    content = tflite_float(model)
    ops = read_tflite(content).op_counts()
    assert "GATHER" in ops and ops["SOFTMAX"] == 3 and ops["GELU"] == 3
    assert not any(name.startswith("CUSTOM") for name in ops)

    ids, mask = random_token_batch(32, 8, 50, seed=7)
    interpreter = Interpreter(model_content=content)
    details = {d["name"]: d for d in interpreter.get_input_details()}
    feeds = {}
    for name, detail in details.items():
        feeds[detail["index"]] = ids if "token_ids" in name else mask
        interpreter.resize_tensor_input(detail["index"], list(ids.shape))
    assert len(feeds) == 2 and any("token_ids" in name for name in details)
    interpreter.allocate_tensors()
    for index, value in feeds.items():
        interpreter.set_tensor(index, value)
    interpreter.invoke()
    logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(logits, _predict(model, ids, mask), atol=1e-4)


# --- builder: errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 0}, r"vocab_size > 0. Received: vocab_size=0"),
        ({"seq_len": -1}, r"seq_len > 0. Received: seq_len=-1"),
        ({"depth": 0}, r"depth > 0. Received: depth=0"),
        ({"ffn_dim": 0}, r"ffn_dim > 0. Received: ffn_dim=0"),
        ({"dim": 30, "num_heads": 4},
         r"dim to be a multiple of num_heads. Received: dim=30, num_heads=4"),
        ({"mask_dtype": "float32"},
         r"mask_dtype in \('int32', 'bool'\). Received: mask_dtype='float32'"),
    ],
)
def test_bert_encoder_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bert_encoder(**kwargs)


# --- random_token_batch -------------------------------------------------------------------------


def test_random_token_batch_layout() -> None:
    ids, mask = random_token_batch(500, 16, 30, seed=8, min_len=3)
    assert ids.shape == mask.shape == (500, 16)
    assert ids.dtype == mask.dtype == np.int32
    lengths = mask.sum(axis=1)
    assert lengths.min() == 3 and lengths.max() == 16  # 500 draws from 14 lengths reach both ends
    expected_mask = (np.arange(16)[None, :] < lengths[:, None]).astype(np.int32)
    np.testing.assert_array_equal(mask, expected_mask)
    assert np.all(ids[mask == 0] == 0)
    real = ids[mask == 1]
    assert real.min() == 1 and real.max() == 29


def test_random_token_batch_is_seeded() -> None:
    first, second = random_token_batch(20, seed=9), random_token_batch(20, seed=9)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert np.any(random_token_batch(20, seed=10)[0] != first[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, r"n > 0. Received: n=0"),
        ({"n": 2, "seq_len": 0}, r"seq_len > 0. Received: seq_len=0"),
        ({"n": 2, "vocab_size": 1}, r"vocab_size >= 2 .*Received: vocab_size=1"),
        ({"n": 2, "seq_len": 4, "min_len": 5}, r"min_len in \[1, seq_len=4\]. Received: min_len=5"),
        ({"n": 2, "min_len": 0}, r"min_len in \[1, seq_len=32\]. Received: min_len=0"),
    ],
)
def test_random_token_batch_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        random_token_batch(**kwargs)
