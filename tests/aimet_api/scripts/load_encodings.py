"""AIMET's flow: a sim loads an encodings file that uses AIMET Keras's TF tensor names."""

import json
import os

import keras
import numpy as np

from aimet_tensorflow.keras.quantsim import QuantizationSimModel
from aimet_common.defs import QuantScheme

# The tensor each layer ends in, as AIMET Keras names it in its encodings files.
TF_NAMES = {
    "input_1": "input_1:0",
    "re_lu": "re_lu/Relu:0",
    "conv2d_1": "conv2d_1/Tanh:0",
    "add": "add/add:0",
    "global_average_pooling2d": "global_average_pooling2d/Mean:0",
    "dense": "dense/Softmax:0",
}


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

    # The same encodings as AIMET Keras writes them: activations under TF tensor names.
    with open(os.path.join(workdir, "ours.encodings")) as f:
        ours = json.load(f)
    activations = {}
    for name, entries in ours["activation_encodings"].items():
        layer, tensor = name.split("/")
        activations[TF_NAMES["input_1"] if tensor == "input:0" else TF_NAMES[layer]] = entries
    aimet_file = os.path.join(workdir, "aimet.encodings")
    with open(aimet_file, "w") as f:
        json.dump({**ours, "activation_encodings": activations}, f)

    from_aimet = new_sim(model)
    from_aimet.load_encodings_to_sim(encoding_file_path=aimet_file)
    from_ours = new_sim(model)
    from_ours.load_encodings_to_sim(encoding_file_path=os.path.join(workdir, "ours.encodings"))
    return {
        "aimet_names": sorted(activations),
        "outputs_aimet_file": from_aimet.model(images).numpy().tolist(),
        "outputs_our_file": from_ours.model(images).numpy().tolist(),
        "outputs_calibrated": sim.model(images).numpy().tolist(),
    }
