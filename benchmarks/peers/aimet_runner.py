"""Runs the AIMET peers (``benchmarks/peers/aimet_peer.py`` and friends) on a Keras model, from OUR env.

The peers live in their own virtual environments because AIMET and its PyTorch conflict with
TensorFlow / Keras 3: aimet-onnx in ``$AIMET_VENV`` (default ``/tmp/aimet_venv``, made by
``benchmarks/peers/setup_aimet.sh`` when missing) and aimet-torch in ``$AIMET_TORCH_VENV``
(default ``/tmp/aimet_torch_venv``, made by ``benchmarks/peers/setup_aimet_torch.sh``).
:func:`run_aimet_peer` writes the model and data with
:func:`benchmarks.peers.keras_to_peer.export_for_peer`, runs the peer script there as a
subprocess and returns its parsed JSON; :func:`run_aimet_amp` does the same for aimet-onnx's
automatic mixed precision (``benchmarks/peers/aimet_amp_peer.py``) and
:func:`run_aimet_autoquant` for AIMET's own AutoQuant (``benchmarks/peers/aimet_autoquant_peer.py``).

AutoQuant runs on aimet-torch 2.28.0: no aimet-onnx release on the package index ships AutoQuant
(2.28.0 to 2.42.0 were checked: no ``aimet_onnx.auto_quant_v2``; ``aimet_onnx/common/auto_quant.py``
is a diagnostics helper; AIMET soft-deprecated it, qualcomm/aimet pull request #3925), nor does
aimet-torch from 2.32 on, and aimet-torch 2.27 and older ship a cpython-310-only ``_libpymo``.
aimet-torch 2.28.0 has ``aimet_torch/v2/auto_quant.py`` (marked deprecated, deletion planned in
2.31) and loads on Python 3.11, so the peer rebuilds the Keras model as a torch module and runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable

import keras
import numpy as np

from aimet_tf.files import atomic_write
from benchmarks.peers.keras_to_peer import export_for_peer

__all__ = ["PEER_DIR", "aimet_python", "aimet_torch_python", "run_aimet_amp", "run_aimet_autoquant", "run_aimet_peer"]

PEER_DIR = os.path.dirname(os.path.abspath(__file__))
_STDERR_TAIL = 3000


def aimet_python() -> str:
    """The aimet-onnx venv's python, creating the venv with setup_aimet.sh if it does not exist."""
    return _venv_python(os.environ.get("AIMET_VENV", "/tmp/aimet_venv"), "setup_aimet.sh")


def aimet_torch_python() -> str:
    """The aimet-torch venv's python, creating the venv with setup_aimet_torch.sh if it does not exist."""
    return _venv_python(os.environ.get("AIMET_TORCH_VENV", "/tmp/aimet_torch_venv"), "setup_aimet_torch.sh")


def _venv_python(venv: str, setup_script: str) -> str:
    """``venv``'s python, running ``setup_script`` (a file of PEER_DIR) on ``venv`` first if it has none.

    Raises:
        RuntimeError: if the setup script fails (the message carries the tail of its output).
    """
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        setup = subprocess.run(
            ["bash", os.path.join(PEER_DIR, setup_script), venv], capture_output=True, text=True, timeout=3600
        )
        if setup.returncode != 0:
            raise RuntimeError(
                f"{setup_script} {venv} exited with {setup.returncode}:\n"
                f"{(setup.stderr or setup.stdout)[-_STDERR_TAIL:]}"
            )
    return python


