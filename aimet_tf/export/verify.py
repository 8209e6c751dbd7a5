"""Fidelity check: does the exported .tflite compute what the simulation predicts?

``verify_tflite`` runs ``sim.model`` and the .tflite file (ai-edge-litert) on the same inputs and
measures how far apart they are in units of the output's quantization step: identical integer
outputs are 0 steps apart, a single rounding decision that went the other way is 1 step.

Example:
    >>> report = verify_tflite(sim, "model.tflite", test_images, labels=test_labels)
    >>> print(report.summary())
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Mapping, Sequence

import keras
import numpy as np

from aimet_tf.kernels import litert
from aimet_tf.kernels.litert import KERNELS
from aimet_tf.metrics import sqnr_db

__all__ = ["KERNELS", "FidelityReport", "verify_tflite", "run_tflite", "measure_latency", "output_steps"]

# KERNELS (the op resolvers) are aimet_tf.kernels.litert's; the same names as
# ``prepare.KERNEL_TARGETS``: a sim prepared for one of them predicts that resolver.


@dataclasses.dataclass(frozen=True)
class FidelityReport:
    """How closely a .tflite model reproduces its simulation on one data set.

    Attributes:
        num_samples: inputs compared.
        kernels: the LiteRT op resolver used (see ``KERNELS``).
        interpreter: the interpreter and its version ("ai_edge_litert 2.3.0").
        resolver: LiteRT's ``OpResolverType`` name for ``kernels``.
        delegate: the delegate that ran ops ("XNNPACK"), or "none".
        sim_kernels: the kernel path the simulation was prepared to reproduce.
        output_step: quantization step (scale) of the model output in the .tflite file.
        top1_agreement: fraction of inputs whose arg-max class agrees (None for outputs with a
            single value per sample).
        max_step_difference: max |tflite - sim| / output_step over all output elements.
        exact_fraction: fraction of output elements on the same integer level (< 0.5 steps).
        within_one_step: fraction of output elements at most one step apart.
        sqnr_db: 10 log10(sum(sim^2) / sum((tflite - sim)^2)); inf when identical.
        file_size_bytes: size of the .tflite file.
        accuracy_sim: top-1 accuracy of the simulation (when labels were given).
        accuracy_tflite: top-1 accuracy of the .tflite model (when labels were given).
    """

    num_samples: int
    kernels: str
    output_step: float
    top1_agreement: float | None
    max_step_difference: float
    exact_fraction: float
    within_one_step: float
    sqnr_db: float
    file_size_bytes: int
    accuracy_sim: float | None = None
    accuracy_tflite: float | None = None
    interpreter: str = ""
    resolver: str = ""
    delegate: str = "none"
    sim_kernels: str = ""

    @property
    def identical(self) -> bool:
        """Every output element on the same integer level."""
        return self.max_step_difference < 0.5

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"samples {self.num_samples}, {self.interpreter} kernels: {self.kernels} (resolver "
            f"{self.resolver}, delegate {self.delegate}); sim prepared for: {self.sim_kernels}; "
            f"file {self.file_size_bytes / 1024:.1f} KiB",
        ]
        if self.top1_agreement is not None:
            lines.append(f"top-1 agreement sim vs tflite: {100 * self.top1_agreement:.3f}%")
        lines.append(
            f"output elements: {100 * self.exact_fraction:.3f}% identical, "
            f"{100 * self.within_one_step:.3f}% within one step, max "
            f"{self.max_step_difference:.2f} steps (step {self.output_step:.4g}); SQNR "
            f"{self.sqnr_db:.1f} dB"
        )
        if self.accuracy_sim is not None:
            lines.append(
                f"accuracy: sim {100 * self.accuracy_sim:.2f}%, tflite "
                f"{100 * self.accuracy_tflite:.2f}%"
            )
        return "\n".join(lines)


def _quantize_input(x: np.ndarray, detail: dict, kernels: str = "default") -> np.ndarray:
    """An int8 input as that kernel path's own QUANTIZE would give it (what a sim prepared for
    ``kernels`` assumes): round(x / s) ties away ("reference"), round(x * (1 / s)) ties to even
    (the others), in float32. Integer inputs without a scale (token ids) pass as they are."""
    if detail["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zero_point = detail["quantization"]
    if not scale:
        return np.asarray(x).astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    x = np.asarray(x, dtype=np.float32)
    if kernels == "reference":
        ratio = (x / np.float32(scale)).astype(np.float64)
        levels = np.trunc(ratio) + np.where(np.abs(ratio - np.trunc(ratio)) >= 0.5, np.sign(ratio), 0.0)
    else:
        levels = np.round((x * (np.float32(1.0) / np.float32(scale))).astype(np.float64))
    return np.clip(levels + zero_point, info.min, info.max).astype(detail["dtype"])


def _dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y
    scale, zero_point = detail["quantization"]
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _signature(interpreter) -> dict | None:
    signatures = interpreter._get_full_signature_list()
    return next(iter(signatures.values())) if len(signatures) == 1 else None


def _output_order(interpreter) -> list[int]:
    """Tensor indices of the file's outputs in the exported model's order.

    The interpreter lists outputs in no fixed order (measured: a two-output model came out
    swapped); the converter names the signature's outputs ``output_0``, ``output_1``, ... in the
    traced function's order. A file without such a signature keeps the interpreter's order.
    """
    outputs = [d["index"] for d in interpreter.get_output_details()]
    signature = _signature(interpreter)
    named = signature["outputs"] if signature else {}
    if set(named.values()) == set(outputs) and all(re.fullmatch(r"output_\d+", k) for k in named):
        outputs = [named[k] for k in sorted(named, key=lambda k: int(k.split("_")[1]))]
    return outputs


def _input_arrays(interpreter, data) -> list[tuple[int, np.ndarray]]:
    """(tensor index, array) per input of the file.

    Neither the interpreter's input list nor the signature's (sorted by name) follows the Keras
    model's input order in general (both seen to differ from it), so several inputs are matched by
    name: ``export_tflite`` names the signature's inputs after the Keras inputs.
    """
    details = interpreter.get_input_details()
    if not isinstance(data, Mapping):
        if isinstance(data, (list, tuple)) and len(data) == 1:
            data = data[0]
        if len(details) == 1 and not isinstance(data, (list, tuple)):
            return [(details[0]["index"], np.asarray(data))]
        raise ValueError(
            f"Expected a dict {{input name: array}} for a .tflite model with {len(details)} inputs "
            f"(names: {sorted(_signature(interpreter)['inputs']) if _signature(interpreter) else '?'}). "
            f"Received: {type(data).__name__}"
        )
    signature = _signature(interpreter)
    by_name = signature["inputs"] if signature else {}
    if sorted(by_name) != sorted(data):
        raise ValueError(
            f"Expected one array per input of the .tflite model, by name: {sorted(by_name)}. "
            f"Received: {sorted(data)}"
        )
    pairs = [(by_name[name], np.asarray(array)) for name, array in data.items()]
    if len({len(a) for _, a in pairs}) != 1:
        raise ValueError(
            "Expected every input array to hold the same number of samples. Received: "
            f"{ {name: len(np.asarray(a)) for name, a in data.items()} }"
        )
    return pairs


def run_tflite(
    tflite_path: str | os.PathLike | bytes,
    data: np.ndarray | Mapping[str, np.ndarray],
    *,
    batch_size: int = 256,
    kernels: str = "default",
) -> list[np.ndarray]:
    """Runs a .tflite model on ``data`` in batches; returns float outputs.

    int8 inputs are quantized with the input tensor's scale/zero point as the kernel path's own
    QUANTIZE op rounds, int8 outputs dequantized with the output tensor's.

    Args:
        tflite_path: the model file, or its bytes.
        data: float32 array [N, ...]; for a multi-input model a dict from the Keras input names
            (the file's signature input names) to arrays.
        batch_size: inputs per invoke (the batch dimension is resized).
        kernels: op resolver, one of ``KERNELS``.

    Returns:
        One float32 array [N, ...] per model output, in the Keras model's output order.

    Raises:
        ValueError: when the arrays do not match the file's inputs by name, or hold different
            numbers of samples.
    """
    interpreter = litert.interpreter(tflite_path, kernels)
    pairs = _input_arrays(interpreter, data)
    output_indices = _output_order(interpreter)
    outputs: list[list[np.ndarray]] = [[] for _ in output_indices]
    current = None
    count = len(pairs[0][1])
    for start in range(0, count, batch_size):
        batches = [(index, array[start : start + batch_size]) for index, array in pairs]
        size = len(batches[0][1])
        if current != size:
            for index, batch in batches:
                interpreter.resize_tensor_input(index, [size, *batch.shape[1:]])
            interpreter.allocate_tensors()
            current = size
        details = {d["index"]: d for d in interpreter.get_input_details()}
        for index, batch in batches:
            interpreter.set_tensor(index, _quantize_input(batch, details[index], kernels))
        interpreter.invoke()
        out_details = {d["index"]: d for d in interpreter.get_output_details()}
        for k, index in enumerate(output_indices):
            outputs[k].append(_dequantize_output(interpreter.get_tensor(index), out_details[index]))
    return [np.concatenate(parts) for parts in outputs]


def output_steps(tflite_path: str) -> list[float]:
    """Scale of each model output's integer tensor (before a final DEQUANTIZE, if any)."""
    interpreter = litert.interpreter(tflite_path, "builtin")
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    producers = {}
    for op in interpreter._get_ops_details():
        for index in op["outputs"]:
            producers[index] = op
    steps = []
    details = {d["index"]: d for d in interpreter.get_output_details()}
    for detail in (details[i] for i in _output_order(interpreter)):
        scale = detail["quantization"][0]
        op = producers.get(detail["index"])
        if not scale and op is not None and op["op_name"] == "DEQUANTIZE":
            scale = tensors[op["inputs"][0]]["quantization"][0]
        steps.append(float(scale) if scale else math.nan)
    return steps


def _runtime_description(tflite_path: str, kernels: str) -> tuple[str, str]:
    """(interpreter with version, delegate) of the resolver ``kernels`` on this file."""
    from importlib import metadata

    try:
        version = metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        version = "unknown version"
    interpreter = litert.interpreter(tflite_path, kernels)
    interpreter.allocate_tensors()
    delegated = any(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())
    return f"ai_edge_litert {version}", ("XNNPACK" if delegated else "none")


def _kernels_name(kernels) -> str:
    return getattr(kernels, "name", kernels) if kernels is not None else "default (never prepared)"


def _resolver_for_sim(sim) -> str:
    """The LiteRT resolver that runs the kernels ``sim`` was prepared for."""
    from aimet_tf.export.prepare import kernel_target_of
    from aimet_tf.kernels.target import TFLITE_REFERENCE

    kernels = kernel_target_of(sim)
    if kernels is None:
        return "default"
    if isinstance(kernels, str):
        return kernels
    if kernels == TFLITE_REFERENCE:
        return "reference"
    raise ValueError(
        f"The sim reproduces the integer target {kernels.name!r}, which no LiteRT op resolver runs. "
        "Expected kernels= one of "
        f"{KERNELS} (the sim is then prepared for it), or compare with "
        "aimet_tf.kernels.IntegerExecutor(path, target=...). Received: kernels=None"
    )


def verify_tflite(
    sim,
    tflite_path: str | os.PathLike,
    data: np.ndarray,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 256,
    kernels: str | None = None,
):
    """Compares ``sim.model`` and a .tflite file on the same inputs.

    step difference = |tflite - sim| / s_out, with s_out the scale of the .tflite output tensor;
    SQNR = 10 log10(sum(sim^2) / sum((tflite - sim)^2)) with the simulation as reference.

    LiteRT's kernel paths round differently, and a sim reproduces the one it was prepared for
    (``prepare_sim_for_tflite(sim, kernels)``). With ``kernels`` None the file runs on that
    path; with a name the sim is prepared for that path first (it stays so); with "all" each of
    ``KERNELS`` is checked in turn, and the sim is left prepared as it was.

    Args:
        sim: the ``QuantizationSimModel`` the file was exported from (as prepared by the export).
        tflite_path: the exported file.
        data: float32 inputs [N, ...] (what the float model takes), or one array per input of a
            multi-input model (a list in the model's input order, or a dict keyed by input name).
        labels: optional integer class labels [N] for accuracies.
        batch_size: batch size for both runs.
        kernels: None, one of ``KERNELS``, or "all".

    Returns:
        A ``FidelityReport`` (which names the interpreter, resolver and delegate), or for "all" a
        dict {kernels: FidelityReport}.

    Raises:
        ValueError: for empty data, a bad ``kernels`` value, labels of the wrong length, or a sim
            prepared for a `DspTarget` that LiteRT does not run (with ``kernels`` None).
    """
    from aimet_tf.export.prepare import kernel_target_of, prepare_sim_for_tflite

    if kernels == "all":
        before = kernel_target_of(sim)
        try:
            return {
                name: verify_tflite(sim, tflite_path, data, labels=labels, batch_size=batch_size, kernels=name)
                for name in KERNELS
            }
        finally:
            prepare_sim_for_tflite(sim, before if before is not None else "default")
    if kernels is None:
        kernels = _resolver_for_sim(sim)
    elif kernels not in KERNELS:
        raise ValueError(f"Expected kernels in {KERNELS}, 'all' or None. Received: kernels={kernels!r}")
    if kernel_target_of(sim) != kernels:
        prepare_sim_for_tflite(sim, kernels)
    tflite_path = os.fspath(tflite_path)
    names = [t.name.split(":")[0] for t in sim.model.inputs]
    if isinstance(data, Mapping):
        if set(data) != set(names):
            raise ValueError(
                f"Expected one array per model input, keyed by the input names {sorted(names)}. "
                f"Received: keys {sorted(data)}"
            )
        data = [data[name] for name in names]
    arrays = [np.asarray(a) for a in data] if isinstance(data, (list, tuple)) else [np.asarray(data)]
    arrays = [a if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32) for a in arrays]
    if len(arrays) != len(names):
        raise ValueError(f"Expected {len(names)} input array(s), one per model input {names}. Received: {len(arrays)}")
    data = arrays[0] if len(arrays) == 1 else arrays
    count = len(arrays[0])
    if count == 0:
        raise ValueError("Expected at least one input to verify. Received: an empty array.")
    if labels is not None and len(labels) != count:
        raise ValueError(
            f"Expected one label per input. Received: {len(labels)} labels for {count} inputs."
        )
    expected = sim.model.predict(data, batch_size=batch_size, verbose=0)
    # A dict of outputs (keras_hub backbones) flattens as the model's outputs do: by sorted key.
    expected = [np.asarray(e) for e in keras.tree.flatten(expected)]
    feed = arrays[0] if len(arrays) == 1 else dict(zip(names, arrays))
    actual = run_tflite(tflite_path, feed, batch_size=batch_size, kernels=kernels)
    steps = output_steps(tflite_path)
    diffs = []
    for e, a, step in zip(expected, actual, steps):
        step = step if math.isfinite(step) and step > 0 else float(np.finfo(np.float32).eps)
        diffs.append((np.abs(a.astype(np.float64) - e.astype(np.float64)) / step).ravel())
    steps_apart = np.concatenate(diffs)
    first_e, first_a = expected[0], actual[0]
    top1 = None
    if first_e.ndim >= 2 and first_e.shape[-1] > 1:
        top1 = float(np.mean(first_e.argmax(-1) == first_a.argmax(-1)))
    accuracy_sim = accuracy_tflite = None
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        accuracy_sim = float(np.mean(first_e.argmax(-1) == labels))
        accuracy_tflite = float(np.mean(first_a.argmax(-1) == labels))
    interpreter, delegate = _runtime_description(tflite_path, kernels)
    # A small tolerance absorbs float rounding of the dequantized values themselves.
    return FidelityReport(
        num_samples=count,
        kernels=kernels,
        output_step=steps[0],
        top1_agreement=top1,
        max_step_difference=float(steps_apart.max()),
        exact_fraction=float(np.mean(steps_apart < 0.5)),
        within_one_step=float(np.mean(steps_apart < 1.5)),
        sqnr_db=sqnr_db(np.concatenate([e.ravel() for e in expected]),
                         np.concatenate([a.ravel() for a in actual])),
        file_size_bytes=os.path.getsize(tflite_path),
        accuracy_sim=accuracy_sim,
        accuracy_tflite=accuracy_tflite,
        interpreter=interpreter,
        resolver=litert.RESOLVERS[kernels],
        delegate=delegate,
        sim_kernels=_kernels_name(kernel_target_of(sim)),
    )


def measure_latency(
    tflite_path: str | os.PathLike,
    *,
    runs: int = 50,
    warmup: int = 5,
    kernels: str = "default",
) -> float:
    """Median latency in milliseconds of one invoke at batch size 1 (inputs are zeros)."""
    interpreter = litert.interpreter(os.fspath(tflite_path), kernels)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], [1, *detail["shape"][1:]])
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        interpreter.invoke()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)
