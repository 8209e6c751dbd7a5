"""Writing output files safely: checked names, atomic single files, and atomic file sets.

aimet_tf's output files (exports, encodings, data files) are written through this module, so
that three promises hold for them:

* **Names stay inside the target folder.** A file name or export prefix is a bare name: not
  empty, no path separator, not ``.`` / ``..``, not hidden (a leading ``.`` is reserved for the
  temporary files below). ``check_file_name`` says what was expected and what was received.
* **No half-written file.** ``atomic_write`` writes a temporary file in the destination folder,
  flushes it to disk and renames it over the destination, so a reader sees the old content or
  the new content. The file gets the mode a plain ``open(path, "w")`` would give (0o666 minus
  the umask), not the private 0o600 of ``tempfile.mkstemp``.
* **A set of files changes as one unit.** ``write_bundle`` writes e.g. ``model.encodings`` and
  ``model.keras`` plus ``model.manifest.json`` (the sha256 and size of each) into a hidden
  staging folder, renames that folder to ``.model.commit`` (the commit point) and then moves
  the files into place, manifest last. A process killed before the commit point leaves the old
  set untouched (the staging folder is removed by the next call); one killed after it leaves a
  complete new set in ``.model.commit``, which ``recover_bundle`` (called by the next write and
  by every checked read) moves into place. ``verify_bundle`` then checks each file against the
  manifest, so a set that was mixed by hand or by another tool is reported, not loaded.

Example:
    >>> atomic_write(os.path.join(folder, "notes.txt"), b"hello")
    >>> write_bundle(folder, "model", {".encodings": write_encodings, ".keras": model.save})
    {'.encodings': '/out/model.encodings', '.keras': '/out/model.keras', 'manifest': '/out/model.manifest.json'}
    >>> verify_bundle(folder, "model")
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from typing import Callable, Mapping

__all__ = [
    "BundleError",
    "MANIFEST_SUFFIX",
    "atomic_write",
    "bundle_of",
    "check_file_name",
    "output_path",
    "recover_bundle",
    "verify_bundle",
    "write_bundle",
]

MANIFEST_SUFFIX = ".manifest.json"
"""Suffix of the manifest ``write_bundle`` writes beside the files of a set."""

_MANIFEST_FORMAT = "aimet_tf.bundle"
_MANIFEST_VERSION = 1
_CHUNK = 1 << 20
# Temporary names carry the writer's pid, so that only leftovers of dead processes are removed.
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{16}\.tmp(\.[^.]*)?")
_STAGING_RE = re.compile(r"\.(?P<name>.+)\.staging\.(?P<pid>\d+)\.[0-9a-f]{16}")


class BundleError(ValueError):
    """A set of exported files is incomplete or does not match its manifest."""


# --- names ---------------------------------------------------------------------------------------


def check_file_name(name: str, what: str = "file name") -> str:
    """Returns ``name`` after checking it names a file directly inside a folder.

    Args:
        name: the bare file name or prefix.
        what: how the caller calls it in error messages, e.g. ``"filename_prefix"``.

    Returns:
        ``name`` unchanged.

    Raises:
        ValueError: if ``name`` is not a string, is empty, is ``.`` or ``..``, starts with ``.``
            (hidden; reserved for temporary files), or contains ``/``, ``\\`` or a NUL byte.
    """
    if not isinstance(name, str):
        raise ValueError(
            f"Expected {what} to be a string. Received: {what}={name!r} "
            f"(type {type(name).__name__})"
        )
    problem = None
    if not name:
        problem = "it is empty (the files would be hidden dot-files such as '.encodings')"
    elif name in (".", ".."):
        problem = "it names a folder"
    elif any(sep in name for sep in ("/", "\\", os.sep, "\0")):
        problem = "it contains a path separator, so files could land outside the target folder"
    elif name.startswith("."):
        problem = "it starts with '.', which makes hidden files (reserved for temporary files)"
    if problem:
        raise ValueError(
            f"Expected {what} to be a plain file name (no '/', '\\', '..' or leading '.', not "
            f"empty); {problem}. Received: {what}={name!r}. Pass the folder as the path "
            "argument and a bare name here."
        )
    return name


def output_path(directory: str | os.PathLike, prefix: str, suffix: str, what: str = "filename_prefix") -> str:
    """``directory/prefix+suffix`` after checking that ``prefix`` is a bare name.

    Raises:
        ValueError: see ``check_file_name``.
    """
    check_file_name(prefix, what)
    return os.path.join(os.fspath(directory), prefix + suffix)


def _target_file(path: str | os.PathLike) -> tuple[str, str]:
    """(folder, file name) of ``path``, with the file name checked."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    check_file_name(name, "the file name of path")
    return os.path.abspath(folder or "."), name


