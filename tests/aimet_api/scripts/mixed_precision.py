"""AIMET's Keras AMP example: BN fold, a W8A8 sim, choose_mixed_precision with W8A8/W4A8 candidates."""

import numpy as np

from aimet_common.defs import QuantScheme, QuantizationDataType, CallbackFunc
from aimet_common.amp.utils import AMPSearchAlgo
from aimet_tensorflow.keras.batch_norm_fold import fold_all_batch_norms
from aimet_tensorflow.keras.quantsim import QuantizationSimModel
from aimet_tensorflow.keras.mixed_precision import choose_mixed_precision

from aimet_tf.datasets import load_bundled_model, load_fashion_mnist


def forward_pass_callback(model, dataset):
    for start in range(0, len(dataset), 128):
        model(dataset[start:start + 128], training=False)


def eval_callback(model, data):
    images, labels = data
    return float(np.mean(np.argmax(model.predict(images, batch_size=250, verbose=0), -1) == labels))


def main(workdir):
    calibration, calibration_labels = load_fashion_mnist("calibration")
    model = load_bundled_model()
    _, model = fold_all_batch_norms(model)
    sim = QuantizationSimModel(model, quant_scheme=QuantScheme.post_training_tf_enhanced, default_param_bw=8,
                               default_output_bw=8, config_file=None)
    forward_pass_callback_fn = CallbackFunc(forward_pass_callback, func_callback_args=calibration[:500])
    sim.compute_encodings(forward_pass_callback_fn.func, forward_pass_callback_fn.func_callback_args)
    phase1 = CallbackFunc(eval_callback, func_callback_args=(calibration[1000:1300], calibration_labels[1000:1300]))
    phase2 = CallbackFunc(eval_callback, func_callback_args=(calibration[1000:2000], calibration_labels[1000:2000]))
    candidates = [((8, QuantizationDataType.int), (8, QuantizationDataType.int)),
                  ((8, QuantizationDataType.int), (4, QuantizationDataType.int))]
    pareto_front_list = choose_mixed_precision(sim, candidates, eval_callback_for_phase1=phase1,
                                               eval_callback_for_phase2=phase2, allowed_accuracy_drop=0.01,
                                               results_dir=workdir, clean_start=True,
                                               forward_pass_callback=forward_pass_callback_fn,
                                               amp_search_algo=AMPSearchAlgo.Binary, phase1_optimize=True)
    sim.export(path=workdir, filename_prefix="mixed_precision")
    import json, os

    with open(os.path.join(workdir, "mixed_precision.encodings")) as f:
        encodings = json.load(f)
    return {
        "pareto": [(cost, score, None if group is None else group.name,
                    None if candidate is None else [candidate[0][0], candidate[1][0]])
                   for cost, score, group, candidate in pareto_front_list],
        "param_bitwidths": sorted({e[0]["bitwidth"] for e in encodings["param_encodings"].values()}),
        "accuracy": eval_callback(sim.model, (calibration[1000:2000], calibration_labels[1000:2000])),
        "files": sorted(os.listdir(workdir)),
    }
