"""Tests for the vision-transformer pieces: aimet_tf.layers, aimet_tf.vit and the bundled ViT."""

from __future__ import annotations

import hashlib
import pathlib

import keras
import numpy as np
import pytest

from aimet_tf import datasets
from aimet_tf.layers import ClassToken, PositionEmbedding
from aimet_tf.vit import vit_model

_MAX_ASSET_BYTES = 2 * 1024 * 1024


def _rng_array(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --- layers -------------------------------------------------------------------------------------


def test_class_token_prepends_exactly_the_token() -> None:
    x = _rng_array((3, 5, 4), seed=0)
    layer = ClassToken(name="cls")
    layer.build(x.shape)
    assert [w.name for w in layer.weights] == ["token"]
    assert tuple(layer.token.shape) == (1, 1, 4)
    token = _rng_array((1, 1, 4), seed=1)
    layer.token.assign(token)

    y = keras.ops.convert_to_numpy(layer(x))
    assert y.shape == (3, 6, 4)
    np.testing.assert_array_equal(y[:, 1:, :], x)
    np.testing.assert_array_equal(y[:, :1, :], np.broadcast_to(token, (3, 1, 4)))
    assert layer.compute_output_shape((None, 5, 4)) == (None, 6, 4)


def test_position_embedding_adds_the_table() -> None:
    x = _rng_array((2, 7, 3), seed=2)
    layer = PositionEmbedding(name="pos")
    layer.build(x.shape)
    assert [w.name for w in layer.weights] == ["embeddings"]
    table = _rng_array((1, 7, 3), seed=3)
    layer.embeddings.assign(table)

    y = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_array_equal(y, x + table)


def test_default_initializers() -> None:
    x = np.zeros((1, 50, 64), np.float32)
    token, pos = ClassToken(), PositionEmbedding()
    token(x), pos(x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(token.token), 0.0)
    std = float(np.std(keras.ops.convert_to_numpy(pos.embeddings)))
    assert 0.015 < std < 0.025  # RandomNormal(stddev=0.02) over 3,200 values


@pytest.mark.parametrize("layer_type", [ClassToken, PositionEmbedding])
def test_layers_refuse_non_sequences(layer_type: type) -> None:
    with pytest.raises(ValueError, match=r"expects a sequence of shape \[N, T, D\].*\(None, 8\)"):
        layer_type(name="bad").build((None, 8))


def test_position_embedding_needs_known_length() -> None:
    with pytest.raises(ValueError, match=r"needs a known sequence length T.*\(None, None, 4\)"):
        PositionEmbedding(name="pos").build((None, None, 4))


def test_tiny_model_serialization_round_trip_is_bit_exact(tmp_path: pathlib.Path) -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 8))
    x = ClassToken(initializer=keras.initializers.RandomNormal(stddev=1.0), name="cls")(inputs)
    x = PositionEmbedding(initializer="glorot_uniform", name="pos")(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "tiny.keras"
    model.save(path)

    reloaded = keras.saving.load_model(path, compile=False)
    assert type(reloaded.get_layer("cls")) is ClassToken
    assert type(reloaded.get_layer("pos")) is PositionEmbedding
    assert reloaded.get_layer("pos").get_config() == model.get_layer("pos").get_config()
    for before, after in zip(model.weights, reloaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(before),
                                      keras.ops.convert_to_numpy(after))
    data = _rng_array((4, 6, 8), seed=4)
    np.testing.assert_array_equal(model.predict(data, verbose=0), reloaded.predict(data, verbose=0))


# --- builder ------------------------------------------------------------------------------------


def test_vit_model_layout_and_names() -> None:
    model = vit_model(patch_size=7, dim=16, depth=2, num_heads=2, mlp_dim=32)
    names = [layer.name for layer in model.layers]
    assert names[:5] == ["image", "patch_embed", "patch_tokens", "cls_token", "pos_embed"]
    assert names[-4:] == ["final_ln", "cls_crop", "cls_flatten", "logits"]
    for i in (1, 2):
        for part in ("ln1", "mha", "add1", "ln2", "mlp1", "mlp2", "add2"):
            assert f"block{i}_{part}" in names
    assert model.get_layer("pos_embed").embeddings.shape == (1, 17, 16)  # 16 patches + class token
    assert model.output_shape == (None, 10)
    assert model.get_layer("logits").activation is keras.activations.linear


def test_vit_model_output_is_the_class_token_path() -> None:
    # Changing only the class token's weight must change the logits; the model reads it.
    model = vit_model(patch_size=7, dim=16, depth=1, num_heads=2, mlp_dim=32)
    images = np.random.default_rng(5).uniform(size=(2, 28, 28, 1)).astype(np.float32)
    before = model.predict(images, verbose=0)
    model.get_layer("cls_token").token.assign(np.ones((1, 1, 16), np.float32))
    assert not np.allclose(before, model.predict(images, verbose=0))


def test_vit_model_default_size() -> None:
    model = vit_model()
    assert model.count_params() == 205_962
    assert sum(isinstance(layer, keras.layers.MultiHeadAttention) for layer in model.layers) == 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patch_size": 5}, r"multiples of patch_size=5. Received: image_shape=\(28, 28, 1\)"),
        ({"dim": 30, "num_heads": 4}, r"dim to be a multiple of num_heads. Received: dim=30"),
        ({"depth": 0}, r"depth > 0. Received: depth=0"),
        ({"dropout": 1.0}, r"dropout in \[0, 1\). Received: dropout=1.0"),
        ({"image_shape": (28, 28)}, r"image_shape \(H, W, C\). Received: \(28, 28\)"),
    ],
)
def test_vit_model_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        vit_model(**kwargs)


