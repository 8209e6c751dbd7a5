"""aimet_tf.files: checked names, atomic single files, and file sets that change as one unit."""

import json
import os
import stat
import subprocess
import sys

import pytest

from aimet_tf import files


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _writer(text: str):
    def write(path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)

    return write


def _listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


def _contents(folder, prefix) -> dict[str, str]:
    out = {}
    for suffix in (".a", ".b"):
        path = os.path.join(folder, prefix + suffix)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                out[suffix] = handle.read()
    return out


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, reason",
    [
        ("", "empty"),
        ("../up", "path separator"),
        ("a/b", "path separator"),
        ("..", "names a folder"),
        (".", "names a folder"),
        (".hidden", "starts with '.'"),
        ("nul\0byte", "path separator"),
        (3, "to be a string"),
    ],
)
def test_check_file_name_rejects_names_outside_or_hidden(name, reason):
    with pytest.raises(ValueError, match="Expected .*" + "|".join([reason])) as info:
        files.check_file_name(name, "filename_prefix")
    assert f"filename_prefix={name!r}" in str(info.value)


def test_check_file_name_accepts_plain_names():
    assert files.check_file_name("model_w8a8.v2") == "model_w8a8.v2"
    assert files.output_path("out", "m", ".encodings") == os.path.join("out", "m.encodings")


# --- atomic_write --------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("kind", ["bytes", "text", "writer"])
def test_atomic_write_honours_umask(tmp_path, umask, kind):
    data = {"bytes": b"\x00\x01", "text": "hello", "writer": _writer("from a writer")}[kind]
    old = os.umask(umask)
    try:
        path = files.atomic_write(tmp_path / "out.bin", data)
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"")
    finally:
        os.umask(old)
    assert _mode(path) == 0o666 & ~umask == _mode(plain)
    assert _listing(tmp_path) == ["out.bin", "plain.bin"]


def test_atomic_write_replaces_and_leaves_old_file_on_error(tmp_path):
    path = tmp_path / "x.json"
    files.atomic_write(path, "old")

    def failing(target: str) -> None:
        with open(target, "w") as handle:
            handle.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        files.atomic_write(path, failing)
    assert path.read_text() == "old"
    assert _listing(tmp_path) == ["x.json"]
    files.atomic_write(path, "new")
    assert path.read_text() == "new"


def test_atomic_write_rejects_hidden_or_empty_names(tmp_path):
    with pytest.raises(ValueError, match="starts with '.'"):
        files.atomic_write(tmp_path / ".hidden", b"x")
    with pytest.raises(ValueError, match="empty"):
        files.atomic_write(str(tmp_path) + os.sep, b"x")
    assert _listing(tmp_path) == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    stale = tmp_path / f".x.json.{dead}.{'a' * 16}.tmp"
    stale_staging = tmp_path / f".m.staging.{dead}.{'b' * 16}"
    busy = tmp_path / f".x.json.{live}.{'c' * 16}.tmp"
    unrelated = tmp_path / "tmpabc.keras"
    for path in (stale, busy, unrelated):
        path.write_text("")
    stale_staging.mkdir()
    (stale_staging / "m.a").write_text("partial")
    files.atomic_write(tmp_path / "x.json", "{}")
    files.recover_bundle(tmp_path, "m")
    assert _listing(tmp_path) == sorted([busy.name, unrelated.name, "x.json"])


# --- bundles -------------------------------------------------------------------------------------


def test_bundle_writes_files_and_manifest(tmp_path, umask_022):
    paths = files.write_bundle(tmp_path, "m", {".a": _writer("A1"), ".b": _writer("B1")})
    assert _listing(tmp_path) == ["m.a", "m.b", "m.manifest.json"]
    assert paths[".a"] == str(tmp_path / "m.a") and paths["manifest"] == str(tmp_path / "m.manifest.json")
    manifest = json.loads((tmp_path / "m.manifest.json").read_text())
    assert set(manifest["files"]) == {"m.a", "m.b"}
    assert all(_mode(tmp_path / n) == 0o644 for n in _listing(tmp_path))
    assert files.verify_bundle(tmp_path, "m") is True
    assert files.bundle_of(tmp_path / "m.a", ".a") == (str(tmp_path), "m")
    assert files.bundle_of(tmp_path / "other.a", ".a") is None


def test_bundle_rejects_bad_prefix_before_writing(tmp_path):
    for prefix in ("", "../m", "sub/m", ".m"):
        with pytest.raises(ValueError, match="Expected filename_prefix"):
            files.write_bundle(tmp_path / "out", prefix, {".a": _writer("A")})
    assert not (tmp_path / "out").exists() and _listing(tmp_path) == []


def test_verify_bundle_detects_mixed_or_missing_files(tmp_path):
    files.write_bundle(tmp_path, "m", {".a": _writer("A1"), ".b": _writer("B1")})
    (tmp_path / "m.b").write_text("B2")
    with pytest.raises(files.BundleError, match=r"m\.b' does not match its export manifest\. Expected sha256="):
        files.verify_bundle(tmp_path, "m")
    os.remove(tmp_path / "m.b")
    with pytest.raises(files.BundleError, match="incomplete. Expected 'm.b'"):
        files.verify_bundle(tmp_path, "m")
    (tmp_path / "m.manifest.json").write_text("[1]")
    with pytest.raises(files.BundleError, match="Expected an aimet_tf export manifest"):
        files.verify_bundle(tmp_path, "m")


class _Crash(BaseException):
    """Stands for the process dying (BaseException: no ``except Exception`` handler stops it)."""


def _crash_at(monkeypatch, step: int) -> None:
    """Makes the ``step``-th rename (os.rename / os.replace) of the process 'die' before it runs."""
    calls = {"n": 0}
    real_rename, real_replace = os.rename, os.replace

    def counting(real):
        def rename(src, dst, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == step:
                raise _Crash(f"killed at rename {step}")
            return real(src, dst, *args, **kwargs)

        return rename

    monkeypatch.setattr(os, "rename", counting(real_rename))
    monkeypatch.setattr(os, "replace", counting(real_replace))


@pytest.mark.parametrize("first_export", [True, False])
@pytest.mark.parametrize("step", [1, 2, 3, 4, 5])
def test_bundle_killed_at_any_rename_recovers_old_or_new(tmp_path, monkeypatch, step, first_export):
    """A crash before the commit rename keeps the old set; after it, recovery gives the new."""
    if not first_export:
        files.write_bundle(tmp_path, "m", {".a": _writer("A1"), ".b": _writer("B1")})
    old = _contents(tmp_path, "m")
    _crash_at(monkeypatch, step)
    try:
        files.write_bundle(tmp_path, "m", {".a": _writer("A2"), ".b": _writer("B2")})
        crashed = False
    except _Crash:
        crashed = True
    monkeypatch.undo()
    assert crashed == (step <= 4)  # 1 commit rename + 3 moves
    # Until recovery, the visible set is consistent whenever no commit is pending.
    if not os.path.isdir(tmp_path / ".m.commit") and os.path.exists(tmp_path / "m.manifest.json"):
        assert files.verify_bundle(tmp_path, "m")
    files.recover_bundle(tmp_path, "m")
    after = _contents(tmp_path, "m")
    new = {".a": "A2", ".b": "B2"}
    assert after == (old if step == 1 else new)
    expected = ["m.a", "m.b", "m.manifest.json"] if after else []
    assert _listing(tmp_path) == expected  # no staging folder, commit folder or temp file
    if after:
        assert files.verify_bundle(tmp_path, "m")
