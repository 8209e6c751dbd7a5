r"""AdaRound: FP32 vs W4A8 nearest rounding vs W4A8 AdaRound on the Fashion-MNIST test split.

AdaRound learns, per weight, whether to round down or up so that each layer's output (not each
weight) stays close to the float model's. The script folds batch norms, AdaRounds every
Conv/Depthwise/Dense kernel, writes `{output_dir}/adaround.encodings` (AIMET 0.6.1 parameter
encodings), loads them into a fresh simulation with `set_and_freeze_param_encodings` and prints
the accuracy table.

Usage (from the repository root):
    python examples/adaround.py                                   # bundled model, 2,000 it/layer
    python examples/adaround.py --num_iterations=10000            # AIMET's default iterations
    python examples/adaround.py --config=default --per_channel    # per-channel 4-bit weights
    python examples/adaround.py --model=my_model.keras --param_bw=8
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
import keras  # noqa: E402

from aimet_tf import datasets, metrics  # noqa: E402
from aimet_tf.ptq import AdaroundParameters, apply_adaround, fold_batch_norms  # noqa: E402
from aimet_tf.quantization import QuantizationSimModel  # noqa: E402
from aimet_tf.quantization import config as hw_config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A .keras model taking [N, 28, 28, 1] images (default: the bundled model).")
flags.DEFINE_integer("num_iterations", 2000, "AdaRound iterations per layer (AIMET's default is 10,000).")
flags.DEFINE_integer("num_batches", 63, "Calibration batches of 32 images (63 = all 2,000 bundled ones).")
flags.DEFINE_integer("param_bw", 4, "Weight bitwidth.")
flags.DEFINE_integer("output_bw", 8, "Activation bitwidth.")
flags.DEFINE_string("quant_scheme", "auto", "Range scheme: auto (the default), tf, tf_enhanced or mse.")
flags.DEFINE_string("config", "default", "Hardware config: default, htp or a JSON path.")
flags.DEFINE_bool("per_channel", False, "Force per-channel weight encodings on top of --config.")
flags.DEFINE_string("output_dir", "/tmp/aimet_tf_adaround", "Where the encodings and the AdaRounded model go.")
flags.DEFINE_integer("batch_size", 256, "Batch size for prediction and calibration.")


def config_dict(name: str, per_channel: bool) -> dict:
    """The config JSON (a preset name or a file path), with per-channel weights if asked."""
    path = name if os.path.exists(name) else os.path.join(os.path.dirname(hw_config.__file__), "presets", f"{name}.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if per_channel:
        config.setdefault("defaults", {})["per_channel_quantization"] = "True"
    hw_config.load_config(config)  # fail early on a bad file
    return config


def main(argv):
    del argv
    model = datasets.load_bundled_model() if FLAGS.model is None else keras.saving.load_model(FLAGS.model)
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_cal, _ = datasets.load_fashion_mnist("calibration")
    config = config_dict(FLAGS.config, FLAGS.per_channel)

    def accuracy(m) -> float:
        return metrics.top1_accuracy(m.predict(x_test, batch_size=FLAGS.batch_size, verbose=0), y_test)

    def quantize(m, encodings=None) -> QuantizationSimModel:
        sim = QuantizationSimModel(
            m,
            quant_scheme=FLAGS.quant_scheme,
            default_param_bw=FLAGS.param_bw,
            default_output_bw=FLAGS.output_bw,
            config_file=config,
        )
        if encodings is not None:
            sim.set_and_freeze_param_encodings(encodings)
        sim.compute_encodings(x_cal, batch_size=FLAGS.batch_size)
        return sim

    folded = fold_batch_norms(model)
    rows = [("FP32 (BN folded)", accuracy(folded))]
    name = f"W{FLAGS.param_bw}A{FLAGS.output_bw} ({FLAGS.config}{', per-channel' if FLAGS.per_channel else ''}, {FLAGS.quant_scheme})"
    rows.append((f"{name}, nearest rounding", accuracy(quantize(folded).model)))

    params = AdaroundParameters(x_cal, num_batches=FLAGS.num_batches, default_num_iterations=FLAGS.num_iterations)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    t = time.perf_counter()
    adarounded = apply_adaround(
        model,
        params,
        path=FLAGS.output_dir,
        filename_prefix="adaround",
        default_param_bw=FLAGS.param_bw,
        default_quant_scheme=FLAGS.quant_scheme,
        config_file=config,
        default_output_bw=FLAGS.output_bw,
    )
    seconds = time.perf_counter() - t
    logging.info("apply_adaround took %.1f s", seconds)
    encodings = os.path.join(FLAGS.output_dir, "adaround.encodings")
    adarounded.save(os.path.join(FLAGS.output_dir, "adaround.keras"))
    rows.append((f"{name}, AdaRound {FLAGS.num_iterations:,} it/layer", accuracy(quantize(adarounded, encodings).model)))

    print(f"\n{'variant':72s} {'top-1 %':>8s}")
    for label, acc in rows:
        print(f"{label:72s} {100 * acc:8.2f}")
    print(
        f"\nAdaRound: {seconds:.1f} s on {len(x_cal) if FLAGS.num_batches * 32 >= len(x_cal) else FLAGS.num_batches * 32} "
        f"calibration images; scored on {len(x_test):,} test images. Encodings: {encodings}"
    )


if __name__ == "__main__":
    app.run(main)