# --- the bundled, trained ViT -------------------------------------------------------------------


def test_bundled_vit_record_matches_file() -> None:
    record = datasets.bundled_vit_metadata()
    path = datasets.bundled_vit_path()
    assert path.name == "fashion_mnist_vit.keras"
    assert path.stat().st_size < _MAX_ASSET_BYTES
    assert record["file_bytes"] == path.stat().st_size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
    assert record["fp32_test_accuracy"] > 0.88
    assert record["train_images"] == 60_000 and record["test_images"] == 10_000
    for key in ("epochs", "seconds", "command", "seed", "params", "keras_version", "date"):
        assert key in record, key


def test_bundled_vit_loads_and_is_accurate() -> None:
    record = datasets.bundled_vit_metadata()
    model = datasets.load_bundled_vit()
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    assert 150_000 <= model.count_params() <= 250_000
    assert model.count_params() == record["params"]
    attention = [layer for layer in model.layers if isinstance(layer, keras.layers.MultiHeadAttention)]
    assert 4 <= len(attention) <= 6
    assert isinstance(model.get_layer("cls_token"), ClassToken)
    assert isinstance(model.get_layer("pos_embed"), PositionEmbedding)
    assert model.get_layer("logits").activation is keras.activations.linear

    x, y = datasets.load_fashion_mnist("test")
    logits = model.predict(x[:2000], batch_size=500, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == y[:2000]))
    assert accuracy > 0.88
    # Same weights, same images: only a near-tie flipping under other CPU kernels may differ.
    assert accuracy == pytest.approx(record["fp32_test_accuracy_first_2000"], abs=0.002)


def test_load_bundled_vit_returns_a_new_model_each_call() -> None:
    first, second = datasets.load_bundled_vit(), datasets.load_bundled_vit()
    first.get_layer("logits").bias.assign(np.full((10,), 5.0, np.float32))
    assert not np.any(keras.ops.convert_to_numpy(second.get_layer("logits").bias) == 5.0)


def test_missing_bundled_vit_names_the_file_and_the_trainer(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "_ASSETS_DIR", tmp_path)
    expected = str(tmp_path / "fashion_mnist_vit.keras")
    with pytest.raises(FileNotFoundError, match="examples/train_vit.py") as error:
        datasets.load_bundled_vit()
    assert expected in str(error.value) and "Received: missing" in str(error.value)
    with pytest.raises(FileNotFoundError, match="examples/train_vit.py"):
        datasets.bundled_vit_metadata()
    # The CNN's loader shares the helper and still names its own trainer.
    with pytest.raises(FileNotFoundError, match="examples/train_fashion_mnist.py"):
        datasets.load_bundled_model()