def run_aimet_peer(
    folded_model: keras.Model,
    x_cal: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray | None,
    configs: list[dict],
    workdir: str | None = None,
    timeout: float = 4 * 3600,
) -> dict:
    """Measures aimet-onnx PTQ on ``folded_model``.

    Args:
        folded_model: a Keras model with its batch norms folded.
        x_cal: calibration inputs (Keras layout); the peer uses them in batches of 32.
        x_test: evaluation inputs.
        y_test: labels of ``x_test``, or None to score top-1 agreement with the FP32 model only.
        configs: runs, each ``{"param_bw", "act_bw", "quant_scheme" ("min_max" | "tf_enhanced"),
            "adaround_iterations" (0 = nearest rounding)}``.
        workdir: folder for the exported files and the result; a new temporary folder if None.
        timeout: seconds the peer may take.

    Returns:
        The peer's result (see ``aimet_peer.py``): ``fp32`` (reproduction error), ``runs`` (one
        entry per config with ``agreement``, ``differ_fraction``, ``accuracy`` when labels were
        given, ``compute_encodings_seconds``, ``adaround_seconds``), ``versions``; plus
        ``load_before`` (1-minute load average when the peer started) and ``workdir``.

    Raises:
        RuntimeError: if the venv cannot be made or the peer fails (the message carries the tail
            of its stderr).
    """
    workdir = workdir or tempfile.mkdtemp(prefix="aimet_peer_")
    os.makedirs(workdir, exist_ok=True)
    export_for_peer(folded_model, workdir, x_cal, x_test, y_test)
    output = os.path.join(workdir, "aimet_peer.json")
    return _run_peer_script(
        "aimet_peer.py", ["--workdir", workdir, "--configs", json.dumps(configs), "--output", output],
        output, folded_model.name, timeout,
    ) | {"workdir": workdir}


def _run_peer_script(script: str, args: list[str], output: str, model_name: str, timeout: float,
                     python: Callable[[], str] = aimet_python) -> dict:
    """Runs ``script`` (a file of PEER_DIR) with a peer venv's python and returns the JSON it wrote.

    Args:
        script: the script's file name.
        args: its command-line arguments.
        output: the JSON file the script writes (removed first, so a stale one is never read).
        model_name: for error messages.
        timeout: seconds the script may take.
        python: returns the venv's python (making the venv if needed): :func:`aimet_python`
            (aimet-onnx) or :func:`aimet_torch_python`.

    Returns:
        The script's JSON result plus ``load_before`` (1-minute load average when it started).

    Raises:
        RuntimeError: if the venv cannot be made, the script fails, or its result is incomplete (the
            message carries the tail of its stderr).
    """
    interpreter = python()
    if os.path.exists(output):
        os.remove(output)
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [interpreter, os.path.join(PEER_DIR, script), *args], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0 or not os.path.exists(output):
        raise RuntimeError(
            f"{script} on {model_name!r} exited with {proc.returncode}; stderr tail:\n{proc.stderr[-_STDERR_TAIL:]}"
        )
    with open(output, encoding="utf-8") as f:
        result = json.load(f)
    if not result.get("complete"):
        raise RuntimeError(
            f"{script} left an incomplete result in {output}; stderr tail:\n{proc.stderr[-_STDERR_TAIL:]}"
        )
    result["load_before"] = load
    return result


