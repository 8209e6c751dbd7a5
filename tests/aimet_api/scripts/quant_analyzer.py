"""AIMET's Keras QuantAnalyzer example: forward-pass and eval callbacks, per-layer MSE, analyze."""

import numpy as np

from aimet_common.defs import QuantScheme
from aimet_common.utils import CallbackFunc
from aimet_tensorflow.keras.quant_analyzer import QuantAnalyzer

from aimet_tf.datasets import load_bundled_model, load_fashion_mnist


def forward_pass_callback(model, dataset):
    for start in range(0, len(dataset), 128):
        model(dataset[start:start + 128], training=False)


def eval_callback(model, data):
    images, labels = data
    return float(np.mean(np.argmax(model.predict(images, batch_size=250, verbose=0), -1) == labels))


def main(workdir):
    calibration, _ = load_fashion_mnist("calibration")
    images, labels = load_fashion_mnist("test")
    model = load_bundled_model()
    forward_pass_callback_fn = CallbackFunc(forward_pass_callback, func_callback_args=calibration[:128])
    eval_callback_fn = CallbackFunc(eval_callback, func_callback_args=(images[:250], labels[:250]))
    quant_analyzer = QuantAnalyzer(model, forward_pass_callback=forward_pass_callback_fn, eval_callback=eval_callback_fn)
    quant_analyzer.enable_per_layer_mse_loss(unlabeled_dataset=calibration[:64], num_batches=2)
    returned = quant_analyzer.analyze(quant_scheme=QuantScheme.post_training_tf_enhanced, default_param_bw=4, default_output_bw=8,
                           config_file=None, results_dir=workdir)
    import json, os

    def read(name):
        with open(os.path.join(workdir, name)) as f:
            return json.load(f)

    return {
        "returned": returned,
        "files": sorted(f for f in os.listdir(workdir)),
        "sensitivity": read("model_sensitivity.json"),
        "enabled": read("per_layer_quant_enabled.json"),
        "mse": read("per_layer_mse_loss.json"),
    }
