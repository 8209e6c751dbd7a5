"""The absl-flag example scripts run end to end on the bundled model and print their tables.

Each runs as a user would run it (a subprocess, small flag values), so flag parsing, imports and
the printed report are covered.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(script: str, *flags: str, timeout: int = 600) -> str:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=_ROOT)
    proc = subprocess.run(
        [sys.executable, os.path.join(_ROOT, "examples", script), *flags],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _accuracy_of(output: str, label_start: str) -> float:
    for line in output.splitlines():
        if line.startswith(label_start):
            return float(line[len(label_start):].split()[0].strip("|").strip())
    raise AssertionError(f"no row starting with {label_start!r} in:\n{output}")


@pytest.mark.slow
def test_bias_correction_example():
    out = _run("bias_correction.py", "--num_batches=4", "--param_bw=8")
    assert "Bias correction on 128 samples" in out
    fp32 = _accuracy_of(out, "FP32")
    corrected = _accuracy_of(out, "W8A8 (default, tf, CLE) + bias correction")
    assert fp32 > 90.0 and corrected > fp32 - 1.0


@pytest.mark.slow
def test_qat_example_folds_batch_norms_after_training(tmp_path):
    out = _run(
        "qat.py", "--train_split=calibration", "--max_train_images=1024", "--epochs=1", "--param_bw=8", "--output_bw=8",
        f"--output_dir={tmp_path}",
    )
    assert "batch norms folded into the grids" in out
    assert any(name.endswith(".encodings") for name in os.listdir(tmp_path))


@pytest.mark.slow
def test_cle_example():
    out = _run("cle.py", "--bias_correction_batches=2")
    assert "Equalized: 6 pairs, 1 triples" in out and "CLE + bias correction" in out


@pytest.mark.slow
def test_adaround_example(tmp_path):
    out = _run("adaround.py", "--num_iterations=50", "--num_batches=2", f"--output_dir={tmp_path}")
    nearest = _accuracy_of(out, "W4A8 (default, auto), nearest rounding")
    adarounded = _accuracy_of(out, "W4A8 (default, auto), AdaRound 50 it/layer")
    assert adarounded > nearest  # even 50 iterations per layer beat nearest rounding here
    assert (tmp_path / "adaround.encodings").exists()


@pytest.mark.slow
def test_compress_example(tmp_path):
    out = _run("compress.py", "--scheme=weight_svd", "--ratios=block5_pw:0.5,block6_pw:0.5", "--epochs=1", "--distill",
               "--eval_images=500", f"--output_dir={tmp_path}")
    assert "weight_svd can compress: block1_pw" in out
    fp32 = _accuracy_of(out, "FP32")
    tuned = _accuracy_of(out, "weight_svd + 1 epoch(s) distillation fine-tune")
    assert fp32 > 90.0 and tuned > fp32 - 5.0
    assert "sim == TFLite outputs" in out and os.path.isfile(tmp_path / "weight_svd_int8.tflite")


@pytest.mark.slow
def test_quant_analyzer_example(tmp_path):
    out = _run("quant_analyzer.py", "--param_bw=4", "--eval_images=200", "--calibration_images=128",
               "--mse_batches=2", f"--results_dir={tmp_path}")
    fp32, weights = _accuracy_of(out, "fp32"), _accuracy_of(out, "weights_quantized")
    assert fp32 > 85.0 and weights < fp32  # W4 weights cost accuracy on this model
    assert "most sensitive layers" in out
    for page in ("index.html", "model_sensitivity.html", "per_layer_mse_loss.html", "weight_ranges/index.html"):
        assert os.path.exists(os.path.join(tmp_path, page)), page


@pytest.mark.slow
def test_amp_example(tmp_path):
    out = _run("amp.py", "--calibration_images=500", "--phase1_images=200", "--phase2_images=500",
               "--allowed_accuracy_drop=0.01", f"--results_dir={tmp_path}")
    fp32, w8, w4, mixed = (_accuracy_of(out, label) for label in ("FP32", "uniform W8A8", "uniform W4A8", "AMP (mixed)"))
    assert fp32 > 90.0 and w4 < w8 and mixed > fp32 - 2.0
    assert "sim == TFLite outputs 100.00%" in out
    for name in ("pareto_front.png", "pareto_front.html", "mixed_precision_choice.json", "amp_mixed.tflite"):
        assert (tmp_path / name).exists(), name


@pytest.mark.slow
def test_autoquant_example_with_npz_data(tmp_path):
    from aimet_tf import datasets

    x, _ = datasets.load_fashion_mnist("calibration")
    xt, yt = datasets.load_fashion_mnist("test")
    np.savez(tmp_path / "cal.npz", x=x[:256])
    np.savez(tmp_path / "eval.npz", x=xt[:500], y=yt[:500])
    out = _run("autoquant.py", f"--calibration={tmp_path / 'cal.npz'}", f"--eval={tmp_path / 'eval.npz'}",
               "--adaround_iterations=20", "--allowed_accuracy_drop=0.02", "--analyze=false", "--amp=8:8,8:4",
               f"--results_dir={tmp_path / 'out'}")
    assert "on 500 eval samples" in out and "sim == TFLite outputs 100.00%" in out
    for name in ("auto_quant_report.html", "auto_quant.encodings", "auto_quant.tflite"):
        assert (tmp_path / "out" / name).exists(), name
    with pytest.raises(AssertionError):  # a missing data file is refused with the reason
        _run("autoquant.py", "--calibration=/nonexistent.npz", f"--results_dir={tmp_path / 'bad'}")
