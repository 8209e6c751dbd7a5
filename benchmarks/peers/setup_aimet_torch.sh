#!/usr/bin/env bash
# Creates the aimet-torch peer environment (used by benchmarks/bench_autoquant.py for AIMET's own AutoQuant).
#
# AIMET's AutoQuant survives only in aimet-torch: no aimet-onnx release on the package index ships it;
# aimet-torch 2.28.0 has it (aimet_torch/v2/auto_quant.py, deprecated there), releases from 2.32 on do not, and 2.28.0
# loads on Python 3.11 (its _libpymo is abi3; 2.27 and older ship a cpython-310-only build). It
# conflicts with the TensorFlow/Keras 3 environment aimet_tf runs in, so it lives in its own virtual
# environment and the benchmark runs benchmarks/peers/aimet_autoquant_peer.py there as a subprocess
# (driven by benchmarks/peers/aimet_runner.py), on the same model handed over by
# benchmarks/peers/keras_to_peer.py and rebuilt as a torch module (benchmarks/peers/torch_model.py).
# torch 2.13.0 CPU installs from a wheel already cached on these machines; another torch version
# would download several GB. aimet-torch pulls in torchvision, whose only builds on the package
# index are CUDA ones: its compiled ops do not load beside CPU torch, and aimet_autoquant_peer.py
# imports it without them (see its docstring).
#
# Usage: bash benchmarks/peers/setup_aimet_torch.sh [VENV_DIR]   (default /tmp/aimet_torch_venv)
set -euo pipefail

VENV="${1:-${AIMET_TORCH_VENV:-/tmp/aimet_torch_venv}}"
PEER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHECK="import sys; sys.path.insert(0, '${PEER_DIR}'); from aimet_autoquant_peer import load_torchvision; \
load_torchvision(); import aimet_torch, onnx, torch; from aimet_torch.v2.auto_quant import AutoQuant; \
print('aimet-torch peer ready: aimet-torch', aimet_torch.__version__, 'torch', torch.__version__)"

if [[ -x "${VENV}/bin/python" ]] && "${VENV}/bin/python" -c "${CHECK}" >/dev/null 2>&1; then
  echo "aimet-torch peer environment already usable at ${VENV}"
  exit 0
fi

python3 -m venv "${VENV}"
"${VENV}/bin/pip" install --quiet "torch==2.13.0" "aimet-torch==2.28.0"
"${VENV}/bin/python" -c "${CHECK}"