def run_aimet_amp(
    folded_model: keras.Model,
    x_cal: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    candidates: list[list[int]],
    allowed_accuracy_drop: float,
    quant_scheme: str = "min_max",
    workdir: str | None = None,
    timeout: float = 4 * 3600,
) -> dict:
    """Measures aimet-onnx's own automatic mixed precision on ``folded_model`` (``aimet_amp_peer.py``).

    Args:
        folded_model: a Keras model with its batch norms folded.
        x_cal: calibration inputs (Keras layout); the peer uses them in batches of 32, for the
            first encodings and as AMP's forward pass.
        x_eval: the inputs both AMP phases score top-1 accuracy on.
        y_eval: labels of ``x_eval``.
        x_test: inputs the final mixed-precision sim is scored on.
        y_test: labels of ``x_test``.
        candidates: ``[act_bw, param_bw]`` pairs, e.g. ``[[8, 8], [8, 4]]``; the pair of the largest
            activation and weight bitwidths must be one of them (the sim starts there).
        allowed_accuracy_drop: absolute drop of eval accuracy AIMET may spend, a fraction in [0, 1).
        quant_scheme: "min_max" or "tf_enhanced" (weights per channel: aimet-onnx's "default" config).
        workdir: folder for the exported files, AIMET's results_dir (``aimet_amp_results``) and the
            result; a new temporary folder if None.
        timeout: seconds the peer may take.

    Returns:
        The peer's result (see ``aimet_amp_peer.py``): ``amp_seconds``, ``eval_calls``
        (``{"phase1", "phase2"}``), ``pareto``, ``chosen``, ``weights``, ``test``, ``versions``, ...;
        plus ``load_before`` and ``workdir``.

    Raises:
        ValueError: if ``x_eval`` and ``y_eval`` differ in length (the peer checks everything else
            and stops with a message naming the bad input, raised here as RuntimeError).
        RuntimeError: if the venv cannot be made or the peer fails (the message carries the tail
            of its stderr).

    Example (the bundled-model measurement of issue 16; a few minutes on 2 cores):
        python -c "
        from aimet_tf import datasets
        from aimet_tf.ptq.batch_norm_fold import fold_all_batch_norms
        from aimet_tf.quantization.encodings_io import write_json_atomic
        from benchmarks.peers.aimet_runner import run_aimet_amp
        _, folded = fold_all_batch_norms(datasets.load_bundled_model())
        x, y = datasets.load_fashion_mnist('calibration')
        x_test, y_test = datasets.load_fashion_mnist('test')
        r = run_aimet_amp(folded, x[:1000], x[1000:], y[1000:], x_test, y_test, [[8, 8], [8, 4]], 0.003)
        write_json_atomic(r, '/tmp/aimet_amp_bundled.json')"
    """
    workdir, eval_path = _export_with_eval_set(folded_model, x_cal, x_eval, y_eval, x_test, y_test, workdir, "aimet_amp_")
    output = os.path.join(workdir, "aimet_amp.json")
    return _run_peer_script(
        "aimet_amp_peer.py",
        ["--workdir", workdir, "--eval", eval_path, "--candidates", json.dumps(candidates),
         "--allowed-accuracy-drop", repr(float(allowed_accuracy_drop)), "--quant-scheme", quant_scheme,
         "--output", output],
        output, folded_model.name, timeout,
    ) | {"workdir": workdir}


