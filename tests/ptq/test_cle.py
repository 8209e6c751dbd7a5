"""Cross-layer equalization and high-bias folding on tiny seeded models.

Function preservation is checked against the model CLE claims to preserve: the original where
every activation is ReLU / linear (or a ReLU6 whose pre-activations never reach 6, checked on
the data), and otherwise the original with the reported ReLU6 layers replaced by ReLU.
"""

import keras
import numpy as np
import pytest

from aimet_tf.ptq import batch_norm_fold, cle
from aimet_tf.ptq.cle import cross_layer_scales, equalize_model, equalize_model_with_report
from aimet_tf.testing import models

L = keras.layers


def _rel_diff(ref, out) -> float:
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    return float(np.max(np.abs(ref - out)) / np.max(np.abs(ref)))


def _randomize(model: keras.Model, seed: int, channel_spread: float = 1.5) -> keras.Model:
    """Random BN statistics and per-channel weight magnitudes that differ by orders of e."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.3, 2.0, c).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.3, c).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0, 0.3, c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.3, 3.0, c).astype(np.float32))
        elif hasattr(layer, "kernel") and layer.kernel is not None:
            k = layer.kernel.numpy()
            axis_len = k.shape[-2] if isinstance(layer, L.DepthwiseConv2D) else k.shape[-1]
            spread = np.exp(rng.normal(0, channel_spread, axis_len)).astype(np.float32)
            if isinstance(layer, L.DepthwiseConv2D):
                k = k * spread[:, None]
            else:
                k = k * spread
            layer.kernel.assign(k)
            if getattr(layer, "use_bias", False):
                layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(np.float32))
    return model


def _separable_model(act: str = "relu", seed: int = 0, weight_scale: float = 1.0) -> keras.Model:
    """conv -> BN -> act -> depthwise -> BN -> act -> 1x1 conv -> BN -> act -> GAP -> Dense."""
    keras.utils.set_random_seed(seed)

    def activation(name):
        if act == "relu":
            return L.ReLU(name=name)
        if act == "relu6":
            return L.ReLU(max_value=6.0, name=name)
        if act == "leaky":
            return L.LeakyReLU(negative_slope=0.1, name=name)
        return L.Activation(act, name=name)

    inp = keras.Input((10, 10, 3), name="x")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = activation("a1")(x)
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = L.BatchNormalization(name="bn2")(x)
    x = activation("a2")(x)
    x = L.Conv2D(6, 1, name="pw")(x)
    x = L.BatchNormalization(name="bn3")(x)
    x = activation("a3")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(4, name="fc")(x)
    model = _randomize(keras.Model(inp, out, name=f"separable_{act}"), seed)
    if weight_scale != 1.0:
        for layer in model.layers:
            if isinstance(layer, L.BatchNormalization):
                layer.gamma.assign(layer.gamma.numpy() * weight_scale)
                layer.beta.assign(layer.beta.numpy() * weight_scale)
    return model


def _conv_chain(seed: int = 0) -> keras.Model:
    """Three convs sharing layers between sets: conv -> relu -> conv -> relu -> conv -> Flatten."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((9, 9, 2))
    x = L.Conv2D(5, 3, activation="relu", name="k1")(inp)
    x = L.ZeroPadding2D(1, name="pad")(x)
    x = L.Conv2D(7, 3, name="k2")(x)
    x = L.ReLU(name="r2")(x)
    x = L.Dropout(0.5, name="drop")(x)
    x = L.Conv2D(3, 1, name="k3")(x)
    out = L.Flatten(name="flat")(x)
    return _randomize(keras.Model(inp, out, name="conv_chain"), seed)


def _weight_ranges(model, layer_name, side):
    layer = model.get_layer(layer_name)
    k = np.abs(layer.kernel.numpy().astype(np.float64))
    if isinstance(layer, L.DepthwiseConv2D):
        return k.reshape(-1, k.shape[-2]).max(axis=0)
    if side == "out":
        return k.reshape(-1, k.shape[-1]).max(axis=0)
    return np.moveaxis(k, -2, 0).reshape(k.shape[-2], -1).max(axis=1)


