"""Runs aimet_tf under ``tf.distribute`` in fresh processes: 2 logical CPU devices, or 2 local workers.

A strategy must be set up before TensorFlow touches its devices, so every measurement here runs in
a new Python process: :func:`run_mirrored` starts one process that splits the CPU into
``replicas`` logical devices and runs ``MirroredStrategy`` over them; :func:`run_multi_worker`
starts ``workers`` processes on loopback ports, each with its ``TF_CONFIG``, that run
``MultiWorkerMirroredStrategy`` together. Each process runs :func:`main` (``python -m
aimet_tf.testing.distributed``) and the chief writes a JSON result: ``{"strategy", job: result}``
for each job of ``--job`` (comma-separated; one process runs them in turn).

Jobs (``--job``):

* ``calibrate``: for each quant scheme of ``--scheme`` (comma-separated), builds a sim of the
  bundled model (and the other ``--model`` names: MLTK models on their real inputs) under the strategy and runs ``compute_encodings`` on the first ``--samples``
  bundled calibration images, once from the arrays and once from
  ``strategy.experimental_distribute_dataset``; the result holds both activation encoding tables
  (``{name: [min, max, bitwidth]}``), the parameter ones, and the error a sim built outside the
  scope gives for the distributed data set; ``{"replicas", model: {scheme: ...}}``.
* ``qat``: calibrates as above (arrays), then ``sim.model.fit`` (``aimet_tf.distribute.fit`` under
  MultiWorkerMirroredStrategy, where Keras 3's ``fit`` fails) for ``--epochs`` on the bundled
  calibration images (range learning, the ``tflite`` config), scores the held-out half of the
  bundled test split, saves ``sim.model`` as ``.keras``, reloads it in the same process and
  compares the reloaded outputs and variables bit for bit. The result also holds the mean train
  step time of the epoch after the first (tracing excluded).

* ``adaround``: ``apply_adaround`` of the bundled model at W4 (``tflite`` config) on 256 bundled
  calibration images for ``--iterations`` per layer, each step's batch split across the
  replicas; the result holds every AdaRounded kernel.

* ``amp``: ``choose_mixed_precision`` of the bundled model (W8A8 / W8A4 weights per group, ``tf``
  scheme, top-1 on 1,000 test images, allowed drop 0.005) with phase 1 shared out over the
  processes (``workers`` from ``TF_CONFIG``; ``--results-dir`` must be the same folder for all).

Single-device reference: the same jobs with ``strategy="none"`` run in one process without a
strategy, so every figure has its peer from the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

__all__ = ["free_ports", "main", "run_mirrored", "run_multi_worker", "run_single"]

_TIMEOUT = 900


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _command(strategy: str, job: str, output: str, options: dict) -> list[str]:
    args = [sys.executable, "-m", "aimet_tf.testing.distributed", "--strategy", strategy, "--job", job,
            "--output", output]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    return args


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    # This package must import from the same place in the child as here.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env | (extra or {})


def _read(output: str, procs_text: str) -> dict:
    if not os.path.exists(output):
        raise RuntimeError(f"The distributed job wrote no result ({output}). Output tail:\n{procs_text[-4000:]}")
    with open(output, encoding="utf-8") as f:
        return json.load(f)


def run_single(job: str, **options) -> dict:
    """Runs ``job`` in one fresh process without a strategy (the single-device reference)."""
    return _run_one("none", job, options)


def run_mirrored(job: str, replicas: int = 2, **options) -> dict:
    """Runs ``job`` in one fresh process under ``MirroredStrategy`` over ``replicas`` logical CPUs."""
    return _run_one("mirrored", job, options | {"replicas": replicas})


def _run_one(strategy: str, job: str, options: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="aimet_tf_dist_") as folder:
        output = os.path.join(folder, "result.json")
        proc = subprocess.run(_command(strategy, job, output, options), capture_output=True, text=True,
                              env=_env(), timeout=_TIMEOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"{strategy} {job} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
        return _read(output, proc.stderr)


def run_multi_worker(job: str, workers: int = 2, strategy: str = "multi_worker", **options) -> dict:
    """Runs ``job`` under ``MultiWorkerMirroredStrategy`` with ``workers`` local processes on
    loopback ports (one CPU device each); returns the chief's (worker 0's) result. With
    ``strategy="processes"`` the processes get the same ``TF_CONFIG`` but make no strategy (for
    work shared out through files, such as AMP's phase 1)."""
    ports = free_ports(workers)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    with tempfile.TemporaryDirectory(prefix="aimet_tf_dist_") as folder:
        output = os.path.join(folder, "result.json")
        procs = []
        for index in range(workers):
            config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            log = open(os.path.join(folder, f"worker{index}.log"), "w+", encoding="utf-8")
            procs.append((subprocess.Popen(
                _command(strategy, job, output if index == 0 else os.path.join(folder, f"w{index}.json"), options),
                stdout=log, stderr=subprocess.STDOUT, text=True, env=_env({"TF_CONFIG": config}),
            ), log))
        deadline = time.monotonic() + _TIMEOUT
        codes = []
        try:
            for proc, _ in procs:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
        logs = []
        for _, log in procs:
            log.seek(0)
            logs.append(log.read())
            log.close()
        if any(codes):
            first = logs[0].find("Traceback")
            raise RuntimeError(f"multi-worker {job} exit codes {codes}; worker 0 log:\n"
                               f"{logs[0][first:first + 3000] if first >= 0 else ''}\n...\n{logs[0][-1500:]}")
        return _read(output, logs[0])


# ----------------------------------------------------------------------------------------------
# Inside the process


def _make_strategy(kind: str, replicas: int):
    import tensorflow as tf

    if kind == "none":
        return None
    if kind == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "processes":
        return None
    raise ValueError(f"Expected strategy none, mirrored or multi_worker. Received: {kind!r}")


def _scope(strategy):
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _encoding_table(sim) -> dict:
    table = {}
    for name, q in sim.activation_quantizers():
        if q.enabled and q.is_initialized:
            e = q.get_encoding()
            table[name] = [float(e.min), float(e.max), e.bitwidth]
    return table


def _param_table(sim) -> dict:
    out = {}
    for name, q, _ in sim.param_quantizers():
        if q.enabled and q.is_initialized:
            e = q.get_encoding()
            out[name] = [list(map(float, _flat(e.min))), list(map(float, _flat(e.max)))]
    return out


def _flat(value):
    return np.asarray(value, dtype=np.float64).reshape(-1)


def _calibration_model(name: str, samples: int) -> tuple[keras.Model, np.ndarray]:
    """The bundled model with bundled calibration images, or an MLTK model with its real inputs."""
    from aimet_tf import datasets

    if name == "bundled":
        return datasets.load_bundled_model(), datasets.load_fashion_mnist("calibration")[0][:samples]
    from aimet_tf.export import prepare_model_for_tflite
    from aimet_tf.testing.mltk_models import load_mltk_model
    from aimet_tf.testing.real_inputs import real_inputs

    return prepare_model_for_tflite(load_mltk_model(name).keras_model), real_inputs(name)[:samples]


def _calibrate(strategy, args) -> dict:
    result = {"replicas": 1 if strategy is None else strategy.num_replicas_in_sync}
    for name in args.model.split(","):
        result[name] = _calibrate_model(strategy, name, args)
    return result


def _calibrate_model(strategy, name: str, args) -> dict:
    from aimet_tf.quantization import QuantizationSimModel

    model, x = _calibration_model(name, args.samples)
    result = {}
    for scheme in args.scheme.split(","):
        with _scope(strategy):
            sim = QuantizationSimModel(model, quant_scheme=scheme, default_param_bw=8, config_file="tflite")
        start = time.perf_counter()
        sim.compute_encodings(x, batch_size=args.batch)
        first = time.perf_counter() - start
        entry = {"arrays": _encoding_table(sim), "params": _param_table(sim), "arrays_seconds": first}
        start = time.perf_counter()
        sim.compute_encodings(x, batch_size=args.batch)  # traced already: the steady-state cost
        entry["arrays_again_seconds"] = time.perf_counter() - start
        if strategy is not None:
            dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(args.batch))
            try:
                sim.compute_encodings(dataset)
                entry["distributed_dataset"] = _encoding_table(sim)
                entry["distributed_dataset_params"] = _param_table(sim)
            except ValueError as exc:  # refused: the output_mse search under several workers
                entry["distributed_dataset_error"] = str(exc)
            # A sim built outside the scope cannot take per-replica batches: the error users get.
            plain = QuantizationSimModel(model, quant_scheme=scheme, default_param_bw=8, config_file="tflite")
            try:
                plain.compute_encodings(dataset)
                entry["outside_scope_error"] = None
            except (TypeError, ValueError) as exc:
                entry["outside_scope_error"] = f"{type(exc).__name__}: {exc}"
        result[scheme] = entry
    return result


