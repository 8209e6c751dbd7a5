r"""The benchmark model set: Fashion-MNIST models of different shapes, trained here, plus MLTK's.

Every model is a real trained network; none is used to tune aimet_tf's defaults on its own (the
defaults are chosen over the whole set, see ``bench_peers``).

Fashion-MNIST models (``benchmarks/models/<name>.keras`` + ``<name>.json``, trained by this file):

* ``bundled_cnn``: the package's own model (``aimet_tf/assets``): MobileNet-style, BN, ReLU6, Adds.
* ``plain_cnn``: Conv+ReLU / MaxPool / Flatten / Dense, no batch norm, biases everywhere.
* ``mlp``: Flatten and three Dense layers, no convolution at all.
* ``ds_residual``: small depthwise-separable net with residual Adds (62k parameters), like
  the model issue 13 was found on.
* ``mobilenet_v2``: inverted residuals with depthwise 3x3 and 5x5, ReLU6, BN, at 32x32 (Fashion-MNIST
  zero-padded by 2 pixels per side): the depthwise-heavy model.

Retrain one (deterministic for a given machine and versions):

    python -m benchmarks.zoo --train=plain_cnn,mlp
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
from typing import Callable, Iterator, Sequence

import keras
import numpy as np

from aimet_tf import datasets, files

MODELS_DIR = pathlib.Path(__file__).resolve().parent / "models"


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """One Fashion-MNIST benchmark model: how to build it, train it and feed it."""

    name: str
    build: Callable[[], keras.Model]
    epochs: int
    learning_rate: float
    pad: int = 0  # zero pixels added on each side of the 28x28 image
    description: str = ""

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Fashion-MNIST images ([N, 28, 28, 1] in [0, 1]) as this model's input."""
        if not self.pad:
            return x
        p = self.pad
        return np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


def _plain_cnn() -> keras.Model:
    inp = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv1")(inp)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", name="conv3")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="fc1")(x)
    out = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inp, out, name="plain_cnn")


def _mlp() -> keras.Model:
    inp = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Flatten(name="flatten")(inp)
    x = keras.layers.Dense(256, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(128, activation="relu", name="fc2")(x)
    out = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inp, out, name="mlp")


def _bn_relu(x, name: str, relu6: bool = True):
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(max_value=6.0 if relu6 else None, name=f"{name}_relu")(x)


def _ds_residual() -> keras.Model:
    inp = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False, name="stem")(inp)
    x = _bn_relu(x, "stem", relu6=False)
    for i, (filters, stride) in enumerate([(32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (160, 1)]):
        name = f"b{i}"
        shortcut = x
        y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
        y = _bn_relu(y, f"{name}_dw", relu6=False)
        y = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(y)
        y = keras.layers.BatchNormalization(name=f"{name}_pw_bn")(y)
        if stride == 1 and shortcut.shape[-1] == filters:
            y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
        x = keras.layers.ReLU(name=f"{name}_out")(y)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inp, out, name="ds_residual")


def _mobilenet_v2() -> keras.Model:
    inp = keras.Input((32, 32, 1), name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = _bn_relu(x, "stem")
    # (expansion, output channels, depthwise kernel, stride)
    blocks = [(1, 16, 3, 1), (4, 24, 3, 1), (4, 24, 5, 1), (4, 40, 5, 2), (4, 40, 3, 1), (4, 64, 5, 2),
              (4, 64, 3, 1)]
    for i, (expand, filters, kernel, stride) in enumerate(blocks):
        name = f"ir{i}"
        shortcut = x
        y = x
        if expand != 1:
            y = keras.layers.Conv2D(x.shape[-1] * expand, 1, use_bias=False, name=f"{name}_expand")(y)
            y = _bn_relu(y, f"{name}_expand")
        y = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(y)
        y = _bn_relu(y, f"{name}_dw")
        y = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(y)
        y = keras.layers.BatchNormalization(name=f"{name}_project_bn")(y)
        if stride == 1 and shortcut.shape[-1] == filters:
            y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
        x = y
    x = keras.layers.Conv2D(128, 1, use_bias=False, name="head")(x)
    x = _bn_relu(x, "head")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inp, out, name="mobilenet_v2")


TRAINED = {
    m.name: m
    for m in (
        ZooModel("plain_cnn", _plain_cnn, epochs=6, learning_rate=2e-3,
                 description="Conv+ReLU, MaxPool, Flatten, Dense; no batch norm"),
        ZooModel("mlp", _mlp, epochs=10, learning_rate=2e-3, description="three Dense layers"),
        ZooModel("ds_residual", _ds_residual, epochs=3, learning_rate=4e-3,
                 description="depthwise-separable blocks with residual Adds, BN, ReLU"),
        ZooModel("mobilenet_v2", _mobilenet_v2, epochs=3, learning_rate=4e-3, pad=2,
                 description="inverted residuals, depthwise 3x3 and 5x5, BN, ReLU6, 32x32 input"),
    )
}
FASHION_MNIST_MODELS = ("bundled_cnn", *TRAINED)


def model_path(name: str) -> pathlib.Path:
    return MODELS_DIR / f"{name}.keras"


