"""AIMET's own AutoQuant (aimet-torch 2.28.0) on a Keras model handed over as files; runs in the aimet-torch venv.

The peer side of issue 18's AutoQuant comparison. aimet-torch 2.28.0 is the last release that
ships AutoQuant and loads on Python 3.11 (aimet-onnx has none; see ``aimet_runner.py``). Inputs:
the work folder written by ``benchmarks/peers/keras_to_peer.export_for_peer`` (graph.json,
weights.npz, data.npz with ``x_cal``, ``x_test``, ``fp32_outputs`` and ``y_test``) and
``--eval`` (an .npz with ``x_eval`` and ``y_eval``, Keras layout: the data AutoQuant scores on).
The script

1. rebuilds the model as a torch module (``torch_model.py``) and checks it against the Keras
   FP32 outputs on ``x_test`` (within 1e-4 of the largest |output|);
2. makes ``aimet_torch.v2.auto_quant.AutoQuant`` with ``--param-bw``, ``--output-bw``,
   ``--quant-scheme`` (AutoQuant's own "QuantScheme Selection" step then picks the best of its
   five weight / activation scheme pairs anyway), ``--config`` (a quantsim config JSON path, or
   "default" for aimet-torch's built-in default config) and AIMET's defaults otherwise
   (rounding "nearest", no cache, ``strict_validation=True``, ``model_prepare_required=True``);
   the calibration data loader yields ``x_cal`` in batches of 32; the eval callback is the top-1
   accuracy (a fraction) on the eval set, counted and timed;
3. sets AdaRound's parameters with ``set_adaround_params``: the calibration loader, every batch
   of it (AIMET's own default: at most 2,000 images) and ``--adaround-iterations`` per layer;
4. times ``optimize(allowed_accuracy_drop)``, which returns (model, eval score, encodings path);
5. puts the returned model in a new ``QuantizationSimModel`` with the same bitwidths and config,
   loads the returned encodings into it (their ``_torch.encodings`` form, which AIMET writes
   beside them), and scores it on the eval set (a check that it is the model AutoQuant scored;
   not counted) and on ``x_test``.

``--output`` (JSON, written atomically; ``"complete"`` turns true at the end) holds ``versions``,
``torch_threads``, ``fp32`` (the rebuild check), ``fp32_eval_accuracy``, ``target_accuracy``,
``autoquant_accuracy`` (what ``optimize`` returned), ``optimize_seconds``, ``eval_calls`` and
``eval_seconds``, ``sessions`` (AIMET's log: each step's title, eval score and when it ended),
``quant_scheme_scores`` (each scheme pair AIMET tried, its score and when it ended) and
``chosen_quant_scheme``, ``applied`` (the steps behind the returned result, from the encodings
file AIMET returned and its log), ``final_eval_accuracy`` and ``test`` (accuracy and agreement
of the final sim on ``x_test``, with its predictions).

torchvision: aimet-torch imports it, and the package index only has CUDA builds of it, whose
compiled ops cannot load beside the CPU build of torch this venv uses. When they cannot load,
:func:`load_torchvision` declares the two operator schemas torchvision's import registers fake
kernels for (``nms``, ``qnms``), so that torchvision imports without its compiled ops (none of
the models here uses them; calling one fails with PyTorch's "no kernel" error).

Usage (inside the venv made by setup_aimet_torch.sh):
    /tmp/aimet_torch_venv/bin/python benchmarks/peers/aimet_autoquant_peer.py --workdir DIR \\
        --eval DIR/eval.npz --param-bw 4 --output-bw 8 --allowed-accuracy-drop 0.005 \\
        --config aimet_tf/quantization/presets/tflite.json --output DIR/aimet_autoquant.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import time

import numpy as np
import torch

from aimet_amp_peer import load_scored_workdir, parse_accuracy_drop
from aimet_peer import BATCH, score, write_json
from torch_model import build_torch, check_fp32, predict

QUANT_SCHEMES = {"min_max": "post_training_tf", "tf_enhanced": "post_training_tf_enhanced",
                 "percentile": "post_training_percentile"}
MIN_PARAM_BW, MIN_OUTPUT_BW, MAX_BITWIDTH = 2, 4, 32  # what aimet-torch's quantsim accepts
ADAROUND_MAX_IMAGES = 2000  # AutoQuant's own cap on AdaRound's data
_DECLARED: list = []
_SESSION = re.compile(r"^Session finished: (?P<title>.+)\. \(eval score: (?P<score>[-+0-9.eE]+|nan)\)$")
_SCHEME = re.compile(r"^Evaluation finished: (?P<pair>W@.+ / A@.+) \(eval score: (?P<score>[-+0-9.eE]+|nan)\)$")
_W32 = re.compile(r"^Evaluation finished: W32A\d+ \(eval score: (?P<score>[-+0-9.eE]+|nan)\)$")
# What each AutoQuant PTQ session's encodings file is called (AIMET names them after the session).
_SESSION_FILES = {"batchnorm_folding": "Batchnorm Folding", "cross_layer_equalization": "Cross-Layer Equalization",
                  "adaround": "AdaRound"}


def load_torchvision() -> bool:
    """Imports torchvision, declaring ``torchvision::nms`` / ``qnms`` first when its compiled ops cannot load.

    Returns:
        True if torchvision's compiled ops loaded, False if it was imported without them.
    """
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("aimet-torch needs torchvision, which is not installed in this venv.")
    library = os.path.join(os.path.dirname(spec.origin), "_C.so")
    try:
        torch.ops.load_library(library)
        ops = True
    except OSError:
        ops = False
        declared = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            declared.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _DECLARED.append(declared)  # the schemas live as long as their Library object
    import torchvision  # noqa: F401

    return ops


def parse_bitwidth(text: str, what: str, minimum: int) -> int:
    """Reads a bitwidth argument: an integer in [minimum, 32].

    Raises:
        ValueError: for anything else, naming the argument.
    """
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer bitwidth. Received: {text!r}.") from None
    if not minimum <= value <= MAX_BITWIDTH:
        raise ValueError(f"{what} must lie in [{minimum}, {MAX_BITWIDTH}] (aimet-torch's range). Received: {value}.")
    return value


def parse_iterations(text: str) -> int:
    """Reads ``--adaround-iterations``: a positive integer.

    Raises:
        ValueError: for anything else.
    """
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--adaround-iterations must be a positive integer. Received: {text!r}.") from None
    if value < 1:
        raise ValueError(f"--adaround-iterations must be a positive integer. Received: {value}.")
    return value


def config_path(text: str) -> str | None:
    """``--config``: None for "default" (aimet-torch's built-in config), else an existing JSON file.

    Raises:
        FileNotFoundError: if the file does not exist.
    """
    if text == "default":
        return None
    if not os.path.isfile(text):
        raise FileNotFoundError(f"--config {text!r} is neither 'default' nor an existing quantsim config JSON file.")
    return text


class _Images(torch.utils.data.Dataset):
    """Unlabelled images (NCHW float32) as a dataset of tensors, the form AutoQuant's loader wants."""

    def __init__(self, x: np.ndarray):
        self.x = torch.from_numpy(np.ascontiguousarray(x, np.float32))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.x[index]


def calibration_loader(x_cal: np.ndarray) -> torch.utils.data.DataLoader:
    """``x_cal`` (NCHW) in batches of ``BATCH``, in order."""
    return torch.utils.data.DataLoader(_Images(x_cal), batch_size=BATCH, shuffle=False)


class CountingTop1:
    """AutoQuant's eval callback: top-1 accuracy (fraction) of a model on a fixed set, counted and timed."""

    def __init__(self, x: np.ndarray, labels: np.ndarray):
        """Args: x: inputs in NCHW layout; labels: their integer labels."""
        self.x, self.labels = x, labels
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, model: torch.nn.Module, num_samples: int | None = None) -> float:
        """Scores ``model``; AutoQuant passes ``num_samples`` (None: all) as the second argument."""
        start = time.perf_counter()
        count = len(self.x) if num_samples is None else min(int(num_samples), len(self.x))
        accuracy = top1(model, self.x[:count], self.labels[:count])
        self.calls += 1
        self.seconds += time.perf_counter() - start
        return accuracy


