"""AIMET's range-learning QAT + BN re-estimation flow: remove() restores exactly; fold to scale keeps the function."""

import numpy as np

from tests.aimet_api import harness


def test_aimet_qat_bn_reestimation_script(tmp_path):
    runs = harness.run_script("qat_bn_reestimation", str(tmp_path))
    a, b = runs["imports_changed"], runs["unchanged"]
    assert a["before"] == b["before"] and a["reestimated"] == b["reestimated"]
    assert a["before"], "the model's batch norms were found"
    assert a["restored"] == a["before"]  # handle.remove(): the old statistics, bit for bit
    assert a["reestimated"] != a["before"]
    assert "BatchNormalization" not in a["layers_after_fold"]
    np.testing.assert_allclose(a["outputs_after_fold"], a["outputs_before_fold"], rtol=0.05, atol=0.05)
    assert "qat_bn_reestimated.encodings" in a["files"]
