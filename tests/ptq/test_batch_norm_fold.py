"""Batch-norm folding keeps the FP32 function (1e-5 relative) and removes the folded BNs."""

import keras
import numpy as np
import pytest

from aimet_tf import QuantizationSimModel
from aimet_tf.export import TFLITE_CONFIG, kernel_target_of, prepare_model_for_tflite, prepare_sim_for_tflite
from aimet_tf.kernels import TFLITE_REFERENCE
from aimet_tf.ptq import (
    FoldedPair,
    find_backward_foldable_pairs,
    find_foldable_pairs,
    fold_all_batch_norms,
    fold_all_batch_norms_to_scale,
    fold_batch_norms,
)
from aimet_tf.testing import models

L = keras.layers


def _randomize_bns(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _randomize_bns(layer, seed + 1)
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape[0]
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, c))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.3, c))
            layer.moving_mean.assign(rng.normal(0, 0.3, c))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, c))
    return model


def _relative_error(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def _producer_then_bn(kind: str) -> keras.Model:
    keras.utils.set_random_seed(1)
    inp = keras.Input((9, 9, 4))
    if kind == "conv":
        x = L.Conv2D(6, 3, use_bias=False, name="p")(inp)
    elif kind == "conv_bias":
        x = L.Conv2D(6, 3, strides=2, name="p")(inp)
    elif kind == "depthwise_multiplier":
        x = L.DepthwiseConv2D(3, depth_multiplier=3, name="p")(inp)
    elif kind == "separable":
        x = L.SeparableConv2D(5, 3, depth_multiplier=2, name="p")(inp)
    elif kind == "transpose":
        x = L.Conv2DTranspose(5, 3, strides=2, name="p")(inp)
    elif kind == "dense":
        x = L.Dense(7, name="p")(L.Flatten()(inp))
    else:
        raise ValueError(kind)
    center_scale = {"conv": (False, True), "dense": (True, False)}.get(kind, (True, True))
    x = L.BatchNormalization(center=center_scale[0], scale=center_scale[1], epsilon=1e-3, name="bn")(x)
    out = L.ReLU(name="relu")(x)
    return _randomize_bns(keras.Model(inp, out))


@pytest.mark.parametrize(
    "kind", ["conv", "conv_bias", "depthwise_multiplier", "separable", "transpose", "dense"]
)
def test_fold_preserves_fp32_output(kind):
    model = _producer_then_bn(kind)
    x = np.random.default_rng(0).normal(size=(8, 9, 9, 4)).astype(np.float32)
    folded = fold_batch_norms(model)
    assert find_foldable_pairs(model) == [("p", "bn")]
    assert not any(isinstance(l, L.BatchNormalization) for l in folded.layers)
    assert folded.get_layer("p").use_bias
    assert _relative_error(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5


def test_fold_on_the_shared_test_model_and_original_untouched():
    model = models.conv_bn_relu_model()
    weights = [w.copy() for w in model.get_weights()]
    x = models.random_images(16)
    folded = fold_batch_norms(model)
    assert _relative_error(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5
    assert "bn1" not in [l.name for l in folded.layers]
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert folded.get_layer("c1") is not model.get_layer("c1")


def test_unfoldable_batch_norms_stay():
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 6, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(inp)
    b1 = L.BatchNormalization(name="bn_shared_input")(a)       # 'a' also feeds the Add
    y = L.Add(name="add")([a, b1])
    y = L.ReLU(name="relu")(y)
    y = L.BatchNormalization(name="bn_after_relu")(y)          # no linear producer
    z = L.Conv2D(4, 3, padding="same", activation="relu", name="c_act")(y)  # padded: no fold back
    z = L.BatchNormalization(name="bn_after_activation")(z)    # activation inside the conv
    model = _randomize_bns(keras.Model(inp, z))
    assert find_foldable_pairs(model) == []
    assert find_backward_foldable_pairs(model) == []
    folded = fold_batch_norms(model)
    assert len([l for l in folded.layers if isinstance(l, L.BatchNormalization)]) == 3
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_nested_and_sequential_models_fold_inside():
    keras.utils.set_random_seed(3)
    inner = keras.Sequential(
        [keras.Input((6, 6, 3)), L.Conv2D(4, 3, name="ic"), L.BatchNormalization(name="ibn"),
         L.ReLU(name="ir")],
        name="inner",
    )
    inp = keras.Input((6, 6, 3))
    out = L.Dense(2, name="head")(L.Flatten()(inner(inp)))
    model = _randomize_bns(keras.Model(inp, out))
    folded = fold_batch_norms(model)
    inner_folded = folded.get_layer("inner")
    assert not any(isinstance(l, L.BatchNormalization) for l in inner_folded.layers)
    x = np.random.default_rng(1).normal(size=(4, 6, 6, 3)).astype(np.float32)
    assert _relative_error(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5


def test_subclassed_model_rejected():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="Functional"):
        fold_batch_norms(Net())


_CONSUMERS = {
    "conv": lambda: L.Conv2D(6, 3, strides=2, name="c"),
    "conv_1x1_same": lambda: L.Conv2D(6, 1, padding="same", use_bias=False, name="c"),
    "depthwise": lambda: L.DepthwiseConv2D(3, depth_multiplier=2, name="c"),
    "dense": lambda: L.Dense(5, name="c"),  # on the channel axis of a rank-4 tensor
    "separable": lambda: L.SeparableConv2D(6, 3, depth_multiplier=2, strides=2, name="c"),
    "separable_1x1_same": lambda: L.SeparableConv2D(5, 1, padding="same", use_bias=False, name="c"),
    "separable_dilated": lambda: L.SeparableConv2D(5, 3, dilation_rate=2, use_bias=False, name="c"),
    "separable1d": lambda: L.SeparableConv1D(6, 3, depth_multiplier=3, name="c"),
    "transpose_1x1": lambda: L.Conv2DTranspose(6, 1, name="c"),
    "transpose_1x1_same": lambda: L.Conv2DTranspose(5, 1, padding="same", use_bias=False, name="c"),
    "transpose1d_1x1": lambda: L.Conv1DTranspose(6, 1, name="c"),
}


def _bn_then_consumer(kind: str, consumers=_CONSUMERS, after: bool = False) -> keras.Model:
    keras.utils.set_random_seed(4)
    inp = keras.Input((11, 4) if "1d" in kind else (9, 9, 4))
    x = L.BatchNormalization(epsilon=1e-3, name="bn")(L.ReLU(name="pre")(inp))
    layer = consumers[kind]()
    y = layer(x)
    if getattr(layer, "use_bias", False):
        layer.bias.assign(np.random.default_rng(8).normal(0, 0.5, layer.bias.shape))
    if after:
        y = L.BatchNormalization(name="bn_after")(y)
    return _randomize_bns(keras.Model(inp, y))


def _random_input(model, seed=5):
    return np.random.default_rng(seed).normal(size=(6, *model.input_shape[1:])).astype(np.float32)


@pytest.mark.parametrize("kind", list(_CONSUMERS))
def test_batch_norm_before_a_valid_layer_folds_into_its_inputs(kind):
    model = _bn_then_consumer(kind)
    x = _random_input(model)
    assert find_foldable_pairs(model) == []
    assert find_backward_foldable_pairs(model) == [("bn", "c")]
    pairs, folded = fold_all_batch_norms(model)
    assert pairs == [FoldedPair("c", "bn", "before")]
    assert not any(isinstance(l, L.BatchNormalization) for l in folded.layers)
    assert _relative_error(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5


@pytest.mark.parametrize("kind", ["separable", "separable1d", "transpose_1x1"])
def test_batch_norms_on_both_sides_of_a_separable_or_transposed_conv_fold(kind):
    # The batch norm before scales the input-channel axis (depthwise kernel; transposed axis -1),
    # the one after the output-channel axis (pointwise kernel; transposed axis -2).
    model = _bn_then_consumer(kind, after=True)
    x = _random_input(model, seed=6)
    pairs, folded = fold_all_batch_norms(model)
    assert sorted(pairs) == [FoldedPair("c", "bn", "before"), FoldedPair("c", "bn_after", "after")]
    assert not any(isinstance(l, L.BatchNormalization) for l in folded.layers)
    assert _relative_error(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5


_PADDED = "'c' zero-pads its input"
_TRANSPOSED = "'c' is a transposed convolution with kernel_size="
_INEXACT_CONSUMERS = {
    "separable_same": (lambda: L.SeparableConv2D(6, 3, padding="same", name="c"), _PADDED),
    "separable1d_same": (lambda: L.SeparableConv1D(6, 3, padding="same", name="c"), _PADDED),
    # strides == kernel_size: one tap per output pixel, but a different tap per stride phase.
    "transpose_stride_is_kernel": (lambda: L.Conv2DTranspose(6, 2, strides=2, name="c"), _TRANSPOSED),
    "transpose_valid": (lambda: L.Conv2DTranspose(6, 3, name="c"), _TRANSPOSED),
    "transpose_same_strided": (
        lambda: L.Conv2DTranspose(6, 3, strides=2, padding="same", name="c"), _TRANSPOSED
    ),
    "transpose_1x1_strided": (lambda: L.Conv2DTranspose(6, 1, strides=2, name="c"), _TRANSPOSED),
}


@pytest.mark.parametrize("kind", list(_INEXACT_CONSUMERS))
def test_batch_norm_before_an_inexact_consumer_stays_and_the_log_says_why(kind, caplog):
    make, reason = _INEXACT_CONSUMERS[kind]
    model = _bn_then_consumer(kind, {kind: make})
    x = _random_input(model, seed=7)
    assert find_backward_foldable_pairs(model) == []
    with caplog.at_level("INFO", logger="absl"):
        pairs, folded = fold_all_batch_norms(model)
    assert pairs == [] and "bn" in [l.name for l in folded.layers]
    kept = [r.getMessage() for r in caplog.records if "fold_all_batch_norms: kept bn:" in r.getMessage()]
    assert len(kept) == 1 and reason in kept[0]
    assert _relative_error(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-6
    # The premise of the refusal: a constant input does not give a constant output per channel,
    # so no bias could stand for the batch norm's shift.
    consumer = model.get_layer("c")
    ones = np.ones((1, *model.get_layer("bn").output.shape[1:]), np.float32)
    response = np.asarray(consumer(ones)).reshape(-1, consumer.filters)
    assert np.max(np.ptp(response, axis=0)) > 1e-3


def test_batch_norm_before_a_padded_conv_stays():
    inp = keras.Input((9, 9, 4))
    y = L.Conv2D(6, 3, padding="same", name="c")(L.BatchNormalization(name="bn")(inp))
    model = _randomize_bns(keras.Model(inp, y))
    pairs, folded = fold_all_batch_norms(model)
    assert pairs == [] and "bn" in [l.name for l in folded.layers]


def test_batch_norms_on_both_sides_and_nested_pairs_are_named():
    keras.utils.set_random_seed(6)
    inner = keras.Sequential(
        [keras.Input((8, 8, 3)), L.BatchNormalization(name="ibn0"), L.Conv2D(4, 3, name="ic"),
         L.BatchNormalization(name="ibn"), L.ReLU(name="ir")],
        name="inner",
    )
    inp = keras.Input((8, 8, 3))
    out = L.Dense(2, name="head")(L.Flatten()(inner(inp)))
    model = _randomize_bns(keras.Model(inp, out))
    pairs, folded = fold_all_batch_norms(model)
    assert sorted(pairs) == sorted(
        [FoldedPair("inner/ic", "inner/ibn0", "before"), FoldedPair("inner/ic", "inner/ibn", "after")]
    )
    x = np.random.default_rng(7).normal(size=(4, 8, 8, 3)).astype(np.float32)
    assert _relative_error(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5


# -- folding into a sim's quantizer grids ------------------------------------------------------


def _calibrated_sim(config: str, seed: int = 0):
    model = _randomize_bns(models.conv_bn_relu_model(), seed)
    # Negative scales on some channels: the mirrored grids must still match.
    bn = model.get_layer("bn1")
    gamma = bn.gamma.numpy()
    gamma[::3] *= -1
    bn.gamma.assign(gamma)
    data = models.random_images(64)
    sim = QuantizationSimModel(model, quant_scheme="tf_enhanced", config_file=config)
    sim.compute_encodings(data)
    return sim, data


def test_fold_to_scale_keeps_the_simulated_function():
    sim, data = _calibrated_sim("htp")
    before = sim.model.predict(data, verbose=0)
    encodings_before = sim.get_encodings_dict()["activation_encodings"]
    old_model = sim.model
    pairs = fold_all_batch_norms_to_scale(sim)
    assert ("c1", "bn1") in [(p.layer, p.batch_norm) for p in pairs]
    assert sim.model is not old_model
    assert not any(
        isinstance(w.layer, L.BatchNormalization) for w in sim.wrappers() if w.layer.name in {p.batch_norm for p in pairs}
    )
    after = sim.model.predict(data, verbose=0)
    # Same grids, same codes: outputs agree up to one output step on very few elements.
    step = float(dict(sim.activation_quantizers())["fc/output:0"].scale_tensor().numpy())
    diff = np.abs(after - before)
    assert np.max(diff) <= 1.01 * step
    assert np.mean(diff > 0) < 0.01
    # Activation encodings are carried over (the ReLU after the folded pair keeps its grid).
    encodings_after = sim.get_encodings_dict()["activation_encodings"]
    for name in set(encodings_before) & set(encodings_after):
        assert encodings_before[name] == encodings_after[name]
    # The folded sim trains, exports and reloads like any other.
    assert sim.uncalibrated_quantizers() == []


def test_fold_to_scale_recomputes_per_tensor_grids_with_a_warning(caplog):
    sim, data = _calibrated_sim("default_fused")
    before = sim.model.predict(data, verbose=0)
    with caplog.at_level("WARNING"):
        pairs = fold_all_batch_norms_to_scale(sim)
    assert pairs and "recomputed" in caplog.text
    after = sim.model.predict(data, verbose=0)
    assert _relative_error(before, after) < 0.1  # a new grid, not the same one


def test_fold_to_scale_without_batch_norms_is_a_no_op():
    model = fold_batch_norms(models.conv_bn_relu_model())
    sim = QuantizationSimModel(model, quant_scheme="tf", config_file="htp")
    sim.compute_encodings(models.random_images(16))
    old = sim.model
    assert fold_all_batch_norms_to_scale(sim) == [] and sim.model is old


@pytest.mark.parametrize("use_bias", [True, False])
def test_fold_to_scale_gives_a_quantized_bias_an_encoding_of_its_new_values(use_bias):
    import json
    import os

    import aimet_tf.quantization

    presets = os.path.join(os.path.dirname(aimet_tf.quantization.__file__), "presets")
    with open(os.path.join(presets, "htp.json"), encoding="utf-8") as f:
        config = json.load(f)
    config.setdefault("params", {})["bias"] = {"is_quantized": "True"}
    keras.utils.set_random_seed(9)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, use_bias=use_bias, name="p")(inp)
    x = L.BatchNormalization(name="bn")(x)
    out = L.ReLU(name="r")(x)
    model = _randomize_bns(keras.Model(inp, out), seed=9)
    bn = model.get_layer("bn")
    bn.beta.assign(bn.beta.numpy() + 0.4)  # a folded bias far outside any old bias grid
    data = np.random.default_rng(9).normal(size=(32, 8, 8, 3)).astype(np.float32)
    sim = QuantizationSimModel(model, quant_scheme="tf", config_file=config)
    sim.compute_encodings(data)
    before = sim.model.predict(data, verbose=0)
    fold_all_batch_norms_to_scale(sim)
    bias_q = dict((n, q) for n, q, _ in sim.param_quantizers())["p/bias:0"]
    assert bias_q.enabled and bias_q.is_initialized
    after = sim.model.predict(data, verbose=0)
    step = float(dict(sim.activation_quantizers())["r/output:0"].scale_tensor().numpy())
    assert np.max(np.abs(after - before)) <= 2.01 * step


def test_fold_to_scale_leaves_batch_norms_before_a_layer_in_place(caplog):
    # fold_all_batch_norms folds this one backward; a sim cannot (its scale would fall on the
    # separable conv's input channels, which no per-output-channel weight grid absorbs).
    model = _bn_then_consumer("separable")
    assert fold_all_batch_norms(model)[0] == [FoldedPair("c", "bn", "before")]
    sim = QuantizationSimModel(model, quant_scheme="tf", config_file="htp")
    sim.compute_encodings(_random_input(model))
    old = sim.model
    with caplog.at_level("INFO", logger="absl"):
        assert fold_all_batch_norms_to_scale(sim) == []
    assert sim.model is old
    assert any(isinstance(w.layer, L.BatchNormalization) for w in sim.wrappers())
    assert "fold_all_batch_norms_to_scale: kept bn:" in caplog.text
    assert "folds only batch norms after a layer" in caplog.text


def test_fold_to_scale_prepares_a_prepared_sim_again_for_the_same_kernels():
    model = prepare_model_for_tflite(_randomize_bns(models.conv_bn_relu_model()), fold_batch_norms=False)
    sim = QuantizationSimModel(model, quant_scheme="tf", config_file=TFLITE_CONFIG)
    sim.compute_encodings(models.random_images(32))
    prepare_sim_for_tflite(sim, "reference")
    assert set(sim.preparations) == {"tflite"}
    pairs = fold_all_batch_norms_to_scale(sim)
    assert [(p.layer, p.batch_norm) for p in pairs] == [("c1", "bn1")]
    # The rebuilt model is prepared for the reference kernels, as the sim was.
    requantizer = sim.model.get_layer("c1").requantizer
    assert requantizer is not None and requantizer.enabled and requantizer.target is TFLITE_REFERENCE
    assert kernel_target_of(sim) == "reference" and set(sim.preparations) == {"tflite"}


def _conv_bn_ops_model():
    """Conv -> BN, then keras.ops.reshape and ``x + 1`` written directly in the functional model."""
    keras.utils.set_random_seed(7)
    inp = keras.Input((6, 6, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(inp))
    x = keras.ops.reshape(x, (-1, 16, 4)) + 1.0
    return _randomize_bns(keras.Model(inp, L.Dense(2, name="fc")(x), name="ops_model"))


@pytest.mark.parametrize("fold", [fold_batch_norms, fold_all_batch_norms], ids=["fold_batch_norms", "fold_all"])
def test_unprepared_ops_nodes_are_refused_naming_them_and_the_fix(fold):
    with pytest.raises(
        ValueError,
        match=r"Model 'ops_model' must be prepared before batch-norm folding\. Expected every computation a Keras "
        r"layer\. Received: ops node 'reshape\w*' \(Reshape\) is not a layer; ops node 'add\w*' \(Add\) is not a layer\. "
        r"Fix: model = aimet_tf\.graph\.prepare_model\(model\)",
    ):
        fold(_conv_bn_ops_model())


def test_unprepared_ops_node_inside_a_nested_model_is_refused():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, keras.ops.relu(L.Dense(4, name="in_d")(inner_in)), name="inner")
    inp = keras.Input((4,))
    model = keras.Model(inp, inner(L.BatchNormalization(name="bn")(L.Dense(4, name="a")(inp))), name="outer")
    with pytest.raises(ValueError, match=r"'outer' must be prepared.*in nested model 'inner': ops node 'relu\w*'"):
        fold_batch_norms(model)


def test_following_the_fix_folds_the_ops_model():
    from aimet_tf.graph import prepare_model

    model = _conv_bn_ops_model()
    pairs, folded = fold_all_batch_norms(prepare_model(model))
    assert pairs == [FoldedPair("conv", "bn", "after")]
    x = np.random.default_rng(8).normal(size=(4, 6, 6, 3)).astype(np.float32)
    assert _relative_error(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5


def test_shared_layers_need_no_preparing_and_stay_unfolded():
    # The batch norm after the shared Dense cannot fold into it (its other call has no batch norm);
    # it folds backward into fc instead.
    shared = L.Dense(4, name="shared")
    inp = keras.Input((4,))
    x = L.BatchNormalization(name="bn")(shared(shared(inp)))
    model = _randomize_bns(keras.Model(inp, L.Dense(2, name="fc")(x)))
    pairs, folded = fold_all_batch_norms(model)
    assert pairs == [FoldedPair("fc", "bn", "before")]
    assert isinstance(folded.get_layer("shared"), L.Dense) and not any(isinstance(l, L.BatchNormalization) for l in folded.layers)
    x = np.random.default_rng(9).normal(size=(4, 4)).astype(np.float32)
    assert _relative_error(model.predict(x, verbose=0), folded.predict(x, verbose=0)) < 1e-5
