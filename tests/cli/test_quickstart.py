"""The README's main job, end to end on the bundled model and data."""

import json

import pytest

from aimet_tf import datasets
from aimet_tf.cli import quickstart


@pytest.mark.slow
def test_quickstart_table_and_encodings(tmp_path):
    rows = quickstart.run_quickstart(str(tmp_path), calibration_images=500)
    names = [r.name for r in rows]
    assert names[:3] == ["FP32", "W8A8", "W4A8"]
    fp32, w8, w4 = rows[:3]
    recorded = datasets.bundled_model_metadata()["fp32_test_accuracy"]
    assert fp32.accuracy == pytest.approx(recorded, abs=1e-4)
    assert fp32.accuracy - w8.accuracy < 0.01  # W8A8 within one point of FP32 on 10k images
    assert fp32.accuracy - w4.accuracy < 0.03
    assert w4.weight_bytes < w8.weight_bytes < fp32.weight_bytes / 3
    enc = json.loads((tmp_path / "fashion_mnist_w8a8.encodings").read_text())
    assert enc["version"] == "0.6.1" and enc["param_encodings"] and enc["activation_encodings"]
    table = quickstart.format_table(rows, 10000, 500)
    assert "W4A8" in table and "vs FP32" in table
