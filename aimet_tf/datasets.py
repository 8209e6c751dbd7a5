"""Real data and trained FP32 models that ship with aimet_tf.

The toolkit's examples, tests and benchmarks need real images and a real
trained networks that work offline. This module provides them:

* Fashion-MNIST (Zalando SE, MIT/Expat licence), read from idx files:

  - ``"test"``: the full 10,000-image test split, bundled in
    ``third_party/fashion_mnist/``;
  - ``"calibration"``: 2,000 images of the *train* split (200 per class,
    chosen with a fixed seed), bundled in the same folder, for computing
    quantization encodings without touching the test split;
  - ``"train"``: the full 60,000-image train split, read from the Debian
    package ``dataset-fashion-mnist``.

* A small MobileNet-style CNN trained on Fashion-MNIST, stored in
  ``aimet_tf/assets/fashion_mnist_cnn.keras`` together with a JSON record of
  how it was trained and the FP32 test accuracy it reached
  (``fashion_mnist_cnn.json``). ``examples/train_fashion_mnist.py`` rebuilds it.

* A small vision transformer (about 206k parameters, 6 encoder blocks) trained on
  Fashion-MNIST, stored in ``aimet_tf/assets/fashion_mnist_vit.keras`` with its record
  ``fashion_mnist_vit.json``; :func:`load_bundled_vit` loads it and ``examples/train_vit.py``
  rebuilds it.

Example:
    >>> from aimet_tf import datasets
    >>> images, labels = datasets.load_fashion_mnist("test")
    >>> images.shape, images.dtype, labels.dtype
    ((10000, 28, 28, 1), dtype('float32'), dtype('int64'))
    >>> model = datasets.load_bundled_model()
    >>> logits = model.predict(images[:8], verbose=0)   # [8, 10] logits
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from aimet_tf import files

if TYPE_CHECKING:
    import keras

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_SPLITS",
    "DEBIAN_FASHION_MNIST_DIR",
    "THIRD_PARTY_DIR",
    "bundled_data_dir",
    "bundled_model_metadata",
    "bundled_model_path",
    "bundled_vit_metadata",
    "bundled_vit_path",
    "load_bundled_model",
    "load_bundled_vit",
    "load_fashion_mnist",
    "read_idx",
    "write_idx",
]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Class names of Fashion-MNIST, indexed by label (0..9)."""

FASHION_MNIST_SPLITS: tuple[str, ...] = ("test", "calibration", "train")
"""Splits accepted by :func:`load_fashion_mnist`."""

