"""Every layer's output of a model (FP32 or a sim's), saved per input for comparison.

``LayerOutputUtil`` has AIMET's contract (``aimet_tensorflow.keras.layer_output_utils``):
``LayerOutputUtil(model, save_dir="./KerasLayerOutput")`` and ``.generate_layer_outputs(input_batch)``,
and AIMET's file layout, so that the same comparison scripts read both:

* ``<save_dir>/inputs/input_<k>.raw``: input sample ``k`` (a batch of one, C order, its own dtype);
  a model with several inputs gets a folder ``inputs/input_<k>/`` holding ``<i>.raw`` per input.
* ``<save_dir>/outputs/layer_outputs_<k>/<name>.raw``: every layer output for sample ``k``
  (a batch of one, float32 for float layers), ``<name>`` being the output's tensor name with
  each run of non-word characters replaced by ``_``.
* ``<save_dir>/LayerOutputNameMapper.json``: tensor name -> file name.

Tensor names are aimet_tf's, the names of the encodings files: ``"<layer>/output:<i>"`` (model
inputs ``"<input layer>/output:0"``). A sim's wrappers carry their layer's name, so the FP32 model
and its sim write the same file names, and ``compare_layer_outputs`` pairs them up. AIMET names
its files by TF op names (``conv2d/BiasAdd:0``), which Keras 3 has no longer.

Samples are numbered from 0 for each ``LayerOutputUtil`` and go on across calls, as in AIMET.
A sample's outputs are written to a hidden folder that is renamed into place when complete, and
its input file is written after it, so a process killed mid-way leaves no partial sample behind
an input file.
"""

from __future__ import annotations

import collections
import json
import os
import re
import secrets
import shutil
from typing import Any, NamedTuple

import keras
import numpy as np

from aimet_tf import files
from aimet_tf.graph import ModelGraph
from aimet_tf.quantization import calibration_data

__all__ = [
    "LayerOutputDifference",
    "LayerOutputUtil",
    "collect_layer_outputs",
    "compare_layer_outputs",
    "file_stem",
    "layer_output_names",
    "read_raw_outputs",
]

NAME_MAPPER_FILE = "LayerOutputNameMapper.json"


def file_stem(tensor_name: str) -> str:
    """The file name (without ``.raw``) of a tensor: non-word runs become ``_`` ("conv/output:0" -> "conv_output_0")."""
    return re.sub(r"\W+", "_", tensor_name)


def layer_output_names(model: keras.Model) -> list[str]:
    """The model's input tensors, then every layer output in graph order, by tensor name.

    Raises:
        ValueError: if two tensor names give the same file name.
    """
    g = ModelGraph(model, "LayerOutputUtil")
    names = list(g.input_names) + [t for node in g.nodes for t in node.outputs]
    stems: dict[str, str] = {}
    for name in names:
        other = stems.setdefault(file_stem(name), name)
        if other != name:
            raise ValueError(
                f"Tensors {other!r} and {name!r} would both be saved as {file_stem(name)!r}.raw. "
                "Expected layer names that differ in more than punctuation; rename one of the layers."
            )
    return names