def _with_relu(model, names):
    """The original model with the given ReLU6 layers / built-in activations made ReLU."""

    def clone(layer):
        config = layer.get_config()
        if layer.name in names:
            if isinstance(layer, L.ReLU):
                config["max_value"] = None
            else:
                config["activation"] = "relu"
        new = layer.__class__.from_config(config)
        if layer.get_build_config():
            new.build_from_config(layer.get_build_config())
        new.set_weights(layer.get_weights())
        return new

    return keras.models.clone_model(model, clone_function=clone)


# -- pure maths ----------------------------------------------------------------------------------


def test_cross_layer_scales_pair_and_triple_formulas():
    r1 = np.array([4.0, 1.0, 0.0, 2.0])
    r2 = np.array([1.0, 9.0, 3.0, 2.0])
    r3 = np.array([2.0, 1.0, 1.0, 0.5])
    (s,) = cross_layer_scales([r1, r2])
    np.testing.assert_allclose(s, [2.0, 1.0 / 3.0, 1.0, 1.0])
    s12, s23 = cross_layer_scales([r1, r2, r3])
    assert s12[2] == 1.0 and s23[2] == 1.0  # a zero range moves nothing
    live = [0, 1, 3]
    r1, r2, r3, s12, s23 = r1[live], r2[live], r3[live], s12[live], s23[live]
    geo = np.cbrt(r1 * r2 * r3)
    np.testing.assert_allclose(s12, r1 / geo)
    np.testing.assert_allclose(s23, geo / r3)
    # After scaling all three ranges equal cbrt(r1 r2 r3).
    np.testing.assert_allclose(r1 / s12, geo)
    np.testing.assert_allclose(r2 * s12 / s23, geo)
    np.testing.assert_allclose(r3 * s23, geo)


def test_cross_layer_scales_never_inflate_a_dead_producer_channel():
    # A channel at 1e-30 of its tensor's range is numerically dead (a folded, L2-decayed channel):
    # its output is the constant relu(bias), which s < 1 would blow up. Dead only in the consumer,
    # the channel is unused and s >> 1 shrinks it.
    (s,) = cross_layer_scales([np.array([1.0, 1e-30, 4.0]), np.array([4.0, 2.0, 1e-30])])
    np.testing.assert_allclose(s, [0.5, 1.0, 2e15])
    # Triple: channel 1's depthwise is dead (conv1's channel unused: shrunk; the depthwise
    # outputs its bias: left alone); channel 2's last layer is dead (the depthwise is shrunk).
    s12, s23 = cross_layer_scales(
        [np.array([1.0, 1.0, 2.0]), np.array([1.0, 1e-30, 2.0]), np.array([1.0, 1.0, 1e-30])]
    )
    np.testing.assert_allclose(s12, [1.0, 1e15, 1.0], rtol=1e-12)
    np.testing.assert_allclose(s23, [1.0, 1.0, np.sqrt(2e30)], rtol=1e-12)


@pytest.mark.parametrize("count", [1, 4])
def test_cross_layer_scales_rejects_wrong_count(count):
    with pytest.raises(ValueError, match="2 or 3"):
        cross_layer_scales([np.ones(3)] * count)


# -- function preservation -----------------------------------------------------------------------


@pytest.mark.parametrize("act", ["relu", "leaky", "linear"])
def test_equalize_preserves_output(act):
    model = _separable_model(act, seed=1)
    x = models.random_images(32, (10, 10, 3), seed=2)
    new, report = equalize_model_with_report(model, high_bias_fold=False)
    assert report.relu6_replaced == []
    assert [s.layers for s in report.equalized] == [("c1", "dw", "pw"), ("pw", "fc")]
    assert _rel_diff(model.predict(x, verbose=0), new.predict(x, verbose=0)) <= 1e-5


def test_relu6_replaced_model_matches_relu_reference_not_original():
    # BN outputs scaled x8: pre-activations go well past 6, so ReLU6 -> ReLU changes the function.
    model = _separable_model("relu6", seed=3, weight_scale=8.0)
    x = models.random_images(32, (10, 10, 3), seed=4)
    new, report = equalize_model_with_report(model, high_bias_fold=False)
    assert report.relu6_replaced == ["a1", "a2", "a3"]
    reference = _with_relu(model, set(report.relu6_replaced))
    assert _rel_diff(reference.predict(x, verbose=0), new.predict(x, verbose=0)) <= 1e-5
    assert _rel_diff(model.predict(x, verbose=0), new.predict(x, verbose=0)) > 1e-3


