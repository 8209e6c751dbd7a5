"""AIMET's own automatic mixed precision (aimet-onnx) on a Keras model handed over as files; runs in the AIMET venv.

The peer side of issue 16's AMP comparison. Inputs: the work folder written by
``benchmarks/peers/keras_to_peer.export_for_peer`` (graph.json, weights.npz, data.npz with
``x_cal``, ``x_test``, ``fp32_outputs`` and ``y_test``) and ``--eval`` (an .npz with ``x_eval``
and ``y_eval``, Keras layout: the data both AMP phases score on). The script

1. rebuilds the model in ONNX and checks it against the Keras FP32 outputs (``aimet_peer.py``);
2. makes an aimet-onnx ``QuantizationSimModel`` at the highest candidate (the largest activation
   and the largest weight bitwidth, which must be one of the candidates) with ``--quant-scheme``
   and aimet-onnx's "default" config (per-channel weights), and computes encodings on
   ``x_cal`` in batches of 32;
3. runs aimet-onnx's ``choose_mixed_precision`` with its defaults (binary search,
   ``phase1_optimize=True``, ``use_all_amp_candidates=False``), ``clean_start=True``, the
   calibration batches as forward pass, and as phase-1 and phase-2 eval callbacks the top-1
   accuracy (a fraction) on the eval set, each counted and timed;
4. scores the final sim (left by AIMET at the chosen point) on the test set.

``--output`` (JSON, written atomically; ``"complete"`` turns true at the end) holds ``versions``,
``amp_seconds`` (wall clock of ``choose_mixed_precision``), ``eval_calls`` / ``eval_seconds``
per phase, ``forward_pass_calls``, ``fp32_eval_accuracy``, ``target_accuracy``, ``pareto``
(what aimet-onnx returned, one ``[relative BOPs, eval accuracy, quantizer group as
[["activation"|"weight", name], ...], candidate as [[act_bw, dtype], [param_bw, dtype]]]`` per
evaluated point, in AIMET's order, or null when AIMET exited early), ``chosen`` (the point the
sim was left at: ``relative_bops``, ``eval_accuracy`` and its index in ``pareto``; see
:func:`chosen_point`), ``aimet_amp_info`` (AIMET's own amp_info_list.json, when written),
``weights`` (per Conv/Gemm weight its final bitwidth, and the weight bits relative to all-W8)
and ``test`` (accuracy and agreement of the final sim on ``x_test``, with its predictions).

Usage (inside the venv made by setup_aimet.sh):
    /tmp/aimet_venv/bin/python benchmarks/peers/aimet_amp_peer.py --workdir DIR --eval DIR/eval.npz \\
        --candidates '[[8, 8], [8, 4]]' --allowed-accuracy-drop 0.003 --quant-scheme min_max \\
        --output DIR/aimet_amp.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from aimet_peer import (
    build_onnx,
    calibration_batches,
    check_fp32,
    load_workdir,
    make_sim,
    predict,
    score,
    to_onnx_layout,
    versions,
    write_json,
)

QUANT_SCHEMES = ("min_max", "tf_enhanced")
MIN_BITWIDTH, MAX_BITWIDTH = 2, 32
LINEAR_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def parse_candidates(text: str) -> list[tuple[int, int]]:
    """Reads ``--candidates``: a JSON list of distinct ``[act_bw, param_bw]`` integer pairs.

    Args:
        text: the JSON text, e.g. ``'[[8, 8], [8, 4]]'``.

    Returns:
        The candidates as (act_bw, param_bw) tuples, in the given order.

    Raises:
        ValueError: for text that is not such a list, a bitwidth outside [2, 32], a repeated pair,
            fewer than two candidates, or no candidate holding both the largest activation and the
            largest weight bitwidth (the sim starts there).
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--candidates must be JSON, e.g. '[[8, 8], [8, 4]]'. Received: {text!r} ({error}).") from None
    if not isinstance(value, list):
        raise ValueError(f"--candidates must be a JSON list of [act_bw, param_bw] pairs. Received: {text!r}.")
    candidates = []
    for entry in value:
        if (not isinstance(entry, list) or len(entry) != 2
                or not all(isinstance(bw, int) and not isinstance(bw, bool) for bw in entry)):
            raise ValueError(f"Each candidate must be a pair of integers [act_bw, param_bw]. Received: {entry!r}.")
        if not all(MIN_BITWIDTH <= bw <= MAX_BITWIDTH for bw in entry):
            raise ValueError(
                f"Candidate bitwidths must lie in [{MIN_BITWIDTH}, {MAX_BITWIDTH}]. Received: {entry!r}."
            )
        if tuple(entry) in candidates:
            raise ValueError(f"Candidate {entry!r} is given twice in --candidates {text!r}.")
        candidates.append(tuple(entry))
    if len(candidates) < 2:
        raise ValueError(f"Mixed precision needs at least two candidates. Received: {text!r}.")
    highest = highest_candidate(candidates)
    if highest not in candidates:
        raise ValueError(
            f"The sim starts at the largest activation and weight bitwidths {list(highest)}, which must itself be "
            f"a candidate. Received: {text!r}."
        )
    return candidates


