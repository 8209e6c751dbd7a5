"""AIMET's Keras BN-fold + CLE example: fold, equalize, then W8A8 quantsim."""

import numpy as np

from aimet_common.defs import QuantScheme
from aimet_tensorflow.keras.batch_norm_fold import fold_all_batch_norms
from aimet_tensorflow.keras.cross_layer_equalization import equalize_model
from aimet_tensorflow.keras.model_preparer import prepare_model
from aimet_tensorflow.keras.quantsim import QuantizationSimModel
from aimet_tf.datasets import load_bundled_model, load_fashion_mnist


def main(workdir):
    x, _ = load_fashion_mnist("calibration")
    images = x[:256]
    model = prepare_model(load_bundled_model())
    pairs, folded = fold_all_batch_norms(model)
    cle_model = equalize_model(folded)

    sim = QuantizationSimModel(cle_model, quant_scheme=QuantScheme.post_training_tf, default_param_bw=8, default_output_bw=8)
    sim.compute_encodings(forward_pass_callback=lambda m, data: m(data), forward_pass_callback_args=images)
    return {
        "pairs": [(layer.name, bn.name) for layer, bn in pairs],
        "pair_types": sorted({(type(layer).__name__, type(bn).__name__) for layer, bn in pairs}),
        "float": np.asarray(model(images)).tolist(),
        "folded": np.asarray(folded(images)).tolist(),
        "cle": np.asarray(cle_model(images)).tolist(),
        "sim": np.asarray(sim.model(images)).tolist(),
    }
