"""Tests for aimet_tf.datasets: the bundled Fashion-MNIST files and the bundled FP32 model."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pathlib
import re

import numpy as np
import pytest

from aimet_tf import datasets

_DATA_DIR = pathlib.Path(datasets.__file__).resolve().parents[1] / "third_party" / "fashion_mnist"
_README = _DATA_DIR / "README.md"
_SHA_ROW = re.compile(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \|$", re.MULTILINE)


def _readme_checksums() -> dict[str, tuple[int, str]]:
    rows = _SHA_ROW.findall(_README.read_text(encoding="utf-8"))
    return {name: (int(size), sha) for name, size, sha in rows}


def _readme_calibration_indices() -> np.ndarray:
    text = _README.read_text(encoding="utf-8")
    section = text.split("## Calibration subset", 1)[1]
    block = re.search(r"```text\n(.*?)```", section, re.DOTALL)
    assert block is not None, "README lacks the ```text block of calibration indices"
    return np.array(block.group(1).split(), dtype=np.int64)


@pytest.mark.parametrize(
    "prefix, count, per_class",
    [("t10k", 10_000, 1_000), ("calib", 2_000, 200)],
)
def test_read_idx_bundled_files(prefix: str, count: int, per_class: int) -> None:
    images = datasets.read_idx(_DATA_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = datasets.read_idx(_DATA_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    assert images.shape == (count, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (count,) and labels.dtype == np.uint8
    assert labels.min() == 0 and labels.max() == 9
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, per_class))
    assert 0 < images.mean() < 255  # real pixels, not an all-zero or saturated array


@pytest.mark.parametrize("split, count", [("test", 10_000), ("calibration", 2_000)])
def test_load_fashion_mnist_bundled_splits(split: str, count: int) -> None:
    x, y = datasets.load_fashion_mnist(split)
    assert x.shape == (count, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (count,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert len(datasets.FASHION_MNIST_CLASSES) == 10 and int(y.max()) == 9


def test_bundled_files_match_readme_sha256() -> None:
    table = _readme_checksums()
    on_disk = sorted(p.name for p in _DATA_DIR.glob("*.gz"))
    assert sorted(table) == on_disk == [
        "calib-images-idx3-ubyte.gz",
        "calib-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    for name, (size, sha) in table.items():
        data = (_DATA_DIR / name).read_bytes()
        assert len(data) == size, name
        assert hashlib.sha256(data).hexdigest() == sha, name


def _make_bundle_module():
    spec = importlib.util.spec_from_file_location("make_bundle", _DATA_DIR / "make_bundle.py")
    make_bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_bundle)
    return make_bundle


def test_calibration_subset_is_the_documented_train_images() -> None:
    # Uses the bundled train labels (byte for byte the Debian package's file, sha256 checked
    # above and recorded in make_bundle.SOURCE_SHA256), not the 26 MB train images.
    indices = _readme_calibration_indices()
    assert indices.shape == (2_000,)
    assert np.all(np.diff(indices) > 0) and indices[0] >= 0 and indices[-1] < 60_000

    make_bundle = _make_bundle_module()
    labels_file = _DATA_DIR / "train-labels-idx1-ubyte.gz"
    assert (
        hashlib.sha256(labels_file.read_bytes()).hexdigest()
        == make_bundle.SOURCE_SHA256["train-labels-idx1-ubyte.gz"]
    )
    train_y = datasets.read_idx(labels_file)
    assert train_y.shape == (60_000,)
    np.testing.assert_array_equal(np.bincount(train_y, minlength=10), np.full(10, 6_000))
    _, calib_y = datasets.load_fashion_mnist("calibration")
    np.testing.assert_array_equal(make_bundle.calibration_indices(train_y), indices)
    np.testing.assert_array_equal(train_y[indices], calib_y)


def test_make_bundle_takes_the_calibration_images_from_the_train_split(tmp_path: pathlib.Path) -> None:
    # A synthetic source folder with the Debian package's file names: each train image is filled
    # with its own index (mod 256), so the bundle shows exactly which images it took.
    make_bundle = _make_bundle_module()
    source, out = tmp_path / "source", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    rng = np.random.default_rng(0)
    train_y = np.repeat(np.arange(10, dtype=np.uint8), 300)
    rng.shuffle(train_y)
    train_x = np.broadcast_to((np.arange(3_000) % 256).astype(np.uint8)[:, None, None], (3_000, 28, 28))
    datasets.write_idx(source / "train-images-idx3-ubyte.gz", np.ascontiguousarray(train_x))
    datasets.write_idx(source / "train-labels-idx1-ubyte.gz", train_y)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (source / name).write_bytes((_DATA_DIR / name).read_bytes())

    indices = make_bundle.build(source, out)
    np.testing.assert_array_equal(indices, make_bundle.calibration_indices(train_y))
    calib_x = datasets.read_idx(out / "calib-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(calib_x, train_x[indices])
    np.testing.assert_array_equal(datasets.read_idx(out / "calib-labels-idx1-ubyte.gz"), train_y[indices])
    np.testing.assert_array_equal(np.bincount(train_y[indices], minlength=10), np.full(10, 200))
    for name in make_bundle.COPIED:
        assert (out / name).read_bytes() == (source / name).read_bytes(), name

    with pytest.raises(ValueError, match=r"Expected sha256 b0564c3e.*Received: sha256="):
        make_bundle.check_source(source)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [True, False])
def test_write_idx_round_trip(tmp_path: pathlib.Path, dtype: type, compress: bool) -> None:
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    path = tmp_path / "a.idx"
    datasets.write_idx(path, array, compress=compress)
    first = path.read_bytes()
    assert first.startswith(b"\x1f\x8b") == compress
    back = datasets.read_idx(path)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, array)
    datasets.write_idx(path, array, compress=compress)
    assert path.read_bytes() == first  # deterministic bytes (gzip mtime 0)
    assert [p.name for p in tmp_path.iterdir()] == ["a.idx"]  # no temp file left behind


def test_write_idx_rejects_unsupported_dtype(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"expected dtype in .*Received: dtype=int64"):
        datasets.write_idx(tmp_path / "a.idx", np.zeros(3, dtype=np.int64))


def _labels_bytes() -> bytes:
    return gzip.decompress((_DATA_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda raw: raw[:5_000], r"truncated: expected 10008 bytes .*Received: 5000 bytes"),
        (lambda raw: raw + b"\x00", r"longer than its header says"),
        (lambda raw: raw[:6], r"truncated in its header"),
        (lambda raw: raw[:2], r"truncated: expected a 4-byte magic number"),
        (lambda raw: b"\x12\x34" + raw[2:], r"Bad idx magic number .*Received: 0x12340801"),
        (lambda raw: raw[:2] + b"\x07" + raw[3:], r"Bad idx magic number .*Received: 0x00000701"),
        (lambda raw: gzip.compress(raw, mtime=0)[:-100], r"gzip stream is truncated or corrupt"),
    ],
    ids=["short-data", "trailing", "short-header", "short-magic", "bad-magic", "bad-type", "cut-gzip"],
)
def test_read_idx_rejects_damaged_files(tmp_path: pathlib.Path, content, message: str) -> None:
    path = tmp_path / "damaged-labels-idx1-ubyte"
    path.write_bytes(content(_labels_bytes()))
    with pytest.raises(ValueError, match=message):
        datasets.read_idx(path)


def test_read_idx_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="idx file not found"):
        datasets.read_idx(tmp_path / "nope.gz")


def test_unknown_split() -> None:
    with pytest.raises(ValueError, match=r"Expected one of \('test', 'calibration', 'train'\).*'val'"):
        datasets.load_fashion_mnist("val")


def test_missing_bundled_folder_says_editable_install(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "_repo_root", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"pip install -e \."):
        datasets.load_fashion_mnist("test")


def test_the_tests_never_read_the_debian_train_split() -> None:
    # tests/conftest.py points the full data set's folder at a missing path, so a test that
    # needs the 60k train split fails on this machine too, not only on a fresh one.
    assert not datasets.DEBIAN_FASHION_MNIST_DIR.exists()
    assert str(datasets.DEBIAN_FASHION_MNIST_DIR) == os.environ["AIMET_TF_FASHION_MNIST_DIR"]
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        datasets.load_fashion_mnist("train")


def test_missing_debian_package_names_apt_get(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        datasets.load_fashion_mnist("train")


def test_bundled_model_record_matches_file() -> None:
    record = datasets.bundled_model_metadata()
    path = datasets.bundled_model_path()
    assert path.name == "fashion_mnist_cnn.keras"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
    assert record["fp32_test_accuracy"] >= 0.90
    assert 80_000 <= record["params"] <= 130_000
    for key in ("epochs", "seconds", "command", "keras_version", "tensorflow_version", "date"):
        assert key in record, key


def test_bundled_model_reaches_recorded_accuracy() -> None:
    import keras

    record = datasets.bundled_model_metadata()
    model = datasets.load_bundled_model()
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    assert model.count_params() == record["params"]
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Conv2D", "DepthwiseConv2D", "BatchNormalization", "ReLU", "Add", "Dense"} <= kinds
    assert model.layers[-1].activation is keras.activations.linear  # logits, no softmax

    x, y = datasets.load_fashion_mnist("test")
    logits = model.predict(x[:1000], batch_size=500, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == y[:1000]))
    # Same weights, same images: only a near-tie flipping under other CPU kernels may differ.
    assert accuracy == pytest.approx(record["fp32_test_accuracy_first_1000"], abs=0.003)
    # The first 1000 images must also agree with the full-test figure (binomial s.e. ~1 point).
    assert accuracy >= record["fp32_test_accuracy"] - 0.03
