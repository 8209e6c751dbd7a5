"""AIMET's step-by-step CLE (CrossLayerScaling, HighBiasFold, ClsSetInfo) and in-place BN fold."""

import keras
import numpy as np
import pytest

from aimet_tf.keras.batch_norm_fold import fold_all_batch_norms, fold_given_batch_norms
from aimet_tf.keras.cross_layer_equalization import (
    ClsSetInfo,
    CrossLayerScaling,
    HighBiasFold,
    equalize_bn_folded_model,
)
from aimet_tf.ptq import equalize_model_with_report
from aimet_tf.testing.models import random_images, randomize_batch_norms
from tests.aimet_api import harness


def test_aimet_cle_stepwise_script(tmp_path):
    runs = harness.run_script("cle_stepwise", str(tmp_path))
    a, b = runs["imports_changed"], runs["unchanged"]
    assert a == b
    # scale_model found the bundled model's chains: the stem triple, then each block's dw -> pw.
    assert a["auto_sets"][0] == [["stem_conv", "block1_dw", True], ["block1_dw", "block1_pw", True]]
    assert ["block6_pw", "logits", True] in [pair for s in a["auto_sets"] for pair in s]
    assert a["manual_factor_shapes"] == [[[32], [32]]]
    # After scaling a triple, its three per-channel ranges agree.
    stem, dw, pw = (np.asarray(r) for r in a["manual_ranges"])
    np.testing.assert_allclose(stem, dw, rtol=1e-5)
    np.testing.assert_allclose(dw, pw, rtol=1e-5)
    reference = np.asarray(a["reference"])
    # Cross-layer scaling and BN folding in place keep the function (to float rounding).
    np.testing.assert_allclose(a["auto_scaled"], reference, atol=1e-4)
    np.testing.assert_allclose(a["manual"], reference, atol=1e-3)
    assert np.mean(np.argmax(a["auto"], 1) == np.argmax(reference, 1)) > 0.99
    assert abs(a["sim_auto"] - a["sim_folded"]) < 0.02


def _model(seed=0, big_beta=True):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(6, 3, name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="r2")(x)
    x = keras.layers.Conv2D(5, 1, name="pw")(x)
    x = keras.layers.BatchNormalization(name="bn3")(x)
    x = keras.layers.ReLU(name="r3")(x)
    x = keras.layers.Conv2D(4, 1, name="c4")(x)
    model = randomize_batch_norms(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)), seed=seed)
    if big_beta:  # betas well above 3|gamma|, so that high-bias folding has something to move
        for name in ("bn1", "bn2", "bn3"):
            bn = model.get_layer(name)
            bn.beta.assign(np.abs(bn.beta.numpy()) + 4.0 * np.abs(bn.gamma.numpy()) + 0.5)
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stepwise_equals_native_equalize_model(seed):
    """fold_all_batch_norms + scale_model + bias_fold give the weights of aimet_tf's one-call
    equalize_model (with high_bias_fold_padded=True, AIMET's rule), on random models."""
    model = _model(seed)
    native, report = equalize_model_with_report(model, high_bias_fold_padded=True)
    assert sum(r.folded for r in report.high_bias_folds) >= 2
    pairs, folded = fold_all_batch_norms(model)
    infos = CrossLayerScaling.scale_model(folded)
    HighBiasFold.bias_fold(infos, {layer: bn for layer, bn in pairs})
    for name in ("c1", "dw", "pw", "c4"):
        for got, want in zip(folded.get_layer(name).get_weights(), native.get_layer(name).get_weights()):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # model itself was folded in place and computes what the folded model computes.
    x = random_images(4, (10, 10, 3), seed=seed)
    np.testing.assert_allclose(model(x), folded(x), atol=1e-5)
    np.testing.assert_allclose(folded(x), native(x), rtol=1e-4, atol=1e-4)


def test_equalize_bn_folded_model_in_place():
    model = _model(3)
    x = random_images(4, (10, 10, 3), seed=3)
    pairs, folded = fold_all_batch_norms(model)
    before = folded.get_layer("c1").kernel.numpy().copy()
    equalize_bn_folded_model(folded, pairs)
    assert not np.allclose(before, folded.get_layer("c1").kernel.numpy())
    native = equalize_model_with_report(_model(3), high_bias_fold_padded=True)[0]
    np.testing.assert_allclose(folded(x), native(x), rtol=1e-4, atol=1e-4)


