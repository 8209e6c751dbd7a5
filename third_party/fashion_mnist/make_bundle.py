"""Rebuilds the bundled Fashion-MNIST files from the Debian package.

Copies the test split unchanged and writes the calibration subset: 200 train
images per class (2,000 in all), chosen with ``numpy.random.default_rng(SEED)``
and stored in ascending train-index order as gzipped idx files (gzip mtime 0,
so the bytes and their sha256 are reproducible). Every file is written to a
temporary name and then renamed.

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


def main() -> None:
    source = datasets.DEBIAN_FASHION_MNIST_DIR
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        _atomic_copy(source / name, HERE / name)

    train_images = datasets.read_idx(source / "train-images-idx3-ubyte.gz")
    train_labels = datasets.read_idx(source / "train-labels-idx1-ubyte.gz")
    indices = calibration_indices(train_labels)
    datasets.write_idx(HERE / "calib-images-idx3-ubyte.gz", train_images[indices])
    datasets.write_idx(HERE / "calib-labels-idx1-ubyte.gz", train_labels[indices])

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