DEBIAN_FASHION_MNIST_DIR = pathlib.Path(
    os.environ.get("AIMET_TF_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
)
"""Where the full data set is read from: the Debian package ``dataset-fashion-mnist``'s folder,
or ``$AIMET_TF_FASHION_MNIST_DIR`` (read at import) if set."""

# File name prefixes (before "-images-idx3-ubyte.gz" / "-labels-idx1-ubyte.gz").
_SPLIT_PREFIX = {"test": "t10k", "calibration": "calib", "train": "train"}

# idx type code -> numpy dtype. Multi-byte types are big-endian in idx files.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_IMAGE_SIDE = 28
_NUM_CLASSES = 10


def _repo_root() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parents[1]


THIRD_PARTY_DIR = _repo_root() / "third_party"
"""The repository's ``third_party/`` folder: the data and models that ship with the source tree
(Fashion-MNIST subsets, OpenCV photos, speech features, MLTK models), not with the wheel."""


def bundled_data_dir() -> pathlib.Path:
    """Returns the folder holding the bundled Fashion-MNIST files.

    Returns:
        ``<repo>/third_party/fashion_mnist``.

    Raises:
        FileNotFoundError: If the folder does not exist, which happens when
            aimet_tf was installed as a regular (non-editable) package: the
            data lives in the repository, not in the wheel.
    """
    folder = _repo_root() / "third_party" / "fashion_mnist"
    if not folder.is_dir():
        raise FileNotFoundError(
            "Bundled Fashion-MNIST data not found. Expected the folder "
            f"{folder} (the repository's third_party/fashion_mnist). "
            f"Received: aimet_tf imported from {pathlib.Path(__file__).resolve().parent}. "
            "The data ships with the source tree, not with the wheel: install "
            "aimet_tf from a checkout with `pip install -e .`."
        )
    return folder


def _read_maybe_gzip(path: pathlib.Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(
            f"Could not decompress idx file {path}: the gzip stream is truncated "
            f"or corrupt ({type(exc).__name__}: {exc}). Expected a complete gzip "
            f"file. Received: {len(raw)} compressed bytes. Re-copy the file from "
            "its source (see third_party/fashion_mnist/README.md)."
        ) from exc


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an array from an idx file (the MNIST file format), gzipped or plain.

    The idx layout is: two zero bytes, one type byte (0x08 uint8, 0x09 int8,
    0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), one byte ``ndim``,
    ``ndim`` big-endian uint32 sizes, then the data in C order (big-endian).
    Gzip compression is detected from the content, not from the file name.

    Args:
        path: Path of the idx file (``.gz`` or uncompressed).

    Returns:
        The array, with the dims from the header and a native-endian dtype
        (``uint8`` for Fashion-MNIST images ``[N, 28, 28]`` and labels ``[N]``).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is truncated, has a bad magic number or an
            unknown type code, or has trailing bytes after the data.

    Example:
        >>> labels = read_idx("third_party/fashion_mnist/t10k-labels-idx1-ubyte.gz")
        >>> labels.shape, labels.dtype
        ((10000,), dtype('uint8'))
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"idx file not found. Expected an existing file. Received: path={path}."
        )
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise ValueError(
            f"idx file {path} is truncated: expected a 4-byte magic number. "
            f"Received: {len(data)} bytes. Re-copy the file from its source."
        )
    zero0, zero1, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in _IDX_DTYPES)
        raise ValueError(
            f"Bad idx magic number in {path}. Expected 0x0000TTDD with type TT in "
            f"[{known}]. Received: 0x{data[:4].hex().upper()}. The file is not an "
            "idx file (or is corrupt); check the path."
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(
            f"idx file {path} is truncated in its header: expected {header_size} "
            f"bytes for {ndim} dims. Received: {len(data)} bytes. Re-copy the file."
        )
    shape = tuple(
        int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    )
    dtype = _IDX_DTYPES[type_code]
    expected = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise ValueError(
            f"idx file {path} is {problem}: expected {expected} bytes "
            f"(header {header_size} + shape {shape} x {dtype.itemsize} bytes). "
            f"Received: {len(data)} bytes. Re-copy the file from its source."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool = True) -> None:
    """Writes ``array`` as an idx file, atomically (temp file + rename).

    The gzip header carries no time stamp or file name, so the same array
    always gives the same bytes (and the same sha256).

    Args:
        path: Destination path.
        array: Array whose dtype is one of uint8, int8, int16, int32, float32,
            float64, with at most 255 dims.
        compress: Whether to gzip the file.

    Raises:
        ValueError: If the dtype or rank cannot be stored in an idx file.
    """
    path = pathlib.Path(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes or array.ndim > 255:
        raise ValueError(
            "Cannot write idx file: expected dtype in "
            f"{sorted(str(d) for d in codes)} and ndim <= 255. Received: "
            f"dtype={array.dtype}, ndim={array.ndim}. Cast the array first."
        )
    big_endian = array.astype(native.newbyteorder(">"), copy=False)
    header = bytes([0, 0, codes[native], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(big_endian).tobytes()
    if compress:
        payload = gzip.compress(payload, compresslevel=9, mtime=0)
    files.atomic_write(path, payload)


def _split_files(split: str) -> tuple[pathlib.Path, pathlib.Path]:
    if split not in FASHION_MNIST_SPLITS:
        raise ValueError(
            f"Unknown Fashion-MNIST split. Expected one of {FASHION_MNIST_SPLITS}. "
            f"Received: split={split!r}."
        )
    prefix = _SPLIT_PREFIX[split]
    if split == "train":
        folder = DEBIAN_FASHION_MNIST_DIR
        images = folder / f"{prefix}-images-idx3-ubyte.gz"
        labels = folder / f"{prefix}-labels-idx1-ubyte.gz"
        if not (images.is_file() and labels.is_file()):
            raise FileNotFoundError(
                "The Fashion-MNIST train split is not bundled; it comes from the "
                f"Debian package dataset-fashion-mnist. Expected {images} and "
                f"{labels}. Received: missing. Fix: `apt-get install -y "
                "dataset-fashion-mnist` (or set $AIMET_TF_FASHION_MNIST_DIR to a folder "
                "holding these files), or use split='calibration' (2,000 bundled "
                "train images)."
            )
        return images, labels
    folder = bundled_data_dir()
    return (
        folder / f"{prefix}-images-idx3-ubyte.gz",
        folder / f"{prefix}-labels-idx1-ubyte.gz",
    )


def load_fashion_mnist(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Loads a Fashion-MNIST split as model-ready arrays.

    Images are scaled as ``x = pixel / 255`` so that they lie in [0, 1]; the
    bundled model expects exactly this input (it has no preprocessing layers).

    Args:
        split: ``"test"`` (10,000 bundled test images), ``"calibration"``
            (2,000 bundled train images, 200 per class) or ``"train"``
            (60,000 images from the Debian package ``dataset-fashion-mnist``).

    Returns:
        ``(images, labels)``: images float32 ``[N, 28, 28, 1]`` in [0, 1],
        labels int64 ``[N]`` in 0..9 (names in :data:`FASHION_MNIST_CLASSES`).

    Raises:
        ValueError: If ``split`` is unknown or the files are inconsistent.
        FileNotFoundError: If the bundled folder is missing (use
            ``pip install -e .``) or, for ``"train"``, the Debian package is
            not installed.

    Example:
        >>> x, y = load_fashion_mnist("calibration")
        >>> x.shape, int(y.max())
        ((2000, 28, 28, 1), 9)
    """
    images_path, labels_path = _split_files(split)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
        raise ValueError(
            f"Unexpected Fashion-MNIST image array in {images_path}. Expected shape "
            f"[N, {_IMAGE_SIDE}, {_IMAGE_SIDE}]. Received: {images.shape}."
        )
    if labels.shape != (images.shape[0],):
        raise ValueError(
            f"Fashion-MNIST labels do not match images for split={split!r}. "
            f"Expected shape ({images.shape[0]},). Received: {labels.shape} "
            f"from {labels_path}."
        )
    if labels.size and int(labels.max()) >= _NUM_CLASSES:
        raise ValueError(
            f"Fashion-MNIST labels out of range in {labels_path}. Expected 0..9. "
            f"Received: max label {int(labels.max())}."
        )
    x = (images.astype(np.float32) / np.float32(255.0))[..., np.newaxis]
    return x, labels.astype(np.int64)


_ASSETS_DIR = pathlib.Path(__file__).resolve().parent / "assets"

# Bundled model name -> the example script that trains it (named in "not found" errors).
_ASSET_TRAINERS = {
    "fashion_mnist_cnn": "examples/train_fashion_mnist.py",
    "fashion_mnist_vit": "examples/train_vit.py",
}


def _asset_path(name: str) -> pathlib.Path:
    return _ASSETS_DIR / f"{name}.keras"


def _asset_metadata(path: pathlib.Path, trainer: str) -> dict[str, Any]:
    """Reads the JSON training record next to the bundled ``.keras`` file ``path``.

    Raises:
        FileNotFoundError: If the JSON file is missing; the message names ``trainer``.
    """
    record = path.with_suffix(".json")
    if not record.is_file():
        raise FileNotFoundError(
            f"Bundled model record not found. Expected {record}. Received: missing. "
            f"Regenerate it with `python {trainer}`."
        )
    return json.loads(record.read_text(encoding="utf-8"))


def _load_asset_model(path: pathlib.Path, trainer: str) -> keras.Model:
    """Loads the bundled ``.keras`` file ``path`` uncompiled (a new model each call).

    Raises:
        FileNotFoundError: If the file is missing; the message names ``trainer``.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"Bundled model not found. Expected {path}. Received: missing. "
            f"Regenerate it with `python {trainer}`, or "
            "reinstall aimet_tf with its package data."
        )
    import keras  # Deferred: importing keras/TF is slow and not needed for data.

    import aimet_tf.layers  # noqa: F401  (registers the aimet_tf layers the file may use)

    return keras.saving.load_model(path, compile=False)


def bundled_model_path() -> pathlib.Path:
    """Returns the path of the bundled trained FP32 Fashion-MNIST CNN.

    Returns:
        ``aimet_tf/assets/fashion_mnist_cnn.keras`` (may not exist if the
        assets were stripped; :func:`load_bundled_model` checks).
    """
    return _asset_path("fashion_mnist_cnn")


def bundled_model_metadata() -> dict[str, Any]:
    """Returns the training record of the bundled model.

    Returns:
        The parsed ``fashion_mnist_cnn.json``: ``fp32_test_accuracy`` (fraction
        in [0, 1] on the 10,000 test images), ``params``, ``epochs``,
        ``seconds``, ``command``, versions and date, among others.

    Raises:
        FileNotFoundError: If the JSON file is missing.
    """
    return _asset_metadata(bundled_model_path(), _ASSET_TRAINERS["fashion_mnist_cnn"])


def load_bundled_model() -> keras.Model:
    """Loads the bundled trained FP32 Fashion-MNIST CNN (uncompiled).

    The model maps float32 images ``[N, 28, 28, 1]`` in [0, 1] to 10 logits
    (no softmax). It is a MobileNet-style edge CNN: Conv+BN+ReLU6 stem,
    depthwise-separable blocks (DepthwiseConv2D+BN+ReLU6+Conv1x1+BN+ReLU6),
    residual ``Add`` layers, global average pooling and a Dense head.

    Returns:
        A new ``keras.Model`` each call (safe to modify).

    Raises:
        FileNotFoundError: If the ``.keras`` file is missing.

    Example:
        >>> model = load_bundled_model()
        >>> model.output_shape
        (None, 10)
    """
    return _load_asset_model(bundled_model_path(), _ASSET_TRAINERS["fashion_mnist_cnn"])


def bundled_vit_path() -> pathlib.Path:
    """Returns the path of the bundled trained FP32 Fashion-MNIST vision transformer.

    Returns:
        ``aimet_tf/assets/fashion_mnist_vit.keras`` (may not exist if the
        assets were stripped; :func:`load_bundled_vit` checks).
    """
    return _asset_path("fashion_mnist_vit")


def bundled_vit_metadata() -> dict[str, Any]:
    """Returns the training record of the bundled vision transformer.

    Returns:
        The parsed ``fashion_mnist_vit.json``: ``fp32_test_accuracy`` (fraction
        in [0, 1] on the 10,000 test images), ``params``, ``architecture``,
        ``epochs``, ``seconds``, ``command``, ``sha256``, versions and date, among others.

    Raises:
        FileNotFoundError: If the JSON file is missing.
    """
    return _asset_metadata(bundled_vit_path(), _ASSET_TRAINERS["fashion_mnist_vit"])


def load_bundled_vit() -> keras.Model:
    """Loads the bundled trained FP32 Fashion-MNIST vision transformer (uncompiled).

    The model (:func:`aimet_tf.vit.vit_model`) maps float32 images ``[N, 28, 28, 1]`` in
    [0, 1] to 10 logits (no softmax): a 4x4 ``Conv2D`` patch embedding to 49 tokens of
    width 64, a learned class token (:class:`aimet_tf.layers.ClassToken`) and position
    embeddings (:class:`aimet_tf.layers.PositionEmbedding`), 6 pre-norm encoder blocks
    (``LayerNormalization``, 4-head ``MultiHeadAttention``, GELU ``Dense`` MLP, ``Add``), a final
    ``LayerNormalization``, the class token (``Cropping1D`` + ``Flatten``) and a ``Dense`` head.

    Returns:
        A new ``keras.Model`` each call (safe to modify).

    Raises:
        FileNotFoundError: If the ``.keras`` file is missing.

    Example:
        >>> model = load_bundled_vit()
        >>> model.output_shape
        (None, 10)
    """
    return _load_asset_model(bundled_vit_path(), _ASSET_TRAINERS["fashion_mnist_vit"])
