"""AdaRound on tiny seeded models: rounding stays on floor/ceil, beats nearest, exports, stops."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from aimet_tf import QuantizationSimModel
from aimet_tf.ptq import AdaroundParameters, apply_adaround, fold_batch_norms
from aimet_tf.ptq import adaround
from aimet_tf.quantization import encodings_io, primitives
from aimet_tf.testing import models

ITERATIONS = 400
ADAROUNDED = ("c1", "dw", "pw", "fc")


def _model(seed: int = 0) -> keras.Model:
    """Conv+BN+ReLU6, depthwise with a built-in ReLU, 1x1 conv, pooling, Dense."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((10, 10, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(max_value=6.0, name="r1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = keras.layers.Conv2D(12, 1, name="pw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(5, name="fc")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    bn = model.get_layer("bn1")
    bn.moving_mean.assign(rng.normal(0, 0.2, 8).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 8).astype(np.float32))
    return model


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 10, 10, 3)).astype(np.float32)


class _Recorder(keras.callbacks.Callback):
    def __init__(self, stop_after_calls: int | None = None):
        super().__init__()
        self.stop_after_calls = stop_after_calls
        self.batch_logs, self.layer_logs, self.calls = [], [], 0

    def on_train_batch_end(self, batch, logs=None):
        self.batch_logs.append(dict(logs))
        self.calls += 1
        if self.stop_after_calls is not None and self.calls >= self.stop_after_calls:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.layer_logs.append(dict(logs))


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    model = _model()
    data = _images(192, seed=1)
    folder = tmp_path_factory.mktemp("adaround")
    recorder = _Recorder()
    # lr 1e-2 lets V travel in 400 steps about as far as AIMET's lr 1e-3 does in 4,000.
    params = AdaroundParameters(data, num_batches=6, default_num_iterations=ITERATIONS, learning_rate=1e-2)
    ada = apply_adaround(
        model, params, path=str(folder), filename_prefix="tiny", default_param_bw=4,
        default_quant_scheme="tf_enhanced", verbose=0, callbacks=[recorder], steps_per_call=100,
    )
    return {
        "model": model, "folded": fold_batch_norms(model), "ada": ada, "data": data,
        "encodings": str(folder / "tiny.encodings"), "recorder": recorder,
    }


def _grid(encodings: dict, name: str, kernel: np.ndarray, axes: tuple[int, ...]):
    """(scale, min, steps) of a kernel's encoding, broadcast to the kernel."""
    _, params = encodings_io.from_dict(encodings)
    enc = params[f"{name}/kernel:0"]
    nmin, _, scale, _ = primitives.nudge(enc.min, enc.max, enc.bitwidth, enc.strict)
    shape = [1] * kernel.ndim
    if enc.per_channel:
        for axis in axes:
            shape[axis] = kernel.shape[axis]
    return scale.reshape(shape), nmin.reshape(shape), enc.steps


def test_returns_folded_model_with_same_layers(result):
    ada, folded = result["ada"], result["folded"]
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in ada.layers)
    assert [l.name for l in ada.layers] == [l.name for l in folded.layers]
    assert result["model"].get_layer("bn1") is not None  # the input model is untouched


@pytest.mark.parametrize("name", ADAROUNDED)
def test_weights_are_floor_or_ceil_within_one_step(result, name):
    with open(result["encodings"], encoding="utf-8") as f:
        encodings = json.load(f)
    original = result["folded"].get_layer(name).kernel.numpy()
    rounded = result["ada"].get_layer(name).kernel.numpy()
    scale, nmin, steps = _grid(encodings, name, original, (2, 3) if name == "dw" else (3,))
    levels = (original - nmin) / scale
    new_levels = (rounded - nmin) / scale
    np.testing.assert_allclose(new_levels, np.round(new_levels), atol=1e-3)  # on the grid
    inside = (levels >= 0) & (levels <= steps)
    assert inside.mean() > 0.9
    new_levels = np.round(new_levels)
    lo, hi = np.floor(levels[inside]), np.floor(levels[inside]) + 1
    assert np.all((new_levels[inside] == lo) | (new_levels[inside] == hi))
    assert np.all(np.abs(rounded - original)[inside] <= np.broadcast_to(scale, original.shape)[inside] * 1.0001)
    # Weights outside the range clamp to the grid's ends, as nearest rounding does.
    np.testing.assert_array_equal(new_levels[~inside], np.clip(np.round(levels[~inside]), 0, steps))
    # AdaRound really chose differently from nearest rounding somewhere.
    nearest = np.clip(np.floor(levels + 0.5), 0, steps)
    assert np.any(new_levels != nearest) or name == "fc"


