"""AIMET's AdaRound example shape: Adaround.apply_adaround, then frozen parameter encodings."""

import inspect
import os

import numpy as np

from aimet_tf.common.defs import QuantScheme
from aimet_tf.keras.adaround_weight import Adaround
from aimet_tf.ptq import AdaroundParameters, apply_adaround
from aimet_tf.quantization import encodings_io
from tests.aimet_api import harness


def test_signatures_are_aimets():
    sig = inspect.signature(Adaround.apply_adaround)
    assert list(sig.parameters) == [
        "model", "params", "path", "filename_prefix", "default_param_bw", "default_quant_scheme", "config_file"
    ]
    assert sig.parameters["default_param_bw"].default == 4
    assert sig.parameters["default_quant_scheme"].default is QuantScheme.post_training_tf_enhanced
    assert sig.parameters["config_file"].default is None
    native = list(inspect.signature(apply_adaround).parameters)
    assert native[:7] == list(sig.parameters)
    params = list(inspect.signature(AdaroundParameters).parameters)
    assert params[:6] == ["data_set", "num_batches", "default_num_iterations", "default_reg_param",
                          "default_beta_range", "default_warm_start"]
    p = AdaroundParameters(None, 1)
    assert (p.default_num_iterations, p.default_reg_param, p.default_beta_range, p.default_warm_start) == (
        10000, 0.01, (20.0, 2.0), 0.2)


def test_aimet_adaround_script(tmp_path):
    runs = harness.run_script("adaround", str(tmp_path))
    a, b = runs["imports_changed"], runs["unchanged"]
    assert a["kernels"] == b["kernels"] and a["outputs"] == b["outputs"]
    assert "dummy.encodings" in a["files"] and a["model_type"] == "Functional"
    # The frozen 4-bit encodings are the file's, and each AdaRounded kernel sits on its grid.
    _, params = encodings_io.from_dict(encodings_io.read_json(os.path.join(a["workdir"], "dummy.encodings")))
    assert a["kernels"]
    for layer, enc in a["kernels"].items():
        np.testing.assert_allclose(enc["delta"], float(params[f"{layer}/kernel:0"].scale), rtol=1e-6)
        levels = np.asarray(enc["kernel"]) / enc["delta"] - enc["offset"]
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
        assert 0 <= np.round(levels).min() and np.round(levels).max() <= 15
