"""Helpers for the TFLite export tests: calibrate a tiny sim, export it, compare with LiteRT."""

import keras
import numpy as np
import pytest

from aimet_tf import QuantizationSimModel
from aimet_tf.export import TFLITE_CONFIG, export_tflite, prepare_model_for_tflite, verify_tflite


def model_input_quantizer(sim):
    """The quantizer that the model input passes through first."""
    for wrapper in sim.wrappers():
        producer = wrapper._inbound_nodes[0].input_tensors[0]._keras_history.operation
        if isinstance(producer, keras.layers.InputLayer) and wrapper.input_quantizers:
            return wrapper.input_quantizers[0]
    raise AssertionError("no quantizer on the model input")


def on_input_grid(sim, x):
    """x snapped onto the model input's grid.

    XNNPACK quantizes a float model input as x * (1 / scale), the fake-quant op as x / scale;
    the two differ in the last bit, which flips a rounding where x / scale is within ~1e-7 of
    a .5 boundary. Inputs already on the grid keep that runtime detail out of these tests.
    """
    return np.asarray(model_input_quantizer(sim)(x.astype(np.float32)))


class Exported:
    def __init__(self, model, path, *, param_bw=8, config=TFLITE_CONFIG, prepare_model=True,
                 samples=48, seed=0, **export_kwargs):
        rng = np.random.default_rng(seed)
        shape = model.input_shape[1:]
        calibration = rng.normal(size=(32, *shape)).astype(np.float32)
        if prepare_model:
            model = prepare_model_for_tflite(model)
        self.model = model
        self.sim = QuantizationSimModel(
            model, quant_scheme="tf", config_file=config, default_param_bw=param_bw
        )
        self.sim.compute_encodings(calibration)
        self.path = export_tflite(self.sim, path, **export_kwargs)
        self.data = on_input_grid(self.sim, rng.normal(size=(samples, *shape)).astype(np.float32))

    def verify(self, **kwargs):
        return verify_tflite(self.sim, self.path, self.data, **kwargs)

    def op_names(self):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        interpreter = Interpreter(
            model_path=self.path,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        interpreter.allocate_tensors()
        return [op["op_name"] for op in interpreter._get_ops_details()]


@pytest.fixture(name="on_input_grid")
def _on_input_grid_fixture():
    return on_input_grid


@pytest.fixture
def export_model(tmp_path):
    def run(model, name="model.tflite", **kwargs):
        return Exported(model, str(tmp_path / name), **kwargs)

    return run
