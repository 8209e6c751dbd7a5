"""prepare_model on random models (aimet_tf.testing.fuzz) wrapped the ways users wrap models: nested in a
Sequential, called twice from a subclassed model with keras.ops around it. The prepared model must
compute the same function, need no more preparing, and simulate."""

import keras
import numpy as np
import pytest

from aimet_tf.graph import ModelGraph, needs_preparing, prepare_model_with_report
from aimet_tf.quantization import QuantizationSimModel
from aimet_tf.testing.fuzz import random_model

L = keras.layers


class TwiceWithOps(keras.Model):
    """Calls ``base`` twice (a shared nested model) and mixes the results with keras.ops."""

    def __init__(self, base, **kwargs):
        super().__init__(**kwargs)
        self.base = base
        self.scale = L.Dense(base.output.shape[-1], name="scale")

    def call(self, x):
        a = self.base(x)
        b = self.base(x * 0.5)
        return keras.ops.tanh(a) + self.scale(keras.ops.relu(b))


def _variants(seed):
    base = random_model(seed)
    shape = tuple(base.input.shape[1:])
    nested = keras.Sequential([keras.Input(shape), base, L.Activation("sigmoid")], name=f"seq_{seed}")
    twice = TwiceWithOps(random_model(seed), name=f"twice_{seed}")
    return shape, [(nested, None), (twice, keras.Input(shape))]


@pytest.mark.parametrize("seed", range(4))
def test_wrapped_random_models_prepare_to_the_same_function(seed):
    shape, variants = _variants(seed)
    x = np.random.default_rng(seed).normal(size=(6, *shape)).astype("float32")
    for model, input_layer in variants:
        prepared, report = prepare_model_with_report(model, input_layer=input_layer)
        assert report.changes and needs_preparing(prepared) == []
        assert not any(isinstance(node.operation, keras.Model) for node in ModelGraph(prepared).nodes)
        want, got = np.asarray(model(x)), np.asarray(prepared(x))
        assert np.max(np.abs(want - got)) <= 1e-6 * max(float(np.max(np.abs(want))), 1e-12), model.name
        sim = QuantizationSimModel(prepared, default_param_bw=8, default_output_bw=8)
        sim.compute_encodings(x)
        assert np.all(np.isfinite(np.asarray(sim.model(x))))
