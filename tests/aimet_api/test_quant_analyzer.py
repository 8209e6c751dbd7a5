"""AIMET's QuantAnalyzer flow, run as AIMET user code with only its imports changed."""

import pytest

from tests.aimet_api import harness


@pytest.mark.slow
def test_aimet_quant_analyzer_script(tmp_path):
    runs = harness.run_script("quant_analyzer", str(tmp_path), run_unchanged=False)
    bindings = runs["unchanged_bindings"]
    assert bindings and all(unchanged is ours for unchanged, ours in bindings.values()), bindings
    a = runs["imports_changed"]
    assert a["returned"] is None  # AIMET's analyze returns None
    for name in ("per_layer_quant_enabled", "per_layer_quant_disabled", "per_layer_mse_loss", "model_sensitivity"):
        assert {f"{name}.json", f"{name}.html", f"{name}.png"} <= set(a["files"])
    assert {"activations_pdf", "weights_pdf", "min_max_ranges", "weight_ranges", "index.html"} <= set(a["files"])
    s = a["sensitivity"]
    assert s["fp32"] > 0.9 and s["all_quantized"] <= s["fp32"] + 0.01
    # W4 weights hurt more than A8 activations on this model.
    assert s["weights_quantized"] < s["activations_quantized"]
    assert set(a["enabled"]) >= {"stem_conv", "logits"} and all(v >= 0 for v in a["mse"].values())