def top1(model: torch.nn.Module, x: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``x`` (NCHW)."""
    return float(np.mean(np.argmax(predict(model, x), -1) == labels))


class _LogLines(logging.Handler):
    """Keeps the messages of one logger, each with its time (``time.time()`` seconds)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.created, record.getMessage()))


def read_log(lines: list[tuple[float, str]], start: float) -> dict:
    """What AutoQuant's log says: each finished session's score, each scheme pair's score, the W32 score.

    Args:
        lines: (time, message) of AIMET's "AutoQuant" logger, in order.
        start: the ``time.time()`` at which ``optimize`` was called.

    Returns:
        ``{"sessions": [{"title", "eval_score", "ended_at_seconds"}], "quant_scheme_scores":
        [{"pair", "eval_score", "ended_at_seconds"}], "w32_eval_score": float or None}``;
        ``ended_at_seconds`` counts from ``start``.
    """
    sessions, schemes, w32 = [], [], None
    for created, line in lines:
        at = round(created - start, 3)
        if match := _SESSION.match(line):
            sessions.append({"title": match["title"], "eval_score": float(match["score"]), "ended_at_seconds": at})
        elif match := _SCHEME.match(line):
            schemes.append({"pair": match["pair"], "eval_score": float(match["score"]), "ended_at_seconds": at})
        elif match := _W32.match(line):
            w32 = float(match["score"])
    return {"sessions": sessions, "quant_scheme_scores": schemes, "w32_eval_score": w32}


