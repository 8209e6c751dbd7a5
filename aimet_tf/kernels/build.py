"""Builds the C++ kernels on first use and loads them into TensorFlow.

The shared library is compiled from `aimet_tf/kernels/cc/*.{cc,h}` with the compile and link
flags of the installed TensorFlow (`tf.sysconfig`), once per (sources, TF version, compiler,
flags): the result is cached under ``$AIMET_TF_KERNELS_CACHE`` (default
``~/.cache/aimet_tf/kernels``) in a folder named by the hash of all of these. Concurrent builds
are safe: a per-folder file lock (``fcntl.flock``) serializes them, the compiler writes to a
temporary file and ``os.replace`` publishes the library atomically, so a process never loads a
half-written file and the second process reuses the first one's build.

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
import subprocess
import sys
import tempfile
import time
from types import ModuleType

from absl import logging

__all__ = ["KernelBuildError", "cache_dir", "library_path", "load_ops", "build_command"]

SOURCE_DIR = pathlib.Path(__file__).resolve().parent / "cc"
SOURCES = ("dsp_kernels.cc",)
HEADERS = ("fixed_point.h",)
_OPT_FLAGS = ("-O3", "-fPIC", "-shared", "-Wall", "-Wno-sign-compare", "-Wno-deprecated-declarations", "-Wno-interference-size")
_LIB_NAME = "aimet_dsp_kernels.so"


class KernelBuildError(RuntimeError):
    """The C++ kernels could not be compiled or loaded."""


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


def library_path() -> pathlib.Path:
    """Returns the compiled library, building it first if the cache does not hold it.

    Raises:
        KernelBuildError: no compiler, or the compiler failed (its output is in the message).
    """
    prebuilt = os.environ.get("AIMET_TF_KERNELS_LIBRARY")
    if prebuilt:
        path = pathlib.Path(prebuilt).resolve()
        if not path.is_file():
            raise KernelBuildError(f"$AIMET_TF_KERNELS_LIBRARY names {prebuilt}, which is not a file.")
        return path
    folder = cache_dir() / _build_key()
    lib = folder / _LIB_NAME
    if lib.is_file():
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    with _file_lock(folder / ".lock"):
        if lib.is_file():  # another process built it while we waited for the lock
            return lib
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        command = build_command(tmp)
        logging.info("Building aimet_tf DSP kernels: %s", " ".join(command))
        start = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except OSError as exc:
            os.unlink(tmp)
            raise KernelBuildError(f"Could not run the C++ compiler: {exc}") from exc
        if result.returncode != 0:
            os.unlink(tmp)
            raise KernelBuildError(
                f"Compiling the aimet_tf DSP kernels failed (exit code {result.returncode}).\n"
                f"Command: {' '.join(command)}\n{result.stderr[-8000:]}"
            )
        os.replace(tmp, lib)
        logging.info("Built %s in %.1f s", lib, time.perf_counter() - start)
    return lib


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
