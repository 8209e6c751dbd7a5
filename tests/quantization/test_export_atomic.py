"""sim.export writes its files as one unit: SIGKILL at any point leaves the old or the new export.

A child process exports two different calibrated sims (variants A and B: different weights, so
different encodings and .keras files) into one folder, over and over, and is SIGKILLed at a
random moment, or at a chosen rename. Afterwards the folder must hold exactly one complete
export (or nothing, if the first export never committed): the encodings of one variant and the
.keras file of the same variant, matching the manifest, with no temporary file left over.
"""

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from aimet_tf import QuantizationSimModel, files
from aimet_tf.testing import models

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHILD = r"""
import json, os, signal, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
from aimet_tf import QuantizationSimModel
from aimet_tf.testing import models

out, refs, kill_at, prior = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
data = models.random_images(32, shape=(10,), seed=1)
sims = {}
for variant, factor in (("A", 1.0), ("B", 2.0)):
    model = models.dense_model(seed=0)
    for layer in model.layers:
        layer.set_weights([w * factor for w in layer.get_weights()])
    sim = QuantizationSimModel(model, quant_scheme="tf")
    sim.compute_encodings(data)
    sim.export(os.path.join(refs, variant), "model")
    sims[variant] = sim
if kill_at:
    # Die (SIGKILL, no clean-up) just before the kill_at-th rename of the export of B, made
    # over an export of A (prior) or into an empty folder.
    if prior:
        sims["A"].export(out, "model")
    count = [0]
    def dying(real):
        def rename(*args, **kwargs):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return rename
    os.rename, os.replace = dying(os.rename), dying(os.replace)
print("ready", flush=True)
i = 0
while True:
    sims["AB"[i % 2] if not kill_at else "B"].export(out, "model")
    i += 1
"""


def _run_child(tmp_path, kill_at: int = 0, prior: bool = True, delay: float | None = None) -> tuple[str, str]:
    out, refs = str(tmp_path / "out"), str(tmp_path / "refs")
    env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, out, refs, str(kill_at), str(int(prior))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "ready", child.stderr.read()[-3000:]
        if delay is not None:
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=120) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return out, refs


def _variant_of(out: str, refs: str) -> str | None:
    """Which variant the folder holds after recovery (None: nothing); asserts it is complete."""
    files.recover_bundle(out, "model")
    names = sorted(os.listdir(out)) if os.path.isdir(out) else []
    if not names:
        return None
    assert names == ["model.encodings", "model.keras", "model.manifest.json"]
    assert files.verify_bundle(out, "model")
    with open(os.path.join(out, "model.encodings")) as handle:
        encodings = json.load(handle)
    matches = []
    for variant in ("A", "B"):
        with open(os.path.join(refs, variant, "model.encodings")) as handle:
            if json.load(handle) == encodings:
                matches.append(variant)
    assert len(matches) == 1, "the encodings are neither variant's"
    variant = matches[0]
    saved = keras.models.load_model(os.path.join(out, "model.keras"), compile=False)
    reference = keras.models.load_model(os.path.join(refs, variant, "model.keras"), compile=False)
    for got, want in zip(saved.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)  # the .keras file is of the same variant
    return variant


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_random_moment_leaves_old_or_new_export(tmp_path, seed):
    # One export takes ~0.1 s here: delays up to 0.6 s land in the first export or a later one.
    delay = random.Random(seed).uniform(0.0, 0.6)
    out, refs = _run_child(tmp_path, delay=delay)
    _variant_of(out, refs)  # asserts one complete variant, or nothing at all


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_at, prior, expected", [(1, True, "A"), (2, True, "B"), (1, False, None), (2, False, "B")]
)
def test_sigkill_at_commit_or_mid_move_leaves_old_or_new_export(tmp_path, kill_at, prior, expected):
    """Rename 1 is the commit point (killed before it: the old export A stays, or nothing on a
    first export); renames 2..4 move the new files into place (killed there, e.g. with the new
    .encodings beside the old .keras: recovery completes the new export B)."""
    out, refs = _run_child(tmp_path, kill_at=kill_at, prior=prior)
    leftovers = [n for n in os.listdir(out) if n.startswith(".")]
    assert leftovers  # the kill really left an unfinished export behind
    assert _variant_of(out, refs) == expected


def _calibrated_sim() -> QuantizationSimModel:
    sim = QuantizationSimModel(models.dense_model(), quant_scheme="tf")
    sim.compute_encodings(models.random_images(32, shape=(10,)))
    return sim


@pytest.fixture(scope="module")
def sim():
    return _calibrated_sim()


@pytest.mark.parametrize("prefix", ["../escape", "sub/model", "", ".hidden", ".."])
def test_export_rejects_prefix_outside_target_or_hidden(sim, tmp_path, prefix):
    target = tmp_path / "target"
    with pytest.raises(ValueError, match=r"Expected filename_prefix to be a plain file name"):
        sim.export(target, prefix)
    assert not target.exists() and sorted(os.listdir(tmp_path)) == []


def test_export_files_get_umask_mode_and_no_leftovers(sim, tmp_path):
    old = os.umask(0o022)
    try:
        paths = sim.export(tmp_path, "model")
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path)) == ["model.encodings", "model.keras", "model.manifest.json"]
    for key in ("encodings", "model", "manifest"):
        assert stat.S_IMODE(os.stat(paths[key]).st_mode) == 0o644, key


def test_load_encodings_refuses_a_mixed_pair(sim, tmp_path):
    sim.export(tmp_path / "a", "model")
    other = QuantizationSimModel(models.dense_model(seed=3), quant_scheme="tf")
    other.compute_encodings(models.random_images(32, shape=(10,), seed=5))
    other.export(tmp_path / "b", "model")
    os.replace(tmp_path / "b" / "model.encodings", tmp_path / "a" / "model.encodings")
    with pytest.raises(files.BundleError, match=r"does not match its export manifest\. Expected sha256="):
        sim.load_encodings_to_sim(tmp_path / "a" / "model.encodings")
    with pytest.raises(files.BundleError, match=r"does not match its export manifest"):
        sim.set_and_freeze_param_encodings(tmp_path / "a" / "model.encodings")
    # Without a manifest (e.g. a hand-edited AIMET file) the encodings load unchecked.
    os.remove(tmp_path / "a" / "model.manifest.json")
    sim.load_encodings_to_sim(tmp_path / "a" / "model.encodings")


def test_load_encodings_finishes_an_interrupted_export(sim, tmp_path):
    sim.export(tmp_path, "model")
    # What a kill after the commit point leaves: the new set in .model.commit, old files visible.
    commit = tmp_path / ".model.commit"
    commit.mkdir()
    for name in ("model.encodings", "model.keras", "model.manifest.json"):
        os.replace(tmp_path / name, commit / name)
    (tmp_path / "model.encodings").write_text("{}")  # an older, different file
    sim.load_encodings_to_sim(tmp_path / "model.encodings")
    assert sorted(os.listdir(tmp_path)) == ["model.encodings", "model.keras", "model.manifest.json"]
