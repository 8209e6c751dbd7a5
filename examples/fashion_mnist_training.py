"""Shared pieces of the scripts that train aimet_tf's bundled Fashion-MNIST models.

``train_fashion_mnist.py`` (the CNN) and ``train_vit.py`` (the vision transformer) train the
same way: the 60k train split, optional flips and +-2 pixel shifts, a linear warm-up then a
cosine learning-rate decay, and they save the model and a JSON record of the run atomically.
This module holds those steps once; each script keeps its own flags and model.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import platform
import shlex
import sys
from typing import Any, Callable

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402  (the backend must be chosen first)
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from aimet_tf import files  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
"""The repository root (the folder that holds ``examples/``)."""

_SHIFT = 2  # pixels of random shift (pad then random crop)


def start(output_flag: str, seed: int, max_train_images: int):
    """What both training scripts do first: the checked ``--output`` path, the seed, and the data.

    Returns:
        ``(output, train_x, train_y, test_x, test_y)``; ``max_train_images > 0`` keeps that many
        training images.

    Raises:
        absl.app.UsageError: for an ``--output`` that does not end with ``.keras``.
    """
    from absl import app, logging

    from aimet_tf import datasets

    output = pathlib.Path(output_flag).resolve()
    if output.suffix != ".keras":
        raise app.UsageError(f"--output must end with .keras. Received: --output={output_flag}.")
    keras.utils.set_random_seed(seed)
    train_x, train_y = datasets.load_fashion_mnist("train")
    if max_train_images > 0:
        train_x, train_y = train_x[:max_train_images], train_y[:max_train_images]
    test_x, test_y = datasets.load_fashion_mnist("test")
    logging.info("train %s, test %s", train_x.shape, test_x.shape)
    return output, train_x, train_y, test_x, test_y


def _augment(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    # Stateless ops keyed by a per-example seed make the augmentation reproducible.
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = tf.pad(image, [[_SHIFT, _SHIFT], [_SHIFT, _SHIFT], [0, 0]])
    image = tf.image.stateless_random_crop(image, tf.shape(image) - [2 * _SHIFT, 2 * _SHIFT, 0],
                                           crop_seed)
    return image, label


def train_dataset(images: np.ndarray, labels: np.ndarray, seed: int, batch_size: int,
                  augment: bool) -> tf.data.Dataset:
    """Returns the shuffled (and optionally augmented) training batches.

    Args:
        images: float32 ``[N, H, W, C]`` images.
        labels: ``[N]`` integer labels.
        seed: Seed of the shuffle and of the per-example augmentation.
        batch_size: Images per batch.
        augment: Whether to apply random horizontal flips and +-2 pixel shifts.

    Returns:
        A ``tf.data.Dataset`` of ``(images, labels)`` batches, reshuffled every epoch.
    """
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if augment:
        counter = tf.data.Dataset.counter().map(lambda i: tf.stack([tf.cast(seed, tf.int64), i]))
        ds = tf.data.Dataset.zip((ds, counter)).map(
            lambda xy, s: _augment(xy[0], xy[1], s), num_parallel_calls=tf.data.AUTOTUNE
        )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def warmup_cosine(learning_rate: float, steps_per_epoch: int, epochs: int,
                  warmup_epochs: float) -> keras.optimizers.schedules.LearningRateSchedule:
    """Returns a linear warm-up from ``learning_rate / 100`` to ``learning_rate``, then cosine to 0.

    Args:
        learning_rate: Peak learning rate, reached at the end of the warm-up.
        steps_per_epoch: Optimizer steps per epoch.
        epochs: Training epochs.
        warmup_epochs: Warm-up length in epochs (capped one step short of the whole run).

    Returns:
        A ``keras.optimizers.schedules.CosineDecay`` with warm-up.
    """
    total_steps = steps_per_epoch * epochs
    warmup_steps = min(int(warmup_epochs * steps_per_epoch), total_steps - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 100.0,
        decay_steps=total_steps - warmup_steps,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )


def accuracy(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    """Returns the top-1 accuracy (fraction in [0, 1]) of ``model``'s logits on ``images``."""
    logits = model.predict(images, batch_size=500, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def save_checked(model: keras.Model, output: pathlib.Path, images: np.ndarray,
                 labels: np.ndarray) -> float:
    """Saves ``model`` atomically and checks that the saved file reproduces it.

    Args:
        model: An uncompiled model (no optimizer state) to save.
        output: Destination ``.keras`` path.
        images: Images the reloaded model must score the same on (e.g. the first 1,000 test images).
        labels: Their labels.

    Returns:
        The accuracy of the saved model on ``images``.

    Raises:
        RuntimeError: If the reloaded model's accuracy on ``images`` differs from ``model``'s.
    """
    expected = accuracy(model, images, labels)
    files.atomic_write(output, model.save)
    reloaded = keras.saving.load_model(output, compile=False)
    received = accuracy(reloaded, images, labels)
    if received != expected:
        raise RuntimeError(
            f"Saved model at {output} does not reproduce the trained one. Expected accuracy "
            f"{expected} on {len(images)} images. Received: {received}."
        )
    return received


def run_record(output: pathlib.Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Returns the JSON record of a training run: ``fields`` plus file, sha256, command, versions.

    Args:
        output: The saved ``.keras`` file (its name and sha256 go in the record).
        fields: Run-specific entries (model name, accuracies, hyper-parameters, seconds...).

    Returns:
        ``{"model": ..., "file", "sha256", **fields, "command", versions, "cpu_count", "date"}``.
    """
    command = " ".join(["python", shlex.quote(os.path.relpath(sys.argv[0], REPO))]
                       + [shlex.quote(a) for a in sys.argv[1:]])
    record = {"model": fields.get("model"), "file": output.name,
              "sha256": hashlib.sha256(output.read_bytes()).hexdigest()}
    record.update(fields)
    record.update({
        "command": command,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    return record


def write_record(output: pathlib.Path, record: dict[str, Any]) -> pathlib.Path:
    """Writes ``record`` atomically as JSON next to ``output`` (same path, ``.json``) and returns that path."""
    path = output.with_suffix(".json")
    files.atomic_write(path, json.dumps(record, indent=2) + "\n")
    return path


def count_trainable(model: keras.Model) -> int:
    """Returns the number of trainable scalars of ``model``."""
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


def clean_copy(build: Callable[[], keras.Model], trained: keras.Model) -> keras.Model:
    """Returns a fresh uncompiled model from ``build()`` holding ``trained``'s weights."""
    clean = build()
    clean.set_weights(trained.get_weights())
    return clean
