"""AIMET's QuantizationSimModel, wrapper and quantizer API on the native classes: quant_wrappers,
get_quant_wrapper_for_layer_name, set_percentile_value, export's custom_objects/convert_to_pb,
param_quantizers as a list, quantizers' enable/disable/is_enabled and ``encoding``."""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from aimet_tf import QuantizationSimModel, Quantizer
from aimet_tf.quantization.encodings_io import EncodingsFormatError, TfEncoding
from aimet_tf.quantization.primitives import compute_encoding
from aimet_tf.quantization.quantizers import BiasQuantizer
from aimet_tf.quantization.registry import register_layer
from aimet_tf.quantization.wrapper import QuantizationWrapper
from aimet_tf.testing import models


@pytest.fixture(scope="module")
def dense_sim():
    data = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
    sim = QuantizationSimModel(models.dense_model(), quant_scheme="tf", config_file="htp")
    sim.compute_encodings(data)
    return sim, data


def _built_quantizer(**kwargs) -> Quantizer:
    q = Quantizer(**kwargs)
    q.build((3, 4) if kwargs.get("channel_axis") is not None else ())
    return q


# -- quantizers ------------------------------------------------------------------------------------


def test_enable_disable_is_enabled_switch_the_quantizer():
    q = _built_quantizer(bitwidth=8)
    q.set_encoding(compute_encoding(-1.0, 1.0, 8, symmetric=False))
    x = tf.constant([0.3001, -0.7777])
    quantized = q(x).numpy()
    assert q.is_enabled() and not np.array_equal(quantized, x.numpy())
    q.disable()
    assert not q.is_enabled() and not q.enabled
    np.testing.assert_array_equal(q(x).numpy(), x.numpy())
    q.enable()
    assert q.is_enabled()
    np.testing.assert_array_equal(q(x).numpy(), quantized)


def test_bias_quantizer_switches_too():
    q = BiasQuantizer()
    q.disable()
    assert not q.is_enabled()
    q.enable()
    assert q.is_enabled()


def test_encoding_is_aimet_tf_encoding_with_negative_offset():
    q = _built_quantizer(bitwidth=8)
    assert q.encoding is None and not q.is_encoding_valid()
    q.set_encoding(compute_encoding(-1.0, 3.0, 8, symmetric=False))
    enc = q.encoding
    assert isinstance(enc, TfEncoding) and q.is_encoding_valid()
    assert enc.bw == 8
    np.testing.assert_allclose(enc.delta, 4.0 / 255, rtol=1e-6)
    assert enc.offset == round(enc.min / enc.delta) == -64
    np.testing.assert_allclose(enc.min, enc.delta * enc.offset, rtol=1e-6)
    np.testing.assert_allclose(enc.max, enc.delta * (enc.offset + 255), rtol=1e-6)


def test_aimet_attribute_names_read_the_settings():
    q = _built_quantizer(bitwidth=4, symmetric=True, strict=True, unsigned_symmetric=False,
                         quant_scheme="tf", name="w_q")
    assert (q.is_symmetric, q.use_symmetric_encodings, q.use_strict_symmetric) == (True, True, True)
    assert q.use_unsigned_symmetric is False and q.round_mode == "nearest"
    assert q.bitwidth == 4 and q.quant_scheme.value == "tf" and q.name == "w_q"


def test_setting_encoding_changes_the_grid_and_keeps_symmetry():
    q = _built_quantizer(bitwidth=8, symmetric=True)
    q.encoding = TfEncoding(min=-0.5, max=0.5 * 127 / 128, delta=0.5 / 128, offset=-128, bw=8)
    enc = q.get_encoding()
    assert enc.symmetric and enc.bitwidth == 8
    np.testing.assert_allclose(enc.scale, 0.5 / 128, rtol=1e-6)
    np.testing.assert_allclose(q(tf.constant([0.26])).numpy(), [round(0.26 * 256) / 256], rtol=1e-6)


def test_per_channel_encoding_is_a_list_and_round_trips():
    q = _built_quantizer(bitwidth=8, symmetric=True, channel_axis=-1)
    q.set_encoding(compute_encoding(-np.arange(1, 5, dtype=np.float32), np.arange(1, 5, dtype=np.float32), 8, True))
    records = q.encoding
    assert isinstance(records, list) and len(records) == 4
    assert [r.offset for r in records] == [-128] * 4
    before = q.get_encoding()
    records[2] = TfEncoding(min=-6.0, max=6.0 * 127 / 128, delta=6.0 / 128, offset=-128, bw=8)
    q.encoding = records
    after = q.get_encoding()
    np.testing.assert_array_equal(np.delete(after.min, 2), np.delete(before.min, 2))
    np.testing.assert_allclose(after.scale[2], 6.0 / 128, rtol=1e-6)
    with pytest.raises(ValueError, match="per-channel: expected a list of TfEncoding"):
        q.encoding = records[0]
    with pytest.raises(ValueError, match=r"expected an encoding of shape \(4,\)"):
        q.encoding = records[:3]