def test_relu6_never_reached_matches_original():
    model = _separable_model("relu6", seed=5, weight_scale=0.2)
    x = models.random_images(32, (10, 10, 3), seed=6)
    pre = keras.Model(model.input, [model.get_layer(n).output for n in ("bn1", "bn2", "bn3")])
    assert max(float(np.max(t)) for t in pre.predict(x, verbose=0)) < 6.0  # the premise
    new, report = equalize_model_with_report(model, high_bias_fold=False)
    assert report.relu6_replaced == ["a1", "a2", "a3"]
    assert _rel_diff(model.predict(x, verbose=0), new.predict(x, verbose=0)) <= 1e-5


def test_replace_relu6_false_skips_instead():
    model = _separable_model("relu6", seed=3)
    _, report = equalize_model_with_report(model, replace_relu6=False)
    assert report.equalized == [] and report.relu6_replaced == []
    reasons = {c.layer: c.reason for c in report.skipped}
    assert "replace_relu6=False" in reasons["c1"] and "replace_relu6=False" in reasons["pw"]


def test_original_model_is_not_modified():
    model = _separable_model("relu6", seed=7)
    before = [w.copy() for w in model.get_weights()]
    new, _ = equalize_model_with_report(model, high_bias_fold_padded=True)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert model.get_layer("a1").max_value == 6.0
    assert new.get_layer("a1").max_value is None
    assert not any(isinstance(l, L.BatchNormalization) for l in new.layers)


# -- equal ranges --------------------------------------------------------------------------------


def test_triple_and_pair_ranges_become_equal():
    model = _separable_model("relu", seed=8)
    new, report = equalize_model_with_report(model, tolerance=1e-10)
    assert report.converged
    c1 = _weight_ranges(new, "c1", "out")
    dw = _weight_ranges(new, "dw", "out")
    pw_in = _weight_ranges(new, "pw", "in")
    np.testing.assert_allclose(c1, dw, rtol=1e-5)
    np.testing.assert_allclose(dw, pw_in, rtol=1e-5)
    np.testing.assert_allclose(_weight_ranges(new, "pw", "out"), _weight_ranges(new, "fc", "in"), rtol=1e-5)
    # ... and they were far from equal before (on the BN-folded weights).
    folded = batch_norm_fold.fold_batch_norms(model)
    before = _weight_ranges(folded, "dw", "out") / _weight_ranges(folded, "pw", "in")
    assert np.max(before) / np.min(before) > 2.0


def test_chain_of_pairs_balances_every_pair_at_convergence():
    model = _conv_chain(seed=9)
    x = models.random_images(16, (9, 9, 2), seed=10)
    new, report = equalize_model_with_report(model, tolerance=1e-10, max_sweeps=2000)
    assert [s.layers for s in report.equalized] == [("k1", "k2"), ("k2", "k3")]
    assert report.equalized[0].between == (("pad",),)
    assert report.equalized[1].between == (("r2", "drop"),)
    assert report.converged and report.sweeps > 1
    for a, b in (("k1", "k2"), ("k2", "k3")):
        np.testing.assert_allclose(_weight_ranges(new, a, "out"), _weight_ranges(new, b, "in"), rtol=1e-5)
    assert _rel_diff(model.predict(x, verbose=0), new.predict(x, verbose=0)) <= 1e-5


# -- report --------------------------------------------------------------------------------------


def test_report_names_skipped_candidates_with_reasons():
    model = models.conv_bn_relu_model()
    _, report = equalize_model_with_report(model)
    assert [(p.layer, p.batch_norm, p.bn_position) for p in report.folded_batch_norms] == [("c1", "bn1", "after")]
    assert report.equalized == []
    reasons = {c.layer: c.reason for c in report.skipped}
    assert set(reasons) == {"c1", "dw", "fc"}
    assert "'r1' feeds 2 layers (dw, add)" in reasons["c1"]
    assert "'add' (Add)" in reasons["dw"]
    assert "model output" in reasons["fc"]
    text = report.summary()
    assert "0 pairs, 0 triples" in text and "Skipped candidates: 3" in text
    assert "fc: it is a model output" in text


