r"""Cross-layer equalization: FP32 vs W8A8 per-tensor without CLE / with CLE / with CLE + bias correction.

Per-tensor weight quantization (AIMET's "default" config) shares one scale across all channels of
a weight tensor; CLE rescales consecutive layers so their channel ranges match first. The script
prints what CLE did (pairs, triples, skipped candidates and why, ReLU6 replacements, high-bias
folds) and the accuracy table.

Usage (from the repository root):
    python examples/cle.py                                  # bundled Fashion-MNIST CNN, 10k test
    python examples/cle.py --mltk_model=vww_mobilenetv1     # MLTK model on real inputs (shipped in
                                                            # third_party/mltk)
    python examples/cle.py --param_bw=4 --quant_scheme=tf_enhanced
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
import numpy as np  # noqa: E402

from aimet_tf import datasets, metrics  # noqa: E402
from aimet_tf.ptq import correct_bias, equalize_model_with_report  # noqa: E402
from aimet_tf.ptq.batch_norm_fold import fold_batch_norms  # noqa: E402
from aimet_tf.quantization import QuantizationSimModel  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "mltk_model", None, "An MLTK model name (e.g. vww_mobilenetv1, ds_cnn) instead of the bundled model."
)
flags.DEFINE_integer("param_bw", 8, "Weight bitwidth.")
flags.DEFINE_integer("output_bw", 8, "Activation bitwidth.")
flags.DEFINE_string("quant_scheme", "tf", "Range scheme: tf, tf_enhanced or percentile.")
flags.DEFINE_string("config", "default", "Hardware config ('default' = per-tensor weights).")
flags.DEFINE_bool("bias_correction", True, "Also run empirical bias correction after CLE.")
flags.DEFINE_integer("bias_correction_batches", 16, "Calibration batches (of 32) for bias correction.")
flags.DEFINE_integer("batch_size", 128, "Batch size for prediction and calibration.")


def load(mltk_model: str | None):
    """(model, calibration inputs, evaluation inputs, evaluation labels or None, description)."""
    if mltk_model is None:
        x_test, y_test = datasets.load_fashion_mnist("test")
        x_cal, _ = datasets.load_fashion_mnist("calibration")
        return datasets.load_bundled_model(), x_cal, x_test, y_test, "bundled Fashion-MNIST CNN"
    from aimet_tf.testing.mltk_models import load_mltk_model
    from aimet_tf.testing.real_inputs import real_inputs

    x = real_inputs(mltk_model)
    # Calibrate on even indices, score on odd ones: calibration never sees a scored input.
    return load_mltk_model(mltk_model).keras_model, x[0::2], x[1::2], None, f"MLTK {mltk_model}"


def main(argv):
    del argv
    model, x_cal, x_eval, y_eval, what = load(FLAGS.mltk_model)
    bs = FLAGS.batch_size

    def predict(m):
        return m.predict(x_eval, batch_size=bs, verbose=0)

    def quantize(m):
        sim = QuantizationSimModel(
            m,
            quant_scheme=FLAGS.quant_scheme,
            default_param_bw=FLAGS.param_bw,
            default_output_bw=FLAGS.output_bw,
            config_file=FLAGS.config,
        )
        sim.compute_encodings(lambda mdl, x: mdl.predict(x, batch_size=bs, verbose=0), x_cal)
        return sim

    ref = predict(model)
    rows = [("FP32", ref)]
    name = f"W{FLAGS.param_bw}A{FLAGS.output_bw} ({FLAGS.config}, {FLAGS.quant_scheme})"
    logging.info("Quantizing the BN-folded model without CLE")
    rows.append((f"{name}, no CLE", predict(quantize(fold_batch_norms(model)).model)))

    t = time.perf_counter()
    equalized, report = equalize_model_with_report(model)
    logging.info("equalize_model took %.2f s", time.perf_counter() - t)
    print(f"\nWhat CLE did on the {what}:\n{report.summary()}\n")
    rows.append(("FP32 after CLE", predict(equalized)))
    sim = quantize(equalized)
    rows.append((f"{name}, CLE", predict(sim.model)))
    if FLAGS.bias_correction:
        bc = correct_bias(sim, x_cal, num_batches=FLAGS.bias_correction_batches, batch_size=32)
        print(f"\n{bc.summary()}\n")
        rows.append((f"{name}, CLE + bias correction", predict(sim.model)))

    print(f"{'variant':50s} {'top-1 %':>8s} {'agree %':>8s} {'SQNR dB':>8s}")
    for label, out in rows:
        acc = "-" if y_eval is None else f"{100 * metrics.top1_accuracy(out, y_eval):.2f}"
        sqnr = metrics.sqnr_db(ref, out)
        print(
            f"{label:50s} {acc:>8s} {100 * metrics.top1_agreement(ref, out):8.2f} "
            f"{'inf' if np.isinf(sqnr) else f'{sqnr:.1f}':>8s}"
        )
    print(f"\n{len(x_eval)} evaluation inputs, {len(x_cal)} calibration inputs.")


if __name__ == "__main__":
    app.run(main)