def applied_steps(encoding_path: str | None, sessions: list[dict]) -> dict:
    """The steps behind the result ``optimize`` returned.

    AutoQuant returns the best of its PTQ sessions; each session's encodings file is named after
    it. AdaRound starts from the better of batch-norm folding and CLE, so its result carries that
    step too (the one whose session scored higher; batch-norm folding on a tie, as AIMET's ``max``
    keeps the first).

    Args:
        encoding_path: the encodings path ``optimize`` returned (None when AIMET exited early).
        sessions: :func:`read_log`'s sessions.

    Returns:
        ``{"result_of": session title or None, "steps": [AIMET's technique names]}``.

    Raises:
        ValueError: for an encodings file named after no AutoQuant session.
    """
    if encoding_path is None:
        return {"result_of": None, "steps": []}
    stem = os.path.basename(encoding_path).removesuffix(".encodings")
    if stem not in _SESSION_FILES:
        raise ValueError(f"AutoQuant returned encodings {encoding_path!r}, named after no session of {list(_SESSION_FILES)}.")
    if stem != "adaround":
        return {"result_of": _SESSION_FILES[stem], "steps": [stem]}
    scores = {s["title"]: s["eval_score"] for s in sessions}
    earlier = [name for name in ("batchnorm_folding", "cross_layer_equalization") if _SESSION_FILES[name] in scores]
    base = max(earlier, key=lambda name: scores[_SESSION_FILES[name]]) if earlier else None
    return {"result_of": "AdaRound", "steps": ([base] if base else []) + ["adaround"]}


def torch_encodings_path(encoding_path: str) -> str:
    """The aimet-torch form of the encodings ``optimize`` returned (named by module; the returned file is
    the ONNX-export form, which ``load_encodings`` does not read).

    Raises:
        FileNotFoundError: if AIMET wrote no such file beside it.
    """
    path = f"{encoding_path.removesuffix('.encodings')}_torch.encodings"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"AutoQuant returned {encoding_path!r} but wrote no {path!r} beside it.")
    return path


