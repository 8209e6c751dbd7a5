"""AdaRound's output folder: an up-front writability check and a per-layer checkpoint.

AdaRound optimises one layer after another for minutes each. ``LayerCheckpoint`` stores every
finished layer in ``{path}/{prefix}.adaround_checkpoint/`` so that a rerun after an interruption
(an exception, Ctrl-C, SIGKILL) skips the finished layers and ends with the same result:

* ``layer_NNNN.json``: one finished layer's AdaRounded kernel (raw float32 bytes, base64) and
  the sha256 of those bytes;
* ``manifest.json``: the run's fingerprint and, per finished layer, its name, file, sha256,
  statistics and the batch-sampling RNG state after it. It is the commit point: a layer counts as
  finished only once the manifest names it.

Every file is written to a temporary file in the checkpoint folder and renamed over its target
(``encodings_io.write_json_atomic``), so a kill leaves the previous or the new version, never a
torn one; stray temporary files are deleted when the checkpoint is next opened. The fingerprint
hashes the model (layer names and classes, every weight), the calibration samples and every
setting that changes the result, so a checkpoint left by another run is never reused: it is
reported and replaced.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import shutil
from typing import Any

import keras
import numpy as np
from absl import logging

from aimet_tf import files
from aimet_tf.graph.model_graph import all_layers
from aimet_tf.quantization import encodings_io

__all__ = ["CHECKPOINT_SUFFIX", "LayerCheckpoint", "check_writable_folder", "run_fingerprint"]

CHECKPOINT_SUFFIX = ".adaround_checkpoint"
"""``{path}/{prefix}{CHECKPOINT_SUFFIX}/`` holds the checkpoint of a run."""

_VERSION = 1
_MANIFEST = "manifest.json"


def check_writable_folder(path: str | os.PathLike) -> str:
    """:func:`aimet_tf.files.check_writable_folder` for AdaRound's output."""
    return files.check_writable_folder(path, "AdaRound's output (checked before optimising)")


def run_fingerprint(model: keras.Model, samples: np.ndarray, settings: dict[str, Any]) -> str:
    """sha256 over the model's layers and weights, the calibration samples and ``settings``."""
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True, default=repr).encode())
    for layer in all_layers(model):
        digest.update(f"{layer.name}:{type(layer).__name__};".encode())
    for weight in model.weights:
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{weight.path}:{value.dtype}:{value.shape};".encode())
        digest.update(value.tobytes())
    samples = np.ascontiguousarray(samples)
    digest.update(f"samples:{samples.dtype}:{samples.shape};".encode())
    digest.update(samples.tobytes())
    return digest.hexdigest()


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


class LayerCheckpoint:
    """The finished layers of one AdaRound run (see the module docstring).

    Args:
        folder: the checkpoint folder (created if missing).
        fingerprint: ``run_fingerprint`` of this run.

    Example:
        >>> checkpoint = LayerCheckpoint("out/ada.adaround_checkpoint", fingerprint)
        >>> finished = checkpoint.open()          # records of a resumable run, else []
        >>> checkpoint.add("conv1", kernel, stats, rng.bit_generator.state)
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: str) -> None:
        self.folder = os.fspath(folder)
        self.fingerprint = fingerprint
        self._records: list[dict] = []

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.folder, _MANIFEST)

    def open(self) -> list[dict]:
        """The finished layers of an earlier run with this fingerprint, in order.

        Each record holds "name", "kernel" (np.ndarray), "stats" and "rng_state". A checkpoint of
        another run, or one whose files do not check out, is reported and started afresh.
        """
        records = self._read()
        if records is None:
            if os.path.isdir(self.folder):
                shutil.rmtree(self.folder)
            os.makedirs(self.folder)
            self._records = []
            return []
        for stray in glob.glob(os.path.join(self.folder, "tmp*.tmp")):
            os.remove(stray)
        self._records = [{k: v for k, v in r.items() if k != "kernel"} for r in records]
        return records

    def _read(self) -> list[dict] | None:
        if not os.path.exists(self.manifest_path):
            return None
        try:
            with open(self.manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError) as exc:
            logging.warning("AdaRound checkpoint %s is unreadable (%s); starting afresh.", self.folder, exc)
            return None
        if manifest.get("version") != _VERSION or manifest.get("fingerprint") != self.fingerprint:
            logging.warning(
                "AdaRound checkpoint %s belongs to another run (other model weights, data or "
                "settings); starting afresh.",
                self.folder,
            )
            return None
        records = []
        for entry in manifest.get("layers", []):
            kernel = self._read_kernel(entry)
            if kernel is None:
                return None
            records.append({**entry, "kernel": kernel})
        return records

    def _read_kernel(self, entry: dict) -> np.ndarray | None:
        path = os.path.join(self.folder, entry["file"])
        try:
            with open(path, encoding="utf-8") as f:
                stored = json.load(f)
            kernel = np.frombuffer(base64.b64decode(stored["data"]), dtype=stored["dtype"])
            kernel = kernel.reshape(stored["shape"]).copy()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logging.warning("AdaRound checkpoint file %s is unreadable (%s); starting afresh.", path, exc)
            return None
        if _sha256(kernel) != entry["sha256"]:
            logging.warning("AdaRound checkpoint file %s fails its sha256 check; starting afresh.", path)
            return None
        return kernel

    def add(self, name: str, kernel: np.ndarray, stats: dict, rng_state: dict) -> None:
        """Records a finished layer: its kernel file first, then the manifest that names it."""
        kernel = np.ascontiguousarray(kernel)
        index = len(self._records)
        file_name = f"layer_{index:04d}.json"
        encodings_io.write_json_atomic(
            {
                "name": name,
                "dtype": str(kernel.dtype),
                "shape": list(kernel.shape),
                "data": base64.b64encode(kernel.tobytes()).decode("ascii"),
            },
            os.path.join(self.folder, file_name),
        )
        self._records.append(
            {
                "name": name,
                "file": file_name,
                "sha256": _sha256(kernel),
                "stats": {k: float(v) for k, v in stats.items()},
                "rng_state": rng_state,
            }
        )
        encodings_io.write_json_atomic(
            {"version": _VERSION, "fingerprint": self.fingerprint, "layers": self._records},
            self.manifest_path,
        )

    def publish(self, data: dict, target: str | os.PathLike) -> None:
        """Writes JSON ``data`` to ``target`` atomically, staging it in the checkpoint folder
        (a kill leaves no temporary file beside ``target``)."""
        staged = os.path.join(self.folder, "publish.json")
        encodings_io.write_json_atomic(data, staged)
        os.replace(staged, target)

    def remove(self) -> None:
        """Deletes the checkpoint: the manifest first, so a kill midway leaves nothing resumable."""
        if os.path.exists(self.manifest_path):
            os.remove(self.manifest_path)
        shutil.rmtree(self.folder, ignore_errors=True)
