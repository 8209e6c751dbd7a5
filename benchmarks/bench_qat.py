"""Issue 7 benchmark: quantization-aware training of the bundled Fashion-MNIST CNN with model.fit.

One run, same data order, optimizer, batch size and epochs for every trained variant:

* FP32 (the bundled model) and a float fine-tune for the same epochs (QAT is compared with it:
  extra training alone may move accuracy);
* W8A8 / W4A8 / W4A4 post-training quantization (tf_enhanced, htp config) and the same sims
  after QAT with range learning (tf_enhanced_range_learning), W4A8 QAT followed by BN
  re-estimation and by ``fold_all_batch_norms_to_scale``, W4A8 QAT with static grids
  (straight-through estimator), and W4A8 QAT on the BN-folded model (AIMET's QAT flow);
* training step time of the QAT sims as a ratio to the FP32 step, measured back to back on a
  fixed subset of batches (epochs interleaved, best epoch kept);
* the peer: TFMOT's QAT (default 8-bit scheme) on the same architecture rebuilt in tf_keras with
  the same weights, data and settings, in its own virtual environment
  (benchmarks/peers/setup_tfmot.sh, run as a subprocess; its JSON result is parsed here).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from aimet_tf import datasets, metrics
from aimet_tf.ptq import fold_all_batch_norms, fold_all_batch_norms_to_scale
from aimet_tf.qat import reestimate_bn_stats
from aimet_tf.quantization import QuantizationSimModel
from aimet_tf.quantization.graph import layer_edges

EPOCHS = 1
BATCH = 128
LEARNING_RATE = 1e-4
SEED = 0
CONFIG = "htp"
PTQ_SCHEME = "tf_enhanced"
QAT_SCHEME = "tf_enhanced_range_learning"
BN_REESTIMATION_BATCHES = 100
TIMING_BATCHES = 20
TIMING_REPEATS = 5
TFMOT_TIMEOUT_SECONDS = 1500

_HERE = os.path.dirname(os.path.abspath(__file__))
_PEER_SCRIPT = os.path.join(_HERE, "peers", "tfmot_qat.py")
_PEER_SETUP = os.path.join(_HERE, "peers", "setup_tfmot.sh")


def _venv() -> str:
    return os.environ.get("TFMOT_VENV", "/tmp/tfmot_venv")


def _accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return metrics.top1_accuracy(model.predict(x, batch_size=512, verbose=0), y)


def _compile(model: keras.Model) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def _fit(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    return time.perf_counter() - start


def _sim(
    model: keras.Model, scheme: str, param_bw: int, output_bw: int, x_cal: np.ndarray
) -> QuantizationSimModel:
    sim = QuantizationSimModel(
        model, quant_scheme=scheme, default_param_bw=param_bw, default_output_bw=output_bw, config_file=CONFIG
    )
    sim.compute_encodings(x_cal, batch_size=256)
    return sim


class _EpochTimer(keras.callbacks.Callback):
    """Wall time and process CPU time (all threads) of each epoch."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu_start)


def measure_step_times(
    models: dict[str, keras.Model], x: np.ndarray, y: np.ndarray
) -> dict[str, tuple[float, float]]:
    """Best per-step training time of each compiled model on the same fixed batches.

    Every model first runs one untimed epoch (tracing); then epochs of all models are interleaved
    ``TIMING_REPEATS`` times, so load changes on a shared machine hit all of them alike.

    Returns:
        name -> (wall ms per step, process CPU ms per step), each the best epoch. CPU time (all
        threads of this process) is far less sensitive to other processes on the machine.
    """
    n = TIMING_BATCHES * BATCH
    subset = tf.data.Dataset.from_tensor_slices((x[:n], y[:n])).batch(BATCH).cache()
    timers = {name: _EpochTimer() for name in models}
    for model in models.values():
        model.fit(subset, epochs=1, verbose=0)
    for _ in range(TIMING_REPEATS):
        for name, model in models.items():
            model.fit(subset, epochs=1, verbose=0, callbacks=[timers[name]])
    return {
        name: (1000.0 * min(t.seconds) / TIMING_BATCHES, 1000.0 * min(t.cpu_seconds) / TIMING_BATCHES)
        for name, t in timers.items()
    }