def test_report_on_mlp_and_unfolded_bn():
    inp = keras.Input((6,))
    x = L.Dense(8, activation="relu", name="d1")(inp)
    x = L.Dense(8, name="d2")(x)
    x = L.Activation("tanh", name="t")(x)
    x = L.Dense(5, activation="relu6", name="d3")(x)
    x = L.Dense(5, name="d4")(x)
    x = L.BatchNormalization(name="bn_after_dense")(x)  # foldable into d4
    x = L.Add(name="add")([x, x])
    x = L.BatchNormalization(name="bn_after_add")(x)  # not foldable (a ReLU follows, not a layer)
    out = L.Dense(2, name="d5")(L.ReLU(name="r_end")(x))
    model = _randomize(keras.Model(inp, out), seed=11)
    x_data = np.random.default_rng(12).normal(size=(20, 6)).astype(np.float32)
    new, report = equalize_model_with_report(model)
    assert [s.layers for s in report.equalized] == [("d1", "d2"), ("d3", "d4")]
    assert report.relu6_replaced == ["d3"]  # the built-in relu6 of d3
    assert report.unfolded_batch_norms == ["bn_after_add"]
    reasons = {c.layer: c.reason for c in report.skipped}
    assert "'t' (activation 'tanh')" in reasons["d2"]
    assert "feeds 2 layers" not in reasons.get("d4", "") and "add" in reasons["d4"]
    reference = _with_relu(model, {"d3"})
    assert _rel_diff(reference.predict(x_data, verbose=0), new.predict(x_data, verbose=0)) <= 1e-5


# -- high-bias fold ------------------------------------------------------------------------------


