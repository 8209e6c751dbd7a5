"""Rebuilds the bundled Fashion-MNIST files from the Debian package.

Checks the package's files against the sha256 recorded when the bundle was
made (``SOURCE_SHA256``), copies the test split and the train labels unchanged
and writes the calibration subset: 200 train images per class (2,000 in all),
chosen with ``numpy.random.default_rng(SEED)`` and stored in ascending
train-index order as gzipped idx files (gzip mtime 0, so the bytes and their
sha256 are reproducible). Every file is written to a temporary name and then
renamed. The 60,000 train labels (29 KB) ship so that the tests can check the
calibration subset's selection without the 26 MB train images.

Usage (from the repository root, needs ``apt-get install dataset-fashion-mnist``):
    python third_party/fashion_mnist/make_bundle.py
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from aimet_tf import datasets  # noqa: E402

SEED = 20240601
PER_CLASS = 200

# sha256 of the Debian package's files (dataset-fashion-mnist 0.0~git20200523.55506a9-1).
SOURCE_SHA256 = {
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
}
# Copied byte for byte; the calibration files are made from the train split.
COPIED = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz")


def calibration_indices(train_labels: np.ndarray, seed: int = SEED, per_class: int = PER_CLASS) -> np.ndarray:
    """Returns sorted train indices: ``per_class`` drawn without replacement per class."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(train_labels == c), size=per_class, replace=False)
        for c in range(len(datasets.FASHION_MNIST_CLASSES))
    ]
    return np.sort(np.concatenate(chosen))


def _atomic_copy(src: pathlib.Path, dst: pathlib.Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def check_source(source: pathlib.Path, expected: dict[str, str] = SOURCE_SHA256) -> None:
    """Raises ValueError unless every file of ``source`` has its recorded sha256."""
    for name, sha in expected.items():
        received = hashlib.sha256((source / name).read_bytes()).hexdigest()
        if received != sha:
            raise ValueError(
                f"Unexpected Fashion-MNIST source file {source / name}. Expected sha256 {sha}. "
                f"Received: sha256={received}."
            )


def build(source: pathlib.Path, out: pathlib.Path) -> np.ndarray:
    """Writes the bundle from the idx files in ``source`` into ``out``; returns the train indices."""
    for name in COPIED:
        _atomic_copy(source / name, out / name)
    train_images = datasets.read_idx(source / "train-images-idx3-ubyte.gz")
    train_labels = datasets.read_idx(source / "train-labels-idx1-ubyte.gz")
    indices = calibration_indices(train_labels)
    datasets.write_idx(out / "calib-images-idx3-ubyte.gz", train_images[indices])
    datasets.write_idx(out / "calib-labels-idx1-ubyte.gz", train_labels[indices])
    return indices


def main() -> None:
    source = datasets.DEBIAN_FASHION_MNIST_DIR
    check_source(source)
    indices = build(source, HERE)

    # Print the README sections (sha256 table and index list) to paste in.
    print("| file | bytes | sha256 |\n|---|---|---|")
    for path in sorted(HERE.glob("*.gz")):
        print(f"| `{path.name}` | {path.stat().st_size} | `{hashlib.sha256(path.read_bytes()).hexdigest()}` |")
    print("\n```text")
    for start in range(0, len(indices), 20):
        print(" ".join(str(i) for i in indices[start : start + 20]))
    print("```")


if __name__ == "__main__":
    main()
