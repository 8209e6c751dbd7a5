"""AIMET's AMP flow, run as AIMET user code with only its imports changed."""

import pytest

from tests.aimet_api import harness


@pytest.mark.slow
def test_aimet_mixed_precision_script(tmp_path):
    runs = harness.run_script("mixed_precision", str(tmp_path), run_unchanged=False)
    bindings = runs["unchanged_bindings"]
    assert bindings and all(unchanged is ours for unchanged, ours in bindings.values()), bindings
    a = runs["imports_changed"]
    pareto = a["pareto"]
    assert pareto[0][0] == 1.0 and pareto[0][2] is None  # the baseline point first
    costs = [p[0] for p in pareto]
    assert costs == sorted(costs, reverse=True) and len(pareto) >= 3
    assert all(p[3] == [8, 4] for p in pareto[1:])  # every later point lowered a group to W4A8
    # The chosen sim mixes 4- and 8-bit weights and stays within 1 point of FP32 (about 0.95 here).
    assert a["param_bitwidths"] == [4, 8]
    assert a["accuracy"] > 0.93
    assert {"pareto_front.png", "pareto_front.html", "mixed_precision_choice.json"} <= set(a["files"])
