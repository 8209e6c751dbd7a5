"""``tf.distribute`` support: which strategy a model's replicas run under, and training on them.

A sim built under ``strategy.scope()`` (MirroredStrategy, MultiWorkerMirroredStrategy) has
distributed variables; Keras records the strategy on the model (``model.distribute_strategy``).
Passes that run the model themselves (``compute_encodings``) ask :func:`replica_strategy` whether
to run it once per replica, and then gather the replicas' statistics (``graph_statistics``).

``sim.model.fit`` trains under MirroredStrategy as for any Keras model. Under
MultiWorkerMirroredStrategy, Keras 3's ``fit`` fails before its first step on TF 2.21 (its symbolic
build reduces a whole ``(x, y)`` batch with ``strategy.reduce``, which that strategy only accepts
per tensor; keras-team/keras issue 20585): :func:`fit` runs the model's own ``train_step`` (the
compiled loss, optimizer and range learning, exactly what ``fit`` runs) on every replica instead.

Example (2 replicas on one CPU):
    >>> cpu = tf.config.list_physical_devices("CPU")[0]
    >>> tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    >>> strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    >>> with strategy.scope():
    ...     sim = QuantizationSimModel(model, default_param_bw=8)
    >>> sim.compute_encodings(strategy.experimental_distribute_dataset(dataset))
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

__all__ = ["SharedResults", "check_workers", "fit", "num_workers", "replica_strategy", "worker_of"]


def replica_strategy(model: keras.Model) -> tf.distribute.Strategy | None:
    """The strategy ``model`` runs on when it has more than one replica, else None.

    The strategy of the current ``strategy.scope()`` wins; outside any scope it is the one the model
    was built under.
    """
    if tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    else:
        strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or strategy.num_replicas_in_sync <= 1:
        return None
    return strategy


def num_workers(strategy: tf.distribute.Strategy | None) -> int:
    """How many worker processes take part in ``strategy`` (1 for None or a one-machine strategy)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec()
    jobs = spec.jobs
    return sum(spec.num_tasks(job) for job in jobs if job in ("chief", "worker")) or 1