def _hbf_model(act: str, seed: int = 13):
    """conv -> BN -> act -> conv (valid) whose BN statistics come from the data itself."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, name="p")(inp)
    x = L.BatchNormalization(name="bn")(x)
    if act != "linear":
        x = L.ReLU(name="act")(x)
    x = L.Conv2D(4, 3, name="q")(x)
    out = L.Flatten()(x)
    model = keras.Model(inp, out)
    data = models.random_images(64, (8, 8, 3), seed=seed + 1)
    conv_out = keras.Model(inp, model.get_layer("p").output).predict(data, verbose=0)
    bn = model.get_layer("bn")
    # Variance x100: normalized values stay within +-3 on this data, so pre-activations stay
    # above beta - 3|gamma| (the high-bias fold's premise), checked in the test.
    bn.moving_mean.assign(conv_out.reshape(-1, 6).mean(axis=0))
    bn.moving_variance.assign(100.0 * conv_out.reshape(-1, 6).var(axis=0))
    bn.gamma.assign(np.array([0.5, 0.4, 0.9, 0.5, 0.3, 1.0], np.float32))  # c > 0 on 4 channels
    bn.beta.assign(np.array([3.0, 2.5, 4.0, -1.0, 0.1, 5.0], np.float32))
    return model, data


@pytest.mark.parametrize("act", ["relu", "linear"])
def test_high_bias_fold_preserves_output_and_shrinks_range(act):
    model, data = _hbf_model(act)
    bn_out = keras.Model(model.input, model.get_layer("bn").output).predict(data, verbose=0)
    bn = model.get_layer("bn")
    c = np.maximum(0.0, bn.beta.numpy() - 3 * np.abs(bn.gamma.numpy()))
    if act == "relu":
        # The premise, on this data: wherever c > 0, the pre-activation stays >= c.
        assert np.all((bn_out.reshape(-1, 6) >= c) | (c == 0))
    new, report = equalize_model_with_report(model)
    (record,) = report.high_bias_folds
    assert record.folded and record.producer == "p" and record.consumer == "q"
    assert record.exact == (act == "linear")
    assert record.channels == (4 if act == "relu" else 6)
    assert _rel_diff(model.predict(data, verbose=0), new.predict(data, verbose=0)) <= 1e-5
    # The producer's output now sits lower (same CLE scaling with and without the fold): a
    # smaller range to quantize.
    unfolded, _ = equalize_model_with_report(model, high_bias_fold=False)
    before = keras.Model(unfolded.input, unfolded.get_layer("p").output).predict(data, verbose=0)
    after = keras.Model(new.input, new.get_layer("p").output).predict(data, verbose=0)
    assert np.max(after) < 0.8 * np.max(before)


def test_high_bias_fold_into_padded_consumer_is_opt_in():
    model = _separable_model("relu", seed=14)
    for layer in ("bn1", "bn2"):
        bn = model.get_layer(layer)
        bn.beta.assign(np.full(bn.beta.shape, 4.0, np.float32))
        bn.gamma.assign(np.full(bn.gamma.shape, 0.5, np.float32))
    _, report = equalize_model_with_report(model)
    records = {(r.producer, r.consumer): r for r in report.high_bias_folds}
    assert not records[("c1", "dw")].folded and "zero-pads" in records[("c1", "dw")].reason
    assert records[("dw", "pw")].folded  # 1x1 consumer: no padding
    _, report_all = equalize_model_with_report(model, high_bias_fold_padded=True)
    assert {(r.producer, r.consumer): r for r in report_all.high_bias_folds}[("c1", "dw")].folded


def test_high_bias_fold_needs_a_folded_batch_norm():
    model = _conv_chain(seed=15)
    _, report = equalize_model_with_report(model)
    assert report.high_bias_folds and not any(r.folded for r in report.high_bias_folds)
    assert all("no batch norm" in r.reason for r in report.high_bias_folds)


# -- errors --------------------------------------------------------------------------------------


def test_rejects_subclassed_model_and_bad_sweeps():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    with pytest.raises(TypeError, match="subclassed"):
        equalize_model(Net())
    with pytest.raises(ValueError, match="max_sweeps"):
        equalize_model(models.dense_model(), max_sweeps=0)


def test_sequential_model_accepted():
    model = models.dense_model()
    x = np.random.default_rng(16).normal(size=(8, 10)).astype(np.float32)
    new, report = equalize_model_with_report(model)
    assert [s.layers for s in report.equalized] == [("d1", "d2")]
    assert _rel_diff(model.predict(x, verbose=0), new.predict(x, verbose=0)) <= 1e-5
    assert isinstance(report, cle.EqualizationReport)


def test_pairs_inside_a_nested_model_are_equalized_after_flattening():
    keras.utils.set_random_seed(31)
    inner = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(6, 3, name="ic1"), L.ReLU(name="ir"), L.Conv2D(5, 3, name="ic2")],
        name="inner",
    )
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, L.Dense(2, name="fc")(L.Flatten(name="flat")(inner(inp))))
    model = _randomize(model, seed=32)
    x = np.random.default_rng(33).normal(size=(6, 8, 8, 3)).astype(np.float32)
    new, report = equalize_model_with_report(model)
    assert report.flattened_models == ["inner"] and "Nested models flattened: inner" in report.summary()
    assert ("ic1", "ic2") in [s.layers for s in report.equalized]
    assert _rel_diff(model.predict(x, verbose=0), new.predict(x, verbose=0)) <= 1e-5


def test_producers_of_a_concatenation_are_equalized_with_their_slice_of_the_consumer():
    keras.utils.set_random_seed(41)
    inp = keras.Input((8, 8, 3))
    a = L.ReLU(name="ra")(L.Conv2D(4, 3, padding="same", name="a")(inp))
    b = L.Conv2D(3, 1, activation="relu", name="b")(inp)
    x = L.Concatenate(name="cat")([a, L.Activation("linear", name="keep")(inp), b])  # 4 + 3 + 3 channels
    out = L.Conv2D(5, 3, name="c")(x)
    model = _randomize(keras.Model(inp, out), seed=42)
    data = np.random.default_rng(43).normal(size=(6, 8, 8, 3)).astype(np.float32)
    new, report = equalize_model_with_report(model)
    assert {("a", "c"), ("b", "c")} <= {s.layers for s in report.equalized}
    assert _rel_diff(model.predict(data, verbose=0), new.predict(data, verbose=0)) <= 1e-5
    c_in = np.abs(new.get_layer("c").kernel.numpy()).max(axis=(0, 1, 3))
    np.testing.assert_allclose(np.abs(new.get_layer("a").kernel.numpy()).max(axis=(0, 1, 2)), c_in[:4], rtol=1e-6)
    np.testing.assert_allclose(np.abs(new.get_layer("b").kernel.numpy()).max(axis=(0, 1, 2)), c_in[7:], rtol=1e-6)


@pytest.mark.parametrize("activation", [None, "relu"])
def test_conv_and_dense_across_a_flatten_are_equalized(activation):
    keras.utils.set_random_seed(44)
    inp = keras.Input((6, 6, 2))
    x = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(inp))
    if activation:
        x = L.ReLU(name="r")(x)
    out = L.Dense(3, name="fc")(L.Flatten(name="flat")(x))
    model = _randomize(keras.Model(inp, out), seed=45)
    data = np.random.default_rng(46).normal(size=(6, 6, 6, 2)).astype(np.float32)
    new, report = equalize_model_with_report(model)
    assert ("conv", "fc") in [s.layers for s in report.equalized]
    if activation is None:  # then the high-bias fold through the Flatten is exact and must happen
        (fold,) = report.high_bias_folds
        assert fold.folded and fold.exact and fold.channels == 4
    assert _rel_diff(model.predict(data, verbose=0), new.predict(data, verbose=0)) <= 1e-5
    conv_out = np.abs(new.get_layer("conv").kernel.numpy()).max(axis=(0, 1, 2))
    fc_in = np.abs(new.get_layer("fc").kernel.numpy()).max(axis=1).reshape(-1, 4).max(axis=0)  # 16 positions x 4
    np.testing.assert_allclose(conv_out, fc_in, rtol=1e-6)


# -- channel-preserving Flatten / Reshape ---------------------------------------------------------

_C = 4  # channels of the producer "c" in the reshape models (6 x 6 positions)


def _reshape_model(tail, seed: int) -> keras.Model:
    """x (6, 6, 2) -> Conv2D "c" (4 channels) -> ReLU -> tail(x), with uneven channel ranges."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 2))
    x = L.ReLU(name="r")(L.Conv2D(_C, 3, padding="same", name="c")(inp))
    return _randomize(keras.Model(inp, tail(x)), seed)


