"""AIMET's Keras AdaRound example: AdaRound the weights, then a sim with those encodings frozen."""

import os

import numpy as np
import tensorflow as tf

from aimet_common.defs import QuantScheme
from aimet_tensorflow.keras.adaround_weight import Adaround, AdaroundParameters
from aimet_tensorflow.keras.batch_norm_fold import fold_all_batch_norms
from aimet_tensorflow.keras.quantsim import QuantizationSimModel
from aimet_tf.testing.models import conv_bn_relu_model, random_images


def pass_calibration_data(sim_model, dataset):
    for batch in dataset:
        sim_model(batch)


def main(workdir):
    model = conv_bn_relu_model(input_shape=(16, 16, 3), classes=4, seed=2)
    images = random_images(128, (16, 16, 3), seed=7)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(32)
    _, model = fold_all_batch_norms(model)

    params = AdaroundParameters(data_set=dataset, num_batches=4, default_num_iterations=60)
    ada_model = Adaround.apply_adaround(model, params, path=workdir, filename_prefix="dummy", default_param_bw=4,
                                        default_quant_scheme=QuantScheme.post_training_tf_enhanced)

    sim = QuantizationSimModel(ada_model, quant_scheme=QuantScheme.post_training_tf_enhanced, default_param_bw=4,
                               default_output_bw=8)
    sim.set_and_freeze_param_encodings(encoding_path=os.path.join(workdir, "dummy.encodings"))
    sim.compute_encodings(forward_pass_callback=pass_calibration_data, forward_pass_callback_args=dataset)
    kernels = {}
    for wrapper in sim.quant_wrappers():
        quantizer = wrapper.param_quantizers[0] if wrapper.param_quantizers else None
        if quantizer is not None and quantizer.is_enabled():
            enc = quantizer.encoding
            kernels[wrapper.name] = {"delta": float(enc.delta), "offset": float(enc.offset),
                                     "kernel": wrapper._layer_to_wrap.kernel.numpy().ravel().tolist()}
    return {
        "files": sorted(os.listdir(workdir)),
        "kernels": kernels,
        "outputs": np.asarray(sim.model(images[:8])).tolist(),
        "workdir": workdir,
        "model_type": type(ada_model).__name__,
    }
