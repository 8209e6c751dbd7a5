"""AIMET's Keras range-learning QAT with BN re-estimation example: train, re-estimate BN, fold to scale, export."""

import os

import keras
import numpy as np
import tensorflow as tf

from aimet_common.defs import QuantScheme
from aimet_tensorflow.keras.batch_norm_fold import fold_all_batch_norms_to_scale
from aimet_tensorflow.keras.bn_reestimation import reestimate_bn_stats
from aimet_tensorflow.keras.quantsim import QuantizationSimModel
from aimet_tf.testing.models import conv_bn_relu_model, random_images


def pass_calibration_data(sim_model, dataset):
    for images, _ in dataset:
        sim_model(images)


def bn_stats(model):
    stats = {}
    for layer in model.layers:
        layer = getattr(layer, "_layer_to_wrap", layer)  # AIMET's wrappers hold the layer here
        if isinstance(layer, keras.layers.BatchNormalization):
            stats[layer.name] = (layer.moving_mean.numpy().tolist(), layer.moving_variance.numpy().tolist())
    return stats


def main(workdir):
    keras.utils.set_random_seed(0)
    model = conv_bn_relu_model(input_shape=(16, 16, 3), classes=4, seed=4)
    images = random_images(64, (16, 16, 3), seed=8)
    labels = np.argmax(np.asarray(model(images)), axis=1)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)

    sim = QuantizationSimModel(model, quant_scheme=QuantScheme.training_range_learning_with_tf_init,
                               default_param_bw=8, default_output_bw=8)
    sim.compute_encodings(forward_pass_callback=pass_calibration_data, forward_pass_callback_args=dataset)
    sim.model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sim.model.fit(dataset, epochs=1, verbose=0)

    before = bn_stats(sim.model)
    handle = reestimate_bn_stats(sim.model, bn_re_estimation_dataset=dataset.map(lambda x, y: x), bn_num_batches=2)
    reestimated = bn_stats(sim.model)
    handle.remove()
    restored = bn_stats(sim.model)
    reestimate_bn_stats(sim.model, bn_re_estimation_dataset=dataset.map(lambda x, y: x), bn_num_batches=2)
    outputs_before_fold = np.asarray(sim.model(images[:8]))
    fold_all_batch_norms_to_scale(sim)
    outputs_after_fold = np.asarray(sim.model(images[:8]))
    sim.export(path=workdir, filename_prefix="qat_bn_reestimated", convert_to_pb=False)
    return {
        "before": before,
        "reestimated": reestimated,
        "restored": restored,
        "handle_type": type(handle).__name__,
        "outputs_before_fold": outputs_before_fold.tolist(),
        "outputs_after_fold": outputs_after_fold.tolist(),
        "files": sorted(os.listdir(workdir)),
        "layers_after_fold": [type(getattr(l, "_layer_to_wrap", l)).__name__ for l in sim.model.layers],
    }
