#!/usr/bin/env bash
# Creates the TFMOT peer environment used by benchmarks/bench_qat.py.
#
# TensorFlow Model Optimization 0.8.1 only works on tf_keras (Keras 2), which conflicts with the
# Keras 3 environment aimet_tf runs in, so the peer lives in its own virtual environment and the
# benchmark runs benchmarks/peers/tfmot_qat.py there as a subprocess (TF_USE_LEGACY_KERAS=1).
#
# Usage: bash benchmarks/peers/setup_tfmot.sh [VENV_DIR]   (default /tmp/tfmot_venv)
set -euo pipefail

VENV="${1:-${TFMOT_VENV:-/tmp/tfmot_venv}}"

if [[ -x "${VENV}/bin/python" ]] && \
   TF_USE_LEGACY_KERAS=1 "${VENV}/bin/python" -c "import tensorflow_model_optimization, tf_keras" \
   >/dev/null 2>&1; then
  echo "TFMOT peer environment already usable at ${VENV}"
  exit 0
fi

python3 -m venv "${VENV}"
"${VENV}/bin/pip" install --quiet \
  "tensorflow==2.21.*" "tf-keras==2.21.*" "tensorflow-model-optimization==0.8.1"
TF_USE_LEGACY_KERAS=1 "${VENV}/bin/python" -c \
  "import tensorflow as tf, tf_keras, tensorflow_model_optimization as tfmot; \
print('TFMOT peer ready:', tf.__version__, tf_keras.__version__, tfmot.__version__)"
