#!/usr/bin/env bash
# Creates the AIMET peer environment (used by benchmarks/bench_adaround.py and the peer benchmarks).
#
# AIMET's own AdaRound (aimet-onnx 2.42, on PyTorch 2.13 CPU) conflicts with the TensorFlow/Keras 3
# environment aimet_tf runs in, so it lives in its own virtual environment and the benchmark runs
# benchmarks/peers/aimet_peer.py there as a subprocess (driven by benchmarks/peers/aimet_runner.py), on
# the same model handed over by benchmarks/peers/keras_to_peer.py and rebuilt in ONNX.
# torch 2.13.0 CPU installs from a wheel already cached on these machines; another torch version
# would download several GB.
#
# Usage: bash benchmarks/peers/setup_aimet.sh [VENV_DIR]   (default /tmp/aimet_venv)
set -euo pipefail

VENV="${1:-${AIMET_VENV:-/tmp/aimet_venv}}"

if [[ -x "${VENV}/bin/python" ]] && "${VENV}/bin/python" -c "import aimet_onnx, onnx, torch" >/dev/null 2>&1; then
  echo "AIMET peer environment already usable at ${VENV}"
  exit 0
fi

python3 -m venv "${VENV}"
"${VENV}/bin/pip" install --quiet "torch==2.13.0" "aimet-onnx==2.42.0"
"${VENV}/bin/python" -c "import aimet_onnx, onnx, onnxruntime, torch; \
print('AIMET peer ready: aimet-onnx', aimet_onnx.__version__, 'torch', torch.__version__, \
'onnxruntime', onnxruntime.__version__)"
