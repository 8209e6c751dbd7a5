"""binary_merges: an n-input Add/Multiply/Maximum/Minimum becomes the chain of two-input ops the
converter writes, so every partial result is quantized in the sim as it is in the file."""

import keras
import numpy as np
import pytest

from aimet_tf.export import TFLITE_CONFIG, binary_merges, export_tflite, prepare_model_for_tflite, verify_tflite
from aimet_tf.quantization import QuantizationSimModel

L = keras.layers


def _three_way(merge):
    x = keras.Input((6,))
    a, b, c = L.Dense(4, name="a")(x), L.Dense(4, name="b")(x), L.Dense(4, name="c")(x)
    return keras.Model(x, L.Dense(3, name="head")(merge(name="merge")([a, b, c])))


@pytest.mark.parametrize("merge", [L.Add, L.Multiply, L.Maximum, L.Minimum])
def test_three_inputs_become_two_binary_layers_computing_the_same(merge):
    model = _three_way(merge)
    split = binary_merges(model)
    partial, last = split.get_layer("merge_partial_1"), split.get_layer("merge")
    assert isinstance(partial, merge) and isinstance(last, merge)
    assert len(last.input) == 2 and last.input[0] is partial.output
    data = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    np.testing.assert_allclose(split(data), model(data), rtol=1e-5, atol=1e-6)
    # Two-input merges are left alone.
    assert binary_merges(split) is split


def test_three_way_add_exports_bit_exact(tmp_path):
    rng = np.random.default_rng(1)
    sim = QuantizationSimModel(prepare_model_for_tflite(_three_way(L.Add)), config_file=TFLITE_CONFIG)
    sim.compute_encodings(rng.normal(size=(64, 6)).astype("float32"))
    path = export_tflite(sim, str(tmp_path / "add3.tflite"), kernels="reference")
    report = verify_tflite(sim, path, rng.normal(size=(256, 6)).astype("float32"))
    assert report.exact_fraction == 1.0, report.summary()