def check_writable_folder(path: str | os.PathLike, purpose: str = "the output") -> str:
    """Creates ``path`` if needed and proves that a file can be created in it, before any work.

    Args:
        path: the folder.
        purpose: what the folder is for, as the error message names it.

    Returns:
        ``path`` as a string.

    Raises:
        OSError: naming the folder, when it cannot be created or written to.
    """
    folder = os.fspath(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"Expected a writable folder for {purpose}. Received: path={folder!r}: {exc.strerror or exc}",
        ) from exc
    return folder


# --- single files --------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_dead_leftovers(folder: str, name: str) -> None:
    """Removes temporary files/folders for ``name`` left in ``folder`` by killed processes."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        match = _TEMP_RE.fullmatch(entry) or _STAGING_RE.fullmatch(entry)
        if not match or match["name"] != name or _pid_alive(int(match["pid"])):
            continue
        full = os.path.join(folder, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(full)


def _fsync_folder(folder: str) -> None:
    # Makes the renames inside ``folder`` durable; some file systems cannot open folders.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _temp_name(folder: str, name: str) -> str:
    """A fresh temporary path for ``name`` in ``folder``, ending in ``name``'s extension (some
    writers, such as Keras' ``model.save``, insist on it)."""
    extension = os.path.splitext(name)[1]
    return os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp{extension}")


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[str], None]) -> str:
    """Writes a file so that readers see either its old or its new content, never a part.

    The content goes to a temporary file in the same folder, is flushed to disk, and is renamed
    over ``path``. The file gets the mode a plain open() gives (0o666 minus the umask; not
    mkstemp's private 0o600). Leftover temporary files of ``path`` from killed processes are
    removed first.

    Args:
        path: the destination; its folder is created if missing. Its file name is checked
            with ``check_file_name``.
        data: bytes, text (written as UTF-8), or a function that writes the file at the
            (temporary) path it is given, e.g. ``model.save``.

    Returns:
        ``path`` as a string.

    Raises:
        ValueError: if the file name is not a plain name.
        OSError: if the folder cannot be written; the destination is then unchanged.
    """
    folder, name = _target_file(path)
    os.makedirs(folder, exist_ok=True)
    _remove_dead_leftovers(folder, name)
    temp = _temp_name(folder, name)
    try:
        if callable(data):
            data(temp)
            if not os.path.isfile(temp):
                raise RuntimeError(f"The writer for {name!r} did not create the file it was given.")
        else:
            # O_EXCL: never write through a file (or link) someone placed under this name.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        _fsync_file(temp)
        os.replace(temp, os.path.join(folder, name))
        _fsync_folder(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
    return os.fspath(path)


# --- file sets -----------------------------------------------------------------------------------


def _commit_dir(folder: str, prefix: str) -> str:
    return os.path.join(folder, f".{prefix}.commit")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_bundle(
    directory: str | os.PathLike,
    prefix: str,
    writers: Mapping[str, Callable[[str], None]],
) -> dict[str, str]:
    """Writes the files ``directory/prefix+suffix`` as one unit, with a manifest.

    Each ``writers[suffix](path)`` writes its file at the given path (inside a hidden staging
    folder). Then ``prefix.manifest.json`` (sha256 and size per file) is written, the staging
    folder is renamed to ``.prefix.commit`` (the commit point) and its files are moved into
    place, manifest last. See the module docstring for what a kill at any point leaves.

    Args:
        directory: target folder (created if missing).
        prefix: bare name shared by the files (checked with ``check_file_name``).
        writers: suffix (e.g. ``".encodings"``) -> function writing that file.

    Returns:
        suffix -> final path, plus ``"manifest"`` -> the manifest's path.

    Raises:
        ValueError: for a bad prefix or suffix.
        Whatever a writer raises; the previous set is then untouched.
    """
    check_file_name(prefix, "filename_prefix")
    for suffix in writers:
        check_file_name(prefix + suffix, "prefix + suffix")
        if suffix == MANIFEST_SUFFIX:
            raise ValueError(f"Expected suffixes other than {MANIFEST_SUFFIX!r}. Received: {suffix!r}")
    folder = os.path.abspath(os.fspath(directory))
    os.makedirs(folder, exist_ok=True)
    recover_bundle(folder, prefix)
    staging = os.path.join(folder, f".{prefix}.staging.{os.getpid()}.{secrets.token_hex(8)}")
    os.mkdir(staging)
    try:
        files = {}
        for suffix, write in writers.items():
            staged = os.path.join(staging, prefix + suffix)
            write(staged)
            if not os.path.isfile(staged):
                raise RuntimeError(f"The writer for {suffix!r} did not create {staged!r}.")
            _fsync_file(staged)
            files[prefix + suffix] = {"sha256": _sha256(staged), "bytes": os.path.getsize(staged)}
        manifest = {"format": _MANIFEST_FORMAT, "version": _MANIFEST_VERSION, "files": files}
        with open(os.path.join(staging, prefix + MANIFEST_SUFFIX), "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_folder(staging)
        os.rename(staging, _commit_dir(folder, prefix))  # the commit point
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_folder(folder)
    recover_bundle(folder, prefix)
    paths = {suffix: os.path.join(folder, prefix + suffix) for suffix in writers}
    paths["manifest"] = os.path.join(folder, prefix + MANIFEST_SUFFIX)
    return paths


def recover_bundle(directory: str | os.PathLike, prefix: str) -> None:
    """Finishes an interrupted ``write_bundle`` and removes leftovers of killed writers.

    A committed set (``.prefix.commit``) is moved into place, manifest last; staging folders
    and temporary files of dead processes are removed. Safe to call at any time, any number
    of times.

    Raises:
        BundleError: if a committed set exists but cannot be moved into place (e.g. the folder
            is read-only).
    """
    folder = os.path.abspath(os.fspath(directory))
    _remove_dead_leftovers(folder, prefix)
    commit = _commit_dir(folder, prefix)
    if not os.path.isdir(commit):
        return
    manifest = prefix + MANIFEST_SUFFIX
    try:
        names = sorted(os.listdir(commit), key=lambda n: n == manifest)  # manifest last
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # another reader moved it first
                os.replace(os.path.join(commit, name), os.path.join(folder, name))
        _fsync_folder(folder)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(commit)
    except OSError as error:
        raise BundleError(
            f"An interrupted export of {prefix!r} in {folder!r} was committed but could not be "
            f"moved into place: {error}. Expected a writable folder. Re-run the export, or move "
            f"the files of {commit!r} into {folder!r} by hand."
        ) from error


def _read_manifest(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as error:
        raise BundleError(f"Cannot read the export manifest {path!r}: {error}") from error
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != _MANIFEST_FORMAT
        or not isinstance(files, dict)
        or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values())
    ):
        raise BundleError(
            f"Expected an aimet_tf export manifest ({{'format': {_MANIFEST_FORMAT!r}, 'files': "
            f"{{name: {{'sha256': ...}}}}}}). Received: {path!r} with other content."
        )
    return manifest


def verify_bundle(directory: str | os.PathLike, prefix: str) -> bool:
    """Checks that the set ``prefix`` in ``directory`` is complete and matches its manifest.

    An interrupted export is finished first (``recover_bundle``).

    Returns:
        True when a manifest exists and every file matches it; False when there is no manifest
        (files not written by ``write_bundle``: nothing to check).

    Raises:
        BundleError: naming the file, if a listed file is missing or its sha256 differs.
    """
    folder = os.path.abspath(os.fspath(directory))
    recover_bundle(folder, prefix)
    manifest_path = os.path.join(folder, prefix + MANIFEST_SUFFIX)
    if not os.path.exists(manifest_path):
        return False
    for name, entry in _read_manifest(manifest_path)["files"].items():
        path = os.path.join(folder, os.path.basename(name))
        if not os.path.isfile(path):
            raise BundleError(
                f"Export {prefix!r} in {folder!r} is incomplete. Expected {name!r} as listed in "
                f"{manifest_path!r}. Received: no such file. Re-run the export."
            )
        actual = _sha256(path)
        if actual != entry["sha256"]:
            raise BundleError(
                f"{path!r} does not match its export manifest. Expected sha256={entry['sha256']}. "
                f"Received: sha256={actual}. The files of this export were changed or mixed with "
                f"another export's; re-run the export, or delete {manifest_path!r} to use the "
                "files unchecked."
            )
    return True


def bundle_of(path: str | os.PathLike, suffix: str) -> tuple[str, str] | None:
    """(folder, prefix) when ``path`` is the ``suffix`` file of a set written by ``write_bundle``
    (its manifest or an unfinished commit exists), else None."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    if not name.endswith(suffix) or len(name) == len(suffix):
        return None
    prefix = name[: -len(suffix)]
    if os.path.exists(os.path.join(folder, prefix + MANIFEST_SUFFIX)) or os.path.isdir(
        _commit_dir(folder, prefix)
    ):
        return folder, prefix
    return None
