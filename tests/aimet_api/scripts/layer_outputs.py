"""AIMET's layer-output example: FP32 and sim layer outputs of the same inputs, saved for comparison."""

import os

import numpy as np
import tensorflow as tf

from aimet_common.defs import QuantScheme
from aimet_tensorflow.keras.layer_output_utils import LayerOutputUtil
from aimet_tensorflow.keras.quantsim import QuantizationSimModel
from aimet_tf.testing.models import conv_bn_relu_model, random_images


def pass_calibration_data(model, args):
    for batch in args:
        model(batch)


def main(workdir):
    model = conv_bn_relu_model(input_shape=(16, 16, 3), classes=4, seed=3)
    images = random_images(24, (16, 16, 3), seed=5)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(8)

    sim = QuantizationSimModel(model, quant_scheme=QuantScheme.post_training_tf, default_output_bw=8, default_param_bw=8)
    sim.compute_encodings(forward_pass_callback=pass_calibration_data, forward_pass_callback_args=dataset)

    fp32_dir = os.path.join(workdir, "fp32_layer_outputs")
    sim_dir = os.path.join(workdir, "quantsim_layer_outputs")
    fp32_layer_output_util = LayerOutputUtil(model=model, save_dir=fp32_dir)
    sim_layer_output_util = LayerOutputUtil(model=sim.model, save_dir=sim_dir)
    for input_batch in dataset.take(2):
        fp32_layer_output_util.generate_layer_outputs(input_batch)
        sim_layer_output_util.generate_layer_outputs(input_batch)

    files = {
        name: sorted(os.listdir(os.path.join(folder, "outputs", "layer_outputs_0")))
        for name, folder in (("fp32", fp32_dir), ("sim", sim_dir))
    }
    final = "outputs/layer_outputs_15/" + sorted(os.listdir(os.path.join(fp32_dir, "outputs", "layer_outputs_15")))[0]
    return {
        "files": files,
        "inputs": sorted(os.listdir(os.path.join(fp32_dir, "inputs"))),
        "fp32_dir": fp32_dir,
        "sim_dir": sim_dir,
        "sim_logits": np.asarray(sim.model(images[:16])).tolist(),
        "fp32_logits": np.asarray(model(images[:16])).tolist(),
        "some_file": final,
    }