def _layer_output(folded: keras.Model, name: str, kernel: np.ndarray, x: np.ndarray) -> tf.Tensor:
    """Layer ``name`` with ``kernel`` in place of its weights, plus its activation (as AdaRound's f)."""
    layer = folded.get_layer(name)
    with keras.StatelessScope(state_mapping=[(layer.kernel, tf.constant(kernel))]):
        y = layer(x)
    return folded.get_layer("r1")(y) if name == "c1" else y


@pytest.fixture(scope="module")
def frozen_sim(result):
    """A W4A8 sim of the AdaRounded model with AdaRound's encodings frozen."""
    sim = QuantizationSimModel(result["ada"], quant_scheme="tf_enhanced", default_param_bw=4)
    sim.set_and_freeze_param_encodings(result["encodings"])
    sim.compute_encodings(result["data"])
    return sim


@pytest.mark.parametrize("name", ["c1", "dw", "pw", "fc"])
def test_reconstruction_error_below_nearest_on_held_out_inputs(result, frozen_sim, name):
    # Held-out images; the layer's inputs come from the quantized model (earlier layers AdaRounded,
    # activations quantized) and its targets from the float model, as during AdaRound.
    folded, ada, sim = result["folded"], result["ada"], frozen_sim
    held_out = _images(256, seed=7)
    wrapper = sim.model.get_layer(name)
    x_q = keras.Model(sim.model.inputs, wrapper.input).predict(held_out, verbose=0)
    if wrapper.input_quantizers and wrapper.input_quantizers[0] is not None:
        x_q = wrapper.input_quantizers[0](tf.constant(x_q)).numpy()
    x_float = keras.Model(folded.inputs, folded.get_layer(name).input).predict(held_out, verbose=0)
    original = folded.get_layer(name).kernel.numpy()
    target = _layer_output(folded, name, original, x_float)
    nearest = wrapper.param_quantizers_by_path()["kernel"](tf.constant(original)).numpy()
    ada_error = float(adaround.reconstruction_loss(_layer_output(folded, name, ada.get_layer(name).kernel.numpy(), x_q), target))
    nearest_error = float(adaround.reconstruction_loss(_layer_output(folded, name, nearest, x_q), target))
    assert ada_error < nearest_error