# name -> (tail after the ReLU, per-channel input range of consumer "d" from its kernel |k|).
_CHANNEL_PRESERVING = {
    # Positions merged, the last axis kept: Conv1D / Dense on it see channel c at index c.
    "positions_merged_conv1d": (
        lambda x: L.Conv1D(3, 3, name="d")(L.Reshape((36, _C), name="rs")(x)),
        lambda k: k.max(axis=(0, 2)),
    ),
    "positions_merged_dense": (
        lambda x: L.Dense(3, name="d")(L.Reshape((36, _C), name="rs")(x)),
        lambda k: k.max(axis=1),
    ),
    # Merged then split into another grid, the last axis kept throughout.
    "positions_regridded": (
        lambda x: L.Conv2D(3, 2, name="d")(L.Reshape((4, 9, _C), name="rs2")(L.Reshape((36, _C), name="rs")(x))),
        lambda k: k.max(axis=(0, 1, 3)),
    ),
    # Width merged into the last axis: index w * C + c carries channel c.
    "width_into_channels": (
        lambda x: L.Dense(3, name="d")(L.Reshape((6, 6 * _C), name="rs")(x)),
        lambda k: k.max(axis=1).reshape(6, _C).max(axis=0),
    ),
    # Pairs of columns merged into the last axis (2C): index C + c carries channel c too.
    "column_pairs_into_channels": (
        lambda x: L.Conv2D(3, 1, name="d")(L.Reshape((6, 3, 2 * _C), name="rs")(x)),
        lambda k: k.max(axis=(0, 1, 3)).reshape(2, _C).max(axis=0),
    ),
    # Flatten: Dense input row p * C + c carries channel c.
    "flatten_dense": (
        lambda x: L.Dense(3, name="d")(L.Flatten(name="rs")(x)),
        lambda k: k.max(axis=1).reshape(36, _C).max(axis=0),
    ),
    # A channels_first Flatten moves the first axis (height) last first: row (w * C + c) * 6 + h.
    "flatten_channels_first_dense": (
        lambda x: L.Dense(3, name="d")(L.Flatten(data_format="channels_first", name="rs")(x)),
        lambda k: k.max(axis=1).reshape(6, _C, 6).max(axis=(0, 2)),
    ),
    # Flatten undone by a Reshape back to C channels: channel c at index c again.
    "flatten_then_back": (
        lambda x: L.Conv1D(3, 1, name="d")(L.Reshape((36, _C), name="rs2")(L.Flatten(name="rs")(x))),
        lambda k: k.max(axis=(0, 2)),
    ),
}