def test_setting_a_contradicting_or_wrong_encoding_is_refused():
    q = _built_quantizer(bitwidth=8)
    q.set_encoding(compute_encoding(-1.0, 1.0, 8, symmetric=False))
    before = q.get_encoding()
    with pytest.raises(EncodingsFormatError, match="scale contradicts min/max"):
        q.encoding = TfEncoding(min=-1.0, max=1.0, delta=0.5, offset=-128, bw=8)
    with pytest.raises(EncodingsFormatError, match="offset contradicts min/max"):
        q.encoding = TfEncoding(min=-1.0, max=1.0, delta=2.0 / 255, offset=-10, bw=8)
    with pytest.raises(TypeError, match="expected a TfEncoding or a list"):
        q.encoding = {"min": -1.0, "max": 1.0}
    with pytest.raises(TypeError, match="expected TfEncoding records"):
        q.encoding = [(-1.0, 1.0)]
    np.testing.assert_array_equal(q.get_encoding().min, before.min)


# -- wrappers --------------------------------------------------------------------------------------


def test_param_quantizers_is_a_list_in_the_layers_order(dense_sim):
    sim, _ = dense_sim
    for wrapper in sim.quant_wrappers():
        by_path = wrapper.param_quantizers_by_path()
        assert isinstance(wrapper.param_quantizers, list)
        assert wrapper.param_quantizers == list(by_path.values())
        if isinstance(wrapper.layer, keras.layers.Dense):
            assert list(by_path) == ["kernel", "bias"]
            assert isinstance(wrapper.param_quantizers[0], Quantizer)
        assert wrapper._layer_to_wrap is wrapper.layer
        assert isinstance(wrapper.input_quantizers, list) and isinstance(wrapper.output_quantizers, list)


def test_param_order_survives_save_and_load(dense_sim, tmp_path):
    sim, data = dense_sim
    target = os.path.join(tmp_path, "sim.keras")
    sim.model.save(target)
    loaded = keras.models.load_model(target)
    for wrapper in sim.quant_wrappers():
        twin = loaded.get_layer(wrapper.name)
        assert list(twin.param_quantizers_by_path()) == list(wrapper.param_quantizers_by_path())
    np.testing.assert_array_equal(loaded.predict(data, verbose=0), sim.model.predict(data, verbose=0))


def test_wrapper_config_of_older_sims_with_a_param_mapping_loads():
    layer = keras.layers.Dense(3)
    layer.build((None, 2))
    wrapper = QuantizationWrapper(layer, param_quantizers={"kernel": Quantizer(symmetric=True), "bias": None})
    config = wrapper.get_config()
    assert config["param_quantizers"][0][0] == "kernel"
    config["param_quantizers"] = dict(reversed(config["param_quantizers"]))
    restored = QuantizationWrapper.from_config(config)
    assert list(restored.param_quantizers_by_path()) == ["bias", "kernel"]
    assert restored.param_quantizers[0] is None and isinstance(restored.param_quantizers[1], Quantizer)


# -- the sim ---------------------------------------------------------------------------------------


def test_quant_wrappers_is_a_generator_over_the_wrappers(dense_sim):
    sim, _ = dense_sim
    generator = sim.quant_wrappers()
    assert iter(generator) is generator
    assert list(generator) == sim.wrappers() and len(sim.wrappers()) > 0


def test_get_quant_wrapper_for_layer_name(dense_sim):
    sim, _ = dense_sim
    name = sim.wrappers()[0].name
    assert sim.get_quant_wrapper_for_layer_name(name) is sim.wrappers()[0]
    with pytest.raises(KeyError, match=rf"no wrapper for a layer named '{name}x'.*Closest names: \['{name}'"):
        sim.get_quant_wrapper_for_layer_name(name + "x")
    with pytest.raises(KeyError, match="Layer names are e.g."):
        sim.get_quant_wrapper_for_layer_name("zzzzzzzzzzzz")
    with pytest.raises(TypeError, match=r"Expected a layer name \(str\). Received: int"):
        sim.get_quant_wrapper_for_layer_name(3)


