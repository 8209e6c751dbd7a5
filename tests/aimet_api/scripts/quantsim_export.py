"""AIMET's Keras quantsim example: simulate, calibrate, evaluate, inspect quantizers, export.

Written as AIMET user code: only the two AIMET imports change when it runs on aimet_tf.
"""

import numpy as np

from aimet_tensorflow.keras.quantsim import QuantizationSimModel
from aimet_common.defs import QuantScheme

from aimet_tf.datasets import load_bundled_model, load_fashion_mnist

BATCH_SIZE = 64


def pass_calibration_data(model, args):
    """AIMET's forward-pass callback: runs the model on the calibration images."""
    images = args
    for start in range(0, len(images), BATCH_SIZE):
        model(images[start:start + BATCH_SIZE], training=False)


def accuracy(model, images, labels):
    logits = model.predict(images, batch_size=BATCH_SIZE, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def as_records(encoding):
    """A quantizer's ``encoding`` (one TfEncoding, or a list per channel) as plain dicts."""
    records = encoding if isinstance(encoding, list) else [encoding]
    return [
        {"min": e.min, "max": e.max, "delta": e.delta, "offset": e.offset, "bw": e.bw}
        for e in records
    ]


def activation_encodings(sim):
    found = {}
    for wrapper in sim.quant_wrappers():
        for index, quantizer in enumerate(wrapper.output_quantizers):
            if quantizer is not None and quantizer.is_enabled():
                found[f"{wrapper.name}/output:{index}"] = as_records(quantizer.encoding)
    return found


def main(workdir):
    model = load_bundled_model()
    calibration_images, _ = load_fashion_mnist("calibration")
    calibration_images = calibration_images[:256]
    test_images, test_labels = load_fashion_mnist("test")
    test_images, test_labels = test_images[:300], test_labels[:300]

    sim = QuantizationSimModel(model, quant_scheme=QuantScheme.post_training_tf_enhanced,
                               rounding_mode='nearest', default_output_bw=8, default_param_bw=8)
    sim.compute_encodings(forward_pass_callback=pass_calibration_data,
                          forward_pass_callback_args=calibration_images)
    quantized_accuracy = accuracy(sim.model, test_images, test_labels)

    wrapper_names = [wrapper.name for wrapper in sim.quant_wrappers()]
    stem = sim.get_quant_wrapper_for_layer_name("stem_conv")
    kernel_quantizer = stem.param_quantizers[0]
    before = sim.model.predict(test_images, verbose=0)
    kernel_quantizer.disable()
    disabled = sim.model.predict(test_images, verbose=0)
    disabled_flag = kernel_quantizer.is_enabled()
    kernel_quantizer.enable()
    restored = sim.model.predict(test_images, verbose=0)

    logits = sim.get_quant_wrapper_for_layer_name("logits")
    logits_output = logits.output_quantizers[0]

    sim.export(path=workdir, filename_prefix='model')

    # The percentile scheme at AIMET's 100th percentile keeps the observed min/max, as "tf" does.
    percentile_sim = QuantizationSimModel(model, quant_scheme=QuantScheme.post_training_percentile)
    percentile_sim.set_percentile_value(100)
    percentile_sim.compute_encodings(pass_calibration_data, calibration_images)
    tf_sim = QuantizationSimModel(model, quant_scheme=QuantScheme.post_training_tf)
    tf_sim.compute_encodings(pass_calibration_data, calibration_images)

    return {
        "float_accuracy": accuracy(model, test_images, test_labels),
        "quantized_accuracy": quantized_accuracy,
        "wrapper_names": wrapper_names,
        "kernel_name": stem.name + "/kernel:0",
        "kernel_encoding": as_records(kernel_quantizer.encoding),
        "kernel_is_symmetric": kernel_quantizer.is_symmetric,
        "kernel_bitwidth": kernel_quantizer.bitwidth,
        # AIMET's name of the tensor: the TF op a linear Dense with bias ends in.
        "logits_output_name": logits.name + "/BiasAdd:0",
        "logits_output_encoding": as_records(logits_output.encoding),
        "enabled_after_disable": disabled_flag,
        "disable_changed_by": float(np.max(np.abs(disabled - before))),
        "enable_restored_by": float(np.max(np.abs(restored - before))),
        "percentile_100_encodings": activation_encodings(percentile_sim),
        "tf_encodings": activation_encodings(tf_sim),
    }
