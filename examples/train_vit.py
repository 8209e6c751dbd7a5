r"""Trains the bundled FP32 Fashion-MNIST vision transformer (aimet_tf/assets/fashion_mnist_vit.keras).

The network is :func:`aimet_tf.vit.vit_model`: a 4x4 patch embedding (``Conv2D``) to 49 tokens
of width 64, a learned class token and position embeddings, 6 pre-norm encoder blocks
(LayerNormalization, 4-head MultiHeadAttention, GELU MLP of width 128, residual Adds), a final
LayerNormalization and a Dense head on the class token that outputs logits; about 206k
parameters.

It trains on the 60,000 train images from the Debian package ``dataset-fashion-mnist`` with
AdamW, a linear warm-up then cosine decay, label smoothing and random flips / +-2 pixel shifts,
and reports accuracy on the 10,000 test images. Outputs (both written atomically):

* ``--output``: the trained model (``.keras``, uncompiled, no optimizer state);
* the same path with ``.json``: test accuracy, parameter count, epochs, seconds, the command
  line, versions and date.

Usage:
    python examples/train_vit.py --epochs=20 --output=aimet_tf/assets/fashion_mnist_vit.keras
"""

from __future__ import annotations

import time

from absl import app, flags, logging

import fashion_mnist_training as training  # examples/ is on sys.path when run as a script
import keras  # noqa: E402  (fashion_mnist_training chose the backend)

from aimet_tf.vit import vit_model  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 20, "Training epochs over the 60k train split.")
flags.DEFINE_integer("batch_size", 128, "Mini-batch size.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate (after warm-up) of the cosine schedule.")
flags.DEFINE_float("warmup_epochs", 1.0, "Linear learning-rate warm-up length, in epochs.")
flags.DEFINE_float("weight_decay", 0.05, "Decoupled (AdamW) weight decay; LayerNorm, biases, "
                   "class token and position embeddings are excluded.")
flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing of the cross-entropy loss.")
flags.DEFINE_float("dropout", 0.0, "Dropout rate inside the encoder blocks.")
flags.DEFINE_bool("augment", True, "Random horizontal flips and +-2 pixel shifts during training.")
flags.DEFINE_integer("depth", 6, "Encoder blocks.")
flags.DEFINE_integer("dim", 64, "Token width.")
flags.DEFINE_integer("num_heads", 4, "Attention heads per block.")
flags.DEFINE_integer("mlp_dim", 128, "Hidden width of each block's MLP.")
flags.DEFINE_integer("patch_size", 4, "Side of the square patches.")
flags.DEFINE_bool("jit_compile", True, "Compile the train step with XLA (about 1.3x faster on CPU).")
flags.DEFINE_integer("seed", 0, "Seed for keras.utils.set_random_seed (weights, shuffling, augmentation).")
flags.DEFINE_integer("max_train_images", 0, "If > 0, train on only this many images (smoke tests).")
flags.DEFINE_string(
    "output",
    str(training.REPO / "aimet_tf" / "assets" / "fashion_mnist_vit.keras"),
    "Where to save the trained .keras model; the JSON record goes next to it.",
)

# Weights that are not matrices: no weight decay on them.
_NO_DECAY = ["gamma", "beta", "bias", "token", "embeddings"]


def _build() -> keras.Model:
    return vit_model(patch_size=FLAGS.patch_size, dim=FLAGS.dim, depth=FLAGS.depth,
                     num_heads=FLAGS.num_heads, mlp_dim=FLAGS.mlp_dim, dropout=FLAGS.dropout)


def main(argv: list[str]) -> None:
    del argv
    output, train_x, train_y, test_x, test_y = training.start(FLAGS.output, FLAGS.seed, FLAGS.max_train_images)

    model = _build()
    model.summary(print_fn=logging.info)
    steps_per_epoch = -(-len(train_x) // FLAGS.batch_size)
    schedule = training.warmup_cosine(FLAGS.learning_rate, steps_per_epoch, FLAGS.epochs,
                                      FLAGS.warmup_epochs)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=FLAGS.weight_decay,
                                       clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_names=_NO_DECAY)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                  label_smoothing=FLAGS.label_smoothing),
        metrics=["accuracy"],
        jit_compile=FLAGS.jit_compile,
    )
    one_hot = keras.utils.to_categorical(train_y, 10).astype("float32")
    start = time.perf_counter()
    history = model.fit(
        training.train_dataset(train_x, one_hot, FLAGS.seed, FLAGS.batch_size, FLAGS.augment),
        epochs=FLAGS.epochs, shuffle=False, verbose=2,
        validation_data=(test_x[:1000], keras.utils.to_categorical(test_y[:1000], 10)),
    )
    seconds = time.perf_counter() - start

    # Save a clean copy: same weights, no optimizer state or compile config.
    clean = training.clean_copy(_build, model)
    test_accuracy = training.accuracy(clean, test_x, test_y)
    first_2000 = training.save_checked(clean, output, test_x[:2000], test_y[:2000])
    logging.info("FP32 test accuracy %.4f (first 2000: %.4f), %.0f s", test_accuracy, first_2000,
                 seconds)
    record = training.run_record(output, {
        "model": "fashion_mnist_vit",
        "fp32_test_accuracy": round(test_accuracy, 6),
        "fp32_test_accuracy_first_2000": round(first_2000, 6),
        "test_images": int(len(test_x)),
        "train_images": int(len(train_x)),
        "final_train_accuracy": round(float(history.history["accuracy"][-1]), 6),
        "final_train_loss": round(float(history.history["loss"][-1]), 6),
        "params": int(clean.count_params()),
        "trainable_params": training.count_trainable(clean),
        "file_bytes": output.stat().st_size,
        "epochs": FLAGS.epochs,
        "batch_size": FLAGS.batch_size,
        "learning_rate": FLAGS.learning_rate,
        "schedule": f"linear warm-up {FLAGS.warmup_epochs} epoch(s) then cosine decay to 0",
        "optimizer": f"AdamW(weight_decay={FLAGS.weight_decay}, clipnorm=1.0; "
                     f"excluded: {', '.join(_NO_DECAY)})",
        "label_smoothing": FLAGS.label_smoothing,
        "jit_compile": FLAGS.jit_compile,
        "dropout": FLAGS.dropout,
        "augment": FLAGS.augment,
        "architecture": {"patch_size": FLAGS.patch_size, "dim": FLAGS.dim, "depth": FLAGS.depth,
                         "num_heads": FLAGS.num_heads, "mlp_dim": FLAGS.mlp_dim},
        "seed": FLAGS.seed,
        "seconds": round(seconds, 1),
        "input": "float32 [N, 28, 28, 1], pixel / 255 (aimet_tf.datasets.load_fashion_mnist)",
        "output": "logits [N, 10]",
    })
    json_path = training.write_record(output, record)
    logging.info("Wrote %s and %s", output, json_path)


if __name__ == "__main__":
    app.run(main)
