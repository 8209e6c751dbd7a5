"""AutoQuant: step order, early stop, cache and resume (also after a kill), bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from aimet_tf.ptq.adaround import AdaroundParameters
from aimet_tf.ptq.auto_quant import STEPS, auto_quantize
from aimet_tf.testing.models import conv_bn_relu_model, random_images

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _setup(seed=0):
    model = conv_bn_relu_model(seed=seed)
    x = random_images(96, (16, 16, 3), seed=seed)
    reference = np.asarray(model(x))

    def evaluate(m):
        """Closeness to the float model: 1 - relative error (a smooth score, higher is better)."""
        out = np.asarray(m(x))
        return float(1.0 - np.linalg.norm(out - reference) / np.linalg.norm(reference))

    return model, x, evaluate


def _ada():
    return AdaroundParameters(None, num_batches=3, default_num_iterations=30, batch_size=32)


def test_flow_runs_every_step_in_order_and_keeps_only_improvements(tmp_path):
    model, x, evaluate = _setup()
    ada = AdaroundParameters(x, num_batches=3, default_num_iterations=30, batch_size=32)
    result = auto_quantize(model, evaluate, x, 0.0, param_bw=4, results_dir=tmp_path, adaround_params=ada)
    assert [s.name for s in result.steps] == list(STEPS)
    kept_scores = [s.score for s in result.steps[2:] if s.kept]
    assert kept_scores == sorted(kept_scores) and result.score == max(kept_scores)
    assert result.score == pytest.approx(evaluate(result.sim.model))
    assert os.path.isfile(result.encoding_path) and os.path.isfile(result.model_path)
    assert result.fp32_score == pytest.approx(1.0)


def test_stops_early_once_the_target_is_met(tmp_path):
    model, x, evaluate = _setup(1)
    result = auto_quantize(model, evaluate, x, 1.0, results_dir=tmp_path)
    assert result.target_met
    skipped = [s.name for s in result.steps if s.detail == "skipped: target already met"]
    assert skipped == ["batch_norm_fold", "quant_scheme", "cle", "bias_correction", "adaround"]


def test_cache_is_reused_and_refused_for_another_model(tmp_path):
    model, x, evaluate = _setup(2)
    ada = AdaroundParameters(x, num_batches=2, default_num_iterations=20, batch_size=32)
    first = auto_quantize(model, evaluate, x, 0.0, param_bw=4, results_dir=tmp_path, cache_id="c", adaround_params=ada)
    calls = []

    def counted(m):
        calls.append(1)
        return evaluate(m)

    again = auto_quantize(model, counted, x, 0.0, param_bw=4, results_dir=tmp_path, cache_id="c", adaround_params=ada)
    assert all(s.cached for s in again.steps if s.name not in ("prepare", "baseline") and s.score is not None)
    assert again.score == pytest.approx(first.score)
    assert len(calls) == 2  # FP32 and the baseline; every other step came from the cache
    other, _, _ = _setup(3)
    redone = auto_quantize(other, evaluate, x, 0.0, param_bw=4, results_dir=tmp_path, cache_id="c", adaround_params=ada)
    assert not any(s.cached for s in redone.steps)


def test_bad_input(tmp_path):
    model, x, evaluate = _setup(4)
    with pytest.raises(ValueError, match=r"allowed_accuracy_drop in \[0, 1\]"):
        auto_quantize(model, evaluate, x, 1.5, results_dir=tmp_path)
    with pytest.raises(TypeError, match="return a number \\(FP32 model\\). Received: 'high'"):
        auto_quantize(model, lambda m: "high", x, 0.0, results_dir=tmp_path)
    with pytest.raises(ValueError, match="finite number"):
        auto_quantize(model, lambda m: float("nan"), x, 0.0, results_dir=tmp_path)
    with pytest.raises(ValueError, match="Unknown AutoQuant steps"):
        auto_quantize(model, evaluate, x, 0.0, results_dir=tmp_path, steps=["magic"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    calls = []
    with pytest.raises(OSError, match="writable folder"):
        auto_quantize(model, lambda m: calls.append(1) or 1.0, x, 0.0, results_dir=blocker / "sub")
    assert not calls  # refused before any work


_KILL_SCRIPT = r"""
import sys
import numpy as np
from aimet_tf.ptq.adaround import AdaroundParameters
from aimet_tf.ptq.auto_quant import auto_quantize
from aimet_tf.testing.models import conv_bn_relu_model, random_images
model = conv_bn_relu_model(seed=5)
x = random_images(96, (16, 16, 3), seed=5)
ref = np.asarray(model(x))
def evaluate(m):
    return float(1.0 - np.linalg.norm(np.asarray(m(x)) - ref) / np.linalg.norm(ref))