def highest_candidate(candidates: list[tuple[int, int]]) -> tuple[int, int]:
    """The (largest act_bw, largest param_bw) pair over ``candidates``."""
    return max(a for a, _ in candidates), max(p for _, p in candidates)


def parse_accuracy_drop(text: str) -> float:
    """Reads ``--allowed-accuracy-drop``: an absolute drop of top-1 accuracy as a fraction in [0, 1).

    Raises:
        ValueError: for a non-number or a value outside [0, 1) (a drop in percent such as 3 is refused).
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--allowed-accuracy-drop must be a number. Received: {text!r}.") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"--allowed-accuracy-drop is an absolute drop of accuracy as a fraction in [0, 1) (0.003 = 0.3 points). "
            f"Received: {text!r}."
        )
    return value


def load_eval_set(path: str, input_shape: list, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads the AMP eval set (``x_eval`` in Keras layout, ``y_eval`` integer labels) from ``path``.

    Args:
        path: an .npz file.
        input_shape: the model's per-sample input shape (graph.json ``input.shape``; None = any).
        num_classes: the size of the model's output (labels must lie in [0, num_classes)).

    Returns:
        (x_eval float32, y_eval int64), Keras layout.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if an array is missing, empty, of the wrong shape, or the labels do not match.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--eval {path!r} does not exist.")
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    missing = [name for name in ("x_eval", "y_eval") if name not in arrays]
    if missing:
        raise ValueError(f"--eval {path!r} must hold x_eval and y_eval; it lacks {missing} (holds {sorted(arrays)}).")
    x, y = np.asarray(arrays["x_eval"], np.float32), np.asarray(arrays["y_eval"])
    if len(x) == 0:
        raise ValueError(f"--eval {path!r}: x_eval is empty.")
    if x.ndim != len(input_shape) + 1 or any(d is not None and d != s for d, s in zip(input_shape, x.shape[1:])):
        raise ValueError(
            f"--eval {path!r}: x_eval has shape {list(x.shape)}; the model takes [N, *{input_shape}] (Keras layout)."
        )
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"--eval {path!r}: y_eval must be {len(x)} integer labels (one per x_eval image). "
            f"Received: shape {list(y.shape)}, dtype {y.dtype}."
        )
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"--eval {path!r}: y_eval holds labels in [{y.min()}, {y.max()}]; the model has {num_classes} outputs."
        )
    return x, y.astype(np.int64)


def load_scored_workdir(workdir: str, eval_path: str, peer: str) -> tuple[dict, dict, dict, tuple, np.ndarray]:
    """Reads an export with labels and the eval set beside it, the inputs in NCHW (ONNX) layout.

    Args:
        workdir: the folder ``keras_to_peer.export_for_peer`` wrote (with ``y_test``).
        eval_path: the .npz of :func:`load_eval_set`.
        peer: names the peer in the error message.

    Returns:
        (graph, weights, data as :func:`aimet_peer.load_workdir` read them, (x_cal, x_test, x_eval)
        in NCHW layout, y_eval).

    Raises:
        ValueError: if data.npz has no ``y_test``, or as :func:`load_eval_set` does.
    """
    graph, weights, data = load_workdir(workdir)
    if "y_test" not in data:
        raise ValueError(f"{workdir}/data.npz has no y_test: the {peer} peer scores test accuracy and needs labels.")
    x_eval, y_eval = load_eval_set(eval_path, graph["input"]["shape"], int(data["fp32_outputs"].shape[-1]))
    inputs = tuple(to_onnx_layout(x) for x in (data["x_cal"], data["x_test"], x_eval))
    return graph, weights, data, inputs, y_eval


class CountingEval:
    """An AMP eval callback: top-1 accuracy (fraction) of the session on a fixed set, counted and timed."""

    def __init__(self, x: np.ndarray, labels: np.ndarray, input_name: str):
        """Args: x: inputs in ONNX layout; labels: their integer labels; input_name: the model input."""
        self.x, self.labels, self.input_name = x, labels, input_name
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, session, *_args) -> float:
        start = time.perf_counter()
        accuracy = top1(session, self.x, self.labels, self.input_name)
        self.calls += 1
        self.seconds += time.perf_counter() - start
        return accuracy


def top1(session, x: np.ndarray, labels: np.ndarray, input_name: str) -> float:
    """Top-1 accuracy (fraction) of ``session`` on ``x`` (ONNX layout)."""
    return float(np.mean(np.argmax(predict(session, x, input_name), -1) == labels))


def _dtype_name(dtype) -> str:
    return getattr(dtype, "name", str(dtype))


def pareto_entry(entry) -> list:
    """One entry of aimet-onnx's Pareto list, (relative BOPs, eval score, QuantizerGroup, candidate), as JSON."""
    relative_bops, eval_score, group, candidate = entry
    return [
        float(relative_bops),
        float(eval_score),
        [list(pair) for pair in group.to_list()],
        [[int(bw), _dtype_name(dtype)] for bw, dtype in candidate],
    ]


