"""AIMET's ModelCompressor flow, run as AIMET user code with only its imports changed."""

import pytest

from aimet_tf.keras.defs import ChannelPruningParameters, SpatialSvdParameters
from tests.aimet_api import harness


@pytest.mark.slow
def test_aimet_compression_script(tmp_path):
    runs = harness.run_script("compress", str(tmp_path), run_unchanged=False)
    bindings = runs["unchanged_bindings"]
    assert bindings and all(unchanged is ours for unchanged, ours in bindings.values()), bindings
    a = runs["imports_changed"]
    assert a["auto_mac_ratio"] <= 0.6 and a["auto_mac_ratio"] > 0.3
    assert "logits" not in a["auto_ratios"] and a["auto_ratios"]  # modules_to_ignore honoured
    compressed = [name for name, ratio in a["auto_ratios"].items() if ratio < 1.0]
    assert all(f"{name}_a" in a["auto_layers"] and name not in a["auto_layers"] for name in compressed)
    assert a["baseline_accuracy"] > 0.9 and 0.5 < a["auto_accuracy"] <= a["baseline_accuracy"] + 0.01
    assert a["manual_layers"][:2] == ["stem_conv_a", "stem_conv_b"] and a["manual_mac_ratio"] < 1.0
    assert a["scores_file"] == ["greedy_selection_eval_scores_dict.json"]  # AIMET's default place, under the run folder


def test_parameter_classes_check_their_mode():
    with pytest.raises(TypeError, match="Expected params as SpatialSvdParameters.ManualModeParams for mode manual"):
        SpatialSvdParameters(None, None, SpatialSvdParameters.Mode.manual, SpatialSvdParameters.AutoModeParams(None))
    with pytest.raises(ValueError, match="allow_custom_downsample_ops=True is not supported"):
        ChannelPruningParameters(None, None, [], 8, 100, True, ChannelPruningParameters.Mode.manual,
                                 ChannelPruningParameters.ManualModeParams([]))
