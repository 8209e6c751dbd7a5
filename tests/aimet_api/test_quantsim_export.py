"""AIMET's Keras quantsim example (scripts/quantsim_export.py) runs on aimet_tf with only its
imports changed, and unchanged under the alias hook; both runs agree and the flow's outcome holds."""

import json
import os

import numpy as np
import pytest

from tests.aimet_api import harness


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("quantsim_export")
    return workdir, harness.run_script("quantsim_export", workdir)


def test_both_runs_agree(runs):
    _, results = runs
    assert results["imports_changed"] == results["unchanged"]


def test_quantized_model_keeps_the_float_accuracy(runs):
    _, results = runs
    result = results["imports_changed"]
    assert result["float_accuracy"] > 0.8
    assert abs(result["quantized_accuracy"] - result["float_accuracy"]) <= 0.02


@pytest.mark.parametrize("mode", ["imports_changed", "unchanged"])
def test_export_writes_the_files_with_the_quantizers_encodings(runs, mode):
    workdir, results = runs
    result = results[mode]
    folder = os.path.join(workdir, mode)
    assert sorted(os.listdir(folder)) == ["model.encodings", "model.keras", "model.manifest.json"]
    with open(os.path.join(folder, "model.encodings"), encoding="utf-8") as handle:
        encodings = json.load(handle)
    pairs = [
        (encodings["param_encodings"][result["kernel_name"]], result["kernel_encoding"]),
        (encodings["activation_encodings"][result["logits_output_name"]], result["logits_output_encoding"]),
    ]
    for written, reported in pairs:
        assert len(written) == len(reported) > 0
        for entry, record in zip(written, reported):
            assert entry["bitwidth"] == record["bw"] == 8
            assert entry["offset"] == record["offset"]
            np.testing.assert_allclose(
                [entry["min"], entry["max"], entry["scale"]], [record["min"], record["max"], record["delta"]], rtol=1e-6
            )
    kernel = result["kernel_encoding"]
    assert result["kernel_is_symmetric"] and all(r["offset"] == -128 for r in kernel)
    assert result["kernel_bitwidth"] == 8


def test_disable_changes_the_output_and_enable_restores_it_exactly(runs):
    result = runs[1]["imports_changed"]
    assert result["enabled_after_disable"] is False
    assert result["disable_changed_by"] > 0.0
    assert result["enable_restored_by"] == 0.0


def test_quant_wrappers_and_percentile_100_is_min_max(runs):
    result = runs[1]["imports_changed"]
    assert result["wrapper_names"][0] == "stem_conv" and "logits" in result["wrapper_names"]
    assert len(result["percentile_100_encodings"]) > 5
    assert result["percentile_100_encodings"] == result["tf_encodings"]
