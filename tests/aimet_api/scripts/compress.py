"""AIMET's Keras compression example (compression_code_examples.py's shape): greedy auto mode and
manual mode through ModelCompressor, on the bundled model with a real evaluation callback."""

from decimal import Decimal

import numpy as np

import aimet_common.defs as aimet_common_defs
from aimet_tensorflow.keras.compress import ModelCompressor
import aimet_tensorflow.defs as aimet_tensorflow_defs

from aimet_tf.datasets import load_bundled_model, load_fashion_mnist

BATCH = 100


def get_eval_func(images, labels):
    def func_wrapper(model, iterations):
        count = len(images) if not iterations else iterations * BATCH
        logits = model.predict(images[:count], batch_size=BATCH, verbose=0)
        return float(np.mean(np.argmax(logits, -1) == labels[:count]))

    return func_wrapper


def aimet_weight_svd_auto(model, evaluator):
    greedy_params = aimet_common_defs.GreedySelectionParameters(target_comp_ratio=Decimal(0.6), num_comp_ratio_candidates=4)
    modules_to_ignore = [model.get_layer("logits")]
    auto_params = aimet_tensorflow_defs.WeightSvdParameters.AutoModeParams(greedy_select_params=greedy_params,
                                                                           modules_to_ignore=modules_to_ignore)
    params = aimet_tensorflow_defs.WeightSvdParameters(input_op_names=model.inputs, output_op_names=model.outputs,
                                                       mode=aimet_tensorflow_defs.WeightSvdParameters.Mode.auto, params=auto_params)
    return ModelCompressor.compress_model(model=model, eval_callback=evaluator, eval_iterations=5,
                                          compress_scheme=aimet_common_defs.CompressionScheme.weight_svd,
                                          cost_metric=aimet_common_defs.CostMetric.mac, parameters=params)


def aimet_spatial_svd_manual(model, evaluator):
    pairs = [aimet_tensorflow_defs.ModuleCompRatioPair(model.get_layer("stem_conv"), 0.5)]
    manual_params = aimet_tensorflow_defs.SpatialSvdParameters.ManualModeParams(list_of_module_comp_ratio_pairs=pairs)
    params = aimet_tensorflow_defs.SpatialSvdParameters(input_op_names=model.inputs, output_op_names=model.outputs,
                                                        mode=aimet_tensorflow_defs.SpatialSvdParameters.Mode.manual,
                                                        params=manual_params)
    return ModelCompressor.compress_model(model, evaluator, None, aimet_common_defs.CompressionScheme.spatial_svd,
                                          aimet_common_defs.CostMetric.mac, params)


def main(workdir):
    images, labels = load_fashion_mnist("test")
    evaluator = get_eval_func(images[:1000], labels[:1000])
    model = load_bundled_model()
    auto_model, auto_stats = aimet_weight_svd_auto(model, evaluator)
    manual_model, manual_stats = aimet_spatial_svd_manual(model, evaluator)
    return {
        "auto_layers": sorted(l.name for l in auto_model.layers),
        "auto_ratios": {c.layer: c.ratio for c in auto_stats.per_layer},
        "auto_mac_ratio": auto_stats.mac_compression_ratio,
        "auto_accuracy": auto_stats.compressed_model_accuracy,
        "baseline_accuracy": auto_stats.baseline_model_accuracy,
        "manual_layers": [l.name for l in manual_model.layers if l.name.startswith("stem")],
        "manual_mac_ratio": manual_stats.mac_compression_ratio,
        "manual_accuracy": manual_stats.compressed_model_accuracy,
        "scores_file": sorted(__import__("os").listdir("data")),
        "text": str(auto_stats).splitlines()[0],
    }
