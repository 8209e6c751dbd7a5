"""After QAT: the trained sim saves/reloads exactly, exports AIMET encodings and a TFLite file."""

import json

import keras
import numpy as np
import pytest

from aimet_tf import QuantizationSimModel
from aimet_tf.export import (
    TFLITE_CONFIG,
    export_tflite,
    prepare_model_for_tflite,
    prepare_sim_for_tflite,
    verify_tflite,
)
from aimet_tf.ptq import fold_all_batch_norms_to_scale
from aimet_tf.qat import FreezeBatchNormStats, FreezeQuantizerRanges, find_quantizers, reestimate_bn_stats
from aimet_tf.testing import models


def _trained_sim(scheme, config="htp", model=None, epochs=2, callbacks=(), before_training=None):
    x = models.random_images(48)
    y = np.random.default_rng(1).integers(0, 4, 48)
    sim = QuantizationSimModel(
        model or models.conv_bn_relu_model(), quant_scheme=scheme, default_param_bw=4,
        default_output_bw=8, config_file=config,
    )
    sim.compute_encodings(x)
    if before_training is not None:
        before_training(sim)
    initial = {n: q.encoding_max.numpy().copy() for n, q in find_quantizers(sim)}
    sim.model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    sim.model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return sim, initial


@pytest.mark.parametrize("scheme", ["tf_enhanced", "tf_range_learning"])
def test_trained_sim_saves_and_reloads_with_identical_outputs(scheme, tmp_path):
    sim, _ = _trained_sim(scheme, callbacks=[FreezeBatchNormStats(1), FreezeQuantizerRanges(1)])
    x = models.random_images(24, seed=11)
    path = tmp_path / "qat.keras"
    sim.model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), sim.model.predict(x, verbose=0))
    for (name, q), (_, r) in zip(find_quantizers(sim), find_quantizers(reloaded)):
        np.testing.assert_array_equal(r.encoding_max.numpy(), q.encoding_max.numpy(), err_msg=name)
        assert r.frozen == q.frozen and r.is_initialized
    # The frozen (inference-mode) BN configuration is part of the saved model.
    assert not reloaded.get_layer("bn1").layer.trainable


def test_exported_encodings_carry_the_learned_ranges(tmp_path):
    sim, initial = _trained_sim("tf_range_learning")
    paths = sim.export(tmp_path, "qat")
    doc = json.loads(open(paths["encodings"]).read())
    trained = {n: q.get_encoding() for n, q in find_quantizers(sim)}
    act = doc["activation_encodings"]["fc/BiasAdd:0"][0]
    assert act["max"] == pytest.approx(float(trained["fc/output:0"].max), rel=1e-6)
    assert act["max"] != pytest.approx(float(initial["fc/output:0"]), rel=1e-6)
    # A new sim on the exported (trained) float model + the encodings reproduces the trained sim.
    fresh = QuantizationSimModel(
        keras.models.load_model(paths["model"]), quant_scheme="tf", default_param_bw=4, config_file="htp"
    )
    fresh.load_encodings_to_sim(paths["encodings"])
    x = models.random_images(24, seed=12)
    np.testing.assert_array_equal(fresh.model.predict(x, verbose=0), sim.model.predict(x, verbose=0))


@pytest.mark.parametrize("prepare_first", [True, False])
def test_tflite_export_straight_from_the_trained_sim(tmp_path, prepare_first):
    # TFLite needs BN folded into the convolutions before the sim is built. Preparing the sim
    # before training makes QAT see TFLite's integer arithmetic; export prepares it otherwise.
    model = prepare_model_for_tflite(models.conv_bn_relu_model())
    sim, initial = _trained_sim(
        "tf_range_learning", config=TFLITE_CONFIG, model=model, epochs=1,
        before_training=prepare_sim_for_tflite if prepare_first else None,
    )
    assert any(
        not np.array_equal(q.encoding_max.numpy(), initial[n]) for n, q in find_quantizers(sim)
    )
    path = export_tflite(sim, tmp_path / "qat.tflite")
    # Inputs on the model input's grid (see tests/export/conftest.py: XNNPACK vs fake-quant
    # division differ in the last bit at .5 boundaries).
    first = sim.wrappers()[0].input_quantizers[0]
    x = first(models.random_images(32, seed=13)).numpy()
    report = verify_tflite(sim, path, x)
    assert report.within_one_step == 1.0, report.summary()
    assert report.top1_agreement >= 0.95, report.summary()


@pytest.mark.parametrize("prepare_first", [True, False])
def test_qat_with_batch_norms_then_fold_to_scale_then_tflite(tmp_path, prepare_first):
    # QAT with the batch norms in place (no quantizer inside Conv+BN+ReLU), BN re-estimation, then
    # the batch norms move into the weights and their grids; the result exports like any sim.
    model = prepare_model_for_tflite(models.conv_bn_relu_model(), fold_batch_norms=False)
    assert any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)
    sim, _ = _trained_sim(
        "tf_range_learning", config=TFLITE_CONFIG, model=model, epochs=1,
        before_training=prepare_sim_for_tflite if prepare_first else None,
    )
    assert sim.model.get_layer("c1").output_quantizers[0] is None  # inside the supergroup
    reestimate_bn_stats(sim, models.random_images(64, seed=3), bn_num_batches=4, batch_size=16)
    x = models.random_images(32, seed=13)
    before = sim.model.predict(x, verbose=0)
    pairs = fold_all_batch_norms_to_scale(sim)
    assert [(p.layer, p.batch_norm) for p in pairs] == [("c1", "bn1")]
    after = sim.model.predict(x, verbose=0)
    step = float(dict(sim.activation_quantizers())["fc/output:0"].scale_tensor().numpy())
    assert np.max(np.abs(after - before)) <= 1.01 * step
    # A prepared sim stays prepared: it already computes what the .tflite file will.
    assert (sim.model.get_layer("c1").requantizer is not None) == prepare_first
    path = export_tflite(sim, tmp_path / "qat_bn.tflite")
    first = sim.wrappers()[0].input_quantizers[0]
    report = verify_tflite(sim, path, first(x).numpy())
    assert report.within_one_step == 1.0, report.summary()
