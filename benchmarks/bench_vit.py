"""Issue 19 benchmark: the bundled Fashion-MNIST ViT through the user's flow, with its peers.

One run, every row computed here by the public API (nothing carried over from earlier runs):

* FP32 Keras (``datasets.load_bundled_vit()``);
* the peers: TFLite's own full-int8 post-training quantization of the same FP32 model (int8
  input/output, the same calibration images) and its 16x8 mode, both run in ai_edge_litert;
  for the int8 file: its size, which ops stayed float, its op counts and the grids of block 1's
  LayerNorm internals and attention softmax;
* ours, as ``aimet_tf/cli/quickstart.py`` runs it (``prepare_model_for_tflite`` ->
  ``QuantizationSimModel(config_file="tflite")`` -> ``compute_encodings`` -> ``export_tflite`` ->
  ``verify_tflite``): W8A8 and W4A8 (nearest rounding) sims and their .tflite files, W4A8 with
  AdaRound, and W4A8 QAT for one epoch on the 60k train split against a one-epoch float
  fine-tune with the same optimizer, learning rate, batch size and data order (the peer of QAT).

A row that fails is kept, reported as failed with the exception's type and first line: the
section shows what the library can do today, not what it did in some earlier run.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import tempfile
import time
from typing import Callable, Mapping, Sequence

import keras
import numpy as np
from absl import logging

from aimet_tf import datasets, metrics
from aimet_tf.cli.quickstart import float_weight_bytes, sim_weight_bytes
from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite
from aimet_tf.export.baselines import tflite_ptq_16x8, tflite_ptq_int8
from aimet_tf.export.verify import run_tflite
from aimet_tf.ptq import AdaroundParameters, apply_adaround
from aimet_tf.quantization import QuantizationSimModel
from benchmarks import common

CONFIG = "tflite"
PTQ_SCHEME = "auto"
QAT_SCHEME = "auto_range_learning"
ADAROUND_ITERATIONS = 2000
ADAROUND_BATCH = 32
EPOCHS = 1
BATCH = 128
LEARNING_RATE = 1e-4
SEED = 0
EVAL_BATCH = 256
ERROR_CHARS = 160
GRID_BLOCK = "block1"

_BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})


@dataclasses.dataclass(frozen=True)
class Target:
    """A goal from issue 19 for one row.

    Attributes:
        kind: "fp32" (top-1 at most ``points`` below FP32), "finetune" (at most ``points`` below
            the float fine-tune) or "agreement" (top-1 agreement with the sim of 100%).
        points: the allowed drop in percentage points (unused for "agreement").
    """

    kind: str
    points: float = 0.0

    def __post_init__(self):
        if self.kind not in ("fp32", "finetune", "agreement"):
            raise ValueError(
                f"Expected Target.kind in ('fp32', 'finetune', 'agreement'). Received: {self.kind!r}"
            )
        if self.points < 0:
            raise ValueError(f"Expected Target.points >= 0. Received: {self.points}")

    def describe(self) -> str:
        if self.kind == "agreement":
            return "100% top-1 agreement with the sim"
        reference = "FP32" if self.kind == "fp32" else "the float fine-tune"
        return f"within {self.points:g} of {reference}"


@dataclasses.dataclass
class Row:
    """One line of the section's table; ``error`` set means the row failed."""

    variant: str
    who: str  # "reference", "peer" or "ours"
    accuracy: float | None = None
    size_bytes: int | None = None
    seconds: float | None = None
    agreement: float | None = None
    exact_fraction: float | None = None
    target: Target | None = None
    note: str = ""
    error: str | None = None


def first_line(error: BaseException, limit: int = ERROR_CHARS) -> str:
    """``Type: first non-empty line of the message``, cut to ``limit`` characters (with "...").

    Args:
        error: the exception.
        limit: most characters kept, >= 10.

    Returns:
        One line, safe inside a Markdown table cell (pipes escaped).
    """
    if limit < 10:
        raise ValueError(f"Expected limit >= 10. Received: {limit}")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.replace("|", "\\|")


def attempt(row: Row, fn: Callable[[], dict]) -> Row:
    """Runs ``fn`` (returning Row fields to set) and fills ``row``; on an exception records its
    first line in ``row.error`` instead and logs the traceback. ``row.seconds`` is ``fn``'s wall
    time unless ``fn`` returns its own."""
    start = time.perf_counter()
    try:
        fields = fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported in the table
        logging.exception("%s failed", row.variant)
        row.error = first_line(e)
        row.seconds = time.perf_counter() - start
        return row
    fields.setdefault("seconds", time.perf_counter() - start)
    for key, value in fields.items():
        if not hasattr(row, key):
            raise AttributeError(f"Expected a Row field name. Received: {key!r}")
        setattr(row, key, value)
    return row