def chosen_point(pareto: list[list] | None, target_accuracy: float) -> dict:
    """The point aimet-onnx left the sim at, read from its Pareto list.

    Phase 2 lowers quantizer groups cumulatively in Pareto order, so relative BOPs fall along the
    list. aimet-onnx's binary search only moves to lower BOPs from a point that reaches the target,
    so every evaluated point after the one it keeps missed the target: the kept point is the last
    evaluated one that reaches it. If none does, AIMET falls back to the highest candidate
    everywhere (relative BOPs 1).

    Args:
        pareto: JSON Pareto entries (:func:`pareto_entry`) in AIMET's order, or None when AIMET
            exited before phase 2.
        target_accuracy: FP32 eval accuracy minus the allowed drop.

    Returns:
        ``{"index", "relative_bops", "eval_accuracy"}``; ``index`` is None for the fallback (then
        ``eval_accuracy`` is None too: AIMET did not return it) and everything is None without a
        Pareto list.
    """
    if pareto is None:
        return {"index": None, "relative_bops": None, "eval_accuracy": None}
    meeting = [i for i, entry in enumerate(pareto) if entry[1] >= target_accuracy]
    if not meeting:
        return {"index": None, "relative_bops": 1.0, "eval_accuracy": None}
    index = meeting[-1]
    return {"index": index, "relative_bops": pareto[index][0], "eval_accuracy": pareto[index][1]}


def weight_bitwidths(sim, model) -> dict:
    """The final bitwidth of each Conv/Gemm weight quantizer of ``sim`` and the weight bits relative to all-W8.

    Args:
        sim: the aimet-onnx sim after AMP.
        model: the ONNX model the sim was made from (for the weight tensors and their sizes).

    Returns:
        ``{"per_weight": {weight tensor: bitwidth, or None when its quantizer is disabled (kept
        float, counted as 32 bits)}, "relative_to_w8": sum(size x bits) / sum(size x 8)}``.

    Raises:
        KeyError: if a Conv/Gemm weight has no quantizer in the sim.
    """
    from onnx import numpy_helper

    sizes = {t.name: int(numpy_helper.to_array(t).size) for t in model.graph.initializer}
    weights = [node.input[1] for node in model.graph.node if node.op_type in LINEAR_OPS and node.input[1] in sizes]
    quantizers = sim.qc_quantize_op_dict
    missing = [name for name in weights if name not in quantizers]
    if missing:
        raise KeyError(f"The sim has no quantizer for the weights {missing}; it has {sorted(quantizers)[:20]}...")
    per_weight = {name: int(quantizers[name].bitwidth) if quantizers[name].enabled else None for name in weights}
    bits = sum(sizes[name] * (32 if bw is None else bw) for name, bw in per_weight.items())
    return {"per_weight": per_weight, "relative_to_w8": bits / (8 * sum(sizes[name] for name in weights))}