def test_scale_cls_sets_returns_aimet_shapes_and_balances():
    model = _model(4, big_beta=False)
    _, folded = fold_all_batch_norms(model)
    c1, dw, pw, c4 = (folded.get_layer(n) for n in ("c1", "dw", "pw", "c4"))
    x = random_images(4, (10, 10, 3), seed=4)
    y = np.asarray(folded(x))
    factors = CrossLayerScaling.scale_cls_sets([(c1, dw, pw), (pw, c4)])
    assert isinstance(factors[0], tuple) and len(factors[0]) == 2 and factors[0][0].shape == (6,)
    assert isinstance(factors[1], np.ndarray) and factors[1].shape == (5,)
    np.testing.assert_allclose(folded(x), y, rtol=1e-4, atol=1e-5)  # scaling keeps the function
    out_c1 = np.abs(c1.kernel.numpy()).reshape(-1, 6).max(0)
    in_dw = np.abs(dw.kernel.numpy()).reshape(-1, 6).max(0)
    np.testing.assert_allclose(out_c1, in_dw, rtol=1e-5)
    infos = CrossLayerScaling.create_cls_set_info_list([(c1, dw, pw), (pw, c4)], factors, [(True, True), True])
    assert [len(i.cls_pair_info_list) for i in infos] == [2, 1]
    assert infos[0].cls_pair_info_list[1].layer1 is dw and infos[1].cls_pair_info_list[0].layer2 is c4
    assert infos[1] == ClsSetInfo(ClsSetInfo.ClsSetLayerPairInfo(pw, c4, factors[1], True))


def test_step_by_step_refusals():
    model = _model(5, big_beta=False)
    _, folded = fold_all_batch_norms(model)
    c1, dw, pw, c4 = (folded.get_layer(n) for n in ("c1", "dw", "pw", "c4"))
    with pytest.raises(ValueError, match="has 6 output channels but 'c4' reads 5"):
        CrossLayerScaling.scale_cls_sets([(c1, c4)])
    with pytest.raises(ValueError, match="middle layer of a 3-layer CLS set to be depthwise"):
        CrossLayerScaling.scale_cls_sets([(c1, pw, c4)])
    with pytest.raises(ValueError, match="Expected Conv1D/2D/3D"):
        CrossLayerScaling.scale_cls_sets([(c1, folded.get_layer("r1"))])
    kernel = c1.kernel.numpy().copy()
    with pytest.raises(ValueError):  # the second set is bad: the first is not scaled either
        CrossLayerScaling.scale_cls_sets([(pw, c4), (c1, c4)])
    np.testing.assert_array_equal(kernel, c1.kernel.numpy())
    with pytest.raises(ValueError, match="one scale factor and one ReLU flag per CLS set"):
        CrossLayerScaling.create_cls_set_info_list([(pw, c4)], [], [True])


def test_fold_in_place_keeps_model_correct_and_shares_layers():
    model = _model(6)
    x = random_images(4, (10, 10, 3), seed=6)
    y = np.asarray(model(x))
    gamma = model.get_layer("bn1").gamma.numpy().copy()
    new = fold_given_batch_norms(model, [(model.get_layer("c1"), model.get_layer("bn1"), True), ("dw", "bn2")])
    assert [l.name for l in new.layers if isinstance(l, keras.layers.BatchNormalization)] == ["bn3"]
    assert new.get_layer("c1") is model.get_layer("c1")
    np.testing.assert_allclose(new(x), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model(x), y, rtol=1e-5, atol=1e-5)  # bn1/bn2 became identities
    np.testing.assert_array_equal(model.get_layer("bn1").original_gamma, gamma)


def test_fold_in_place_adds_bias_to_a_layer_without_one():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, use_bias=False, name="c")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = randomize_batch_norms(keras.Model(inputs, x), seed=7)
    x = random_images(3, (6, 6, 2), seed=7)
    y = np.asarray(model(x))
    pairs, new = fold_all_batch_norms(model)
    assert pairs[0][0].use_bias and pairs[0][0] is model.get_layer("c")
    np.testing.assert_allclose(new(x), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model(x), y, rtol=1e-5, atol=1e-5)
