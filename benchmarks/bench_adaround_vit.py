"""AdaRound on the bundled ViT: FP32, W4A8 nearest rounding and W4A8 AdaRound, config "tflite".

One run measures, on the 10k Fashion-MNIST test split with the 2,000 bundled calibration images:
the float model, the W4A8 simulation with nearest rounding, and the W4A8 simulation with the
AdaRounded parameter encodings frozen (``set_and_freeze_param_encodings``), plus AdaRound's wall
time and its per-layer statistics (which kernels it optimised, reconstruction error of nearest
and AdaRound rounding on the held-out samples).

Which layers AdaRound optimises is the code's: run the script with ``PYTHONPATH`` pointing at a
checkout before MultiHeadAttention support for the Dense-only baseline.

    PYTHONPATH=. python benchmarks/bench_adaround_vit.py --iterations 2000 --out /tmp/vit_ada.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import keras
import numpy as np

from aimet_tf import datasets, metrics
from aimet_tf.ptq.adaround import AdaroundParameters, apply_adaround
from aimet_tf.quantization import QuantizationSimModel

BATCH = 256
CONFIG = "tflite"


class _LayerLogs(keras.callbacks.Callback):
    """Collects AdaRound's per-layer logs (one "epoch" per layer)."""

    def __init__(self):
        super().__init__()
        self.layers: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        self.layers.append({k: (float(v) if isinstance(v, (int, float, np.floating, bool)) else v)
                            for k, v in (logs or {}).items()})


def sim_accuracy(model: keras.Model, x_cal: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 encodings: str | None = None) -> float:
    """Top-1 accuracy of the W4A8 simulation of ``model`` (param encodings frozen from a file if given)."""
    sim = QuantizationSimModel(model, default_param_bw=4, default_output_bw=8, config_file=CONFIG)
    if encodings is not None:
        sim.set_and_freeze_param_encodings(encodings)
    sim.compute_encodings(x_cal, batch_size=BATCH)
    return metrics.top1_accuracy(sim.model.predict(x_test, batch_size=BATCH, verbose=0), y_test)


def run(iterations: int, skip_baselines: bool) -> dict:
    model = datasets.load_bundled_vit()
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_cal, _ = datasets.load_fashion_mnist("calibration")
    result: dict = {"config": CONFIG, "iterations": iterations, "calibration": len(x_cal), "test": len(x_test)}
    if not skip_baselines:
        result["fp32"] = metrics.top1_accuracy(model.predict(x_test, batch_size=BATCH, verbose=0), y_test)
        result["nearest_w4a8"] = sim_accuracy(model, x_cal, x_test, y_test)
    logs = _LayerLogs()
    workdir = tempfile.mkdtemp(prefix="adaround_vit_")
    params = AdaroundParameters(x_cal, num_batches=-(-len(x_cal) // 32), default_num_iterations=iterations)
    started = time.perf_counter()
    ada = apply_adaround(model, params, path=workdir, filename_prefix="vit", config_file=CONFIG,
                         verbose=0, callbacks=[logs])
    result["adaround_seconds"] = time.perf_counter() - started
    result["load_average"] = os.getloadavg()[0]
    result["adaround_w4a8"] = sim_accuracy(ada, x_cal, x_test, y_test, os.path.join(workdir, "vit.encodings"))
    result["layers"] = logs.layers
    result["num_layers"] = len(logs.layers)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000, help="AdaRound iterations per layer")
    parser.add_argument("--skip-baselines", action="store_true", help="skip FP32 and nearest rounding")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    result = run(args.iterations, args.skip_baselines)
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    summary = {k: v for k, v in result.items() if k != "layers"}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