def worker_of(strategy: tf.distribute.Strategy | None) -> tuple[int, int]:
    """``(index, count)`` of this worker process among ``strategy``'s workers (``(0, 1)`` on one
    machine), for passes that share independent work out across workers (``choose_mixed_precision``'s
    ``workers``). The chief, when the cluster has one, is index 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    count = num_workers(strategy)
    if resolver is None or count == 1:
        return 0, 1
    spec = resolver.cluster_spec()
    chiefs = spec.num_tasks("chief") if "chief" in spec.jobs else 0
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return 0, count
    if task_type != "worker" or task_id is None:
        raise ValueError(f"Expected a chief or worker task in the cluster. Received: task {task_type!r} {task_id!r}")
    return chiefs + int(task_id), count


def check_workers(workers: Any) -> tuple[int, int]:
    """``workers`` as ``(index, count)`` (None: ``(0, 1)``, one process).

    Raises:
        ValueError: unless ``0 <= index < count`` are integers.
    """
    if workers is None:
        return 0, 1
    if (not isinstance(workers, (tuple, list)) or len(workers) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in workers)
            or not 0 <= workers[0] < workers[1]):
        raise ValueError(f"Expected workers as (index, count) with 0 <= index < count. Received: workers={workers!r}")
    return int(workers[0]), int(workers[1])


class SharedResults:
    """Results of independent tasks (AMP's phase-1 evaluations, the compression sensitivity sweep)
    shared out over ``count`` worker processes that run the same call with one folder they all see.

    Worker ``index`` takes tasks ``index, index + count, ...`` (``mine``), writes each result to
    ``{folder}/{name}.worker{index}-of-{count}.json`` as soon as it has it (``record``, atomic), and
    ``gather`` reads every worker's file until the results it needs are there. A file written
    under another ``fingerprint`` (another model, settings or baseline score) is ignored until its
    worker rewrites it, so stale files from an earlier run cannot leak in. A rerun resumes from
    this worker's own file (``own``) unless ``clean_start``. With ``count == 1`` nothing is written.

    Args:
        folder: the shared folder (it must exist).
        name: file name stem, e.g. "amp_phase1".
        workers: ``(index, count)``, see ``check_workers``.
        fingerprint: identifies the run; every worker must compute the same one.
        clean_start: ignore this worker's earlier file.
    """

    def __init__(self, folder: str, name: str, workers: tuple[int, int] | None, fingerprint: str,
                 clean_start: bool = False) -> None:
        self.folder, self.name = os.fspath(folder), name
        self.index, self.count = check_workers(workers)
        self.fingerprint = fingerprint
        self.own: dict[str, Any] = {}
        if self.count > 1 and not clean_start:
            self.own = self._read(self.index) or {}

    def mine(self, tasks: Sequence) -> list:
        """This worker's share of ``tasks`` (the same list on every worker)."""
        return list(tasks[self.index :: self.count])

    def path(self, index: int) -> str:
        return os.path.join(self.folder, f"{self.name}.worker{index}-of-{self.count}.json")

    def _read(self, index: int) -> dict | None:
        try:
            with open(self.path(index), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("fingerprint") != self.fingerprint:
            return None
        return dict(data.get("results", {}))

    def _write(self) -> None:
        from aimet_tf import files

        files.atomic_write(self.path(self.index), json.dumps(
            {"fingerprint": self.fingerprint, "results": self.own}, indent=1, sort_keys=True))

    def record(self, key: str, value: Any) -> None:
        """Keeps this worker's result for ``key`` (JSON-serialisable) and rewrites its file."""
        if self.count == 1:
            return
        self.own[key] = value
        self._write()

    def gather(self, keys: Sequence[str], timeout: float, known: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every result in ``keys``: from ``known``, this worker, or the others' files, waiting up to
        ``timeout`` seconds for them.

        Raises:
            TimeoutError: naming a missing result, when they are not all there in time.
        """
        results = dict(known or {})
        results.update(self.own)
        if self.count == 1:
            missing = [k for k in keys if k not in results]
            if missing:
                raise ValueError(f"Expected results for every task on one worker. Missing: {missing[:3]}")
            return results
        if not os.path.exists(self.path(self.index)):
            self._write()  # this worker had nothing to do: its (empty) file says it ran
        deadline = time.monotonic() + timeout
        while True:
            for index in range(self.count):
                if index != self.index:
                    results.update(self._read(index) or {})
            missing = [k for k in keys if k not in results]
            if not missing:
                return results
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Worker {self.index} of {self.count}: {len(missing)} results of the other workers (e.g. "
                    f"{missing[0]!r}) did not arrive in {timeout:.0f} s in {self.folder} "
                    f"({self.name}.worker*-of-{self.count}.json). Expected every worker to run the same call on "
                    "the same model, data and folder (a file written for another model, setting or baseline "
                    "score is ignored).")
            time.sleep(0.2)


def fit(
    model: keras.Model,
    x: Any,
    y: Any = None,
    *,
    batch_size: int = 32,
    epochs: int = 1,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> dict[str, list[float]]:
    """Trains a compiled ``model`` for ``epochs`` on every replica of ``strategy`` with its own
    ``train_step``, as ``model.fit`` would (for strategies where ``fit`` fails; see the module).

    Args:
        model: a compiled model built under ``strategy.scope()`` (e.g. ``sim.model``).
        x: inputs (arrays), or a ``tf.data.Dataset`` of ``(x, y)`` batches of the global batch size.
        y: labels when ``x`` is arrays; None with a data set.
        batch_size: global batch size (split across replicas) when ``x`` is arrays.
        epochs: passes over the data.
        strategy: default: the model's (``replica_strategy``); None and a one-replica model train
            on one device.
        callbacks: Keras callbacks; they get ``on_epoch_begin`` / ``on_epoch_end`` and
            ``on_train_batch_begin`` / ``on_train_batch_end`` with the logs ``fit`` would pass.

    Returns:
        ``{metric: [its value at the end of each epoch]}`` like ``fit(...).history``: the running
        mean over the epoch's steps, averaged over the replicas.

    Raises:
        ValueError: for an uncompiled model, ``y`` with a data set, arrays without ``y``, or
            ``epochs`` / ``batch_size`` below 1.
    """
    if getattr(model, "optimizer", None) is None:
        raise ValueError(f"Expected a compiled model (model.compile(optimizer, loss)). Received: {model.name!r} with no optimizer")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("Expected y=None with a tf.data.Dataset of (x, y) batches. Received: y as well")
        dataset = x
    else:
        if y is None:
            raise ValueError("Expected labels y with array inputs x. Received: y=None")
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    strategy = strategy or replica_strategy(model) or tf.distribute.get_strategy()
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    distributed = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def step(batch):
        logs = strategy.run(model.train_step, args=(batch,))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}

    callbacks = keras.callbacks.CallbackList(callbacks or [], model=model)
    history: dict[str, list[float]] = {}
    for epoch in range(epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        logs: dict[str, float] = {}
        for index, batch in enumerate(distributed):
            callbacks.on_train_batch_begin(index)
            # train_step's metrics are running means over the epoch, as in fit's logs.
            logs = {k: float(v) for k, v in step(batch).items()}
            callbacks.on_train_batch_end(index, logs)
        callbacks.on_epoch_end(epoch, logs)
        for k, v in logs.items():
            history.setdefault(k, []).append(v)
    return history