def export_architecture(model: keras.Model, folder: str) -> tuple[str, str]:
    """Writes the model as a layer list (JSON) + weights (npz) that tf_keras can rebuild.

    Only plain config values are kept (initializers, dtype policies and other nested objects are
    Keras-3-specific and irrelevant once the trained weights are loaded).
    """
    producers, consumers = layer_edges(model)
    layers = []
    inputs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            inputs.append({"name": layer.name, "shape": list(layer.batch_shape[1:])})
            continue
        config = {
            k: v for k, v in layer.get_config().items()
            if k != "dtype" and (v is None or isinstance(v, (str, int, float, bool, list, tuple)))
        }
        layers.append(
            {"class_name": type(layer).__name__, "name": layer.name, "config": config,
             "inbound": producers[layer.name]}
        )
    arch = {"inputs": inputs, "layers": layers, "outputs": [name for name, c in consumers.items() if not c]}
    arch_path = os.path.join(folder, "arch.json")
    weights_path = os.path.join(folder, "weights.npz")
    with open(arch_path, "w", encoding="utf-8") as f:
        json.dump(arch, f)
    weights = {}
    for layer in model.layers:
        for i, w in enumerate(layer.get_weights()):
            weights[f"{layer.name}:{i}"] = w
    np.savez(weights_path, **weights)
    return arch_path, weights_path


def _to_uint8(x: np.ndarray) -> np.ndarray:
    pixels = np.round(x[..., 0] * 255.0).astype(np.uint8)
    # The peer feeds pixel / 255 in float32: check that this reproduces our inputs bit for bit.
    if not np.array_equal(pixels.astype(np.float32) / np.float32(255.0), x[..., 0]):
        raise ValueError("Images are not pixel / 255: the TFMOT peer would see different inputs.")
    return pixels


def run_tfmot_peer(
    model, x_train, y_train, x_test, y_test, timing_batches: int = TIMING_BATCHES,
    timing_repeats: int = TIMING_REPEATS,
) -> dict:
    """Runs benchmarks/peers/tfmot_qat.py in the TFMOT venv and returns its JSON result.

    Returns {"error": message} if the peer environment cannot be set up or the run fails.
    """
    python = os.path.join(_venv(), "bin", "python")
    if not os.path.exists(python):
        logging.info("TFMOT peer: creating its environment with %s", _PEER_SETUP)
        setup = subprocess.run(["bash", _PEER_SETUP, _venv()], capture_output=True, text=True)
        if setup.returncode != 0:
            return {"error": f"setup_tfmot.sh failed: {setup.stderr.strip()[-400:]}"}
    with tempfile.TemporaryDirectory() as folder:
        arch_path, weights_path = export_architecture(model, folder)
        data_path = os.path.join(folder, "data.npz")
        np.savez(
            data_path, x_train=_to_uint8(x_train), y_train=y_train, x_test=_to_uint8(x_test), y_test=y_test
        )
        out_path = os.path.join(folder, "result.json")
        command = [
            python, _PEER_SCRIPT, f"--arch={arch_path}", f"--weights={weights_path}", f"--data={data_path}",
            f"--output={out_path}", f"--epochs={EPOCHS}", f"--batch_size={BATCH}",
            f"--learning_rate={LEARNING_RATE}", f"--timing_batches={timing_batches}",
            f"--timing_repeats={timing_repeats}", f"--seed={SEED}",
        ]
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
        logging.info("TFMOT peer: %s", " ".join(command))
        try:
            proc = subprocess.run(
                command, capture_output=True, text=True, env=env, timeout=TFMOT_TIMEOUT_SECONDS
            )
        except subprocess.TimeoutExpired:
            return {"error": f"the TFMOT peer exceeded {TFMOT_TIMEOUT_SECONDS} s"}
        if proc.returncode != 0 or not os.path.exists(out_path):
            return {"error": f"the TFMOT peer failed (exit {proc.returncode}): {proc.stderr.strip()[-600:]}"}
        with open(out_path, encoding="utf-8") as f:
            return json.load(f)


