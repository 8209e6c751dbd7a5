r"""Compression: spatial SVD, weight SVD, Tucker-2 or channel pruning, greedy or manual ratios.

Compresses a model (the bundled Fashion-MNIST CNN, or a trained model file), fine-tunes it, then
quantizes it W8A8 and exports an int8 TFLite file, printing the accuracy and cost at each step.
Greedy mode scores candidates on held-out bundled calibration images (train split) and caches the
per-layer scores in --output_dir, so a rerun resumes.

Usage (from the repository root):
    python examples/compress.py --scheme=weight_svd --target_ratio=0.6
    python examples/compress.py --scheme=weight_svd --target_ratio=0.5 --epochs=1 --distill
    python examples/compress.py --scheme=channel_pruning --ratios=block4_pw:0.5,block5_pw:0.5
    python examples/compress.py --model=benchmarks/models/plain_cnn.keras --scheme=tucker \
        --target_ratio=0.5 --epochs=1 --train_split=train
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from aimet_tf import datasets, metrics  # noqa: E402
from aimet_tf.compression import compress_model, compressible_layers  # noqa: E402
from aimet_tf.compression.distillation import DistillationModel  # noqa: E402
from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite  # noqa: E402
from aimet_tf.graph.cost import total_cost  # noqa: E402
from aimet_tf.quantization import QuantizationSimModel  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A .keras file taking 28x28x1 Fashion-MNIST images (default: the bundled model).")
flags.DEFINE_enum("scheme", "weight_svd", ["spatial_svd", "weight_svd", "tucker", "channel_pruning"], "Compression scheme.")
flags.DEFINE_float("target_ratio", None, "Greedy mode: fraction of the cost that stays, in (0, 1].")
flags.DEFINE_list("ratios", None, "Manual mode: layer:ratio pairs, e.g. block4_pw:0.5,block5_pw:0.5.")
flags.DEFINE_enum("cost_metric", "mac", ["mac", "memory"], "What a ratio counts.")
flags.DEFINE_integer("num_candidates", 10, "Greedy mode: candidate ratios k/n, k = 1..n.")
flags.DEFINE_integer("epochs", 0, "Fine-tuning epochs after compression.")
flags.DEFINE_enum("train_split", "calibration", ["calibration", "train"], "Fine-tuning data ('train' needs dataset-fashion-mnist).")
flags.DEFINE_float("learning_rate", 1e-4, "Fine-tuning learning rate (Adam).")
flags.DEFINE_bool("distill", False, "Fine-tune with layer-wise distillation from the uncompressed model "
                  "(aimet_tf.compression.distillation) on top of the label loss.")
flags.DEFINE_integer("eval_images", 1000, "Held-out calibration images that score greedy candidates.")
flags.DEFINE_string("output_dir", "compress_output", "Where the scores cache and the exported .tflite go.")
flags.DEFINE_bool("export", True, "Quantize W8A8 and export an int8 .tflite.")


def _parse_ratios(pairs: list[str]) -> dict[str, float]:
    ratios = {}
    for pair in pairs:
        name, sep, value = pair.rpartition(":")
        if not sep or not name:
            raise app.UsageError(f"Expected --ratios as layer:ratio pairs. Received: {pair!r}")
        try:
            ratios[name] = float(value)
        except ValueError:
            raise app.UsageError(f"Expected a number after ':' in {pair!r}. Received: {value!r}") from None
    return ratios


def main(argv):
    del argv
    if (FLAGS.target_ratio is None) == (FLAGS.ratios is None):
        raise app.UsageError("Expected exactly one of --target_ratio (greedy mode) or --ratios (manual mode).")
    model = datasets.load_bundled_model() if FLAGS.model is None else keras.saving.load_model(FLAGS.model, compile=False)
    x_cal, y_cal = datasets.load_fashion_mnist("calibration")
    x_test, y_test = datasets.load_fashion_mnist("test")
    n = FLAGS.eval_images
    x_val, y_val, x_refit = x_cal[:n], y_cal[:n], x_cal[n:]
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    print(f"{FLAGS.scheme} can compress: {', '.join(compressible_layers(model, FLAGS.scheme)) or 'no layer'}")

    def evaluate(m):
        return metrics.top1_accuracy(m.predict(x_val, batch_size=500, verbose=0), y_val)

    def test_accuracy(m):
        return 100 * metrics.top1_accuracy(m.predict(x_test, batch_size=500, verbose=0), y_test)

    compressed, stats = compress_model(
        model, FLAGS.scheme, evaluate,
        ratios=None if FLAGS.ratios is None else _parse_ratios(FLAGS.ratios),
        target_ratio=FLAGS.target_ratio, cost_metric=FLAGS.cost_metric, num_candidates=FLAGS.num_candidates,
        samples=x_refit, cache_path=os.path.join(FLAGS.output_dir, f"{FLAGS.scheme}_scores.json"),
        results_dir=FLAGS.output_dir,
    )
    print(stats)
    rows = [("FP32", model), (f"{FLAGS.scheme}", compressed)]
    if FLAGS.epochs:
        x_train, y_train = datasets.load_fashion_mnist(FLAGS.train_split)
        trainer = DistillationModel(compressed, model) if FLAGS.distill else compressed
        trainer.compile(optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        logging.info("Fine-tuning %d epoch(s) on %d images%s", FLAGS.epochs, len(x_train), " with distillation" if FLAGS.distill else "")
        trainer.fit(x_train, y_train, batch_size=128, epochs=FLAGS.epochs, verbose=0)
        how = "distillation fine-tune" if FLAGS.distill else "fine-tune"
        rows.append((f"{FLAGS.scheme} + {FLAGS.epochs} epoch(s) {how}", compressed))
    base = total_cost(model)
    print(f"\n{'model':45s} {'test top-1 %':>12s} {'MACs kept':>10s} {'weights kept':>13s}")
    for label, m in rows:
        cost = total_cost(m)
        print(f"{label:45s} {test_accuracy(m):12.2f} {cost.macs / base.macs:10.3f} {cost.params / base.params:13.3f}")
    if FLAGS.export:
        sim = QuantizationSimModel(prepare_model_for_tflite(compressed), quant_scheme="tf_enhanced", config_file="tflite")
        sim.compute_encodings(x_val, batch_size=64)
        path = export_tflite(sim, os.path.join(FLAGS.output_dir, f"{FLAGS.scheme}_int8.tflite"))
        report = verify_tflite(sim, path, x_test, labels=y_test, batch_size=250)
        print(
            f"{'W8A8 int8 TFLite of the last row':45s} {100 * report.accuracy_tflite:12.2f}   "
            f"(sim == TFLite outputs {100 * report.exact_fraction:.2f}%, {report.file_size_bytes / 1024:.1f} KB, {path})"
        )
    print(f"\n{len(x_test)} test images; greedy candidates scored on {len(x_val)} held-out calibration images.")
    if FLAGS.target_ratio is not None:
        print(f"Per-layer sensitivity: {os.path.join(FLAGS.output_dir, f'compression_sensitivity_{FLAGS.scheme}.png')} (and .html)")


if __name__ == "__main__":
    app.run(main)