def _qat(strategy, args) -> dict:
    from aimet_tf import datasets, distribute
    from aimet_tf.quantization import QuantizationSimModel

    keras.utils.set_random_seed(1234)
    x_train, y_train = datasets.load_fashion_mnist("calibration")
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_test, y_test = x_test[1::2], y_test[1::2]
    model = datasets.load_bundled_model()
    with _scope(strategy):
        sim = QuantizationSimModel(model, quant_scheme="tf", default_param_bw=4, config_file="tflite")
        sim.compute_encodings(x_train[:500], batch_size=100)
        sim.model.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    before = _top1(sim.model, x_test, y_test)
    times = _StepTimes()
    if args.strategy == "multi_worker":
        # Keras 3's fit fails under MultiWorkerMirroredStrategy (see aimet_tf.distribute).
        distribute.fit(sim.model, x_train, y_train, batch_size=args.batch, epochs=args.epochs, callbacks=[times])
    else:
        sim.model.fit(x_train, y_train, batch_size=args.batch, epochs=args.epochs, shuffle=False, verbose=0,
                      callbacks=[times])
    after = _top1(sim.model, x_test, y_test)
    result = {"before": before, "after": after, "step_seconds": times.mean_after_first(),
              "replicas": 1 if strategy is None else strategy.num_replicas_in_sync}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "qat.keras")
        sim.model.save(path)
        reloaded = keras.models.load_model(path)
        probe = x_test[:256]
        # Direct calls: both run on one device, so the outputs compare bit for bit (predict would
        # split batches across replicas for one model and not for the other).
        a = np.asarray(sim.model(probe, training=False))
        b = np.asarray(reloaded(probe, training=False))
        result["reload_outputs_identical"] = bool(np.array_equal(a, b))
        mine = {v.path: np.asarray(v.numpy()) for v in sim.model.variables}
        theirs = {v.path: np.asarray(v.numpy()) for v in reloaded.variables}
        result["reload_variables_identical"] = bool(
            mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine))
        result["num_variables"] = len(mine)
    result["distributed_variables"] = sum(isinstance(v.value, tf.distribute.DistributedValues)
                                          for v in sim.model.variables)
    return result


