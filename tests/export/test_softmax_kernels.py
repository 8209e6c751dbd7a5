"""A Softmax layer, prepared for each of LiteRT's op resolvers, gets the integer softmax that
resolver runs: the optimized float-table kernel for "builtin" and "default" (XNNPACK does not
take int8 SOFTMAX), the fixed-point reference kernel for "reference"."""

import keras
import numpy as np
import pytest
from keras import layers as L

from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite
from aimet_tf.quantization import QuantizationSimModel


def _softmax_model() -> keras.Model:
    x = keras.Input((16, 12))
    model = keras.Model(x, L.Softmax(name="sm")(L.Dense(64, name="d")(x)))
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    return model


@pytest.mark.parametrize("kernels, mode", [("builtin", "softmax"), ("default", "softmax"),
                                           ("reference", "dsp_softmax")])
def test_softmax_outputs_are_the_resolvers_integers(tmp_path, kernels, mode):
    rng = np.random.default_rng(1)
    sim = QuantizationSimModel(prepare_model_for_tflite(_softmax_model()), config_file="tflite")
    sim.compute_encodings(rng.normal(size=(64, 16, 12)).astype("float32"))
    path = export_tflite(sim, str(tmp_path / "softmax.tflite"), kernels=kernels)
    requantizer = sim.get_quant_wrapper_for_layer_name("sm").requantizer
    assert requantizer is not None and requantizer.enabled and requantizer.mode == mode
    # 2M probabilities: float-then-round misses LiteRT's optimized kernel on about one in a million.
    report = verify_tflite(sim, path, rng.normal(size=(2048, 16, 12)).astype("float32"))
    assert report.exact_fraction == 1.0, report.summary()
