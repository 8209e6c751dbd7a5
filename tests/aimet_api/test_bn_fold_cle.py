"""AIMET's BN fold / CLE contracts: return orders, pair shapes, fold_given_batch_norms."""

import keras
import numpy as np
import pytest

from aimet_tf.keras import batch_norm_fold as aimet_bnf
from aimet_tf.ptq import fold_all_batch_norms, fold_given_batch_norms
from aimet_tf.testing.models import conv_bn_relu_model, random_images, randomize_batch_norms
from tests.aimet_api import harness


def test_aimet_bn_fold_cle_script(tmp_path):
    runs = harness.run_script("bn_fold_cle", str(tmp_path))
    a, b = runs["imports_changed"], runs["unchanged"]
    assert a["pairs"] == b["pairs"] and a["sim"] == b["sim"]
    assert a["pairs"] and all(t[1] == "BatchNormalization" for t in a["pair_types"])
    reference = np.asarray(a["float"])
    np.testing.assert_allclose(a["folded"], reference, rtol=1e-4, atol=1e-4)
    # CLE changes the function only through ReLU6 -> ReLU and high-bias folds: same predictions.
    assert np.mean(np.argmax(a["cle"], 1) == np.argmax(reference, 1)) > 0.98
    assert np.mean(np.argmax(a["sim"], 1) == np.argmax(reference, 1)) > 0.95


def _bn_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(4, 1, name="c2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.Flatten(name="f")(x)
    x = keras.layers.Dense(3, name="d")(x)
    return randomize_batch_norms(keras.Model(inputs, x), seed=1)


def test_native_and_aimet_fold_all_return_pairs_first():
    model = _bn_model()
    pairs, folded = fold_all_batch_norms(model)
    assert [(p.layer, p.batch_norm) for p in pairs] == [("c1", "bn1"), ("c2", "bn2")]
    assert isinstance(folded, keras.Model)
    aimet_pairs, aimet_folded = aimet_bnf.fold_all_batch_norms(model)
    assert [(l.name, bn.name) for l, bn in aimet_pairs] == [("c1", "bn1"), ("c2", "bn2")]
    assert aimet_pairs[0][0] is aimet_folded.get_layer("c1") and aimet_pairs[0][1] is model.get_layer("bn1")
    x = random_images(4, (8, 8, 3), seed=0)
    np.testing.assert_allclose(aimet_folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_fold_given_batch_norms_folds_only_those():
    model = _bn_model()
    x = random_images(4, (8, 8, 3), seed=0)
    folded = fold_given_batch_norms(model, [(model.get_layer("c2"), model.get_layer("bn2"))])
    names = [l.name for l in folded.layers]
    assert "bn1" in names and "bn2" not in names
    np.testing.assert_allclose(folded(x), model(x), rtol=1e-4, atol=1e-4)
    by_name = fold_given_batch_norms(model, [("c1", "bn1"), ("c2", "bn2")])
    assert not [l for l in by_name.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert "bn1" in [l.name for l in model.layers]  # the input model is untouched


def test_fold_given_batch_norms_refusals():
    model = _bn_model()
    with pytest.raises(ValueError, match="folds after its input layer 'c1', not with 'c2'"):
        fold_given_batch_norms(model, [("c2", "bn1")])
    with pytest.raises(ValueError, match="has no top-level layer 'nope'"):
        fold_given_batch_norms(model, [("nope", "bn1")])
    with pytest.raises(ValueError, match="given twice"):
        fold_given_batch_norms(model, [("c1", "bn1"), ("c1", "bn1")])
    with pytest.raises(TypeError, match="Expected each pair"):
        fold_given_batch_norms(model, ["c1"])
    with pytest.raises(ValueError, match="'r1' is not a BatchNormalization layer"):
        fold_given_batch_norms(model, [("c1", "r1")])


def test_replace_relu6_with_relu_every_form():
    from aimet_tf.keras.utils.model_transform_utils import replace_relu6_with_relu

    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, activation="relu6", name="c")(inputs)
    x = keras.layers.ReLU(max_value=6.0, name="r6")(x)
    x = keras.layers.Activation("relu6", name="a6")(x)
    x = keras.layers.ReLU(max_value=4.0, name="r4")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="relu6", name="d")(keras.layers.Flatten()(x)))
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([w * 30 for w in layer.get_weights()])  # outputs well above 6
    new, changes = replace_relu6_with_relu(model, remain_fusing=True)
    assert sorted(changes) == ["a6", "c", "d", "r6"]
    assert new.get_layer("r6").max_value is None
    assert new.get_layer("c").activation.__name__ == "relu" and new.get_layer("d").activation.__name__ == "relu"
    assert new.get_layer("a6").activation.__name__ == "relu"
    assert float(new.get_layer("r4").max_value) == 4.0  # not a ReLU6: unchanged
    assert model.get_layer("r6").max_value is not None  # the input model is untouched
    x = random_images(3, (6, 6, 2), seed=1)
    assert np.max(model(x)) <= 6.0 and np.max(new(x)) > 6.0
    np.testing.assert_array_equal(new.get_layer("c").kernel.numpy(), model.get_layer("c").kernel.numpy())
    # AIMET's default remain_fusing=False: a fused relu6 becomes a linear layer + a ReLU layer.
    split, changes = replace_relu6_with_relu(model)
    assert split.get_layer("c").activation.__name__ == "linear" and split.get_layer("c_relu").activation.__name__ == "relu"
    assert split.get_layer("d").activation.__name__ == "linear" and "d_relu" in changes["d"]
    np.testing.assert_allclose(split(x), new(x), rtol=1e-6)