ada = AdaroundParameters(x, num_batches=3, default_num_iterations=3000, batch_size=32)
r = auto_quantize(model, evaluate, x, 0.0, param_bw=4, results_dir=sys.argv[1], cache_id="kill", adaround_params=ada,
                  steps=["prepare", "baseline", "batch_norm_fold", "adaround"])
print("RESULT", r.score, [(s.name, s.cached) for s in r.steps])
"""


@pytest.mark.slow
def test_resume_after_a_kill_during_adaround(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen([sys.executable, str(script), str(killed_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    manifest = killed_dir / ".auto_quant" / "kill" / "adaround.adaround_checkpoint" / "manifest.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and json.loads(manifest.read_text() or "{}").get("layers"):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "AutoQuant finished before AdaRound could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run([sys.executable, str(script), str(killed_dir)], env=env, capture_output=True, text=True, timeout=900)
    clean = subprocess.run([sys.executable, str(script), str(clean_dir)], env=env, capture_output=True, text=True, timeout=900)
    resumed_line = [l for l in rerun.stdout.splitlines() if l.startswith("RESULT")][0]
    clean_line = [l for l in clean.stdout.splitlines() if l.startswith("RESULT")][0]
    assert "('batch_norm_fold', True)" in resumed_line  # the finished step came from the cache
    assert resumed_line.split()[1] == clean_line.split()[1]  # the same score as an uninterrupted run


def test_amp_is_the_last_resort_its_choice_is_cached_and_the_report_lists_every_step(tmp_path):
    model, x, evaluate = _setup(3)
    steps = [s for s in STEPS if s != "adaround"]
    kwargs = dict(param_bw=4, results_dir=tmp_path, cache_id="amp", steps=steps, amp_candidates=[(8, 8), (8, 4)], verbose=False)
    first = auto_quantize(model, evaluate, x, 0.0, **kwargs)
    amp = first.steps[-1]
    assert amp.name == "amp" and amp.score is not None and "mixed precision over ['W8A8', 'W4A8']" in amp.detail
    bits = sorted({q.bitwidth for _, q, _ in first.sim.param_quantizers() if q.enabled})
    # The score is 1 - relative error: only more bits help it, so AMP ends above the W4 steps and is kept.
    assert amp.kept and 8 in bits and first.score == pytest.approx(evaluate(first.sim.model))
    second = auto_quantize(model, evaluate, x, 0.0, **kwargs)
    assert second.steps[-1].cached and second.score == pytest.approx(first.score)
    assert sorted({q.bitwidth for _, q, _ in second.sim.param_quantizers() if q.enabled}) == bits
    page = open(first.report_path, encoding="utf-8").read()
    assert first.report_path == os.path.join(str(tmp_path), "auto_quant_report.html")
    for record in first.steps:
        assert f">{record.name}</text>" in page  # one box per step in the diagram
    assert "auto_quant.encodings" in page and "<script src=" not in page


def test_amp_candidates_are_checked_before_any_work(tmp_path):
    model, x, evaluate = _setup(4)
    calls = []
    with pytest.raises(ValueError, match="bitwidth in 2..32"):
        auto_quantize(model, lambda m: calls.append(1) or 1.0, x, 0.0, results_dir=tmp_path, amp_candidates=[(8, 1), (8, 8)])
    assert calls == []


@pytest.mark.slow
def test_the_report_with_quant_analyzer_links_opens_in_chromium(tmp_path):
    from aimet_tf.testing.browser import check_page

    model, x, evaluate = _setup(5)
    result = auto_quantize(model, evaluate, x, 1.0, results_dir=tmp_path, analyze=True, verbose=False)
    page = open(result.report_path, encoding="utf-8").read()
    assert 'href="quant_analyzer/index.html"' in page
    checked = check_page(result.report_path)
    assert checked.problems == [] and checked.drawn_canvases >= 1
