"""Building the kernel library: cached, safe when processes build at once, clear errors."""

import hashlib
import os
import pathlib
import stat
import subprocess
import sys
import tempfile

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


# --------------------------------------------------------------------------------------------
# Planting: a cache folder or library that is not private to us, or a library that does not
# match its recorded sha256, is never returned. A fake "compiler" (a shell command writing known
# bytes) keeps these tests fast; `library_path` decides what is loaded, `load_ops` only loads it.

_OTHER_UID = 4242


@pytest.fixture
def fake_build(monkeypatch, tmp_path):
    """A cache in tmp_path/cache whose "compiler" writes b"built\\n" and counts its runs."""
    cache, runs, private = tmp_path / "cache", tmp_path / "runs", tmp_path / "private"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))  # fresh private folders land here, not in /tmp
    monkeypatch.setenv("AIMET_TF_KERNELS_CACHE", str(cache))
    monkeypatch.setattr(
        build, "build_command", lambda out: ["sh", "-c", f"printf 'built\\n' > '{out}'; echo run >> '{runs}'"]
    )
    key = build._build_key()

    def count() -> int:
        return len(runs.read_text().splitlines()) if runs.exists() else 0

    return cache / key, count


def _plant(folder: pathlib.Path, content: bytes, recorded: bytes | None = None) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / "aimet_dsp_kernels.so"
    lib.write_bytes(content)
    if recorded is not None:
        (folder / "aimet_dsp_kernels.so.sha256").write_text(hashlib.sha256(recorded).hexdigest() + "\n")
    return lib


def test_a_build_records_its_sha256_privately_and_is_reused(fake_build):
    folder, runs = fake_build
    lib = build.library_path()
    assert lib == folder / "aimet_dsp_kernels.so" and lib.read_bytes() == b"built\n"
    record = folder / "aimet_dsp_kernels.so.sha256"
    assert record.read_text().strip() == hashlib.sha256(b"built\n").hexdigest()
    for path in (folder, lib, record):
        assert path.stat().st_uid == os.geteuid() and not path.stat().st_mode & 0o022, path
    assert build.library_path() == lib and runs() == 1  # verified, not rebuilt
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "aimet_dsp_kernels.so",
                                                        "aimet_dsp_kernels.so.sha256"]


@pytest.mark.parametrize("recorded", [None, b"the real library"], ids=["no-record", "wrong-hash"])
def test_a_planted_library_in_our_folder_is_rebuilt(fake_build, recorded):
    folder, runs = fake_build
    planted = _plant(folder, b"planted", recorded)
    lib = build.library_path()
    assert lib == planted and lib.read_bytes() == b"built\n" and runs() == 1


def test_a_world_writable_cache_folder_is_not_used(fake_build):
    folder, runs = fake_build
    planted = _plant(folder, b"planted", b"planted")  # even with a matching record
    os.chmod(folder, 0o777)
    lib = build.library_path()
    assert lib.read_bytes() == b"built\n" and runs() == 1
    assert folder not in lib.parents and lib.parent.parent == folder.parents[1] / "private"
    assert stat.S_IMODE(lib.parent.stat().st_mode) == 0o700 and lib.parent.stat().st_uid == os.geteuid()
    assert planted.read_bytes() == b"planted"  # left alone


def test_a_group_writable_library_is_not_used(fake_build):
    folder, runs = fake_build
    planted = _plant(folder, b"planted", b"planted")
    os.chmod(planted, 0o664)
    lib = build.library_path()
    assert lib != planted and lib.read_bytes() == b"built\n" and runs() == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="os.chown to another uid needs root")
@pytest.mark.parametrize("owned_by_other", ["folder", "library", "record"])
def test_files_owned_by_another_user_are_not_used(fake_build, owned_by_other):
    folder, runs = fake_build
    planted = _plant(folder, b"planted", b"planted")
    target = {"folder": folder, "library": planted, "record": folder / "aimet_dsp_kernels.so.sha256"}
    os.chown(target[owned_by_other], _OTHER_UID, _OTHER_UID)
    lib = build.library_path()
    assert lib != planted and lib.read_bytes() == b"built\n" and runs() == 1
    assert planted.read_bytes() == b"planted"


def test_untrusted_folder_error_says_what_was_wrong(fake_build):
    folder, _ = fake_build
    folder.mkdir(parents=True)
    os.chmod(folder, 0o777)
    with pytest.raises(build.UntrustedCacheError,
                       match=r"Expected a real cache folder owned by the current user \(uid=\d+\).*"
                             r"Received: mode=0o777 \(group- or world-writable\)"):
        build._check_private(folder, "cache folder")


def test_a_symlinked_cache_folder_is_not_used(fake_build, tmp_path):
    folder, runs = fake_build
    elsewhere = tmp_path / "elsewhere"
    _plant(elsewhere, b"planted", b"planted")
    folder.parent.mkdir(parents=True)
    folder.symlink_to(elsewhere)
    lib = build.library_path()
    assert elsewhere not in lib.parents and lib.read_bytes() == b"built\n" and runs() == 1