def test_encodings_freeze_into_a_new_sim_and_reproduce_weights(result, frozen_sim):
    ada, sim = result["ada"], frozen_sim
    with open(result["encodings"], encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["version"] == "0.6.1" and saved["activation_encodings"] == {}
    assert {f"{n}/kernel:0" for n in ADAROUNDED} <= set(saved["param_encodings"])
    _, expected = encodings_io.from_dict(saved)
    for name, q, var in sim.param_quantizers():
        if not name.endswith("kernel:0"):
            continue
        assert q.frozen
        np.testing.assert_array_equal(q.get_encoding().min, expected[name].min)
        w = var.numpy()
        np.testing.assert_array_equal(q(tf.constant(w)).numpy(), w)  # AdaRounded weights stay put
    # The same sim recomputing its weight ranges from the AdaRounded weights would not keep them:
    # that is why the encodings must be frozen.
    fresh = QuantizationSimModel(ada, quant_scheme="tf_enhanced", default_param_bw=4)
    fresh.compute_encodings(result["data"])
    assert any(
        not np.array_equal(q.get_encoding().min, expected[n].min)
        for n, q, _ in fresh.param_quantizers() if n.endswith("kernel:0")
    )


def test_callbacks_observe_every_layer(result):
    recorder = result["recorder"]
    assert len(recorder.layer_logs) == len(ADAROUNDED)
    assert len(recorder.batch_logs) == len(ADAROUNDED) * ITERATIONS // 100
    for logs in recorder.batch_logs:
        assert np.isfinite(logs["loss"]) and logs["loss"] >= logs["recon_loss"] >= 0
    # The rounding term is off during the warm start (first 20% = 80 steps of the first call).
    for logs in recorder.layer_logs:
        assert logs["iterations"] == ITERATIONS
        assert 0 <= logs["recon_error_adaround"] and 0 <= logs["recon_error_nearest"]


def test_callback_can_stop_it(tmp_path):
    model = _model()
    data = _images(64, seed=2)
    recorder = _Recorder(stop_after_calls=2)
    params = AdaroundParameters(data, num_batches=2, default_num_iterations=300)
    ada = apply_adaround(
        model, params, path=str(tmp_path), verbose=0, callbacks=[recorder], steps_per_call=50
    )
    assert len(recorder.layer_logs) == 1 and recorder.layer_logs[0]["iterations"] == 100
    folded = fold_batch_norms(model)
    # Layers after the stop keep their float weights (the frozen encodings round them to nearest).
    for name in ("dw", "pw", "fc"):
        np.testing.assert_array_equal(ada.get_layer(name).kernel.numpy(), folded.get_layer(name).kernel.numpy())
    assert not np.array_equal(ada.get_layer("c1").kernel.numpy(), folded.get_layer("c1").kernel.numpy())
    assert (tmp_path / "adaround.encodings").exists()


def test_each_layer_keeps_the_rounding_that_reconstructs_better(result):
    for logs in result["recorder"].layer_logs:
        assert logs["kept_nearest"] == (logs["recon_error_adaround"] > logs["recon_error_nearest"])
        assert logs["kept_nearest"] or logs["changed_fraction"] > 0


def test_a_learned_rounding_worse_than_nearest_is_not_kept(tmp_path, monkeypatch):
    # Force the learned rounding to "always round down": worse than nearest on every layer.
    monkeypatch.setattr(adaround._LayerOptimizer, "hard_kernel_levels", lambda self: np.clip(self.floor.numpy(), 0.0, self.steps))
    model = _model()
    data = _images(64, seed=2)
    recorder = _Recorder()
    params = AdaroundParameters(data, num_batches=2, default_num_iterations=20)
    ada = apply_adaround(model, params, path=str(tmp_path), filename_prefix="floor", default_param_bw=4,
                         default_quant_scheme="tf", verbose=0, callbacks=[recorder], steps_per_call=20)
    assert [logs["kept_nearest"] for logs in recorder.layer_logs] == [True] * len(ADAROUNDED)
    with open(tmp_path / "floor.encodings", encoding="utf-8") as f:
        encodings = json.load(f)
    folded = fold_batch_norms(model)
    for name in ADAROUNDED:
        original = folded.get_layer(name).kernel.numpy()
        scale, nmin, steps = _grid(encodings, name, original, (2, 3) if name == "dw" else (3,))
        nearest = np.clip(np.round((original - nmin) / scale), 0, steps) * scale + nmin
        np.testing.assert_allclose(ada.get_layer(name).kernel.numpy(), nearest, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "kind", ["conv1d", "conv2d_transpose", "dense_relu", "sequential_mlp"],
)
def test_other_layer_types(kind):
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    if kind == "sequential_mlp":
        model = models.dense_model(features=12)  # Sequential: d1 (relu), d2 -> tanh, d3
        data = rng.normal(size=(64, 12))
    elif kind == "conv1d":
        inp = keras.Input((16, 4))
        out = keras.layers.Conv1D(6, 3, name="k")(inp)
        data = rng.normal(size=(64, 16, 4))
    elif kind == "conv2d_transpose":
        inp = keras.Input((6, 6, 4))
        out = keras.layers.Conv2DTranspose(5, 3, strides=2, name="k")(inp)
        data = rng.normal(size=(64, 6, 6, 4))
    else:
        inp = keras.Input((12,))
        out = keras.layers.Dense(7, name="k")(inp)
        out = keras.layers.ReLU(name="relu")(out)
        out = keras.layers.Dense(3, name="head")(out)
        data = rng.normal(size=(64, 12))
    if kind != "sequential_mlp":
        model = keras.Model(inp, out)
    recorder = _Recorder()
    params = AdaroundParameters(data.astype(np.float32), num_batches=2, default_num_iterations=100)
    ada = apply_adaround(model, params, verbose=0, callbacks=[recorder], default_quant_scheme="tf")
    assert len(recorder.layer_logs) == {"dense_relu": 2, "sequential_mlp": 3}.get(kind, 1)
    sim = QuantizationSimModel(model, quant_scheme="tf", default_param_bw=4)
    sim.compute_encodings(data.astype(np.float32))
    name = "d2" if kind == "sequential_mlp" else "k"
    q = sim.model.get_layer(name).param_quantizers_by_path()["kernel"]
    w, w_ada = model.get_layer(name).kernel.numpy(), ada.get_layer(name).kernel.numpy()
    scale = q.get_encoding().scale
    # "tf" ranges cover every weight: each one moved by less than one step, onto the grid; the
    # input model keeps its float weights.
    assert not np.array_equal(w_ada, w)
    assert np.all(np.abs(w_ada - w) <= scale * 1.0001)
    np.testing.assert_array_equal(q(tf.constant(w_ada)).numpy(), w_ada)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_batches": 0}, "num_batches"),
        ({"num_batches": 2.5}, "num_batches"),
        ({"default_num_iterations": -1}, "default_num_iterations"),
        ({"default_reg_param": -0.1}, "default_reg_param"),
        ({"default_reg_param": float("nan")}, "default_reg_param"),
        ({"default_beta_range": (2, 20)}, "default_beta_range"),
        ({"default_beta_range": (20,)}, "default_beta_range"),
        ({"default_beta_range": (20, 0)}, "default_beta_range"),
        ({"default_warm_start": 1.0}, "default_warm_start"),
        ({"default_warm_start": -0.2}, "default_warm_start"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_parameters_are_rejected(kwargs, match):
    args = {"data_set": None, "num_batches": 2, **kwargs}
    with pytest.raises(ValueError, match=match) as info:
        AdaroundParameters(**args)
    assert "Received" in str(info.value)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, d: apply_adaround(m, AdaroundParameters(None, 2), verbose=0), ValueError, "data_set=None"),
        (lambda m, d: apply_adaround(m, AdaroundParameters(d, 99), verbose=0), ValueError, "num_batches=99"),
        (lambda m, d: apply_adaround(m, {"num_batches": 2}, verbose=0), TypeError, "AdaroundParameters"),
        (lambda m, d: apply_adaround(m, AdaroundParameters(d, 2), default_quant_scheme="percentile"),
         ValueError, r"\['tf', 'tf_enhanced', 'mse', 'auto'\]"),
        (lambda m, d: apply_adaround(m, AdaroundParameters(d * np.nan, 2), verbose=0), ValueError, "finite"),
        (lambda m, d: apply_adaround(m, AdaroundParameters(d, 2), steps_per_call=0), ValueError, "steps_per_call"),
    ],
)
def test_bad_calls_are_rejected(call, error, match):
    with pytest.raises(error, match=match):
        call(_model(), _images(64, seed=4))