def test_percentile_default_is_aimets_100_which_is_min_max():
    data = np.random.default_rng(1).normal(size=(64, 10)).astype(np.float32)
    encodings = {}
    for scheme in ("percentile", "tf"):
        sim = QuantizationSimModel(models.dense_model(), quant_scheme=scheme, config_file="htp")
        assert sim.percentile == 100.0
        sim.compute_encodings(data)
        encodings[scheme] = sim.get_encodings_dict()
    assert encodings["percentile"]["activation_encodings"] == encodings["tf"]["activation_encodings"]
    assert encodings["percentile"]["param_encodings"] == encodings["tf"]["param_encodings"]


def test_set_percentile_value_reaches_the_quantizers_and_clips():
    data = np.random.default_rng(2).normal(size=(256, 10)).astype(np.float32)
    sim = QuantizationSimModel(models.dense_model(), quant_scheme="percentile", config_file="htp")
    sim.compute_encodings(data)
    full = {n: q.get_encoding() for n, q in sim.activation_quantizers()}
    sim.set_percentile_value(95)
    assert sim.percentile == 95.0
    assert all(q.percentile == 95.0 for w in sim.wrappers() for q in w.quantizers() if isinstance(q, Quantizer))
    sim.compute_encodings(data)
    clipped = {n: q.get_encoding() for n, q in sim.activation_quantizers()}
    name = next(iter(full))
    assert clipped[name].max - clipped[name].min < full[name].max - full[name].min
    for bad in (89.0, 100.5, "99", True):
        with pytest.raises(ValueError, match=r"Expected a percentile in \[90, 100\]"):
            sim.set_percentile_value(bad)
    assert sim.percentile == 95.0


def test_export_warns_for_convert_to_pb_true_and_not_for_false(dense_sim, tmp_path):
    sim, _ = dense_sim
    with pytest.warns(UserWarning, match=r"writes no \.pb .* written as m\.keras instead"):
        paths = sim.export(tmp_path / "a", "m")
    assert sorted(os.listdir(tmp_path / "a")) == ["m.encodings", "m.keras", "m.manifest.json"]
    assert not any(name.endswith(".pb") for name in os.listdir(tmp_path / "a"))
    assert paths["model"].endswith("m.keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sim.export(tmp_path / "b", "m", convert_to_pb=False)
    assert not [w for w in caught if "convert_to_pb" in str(w.message)]
    with pytest.raises(TypeError, match="convert_to_pb to be a bool"):
        sim.export(tmp_path / "c", "m", convert_to_pb="yes")


@register_layer()
class _Doubler(keras.layers.Layer):
    """A custom layer (no keras registration): loading a model with it needs custom_objects."""

    def call(self, x):
        return 2.0 * x


class _Broken(keras.layers.Layer):
    @classmethod
    def from_config(cls, config):
        raise TypeError("this class cannot be rebuilt")


def test_export_checks_the_model_loads_under_custom_objects(tmp_path):
    inputs = keras.Input((10,))
    model = keras.Model(inputs, keras.layers.Dense(3)(_Doubler()(keras.layers.Dense(4)(inputs))))
    data = np.random.default_rng(3).normal(size=(32, 10)).astype(np.float32)
    sim = QuantizationSimModel(model, quant_scheme="tf", config_file="htp")
    sim.compute_encodings(data)
    paths = sim.export(tmp_path / "ok", "m", custom_objects={"_Doubler": _Doubler}, convert_to_pb=False)
    reloaded = keras.models.load_model(paths["model"], custom_objects={"_Doubler": _Doubler})
    np.testing.assert_allclose(reloaded.predict(data, verbose=0), model.predict(data, verbose=0), rtol=1e-6)
    with pytest.raises(ValueError, match=r"(?s)does not load back with custom_objects=\['_Doubler'\].*Nothing was written"):
        sim.export(tmp_path / "bad", "m", custom_objects={"_Doubler": _Broken}, convert_to_pb=False)
    assert not any(name.startswith("m.") for name in os.listdir(tmp_path / "bad"))
    with pytest.raises(TypeError, match="custom_objects to be a dict"):
        sim.export(tmp_path / "bad", "m", custom_objects=[_Doubler], convert_to_pb=False)


def test_export_keeps_encoding_version_keyword(dense_sim, tmp_path):
    sim, _ = dense_sim
    with pytest.raises(TypeError, match="custom_objects to be a dict"):
        sim.export(tmp_path, "m", "1.0.0")  # the third positional argument is AIMET's custom_objects
    paths = sim.export(tmp_path, "m", convert_to_pb=False, encoding_version="1.0.0")
    with open(paths["encodings"], encoding="utf-8") as handle:
        assert '"version": "1.0.0"' in handle.read()
