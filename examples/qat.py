r"""Quantization-aware training of the bundled Fashion-MNIST CNN with plain ``model.fit``.

Builds a ``QuantizationSimModel`` of the bundled FP32 model, calibrates it on the bundled
calibration images (post-training quantization), fine-tunes it on the 60,000-image train split
(Debian package ``dataset-fashion-mnist``; ``--train_split=calibration`` trains on the 2,000
bundled train images instead) with ``sim.model.fit`` and the aimet_tf.qat callbacks, and reports test accuracy of FP32, PTQ and
QAT. Then it exports the AIMET encodings (and with ``--tflite`` a full-integer .tflite file
straight from the trained sim, checked against the simulation with LiteRT).

    python examples/qat.py                                  # W4A8, range learning, 1 epoch
    python examples/qat.py --param_bw=4 --output_bw=4 --epochs=2 --freeze_bn_epoch=1
    python examples/qat.py --norange_learning --tensorboard_dir=/tmp/qat_logs
    python examples/qat.py --tflite --param_bw=8 --output_bw=8   # TFLite config, .tflite export
    python examples/qat.py --batch_norms=fold_first               # AIMET's flow: fold, then train
    python examples/qat.py --train_split=calibration              # no Debian package: bundled images

``--batch_norms`` picks what happens to the batch norms: ``fold_after`` (default) trains with them,
optionally re-estimates their statistics (``--bn_reestimation_batches``), then folds them into the
weights and their grids (``fold_all_batch_norms_to_scale``); ``fold_first`` folds them before the
sim is built (fastest training step); ``keep`` leaves them in the sim (not exportable to TFLite).
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from aimet_tf import QuantizationSimModel, datasets, metrics  # noqa: E402
from aimet_tf import qat  # noqa: E402
from aimet_tf.ptq import fold_all_batch_norms, fold_all_batch_norms_to_scale  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 1, "QAT epochs over the train split.")
flags.DEFINE_integer("param_bw", 4, "Weight bitwidth (2..16).")
flags.DEFINE_integer("output_bw", 8, "Activation bitwidth (2..16).")
flags.DEFINE_bool(
    "range_learning", True, "Learn encoding min/max (AIMET range learning); else static grids (STE)."
)
flags.DEFINE_enum("init_scheme", "tf_enhanced", ["tf", "tf_enhanced"], "How the ranges are initialised.")
flags.DEFINE_string(
    "config", "htp", "Hardware config: 'default', 'htp' or a JSON path (ignored with --tflite)."
)
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate (cosine-decayed to 0 over the run).")
flags.DEFINE_integer("batch_size", 128, "Mini-batch size.")
flags.DEFINE_integer("freeze_bn_epoch", -1, "Freeze BN statistics from this epoch on (0-based; -1: never).")
flags.DEFINE_enum("freeze_bn_mode", "inference", list(qat.BN_FREEZE_MODES), "How BN is frozen.")
flags.DEFINE_integer("freeze_ranges_epoch", -1, "Freeze quantizer ranges from this epoch on (-1: never).")
flags.DEFINE_integer(
    "bn_reestimation_batches", 0, "If > 0, re-estimate BN statistics over this many train batches after QAT."
)
flags.DEFINE_string("tensorboard_dir", "", "If set, log quantizer ranges there (TensorBoard).")
flags.DEFINE_string("output_dir", "qat_out", "Where the encodings (and .tflite) are written.")
flags.DEFINE_bool("tflite", False, "Use the TFLite config and export a .tflite after training.")
flags.DEFINE_enum(
    "batch_norms", "fold_after", ["fold_after", "fold_first", "keep"],
    "Batch norms: train with them and fold them into the grids afterwards, fold before QAT, or keep.",
)
flags.DEFINE_enum(
    "train_split", "train", ["train", "calibration"],
    "QAT data: the 60,000-image train split (apt-get install -y dataset-fashion-mnist) or the 2,000 "
    "bundled train images that calibration also uses.",
)
flags.DEFINE_integer("max_train_images", 0, "If > 0, train on only this many images (smoke runs).")
flags.DEFINE_integer("seed", 0, "Seed for shuffling and Keras randomness.")


def _accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return metrics.top1_accuracy(model.predict(x, batch_size=512, verbose=0), y)


def main(argv):
    del argv
    keras.utils.set_random_seed(FLAGS.seed)
    model = datasets.load_bundled_model()
    x_train, y_train = datasets.load_fashion_mnist(FLAGS.train_split)
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_cal, _ = datasets.load_fashion_mnist("calibration")
    if FLAGS.max_train_images > 0:
        x_train, y_train = x_train[: FLAGS.max_train_images], y_train[: FLAGS.max_train_images]

    results = [("FP32", _accuracy(model, x_test, y_test))]
    config = FLAGS.config
    if FLAGS.tflite and FLAGS.batch_norms == "keep":
        raise app.UsageError("--tflite needs --batch_norms=fold_after or fold_first: TFLite has no batch norm.")
    if FLAGS.batch_norms == "fold_first":
        pairs, model = fold_all_batch_norms(model)
        logging.info("Folded %d batch norms before QAT", len(pairs))
    if FLAGS.tflite:
        from aimet_tf.export import TFLITE_CONFIG, prepare_model_for_tflite

        model = prepare_model_for_tflite(model, fold_batch_norms=False)
        config = TFLITE_CONFIG
    scheme = FLAGS.init_scheme + ("_range_learning" if FLAGS.range_learning else "")
    sim = QuantizationSimModel(
        model, quant_scheme=scheme, default_param_bw=FLAGS.param_bw, default_output_bw=FLAGS.output_bw,
        config_file=config,
    )
    logging.info("Calibrating %d quantizers on %d images", len(qat.find_quantizers(sim)), len(x_cal))
    sim.compute_encodings(x_cal, batch_size=256)
    if FLAGS.tflite:
        from aimet_tf.export import prepare_sim_for_tflite

        # Train on what the .tflite will compute: int32 bias grids, the kernels' requantization
        # and shared grids (gradients pass straight through them).
        prepare_sim_for_tflite(sim)
    label = f"W{FLAGS.param_bw}A{FLAGS.output_bw}"
    results.append((f"{label} PTQ ({FLAGS.init_scheme})", _accuracy(sim.model, x_test, y_test)))

    steps = FLAGS.epochs * int(np.ceil(len(x_train) / FLAGS.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(FLAGS.learning_rate, decay_steps=max(steps, 1))
    sim.model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callbacks = []
    if FLAGS.freeze_bn_epoch >= 0:
        callbacks.append(qat.FreezeBatchNormStats(FLAGS.freeze_bn_epoch, FLAGS.freeze_bn_mode))
    if FLAGS.freeze_ranges_epoch >= 0:
        callbacks.append(qat.FreezeQuantizerRanges(FLAGS.freeze_ranges_epoch))
    if FLAGS.tensorboard_dir:
        callbacks.append(qat.QuantizerRangeLogger(FLAGS.tensorboard_dir))
    logging.info("QAT: %s, %d epoch(s), %d train images", scheme, FLAGS.epochs, len(x_train))
    start = time.perf_counter()
    sim.model.fit(
        x_train, y_train, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, shuffle=True,
        callbacks=callbacks, verbose=2,
    )
    seconds = time.perf_counter() - start
    name = f"{label} QAT ({scheme}, {FLAGS.epochs} epoch(s), {seconds:.0f} s)"
    results.append((name, _accuracy(sim.model, x_test, y_test)))

    if FLAGS.bn_reestimation_batches > 0 and qat.find_batch_norms(sim):
        qat.reestimate_bn_stats(
            sim, x_train, bn_num_batches=FLAGS.bn_reestimation_batches, batch_size=FLAGS.batch_size
        )
        results.append(
            (f"{label} QAT + BN re-estimation ({FLAGS.bn_reestimation_batches} batches)",
             _accuracy(sim.model, x_test, y_test))
        )

    if FLAGS.batch_norms == "fold_after":
        pairs = fold_all_batch_norms_to_scale(sim)
        if pairs:
            results.append(
                (f"{label} QAT, {len(pairs)} batch norms folded into the grids", _accuracy(sim.model, x_test, y_test))
            )

    paths = sim.export(FLAGS.output_dir, f"fashion_mnist_qat_{label.lower()}", convert_to_pb=False)
    print(f"Encodings: {paths['encodings']}\nTrained float model: {paths['model']}")
    if FLAGS.tflite:
        from aimet_tf.export import export_tflite, verify_tflite

        path = export_tflite(sim, os.path.join(FLAGS.output_dir, f"fashion_mnist_qat_{label.lower()}.tflite"))
        report = verify_tflite(sim, path, x_test, labels=y_test)
        print(f"TFLite: {path}\n{report.summary()}")
        results.append((f"{label} QAT as .tflite (LiteRT)", report.accuracy_tflite))

    fp32 = results[0][1]
    print("\n| variant | test top-1 % | vs FP32 |\n|---|---|---|")
    for name, acc in results:
        print(f"| {name} | {100 * acc:.2f} | {100 * (acc - fp32):+.2f} |")


if __name__ == "__main__":
    app.run(main)
