"""examples/export_tflite.py runs end to end on a small saved model."""

import importlib.util
import os

import keras
import numpy as np

from aimet_tf.testing import models

_EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "export_tflite.py")


def _load_example():
    spec = importlib.util.spec_from_file_location("export_tflite_example", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_exports_and_reports(tmp_path, capsys):
    model_path = tmp_path / "tiny.keras"
    models.conv_bn_relu_model().save(model_path)
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, models.random_images(32))
    example = _load_example()
    output = tmp_path / "tiny_w4.tflite"
    results = example.run(
        model_path=str(model_path),
        calibration=str(calibration),
        param_bw=4,
        quant_scheme="tf",
        output=str(output),
        compare_ptq=True,
    )
    printed = capsys.readouterr().out
    assert output.exists() and results["output"] == str(output)
    report = results["reports"]["default"]
    assert report.within_one_step >= 0.999 and report.top1_agreement >= 0.99
    assert "TFLite PTQ int8" in printed and "top-1 agreement" in printed
    assert results["TFLite PTQ int8"]["bytes"] > 0 and results["aimet_tf W4A8"]["latency_ms"] > 0
    keras.backend.clear_session()
