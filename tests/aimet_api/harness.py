"""Runs scripts written in the shape of AIMET's Keras code examples, twice.

Each script in ``tests/aimet_api/scripts`` is AIMET code: it imports ``aimet_tensorflow.keras.*``
and ``aimet_common.*`` exactly as AIMET's examples do, and defines ``main(workdir: str) -> dict``
that returns what the flow produced (accuracies, encodings, file names...).

``run_script(name, workdir)`` runs it in two ways and returns both results:

* ``imports_changed``: the user's way. The source's import lines, and only those, are rewritten
  (``aimet_tensorflow.keras`` -> ``aimet_tf.keras``, ``aimet_common`` -> ``aimet_tf.common``); the
  harness checks that no other line changed.
* ``unchanged``: the source exactly as written, with ``aimet_tensorflow.keras.*`` and
  ``aimet_common.*`` resolved to the same aimet_tf modules by an import hook that exists only
  for the run.

A test then compares the two results (the same script must give the same answer) and checks
the flow's own outcome.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import os
import re
import sys
from typing import Any, Iterator

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")

# AIMET's package prefixes and the aimet_tf packages that stand for them.
PREFIXES = (
    ("aimet_tensorflow.keras", "aimet_tf.keras"),
    ("aimet_tensorflow.defs", "aimet_tf.keras.defs"),  # AIMET's compression examples import it
    ("aimet_common", "aimet_tf.common"),
)
_IMPORT_LINE = re.compile(r"^\s*(from\s+\S+\s+import\b|import\s+\S+)")


def rewrite_imports(source: str) -> str:
    """The source with AIMET's packages replaced by aimet_tf's on import lines only.

    Raises:
        ValueError: if an AIMET package name appears on a line that is not an import (the
            script would need more than its imports changed).
    """
    lines = []
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        if _IMPORT_LINE.match(line):
            for old, new in PREFIXES:
                line = re.sub(rf"\b{re.escape(old)}\b", new, line)
        elif any(re.search(rf"\b{re.escape(old)}\b", line) for old, _ in PREFIXES):
            raise ValueError(f"line {number} names an AIMET package outside an import: {line.strip()!r}")
        lines.append(line)
    return "".join(lines)


def changed_lines(before: str, after: str) -> list[str]:
    """The lines of ``before`` that differ in ``after`` (same line count by construction)."""
    return [a for a, b in zip(before.splitlines(), after.splitlines()) if a != b]


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``aimet_tensorflow.keras.X`` / ``aimet_common.X`` to the aimet_tf module."""

    def _target(self, fullname: str) -> str | None:
        if fullname == "aimet_tensorflow":
            return "aimet_tf"
        for old, new in PREFIXES:
            if fullname == old or fullname.startswith(old + "."):
                return new + fullname[len(old):]
        return None

    def find_spec(self, fullname, path=None, target=None):
        if self._target(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec):
        return importlib.import_module(self._target(spec.name))

    def exec_module(self, module):
        return None


@contextlib.contextmanager
def aimet_aliases() -> Iterator[None]:
    """Installs the alias hook; removes it and the aliased entries of sys.modules afterwards."""
    finder = _AliasFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if finder._target(n) is not None]:
            del sys.modules[name]


def _run(source: str, filename: str, workdir: str) -> Any:
    """Runs the script's main(workdir) with workdir as the current folder (as a user runs a script
    in a folder), so that files AIMET writes to relative paths land there."""
    namespace: dict[str, Any] = {"__name__": "aimet_script", "__file__": filename}
    exec(compile(source, filename, "exec"), namespace)
    with contextlib.chdir(workdir):
        return namespace["main"](workdir)


def unchanged_bindings(source: str, rewritten: str, filename: str) -> dict[str, tuple[Any, Any]]:
    """Executes the module level (imports and definitions, not ``main``) of the unchanged source
    under the alias hook and of the rewritten one; returns {name: (unchanged object, rewritten
    object)} for every module-level name that is not a function the script defines."""
    spaces = []
    for text, aliased in ((source, True), (rewritten, False)):
        namespace: dict[str, Any] = {"__name__": "aimet_script", "__file__": filename}
        with aimet_aliases() if aliased else contextlib.nullcontext():
            exec(compile(text, filename, "exec"), namespace)
        spaces.append(namespace)
    own = {k for k, v in spaces[1].items() if getattr(v, "__module__", None) == "aimet_script"}
    return {k: (spaces[0].get(k), v) for k, v in spaces[1].items() if not k.startswith("__") and k not in own}


def run_script(name: str, workdir: str, run_unchanged: bool = True) -> dict[str, Any]:
    """Runs ``scripts/<name>.py`` both ways; returns {"imports_changed": ..., "unchanged": ...}.

    Each run gets its own subfolder of ``workdir``. ``run_unchanged=False`` (the longest flows,
    for the suite's time budget) runs only the imports-changed script in full and, for the
    unchanged one, returns under "unchanged_bindings" what `unchanged_bindings` gives: each name
    the unchanged script imports must be the very object the rewritten one imports, so its run
    would execute the same code.
    """
    filename = os.path.join(SCRIPTS, f"{name}.py")
    with open(filename, encoding="utf-8") as handle:
        source = handle.read()
    rewritten = rewrite_imports(source)
    changed = changed_lines(source, rewritten)
    if not changed:
        raise ValueError(f"{filename} imports nothing from aimet_tensorflow.keras / aimet_common")
    if not all(_IMPORT_LINE.match(line) for line in changed):
        raise AssertionError(f"non-import lines changed: {changed}")
    results = {}
    if not run_unchanged:
        results["unchanged_bindings"] = unchanged_bindings(source, rewritten, filename)
    for mode in ("imports_changed", "unchanged") if run_unchanged else ("imports_changed",):
        run_dir = os.path.join(os.fspath(workdir), mode)
        os.makedirs(run_dir, exist_ok=True)
        if mode == "imports_changed":
            results[mode] = _run(rewritten, filename, run_dir)
        else:
            with aimet_aliases():
                results[mode] = _run(source, filename, run_dir)
    return results
