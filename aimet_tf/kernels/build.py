"""Builds the C++ kernels on first use and loads them into TensorFlow.

The shared library is compiled from `aimet_tf/kernels/cc/*.{cc,h}` with the compile and link
flags of the installed TensorFlow (`tf.sysconfig`), once per (sources, TF version, compiler,
flags): the result is cached under ``$AIMET_TF_KERNELS_CACHE`` (default
``~/.cache/aimet_tf/kernels``) in a folder named by the hash of all of these. Concurrent builds
are safe: a per-folder file lock (``fcntl.flock``) serializes them, the compiler writes to a
temporary file and ``os.replace`` publishes the library atomically, so a process never loads a
half-written file and the second process reuses the first one's build.

The folder name is predictable, so a cache in a shared place could hold a library planted by
someone else. Before a cached library is loaded, the folder, the library and its recorded sha256
(``aimet_dsp_kernels.so.sha256``, written atomically at build time) must be real files and
folders, not symlinks, owned by the current user and not group- or world-writable, and the
library's sha256 must equal the recorded one. A folder that fails the ownership or permission
checks is left alone and the library is built into a fresh private folder (``tempfile.mkdtemp``)
for this process, with a warning that says what was wrong; a library whose hash does not match
in a folder that passes them is rebuilt in place.

``$AIMET_TF_KERNELS_LIBRARY`` names a prebuilt library to load instead (e.g. the Bazel target
``//aimet_tf/kernels:aimet_dsp_kernels.so``); nothing is compiled then.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from types import ModuleType

from absl import logging

__all__ = ["KernelBuildError", "UntrustedCacheError", "cache_dir", "library_path", "load_ops", "build_command"]

SOURCE_DIR = pathlib.Path(__file__).resolve().parent / "cc"
SOURCES = ("dsp_kernels.cc",)
HEADERS = ("fixed_point.h",)
_OPT_FLAGS = ("-O3", "-fPIC", "-shared", "-Wall", "-Wno-sign-compare", "-Wno-deprecated-declarations", "-Wno-interference-size")
_LIB_NAME = "aimet_dsp_kernels.so"
_HASH_SUFFIX = ".sha256"


class KernelBuildError(RuntimeError):
    """The C++ kernels could not be compiled or loaded."""


class UntrustedCacheError(KernelBuildError):
    """A cache folder or file is not private to the current user (wrong owner, mode or a symlink)."""


def cache_dir() -> pathlib.Path:
    """Root of the build cache: $AIMET_TF_KERNELS_CACHE or ~/.cache/aimet_tf/kernels."""
    root = os.environ.get("AIMET_TF_KERNELS_CACHE")
    return pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "aimet_tf" / "kernels"


def _compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    path = shutil.which(cxx)
    if path is None:
        raise KernelBuildError(
            f"No C++ compiler found: the aimet_tf DSP kernels are compiled on first use and need one. "
            f"Expected `{cxx}` on PATH (set $CXX to choose another). Install it with "
            "`apt-get install g++` (Debian/Ubuntu) or your platform's equivalent."
        )
    return path


def build_command(output: str | os.PathLike) -> list[str]:
    """The compiler command line that builds the kernel library into `output`."""
    import tensorflow as tf

    sources = [str(SOURCE_DIR / s) for s in SOURCES]
    return [_compiler(), *_OPT_FLAGS, f"-I{SOURCE_DIR}", *sources, "-o", str(output),
            *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]


def _build_key() -> str:
    import tensorflow as tf

    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode())
        digest.update((SOURCE_DIR / name).read_bytes())
    compiler = _compiler()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelBuildError(f"Could not run the C++ compiler {compiler}: {exc}") from exc
    for part in (tf.__version__, compiler, version, " ".join(build_command("x")), sys.platform):
        digest.update(part.encode())
    return digest.hexdigest()[:20]


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_private(path: pathlib.Path, what: str) -> None:
    """Raises UntrustedCacheError unless `path` is ours alone: no symlink, our uid, no g/o write.

    Raises:
        UntrustedCacheError: naming the path, what was expected and what was found.
    """
    info = os.lstat(path)
    uid = os.geteuid()
    problems = []
    if stat.S_ISLNK(info.st_mode):
        problems.append("it is a symlink")
    if info.st_uid != uid:
        problems.append(f"owner uid={info.st_uid}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problems.append(f"mode={stat.S_IMODE(info.st_mode):#o} (group- or world-writable)")
    if problems:
        raise UntrustedCacheError(
            f"Refusing the kernel {what} {path}. Expected a real {what} owned by the current user "
            f"(uid={uid}) and writable by no one else. Received: {', '.join(problems)}."
        )


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(lib: pathlib.Path, warn: bool = True) -> bool:
    """True if `lib` and its recorded sha256 exist, are private to us and agree.

    Returns False (rebuild) when either file is missing or the hashes differ (logged if `warn`:
    outside the build lock a mismatch may only be another process publishing its build).

    Raises:
        UntrustedCacheError: if either file exists but is not private to the current user.
    """
    record = lib.with_name(lib.name + _HASH_SUFFIX)
    if not (os.path.lexists(lib) and os.path.lexists(record)):
        return False
    _check_private(lib, "library")
    _check_private(record, "library hash record")
    recorded, actual = record.read_text(encoding="ascii").strip(), _sha256(lib)
    if recorded != actual and warn:
        logging.warning("Rebuilding %s: expected sha256 %s (recorded at build time). Received: sha256=%s.",
                        lib, recorded, actual)
    return recorded == actual


def _write_private_atomic(path: pathlib.Path, text: str) -> None:
    """Writes `text` to `path` through a 0600 temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _compile(lib: pathlib.Path) -> None:
    """Compiles into a temporary file beside `lib`, records its sha256, then publishes it."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
    os.close(fd)
    try:
        command = build_command(tmp)
        logging.info("Building aimet_tf DSP kernels: %s", " ".join(command))
        start = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except OSError as exc:
            raise KernelBuildError(f"Could not run the C++ compiler: {exc}") from exc
        if result.returncode != 0:
            raise KernelBuildError(
                f"Compiling the aimet_tf DSP kernels failed (exit code {result.returncode}).\n"
                f"Command: {' '.join(command)}\n{result.stderr[-8000:]}"
            )
        os.chmod(tmp, 0o755)  # mkstemp made it 0600; the library needs no write bit for others
        _write_private_atomic(lib.with_name(lib.name + _HASH_SUFFIX), _sha256(pathlib.Path(tmp)) + "\n")
        os.replace(tmp, lib)
        logging.info("Built %s in %.1f s", lib, time.perf_counter() - start)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cached_or_built(folder: pathlib.Path) -> pathlib.Path:
    """The verified library in `folder`, compiled there first when missing or stale.

    Raises:
        UntrustedCacheError: the folder or its files are not private to the current user.
        KernelBuildError: the compiler failed.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(folder, "cache folder")
    lib = folder / _LIB_NAME
    if _verified(lib, warn=False):
        return lib
    with _file_lock(folder / ".lock"):
        if not _verified(lib):  # else another process built it while we waited for the lock
            _compile(lib)
    if not _verified(lib):
        raise KernelBuildError(f"The library just built at {lib} does not match its recorded sha256.")
    return lib