def target_met(row: Row, fp32_accuracy: float | None, finetune_accuracy: float | None) -> bool | None:
    """Whether ``row`` meets its target; None when it has none or a needed number is missing."""
    if row.target is None or row.error is not None:
        return None
    if row.target.kind == "agreement":
        return None if row.agreement is None else row.agreement >= 1.0
    reference = fp32_accuracy if row.target.kind == "fp32" else finetune_accuracy
    if reference is None or row.accuracy is None:
        return None
    # Compared on whole test images (counts in 1e-4 steps here) so float noise cannot flip it.
    return round(1e4 * (reference - row.accuracy)) <= round(100 * row.target.points)


@dataclasses.dataclass(frozen=True)
class TfliteOp:
    """One op of a .tflite file: its name and, per output tensor, (name, dtype, scales, zero points)."""

    name: str
    outputs: tuple[tuple[str, str, tuple[float, ...], tuple[int, ...]], ...]


def tflite_ops(content: bytes) -> list[TfliteOp]:
    """The ops of a .tflite flatbuffer in execution order (builtin kernels, no delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=bytes(content),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = []
    for op in interpreter._get_ops_details():
        outputs = []
        for index in op["outputs"]:
            if index < 0:
                continue
            t = tensors[index]
            q = t["quantization_parameters"]
            outputs.append(
                (t["name"], np.dtype(t["dtype"]).name, tuple(float(s) for s in q["scales"]),
                 tuple(int(z) for z in q["zero_points"]))
            )
        ops.append(TfliteOp(op["op_name"], tuple(outputs)))
    return ops


def op_counts(ops: Sequence[TfliteOp]) -> dict[str, int]:
    """Op name -> how many, most frequent first (ties by name)."""
    counts = collections.Counter(op.name for op in ops)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def float_ops(ops: Sequence[TfliteOp]) -> dict[str, int]:
    """Ops (other than QUANTIZE / DEQUANTIZE) with a float32 output: op name -> how many."""
    return op_counts([op for op in ops if op.name not in _BOUNDARY_OPS and any(o[1] == "float32" for o in op.outputs)])


def grids_of(ops: Sequence[TfliteOp], substrings: Sequence[str]) -> list[tuple[str, str, str]]:
    """(op name, output tensor name, "scale s, zero point z" or the dtype when not per-tensor
    quantized) for the ops whose first output's name contains any of ``substrings``."""
    if not substrings:
        raise ValueError("Expected at least one substring to select tensors. Received: none")
    rows = []
    for op in ops:
        if not op.outputs or not any(s in op.outputs[0][0] for s in substrings):
            continue
        name, dtype, scales, zeros = op.outputs[0]
        grid = f"{dtype}, scale {scales[0]:.6g}, zero point {zeros[0]}" if len(scales) == 1 else dtype
        rows.append((op.name, name, grid))
    return rows


def unchanged_weight_layers(before: keras.Model, after: keras.Model) -> list[str]:
    """Names of the layers with a kernel (Conv / Dense / the projections inside
    MultiHeadAttention) whose weights hold the same values in ``after`` as in ``before``. Same
    layer names expected in both."""

    def has_kernel(layer) -> bool:
        return any(w.path.split("/")[-1] == "kernel" for w in layer.weights)

    after_layers = {layer.name: layer for layer in after.layers}
    missing = sorted(layer.name for layer in before.layers if has_kernel(layer) and layer.name not in after_layers)
    if missing:
        raise ValueError(f"Expected the same layer names in both models. Missing from `after`: {missing}")
    same = []
    for layer in before.layers:
        if not has_kernel(layer):
            continue
        theirs = after_layers[layer.name].get_weights()
        ours = layer.get_weights()
        if len(theirs) == len(ours) and all(np.array_equal(a, b) for a, b in zip(ours, theirs)):
            same.append(layer.name)
    return same


def _format_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} x{n}" for name, n in counts.items()) if counts else "none"