def run() -> str:
    started = time.perf_counter()
    model = datasets.load_bundled_model()
    x_train, y_train = datasets.load_fashion_mnist("train")
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_cal, _ = datasets.load_fashion_mnist("calibration")
    # One fixed shuffle, shared by every trained variant (and the peer): fit runs shuffle=False.
    order = np.random.default_rng(SEED).permutation(len(x_train))
    x_train, y_train = x_train[order], y_train[order]
    keras.utils.set_random_seed(SEED)

    fp32_acc = _accuracy(model, x_test, y_test)
    logging.info("FP32 test accuracy %.4f", fp32_acc)
    float_ft = keras.models.clone_model(model)
    float_ft.set_weights(model.get_weights())
    _compile(float_ft)
    float_seconds = _fit(float_ft, x_train, y_train)
    float_ft_acc = _accuracy(float_ft, x_test, y_test)
    logging.info("float fine-tune: %.4f (%.0f s)", float_ft_acc, float_seconds)

    rows = []  # (variant, PTQ acc, QAT acc, QAT seconds)
    trained = {}
    for param_bw, output_bw in ((8, 8), (4, 8), (4, 4)):
        label = f"W{param_bw}A{output_bw}"
        ptq = _sim(model, PTQ_SCHEME, param_bw, output_bw, x_cal)
        ptq_acc = _accuracy(ptq.model, x_test, y_test)
        sim = _sim(model, QAT_SCHEME, param_bw, output_bw, x_cal)
        _compile(sim.model)
        seconds = _fit(sim.model, x_train, y_train)
        qat_acc = _accuracy(sim.model, x_test, y_test)
        logging.info("%s: PTQ %.4f, QAT %.4f (%.0f s)", label, ptq_acc, qat_acc, seconds)
        rows.append((label, ptq_acc, qat_acc, seconds))
        trained[label] = sim

    # The same W4A8 sim with static grids (straight-through estimator, ranges fixed by PTQ).
    static = _sim(model, PTQ_SCHEME, 4, 8, x_cal)
    _compile(static.model)
    static_seconds = _fit(static.model, x_train, y_train)
    static_acc = _accuracy(static.model, x_test, y_test)
    logging.info("W4A8 QAT, static grid: %.4f (%.0f s)", static_acc, static_seconds)

    # AIMET's QAT flow: fold the batch norms first, then build the sim and train it.
    _, folded_model = fold_all_batch_norms(model)
    folded_rows = []
    for label, scheme in (("range learning", QAT_SCHEME), (f"static grid (`{PTQ_SCHEME}`, STE)", PTQ_SCHEME)):
        sim = _sim(folded_model, scheme, 4, 8, x_cal)
        _compile(sim.model)
        seconds = _fit(sim.model, x_train, y_train)
        folded_rows.append((label, _accuracy(sim.model, x_test, y_test), seconds))
        logging.info("W4A8 QAT on the BN-folded model, %s: %.4f", label, folded_rows[-1][1])

    # QAT with batch norms in place, then BN re-estimation, then the batch norms folded into the
    # weights and their grids (what makes this sim exportable).
    w4a8 = trained["W4A8"]
    t = time.perf_counter()
    reestimate_bn_stats(w4a8, x_train, bn_num_batches=BN_REESTIMATION_BATCHES, batch_size=BATCH)
    reest_seconds = time.perf_counter() - t
    reest_acc = _accuracy(w4a8.model, x_test, y_test)
    logging.info("W4A8 QAT + BN re-estimation: %.4f", reest_acc)
    pairs = fold_all_batch_norms_to_scale(w4a8)
    fold_acc = _accuracy(w4a8.model, x_test, y_test)
    logging.info("... + fold_all_batch_norms_to_scale (%d pairs): %.4f", len(pairs), fold_acc)

    # Step times on fresh compiled models (training state does not change the step's cost).
    timing_models = {"fp32": float_ft, "fp32_folded": keras.models.clone_model(folded_model)}
    _compile(timing_models["fp32_folded"])
    for name, base, scheme in (
        ("static", model, PTQ_SCHEME), ("range_learning", model, QAT_SCHEME),
        ("static_folded", folded_model, PTQ_SCHEME), ("range_learning_folded", folded_model, QAT_SCHEME),
    ):
        timing_models[name] = _sim(base, scheme, 4, 8, x_cal).model
        _compile(timing_models[name])
    steps = measure_step_times(timing_models, x_train, y_train)
    logging.info("step times (ms): %s", steps)

    peer = run_tfmot_peer(model, x_train, y_train, x_test, y_test)
    logging.info("TFMOT peer: %s", peer)

    def pct(v):
        return f"{100 * v:.2f}"

    def delta(v):
        return f"{100 * (v - fp32_acc):+.2f}"

    lines = [
        "## Quantization-aware training on the bundled Fashion-MNIST CNN (issue 7)",
        "",
        f"Model: `aimet_tf/assets/fashion_mnist_cnn.keras` ({model.count_params():,} parameters). Every "
        f"trained variant: {EPOCHS} epoch(s) over the 60,000-image train split in one fixed shuffled order, "
        f"batch {BATCH}, Adam lr {LEARNING_RATE:g}, `sim.model.compile(...); sim.model.fit(...)`. "
        f"Sims use the `{CONFIG}` config (per-channel symmetric conv weights); PTQ = `{PTQ_SCHEME}` "
        "calibrated on the "
        f"{len(x_cal):,} bundled calibration images; QAT = `{QAT_SCHEME}` (ranges initialised the same way, "
        f"then learned). Scored on the full {len(x_test):,}-image test split.",
        "",
        "| variant | top-1 % | vs FP32 (points) | notes |",
        "|---|---|---|---|",
        f"| FP32 (bundled) | {pct(fp32_acc)} | | |",
        f"| FP32 float fine-tune, {EPOCHS} epoch(s) | {pct(float_ft_acc)} | {delta(float_ft_acc)} "
        f"| the control for QAT: same training, no quantization ({float_seconds:.0f} s) |",
    ]
    for label, ptq_acc, qat_acc, seconds in rows:
        lines.append(f"| {label} PTQ | {pct(ptq_acc)} | {delta(ptq_acc)} | |")
        goal = " (goal: within 0.5 of FP32)" if label == "W4A8" else ""
        lines.append(
            f"| {label} QAT, {EPOCHS} epoch(s) | {pct(qat_acc)} | {delta(qat_acc)} | {seconds:.0f} s incl. "
            f"tracing{goal} |"
        )
    lines.append(
        f"| W4A8 QAT, static grid (`{PTQ_SCHEME}`, STE), {EPOCHS} epoch(s) | {pct(static_acc)} | "
        f"{delta(static_acc)} | ranges fixed, weights trained; {static_seconds:.0f} s incl. tracing |"
    )
    lines.append(
        f"| W4A8 QAT + BN re-estimation ({BN_REESTIMATION_BATCHES} batches) | {pct(reest_acc)} | "
        f"{delta(reest_acc)} | `reestimate_bn_stats`, {reest_seconds:.1f} s |"
    )
    lines.append(
        f"| ... + `fold_all_batch_norms_to_scale` | {pct(fold_acc)} | {delta(fold_acc)} | {len(pairs)} batch "
        "norms moved into the weights and their per-channel grids (the exportable form) |"
    )
    for label, acc, seconds in folded_rows:
        lines.append(
            f"| W4A8 QAT on the BN-folded model, {label}, {EPOCHS} epoch(s) | {pct(acc)} | {delta(acc)} | "
            f"`fold_all_batch_norms` first (AIMET's QAT flow); {seconds:.0f} s incl. tracing |"
        )
    if "error" in peer:
        lines += ["", f"TFMOT peer: not measured - {peer['error']}"]
    else:
        lines += [
            f"| TFMOT: rebuilt FP32 in tf_keras (peer, check) | {pct(peer['fp32_accuracy'])} | "
            f"{delta(peer['fp32_accuracy'])} | same weights as ours; must equal FP32 |",
            f"| TFMOT: float fine-tune, {EPOCHS} epoch(s) (peer) | {pct(peer['float_finetune_accuracy'])} | "
            f"{delta(peer['float_finetune_accuracy'])} | tf_keras, same data/settings |",
            f"| TFMOT: `quantize_model` without training (peer) | {pct(peer['qat_untrained_accuracy'])} | "
            f"{delta(peer['qat_untrained_accuracy'])} | runs silently before any range is known |",
            f"| TFMOT: QAT W8A8, {EPOCHS} epoch(s) (peer) | {pct(peer['qat_accuracy'])} | "
            f"{delta(peer['qat_accuracy'])} | default 8-bit scheme, {peer['qat_seconds']:.0f} s |",
        ]
    lines += [
        "",
        f"Training step time, batch {BATCH}, measured back to back in this run on a fixed subset of "
        f"{TIMING_BATCHES} train batches (each model: 1 untimed epoch, then {TIMING_REPEATS} interleaved "
        "epochs, best kept). Wall time is what a user waits; process CPU time (all threads) is the "
        "steadier measure on this shared 2-core machine. The peer's ratios come from its own process, "
        "run right after ours:",
        "",
        "| training step | wall ms / step | wall ratio to its own FP32 | CPU ms / step | CPU ratio | goal |",
        "|---|---|---|---|---|---|",
    ]

    def step_row(label, wall, cpu, ref_wall, ref_cpu, goal=""):
        return (
            f"| {label} | {wall:.1f} | {wall / ref_wall:.2f}x | {cpu:.1f} | {cpu / ref_cpu:.2f}x "
            f"| {goal} |"
        )

    fw, fc = steps["fp32"]
    lines += [
        step_row("aimet_tf FP32 (Keras 3, the bundled model with its batch norms)", fw, fc, fw, fc),
        step_row("aimet_tf W4A8 QAT, static grid (STE)", *steps["static"], fw, fc, "<= 1.15x"),
        step_row("aimet_tf W4A8 QAT, range learning", *steps["range_learning"], fw, fc, "<= 1.15x"),
        step_row("aimet_tf W4A8 QAT on the BN-folded model, static grid", *steps["static_folded"], fw, fc,
                 "<= 1.15x"),
        step_row("aimet_tf W4A8 QAT on the BN-folded model, range learning", *steps["range_learning_folded"],
                 fw, fc, "<= 1.15x"),
        step_row("aimet_tf FP32 BN-folded model (reference only)", *steps["fp32_folded"], fw, fc),
    ]
    ffw, ffc = steps["fp32_folded"]
    folded_overhead = (
        f"Against the float step of the BN-folded model itself ({ffw:.1f} ms), the quantizers cost "
        f"{steps['static_folded'][0] / ffw:.2f}x (static) and {steps['range_learning_folded'][0] / ffw:.2f}x "
        "(range learning): Keras 3 runs BatchNormalization unfused in training, about half of the float step "
        "here, so folding first removes more than the quantizers add."
    )
    if "error" not in peer:
        pw, pc = peer["float_step_ms"], peer["float_step_cpu_ms"]
        lines += [
            step_row("TFMOT FP32 (tf_keras, peer)", pw, pc, pw, pc),
            step_row("TFMOT QAT W8A8 (peer)", peer["qat_step_ms"], peer["qat_step_cpu_ms"], pw, pc),
            "",
            f"Peer versions: tensorflow {peer['versions']['tensorflow']}, tf_keras "
            f"{peer['versions']['tf_keras']}, tensorflow-model-optimization "
            f"{peer['versions']['tensorflow_model_optimization']}.",
        ]
    lines += ["", folded_overhead]
    logging.info("bench_qat finished in %.0f s", time.perf_counter() - started)
    return "\n".join(lines)