def load(name: str) -> tuple[keras.Model, Callable[[np.ndarray], np.ndarray]]:
    """A Fashion-MNIST benchmark model and the function that turns 28x28 images into its input.

    Raises:
        ValueError: for a name not in ``FASHION_MNIST_MODELS``.
        FileNotFoundError: if the trained file is missing (train it with ``--train``).
    """
    if name == "bundled_cnn":
        return datasets.load_bundled_model(), lambda x: x
    if name not in TRAINED:
        raise ValueError(f"Unknown benchmark model. Expected one of {FASHION_MNIST_MODELS}. Received: {name!r}")
    path = model_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected the trained model {path}. Received: missing. Fix: python -m benchmarks.zoo --train={name}"
        )
    return keras.saving.load_model(path, compile=False), TRAINED[name].prepare


@dataclasses.dataclass
class Case:
    """One benchmark model with its data: calibrate on ``x_cal``, score on ``x_test``.

    ``y_test`` is None where no labels exist (MLTK models on real inputs): scores are then the
    top-1 agreement with the FP32 model.
    """

    name: str
    model: keras.Model
    x_cal: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray | None
    description: str


def cases(names: Sequence[str] | None = None) -> Iterator[Case]:
    """The benchmark set (default: the five Fashion-MNIST models, then the four MLTK models).

    Fashion-MNIST: 2,000 bundled calibration images, the 10,000-image test split. MLTK: their real
    inputs (``aimet_tf.testing.real_inputs``), even indices calibrate and odd ones score.
    """
    from aimet_tf.testing.mltk_models import MLTK_MODEL_NAMES, load_mltk_model
    from aimet_tf.testing.real_inputs import describe_inputs, real_inputs

    names = list(names) if names is not None else [*FASHION_MNIST_MODELS, *MLTK_MODEL_NAMES]
    unknown = sorted(set(names) - set(FASHION_MNIST_MODELS) - set(MLTK_MODEL_NAMES))
    if unknown:
        raise ValueError(
            f"Unknown benchmark models {unknown}. Expected names from {[*FASHION_MNIST_MODELS, *MLTK_MODEL_NAMES]}."
        )
    x_cal = x_test = y_test = None
    for name in names:
        if name in FASHION_MNIST_MODELS:
            if x_cal is None:
                x_cal, _ = datasets.load_fashion_mnist("calibration")
                x_test, y_test = datasets.load_fashion_mnist("test")
            model, prepare = load(name)
            description = TRAINED[name].description if name in TRAINED else "the bundled model (MobileNet-style, BN, ReLU6, Adds)"
            yield Case(name, model, prepare(x_cal), prepare(x_test), y_test,
                       f"{description}; {model.count_params():,} parameters; Fashion-MNIST")
        else:
            mltk = load_mltk_model(name)
            x = real_inputs(name)
            yield Case(name, mltk.keras_model, x[0::2], x[1::2], None,
                       f"MLTK, {mltk.keras_model.count_params():,} parameters; {describe_inputs(name)}")


def train(name: str, seed: int = 0, batch_size: int = 128) -> dict:
    """Trains one model on the 60k train split and saves it (model and record written atomically)."""
    spec = TRAINED[name]
    keras.utils.set_random_seed(seed)
    x_train, y_train = datasets.load_fashion_mnist("train")
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_train, x_test = spec.prepare(x_train), spec.prepare(x_test)
    model = spec.build()
    steps = spec.epochs * -(-len(x_train) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=spec.learning_rate,
                                                      warmup_steps=steps // 20)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    t = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=batch_size, epochs=spec.epochs, verbose=2, shuffle=True)
    seconds = time.perf_counter() - t
    logits = model.predict(x_test, batch_size=512, verbose=0)
    record = {
        "model": name,
        "description": spec.description,
        "params": int(model.count_params()),
        "fp32_test_accuracy": float(np.mean(np.argmax(logits, -1) == y_test)),
        "final_train_accuracy": float(history.history["accuracy"][-1]),
        "epochs": spec.epochs,
        "batch_size": batch_size,
        "optimizer": f"Adam, linear warm-up 5% then cosine decay from {spec.learning_rate}",
        "input_padding": spec.pad,
        "seed": seed,
        "seconds": round(seconds, 1),
        "command": f"python -m benchmarks.zoo --train={name}",
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    MODELS_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=MODELS_DIR) as tmp:
        staged = os.path.join(tmp, f"{name}.keras")
        model.save(staged)
        os.replace(staged, model_path(name))
    files.atomic_write(MODELS_DIR / f"{name}.json", json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str]) -> int:
    names = []
    for arg in argv[1:]:
        if arg.startswith("--train="):
            names += [n for n in arg.split("=", 1)[1].split(",") if n]
        else:
            print(f"Expected --train=NAME[,NAME]. Received: {arg!r}", file=sys.stderr)
            return 2
    unknown = sorted(set(names) - set(TRAINED))
    if unknown or not names:
        print(f"Expected --train= with names from {sorted(TRAINED)}. Received: {names}", file=sys.stderr)
        return 2
    for name in names:
        print(json.dumps(train(name)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