def _top1(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=250, verbose=0), -1) == y))


class _StepTimes(keras.callbacks.Callback):
    """Wall time of each train batch, leaving out the first epoch's first three (tracing)."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch > 0 or batch > 2:
            self.seconds.append(time.perf_counter() - self._start)

    def mean_after_first(self) -> float | None:
        return sum(self.seconds) / len(self.seconds) if self.seconds else None


def _adaround(strategy, args) -> dict:
    from aimet_tf import datasets
    from aimet_tf.ptq.adaround import AdaroundParameters, apply_adaround

    x = datasets.load_fashion_mnist("calibration")[0][:256]
    model = datasets.load_bundled_model()
    params = AdaroundParameters(x, num_batches=8, default_num_iterations=args.iterations)
    with _scope(strategy):
        rounded = apply_adaround(model, params, default_param_bw=4, config_file="tflite", verbose=0)
    return {"kernels": {layer.name: np.asarray(layer.kernel.numpy()).reshape(-1).tolist()
                        for layer in rounded.layers if hasattr(layer, "kernel")}}


def _worker_from_tf_config() -> tuple[int, int]:
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    workers = config.get("cluster", {}).get("worker", [])
    if not workers:
        return 0, 1
    return int(config["task"]["index"]), len(workers)


def _amp(strategy, args) -> dict:
    from aimet_tf import datasets, distribute
    from aimet_tf.ptq.mixed_precision import choose_mixed_precision
    from aimet_tf.quantization import QuantizationSimModel

    x_cal = datasets.load_fashion_mnist("calibration")[0][:500]
    x_eval, y_eval = datasets.load_fashion_mnist("test")
    x_eval, y_eval = x_eval[0::2][:1000], y_eval[0::2][:1000]
    workers = distribute.worker_of(strategy) if strategy is not None else _worker_from_tf_config()
    sim = QuantizationSimModel(datasets.load_bundled_model(), quant_scheme="tf", default_param_bw=8, config_file="tflite")
    sim.compute_encodings(x_cal, batch_size=250)
    folder = args.results_dir or tempfile.mkdtemp(prefix="aimet_tf_amp_")
    result = choose_mixed_precision(
        sim, [(8, 8), (8, 4)], lambda m: _top1(m, x_eval, y_eval), None, 0.005, folder, forward_pass=x_cal,
        verbose=False, workers=workers)
    return {"workers": list(workers), "phase1": result.phase1, "choice": result.choice_by_group(),
            "phase1_seconds": result.phase1_seconds, "amp_seconds": result.seconds,
            "evaluations": result.evaluations, "final_score": result.final_score}


JOBS = {"adaround": _adaround, "amp": _amp, "calibrate": _calibrate, "qat": _qat}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", choices=("none", "mirrored", "multi_worker", "processes"), required=True)
    parser.add_argument("--results-dir", default=None, help="AMP's results_dir (shared by the workers)")
    parser.add_argument("--job", required=True, help=f"comma-separated, of {sorted(JOBS)}")
    parser.add_argument("--output", required=True)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--scheme", default="tf")
    parser.add_argument("--model", default="bundled", help="calibrate: comma-separated, bundled or MLTK model names")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args(argv)
    jobs = args.job.split(",")
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        parser.error(f"unknown job(s) {unknown}; expected some of {sorted(JOBS)}")
    strategy = _make_strategy(args.strategy, args.replicas)
    result = {"strategy": args.strategy}
    for job in jobs:
        start = time.perf_counter()
        result[job] = JOBS[job](strategy, args)
        result[job]["seconds"] = time.perf_counter() - start
    from aimet_tf.files import atomic_write

    atomic_write(args.output, lambda path: _dump(path, result))


def _dump(path: str, result: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
