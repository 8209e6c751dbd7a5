r"""TFMOT's magnitude pruning of a model, fine-tuned, written as float and int8 .tflite (the pruning peer).

Runs in the TFMOT virtual environment (benchmarks/peers/setup_tfmot.sh) with TF_USE_LEGACY_KERAS=1.
benchmarks/bench_compress.py writes the inputs (the same files as benchmarks/bench_qat.py: arch.json,
weights.npz, data.npz with uint8 train/test images and a calibration set) and runs:

    TF_USE_LEGACY_KERAS=1 /tmp/tfmot_venv/bin/python benchmarks/peers/tfmot_prune.py \
        --arch=arch.json --weights=weights.npz --data=data.npz --sparsity=0.5 --output_dir=out

It applies ``prune_low_magnitude`` to every layer it supports with ``ConstantSparsity(sparsity)``,
fine-tunes one epoch (Adam, the given learning rate, ``UpdatePruningStep``), strips the pruning
wrappers and writes ``float.tflite`` and ``int8.tflite`` (TFLite's full-integer PTQ on the
calibration images) plus ``result.json`` (Keras accuracy after fine-tuning, the weights' measured
sparsity, versions). The caller scores the .tflite files with its own LiteRT, so both sides run
the same interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tfmot_qat import build_model, load_inputs  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--sparsity", type=float, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0.0 <= args.sparsity < 1.0:
        raise SystemExit(f"Expected --sparsity in [0, 1). Received: {args.sparsity}")

    arch, weights, data = load_inputs(args.arch, args.weights, args.data)
    x_train, x_test, x_cal = data["x_train"], data["x_test"], data["x_cal"]
    y_train, y_test = data["y_train"], data["y_test"]

    tf_keras.utils.set_random_seed(args.seed)
    steps = int(np.ceil(len(x_train) / args.batch_size)) * args.epochs
    schedule = tfmot.sparsity.keras.ConstantSparsity(args.sparsity, begin_step=0, frequency=max(1, steps // 20))
    pruned = tfmot.sparsity.keras.prune_low_magnitude(build_model(arch, weights), pruning_schedule=schedule)
    pruned.compile(
        optimizer=tf_keras.optimizers.Adam(args.learning_rate),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    pruned.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    logits = stripped.predict(x_test, batch_size=512, verbose=0)
    kernels = [w for layer in stripped.layers for w in layer.get_weights()[:1] if w.ndim >= 2]
    zeros = sum(int(np.sum(k == 0)) for k in kernels)
    total = sum(int(k.size) for k in kernels)

    os.makedirs(args.output_dir, exist_ok=True)
    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    float_bytes = converter.convert()
    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x_cal[i : i + 1]] for i in range(len(x_cal)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.float32
    converter.inference_output_type = tf.float32
    int8_bytes = converter.convert()
    for name, content in (("float.tflite", float_bytes), ("int8.tflite", int8_bytes)):
        with open(os.path.join(args.output_dir, name), "wb") as f:
            f.write(content)
    result = {
        "versions": {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "tensorflow_model_optimization": tfmot.__version__},
        "sparsity_target": args.sparsity,
        "kernel_sparsity": zeros / max(total, 1),
        "keras_accuracy": float(np.mean(np.argmax(logits, -1) == y_test)),
        "params": int(stripped.count_params()),
    }
    tmp = os.path.join(args.output_dir, "result.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, os.path.join(args.output_dir, "result.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
