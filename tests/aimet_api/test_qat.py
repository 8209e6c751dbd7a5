"""AIMET's QAT example flow on the bundled model: W4A8 fine-tuned through sim.model.fit, exported."""

import json
import os

import numpy as np
import pytest

from aimet_tf.datasets import load_fashion_mnist
from aimet_tf.quantization import QuantizationSimModel
from tests.aimet_api import harness


@pytest.mark.slow
def test_aimet_qat_script(tmp_path):
    runs = harness.run_script("qat", str(tmp_path))
    a, b = runs["imports_changed"], runs["unchanged"]
    assert a["accuracy_before"] == b["accuracy_before"]
    np.testing.assert_allclose(a["test_logits"], b["test_logits"], rtol=1e-4, atol=1e-4)
    assert a["files"] == ["model_after_qat.encodings", "model_after_qat.keras", "model_after_qat.manifest.json"]
    # Fine-tuning the W4 weights through the quantizers recovers accuracy on held-out test images.
    assert a["accuracy_after"] > a["accuracy_before"] + 0.005, (a["accuracy_before"], a["accuracy_after"])
    # The export reproduces the fine-tuned sim: its float model plus its encodings.
    import keras

    float_model = keras.models.load_model(os.path.join(a["workdir"], "model_after_qat.keras"))
    sim = QuantizationSimModel(float_model, quant_scheme="tf_enhanced", default_param_bw=4, config_file=None)
    sim.load_encodings_to_sim(os.path.join(a["workdir"], "model_after_qat.encodings"))
    x_test, _ = load_fashion_mnist("test")
    np.testing.assert_allclose(sim.model.predict(x_test[:50], verbose=0), a["test_logits"], rtol=1e-5, atol=1e-5)
    header = json.loads(open(os.path.join(a["workdir"], "model_after_qat.encodings")).read())
    assert header["quantizer_args"]["param_bitwidth"] == 4
