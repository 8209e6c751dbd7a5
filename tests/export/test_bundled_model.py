"""The bundled Fashion-MNIST CNN: exported W8A8 / W4A8 files reproduce the simulation on 10k images.

Issue 4's acceptance numbers: 100% top-1 agreement and >= 99.9% of output elements within one
step on the full test split, the int8 file no larger than TFLite's own PTQ of the same model,
4-bit weights shrinking the file by >= 0.45 byte each, accuracy >= TFLite's PTQ.
"""

import os

import numpy as np
import pytest

from aimet_tf import QuantizationSimModel, datasets
from aimet_tf.export.baselines import tflite_ptq_int8
from aimet_tf.export import (
    TFLITE_CONFIG,
    export_tflite,
    prepare_model_for_tflite,
    run_tflite,
    verify_tflite,
)


@pytest.mark.slow
def test_bundled_model_w8a8_and_w4a8(tmp_path):
    model = datasets.load_bundled_model()
    x_cal, _ = datasets.load_fashion_mnist("calibration")
    x_cal = x_cal[:1000]
    x_test, y_test = datasets.load_fashion_mnist("test")
    prepared = prepare_model_for_tflite(model)

    ptq = tflite_ptq_int8(model, x_cal)
    ptq_accuracy = float(np.mean(run_tflite(ptq, x_test)[0].argmax(-1) == y_test))

    sizes, four_bit = {}, 0
    for bw in (8, 4):
        sim = QuantizationSimModel(prepared, quant_scheme="tf_enhanced", config_file=TFLITE_CONFIG,
                                   default_param_bw=bw)
        sim.compute_encodings(x_cal)
        path = export_tflite(sim, str(tmp_path / f"w{bw}.tflite"))
        report = verify_tflite(sim, path, x_test, labels=y_test, batch_size=1000)
        assert report.top1_agreement == 1.0, report.summary()
        assert report.within_one_step >= 0.999, report.summary()
        assert report.accuracy_tflite == report.accuracy_sim
        sizes[bw] = os.path.getsize(path)
        if bw == 8:
            assert sizes[8] <= len(ptq)
            assert report.accuracy_tflite >= ptq_accuracy
        else:
            four_bit = sum(int(np.prod(v.shape)) for _, q, v in sim.param_quantizers() if q.bitwidth == 4)
    assert sizes[8] - sizes[4] >= 0.45 * four_bit
