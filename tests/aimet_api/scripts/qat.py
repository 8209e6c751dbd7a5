"""AIMET's Keras QAT example: quantsim, compute_encodings, fine-tune sim.model with fit, export."""

import os

import keras
import numpy as np
import tensorflow as tf

from aimet_common.defs import QuantScheme
from aimet_tensorflow.keras.batch_norm_fold import fold_all_batch_norms
from aimet_tensorflow.keras.quantsim import QuantizationSimModel
from aimet_tf.datasets import load_bundled_model, load_fashion_mnist


def pass_calibration_data(sim_model, dataset):
    for images, _ in dataset:
        sim_model(images)


def evaluate(model, images, labels):
    logits = model.predict(images, batch_size=250, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def main(workdir):
    keras.utils.set_random_seed(0)
    x_train, y_train = load_fashion_mnist("calibration")
    x_test, y_test = load_fashion_mnist("test")
    x_test, y_test = x_test[:1000], y_test[:1000]
    calibration = tf.data.Dataset.from_tensor_slices((x_train[:500], y_train[:500])).batch(100)

    model = load_bundled_model()
    _, model = fold_all_batch_norms(model)
    sim = QuantizationSimModel(model, quant_scheme=QuantScheme.post_training_tf_enhanced, rounding_mode="nearest",
                               default_output_bw=8, default_param_bw=4)
    sim.compute_encodings(forward_pass_callback=pass_calibration_data, forward_pass_callback_args=calibration)
    accuracy_before = evaluate(sim.model, x_test, y_test)

    sim.model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = sim.model.fit(x_train, y_train, batch_size=100, epochs=1, shuffle=False, verbose=0)
    accuracy_after = evaluate(sim.model, x_test, y_test)

    sim.export(path=workdir, filename_prefix="model_after_qat")
    return {
        "accuracy_before": accuracy_before,
        "accuracy_after": accuracy_after,
        "train_loss": history.history["loss"],
        "files": sorted(os.listdir(workdir)),
        "workdir": workdir,
        "test_logits": sim.model.predict(x_test[:50], verbose=0).tolist(),
    }