def library_path() -> pathlib.Path:
    """Returns the compiled library, building it first if the cache does not hold a verified one.

    A cache folder that is not private to the current user is never used: the library is then
    built into a fresh private folder for this process (see the module docstring).

    Raises:
        KernelBuildError: no compiler, or the compiler failed (its output is in the message).
    """
    prebuilt = os.environ.get("AIMET_TF_KERNELS_LIBRARY")
    if prebuilt:
        path = pathlib.Path(prebuilt).resolve()
        if not path.is_file():
            raise KernelBuildError(f"$AIMET_TF_KERNELS_LIBRARY names {prebuilt}, which is not a file.")
        return path
    key = _build_key()
    try:
        return _cached_or_built(cache_dir() / key)
    except UntrustedCacheError as exc:
        private = pathlib.Path(tempfile.mkdtemp(prefix=f"aimet_tf_kernels_{key}_"))
        logging.warning("%s Building into the fresh private folder %s instead; remove the folder or set "
                        "$AIMET_TF_KERNELS_CACHE to a folder only you can write.", exc, private)
        return _cached_or_built(private)


@functools.lru_cache(maxsize=None)
def load_ops() -> ModuleType:
    """Builds (if needed) and loads the kernel library; returns the generated op module.

    Its functions are ``aimet_dsp_conv2d``, ``aimet_dsp_depthwise_conv2d``,
    ``aimet_dsp_fully_connected``, ``aimet_dsp_add``, ``aimet_dsp_average_pool2d``,
    ``aimet_dsp_max_pool2d``, ``aimet_dsp_requantize``, ``aimet_dsp_quantize``,
    ``aimet_dsp_dequantize``, ``aimet_dsp_softmax`` and ``aimet_dsp_mean``; use the validated
    wrappers in `aimet_tf.kernels.ops` instead of calling them directly.

    Raises:
        KernelBuildError: if the library cannot be built or loaded.
    """
    import tensorflow as tf

    lib = library_path()
    try:
        return tf.load_op_library(str(lib))
    except (tf.errors.NotFoundError, OSError) as exc:
        raise KernelBuildError(
            f"Loading {lib} failed: {exc}. Delete that folder to force a rebuild "
            "(it may come from another TensorFlow build)."
        ) from exc
