"""Kernel paths: the simulation reproduces the QUANTIZE rounding and the requantization of the
LiteRT resolver (or DspTarget) it is prepared for."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from aimet_tf import QuantizationSimModel
from aimet_tf.export import (
    KERNELS,
    export_tflite,
    kernel_target_of,
    model_input_quantizers,
    prepare_model_for_tflite,
    prepare_sim_for_tflite,
    verify_tflite,
)
from aimet_tf.export.verify import output_steps
from aimet_tf.kernels import TFLITE_REFERENCE, reference
from aimet_tf.quantization import primitives
from aimet_tf.quantization.quantizers import Requantizer
from aimet_tf.testing.fuzz import input_distributions, random_model


def test_scale_is_the_converters_float64_step():
    # max - min in float32 is one ulp off the converter's double arithmetic for this range.
    lo, hi = np.float32(-4.2301364), np.float32(3.941718)
    expected = np.float32((np.float64(hi) - np.float64(lo)) / 255.0)
    assert np.float32((np.float64(hi - lo)) / 255.0) != expected
    assert np.float32(primitives.scale_tf(lo, hi, 8).numpy()) == expected


@pytest.mark.parametrize("rounding", ["divide_half_away", "reciprocal_half_even"])
def test_input_rounding_matches_the_kernel_formula(rounding):
    lo, hi = np.float32(-4.2301364), np.float32(3.941718)
    scale = np.float32(primitives.scale_tf(lo, hi, 8).numpy())
    zero_point = -128 + int(np.round(-lo / scale))
    rng = np.random.default_rng(0)
    k = rng.integers(-128, 128, 4000)
    x = np.concatenate([((k + 0.5) * scale + lo).astype(np.float32),       # ties and near-ties
                        rng.uniform(-6, 6, 4000).astype(np.float32)])
    y = primitives.quantize_input_like_kernel(tf.constant(x), lo, hi, 8, False, rounding).numpy()
    levels = np.round(y / scale).astype(np.int64) + zero_point
    if rounding == "divide_half_away":
        expected = reference.quantize(x, scale=float(scale), zero_point=zero_point)
    else:
        expected = np.clip(np.round(x * (np.float32(1) / scale)) + zero_point, -128, 127)
    assert np.array_equal(levels, expected)
    fake_quant = primitives.fake_quantize(tf.constant(x), lo, hi, 8).numpy()
    assert np.any(np.abs(fake_quant - y) > scale / 2), "ties should round differently from TF's fake-quant"


def test_unknown_rounding_and_kernels_are_refused():
    with pytest.raises(ValueError, match="Expected rounding in"):
        primitives.quantize_input_like_kernel(tf.zeros([2]), -1.0, 1.0, 8, False, "nearest")
    model = prepare_model_for_tflite(random_model(3))
    sim = QuantizationSimModel(model, config_file="tflite")
    with pytest.raises(ValueError, match="Expected kernels in"):
        prepare_sim_for_tflite(sim, "xnnpack")


def test_prepared_kernels_set_input_rounding_and_requantizer_modes():
    model = prepare_model_for_tflite(random_model(5))
    sim = QuantizationSimModel(model, quant_scheme="tf", config_file="tflite")
    cal, _ = input_distributions(5, model.input_shape[1:])
    sim.compute_encodings(cal)
    report = prepare_sim_for_tflite(sim, "reference")
    assert report.kernels == "reference" and kernel_target_of(sim) == "reference"
    assert [q.rounding for q in model_input_quantizers(sim)[0]] == ["divide_half_away"]
    modes = {w.requantizer.mode for w in sim.wrappers() if w.requantizer is not None and w.requantizer.enabled}
    assert modes and all(m.startswith("dsp_") or m == "average_pool" for m in modes)
    prepare_sim_for_tflite(sim)  # None keeps the kernels it was prepared for
    assert kernel_target_of(sim) == "reference"
    prepare_sim_for_tflite(sim, "default")
    assert [q.rounding for q in model_input_quantizers(sim)[0]] == ["reciprocal_half_even"]
    modes = {w.requantizer.mode for w in sim.wrappers() if w.requantizer is not None and w.requantizer.enabled}
    assert not any(m.startswith("dsp_") for m in modes)


def test_dsp_requantizer_round_trips_its_target():
    requantizer = Requantizer(4, mode="dsp_conv", target=TFLITE_REFERENCE.__class__(rounding="single"))
    config = requantizer.get_config()
    again = Requantizer.from_config(config)
    assert again.mode == "dsp_conv" and again.target.rounding == "single"


@pytest.mark.slow
def test_verify_all_kernels_names_the_runtime_and_restores_the_sim(tmp_path):
    model = prepare_model_for_tflite(random_model(11))
    cal, score = input_distributions(11, model.input_shape[1:])
    sim = QuantizationSimModel(model, quant_scheme="tf", config_file="tflite")
    sim.compute_encodings(cal)
    path = export_tflite(sim, tmp_path / "m.tflite", kernels="reference")
    reports = verify_tflite(sim, path, score, kernels="all")
    assert set(reports) == set(KERNELS)
    assert kernel_target_of(sim) == "reference"
    assert reports["default"].delegate == "XNNPACK" and reports["reference"].delegate == "none"
    assert reports["reference"].resolver == "BUILTIN_REF"
    assert "ai_edge_litert" in reports["default"].interpreter
    assert reports["default"].identical and reports["reference"].identical
    assert "delegate XNNPACK" in reports["default"].summary()
    # Without kernels=..., the file runs on the path the sim reproduces.
    assert verify_tflite(sim, path, score).kernels == "reference"


def _executor_models(count):
    """The first ``count`` fuzz seeds whose exported file the integer executor can run (no Flatten
    of a batch-dynamic shape), with their sims calibrated."""
    from aimet_tf.kernels import IntegerExecutor, UnsupportedOperatorError

    found, seed = [], 300
    while len(found) < count:
        model = prepare_model_for_tflite(random_model(seed))
        cal, score = input_distributions(seed, model.input_shape[1:])
        sim = QuantizationSimModel(model, quant_scheme="tf", config_file="tflite",
                                   default_param_bw=8 if seed % 2 else 4)
        sim.compute_encodings(cal)
        content = export_tflite(sim, f"/tmp/aimet_tf_executor_{os.getpid()}_{seed}.tflite")
        try:
            IntegerExecutor(content)
            found.append((seed, sim, content, score))
        except UnsupportedOperatorError:
            os.remove(content)
        seed += 1
    return found


@pytest.mark.slow
def test_simulation_equals_the_integer_executor_for_every_dsp_target():
    from aimet_tf.kernels import FIXED_POINT_DSP, TFLITE_SINGLE_ROUNDING, IntegerExecutor

    for seed, sim, path, score in _executor_models(4):
        try:
            for target in (TFLITE_REFERENCE, TFLITE_SINGLE_ROUNDING, FIXED_POINT_DSP):
                prepare_sim_for_tflite(sim, target)
                expected = np.asarray(sim.model(score, training=False), np.float64)
                got = IntegerExecutor(path, target=target, backend="numpy").run(score).astype(np.float64)
                step = output_steps(path)[0]
                assert np.max(np.abs(got - expected)) < 0.5 * step, f"seed {seed}, target {target.name}"
        finally:
            os.remove(path)
