"""Recurrent layers in the simulation: Keras' recurrences reproduced, every gate tensor quantized."""

import json
import os

import keras
import numpy as np
import pytest

from aimet_tf.quantization import QuantizationSimModel
from aimet_tf.quantization.primitives import dequantize, quantize
from aimet_tf.quantization.recurrent import INTERNAL_TENSORS, recurrent_forward

L = keras.layers
RNG = np.random.default_rng(7)


def _identity(name, tensor):
    return tensor


def _randomized(layer, x):
    layer(x)  # builds
    for v in layer.weights:
        v.assign(RNG.normal(size=v.shape).astype("float32") * 0.5)
    return layer


CASES = [
    (L.SimpleRNN, {}),
    (L.SimpleRNN, {"activation": "relu"}),
    (L.LSTM, {}),
    (L.LSTM, {"implementation": 1, "use_bias": False}),
    (L.GRU, {}),
    (L.GRU, {"reset_after": False}),
    (L.GRU, {"use_bias": False}),
]


@pytest.mark.parametrize("cls,kwargs", CASES, ids=lambda c: getattr(c, "__name__", str(c)))
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("return_state", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_forward_reproduces_the_keras_layer(cls, kwargs, return_sequences, return_state, go_backwards):
    x = RNG.normal(size=(3, 7, 5)).astype("float32")
    layer = _randomized(cls(6, return_sequences=return_sequences, return_state=return_state,
                            go_backwards=go_backwards, **kwargs), x)
    expected = keras.tree.flatten(layer(x))
    seen = []
    got = keras.tree.flatten(recurrent_forward(layer, (x,), {}, False, lambda n, t: seen.append(n) or t))
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-6)
    # Every name the forward quantizes is one the registry declares, and every declared one is used.
    assert set(seen) == set(INTERNAL_TENSORS[cls])


