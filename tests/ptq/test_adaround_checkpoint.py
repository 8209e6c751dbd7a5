"""AdaRound's output folder: writability checked up front, per-layer checkpoint, resume, kills."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from aimet_tf.ptq import AdaroundParameters, adaround_checkpoint, apply_adaround
from aimet_tf.testing import models

LAYERS = ("c1", "dw", "fc")  # the AdaRounded layers of models.conv_bn_relu_model


class _Recorder(keras.callbacks.Callback):
    """Records each layer's logs; raises after ``fail_after`` layers (an injected interruption)."""

    def __init__(self, fail_after=None):
        super().__init__()
        self.fail_after = fail_after
        self.began = 0
        self.layer_logs = []

    def on_train_begin(self, logs=None):
        self.began += 1

    def on_epoch_end(self, epoch, logs=None):
        self.layer_logs.append(dict(logs))
        if self.fail_after is not None and len(self.layer_logs) == self.fail_after:
            raise KeyboardInterrupt("injected")


def _run(path, callbacks=(), seed_data=1, iterations=120):
    params = AdaroundParameters(models.random_images(48, seed=seed_data), num_batches=3,
                                default_num_iterations=iterations, batch_size=16)
    return apply_adaround(models.conv_bn_relu_model(), params, path=str(path), filename_prefix="m",
                          verbose=0, callbacks=list(callbacks), steps_per_call=40)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    model = _run(folder)
    return {"encodings": _read(folder / "m.encodings"), "weights": model.get_weights()}


def test_unwritable_path_fails_before_optimising(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    recorder = _Recorder()
    with pytest.raises(OSError, match=r"Expected a writable folder for AdaRound's output .*Received: path='.*a_file/out'"):
        _run(blocker / "out", callbacks=[recorder])
    assert recorder.began == 0 and recorder.layer_logs == []


def test_complete_run_leaves_only_the_encodings(tmp_path, uninterrupted):
    _run(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["m.encodings"]
    assert _read(tmp_path / "m.encodings") == uninterrupted["encodings"]


@pytest.mark.parametrize("fail_after", [1, 2])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, uninterrupted, fail_after):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, callbacks=[_Recorder(fail_after=fail_after)])
    folder = tmp_path / f"m{adaround_checkpoint.CHECKPOINT_SUFFIX}"
    manifest = _read(folder / "manifest.json")
    assert [layer["name"] for layer in manifest["layers"]] == list(LAYERS[:fail_after])
    assert not (tmp_path / "m.encodings").exists()

    recorder = _Recorder()
    model = _run(tmp_path, callbacks=[recorder])
    resumed = [logs.get("resumed", 0.0) for logs in recorder.layer_logs]
    assert resumed == [1.0] * fail_after + [0.0] * (len(LAYERS) - fail_after)
    assert _read(tmp_path / "m.encodings") == uninterrupted["encodings"]
    for got, want in zip(model.get_weights(), uninterrupted["weights"]):
        np.testing.assert_array_equal(got, want)
    assert sorted(os.listdir(tmp_path)) == ["m.encodings"]


def test_checkpoint_of_another_run_is_not_reused(tmp_path, caplog):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, callbacks=[_Recorder(fail_after=2)], seed_data=7)
    recorder = _Recorder()
    with caplog.at_level("WARNING"):
        _run(tmp_path, callbacks=[recorder])
    assert "belongs to another run" in caplog.text
    assert all("resumed" not in logs for logs in recorder.layer_logs) and len(recorder.layer_logs) == 3


def test_corrupted_layer_file_is_not_reused(tmp_path, caplog):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, callbacks=[_Recorder(fail_after=1)])
    layer_file = tmp_path / f"m{adaround_checkpoint.CHECKPOINT_SUFFIX}" / "layer_0000.json"
    stored = _read(layer_file)
    stored["data"] = stored["data"][::-1]
    layer_file.write_text(json.dumps(stored))
    recorder = _Recorder()
    with caplog.at_level("WARNING"):
        _run(tmp_path, callbacks=[recorder])
    assert "starting afresh" in caplog.text and all("resumed" not in logs for logs in recorder.layer_logs)


_CHILD = textwrap.dedent(
    """
    import sys, keras
    from aimet_tf.ptq import AdaroundParameters, apply_adaround
    from aimet_tf.testing import models

    class Marks(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            print(f"LAYER {epoch}", flush=True)

    # Enough iterations that the run after the first layer outlasts the test's random wait before its
    # kill (~1 s on an idle machine; at 120 iterations it was 0.26 s and a kill could miss the run).
    params = AdaroundParameters(models.random_images(48, seed=1), num_batches=3,
                                default_num_iterations=3000, batch_size=16)
    apply_adaround(models.conv_bn_relu_model(), params, path=sys.argv[1], filename_prefix="m",
                   verbose=0, callbacks=[Marks()], steps_per_call=40)
    print("DONE", flush=True)
    """
)


def _child(script, folder):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, str(script), str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)


def _check_folder(folder, old, new):
    """Every file AdaRound left is complete: the encodings are the old or the new ones, the
    manifest parses and names only layer files that parse."""
    encodings = folder / "m.encodings"
    assert _read(encodings) in (old, new)
    checkpoint = folder / f"m{adaround_checkpoint.CHECKPOINT_SUFFIX}"
    assert sorted(os.listdir(folder)) in (["m.encodings"], ["m.adaround_checkpoint", "m.encodings"])
    if (checkpoint / "manifest.json").exists():
        for layer in _read(checkpoint / "manifest.json")["layers"]:
            assert _read(checkpoint / layer["file"])["name"] == layer["name"]


def test_sigkill_leaves_old_or_new_complete_output_and_resumes(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    reference = tmp_path / "reference"
    child = _child(script, reference)
    assert child.communicate(timeout=600)[0].strip().endswith("DONE")
    new = _read(reference / "m.encodings")

    folder = tmp_path / "out"
    folder.mkdir()
    old = {"version": "0.6.1", "activation_encodings": {}, "param_encodings": {}, "written_by": "an earlier run"}
    (folder / "m.encodings").write_text(json.dumps(old))
    rng = random.Random(0)
    interrupted = 0
    for mark in ("LAYER 0", "LAYER 1", "LAYER 2"):
        child = _child(script, folder)
        for line in child.stdout:
            if line.strip() == mark:
                break
        time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        child.stdout.close()
        _check_folder(folder, old, new)
        interrupted += (folder / f"m{adaround_checkpoint.CHECKPOINT_SUFFIX}" / "manifest.json").exists()
    # At least one kill landed before the run finished (a checkpoint was left to resume from).
    assert interrupted >= 1
    child = _child(script, folder)
    assert child.communicate(timeout=600)[0].strip().endswith("DONE")
    assert sorted(os.listdir(folder)) == ["m.encodings"]
    assert _read(folder / "m.encodings") == new


@pytest.mark.parametrize("prefix", ["../m", "a/m", "", ".m"])
def test_prefix_outside_the_folder_fails_before_optimising(tmp_path, prefix):
    recorder = _Recorder()
    params = AdaroundParameters(models.random_images(16, seed=1), num_batches=1, default_num_iterations=10,
                                batch_size=16)
    with pytest.raises(ValueError, match="filename_prefix"):
        apply_adaround(models.conv_bn_relu_model(), params, path=str(tmp_path / "out"),
                       filename_prefix=prefix, verbose=0, callbacks=[recorder])
    assert recorder.began == 0
    assert not (tmp_path / "m.encodings").exists() and not (tmp_path / "out").exists()
