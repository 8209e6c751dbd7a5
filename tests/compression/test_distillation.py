"""Layer-wise distillation after compression: pairs, the loss terms, training through plain fit."""

import keras
import numpy as np
import pytest

from aimet_tf.compression import compress_with_ratios
from aimet_tf.compression.distillation import DistillationModel, changed_layer_pairs
from aimet_tf.testing.models import random_images
from tests.compression.test_compressor import _model


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def test_pairs_follow_the_scheme_names():
    model = _model()
    x = random_images(16, (10, 10, 3))
    assert changed_layer_pairs(model, compress_with_ratios(model, "spatial_svd", {"c2": 0.5})) == [("c2", "c2_b")]
    assert changed_layer_pairs(model, compress_with_ratios(model, "tucker", {"c2": 0.5, "c3": 0.5})) == [("c2", "c2_c"), ("c3", "c3_c")]
    pruned = compress_with_ratios(model, "channel_pruning", {"c3": 0.5}, samples=x)
    # c3 keeps its output shape (its input channels went); c2 lost output channels, so it is not paired.
    assert changed_layer_pairs(model, pruned) == [("c3", "c3")]
    assert changed_layer_pairs(model, model) == []


def test_loss_terms_are_zero_for_an_identical_student_and_positive_otherwise():
    model = _model()
    x = random_images(8, (10, 10, 3))
    same = keras.models.clone_model(model)
    same.set_weights(model.get_weights())
    trainer = DistillationModel(same, model, [("c2", "c2"), ("fc", "fc")])
    out = trainer(x, training=True)
    np.testing.assert_allclose(out, model(x), rtol=1e-5, atol=1e-6)
    assert len(trainer.losses) == 2
    assert all(abs(float(v)) < 1e-6 for v in trainer.losses)

    student = compress_with_ratios(model, "spatial_svd", {"c2": 0.25})
    trainer = DistillationModel(student, model, temperature=3.0)
    trainer(x, training=True)
    layer_term, output_term = (float(v) for v in trainer.losses)
    s2 = keras.Model(student.inputs[0], student.get_layer("c2_b").output)(x)
    t2 = keras.Model(model.inputs[0], model.get_layer("c2").output)(x)
    want = np.mean((np.asarray(s2) - np.asarray(t2)) ** 2) / (np.mean(np.asarray(t2) ** 2) + 1e-8)
    np.testing.assert_allclose(layer_term, want, rtol=1e-4)
    pt = keras.ops.convert_to_numpy(keras.ops.softmax(model(x) / 3.0))
    ps = keras.ops.convert_to_numpy(keras.ops.softmax(student(x) / 3.0))
    kl = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1)) * 9.0
    np.testing.assert_allclose(output_term, kl, rtol=1e-4, atol=1e-7)
    # Inference adds no loss and returns the student's output.
    trainer(x, training=False)
    np.testing.assert_allclose(trainer.predict(x, verbose=0), student.predict(x, verbose=0), rtol=1e-6)


def test_fit_trains_only_the_student_towards_the_teacher():
    model = _model()
    x = random_images(64, (10, 10, 3), seed=1)
    student = compress_with_ratios(model, "weight_svd", {"fc": 0.2})
    student = compress_with_ratios(student, "spatial_svd", {"c2": 0.25})
    before_teacher = _weights(model)
    trainer = DistillationModel(student, model)
    assert {id(w) for w in trainer.trainable_weights} == {id(w) for w in student.trainable_weights}

    def gap():
        return float(np.mean((student.predict(x, verbose=0) - model.predict(x, verbose=0)) ** 2))

    start = gap()
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3), loss=None)  # distil from the teacher alone
    trainer.fit(x, epochs=30, batch_size=16, verbose=0)
    assert gap() < 0.5 * start
    for a, b in zip(before_teacher, _weights(model)):
        np.testing.assert_array_equal(a, b)


def test_bad_input_is_refused_with_the_reason():
    model = _model()
    student = compress_with_ratios(model, "spatial_svd", {"c2": 0.5})
    with pytest.raises(ValueError, match="temperature > 0"):
        DistillationModel(student, model, temperature=0)
    with pytest.raises(ValueError, match="layer_weight >= 0"):
        DistillationModel(student, model, layer_weight=-1)
    with pytest.raises(ValueError, match="student has no such layer"):
        DistillationModel(student, model, [("c2", "nope")])
    with pytest.raises(ValueError, match="outputs of one shape"):
        DistillationModel(student, model, [("c1", "c2_b")])
    with pytest.raises(ValueError, match="No layer pairs to distil"):
        DistillationModel(model, model)
    other = keras.Sequential([keras.Input((10, 10, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="same input and output shapes"):
        DistillationModel(other, model, layer_weight=0)
