"""Runs the AIMET peer (``benchmarks/peers/aimet_peer.py``) on a Keras model, from OUR env.

The peer lives in its own virtual environment (``$AIMET_VENV``, default ``/tmp/aimet_venv``,
made by ``benchmarks/peers/setup_aimet.sh`` when missing) because aimet-onnx and its PyTorch
conflict with TensorFlow / Keras 3. :func:`run_aimet_peer` writes the model and data with
:func:`benchmarks.peers.keras_to_peer.export_for_peer`, runs the peer script there as a
subprocess and returns its parsed JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

import keras
import numpy as np

from benchmarks.peers.keras_to_peer import export_for_peer

__all__ = ["PEER_DIR", "aimet_python", "run_aimet_peer"]

PEER_DIR = os.path.dirname(os.path.abspath(__file__))
_STDERR_TAIL = 3000


def aimet_python() -> str:
    """The AIMET venv's python, creating the venv with setup_aimet.sh if it does not exist."""
    venv = os.environ.get("AIMET_VENV", "/tmp/aimet_venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        setup = subprocess.run(
            ["bash", os.path.join(PEER_DIR, "setup_aimet.sh"), venv], capture_output=True, text=True, timeout=3600
        )
        if setup.returncode != 0:
            raise RuntimeError(
                f"setup_aimet.sh {venv} exited with {setup.returncode}:\n"
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
    python = aimet_python()
    workdir = workdir or tempfile.mkdtemp(prefix="aimet_peer_")
    os.makedirs(workdir, exist_ok=True)
    export_for_peer(folded_model, workdir, x_cal, x_test, y_test)
    output = os.path.join(workdir, "aimet_peer.json")
    if os.path.exists(output):
        os.remove(output)
    load = os.getloadavg()[0]
    proc = subprocess.run(
        [python, os.path.join(PEER_DIR, "aimet_peer.py"), "--workdir", workdir, "--configs", json.dumps(configs),
         "--output", output],
        capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0 or not os.path.exists(output):
        raise RuntimeError(
            f"aimet_peer.py on {folded_model.name!r} exited with {proc.returncode}; stderr tail:\n"
            f"{proc.stderr[-_STDERR_TAIL:]}"
        )
    with open(output, encoding="utf-8") as f:
        result = json.load(f)
    if not result.get("complete"):
        raise RuntimeError(
            f"aimet_peer.py left an incomplete result in {output}; stderr tail:\n{proc.stderr[-_STDERR_TAIL:]}"
        )
    result["load_before"] = load
    result["workdir"] = workdir
    return result
