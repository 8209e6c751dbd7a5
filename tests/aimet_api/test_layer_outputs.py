"""LayerOutputUtil: AIMET's script shape and file layout; the saved values are the layers' outputs."""

import json
import os

import keras
import numpy as np
import pytest

from aimet_tf.analysis import (
    LayerOutputUtil,
    collect_layer_outputs,
    compare_layer_outputs,
    layer_output_names,
    read_raw_outputs,
)
from aimet_tf.testing.models import conv_bn_relu_model, random_images, two_input_model
from tests.aimet_api import harness


def test_aimet_layer_output_script(tmp_path):
    runs = harness.run_script("layer_outputs", str(tmp_path))
    a, b = runs["imports_changed"], runs["unchanged"]
    assert a["files"] == b["files"] and a["sim_logits"] == b["sim_logits"]
    # FP32 and sim folders name the same tensors, so a comparison pairs them up.
    assert a["files"]["fp32"] == a["files"]["sim"]
    assert a["inputs"] == sorted(f"input_{k}.raw" for k in range(16))  # 2 batches of 8, numbered on
    # The last layer's saved values are the sim's logits of that sample.
    model = conv_bn_relu_model(input_shape=(16, 16, 3), classes=4, seed=3)
    last = layer_output_names(model)[-1]
    for k in (0, 15):
        saved = read_raw_outputs(a["sim_dir"], k)[last]
        np.testing.assert_array_equal(saved, np.asarray(a["sim_logits"], np.float32)[k])
        fp32 = read_raw_outputs(a["fp32_dir"], k)[last]
        np.testing.assert_allclose(fp32, np.asarray(a["fp32_logits"], np.float32)[k], rtol=1e-5, atol=1e-6)
    rows = compare_layer_outputs(a["fp32_dir"], a["sim_dir"], index=3)
    assert [r.name for r in rows] == layer_output_names(model)
    assert all(np.isfinite(r.sqnr_db) and r.sqnr_db > 10 for r in rows[1:])  # quantized, but close
    assert rows[-1].max_abs_error > 0


def test_layout_names_and_values(tmp_path):
    model = conv_bn_relu_model(input_shape=(8, 8, 3), classes=3, seed=1)
    images = random_images(5, (8, 8, 3), seed=2)
    util = LayerOutputUtil(model, save_dir=str(tmp_path / "out"))
    util.generate_layer_outputs(images)
    mapper = json.loads((tmp_path / "out" / "LayerOutputNameMapper.json").read_text())
    names = layer_output_names(model)
    assert list(mapper) == names
    assert all(stem == name.replace("/", "_").replace(":", "_") for name, stem in mapper.items())
    expected = collect_layer_outputs(model, images)
    for k in range(5):
        raw = np.fromfile(tmp_path / "out" / "inputs" / f"input_{k}.raw", dtype=np.float32)
        np.testing.assert_array_equal(raw, images[k].ravel())
        saved = read_raw_outputs(str(tmp_path / "out"), k)
        for name in names:
            np.testing.assert_array_equal(saved[name], expected[name][k].ravel())
    # Intermediate layers, not only the model output: each conv output equals a sub-model's.
    conv = next(l for l in model.layers if isinstance(l, keras.layers.Conv2D))
    sub = keras.Model(model.inputs[0], conv.output)
    np.testing.assert_allclose(expected[f"{conv.name}/output:0"], np.asarray(sub(images)), rtol=1e-6, atol=1e-6)
    assert not [p for p in os.listdir(tmp_path / "out" / "outputs") if p.startswith(".")]  # no staging left


def test_multi_input_model_gets_a_folder_per_sample(tmp_path):
    model = two_input_model(seed=0)
    shapes = [tuple(t.shape[1:]) for t in model.inputs]
    xs = [np.random.default_rng(i).normal(size=(3, *s)).astype(np.float32) for i, s in enumerate(shapes)]
    LayerOutputUtil(model, str(tmp_path)).generate_layer_outputs(xs)
    for i, x in enumerate(xs):
        raw = np.fromfile(tmp_path / "inputs" / "input_2" / f"{i}.raw", dtype=np.float32)
        np.testing.assert_array_equal(raw, x[2].ravel())


def test_rerun_replaces_a_sample_whole(tmp_path):
    model = conv_bn_relu_model(input_shape=(8, 8, 3), classes=3, seed=1)
    LayerOutputUtil(model, str(tmp_path)).generate_layer_outputs(random_images(2, (8, 8, 3), seed=0))
    fresh = random_images(1, (8, 8, 3), seed=9)
    LayerOutputUtil(model, str(tmp_path)).generate_layer_outputs(fresh)
    last = layer_output_names(model)[-1]
    np.testing.assert_array_equal(read_raw_outputs(str(tmp_path), 0)[last], np.asarray(model(fresh))[0])
    assert sorted(os.listdir(tmp_path / "outputs")) == ["layer_outputs_0", "layer_outputs_1"]


def test_bad_inputs_are_refused(tmp_path):
    model = conv_bn_relu_model(input_shape=(8, 8, 3), classes=3, seed=1)
    util = LayerOutputUtil(model, str(tmp_path))
    with pytest.raises(ValueError, match="layer-output inputs"):
        util.generate_layer_outputs(np.zeros((2, 9, 9, 3), np.float32))
    assert not os.listdir(tmp_path)  # nothing written for refused inputs
    with pytest.raises(FileNotFoundError, match="no sample 0"):
        read_raw_outputs(str(tmp_path), 0)
    util.generate_layer_outputs(random_images(1, (8, 8, 3), seed=0))
    with pytest.raises(FileNotFoundError, match="sample 1 of the layer outputs"):
        read_raw_outputs(str(tmp_path), 1)


def test_comparison_refuses_different_models(tmp_path):
    a = conv_bn_relu_model(input_shape=(8, 8, 3), classes=3, seed=1)
    b = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(name="other"), keras.layers.Dense(3)])
    x = random_images(1, (8, 8, 3), seed=0)
    LayerOutputUtil(a, str(tmp_path / "a")).generate_layer_outputs(x)
    LayerOutputUtil(b, str(tmp_path / "b")).generate_layer_outputs(x)
    with pytest.raises(ValueError, match="same tensors"):
        compare_layer_outputs(str(tmp_path / "a"), str(tmp_path / "b"))
