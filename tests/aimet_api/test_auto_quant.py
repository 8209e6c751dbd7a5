"""AIMET's AutoQuant v2 flow, run as AIMET user code with only its imports changed."""

import pytest

from tests.aimet_api import harness


@pytest.mark.slow
def test_aimet_auto_quant_script(tmp_path):
    runs = harness.run_script("auto_quant", str(tmp_path), run_unchanged=False)
    bindings = runs["unchanged_bindings"]
    assert bindings and all(unchanged is ours for unchanged, ours in bindings.values()), bindings
    a = runs["imports_changed"]
    assert a["optimized"] >= a["initial"] and a["optimized"] == pytest.approx(a["best_model_score"])
    assert a["optimized"] >= a["fp32"] - 0.015  # W4A8 on 1,000 test images
    assert a["encodings"] == "auto_quant.encodings"
    names = [name for name, _ in a["steps"]]
    assert names[:3] == ["prepare", "w16a16", "baseline"]