def versions() -> dict:
    """The versions of the peer's packages (aimet-torch, torch, torchvision)."""
    import torchvision

    import aimet_torch

    return {"aimet_torch": aimet_torch.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="folder written by keras_to_peer.export_for_peer")
    parser.add_argument("--eval", required=True, help=".npz with x_eval (Keras layout) and y_eval")
    parser.add_argument("--param-bw", default="8", help="weight bitwidth, 2..32")
    parser.add_argument("--output-bw", default="8", help="activation bitwidth, 4..32")
    parser.add_argument("--allowed-accuracy-drop", required=True, help="absolute, fraction units, e.g. 0.005")
    parser.add_argument("--quant-scheme", default="tf_enhanced", choices=sorted(QUANT_SCHEMES))
    parser.add_argument("--adaround-iterations", default="2000", help="AdaRound iterations per layer")
    parser.add_argument("--config", default="default", help="quantsim config JSON path, or 'default'")
    parser.add_argument("--output", required=True, help="JSON results file")
    args = parser.parse_args(argv)
    try:
        args.param_bw = parse_bitwidth(args.param_bw, "--param-bw", MIN_PARAM_BW)
        args.output_bw = parse_bitwidth(args.output_bw, "--output-bw", MIN_OUTPUT_BW)
        args.allowed_accuracy_drop = parse_accuracy_drop(args.allowed_accuracy_drop)
        args.adaround_iterations = parse_iterations(args.adaround_iterations)
        args.config = config_path(args.config)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    torchvision_ops = load_torchvision()
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.model_preparer import prepare_model
    from aimet_torch.v2.adaround import AdaroundParameters
    from aimet_torch.v2.auto_quant import AutoQuant
    from aimet_torch.v2.quantsim import QuantizationSimModel

    graph, weights, data, (x_cal, x_test, x_eval), y_eval = load_scored_workdir(args.workdir, args.eval, "AutoQuant")
    model = build_torch(graph, weights)
    result = {
        "model": graph.get("name"),
        "versions": versions(),
        "torchvision_ops_loaded": torchvision_ops,
        "torch_threads": torch.get_num_threads(),
        "param_bw": args.param_bw,
        "output_bw": args.output_bw,
        "allowed_accuracy_drop": args.allowed_accuracy_drop,
        "quant_scheme": args.quant_scheme,
        "config": args.config or "default (aimet-torch's built-in default config)",
        "adaround_iterations": args.adaround_iterations,
        "calibration_images": int(len(x_cal)),
        "calibration_batch": BATCH,
        "eval_images": int(len(x_eval)),
        "test_images": int(len(x_test)),
        "fp32": check_fp32(model, graph, x_test, data["fp32_outputs"], data["y_test"]),
        "complete": False,
    }
    print(f"aimet_autoquant_peer: {graph.get('name')} W{args.param_bw}A{args.output_bw}", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    np.random.seed(0)
    result["fp32_eval_accuracy"] = top1(model, x_eval, y_eval)  # outside the counts
    result["target_accuracy"] = result["fp32_eval_accuracy"] - args.allowed_accuracy_drop

    # AutoQuant's QuantScheme Selection makes sims of the model it was given, not of its prepared
    # copy, so it gets a prepared model (torch_model's Add / Concatenate / permutes become aimet-torch
    # modules), as AIMET's own examples prepare a model before quantizing it.
    prepared = prepare_model(model)
    loader = calibration_loader(x_cal)
    dummy_input = torch.zeros(1, *x_cal.shape[1:])
    evaluate = CountingTop1(x_eval, y_eval)
    results_dir = os.path.join(os.path.abspath(args.workdir), "aimet_autoquant_results")
    auto_quant = AutoQuant(
        prepared, dummy_input, loader, evaluate, param_bw=args.param_bw, output_bw=args.output_bw,
        quant_scheme=getattr(QuantScheme, QUANT_SCHEMES[args.quant_scheme]), config_file=args.config,
        results_dir=results_dir,
    )
    num_batches = min(math.ceil(min(len(x_cal), ADAROUND_MAX_IMAGES) / BATCH), len(loader))
    auto_quant.set_adaround_params(
        AdaroundParameters(loader, num_batches, default_num_iterations=args.adaround_iterations)
    )
    log = _LogLines()
    logging.getLogger("AutoQuant").addHandler(log)
    start, wall_start = time.perf_counter(), time.time()
    final_model, accuracy, encoding_path = auto_quant.optimize(args.allowed_accuracy_drop)
    result["optimize_seconds"] = time.perf_counter() - start
    logging.getLogger("AutoQuant").removeHandler(log)
    result["eval_calls"], result["eval_seconds"] = evaluate.calls, evaluate.seconds
    result["autoquant_accuracy"] = accuracy
    result["encoding_path"] = encoding_path
    result.update(read_log(log.lines, wall_start))
    schemes = result["quant_scheme_scores"]  # AIMET keeps the first of equal best scores (max)
    result["chosen_quant_scheme"] = max(schemes, key=lambda s: s["eval_score"])["pair"] if schemes else None
    result["applied"] = applied_steps(encoding_path, result["sessions"])
    result["early_exit"] = final_model is None
    result["results_dir"] = results_dir
    if final_model is not None:
        sim = QuantizationSimModel(final_model, dummy_input, quant_scheme=QuantScheme.post_training_tf,
                                   default_output_bw=args.output_bw, default_param_bw=args.param_bw,
                                   config_file=args.config)
        sim.load_encodings(torch_encodings_path(encoding_path))  # every encoding: the scheme plays no part
        result["final_eval_accuracy"] = top1(sim.model, x_eval, y_eval)  # not counted
        result["test"] = score(predict(sim.model, x_test), data["fp32_outputs"], data["y_test"])
    result["complete"] = True
    write_json(args.output, result)
    print(json.dumps({k: v for k, v in result.items() if k != "test"}))


if __name__ == "__main__":
    main()
