r"""Training step time of the BN-kept QAT flow, with and without the fused batch norm (issue 13, item 4).

One process, the bundled model, Fashion-MNIST train batches of 128, every model measured with
``bench_qat.measure_step_times`` (one untimed epoch each, then interleaved timed epochs, best kept):

* fp32: the bundled model (Keras 3 BatchNormalization, unfused);
* fp32_folded: the same after ``fold_all_batch_norms``;
* sim_keras_bn / sim_fused_bn: the BN-kept QAT flow - ``prepare_model_for_tflite(model,
  fold_batch_norms=False)``, a W8A8 range-learning sim with the tflite config, calibrated,
  ``prepare_sim_for_tflite`` - whose batch norms run Keras's own call (traced inside
  ``keras_batch_norm_only()``) or the fused kernel (the default);
* with --tfmot: TFMOT's float step (tf_keras, fused batch norms) from benchmarks/peers/tfmot_qat.py
  run right after, on the same timing batches (its fine-tune/QAT epochs cut to those batches).

    PYTHONPATH=. python benchmarks/bench_bn_step.py --tfmot
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from aimet_tf import datasets  # noqa: E402
from aimet_tf.export import TFLITE_CONFIG, prepare_model_for_tflite, prepare_sim_for_tflite  # noqa: E402
from aimet_tf.ptq import fold_all_batch_norms  # noqa: E402
from aimet_tf.quantization import QuantizationSimModel  # noqa: E402
from aimet_tf.quantization.fused_batch_norm import keras_batch_norm_only  # noqa: E402
from benchmarks import bench_qat  # noqa: E402


def _bn_kept_sim(model: keras.Model, x_cal: np.ndarray) -> keras.Model:
    sim = QuantizationSimModel(
        prepare_model_for_tflite(model, fold_batch_norms=False), quant_scheme="tf_enhanced_range_learning",
        default_param_bw=8, default_output_bw=8, config_file=TFLITE_CONFIG,
    )
    sim.compute_encodings(x_cal, batch_size=256)
    prepare_sim_for_tflite(sim)
    bench_qat._compile(sim.model)
    return sim.model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tfmot", action="store_true", help="Also run the TFMOT peer's float step.")
    parser.add_argument("--repeats", type=int, default=bench_qat.TIMING_REPEATS)
    args = parser.parse_args(argv)
    bench_qat.TIMING_REPEATS = args.repeats

    keras.utils.set_random_seed(bench_qat.SEED)
    model = datasets.load_bundled_model()
    x_train, y_train = datasets.load_fashion_mnist("train")
    x_cal, _ = datasets.load_fashion_mnist("calibration")
    order = np.random.default_rng(bench_qat.SEED).permutation(len(x_train))
    x_train, y_train = x_train[order], y_train[order]
    n = bench_qat.TIMING_BATCHES * bench_qat.BATCH

    fp32 = keras.models.clone_model(model)
    fp32.set_weights(model.get_weights())
    folded = keras.models.clone_model(fold_all_batch_norms(model)[1])
    models = {"fp32": fp32, "fp32_folded": folded}
    for m in models.values():
        bench_qat._compile(m)
    models["sim_keras_bn"] = _bn_kept_sim(model, x_cal)
    models["sim_fused_bn"] = _bn_kept_sim(model, x_cal)
    # Trace the Keras-BN sim's train function now, with the fused path off: measure_step_times
    # reuses it.
    subset = tf.data.Dataset.from_tensor_slices((x_train[:n], y_train[:n])).batch(bench_qat.BATCH)
    with keras_batch_norm_only():
        models["sim_keras_bn"].fit(subset, epochs=1, verbose=0)

    steps = bench_qat.measure_step_times(models, x_train, y_train)
    rows = [(name, wall, cpu) for name, (wall, cpu) in steps.items()]
    if args.tfmot:
        peer = bench_qat.run_tfmot_peer(model, x_train[:n], y_train[:n], x_train[:512], y_train[:512])
        if "error" in peer:
            print(f"TFMOT peer: {peer['error']}", file=sys.stderr)
        else:
            rows.append(("tfmot_fp32", peer["float_step_ms"], peer["float_step_cpu_ms"]))
            rows.append(("tfmot_qat", peer["qat_step_ms"], peer["qat_step_cpu_ms"]))
    refs = [name for name in ("tfmot_fp32", "fp32", "fp32_folded") if any(r[0] == name for r in rows)]
    ref_values = {name: next((w, c) for r, w, c in rows if r == name) for name in refs}
    header = "| model | wall ms/step | CPU ms/step | " + " | ".join(f"wall / {r} | CPU / {r}" for r in refs) + " |"
    print(header)
    print("|" + "---|" * (3 + 2 * len(refs)))
    for name, wall, cpu in rows:
        ratios = " | ".join(f"{wall / ref_values[r][0]:.2f}x | {cpu / ref_values[r][1]:.2f}x" for r in refs)
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {ratios} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
