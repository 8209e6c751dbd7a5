"""AIMET's Keras CLE examples step by step: auto stepwise, and manual with user-picked layers.

Written as AIMET user code (post_training_techniques_examples.py's shape): ReLU6 replaced, batch
norms folded in place, cross-layer scaling, then high-bias fold, each as its own call.
"""

import numpy as np

from aimet_common.defs import QuantScheme
from aimet_tensorflow.keras.batch_norm_fold import fold_all_batch_norms, fold_given_batch_norms
from aimet_tensorflow.keras.cross_layer_equalization import CrossLayerScaling, HighBiasFold
from aimet_tensorflow.keras.quantsim import QuantizationSimModel
from aimet_tensorflow.keras.utils.model_transform_utils import replace_relu6_with_relu
from aimet_tf.datasets import load_bundled_model, load_fashion_mnist

BATCH = 128


def predict(model, images):
    return np.concatenate([np.asarray(model(images[i:i + BATCH], training=False)) for i in range(0, len(images), BATCH)])


def sim_accuracy(model, calibration, images, labels):
    """W8A8 on AIMET's default config (per-tensor weights), as an AIMET user would score it."""
    sim = QuantizationSimModel(model, quant_scheme=QuantScheme.post_training_tf_enhanced, default_param_bw=8, default_output_bw=8)
    sim.compute_encodings(forward_pass_callback=lambda m, data: m(data, training=False), forward_pass_callback_args=calibration)
    return float(np.mean(np.argmax(predict(sim.model, images), 1) == labels))


def cross_layer_equalization_auto_stepwise(model, images):
    model_for_cle, _ = replace_relu6_with_relu(model)
    folded_pairs, model = fold_all_batch_norms(model_for_cle)
    bn_dict = {}
    for conv_or_linear, bn in folded_pairs:
        bn_dict[conv_or_linear] = bn
    cls_set_info_list = CrossLayerScaling.scale_model(model_for_cle)
    scaled = predict(model_for_cle, images)
    HighBiasFold.bias_fold(cls_set_info_list, bn_dict)
    return model_for_cle, cls_set_info_list, scaled


def cross_layer_equalization_manual(model):
    model_for_cle, _ = replace_relu6_with_relu(model)
    layer_pairs = [
        (model_for_cle.get_layer("stem_conv"), model_for_cle.get_layer("stem_bn"), True),
        (model_for_cle.get_layer("block1_dw"), model_for_cle.get_layer("block1_dw_bn"), True),
        (model_for_cle.get_layer("block1_pw"), model_for_cle.get_layer("block1_pw_bn"), True),
    ]
    fold_given_batch_norms(model_for_cle, layer_pairs=layer_pairs)
    consecutive_layer_list = [
        (model_for_cle.get_layer("stem_conv"), model_for_cle.get_layer("block1_dw"), model_for_cle.get_layer("block1_pw")),
    ]
    scaling_factor_list = CrossLayerScaling.scale_cls_sets(consecutive_layer_list)
    folded_pairs = [(conv, bn) for conv, bn, _ in layer_pairs]
    is_relu_activation_in_cls_sets = [(True, True)]
    cls_set_info_list = CrossLayerScaling.create_cls_set_info_list(
        consecutive_layer_list, scaling_factor_list, is_relu_activation_in_cls_sets
    )
    HighBiasFold.bias_fold(cls_set_info_list, dict(folded_pairs))
    return model_for_cle, scaling_factor_list


def kernel_ranges(layer, as_input):
    """Per-channel max |W|: output channels, or input channels (axis -2) with as_input."""
    kernel = np.abs(layer.kernel.numpy())
    if as_input or "depthwise" in type(layer).__name__.lower():
        return np.moveaxis(kernel, -2, 0).reshape(kernel.shape[-2], -1).max(axis=1)
    return kernel.reshape(-1, kernel.shape[-1]).max(axis=0)


def main(workdir):
    calibration = load_fashion_mnist("calibration")[0][:256]
    images, labels = load_fashion_mnist("test")
    images, labels = images[:1000], labels[:1000]
    relu_model, _ = replace_relu6_with_relu(load_bundled_model())  # the bundled model's ReLUs are ReLU6
    reference = predict(relu_model, images)
    _, folded = fold_all_batch_norms(load_bundled_model())

    auto, infos, scaled = cross_layer_equalization_auto_stepwise(load_bundled_model(), images)
    manual, factors = cross_layer_equalization_manual(load_bundled_model())
    stem, dw, pw = (manual.get_layer(n) for n in ("stem_conv", "block1_dw", "block1_pw"))
    return {
        "auto_sets": [[[p.layer1.name, p.layer2.name, p.relu_activation_between_layers] for p in info.cls_pair_info_list] for info in infos],
        "manual_factor_shapes": [[list(np.shape(f)) for f in pair] for pair in factors],
        "manual_ranges": [kernel_ranges(stem, False).tolist(), kernel_ranges(dw, False).tolist(), kernel_ranges(pw, True).tolist()],
        "reference": reference.tolist(),
        "auto_scaled": scaled.tolist(),
        "auto": predict(auto, images).tolist(),
        "manual": predict(manual, images).tolist(),
        "labels": labels.tolist(),
        "sim_folded": sim_accuracy(folded, calibration, images, labels),
        "sim_auto": sim_accuracy(auto, calibration, images, labels),
    }