@pytest.mark.parametrize("pattern", sorted(_CHANNEL_PRESERVING))
def test_equalized_across_a_channel_preserving_reshape(pattern):
    tail, consumer_ranges = _CHANNEL_PRESERVING[pattern]
    model = _reshape_model(tail, seed=51)
    data = np.random.default_rng(52).normal(size=(8, 6, 6, 2)).astype(np.float32)
    new, report = equalize_model_with_report(model, tolerance=1e-10)
    (cls_set,) = [s for s in report.equalized if s.layers == ("c", "d")]
    assert cls_set.between[0][0] == "r" and "rs" in cls_set.between[0]
    assert _rel_diff(model.predict(data, verbose=0), new.predict(data, verbose=0)) <= 1e-5
    # One pair, not shared with another set: the first sweep applies s = sqrt(r1 / r2) exactly.
    r1 = np.abs(model.get_layer("c").kernel.numpy().astype(np.float64)).max(axis=(0, 1, 2))
    r2 = consumer_ranges(np.abs(model.get_layer("d").kernel.numpy().astype(np.float64)))
    assert np.max(r1 / r2) / np.min(r1 / r2) > 2.0  # far from equal before
    s = np.sqrt(r1 / r2)
    np.testing.assert_allclose(new.get_layer("c").kernel.numpy(), model.get_layer("c").kernel.numpy() / s, rtol=1e-5)
    np.testing.assert_allclose(new.get_layer("c").bias.numpy(), model.get_layer("c").bias.numpy() / s, rtol=1e-5)
    after_1 = np.abs(new.get_layer("c").kernel.numpy()).max(axis=(0, 1, 2))
    after_2 = consumer_ranges(np.abs(new.get_layer("d").kernel.numpy()))
    np.testing.assert_allclose(after_1, after_2, rtol=1e-5)
    np.testing.assert_allclose(after_1, np.sqrt(r1 * r2), rtol=1e-5)


def test_depthwise_triple_across_a_reshape_keeping_the_last_axis():
    def tail(x):
        x = L.DepthwiseConv1D(3, padding="same", name="dw")(L.Reshape((36, _C), name="rs")(x))
        return L.Conv1D(3, 1, name="d")(L.ReLU(name="r2")(x))

    model = _reshape_model(tail, seed=53)
    data = np.random.default_rng(54).normal(size=(8, 6, 6, 2)).astype(np.float32)
    new, report = equalize_model_with_report(model, tolerance=1e-10)
    assert ("c", "dw", "d") in [s.layers for s in report.equalized]
    assert _rel_diff(model.predict(data, verbose=0), new.predict(data, verbose=0)) <= 1e-5
    c_out = np.abs(new.get_layer("c").kernel.numpy()).max(axis=(0, 1, 2))
    dw = np.abs(new.get_layer("dw").kernel.numpy()).max(axis=(0, 2))
    d_in = np.abs(new.get_layer("d").kernel.numpy()).max(axis=(0, 2))
    np.testing.assert_allclose(c_out, dw, rtol=1e-5)
    np.testing.assert_allclose(dw, d_in, rtol=1e-5)


def test_equalized_across_a_prepared_ops_reshape():
    # keras.ops.reshape in a functional model: prepare_model makes it a layer CLE can follow.
    from aimet_tf.graph import prepare_model

    keras.utils.set_random_seed(55)
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(_C, 3, padding="same", activation="relu", name="c")(inp)
    out = L.Conv1D(3, 1, name="d")(keras.ops.reshape(x, (-1, 36, _C)))
    model = _randomize(prepare_model(keras.Model(inp, out)), seed=55)
    data = np.random.default_rng(56).normal(size=(8, 6, 6, 2)).astype(np.float32)
    new, report = equalize_model_with_report(model, tolerance=1e-10)
    assert ("c", "d") in [s.layers for s in report.equalized]
    assert _rel_diff(model.predict(data, verbose=0), new.predict(data, verbose=0)) <= 1e-5
    np.testing.assert_allclose(
        np.abs(new.get_layer("c").kernel.numpy()).max(axis=(0, 1, 2)),
        np.abs(new.get_layer("d").kernel.numpy()).max(axis=(0, 2)),
        rtol=1e-5,
    )