def test_forward_takes_an_initial_state():
    x = RNG.normal(size=(2, 4, 3)).astype("float32")
    h0, c0 = (RNG.normal(size=(2, 5)).astype("float32") for _ in range(2))
    layer = _randomized(L.LSTM(5), x)
    np.testing.assert_allclose(
        np.asarray(recurrent_forward(layer, (x,), {"initial_state": [h0, c0]}, False, _identity)),
        np.asarray(layer(x, initial_state=[h0, c0])), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected 2 initial state tensor.*Received: 1"):
        recurrent_forward(layer, (x,), {"initial_state": [h0]}, False, _identity)


def _model(cls, **kwargs):
    inp = keras.Input((10, 4))
    y = cls(6, return_sequences=True, name="rnn1", **kwargs)(inp)
    y = cls(6, name="rnn2", **kwargs)(y)
    return keras.Model(inp, L.Dense(3, name="head")(y))


@pytest.mark.parametrize("cls", [L.SimpleRNN, L.LSTM, L.GRU])
def test_sim_quantizes_weights_and_every_gate(cls, tmp_path):
    model = _model(cls)
    x = RNG.normal(size=(48, 10, 4)).astype("float32")
    sim = QuantizationSimModel(model, quant_scheme="tf", default_param_bw=8, default_output_bw=8)
    names = [n for n, _ in sim.activation_quantizers()]
    for layer in ("rnn1", "rnn2"):
        for tensor in INTERNAL_TENSORS[cls]:
            assert f"{layer}/{tensor}:0" in names
        # The hidden state is quantized inside the loop: no second grid on the layer's output.
        assert f"{layer}/output:0" not in names
    params = [n for n, _, _ in sim.param_quantizers()]
    assert {"rnn1/cell/kernel:0", "rnn1/cell/recurrent_kernel:0"} <= set(params)

    sim.compute_encodings(x)
    assert sim.uncalibrated_quantizers() == []
    encodings = dict(sim.activation_quantizers())
    gates = {"LSTM": ("input_gate", "forget_gate", "output_gate"), "GRU": ("update_gate", "reset_gate")}
    for gate in gates.get(cls.__name__, ()):
        enc = encodings[f"rnn1/{gate}:0"].get_encoding()
        # Sigmoid outputs: the min/max grid spans (within one step) a sub-range of [0, 1].
        step = (enc.max - enc.min) / 255
        assert -step <= enc.min and enc.max <= 1 + step

    float_out = np.asarray(model(x))
    with sim.quantizers_disabled():
        np.testing.assert_allclose(np.asarray(sim.model(x)), float_out, rtol=1e-5, atol=1e-6)
    simulated = np.asarray(sim.model(x))
    assert not np.array_equal(simulated, float_out)
    assert np.sqrt(np.mean((simulated - float_out) ** 2)) <= 0.1 * np.std(float_out)

    # Export, reload into a fresh sim, save and load the sim model: identical outputs.
    sim.export(tmp_path, "rnn")
    with open(os.path.join(tmp_path, "rnn.encodings")) as f:
        exported = json.load(f)["activation_encodings"]
    assert f"rnn2/{INTERNAL_TENSORS[cls][-1]}:0" in exported
    fresh = QuantizationSimModel(model, quant_scheme="tf", default_param_bw=8, default_output_bw=8)
    fresh.load_encodings_to_sim(os.path.join(tmp_path, "rnn.encodings"))
    np.testing.assert_array_equal(np.asarray(fresh.model(x)), simulated)
    sim.model.save(tmp_path / "sim.keras")
    reloaded = keras.models.load_model(tmp_path / "sim.keras")
    np.testing.assert_array_equal(np.asarray(reloaded(x)), simulated)


def _qdq(x, enc):
    return dequantize(quantize(x, enc), enc)


def test_quantized_lstm_matches_a_numpy_reference():
    """The simulated LSTM equals the step equations evaluated in numpy on the sim's own grids."""
    inp = keras.Input((6, 3))
    model = keras.Model(inp, L.LSTM(4, name="lstm")(inp))
    x = RNG.normal(size=(16, 6, 3)).astype("float32")
    sim = QuantizationSimModel(model, quant_scheme="tf", default_param_bw=8, default_output_bw=8)
    sim.compute_encodings(x)
    (wrapper,) = sim.wrappers()
    q = {n: wrapper.internal_quantizers[n].get_encoding() for n in INTERNAL_TENSORS[L.LSTM]}
    params = wrapper.param_quantizers_by_path()
    cell = wrapper.layer.cell
    kernel = _qdq(cell.kernel.numpy(), params["cell.kernel"].get_encoding())
    recurrent = _qdq(cell.recurrent_kernel.numpy(), params["cell.recurrent_kernel"].get_encoding())
    bias = cell.bias.numpy()  # AIMET's default config leaves biases float
    x_in = _qdq(x, wrapper.input_quantizers[0].get_encoding())

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    h = np.zeros((16, 4), np.float32)
    c = np.zeros((16, 4), np.float32)
    x_proj = _qdq(x_in @ kernel + bias, q["input_projection"])
    for t in range(6):
        z = _qdq(x_proj[:, t] + _qdq(h @ recurrent, q["recurrent_projection"]), q["gate_preactivation"])
        zi, zf, zc, zo = np.split(z, 4, axis=-1)
        i, f = _qdq(sigmoid(zi), q["input_gate"]), _qdq(sigmoid(zf), q["forget_gate"])
        cc, o = _qdq(np.tanh(zc), q["cell_candidate"]), _qdq(sigmoid(zo), q["output_gate"])
        c = _qdq(_qdq(f * c, q["forget_carry"]) + _qdq(i * cc, q["input_carry"]), q["cell_state"])
        h = _qdq(o * _qdq(np.tanh(c), q["cell_activation"]), q["hidden_state"])
    simulated = np.asarray(sim.model(x))
    step = float(q["hidden_state"].max - q["hidden_state"].min) / 255
    diff = np.abs(simulated - h)
    # float32 vs float64 evaluation may put a value on the other side of a rounding boundary, and
    # the recurrence carries that on; almost every output is on the same level.
    assert np.mean(diff < 1e-5) >= 0.95
    assert np.max(diff) <= 3 * step


def test_unsupported_uses_are_refused_with_the_layer_name():
    x = RNG.normal(size=(2, 4, 3)).astype("float32")
    layer = _randomized(L.LSTM(5, name="seq"), x)
    with pytest.raises(NotImplementedError, match="'seq'.*mask"):
        recurrent_forward(layer, (x,), {"mask": np.ones((2, 4), bool)}, False, _identity)
    dropout = _randomized(L.GRU(5, dropout=0.2, name="drop"), x)
    with pytest.raises(NotImplementedError, match="'drop'.*dropout=0"):
        recurrent_forward(dropout, (x,), {}, True, _identity)
    # Dropout is inactive outside training, so PTQ works on such a layer.
    np.testing.assert_allclose(np.asarray(recurrent_forward(dropout, (x,), {}, False, _identity)),
                               np.asarray(dropout(x)), rtol=1e-5, atol=1e-6)
    stateful_in = keras.Input(batch_shape=(2, 4, 3))
    stateful = L.SimpleRNN(5, stateful=True, name="kept")
    stateful(stateful_in)
    with pytest.raises(NotImplementedError, match="'kept'.*stateful=False"):
        recurrent_forward(stateful, (x,), {}, False, _identity)