def _read_amp_info(results_dir: str) -> list | None:
    path = os.path.join(results_dir, "amp_info_list.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="folder written by keras_to_peer.export_for_peer")
    parser.add_argument("--eval", required=True, help=".npz with x_eval (Keras layout) and y_eval")
    parser.add_argument("--candidates", required=True, help="JSON list of [act_bw, param_bw], e.g. [[8,8],[8,4]]")
    parser.add_argument("--allowed-accuracy-drop", required=True, help="absolute, fraction units, e.g. 0.003")
    parser.add_argument("--quant-scheme", default="min_max", choices=QUANT_SCHEMES)
    parser.add_argument("--output", required=True, help="JSON results file")
    args = parser.parse_args(argv)
    try:
        args.candidates = parse_candidates(args.candidates)
        args.allowed_accuracy_drop = parse_accuracy_drop(args.allowed_accuracy_drop)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    import torch

    from aimet_onnx.common.defs import CallbackFunc, QuantizationDataType
    from aimet_onnx.mixed_precision import AMPSearchAlgo, choose_mixed_precision

    graph, weights, data, (x_cal, x_test, x_eval), y_eval = load_scored_workdir(args.workdir, args.eval, "AMP")
    input_name = graph["input"]["name"]
    model = build_onnx(graph, weights)
    result = {
        "model": graph.get("name"),
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "candidates": [list(c) for c in args.candidates],
        "allowed_accuracy_drop": args.allowed_accuracy_drop,
        "quant_scheme": args.quant_scheme,
        "config": "default (per-channel weights)",
        "search_algo": "binary",
        "calibration_images": int(len(x_cal)),
        "eval_images": int(len(x_eval)),
        "test_images": int(len(x_test)),
        "fp32": check_fp32(model, graph, x_test, data["fp32_outputs"], data["y_test"]),
        "complete": False,
    }
    result["fp32"].pop("predictions")
    print(f"aimet_amp_peer: {graph.get('name')} candidates {args.candidates}", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    np.random.seed(0)

    act_bw, param_bw = highest_candidate(args.candidates)
    sim = make_sim(model, param_bw, act_bw, args.quant_scheme, per_channel=True)
    calibration = calibration_batches(x_cal, input_name)
    start = time.perf_counter()
    sim.compute_encodings(calibration)
    result["compute_encodings_seconds"] = time.perf_counter() - start

    forward_passes = []

    def forward_pass(session, batches):
        forward_passes.append(1)
        for feed in batches:
            session.run(None, feed)

    phase1, phase2 = CountingEval(x_eval, y_eval, input_name), CountingEval(x_eval, y_eval, input_name)
    results_dir = os.path.join(args.workdir, "aimet_amp_results")
    candidates = [((a, QuantizationDataType.int), (p, QuantizationDataType.int)) for a, p in args.candidates]
    start = time.perf_counter()
    pareto = choose_mixed_precision(
        sim, candidates, phase1, phase2, args.allowed_accuracy_drop, results_dir, True,
        CallbackFunc(forward_pass, calibration), amp_search_algo=AMPSearchAlgo.Binary,
    )
    result["amp_seconds"] = time.perf_counter() - start
    result["eval_calls"] = {"phase1": phase1.calls, "phase2": phase2.calls}
    result["eval_seconds"] = {"phase1": phase1.seconds, "phase2": phase2.seconds}
    result["forward_pass_calls"] = len(forward_passes)
    result["aimet_amp_info"] = _read_amp_info(results_dir)

    # FP32 eval accuracy as AIMET's phase 2 sees it (the ONNX model, no quantizers), outside the counts.
    import onnxruntime as ort

    fp32_session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result["fp32_eval_accuracy"] = top1(fp32_session, x_eval, y_eval, input_name)
    result["target_accuracy"] = result["fp32_eval_accuracy"] - args.allowed_accuracy_drop
    result["pareto"] = None if pareto is None else [pareto_entry(entry) for entry in pareto]
    result["early_exit"] = pareto is None
    result["chosen"] = chosen_point(result["pareto"], result["target_accuracy"])
    result["final_eval_accuracy"] = top1(sim.session, x_eval, y_eval, input_name)  # not counted
    result["weights"] = weight_bitwidths(sim, model)
    result["test"] = score(predict(sim.session, x_test, input_name), data["fp32_outputs"], data["y_test"])
    result["complete"] = True
    write_json(args.output, result)
    print(json.dumps({k: v for k, v in result.items() if k != "test"}))


if __name__ == "__main__":
    main()