def collect_layer_outputs(model: keras.Model, input_batch: Any, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Runs ``model`` in inference mode and returns every tensor of ``layer_output_names(model)``.

    Args:
        model: a Functional or Sequential model, e.g. ``sim.model``.
        input_batch: the inputs, in any form of ``aimet_tf.quantization.calibration_data`` (an
            array, a list of arrays for several inputs, a dict by input name, a Dataset...).
        batch_size: how many samples run at once when ``input_batch`` is an array.

    Returns:
        {tensor name: array with one row per sample}, in graph order.
    """
    names = layer_output_names(model)
    g = ModelGraph(model, "LayerOutputUtil")
    probe = g.probe(names)
    inputs = calibration_data.model_inputs(model)
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for batch in calibration_data.iterate_batches(input_batch, inputs, batch_size, purpose="layer-output inputs"):
        outputs = probe(calibration_data.as_model_input(batch), training=False)
        for part, value in zip(parts, keras.tree.flatten(outputs)):
            part.append(keras.ops.convert_to_numpy(value))
    return {name: np.concatenate(part, axis=0) for name, part in zip(names, parts)}


class LayerOutputUtil:
    """Saves the input and every layer output of each sample given to ``generate_layer_outputs``.

    AIMET's ``LayerOutputUtil``: see the module docstring for the file layout. Unlike AIMET's, it
    does not set ``model.trainable = False``: it runs the model with ``training=False``.

    Args:
        model: a Functional or Sequential model, the FP32 model or ``sim.model``.
        save_dir: the output folder (created when outputs are first saved).
    """

    def __init__(self, model: keras.Model, save_dir: str = "./KerasLayerOutput"):
        self.model = model
        self.save_dir = os.fspath(save_dir)
        self.names = layer_output_names(model)
        self.layer_output_name_mapper = collections.OrderedDict((n, file_stem(n)) for n in self.names)
        self._counter = 0

    def get_outputs(self, input_batch: Any) -> "collections.OrderedDict[str, np.ndarray]":
        """{file name: batch of outputs} for ``input_batch`` (AIMET's method)."""
        outputs = collect_layer_outputs(self.model, input_batch)
        return collections.OrderedDict((self.layer_output_name_mapper[n], v) for n, v in outputs.items())

    def generate_layer_outputs(self, input_batch: Any) -> None:
        """Saves each sample of ``input_batch`` and its layer outputs under ``save_dir``.

        Raises:
            ValueError/TypeError: for inputs that do not fit the model (calibration_data's errors).
            OSError: if ``save_dir`` cannot be written.
        """
        inputs = calibration_data.model_inputs(self.model)
        samples = [
            np.concatenate(parts, axis=0)
            for parts in zip(*calibration_data.iterate_batches(input_batch, inputs, 256, purpose="layer-output inputs"))
        ]
        outputs = self.get_outputs(samples[0] if len(samples) == 1 else list(samples))
        input_dir = os.path.join(self.save_dir, "inputs")
        output_dir = os.path.join(self.save_dir, "outputs")
        os.makedirs(input_dir, exist_ok=True)
        os.makedirs(output_dir, exist_ok=True)
        files.atomic_write(
            os.path.join(self.save_dir, NAME_MAPPER_FILE), json.dumps(self.layer_output_name_mapper, indent=4)
        )
        for k in range(len(samples[0])):
            index = self._counter
            _replace_folder(
                os.path.join(output_dir, f"layer_outputs_{index}"),
                {stem: values[k : k + 1] for stem, values in outputs.items()},
            )
            if len(samples) == 1:
                files.atomic_write(os.path.join(input_dir, f"input_{index}.raw"), _raw(samples[0][k : k + 1]))
            else:
                _replace_folder(
                    os.path.join(input_dir, f"input_{index}"), {str(i): s[k : k + 1] for i, s in enumerate(samples)}
                )
            self._counter += 1


def _raw(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


def _replace_folder(target: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes ``<stem>.raw`` per array into a hidden folder, then renames it to ``target``."""
    parent, name = os.path.split(target)
    staging = os.path.join(parent, f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    os.makedirs(staging)
    try:
        for stem, array in arrays.items():
            with open(os.path.join(staging, f"{stem}.raw"), "wb") as handle:
                handle.write(_raw(array))
        old = None
        if os.path.exists(target):
            old = staging + ".old"
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)


def read_raw_outputs(save_dir: str, index: int, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """The layer outputs of sample ``index`` under ``save_dir``, flat, by tensor name.

    Raises:
        FileNotFoundError: if the folder has no such sample or no name mapper.
    """
    mapper_path = os.path.join(save_dir, NAME_MAPPER_FILE)
    if not os.path.isfile(mapper_path):
        raise FileNotFoundError(
            f"Expected a LayerOutputUtil folder holding {NAME_MAPPER_FILE}; {save_dir!r} has none "
            f"(no sample {index} either). Call generate_layer_outputs first."
        )
    with open(mapper_path, encoding="utf-8") as handle:
        mapper = json.load(handle)
    folder = os.path.join(save_dir, "outputs", f"layer_outputs_{index}")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Expected sample {index} of the layer outputs in {folder!r}; it does not exist.")
    return {name: np.fromfile(os.path.join(folder, f"{stem}.raw"), dtype=dtype) for name, stem in mapper.items()}


class LayerOutputDifference(NamedTuple):
    """How one tensor of a second run (e.g. the sim) differs from a reference run (FP32)."""

    name: str
    sqnr_db: float  # 10 log10(sum ref^2 / sum (ref - other)^2); inf when identical
    max_abs_error: float


def compare_layer_outputs(reference_dir: str, other_dir: str, index: int = 0) -> list[LayerOutputDifference]:
    """Compares sample ``index`` of two ``LayerOutputUtil`` folders tensor by tensor, in graph order.

    Raises:
        ValueError: if the folders name different tensors or sizes differ.
    """
    reference = read_raw_outputs(reference_dir, index)
    other = read_raw_outputs(other_dir, index)
    if list(reference) != list(other):
        only = sorted(set(reference) ^ set(other))
        raise ValueError(
            f"Expected the same tensors in both folders. Received: {len(reference)} vs {len(other)} "
            f"tensors; in only one of them: {only[:5]}"
        )
    rows = []
    for name, ref in reference.items():
        got = other[name]
        if ref.shape != got.shape:
            raise ValueError(f"Tensor {name!r} has {ref.size} values in {reference_dir!r} and {got.size} in {other_dir!r}.")
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        noise = float(np.sum((ref64 - got64) ** 2))
        signal = float(np.sum(ref64**2))
        sqnr = float("inf") if noise == 0 else (10 * np.log10(signal / noise) if signal > 0 else float("-inf"))
        rows.append(LayerOutputDifference(name, sqnr, float(np.max(np.abs(ref64 - got64))) if ref.size else 0.0))
    return rows
