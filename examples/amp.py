r"""Automatic mixed precision on the bundled Fashion-MNIST CNN: which layers can go to 4 bits?

Builds a sim at the highest candidate, runs AMP (``aimet_tf.ptq.mixed_precision``) with phase 1
on a small held-out set and phase 2 on a larger one, prints the uniform candidates beside the
mixed result (accuracy, relative bit operations, weight memory) and, under the ``tflite`` config,
exports the mixed int4/int8 model to one .tflite and checks it reproduces the sim. The Pareto plot
(PNG + HTML), the per-group choice and the resumable cache go to --results_dir.

Usage (from the repository root):
    python examples/amp.py                                       # tflite config, W8A8 + W4A8
    python examples/amp.py --config=htp --candidates=16:16,8:8,8:4 --export=false
    python examples/amp.py --fast --cost_metric=memory --allowed_accuracy_drop=0.005
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402

from aimet_tf import datasets, metrics  # noqa: E402
from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite  # noqa: E402
from aimet_tf.ptq.batch_norm_fold import fold_batch_norms  # noqa: E402
from aimet_tf.ptq import mixed_precision as amp  # noqa: E402
from aimet_tf.quantization import QuantizationSimModel  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A .keras file taking 28x28x1 Fashion-MNIST images (default: the bundled model).")
flags.DEFINE_string("config", "tflite", "Hardware config: tflite, htp, default_per_channel, ... or a JSON path.")
flags.DEFINE_list("candidates", ["8:8", "8:4"], "activation_bw:param_bw pairs.")
flags.DEFINE_float("allowed_accuracy_drop", 0.003, "Accuracy (fraction) the result may lose against FP32 on the phase-2 set.")
flags.DEFINE_enum("cost_metric", "bops", ["bops", "memory"], "What the Pareto front's cost counts.")
flags.DEFINE_enum("search", "Binary", [a.name for a in amp.AMPSearchAlgo], "Phase-2 search.")
flags.DEFINE_bool("fast", False, "Phase 1 by output SQNR (no labels; choose_fast_mixed_precision).")
flags.DEFINE_string("quant_scheme", "tf_enhanced", "Range scheme of the sim.")
flags.DEFINE_integer("calibration_images", 1000, "Bundled calibration images for compute_encodings.")
flags.DEFINE_integer("phase1_images", 500, "Held-out calibration images scoring phase 1.")
flags.DEFINE_integer("phase2_images", 1000, "Held-out calibration images scoring phase 2 (includes phase 1's).")
flags.DEFINE_string("results_dir", "amp_output", "Pareto plot, choice, cache and the exported .tflite.")
flags.DEFINE_bool("clean_start", True, "False resumes from the cache in --results_dir.")
flags.DEFINE_bool("export", True, "Export the mixed sim to int8/int4 TFLite and check it (tflite config only).")


def _candidates(pairs: list[str]) -> list[tuple[int, int]]:
    from aimet_tf.ptq.mixed_precision import Candidate

    try:
        return [(c.activation_bw, c.param_bw) for c in map(Candidate.from_text, pairs)]
    except ValueError as error:
        raise app.UsageError(f"--candidates: {error}") from None


def main(argv):
    del argv
    candidates = _candidates(FLAGS.candidates)
    model = datasets.load_bundled_model() if FLAGS.model is None else keras.saving.load_model(FLAGS.model, compile=False)
    prepared = prepare_model_for_tflite(model) if FLAGS.config == "tflite" else fold_batch_norms(model)
    x_cal, y_cal = datasets.load_fashion_mnist("calibration")
    x_test, y_test = datasets.load_fashion_mnist("test")
    n_cal = FLAGS.calibration_images
    if n_cal + FLAGS.phase2_images > len(x_cal) or FLAGS.phase1_images > FLAGS.phase2_images:
        raise app.UsageError(f"Expected calibration_images + phase2_images <= {len(x_cal)} and phase1_images <= phase2_images.")
    calibration = x_cal[:n_cal]
    x2, y2 = x_cal[n_cal:n_cal + FLAGS.phase2_images], y_cal[n_cal:n_cal + FLAGS.phase2_images]
    x1, y1 = x2[: FLAGS.phase1_images], y2[: FLAGS.phase1_images]

    def scorer(x, y):
        return lambda m: metrics.top1_accuracy(m.predict(x, batch_size=500, verbose=0), y)

    def test_accuracy(m):
        return 100 * metrics.top1_accuracy(m.predict(x_test, batch_size=500, verbose=0), y_test)

    top = max(candidates, key=lambda c: (c[0] * c[1], c))
    sim = QuantizationSimModel(prepared, quant_scheme=FLAGS.quant_scheme, config_file=FLAGS.config,
                               default_output_bw=top[0], default_param_bw=top[1])
    start = time.time()
    common = dict(results_dir=FLAGS.results_dir, clean_start=FLAGS.clean_start, forward_pass=calibration,
                  amp_search_algo=amp.AMPSearchAlgo[FLAGS.search], cost_metric=FLAGS.cost_metric)
    if FLAGS.fast:
        result = amp.choose_fast_mixed_precision(sim, candidates, x1, scorer(x2, y2), FLAGS.allowed_accuracy_drop, **common)
    else:
        result = amp.choose_mixed_precision(sim, candidates, scorer(x1, y1), scorer(x2, y2), FLAGS.allowed_accuracy_drop, **common)
    seconds = time.time() - start

    rows = [("FP32", test_accuracy(model), "", "")]
    for a, p in sorted(candidates, key=lambda c: -c[0] * c[1]):
        uniform = QuantizationSimModel(prepared, quant_scheme=FLAGS.quant_scheme, config_file=FLAGS.config,
                                       default_output_bw=a, default_param_bw=p)
        uniform.compute_encodings(calibration)
        cost = result.uniform.get(f"W{p}A{a}", (float("nan"), None))[0]
        rows.append((f"uniform W{p}A{a}", test_accuracy(uniform.model), f"{cost:.3f}", f"{p / top[1]:.3f}"))
    memory = amp.relative_cost(sim, result.groups, result.chosen.choice, result.baseline, "memory") if result.chosen else 1.0
    bops = amp.relative_cost(sim, result.groups, result.chosen.choice, result.baseline, "bops") if result.chosen else 1.0
    rows.append(("AMP (mixed)", test_accuracy(sim.model), f"{bops:.3f}", f"{memory:.3f}"))
    print(f"\n{'model':22s} {'test top-1 %':>12s} {'rel. BOPs':>10s} {'rel. weight bytes':>18s}")
    for label, acc, b, m in rows:
        print(f"{label:22s} {acc:12.2f} {b:>10s} {m:>18s}")
    print(f"\nAMP: {len(result.groups)} groups, {len(result.front)} front points, evaluations phase 1 / phase 2: "
          f"{result.evaluations['phase1']} / {result.evaluations['phase2']}, {seconds:.1f} s; FP32 on the phase-2 set "
          f"{100 * result.fp32_score:.2f}%, chosen {100 * (result.final_score or 0):.2f}%")
    print("Per-group choice: " + ", ".join(f"{g} {c}" for g, c in result.choice_by_group().items()))
    print(f"Pareto front: {os.path.join(FLAGS.results_dir, 'pareto_front.png')} (and .html)")
    if FLAGS.export and FLAGS.config == "tflite":
        path = export_tflite(sim, os.path.join(FLAGS.results_dir, "amp_mixed.tflite"))
        report = verify_tflite(sim, path, x_test, labels=y_test, batch_size=250)
        print(f"Mixed int4/int8 TFLite: {100 * report.accuracy_tflite:.2f}% on the test set, sim == TFLite outputs "
              f"{100 * report.exact_fraction:.2f}%, {report.file_size_bytes / 1024:.1f} KB, {path}")


if __name__ == "__main__":
    app.run(main)
