"""AMP result under shifted and out-of-range inputs: does the mixed int4/int8 .tflite still match the sim?

The bundled model, tflite config, W8A8 + W4A8 candidates, drop 0.005 (selected on 1,000 held-out
calibration images); the exported file is compared with the sim on 2,000 test images as they are,
darker, brighter past the [0, 1] range, noisy, inverted and doubled.

    PYTHONPATH=. python benchmarks/amp_fidelity_shift.py
"""
import numpy as np
from aimet_tf import datasets, metrics
from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite
from aimet_tf.ptq import mixed_precision as amp
from aimet_tf.quantization import QuantizationSimModel
m = datasets.load_bundled_model()
x, y = datasets.load_fashion_mnist("calibration")
xt, yt = datasets.load_fashion_mnist("test")
sim = QuantizationSimModel(prepare_model_for_tflite(m), quant_scheme="tf_enhanced", config_file="tflite")
ev = lambda k, a=x[1000:], b=y[1000:]: metrics.top1_accuracy(k.predict(a, batch_size=500, verbose=0), b)
r = amp.choose_mixed_precision(sim, [(8, 8), (8, 4)], ev, None, 0.005, "/tmp/shift_amp", forward_pass=x[:1000], verbose=False)
path = export_tflite(sim, "/tmp/shift_amp/mixed.tflite")
rng = np.random.default_rng(0)
cases = {
    "test": xt[:2000],
    "darker 0.6x": xt[:2000] * 0.6,
    "brighter +0.3 (out of range up to 1.3)": xt[:2000] + 0.3,
    "gaussian noise 0.15": np.clip(xt[:2000] + rng.normal(0, 0.15, xt[:2000].shape), 0, 1).astype(np.float32),
    "inverted": 1.0 - xt[:2000],
    "x2 (out of range)": xt[:2000] * 2.0,
}
for name, data in cases.items():
    rep = verify_tflite(sim, path, data.astype(np.float32), labels=yt[:2000], batch_size=500)
    print(f"SHIFT {name:40s} sim acc {100 * rep.accuracy_sim:6.2f} tflite acc {100*rep.accuracy_tflite:6.2f} identical {100*rep.exact_fraction:.3f}% within1 {100*rep.within_one_step:.3f}%")
print("CHOICE", r.choice_by_group())