def render_section(
    rows: Sequence[Row],
    *,
    test_count: int,
    calibration_count: int,
    train_count: int | None,
    parameters: int,
    extra: Sequence[str] = (),
) -> str:
    """The BENCHMARKS.md section: the table (the FP32 row and the float fine-tune row are the
    references for the differences and targets), then the ``extra`` lines.

    Args:
        rows: the rows; the first with ``variant`` starting "FP32 Keras" is FP32, the one
            starting "Float fine-tune" the QAT reference.
        test_count / calibration_count / train_count: images used (train None: not loaded).
        parameters: the FP32 model's parameter count.
        extra: Markdown lines appended after the table.
    """
    fp32 = next((r for r in rows if r.variant.startswith("FP32 Keras") and r.error is None), None)
    finetune = next((r for r in rows if r.variant.startswith("Float fine-tune") and r.error is None), None)
    fp32_acc = fp32.accuracy if fp32 else None
    finetune_acc = finetune.accuracy if finetune else None
    train = f"{train_count:,}-image train split" if train_count else "train split (not loaded)"
    lines = [
        "## Bundled ViT (Fashion-MNIST)",
        "",
        f"Model: `datasets.load_bundled_vit()` ({parameters:,} parameters: patch-4 Conv2D embedding, class "
        "token, position embedding, 6 pre-norm blocks with MultiHeadAttention (4 heads) and a GELU MLP). "
        f"Every accuracy is top-1 on the full {test_count:,}-image test split; every calibration (TFLite's "
        f"representative dataset, `compute_encodings`, AdaRound) uses the {calibration_count:,} bundled "
        f"calibration images (train images, never scored). Ours: config `{CONFIG}`, scheme `{PTQ_SCHEME}`, "
        "8-bit activations, exported with `export_tflite` and checked with `verify_tflite` on LiteRT's "
        f"default kernels (XNNPACK) and on its reference kernels (BUILTIN_REF), the sim prepared for each. AdaRound: {ADAROUND_ITERATIONS:,} iterations per layer, batch {ADAROUND_BATCH}. "
        f"QAT and its float peer: {EPOCHS} epoch over the {train} in one fixed shuffled order, batch "
        f"{BATCH}, Adam lr {LEARNING_RATE:g}; QAT scheme `{QAT_SCHEME}`. Differences are in percentage "
        "points against FP32. A failed row shows the exception's first line.",
        "",
        f"Machine: {common.machine_description()}.",
        "",
        "| variant | by | top-1 % | vs FP32 | size | seconds | top-1 agreement / exact outputs vs sim "
        "| issue target | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = target_met(r, fp32_acc, finetune_acc)
        target = r.target.describe() if r.target else ""
        if r.target and r.target.kind == "finetune" and finetune_acc is not None and r.accuracy is not None:
            target += f" ({100 * (r.accuracy - finetune_acc):+.2f})"
        met_text = "" if r.target is None else ("yes" if met else "no" if met is False else "n/a")
        if r.error is not None:
            seconds = f"{r.seconds:.0f}" if r.seconds is not None else ""
            lines.append(
                f"| {r.variant} | {r.who} | **failed**: `{r.error}` | | | {seconds} | | {target} | {met_text} |"
            )
            continue
        acc = f"{100 * r.accuracy:.2f}" if r.accuracy is not None else ""
        delta = (
            f"{100 * (r.accuracy - fp32_acc):+.2f}"
            if r.accuracy is not None and fp32_acc is not None and r is not fp32
            else ""
        )
        size = f"{r.size_bytes / 1024:.1f} KB" if r.size_bytes is not None else ""
        seconds = f"{r.seconds:.0f}" if r.seconds is not None else ""
        fidelity = (
            f"{100 * r.agreement:.2f}% / {100 * r.exact_fraction:.2f}%"
            if r.agreement is not None and r.exact_fraction is not None
            else ""
        )
        lines.append(
            f"| {r.variant} | {r.who} | {acc} | {delta} | {size} | {seconds} | {fidelity} | {target} | {met_text} |"
        )
    notes = [f"- {r.variant}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", *notes]
    if extra:
        lines += ["", *extra]
    return "\n".join(lines)


def _accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return metrics.top1_accuracy(model.predict(x, batch_size=EVAL_BATCH, verbose=0), y)


def _compile(model: keras.Model) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def _sim(model: keras.Model, param_bw: int, x_cal: np.ndarray, scheme: str = PTQ_SCHEME,
         encodings: str | None = None) -> QuantizationSimModel:
    sim = QuantizationSimModel(
        model, quant_scheme=scheme, default_param_bw=param_bw, default_output_bw=8, config_file=CONFIG
    )
    if encodings is not None:
        sim.set_and_freeze_param_encodings(encodings)
    sim.compute_encodings(x_cal, batch_size=EVAL_BATCH)
    return sim


def _export_row(label: str, sims: dict, folder: str, x_test: np.ndarray, y_test: np.ndarray,
                kernels: str = "default") -> Row:
    """The .tflite row of the sim ``sims[label]`` prepared for LiteRT's ``kernels`` (failed when the
    sim itself failed)."""

    def measure():
        if label not in sims:
            raise RuntimeError(f"no {label} sim to export (its sim row failed)")
        sim = sims[label]
        path = export_tflite(sim, os.path.join(folder, f"vit_{label.lower().replace(' ', '_')}.tflite"),
                             kernels=kernels)
        report = verify_tflite(sim, path, x_test, labels=y_test, batch_size=EVAL_BATCH, kernels=kernels)
        with open(path, "rb") as f:
            ops = tflite_ops(f.read())
        return {
            "accuracy": report.accuracy_tflite, "size_bytes": report.file_size_bytes,
            "agreement": report.top1_agreement, "exact_fraction": report.exact_fraction,
            "note": f"`verify_tflite` on {report.num_samples:,} test images: the sim as the export prepared it "
            f"scores {100 * report.accuracy_sim:.2f}%; {report.interpreter}, resolver "
            f"{report.resolver}, delegate {report.delegate}; max {report.max_step_difference:.0f} output "
            f"steps apart, {100 * report.within_one_step:.2f}% within one step, SQNR {report.sqnr_db:.1f} dB; "
            f"ops ({len(ops)}): {_format_counts(op_counts(ops))}",
        }

    return attempt(Row(f"{label} .tflite (`export_tflite`, {kernels} kernels)", "ours", target=Target("agreement")),
                   measure)


def _peer_rows(model, x_cal, x_test, y_test) -> tuple[list[Row], list[str]]:
    """TFLite's own int8 and 16x8 PTQ rows, and the research lines about the int8 file."""
    extra: list[str] = []
    details: dict[str, list[TfliteOp]] = {}

    def int8():
        t = time.perf_counter()
        content = tflite_ptq_int8(model, x_cal, int8_io=True)
        convert_seconds = time.perf_counter() - t
        details["int8"] = tflite_ops(content)
        accuracy = metrics.top1_accuracy(run_tflite(content, x_test, batch_size=EVAL_BATCH)[0], y_test)
        floating = float_ops(details["int8"])
        return {
            "accuracy": accuracy, "size_bytes": len(content),
            "note": "run with LiteRT's default resolver (AUTO: builtin kernels + the XNNPACK delegate); "
            f"conversion {convert_seconds:.0f} s; ops with float32 outputs (other than QUANTIZE/DEQUANTIZE): "
            f"{_format_counts(floating)}",
        }

    def int16():
        t = time.perf_counter()
        content = tflite_ptq_16x8(model, x_cal)
        convert_seconds = time.perf_counter() - t
        accuracy = metrics.top1_accuracy(run_tflite(content, x_test, batch_size=EVAL_BATCH)[0], y_test)
        floating = float_ops(tflite_ops(content))
        return {
            "accuracy": accuracy, "size_bytes": len(content),
            "note": f"conversion {convert_seconds:.0f} s; float32 outputs: {_format_counts(floating)}",
        }

    rows = [
        attempt(Row("TFLite PTQ full int8 (int8 in/out)", "peer"), int8),
        attempt(Row("TFLite PTQ 16x8 (int16 activations, int8 weights)", "peer"), int16),
    ]
    if "int8" in details:
        ops = details["int8"]
        extra += [
            f"TFLite int8 PTQ file, ops ({len(ops)}): {_format_counts(op_counts(ops))}.",
            "",
            f"Its grids in {GRID_BLOCK} (LayerNorm internals as the converter decomposes LayerNormalization, "
            "and the attention: Q/K/V projections, QK^T, scaling, softmax, attention x V, output projection), "
            "output tensor of each op in execution order:",
            "",
            "| op | output tensor | grid |",
            "|---|---|---|",
        ]
        for op_name, tensor, grid in grids_of(ops, (f"{GRID_BLOCK}_ln1", f"{GRID_BLOCK}_mha", f"{GRID_BLOCK}_ln2")):
            extra.append(f"| {op_name} | `{tensor}` | {grid} |")
    return rows, extra


def run() -> str:
    started = time.perf_counter()
    model = datasets.load_bundled_vit()
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_cal, _ = datasets.load_fashion_mnist("calibration")
    keras.utils.set_random_seed(SEED)
    rows: list[Row] = []

    fp32 = attempt(
        Row("FP32 Keras", "reference"),
        lambda: {"accuracy": _accuracy(model, x_test, y_test), "size_bytes": float_weight_bytes(model)},
    )
    rows.append(fp32)
    logging.info("FP32: %s", fp32)
    peer_rows, extra = _peer_rows(model, x_cal, x_test, y_test)
    rows += peer_rows
    logging.info("peers: %s", peer_rows)

    target_model = prepare_model_for_tflite(model)
    sims: dict[str, QuantizationSimModel] = {}
    with tempfile.TemporaryDirectory() as folder:
        for label, param_bw, target in (("W8A8", 8, Target("fp32", 0.3)), ("W4A8", 4, None)):

            def build(label=label, param_bw=param_bw):
                sims[label] = _sim(target_model, param_bw, x_cal)
                return {
                    "accuracy": _accuracy(sims[label].model, x_test, y_test),
                    "size_bytes": sim_weight_bytes(sims[label]),
                }

            rows.append(attempt(Row(f"{label} sim", "ours", target=target), build))
            rows.append(_export_row(label, sims, folder, x_test, y_test))
            rows.append(_export_row(label, sims, folder, x_test, y_test, kernels="reference"))
            logging.info("%s: %s", label, rows[-2:])

        def adaround():
            params = AdaroundParameters(
                data_set=x_cal, num_batches=max(1, len(x_cal) // ADAROUND_BATCH),
                default_num_iterations=ADAROUND_ITERATIONS, batch_size=ADAROUND_BATCH,
            )
            rounded = apply_adaround(
                target_model, params, path=folder, filename_prefix="vit_adaround", default_param_bw=4,
                default_quant_scheme=PTQ_SCHEME, config_file=CONFIG, verbose=0,
            )
            sims["W4A8 AdaRound"] = _sim(rounded, 4, x_cal, encodings=os.path.join(folder, "vit_adaround.encodings"))
            kept = unchanged_weight_layers(target_model, rounded)
            return {
                "accuracy": _accuracy(sims["W4A8 AdaRound"].model, x_test, y_test),
                "size_bytes": sim_weight_bytes(sims["W4A8 AdaRound"]),
                "note": "layers whose weights AdaRound left as they were (nearest rounding in the sim): "
                f"{', '.join(kept) if kept else 'none'}",
            }

        rows.append(attempt(Row("W4A8 AdaRound sim", "ours", target=Target("fp32", 1.0)), adaround))
        rows.append(_export_row("W4A8 AdaRound", sims, folder, x_test, y_test))
        rows.append(_export_row("W4A8 AdaRound", sims, folder, x_test, y_test, kernels="reference"))
        logging.info("AdaRound: %s", rows[-2:])

    train: dict[str, np.ndarray] = {}

    def train_split() -> tuple[np.ndarray, np.ndarray]:
        if not train:
            x, y = datasets.load_fashion_mnist("train")
            order = np.random.default_rng(SEED).permutation(len(x))  # shared by both trainings
            train["x"], train["y"] = x[order], y[order]
        return train["x"], train["y"]

    def finetune():
        x, y = train_split()
        keras.utils.set_random_seed(SEED)
        clone = keras.models.clone_model(target_model)
        clone.set_weights(target_model.get_weights())
        _compile(clone)
        t = time.perf_counter()
        clone.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
        seconds = time.perf_counter() - t
        return {"accuracy": _accuracy(clone, x_test, y_test), "seconds": seconds,
                "note": f"{EPOCHS} epoch {seconds:.0f} s (the peer of QAT: same training, no quantization)"}

    def qat():
        x, y = train_split()
        keras.utils.set_random_seed(SEED)
        sim = _sim(target_model, 4, x_cal, scheme=QAT_SCHEME)
        before = _accuracy(sim.model, x_test, y_test)
        _compile(sim.model)
        t = time.perf_counter()
        sim.model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
        seconds = time.perf_counter() - t
        return {"accuracy": _accuracy(sim.model, x_test, y_test), "seconds": seconds,
                "size_bytes": sim_weight_bytes(sim),
                "note": f"{EPOCHS} epoch {seconds:.0f} s incl. tracing; {100 * before:.2f}% before training"}

    rows.append(attempt(Row(f"Float fine-tune, {EPOCHS} epoch", "peer"), finetune))
    rows.append(attempt(Row(f"W4A8 QAT, {EPOCHS} epoch (sim)", "ours", target=Target("finetune", 0.5)), qat))
    logging.info("QAT: %s", rows[-2:])
    logging.info("bench_vit finished in %.0f s", time.perf_counter() - started)
    return render_section(
        rows, test_count=len(x_test), calibration_count=len(x_cal),
        train_count=len(train["x"]) if train else None, parameters=model.count_params(), extra=extra,
    )