def test_multi_input_model_is_rejected():
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Add()([a, b])))
    with pytest.raises(ValueError, match="one input"):
        apply_adaround(model, AdaroundParameters(np.zeros((64, 4), np.float32), 2), verbose=0)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.73, 0.999])
def test_initial_logits_reproduce_the_fraction(fraction):
    v = adaround.initial_rounding_logits(np.array([fraction]))
    np.testing.assert_allclose(adaround.rectified_sigmoid(tf.constant(v)).numpy(), [fraction], atol=1e-6)


def test_beta_schedule_and_regularizer():
    beta_range, warm, total = (20.0, 2.0), 0.2, 1000
    assert float(adaround.annealed_beta(200, total, beta_range, warm)) == pytest.approx(20.0)
    assert float(adaround.annealed_beta(600, total, beta_range, warm)) == pytest.approx(11.0)
    assert float(adaround.annealed_beta(1000, total, beta_range, warm)) == pytest.approx(2.0)
    h = tf.constant([0.0, 1.0, 0.5])
    assert float(adaround.rounding_regularizer(h, 2.0)) == pytest.approx(1.0)
    assert float(adaround.rounding_regularizer(tf.constant([0.0, 1.0]), 20.0)) == 0.0
    # Reconstruction loss: squares summed over channels, averaged over the rest.
    out = tf.constant([[[1.0, 2.0]], [[0.0, 0.0]]])
    assert float(adaround.reconstruction_loss(out, tf.zeros_like(out))) == pytest.approx(2.5)