def run_aimet_autoquant(
    folded_model: keras.Model,
    x_cal: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    param_bw: int,
    output_bw: int,
    allowed_accuracy_drop: float,
    quant_scheme: str = "tf_enhanced",
    adaround_iterations: int = 2000,
    workdir: str | None = None,
    timeout: float = 4 * 3600,
    config_file: str | None = None,
) -> dict:
    """Measures AIMET's own AutoQuant (aimet-torch 2.28.0) on ``folded_model`` (``aimet_autoquant_peer.py``).

    graph.json cannot carry BatchNormalization, so the peer gets the BN-folded model: AutoQuant's
    own batch-norm folding step then finds nothing to fold (it still runs and is scored).

    Args:
        folded_model: a Keras model with its batch norms folded
            (``aimet_tf.ptq.batch_norm_fold.fold_all_batch_norms``).
        x_cal: calibration inputs (Keras layout); AutoQuant's data loader yields them in batches of
            32, for encodings and for AdaRound (every batch, at most 2,000 images, AIMET's default).
        x_eval: the inputs AutoQuant's eval callback scores top-1 accuracy on.
        y_eval: labels of ``x_eval``.
        x_test: inputs the final sim is scored on.
        y_test: labels of ``x_test``.
        param_bw: weight bitwidth (2..32).
        output_bw: activation bitwidth (4..32).
        allowed_accuracy_drop: absolute drop of eval accuracy AIMET may spend, a fraction in [0, 1).
        quant_scheme: "min_max", "tf_enhanced" or "percentile": AutoQuant's ``quant_scheme``
            argument (its QuantScheme Selection step then picks among its own five pairs).
        adaround_iterations: AdaRound iterations per layer (``set_adaround_params``).
        workdir: folder for the exported files, AIMET's results_dir (``aimet_autoquant_results``)
            and the result; a new temporary folder if None.
        timeout: seconds the peer may take.
        config_file: a quantsim config JSON for aimet-torch, or None for aimet-torch's default
            (``default_config_per_channel.json``: per-channel Conv / Gemm weights). aimet_tf's
            "tflite" preset is refused by aimet-torch 2.28.0 ("Strict symmetric is not supported in
            quantsim v2").

    Returns:
        The peer's result (see ``aimet_autoquant_peer.py``): ``optimize_seconds``, ``eval_calls``,
        ``autoquant_accuracy``, ``fp32_eval_accuracy``, ``sessions``, ``applied``, ``test``,
        ``versions``, ``torch_threads``, ...; plus ``load_before`` and ``workdir``.

    Raises:
        ValueError: if ``x_eval`` and ``y_eval`` differ in length (the peer checks everything else
            and stops with a message naming the bad input, raised here as RuntimeError).
        RuntimeError: if the venv cannot be made or the peer fails (the message carries the tail
            of its stderr).

    Example (the bundled-model measurement of issue 18, the data of benchmarks/bench_autoquant.py):
        python -c "
        from aimet_tf import datasets
        from aimet_tf.export import prepare_model_for_tflite
        from aimet_tf.ptq.batch_norm_fold import fold_all_batch_norms
        from aimet_tf.quantization.encodings_io import write_json_atomic
        from benchmarks.peers.aimet_runner import run_aimet_autoquant
        _, folded = fold_all_batch_norms(prepare_model_for_tflite(datasets.load_bundled_model()))
        x_cal = datasets.load_fashion_mnist('calibration')[0][:1000]
        x, y = datasets.load_fashion_mnist('test')
        for bw, drop in ((4, 0.005), (8, 0.001)):
            r = run_aimet_autoquant(folded, x_cal, x[0::2][:2000], y[0::2][:2000], x[1::2], y[1::2], bw, 8, drop)
            write_json_atomic(r, f'/tmp/aimet_torch_aq_w{bw}.json')"
    """
    workdir, eval_path = _export_with_eval_set(folded_model, x_cal, x_eval, y_eval, x_test, y_test, workdir,
                                               "aimet_autoquant_")
    output = os.path.join(workdir, "aimet_autoquant.json")
    return _run_peer_script(
        "aimet_autoquant_peer.py",
        ["--workdir", workdir, "--eval", eval_path, "--param-bw", str(int(param_bw)), "--output-bw", str(int(output_bw)),
         "--allowed-accuracy-drop", repr(float(allowed_accuracy_drop)), "--quant-scheme", quant_scheme,
         "--adaround-iterations", str(int(adaround_iterations)), "--config", config_file or "default",
         "--output", output],
        output, folded_model.name, timeout, python=aimet_torch_python,
    ) | {"workdir": workdir}


def _export_with_eval_set(folded_model: keras.Model, x_cal: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray,
                          x_test: np.ndarray, y_test: np.ndarray, workdir: str | None, prefix: str) -> tuple[str, str]:
    """Exports the model and data for a peer (:func:`export_for_peer`) plus ``eval.npz`` (x_eval, y_eval).

    Args:
        workdir: the folder, made if missing; a new temporary one named ``prefix...`` if None.

    Returns:
        (workdir, path of eval.npz).

    Raises:
        ValueError: if ``x_eval`` and ``y_eval`` differ in length.
    """
    if len(x_eval) != len(y_eval):
        raise ValueError(f"x_eval has {len(x_eval)} images but y_eval {len(y_eval)} labels.")
    workdir = workdir or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(workdir, exist_ok=True)
    export_for_peer(folded_model, workdir, x_cal, x_test, y_test)
    eval_path = os.path.join(workdir, "eval.npz")
    arrays = {"x_eval": np.asarray(x_eval, np.float32), "y_eval": np.asarray(y_eval).astype(np.int64).reshape(-1)}
    atomic_write(eval_path, lambda path: _savez(path, arrays))
    return workdir, eval_path


def _savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a path without it
        np.savez(f, **arrays)
