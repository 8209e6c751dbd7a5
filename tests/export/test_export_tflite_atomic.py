"""export_tflite replaces its file atomically: a SIGKILL at any moment of a re-export leaves the
previous complete .tflite or the new one, never a truncated or mixed file."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

_CHILD = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    from aimet_tf import QuantizationSimModel
    from aimet_tf.export import export_tflite, prepare_model_for_tflite
    from aimet_tf.testing.fuzz import input_distributions, random_model
    folder = sys.argv[1]
    sims = []
    for bw in (8, 4):
        model = prepare_model_for_tflite(random_model(21))
        sim = QuantizationSimModel(model, quant_scheme="tf", default_param_bw=bw, config_file="tflite")
        sim.compute_encodings(input_distributions(21, model.input_shape[1:])[0])
        sims.append(sim)
    # The two complete versions, for the parent to compare with.
    export_tflite(sims[0], os.path.join(folder, "a.tflite"))
    export_tflite(sims[1], os.path.join(folder, "b.tflite"))
    export_tflite(sims[0], os.path.join(folder, "m.tflite"))
    open(os.path.join(folder, "ready"), "w").close()
    k = 1
    while True:
        export_tflite(sims[k % 2], os.path.join(folder, "m.tflite"))
        k += 1
""")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_during_reexport_leaves_a_complete_file(tmp_path, seed):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "ready").exists():
            assert child.poll() is None and time.time() < deadline, "the exporting child did not start"
            time.sleep(0.2)
        time.sleep(np.random.default_rng(seed).uniform(0.5, 8.0))
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    versions = {(tmp_path / "a.tflite").read_bytes(), (tmp_path / "b.tflite").read_bytes()}
    assert len(versions) == 2
    assert (tmp_path / "m.tflite").read_bytes() in versions
    visible = sorted(name for name in os.listdir(tmp_path) if not name.startswith("."))
    assert visible == ["a.tflite", "b.tflite", "m.tflite", "ready"]
