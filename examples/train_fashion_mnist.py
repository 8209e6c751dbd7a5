r"""Trains the bundled FP32 Fashion-MNIST CNN (aimet_tf/assets/fashion_mnist_cnn.keras).

The network is a small MobileNet-style edge CNN made only of built-in Keras
layers, so every aimet_tf technique has something real to work on: a
Conv+BN+ReLU6 stem, depthwise-separable blocks (DepthwiseConv2D+BN+ReLU6 then
Conv 1x1+BN+ReLU6), residual blocks whose ``Add`` joins the previous block's
ReLU6 output with the current block's BN output (then ReLU6), global average
pooling and a Dense head that outputs logits.

It trains on the 60,000 train images from the Debian package
``dataset-fashion-mnist`` and reports accuracy on the 10,000 test images.
Outputs (both written atomically):

* ``--output``: the trained model (``.keras``, uncompiled, no optimizer state);
* the same path with ``.json``: test accuracy, parameter count, epochs,
  seconds, the command line, versions and date.

Usage:
    python examples/train_fashion_mnist.py --epochs=15 \
        --output=aimet_tf/assets/fashion_mnist_cnn.keras
"""

from __future__ import annotations

import time

from absl import app, flags, logging

import fashion_mnist_training as training  # examples/ is on sys.path when run as a script
import keras  # noqa: E402  (fashion_mnist_training chose the backend)
import numpy as np


FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 15, "Training epochs over the 60k train split.")
flags.DEFINE_integer("batch_size", 128, "Mini-batch size.")
flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate (after warm-up) of the cosine schedule.")
flags.DEFINE_float("warmup_epochs", 1.0, "Linear learning-rate warm-up length, in epochs.")
flags.DEFINE_float("weight_decay", 5e-5, "Decoupled (AdamW) weight decay; BN parameters are excluded.")
flags.DEFINE_bool("augment", True, "Random horizontal flips and +-2 pixel shifts during training.")
flags.DEFINE_integer("width", 32, "Channels of the stem; later stages use 2x and 4x this.")
flags.DEFINE_integer("seed", 0, "Seed for keras.utils.set_random_seed (weights, shuffling, augmentation).")
flags.DEFINE_integer("max_train_images", 0, "If > 0, train on only this many images (smoke tests).")
flags.DEFINE_string(
    "output",
    str(training.REPO / "aimet_tf" / "assets" / "fashion_mnist_cnn.keras"),
    "Where to save the trained .keras model; the JSON record goes next to it.",
)

_RELU6 = 6.0


def _conv_bn_relu6(x: keras.KerasTensor, filters: int, strides: int, name: str) -> keras.KerasTensor:
    x = keras.layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(max_value=_RELU6, name=f"{name}_relu")(x)


def _separable_block(
    x: keras.KerasTensor, filters: int, strides: int, name: str, residual: bool
) -> keras.KerasTensor:
    """DW 3x3 + BN + ReLU6 + PW 1x1 + BN (+ Add with the block input) + ReLU6."""
    shortcut = x
    x = keras.layers.DepthwiseConv2D(
        3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw"
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(max_value=_RELU6, name=f"{name}_dw_relu")(x)
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_pw_bn")(x)
    if residual:
        if shortcut.shape != x.shape or strides != 1:
            raise ValueError(
                f"Residual block {name} needs same-shaped tensors. Expected the block "
                f"input {shortcut.shape} to equal the block output {x.shape}. "
                "Use residual=False for blocks that change width or resolution."
            )
        x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(max_value=_RELU6, name=f"{name}_pw_relu")(x)


def build_model(width: int = 32) -> keras.Model:
    """Builds the edge CNN (Functional API, built-in layers only).

    Layout (``w = width``; spatial sizes for a 28x28 input):
    stem 3x3 conv w @28 -> block1 (dw s2, pw 2w) @14 -> block2 (residual)
    -> block3 (dw s2, pw 4w) @7 -> block4, block5 (residual) -> block6 (pw 8w)
    -> global average pool -> Dense(10) logits.

    Args:
        width: Stem channels; ``width=32`` gives about 93k parameters.

    Returns:
        An uncompiled ``keras.Model`` named ``fashion_mnist_cnn`` mapping
        float32 ``[N, 28, 28, 1]`` images in [0, 1] to ``[N, 10]`` logits.
    """
    inputs = keras.Input(shape=(28, 28, 1), name="image")
    x = _conv_bn_relu6(inputs, width, strides=1, name="stem")
    x = _separable_block(x, 2 * width, strides=2, name="block1", residual=False)
    x = _separable_block(x, 2 * width, strides=1, name="block2", residual=True)
    x = _separable_block(x, 4 * width, strides=2, name="block3", residual=False)
    x = _separable_block(x, 4 * width, strides=1, name="block4", residual=True)
    x = _separable_block(x, 4 * width, strides=1, name="block5", residual=True)
    x = _separable_block(x, 8 * width, strides=1, name="block6", residual=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, logits, name="fashion_mnist_cnn")


def main(argv: list[str]) -> None:
    del argv
    output, train_x, train_y, test_x, test_y = training.start(FLAGS.output, FLAGS.seed, FLAGS.max_train_images)

    model = build_model(FLAGS.width)
    model.summary(print_fn=logging.info)
    steps_per_epoch = int(np.ceil(len(train_x) / FLAGS.batch_size))
    schedule = training.warmup_cosine(FLAGS.learning_rate, steps_per_epoch, FLAGS.epochs,
                                      FLAGS.warmup_epochs)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=FLAGS.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    start = time.perf_counter()
    history = model.fit(
        training.train_dataset(train_x, train_y, FLAGS.seed, FLAGS.batch_size, FLAGS.augment),
        epochs=FLAGS.epochs, shuffle=False, verbose=2,
    )
    seconds = time.perf_counter() - start

    # Save a clean copy: same weights, no optimizer state or compile config.
    clean = training.clean_copy(lambda: build_model(FLAGS.width), model)
    test_accuracy = training.accuracy(clean, test_x, test_y)
    first_1000 = training.save_checked(clean, output, test_x[:1000], test_y[:1000])
    logging.info("FP32 test accuracy %.4f (first 1000: %.4f), %.0f s", test_accuracy, first_1000, seconds)

    record = training.run_record(output, {
        "model": "fashion_mnist_cnn",
        "fp32_test_accuracy": round(test_accuracy, 6),
        "fp32_test_accuracy_first_1000": round(first_1000, 6),
        "test_images": int(len(test_x)),
        "train_images": int(len(train_x)),
        "final_train_accuracy": round(float(history.history["accuracy"][-1]), 6),
        "final_train_loss": round(float(history.history["loss"][-1]), 6),
        "params": int(clean.count_params()),
        "trainable_params": training.count_trainable(clean),
        "epochs": FLAGS.epochs,
        "batch_size": FLAGS.batch_size,
        "learning_rate": FLAGS.learning_rate,
        "schedule": f"linear warm-up {FLAGS.warmup_epochs} epoch(s) then cosine decay to 0",
        "optimizer": f"AdamW(weight_decay={FLAGS.weight_decay}, BN/bias excluded)",
        "augment": FLAGS.augment,
        "width": FLAGS.width,
        "seed": FLAGS.seed,
        "seconds": round(seconds, 1),
        "input": "float32 [N, 28, 28, 1], pixel / 255 (aimet_tf.datasets.load_fashion_mnist)",
        "output": "logits [N, 10]",
    })
    json_path = training.write_record(output, record)
    logging.info("Wrote %s and %s", output, json_path)


if __name__ == "__main__":
    app.run(main)
