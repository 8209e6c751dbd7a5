"""MUL in the exported file: the sim rounds the integer product of the operand levels as the kernel does.

A tensor times a sigmoid gate (squeeze-excite, SiLU as sigmoid x input) whose output sits on the
tensor's own grid has the multiplier s * (1/256) / s = 2^-8: every product q_x * q_gate that is an
odd multiple of 128 falls exactly on a .5 boundary. XNNPACK rounds those ties to even, TFLite's fixed point away from zero;
fake-quantizing the float product of the dequantized operands rounded them by float noise
(EfficientNetV2B0: 2.5% of outputs one step off).
"""

import keras
import numpy as np
import pytest

from aimet_tf.export import export_tflite, prepare_sim_for_tflite

L = keras.layers


def _squeeze_excite() -> keras.Model:
    keras.utils.set_random_seed(5)
    inp = keras.Input((4, 4, 8), name="image")
    x = L.Conv2D(16, 1, name="conv")(inp)
    s = L.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    s = L.Conv2D(4, 1, activation="swish", name="reduce")(s)
    s = L.Conv2D(16, 1, activation="sigmoid", name="expand")(s)
    return keras.Model(inp, L.Multiply(name="excite")([x, s]))


def _silu() -> keras.Model:
    keras.utils.set_random_seed(6)
    inp = keras.Input((4, 4, 8), name="image")
    x = L.Conv2D(16, 1, name="conv")(inp)
    return keras.Model(inp, L.Activation("swish", name="excite")(x))


def _exported(export_model, build, tmp_name):
    exported = export_model(build(), name=tmp_name, samples=64)
    wrappers = {w.name: w for w in exported.sim.model.layers}
    # The Multiply's output on its feature-map operand's grid (what the min-range grids of
    # EfficientNetV2B0's last blocks give): M = 2^-8 exactly. The file is written again with it.
    wrappers["excite"].output_quantizers[0].set_encoding(wrappers["conv"].output_quantizers[0].get_encoding())
    exported.path = export_tflite(exported.sim, exported.path)
    return exported, wrappers["excite"]


# Both models on every path they reproduce (the squeeze-excite MEAN with its own output grid is not
# reproduced by the builtin kernels yet, which is not the MUL's doing).
CASES = [(_squeeze_excite, "default"), (_squeeze_excite, "reference"),
         (_silu, "default"), (_silu, "reference"), (_silu, "builtin")]


@pytest.mark.parametrize("build, kernels", CASES, ids=[f"{b.__name__[1:]}-{k}" for b, k in CASES])
def test_mul_of_a_sigmoid_gate_is_identical(export_model, build, kernels):
    exported, excite = _exported(export_model, build, f"{build.__name__}.tflite")
    report = exported.verify(kernels=kernels)
    assert "MUL" in exported.op_names()
    assert excite.requantizer.mode == ("mul" if kernels == "default" else "dsp_mul")
    assert report.exact_fraction == 1.0, report.summary()


def test_without_the_mul_requantizer_the_ties_differ(export_model):
    """The case is not vacuous: the float product, fake-quantized, misses the kernel's ties."""
    exported, excite = _exported(export_model, _squeeze_excite, "se.tflite")
    prepare_sim_for_tflite(exported.sim, "default")
    excite.requantizer.enabled = False
    report = exported.verify()
    assert report.kernels == "default" and report.exact_fraction < 0.99, report.summary()
    assert report.max_step_difference <= 1.0 + 1e-5


def test_mul_requantizer_survives_save_and_load(export_model, tmp_path):
    exported, _ = _exported(export_model, _squeeze_excite, "se.tflite")
    prepare_sim_for_tflite(exported.sim, "default")
    path = tmp_path / "sim.keras"
    exported.sim.model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(reloaded(exported.data)), np.asarray(exported.sim.model(exported.data)))