@pytest.mark.parametrize("target", [(72, _C // 2), (6, 12, _C // 2)], ids=["to_1d", "into_width"])
def test_channel_mixing_reshape_is_refused_with_the_reason(target):
    # Splitting the last axis of C into C/2: index j holds channel j at even positions and
    # channel j + C/2 at odd ones, so no per-channel scale of the consumer can undo the producer's.
    consumer = {2: L.Conv1D, 3: L.Conv2D}[len(target)](3, 1, name="d")
    model = _reshape_model(lambda x: consumer(L.Reshape(target, name="rs")(x)), seed=57)
    new, report = equalize_model_with_report(model)
    assert report.equalized == []
    reasons = {c.layer: c.reason for c in report.skipped}
    assert f"Reshape 'rs' mixes channels: its last axis goes from {_C} to {_C // 2}" in reasons["c"]
    assert "c: Reshape 'rs' mixes channels" in report.summary()
    np.testing.assert_array_equal(new.get_layer("c").kernel.numpy(), model.get_layer("c").kernel.numpy())
    np.testing.assert_array_equal(new.get_layer("d").kernel.numpy(), model.get_layer("d").kernel.numpy())


# -- models that need prepare_model ---------------------------------------------------------------


def _ops_model() -> keras.Model:
    """Conv -> BN -> ReLU, then keras.ops.reshape and ``x + y`` written directly (ops nodes)."""
    keras.utils.set_random_seed(61)
    inp = keras.Input((6, 6, 2))
    x = L.ReLU(name="r")(L.BatchNormalization(name="bn")(L.Conv2D(_C, 3, padding="same", name="c")(inp)))
    y = keras.ops.reshape(x, (-1, 36, _C))
    y = y + L.Conv1D(_C, 1, name="side")(y)
    return _randomize(keras.Model(inp, L.Conv1D(3, 1, name="d")(y), name="ops_model"), seed=61)


@pytest.mark.parametrize("fold", [True, False], ids=["with_bn_fold", "without_bn_fold"])
def test_unprepared_ops_nodes_are_refused_naming_them_and_the_fix(fold):
    with pytest.raises(
        ValueError,
        match=r"Model 'ops_model' must be prepared before cross-layer equalization\. Expected every computation a "
        r"Keras layer\. Received: ops node 'reshape\w*' \(Reshape\) is not a layer; ops node 'add\w*' \(Add\) is not a "
        r"layer\. Fix: model = aimet_tf\.graph\.prepare_model\(model\)",
    ):
        equalize_model(_ops_model(), fold_batch_norms=fold)


def test_unprepared_ops_node_inside_a_nested_model_is_refused():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, L.Dense(4, name="in_d")(inner_in * 2.0), name="inner")
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(2, name="out_d")(inner(L.Dense(4, name="a")(inp))), name="outer")
    with pytest.raises(ValueError, match=r"'outer' must be prepared.*in nested model 'inner': ops node 'multiply\w*'"):
        equalize_model(model)


def test_following_the_fix_equalizes_the_ops_model():
    from aimet_tf.graph import prepare_model

    model = _ops_model()
    prepared = prepare_model(model)
    data = np.random.default_rng(62).normal(size=(8, 6, 6, 2)).astype(np.float32)
    new, report = equalize_model_with_report(prepared, tolerance=1e-10)
    assert "bn" in {pair.batch_norm for pair in report.folded_batch_norms}
    assert _rel_diff(model.predict(data, verbose=0), new.predict(data, verbose=0)) <= 1e-5


def test_shared_layers_need_no_preparing_and_are_skipped():
    shared = L.Dense(4, name="shared")
    inp = keras.Input((4,))
    x = L.ReLU(name="r")(L.Dense(4, name="a")(inp))
    model = keras.Model(inp, L.Dense(2, name="b")(shared(shared(x))))
    new, report = equalize_model_with_report(model)
    assert "called 2 times (shared layer)" in {c.layer: c.reason for c in report.skipped}["shared"]
    data = np.random.default_rng(63).normal(size=(8, 4)).astype(np.float32)
    assert _rel_diff(model.predict(data, verbose=0), new.predict(data, verbose=0)) <= 1e-5
