r"""Empirical bias correction on a quantization simulation: FP32 vs W4A8 vs W4A8 + bias correction.

Quantizing weights (4-bit per-tensor most of all) shifts each output channel's mean; bias
correction measures that shift on calibration data, layer by layer, and moves it into the bias:
b += E[W x] - E[W_q x_q].

Bias correction fixes a mean error that is small next to the signal. Where quantization noise
is as large as the signal it can hurt: W4A8 per-tensor on the BN-folded bundled model without
CLE (intermediate SQNR 3-5 dB) went from 87.02% to 74.83% with it; after CLE it went from
90.30% to 91.13% (see BENCHMARKS.md, section "cle"). Hence --cle is on by default.

Usage (from the repository root):
    python examples/bias_correction.py                       # bundled model, CLE, W4A8 per-tensor
    python examples/bias_correction.py --nocle               # BN folding only (the failure case)
    python examples/bias_correction.py --param_bw=8          # W8A8
    python examples/bias_correction.py --mltk_model=ds_cnn   # an MLTK model (third_party/mltk)
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from aimet_tf import datasets, metrics  # noqa: E402
from aimet_tf.ptq import correct_bias, equalize_model_with_report  # noqa: E402
from aimet_tf.ptq.batch_norm_fold import fold_batch_norms  # noqa: E402
from aimet_tf.quantization import QuantizationSimModel  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("mltk_model", None, "An MLTK model name (e.g. ds_cnn) instead of the bundled model.")
flags.DEFINE_integer("param_bw", 4, "Weight bitwidth.")
flags.DEFINE_string("quant_scheme", "tf", "Range scheme: tf, tf_enhanced or percentile.")
flags.DEFINE_string("config", "default", "Hardware config ('default' = per-tensor weights, 'htp').")
flags.DEFINE_bool("cle", True, "Run cross-layer equalization first (--nocle: only BN folding).")
flags.DEFINE_integer("num_batches", 16, "Calibration batches of 32 used by bias correction.")
flags.DEFINE_enum("error", "total", ["total", "weight"],
                  "What the bias absorbs: the whole prefix's mean error vs FP32 (AIMET), or the weights' alone.")
flags.DEFINE_bool("keep_only_improving", True,
                  "Keep a channel's shift only if its activated output gets closer to the reference.")
flags.DEFINE_integer("batch_size", 128, "Batch size for prediction and calibration.")


def main(argv):
    del argv
    if FLAGS.mltk_model is None:
        model = datasets.load_bundled_model()
        x_eval, y_eval = datasets.load_fashion_mnist("test")
        x_cal, _ = datasets.load_fashion_mnist("calibration")
    else:
        from aimet_tf.testing.mltk_models import load_mltk_model
        from aimet_tf.testing.real_inputs import real_inputs

        model = load_mltk_model(FLAGS.mltk_model).keras_model
        x = real_inputs(FLAGS.mltk_model)
        x_cal, x_eval, y_eval = x[0::2], x[1::2], None
    bs = FLAGS.batch_size
    if FLAGS.cle:
        prepared, report = equalize_model_with_report(model)
        print(report.summary())
    else:
        # Bias correction needs biases: BN folding gives every conv followed by a BN one.
        prepared = fold_batch_norms(model)

    sim = QuantizationSimModel(
        prepared, quant_scheme=FLAGS.quant_scheme, default_param_bw=FLAGS.param_bw, config_file=FLAGS.config
    )
    sim.compute_encodings(lambda m, x: m.predict(x, batch_size=bs, verbose=0), x_cal)
    ref = model.predict(x_eval, batch_size=bs, verbose=0)
    before = sim.model.predict(x_eval, batch_size=bs, verbose=0)
    t = time.perf_counter()
    report = correct_bias(
        sim, x_cal, num_batches=FLAGS.num_batches, batch_size=32, error=FLAGS.error,
        keep_only_improving=FLAGS.keep_only_improving,
    )
    logging.info("correct_bias took %.1f s", time.perf_counter() - t)
    after = sim.model.predict(x_eval, batch_size=bs, verbose=0)
    print(report.summary())

    name = f"W{FLAGS.param_bw}A8 ({FLAGS.config}, {FLAGS.quant_scheme}{', CLE' if FLAGS.cle else ''})"
    print(f"\n{'variant':50s} {'top-1 %':>8s} {'agree %':>8s} {'SQNR dB':>8s}")
    for label, out in (("FP32", ref), (name, before), (f"{name} + bias correction", after)):
        acc = "-" if y_eval is None else f"{100 * metrics.top1_accuracy(out, y_eval):.2f}"
        sqnr = "inf" if out is ref else f"{metrics.sqnr_db(ref, out):.1f}"
        print(f"{label:50s} {acc:>8s} {100 * metrics.top1_agreement(ref, out):8.2f} {sqnr:>8s}")


if __name__ == "__main__":
    app.run(main)
