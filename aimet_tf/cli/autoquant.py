r"""AutoQuant from the command line: a float .keras model in, the best quantized model out.

Runs ``aimet_tf.ptq.auto_quant.auto_quantize`` (prepare, W16A16 check, BN fold, quant scheme, CLE,
bias correction, AdaRound and, with --amp, mixed precision), stopping once the score is within
--allowed_accuracy_drop of FP32, then exports the best result: an int8/int4 .tflite checked
against the sim (--export=tflite, under the tflite config) or AIMET encodings + .keras
(--export=encodings, always written). The HTML report, the cache (--cache_id) and the files go to
--results_dir.

Data: --calibration and --eval take an .npz file (arrays ``x``, and ``y`` for --eval) or
``bundled`` (the bundled Fashion-MNIST calibration split / test split, for the bundled model).
The score is top-1 accuracy on the eval data.

Usage:
    python examples/autoquant.py                                      # bundled model, W4A8, tflite
    aimet-tf-autoquant --model=my.keras --calibration=cal.npz --eval=val.npz --param_bw=8 \
        --allowed_accuracy_drop=0.001 --export=encodings --config=htp
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from aimet_tf import datasets, metrics  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A float .keras model (default: the bundled Fashion-MNIST CNN).")
flags.DEFINE_string("calibration", "bundled", "Calibration data: an .npz with array 'x', or 'bundled'.")
flags.DEFINE_string("eval", "bundled", "Eval data: an .npz with arrays 'x' and 'y' (labels), or 'bundled' (test split).")
flags.DEFINE_integer("eval_images", 2000, "Eval samples used (from the start of the eval data).")
flags.DEFINE_integer("calibration_images", 1000, "Calibration samples used.")
flags.DEFINE_integer("param_bw", 4, "Weight bitwidth.")
flags.DEFINE_integer("output_bw", 8, "Activation bitwidth.")
flags.DEFINE_string("config", "tflite", "Hardware config: tflite, htp, default, ... or a JSON path.")
flags.DEFINE_float("allowed_accuracy_drop", 0.005, "Accuracy (fraction, in [0, 1]) the result may lose against FP32.")
flags.DEFINE_enum("export", "tflite", ["tflite", "encodings"], "tflite: also an int8/int4 .tflite (tflite config only).")
flags.DEFINE_string("results_dir", "autoquant_output", "Report, cache and exported files.")
flags.DEFINE_string("cache_id", "autoquant", "Cache folder name under results_dir/.auto_quant ('' : no cache).")
flags.DEFINE_integer("adaround_iterations", 2000, "AdaRound iterations per layer.")
flags.DEFINE_list("amp", [], "Mixed-precision candidates as activation_bw:param_bw pairs (e.g. 8:8,8:4); empty: no AMP step.")
flags.DEFINE_bool("analyze", True, "Run QuantAnalyzer on the best result and link it from the report.")


def _load_npz(path: str, keys: tuple[str, ...], what: str) -> list[np.ndarray]:
    if not os.path.isfile(path):
        raise app.UsageError(f"--{what}: expected an .npz file or 'bundled'. Received: {path!r} (no such file)")
    with np.load(path) as data:
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise app.UsageError(f"--{what}: expected arrays {list(keys)} in {path!r}. Received arrays {data.files}")
        return [np.asarray(data[k]) for k in keys]


def _candidates(pairs: list[str]) -> list[tuple[int, int]]:
    from aimet_tf.ptq.mixed_precision import Candidate

    try:
        return [(c.activation_bw, c.param_bw) for c in map(Candidate.from_text, pairs)]
    except ValueError as error:
        raise app.UsageError(f"--amp: {error}") from None


def main(argv) -> None:
    del argv
    from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite
    from aimet_tf.ptq.adaround import AdaroundParameters
    from aimet_tf.ptq.auto_quant import auto_quantize

    if FLAGS.export == "tflite" and FLAGS.config != "tflite":
        raise app.UsageError(f"--export=tflite needs --config=tflite. Received: --config={FLAGS.config!r}; use --export=encodings.")
    model = datasets.load_bundled_model() if FLAGS.model is None else keras.saving.load_model(FLAGS.model, compile=False)
    if FLAGS.calibration == "bundled":
        x_cal = datasets.load_fashion_mnist("calibration")[0]
    else:
        (x_cal,) = _load_npz(FLAGS.calibration, ("x",), "calibration")
    if FLAGS.eval == "bundled":
        x_eval, y_eval = datasets.load_fashion_mnist("test")
    else:
        x_eval, y_eval = _load_npz(FLAGS.eval, ("x", "y"), "eval")
    if len(x_eval) != len(y_eval):
        raise app.UsageError(f"--eval: expected one label per sample. Received {len(x_eval)} samples, {len(y_eval)} labels")
    x_cal = x_cal[: FLAGS.calibration_images].astype(np.float32)
    x_eval, y_eval = x_eval[: FLAGS.eval_images].astype(np.float32), y_eval[: FLAGS.eval_images]

    def evaluate(m) -> float:
        return metrics.top1_accuracy(m.predict(x_eval, batch_size=250, verbose=0), y_eval)

    source = prepare_model_for_tflite(model) if FLAGS.config == "tflite" else model
    params = AdaroundParameters(x_cal, num_batches=max(1, len(x_cal) // 32), default_num_iterations=FLAGS.adaround_iterations)
    start = time.time()
    result = auto_quantize(
        source, evaluate, x_cal, FLAGS.allowed_accuracy_drop, param_bw=FLAGS.param_bw, output_bw=FLAGS.output_bw,
        config_file=FLAGS.config, results_dir=FLAGS.results_dir, cache_id=FLAGS.cache_id or None,
        adaround_params=params, amp_candidates=_candidates(FLAGS.amp) or None, analyze=FLAGS.analyze,
    )
    seconds = time.time() - start
    print(f"\n{'step':18s} {'score':>8s}  status    what")
    for s in result.steps:
        status = "skipped" if s.score is None else ("kept" if s.kept else "not kept")
        score = "" if s.score is None else f"{100 * s.score:.2f}"
        print(f"{s.name:18s} {score:>8s}  {status:9s} {s.detail[:90]}")
    print(f"\nFP32 {100 * result.fp32_score:.2f}%, best {100 * result.score:.2f}% (target {100 * result.target:.2f}%: "
          f"{'met' if result.target_met else 'not met'}) on {len(x_eval)} eval samples, {seconds:.0f} s")
    print(f"Report: {result.report_path}\nEncodings: {result.encoding_path}\nModel: {result.model_path}")
    if FLAGS.export == "tflite":
        path = export_tflite(result.sim, os.path.join(FLAGS.results_dir, "auto_quant.tflite"))
        report = verify_tflite(result.sim, path, x_eval, labels=y_eval, batch_size=250)
        print(f"TFLite: {path}, {100 * report.accuracy_tflite:.2f}% on the eval samples, sim == TFLite outputs "
              f"{100 * report.exact_fraction:.2f}%, {report.file_size_bytes / 1024:.1f} KB")


def run() -> None:
    """Console entry point (``aimet-tf-autoquant``)."""
    app.run(main)


if __name__ == "__main__":
    run()
