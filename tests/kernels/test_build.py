"""Building the kernel library: cached, safe when processes build at once, clear errors."""

import os
import pathlib
import subprocess
import sys

import pytest

from aimet_tf.kernels import build


@pytest.fixture(autouse=True)
def _no_prebuilt_library(monkeypatch):
    monkeypatch.delenv("AIMET_TF_KERNELS_LIBRARY", raising=False)


def test_missing_compiler_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler-aimet")
    monkeypatch.setenv("AIMET_TF_KERNELS_CACHE", str(tmp_path))
    with pytest.raises(build.KernelBuildError, match=r"No C\+\+ compiler found.*apt-get install g\+\+"):
        build.library_path()


def test_failing_compiler_reports_its_exit_code(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "false")
    monkeypatch.setenv("AIMET_TF_KERNELS_CACHE", str(tmp_path))
    with pytest.raises(build.KernelBuildError, match=r"failed \(exit code 1\)"):
        build.library_path()
    assert not list(tmp_path.rglob("*.so"))  # no half-written library is left behind


def test_prebuilt_library_override(monkeypatch, tmp_path):
    monkeypatch.setenv("AIMET_TF_KERNELS_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(build.KernelBuildError, match="not a file"):
        build.library_path()


def test_library_is_cached_per_build_key():
    first = build.library_path()
    mtime = first.stat().st_mtime_ns
    assert build.library_path() == first and first.stat().st_mtime_ns == mtime
    assert first.parent.name == build._build_key()


@pytest.mark.slow
def test_two_processes_building_at_once_share_one_build(tmp_path):
    script = "from aimet_tf.kernels import build; print('LIB', build.library_path())"
    env = dict(os.environ, AIMET_TF_KERNELS_CACHE=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("AIMET_TF_KERNELS_LIBRARY", None)
    root = pathlib.Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=root) for _ in range(2)]
    results = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    paths = {line.split("LIB ", 1)[1] for out, _ in results for line in out.splitlines() if line.startswith("LIB ")}
    assert len(paths) == 1
    libraries = list(tmp_path.rglob("*.so"))
    assert [p.name for p in libraries] == ["aimet_dsp_kernels.so"]  # one library, no leftover temporaries
