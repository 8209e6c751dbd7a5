r"""QuantAnalyzer on the bundled Fashion-MNIST CNN: where does quantization cost accuracy?

Writes a results folder (JSON + PNG + self-contained HTML per result, ``index.html`` linking them):
model sensitivity (weights vs activations), per-layer sensitivity (only this layer quantized / all
but this layer), encoding min/max, activation and weight histograms with the encodings marked,
per-channel kernel ranges and, unless ``--mse_batches=0``, per-layer MSE against FP32.

Usage (from the repository root):
    python examples/quant_analyzer.py                            # W8A8, 1000 test images
    python examples/quant_analyzer.py --param_bw=4 --results_dir=/tmp/qa
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from aimet_tf import datasets, metrics  # noqa: E402
from aimet_tf.analysis.quant_analyzer import QuantAnalyzer  # noqa: E402
from aimet_tf.common.defs import CallbackFunc  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("results_dir", "./quant_analyzer_results", "Folder the results are written to.")
flags.DEFINE_integer("param_bw", 8, "Weight bitwidth.")
flags.DEFINE_integer("output_bw", 8, "Activation bitwidth.")
flags.DEFINE_string("quant_scheme", "tf_enhanced", "Range scheme: tf, tf_enhanced or percentile.")
flags.DEFINE_integer("calibration_images", 256, "Calibration images for compute_encodings.")
flags.DEFINE_integer("eval_images", 1000, "Test images per evaluation (one evaluation per layer and mode).")
flags.DEFINE_integer("mse_batches", 4, "Batches of 32 calibration images for the per-layer MSE (0: off).")
flags.DEFINE_integer("batch_size", 250, "Batch size for prediction and calibration.")


def main(argv):
    del argv
    model = datasets.load_bundled_model()
    x_cal, _ = datasets.load_fashion_mnist("calibration")
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_cal = x_cal[: FLAGS.calibration_images]
    x_test, y_test = x_test[: FLAGS.eval_images], y_test[: FLAGS.eval_images]

    def forward_pass(m, images):
        m.predict(images, batch_size=FLAGS.batch_size, verbose=0)

    def accuracy(m, data):
        images, labels = data
        return metrics.top1_accuracy(m.predict(images, batch_size=FLAGS.batch_size, verbose=0), labels)

    analyzer = QuantAnalyzer(model, CallbackFunc(forward_pass, x_cal), CallbackFunc(accuracy, (x_test, y_test)))
    if FLAGS.mse_batches:
        analyzer.enable_per_layer_mse_loss(x_cal, FLAGS.mse_batches)
    start = time.time()
    results = analyzer.analyze(quant_scheme=FLAGS.quant_scheme, default_param_bw=FLAGS.param_bw,
                               default_output_bw=FLAGS.output_bw, results_dir=FLAGS.results_dir)
    print(f"W{FLAGS.param_bw}A{FLAGS.output_bw} {FLAGS.quant_scheme}, {len(x_test)} test images, "
          f"{time.time() - start:.1f} s")
    for name, score in results["model_sensitivity"].items():
        print(f"{name:18s} {100 * score:6.2f} %")
    worst = sorted(results["per_layer"]["quant_enabled"].items(), key=lambda item: item[1])[:3]
    print("most sensitive layers (only that layer quantized): "
          + ", ".join(f"{n} {100 * s:.2f}%" for n, s in worst))
    print(f"results: {os.path.join(FLAGS.results_dir, 'index.html')}")


if __name__ == "__main__":
    app.run(main)
