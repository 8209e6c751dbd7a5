"""AIMET's Keras AutoQuant v2 example: baseline with run_inference, AdaRound settings, optimize.

Written as AIMET user code: the data set is a tf.data.Dataset of unlabeled image batches and the
evaluation callback takes the model only.
"""

import numpy as np
import tensorflow as tf

from aimet_tensorflow.keras.adaround_weight import AdaroundParameters
from aimet_tensorflow.keras.auto_quant_v2 import AutoQuant

from aimet_tf.datasets import load_bundled_model, load_fashion_mnist

BATCH_SIZE = 64


def main(workdir):
    calibration, _ = load_fashion_mnist("calibration")
    images, labels = load_fashion_mnist("test")
    images, labels = images[:1000], labels[:1000]
    unlabeled_dataset = tf.data.Dataset.from_tensor_slices(calibration[:256]).batch(BATCH_SIZE)

    def eval_callback(model):
        logits = model.predict(images, batch_size=250, verbose=0)
        return float(np.mean(np.argmax(logits, -1) == labels))

    model = load_bundled_model()
    auto_quant = AutoQuant(model, eval_callback=eval_callback, dataset=unlabeled_dataset, param_bw=4, output_bw=8,
                           config_file="tflite", results_dir=workdir, cache_id="example")
    sim, initial_accuracy = auto_quant.run_inference()
    adaround_params = AdaroundParameters(unlabeled_dataset, num_batches=4, default_num_iterations=100)
    auto_quant.set_adaround_params(adaround_params)
    best_model, optimized_accuracy, encoding_path = auto_quant.optimize(allowed_accuracy_drop=0.005)
    return {
        "fp32": eval_callback(model),
        "initial": initial_accuracy,
        "optimized": optimized_accuracy,
        "best_model_score": eval_callback(best_model),
        "encodings": encoding_path.split("/")[-1],
        "steps": [(s.name, s.kept) for s in auto_quant.result.steps],
    }