def test_layers_inside_nested_models_get_adaround_too(tmp_path, caplog):
    keras.utils.set_random_seed(21)
    inner = keras.Sequential(
        [keras.Input((10, 10, 3)), keras.layers.Conv2D(6, 3, name="inner_conv"), keras.layers.ReLU(name="inner_relu")],
        name="inner",
    )
    inp = keras.Input((10, 10, 3))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(inner(inp))
    model = keras.Model(inp, keras.layers.Dense(4, name="fc")(x))
    data = _images(64, seed=22)
    params = AdaroundParameters(data, num_batches=2, default_num_iterations=50)
    with caplog.at_level("WARNING"):
        ada = apply_adaround(model, params, path=str(tmp_path), filename_prefix="nested", verbose=0)
    assert "nested model" not in caplog.text
    doc = json.loads((tmp_path / "nested.encodings").read_text())
    assert {"inner_conv/kernel:0", "fc/kernel:0"} <= set(doc["param_encodings"])
    assert "inner_conv" in [layer.name for layer in ada.layers]


def test_held_out_samples_are_every_kth_and_only_with_enough_data():
    learn, held = adaround._split_held_out(20, 0.2)
    np.testing.assert_array_equal(held, [4, 9, 14, 19])
    np.testing.assert_array_equal(np.sort(np.concatenate([learn, held])), np.arange(20))
    assert adaround._split_held_out(9, 0.2)[1] is None  # fewer than 2 * 5 samples: nothing held out
    learn, held = adaround._split_held_out(20, 0.0)
    assert held is None and len(learn) == 20
    with pytest.raises(ValueError, match="held_out_fraction"):
        AdaroundParameters(None, 1, held_out_fraction=0.6)


def _overfitting_dense(seed: int = 31):
    """A Dense with 96 inputs per output on 40 samples: its rounding can fit the samples it learns on."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((96,))
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(inp))
    x = np.random.default_rng(seed).normal(size=(40, 96)).astype(np.float32)
    fresh = np.random.default_rng(seed + 1).normal(size=(2000, 96)).astype(np.float32)
    return model, x, fresh


def test_a_rounding_fitted_to_its_samples_is_caught_on_held_out_ones(tmp_path):
    # Learned on every sample and judged on them, the rounding looks better than nearest but is worse
    # on unseen inputs; judged on held-out samples, the layer keeps nearest rounding.
    model, x, fresh = _overfitting_dense()
    kernel, bias = model.get_layer("fc").kernel.numpy(), model.get_layer("fc").bias.numpy()
    ref = fresh @ kernel + bias
    runs = {}
    for held in (0.0, 0.2):
        recorder = _Recorder()
        params = AdaroundParameters(x, num_batches=4, batch_size=10, default_num_iterations=300,
                                    learning_rate=3e-2, held_out_fraction=held)
        ada = apply_adaround(model, params, path=str(tmp_path), filename_prefix=f"h{held}", default_param_bw=4,
                             default_quant_scheme="tf", default_output_bw=16, verbose=0, callbacks=[recorder],
                             steps_per_call=300)
        with open(tmp_path / f"h{held}.encodings", encoding="utf-8") as f:
            scale, nmin, steps = _grid(json.load(f), "fc", kernel, (1,))
        nearest = np.clip(np.round((kernel - nmin) / scale), 0, steps) * scale + nmin
        learned = ada.get_layer("fc").kernel.numpy()
        runs[held] = (recorder.layer_logs[0], learned, nearest)
    logs, learned, nearest = runs[0.0]
    assert not logs["kept_nearest"]
    assert np.mean((fresh @ learned + bias - ref) ** 2) > np.mean((fresh @ nearest + bias - ref) ** 2)
    logs, learned, nearest = runs[0.2]
    assert logs["kept_nearest"]
    np.testing.assert_allclose(learned, nearest, atol=1e-6)
