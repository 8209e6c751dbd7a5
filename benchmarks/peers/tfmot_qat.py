r"""TFMOT's quantization-aware training on the bundled architecture, in Keras 2 (the QAT peer).

Runs in its own virtual environment (benchmarks/peers/setup_tfmot.sh) with TF_USE_LEGACY_KERAS=1,
because tensorflow-model-optimization 0.8.1 only accepts tf_keras models. benchmarks/bench_qat.py
writes the inputs and runs this script as a subprocess:

    TF_USE_LEGACY_KERAS=1 /tmp/tfmot_venv/bin/python benchmarks/peers/tfmot_qat.py \
        --arch=arch.json --weights=weights.npz --data=data.npz --output=result.json

* arch.json: the Keras 3 model as a layer list ({"class_name", "name", "config", "inbound"}),
  rebuilt here layer by layer with tf_keras (config keys a tf_keras constructor does not take
  are dropped; weights come from weights.npz, "<layer>:<index>" in get_weights() order);
* data.npz: uint8 train (already shuffled: fit runs with shuffle=False, as the aimet_tf runs do)
  and test images + labels; images are fed as pixel / 255 in float32 exactly as
  aimet_tf.datasets does;
* result.json: accuracies of the rebuilt FP32 model, a float fine-tune and TFMOT QAT (default
  8-bit scheme) after the same epochs with the same optimizer, and the training step times
  (wall and process CPU time, best of repeated interleaved epochs over a fixed subset of
  batches).

Needs only numpy, tensorflow, tf_keras and tensorflow_model_optimization (no aimet_tf).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

_ALWAYS_ALLOWED = {"name", "trainable"}


def _log(message: str) -> None:
    print(f"[tfmot_qat] {message}", file=sys.stderr, flush=True)


def _layer_kwargs(cls, config: dict) -> dict:
    """The config entries ``cls`` accepts as constructor arguments."""
    accepted = set(inspect.signature(cls.__init__).parameters) | _ALWAYS_ALLOWED
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items() if k in accepted}


def build_model(arch: dict, weights: dict) -> tf_keras.Model:
    """Rebuilds the functional model described by ``arch`` with tf_keras and loads ``weights``."""
    tensors = {}
    for spec in arch["inputs"]:
        tensors[spec["name"]] = tf_keras.Input(shape=tuple(spec["shape"]), name=spec["name"])
    layers = []
    for spec in arch["layers"]:
        cls = getattr(tf_keras.layers, spec["class_name"], None)
        if cls is None:
            raise ValueError(f"tf_keras has no layer class {spec['class_name']!r} (layer {spec['name']!r})")
        layer = cls(**_layer_kwargs(cls, spec["config"]))
        inbound = [tensors[name] for name in spec["inbound"]]
        tensors[spec["name"]] = layer(inbound if len(inbound) > 1 else inbound[0])
        layers.append((spec["name"], layer))
    model = tf_keras.Model(
        [tensors[s["name"]] for s in arch["inputs"]], [tensors[name] for name in arch["outputs"]]
    )
    for name, layer in layers:
        count = len(layer.get_weights())
        if count:
            layer.set_weights([weights[f"{name}:{i}"] for i in range(count)])
    return model


def load_inputs(arch_path: str, weights_path: str, data_path: str) -> tuple[dict, dict, dict]:
    """The handed-over architecture, weights and data: images as float32 in [0, 1] with a channel
    axis (``x_*`` arrays of uint8 pixels in the file), labels as int64 (``y_*``)."""
    with open(arch_path, encoding="utf-8") as f:
        arch = json.load(f)
    weights = dict(np.load(weights_path))
    scale = np.float32(255.0)
    arrays = {}
    with np.load(data_path) as data:
        for key in data.files:
            value = data[key]
            arrays[key] = (value.astype(np.float32) / scale)[..., np.newaxis] if key.startswith("x_") else value.astype(np.int64)
    return arch, weights, arrays


def _accuracy(model, x, y, batch_size: int) -> float:
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def _compile(model, learning_rate: float) -> None:
    model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


class _EpochTimer(tf_keras.callbacks.Callback):
    """Wall time and process CPU time (all threads) of each epoch."""

    def __init__(self):
        super().__init__()
        self.seconds = []
        self.cpu_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu_start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--timing_batches", type=int, default=20)
    parser.add_argument("--timing_repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    arch, weights, data = load_inputs(args.arch, args.weights, args.data)
    x_train, x_test, y_train, y_test = data["x_train"], data["x_test"], data["y_train"], data["y_test"]
    bs = args.batch_size
    result = {
        "versions": {
            "tensorflow": tf.__version__,
            "tf_keras": tf_keras.__version__,
            "tensorflow_model_optimization": tfmot.__version__,
        },
        "epochs": args.epochs,
        "batch_size": bs,
        "learning_rate": args.learning_rate,
        "train_images": int(len(x_train)),
    }

    tf_keras.utils.set_random_seed(args.seed)
    fp32 = build_model(arch, weights)
    result["fp32_accuracy"] = _accuracy(fp32, x_test, y_test, 512)
    result["params"] = int(fp32.count_params())
    _log(f"rebuilt FP32 model: {result['params']} parameters, test accuracy {result['fp32_accuracy']:.4f}")

    float_model = build_model(arch, weights)
    _compile(float_model, args.learning_rate)
    start = time.perf_counter()
    float_model.fit(x_train, y_train, batch_size=bs, epochs=args.epochs, shuffle=False, verbose=0)
    result["float_finetune_seconds"] = time.perf_counter() - start
    result["float_finetune_accuracy"] = _accuracy(float_model, x_test, y_test, 512)
    _log(
        f"float fine-tune: {result['float_finetune_accuracy']:.4f} in "
        f"{result['float_finetune_seconds']:.0f} s"
    )

    qat_model = tfmot.quantization.keras.quantize_model(build_model(arch, weights))
    result["qat_untrained_accuracy"] = _accuracy(qat_model, x_test, y_test, 512)
    _compile(qat_model, args.learning_rate)
    start = time.perf_counter()
    qat_model.fit(x_train, y_train, batch_size=bs, epochs=args.epochs, shuffle=False, verbose=0)
    result["qat_seconds"] = time.perf_counter() - start
    result["qat_accuracy"] = _accuracy(qat_model, x_test, y_test, 512)
    _log(f"TFMOT QAT: {result['qat_accuracy']:.4f} in {result['qat_seconds']:.0f} s")

    # Step time: both models on the same fixed batches, epochs interleaved, best epoch kept.
    n = args.timing_batches * bs
    subset = tf.data.Dataset.from_tensor_slices((x_train[:n], y_train[:n])).batch(bs).cache()
    timers = {"float": _EpochTimer(), "qat": _EpochTimer()}
    models = {"float": float_model, "qat": qat_model}
    for model in models.values():
        model.fit(subset, epochs=1, verbose=0)  # warm-up (traces, fills the cache)
    for _ in range(args.timing_repeats):
        for key, model in models.items():
            model.fit(subset, epochs=1, verbose=0, callbacks=[timers[key]])
    for key in models:
        result[f"{key}_step_ms"] = 1000.0 * min(timers[key].seconds) / args.timing_batches
        result[f"{key}_step_ms_median"] = 1000.0 * float(np.median(timers[key].seconds)) / args.timing_batches
        result[f"{key}_step_cpu_ms"] = 1000.0 * min(timers[key].cpu_seconds) / args.timing_batches
    result["step_time_ratio"] = result["qat_step_ms"] / result["float_step_ms"]
    result["step_cpu_time_ratio"] = result["qat_step_cpu_ms"] / result["float_step_cpu_ms"]
    result["timing_batches"] = args.timing_batches
    result["timing_repeats"] = args.timing_repeats
    _log(f"step: float {result['float_step_ms']:.1f} ms, QAT {result['qat_step_ms']:.1f} ms")

    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
