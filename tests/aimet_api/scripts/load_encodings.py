"""AIMET's flow: export writes activations under AIMET Keras's TF tensor names, and a fresh sim
loads that file back."""

import json
import os

import keras
import numpy as np

from aimet_tensorflow.keras.quantsim import QuantizationSimModel
from aimet_common.defs import QuantScheme

def build_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="input_1")
    x = keras.layers.ReLU(name="re_lu")(keras.layers.Conv2D(4, 3, padding="same", name="conv2d")(inputs))
    y = keras.layers.Conv2D(4, 3, padding="same", activation="tanh", name="conv2d_1")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="dense")(x)
    return keras.Model(inputs, outputs)


def pass_calibration_data(model, args):
    model(args)


def new_sim(model):
    return QuantizationSimModel(model, quant_scheme=QuantScheme.post_training_tf_enhanced,
                                rounding_mode="nearest", default_output_bw=8, default_param_bw=8)


def main(workdir: str) -> dict:
    model = build_model()
    images = np.random.default_rng(1).uniform(-1, 1, (64, 8, 8, 3)).astype(np.float32)
    sim = new_sim(model)
    sim.compute_encodings(forward_pass_callback=pass_calibration_data, forward_pass_callback_args=images)
    sim.export(path=workdir, filename_prefix="ours")

    # The file is keyed as AIMET Keras keys it: activations by the TF tensor each layer ends in.
    encodings_file = os.path.join(workdir, "ours.encodings")
    with open(encodings_file) as f:
        written = json.load(f)

    loaded = new_sim(model)
    loaded.load_encodings_to_sim(encoding_file_path=encodings_file)
    return {
        "aimet_names": sorted(written["activation_encodings"]),
        "outputs_loaded": loaded.model(images).numpy().tolist(),
        "outputs_calibrated": sim.model(images).numpy().tolist(),
    }
