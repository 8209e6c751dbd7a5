"""Real inputs for the MLPerf Tiny models of `aimet_tf/testing/mltk_models.py`.

None of the models' data sets (CIFAR-10, COCO person crops, Speech Commands) can be had offline,
so the benchmarks measure how well a quantized model agrees with its FP32 parent on inputs that
are real, or as close to real as this machine allows:

* **Image models** (`resnet8`: CIFAR-10 32x32x3; `vww_mobilenetv1`: person / no person 96x96x3)
  get natural photographs from OpenCV's sample data (Debian package `opencv-doc`), resized with
  anti-aliasing to the model's size: the whole frame squashed to a square (how the VWW data set
  was made: "resized with antialias filtering, no aspect ratio preservation"), the centre square
  crop, and at 32x32 also a zoomed centre crop (70% of the short side, closer to CIFAR's framing).
  `real_inputs` appends the horizontal mirror of each image (a standard, label-preserving
  augmentation of both training recipes). The resized uint8 pixels are bundled in
  `third_party/opencv_samples/photos_{32,96}.npz`.
* **Keyword-spotting models** (`ds_cnn`, `mobilenetv2_kws`) get spoken words synthesised with
  espeak-ng (Debian package `espeak-ng`): the ten Speech Commands keywords, ten other words of
  that data set (the "unknown" class) and noise-only clips (the "silence" class), said by 16
  voice variants at several speeds and pitches, resampled to 16 kHz and mixed with low white
  noise. Their features come from the TFLite-Micro audio frontend (the C library MLTK's
  `AudioFeatureGenerator` wraps), which TensorFlow ships as the op
  `tensorflow.lite.experimental.microfrontend ... audio_microfrontend`; on these clips it equals
  MLTK's own generator in 99.7-99.8% of values. Only the features are bundled, in
  `third_party/speech_samples/keywords.npz`.

What each model takes (from the MLTK model specifications inside the `.mltk.zip` archives and the
int8 `.tflite` input quantization, see `aimet_tf/testing/mltk_models.py`):

| model | input | float domain | int8 .tflite input |
|---|---|---|---|
| `resnet8` | 32x32x3 RGB | (pixel - 128) / 128, in [-1, 1) | int8, scale 1/128, zero point 0 (= pixel - 128) |
| `vww_mobilenetv1` | 96x96x3 RGB | raw pixel values 0..255 | float (quantize op inside: scale 1, zero point -128) |
| `ds_cnn` | 50x10x1 spectrogram | 8-bit spectrogram image 0..255 (see below) | float (quantize op inside: scale 0.881, zero point -128) |
| `mobilenetv2_kws` | 59x49x1 spectrogram | TFLM "micro features" int8 values -128..127 | int8, scale 1, zero point 0 |

`mobilenetv2_kws` frontend (its spec, exact): 16 kHz, 1.2 s clip, 30 ms window, 20 ms step,
49 mel channels 125..3999 Hz, noise reduction on (smoothing bits 10, even 0.025, odd 0.06,
min signal remaining 0.03), PCAN off, log scale shift 6; uint16 output u mapped to int8 by
`clip(round(u * 256 / 666) - 128, -128, 127)` (TFLM's micro_features_generator; matches MLTK's
int8 output exactly).

`ds_cnn` frontend (**an approximation**): the spec names the TFLM microfrontend with a 30 ms
window, 20 ms step, 10 channels, 4 kHz upper limit, but its training data is a pre-computed
archive of spectrogram *images* whose uint16 -> 8-bit mapping is not published (the tflite's
calibrated input range is [0, 224.7]). Used here: 1.01 s clip (50 frames), 10 channels
125..4000 Hz, noise reduction and PCAN off, log shift 6, then `clip(u * DS_CNN_FEATURE_SCALE +
DS_CNN_FEATURE_OFFSET, 0, 255)`. The affine map comes from `fit_bn_matched_affine` (a = 0.224,
b = -42.3 on the bundled clips, rounded): the batch statistics of the first convolution's output
then match the moving mean / variance of the BatchNormalization after it. On the photos, the same
fit recovers the known domains of the image models to within ~30% (VWW: a = 0.91, b = -2.6 for
the true 1, 0); on these synthetic clips it is cruder: for MobileNetV2-KWS, whose frontend is
exact, it says a = 1.7 (espeak-ng clips are not Speech Commands recordings), so the constants
give a plausible domain, not MLTK's. Among the frontends tried (noise reduction on / off, PCAN
on / off, frequency or time axis flipped) this one made the FP32 model recognise the most
synthesised words, and for maps whose output mean stays near the fitted one (a = 0.2..0.35 with
matching offsets) that accuracy stays at 73-76%: the results do not hinge on the constants.

Rebuild the bundles (needs `apt-get download opencv-doc`, `apt-get install -y espeak-ng`)::

    python -m aimet_tf.testing.real_inputs --build=photos --opencv_doc=/path/opencv-doc_4.6.0+dfsg-12_all.deb
    python -m aimet_tf.testing.real_inputs --build=speech
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pathlib
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence

import numpy as np

from aimet_tf.datasets import THIRD_PARTY_DIR

__all__ = [
    "DS_CNN_FEATURE_OFFSET",
    "DS_CNN_FEATURE_SCALE",
    "DS_CNN_FRONTEND",
    "FrontendSettings",
    "KEYWORDS",
    "MOBILENETV2_KWS_FRONTEND",
    "NATURAL_PHOTOS",
    "OPENCV_SAMPLES_DIR",
    "PERSON_PHOTOS",
    "SPEECH_SAMPLES_DIR",
    "UNKNOWN_WORDS",
    "build_photo_bundle",
    "build_speech_bundle",
    "describe_inputs",
    "fit_bn_matched_affine",
    "microfrontend",
    "real_inputs",
    "real_labels",
    "synthesize_word",
]

OPENCV_SAMPLES_DIR = THIRD_PARTY_DIR / "opencv_samples"
SPEECH_SAMPLES_DIR = THIRD_PARTY_DIR / "speech_samples"

_MODEL_NAMES = ("resnet8", "ds_cnn", "vww_mobilenetv1", "mobilenetv2_kws")

# --------------------------------------------------------------------------------------------
# Photos
# --------------------------------------------------------------------------------------------

# Camera photographs among opencv-doc's samples/data (renders, logos, drawings, text scans,
# paintings and synthetic test patterns left out; of the stereo-calibration series only the left
# camera's frames, the right camera's being near-duplicates). Order puts varied scenes first, so
# that a short prefix of `real_inputs` is already diverse.
NATURAL_PHOTOS: tuple[str, ...] = (
    "messi5.jpg", "apple.jpg", "building.jpg", "basketball1.png", "baboon.jpg", "fruits.jpg",
    "left01.jpg", "butterfly.jpg", "chicky_512.png", "home.jpg", "squirrel_cls.jpg",
    "aero1.jpg", "orange.jpg", "leuvenA.jpg", "board.jpg", "box_in_scene.png", "aloeL.jpg",
    "graf1.png", "licenseplate_motion.jpg", "smarties.png", "pca_test1.jpg", "rubberwhale1.png",
    "stuff.jpg", "left.jpg", "basketball2.png", "ela_original.jpg", "box.png", "sudoku.png",
    "text_defocus.jpg", "text_motion.jpg", "aero3.jpg", "aloeR.jpg", "graf3.png", "leuvenB.jpg",
    "rubberwhale2.png", "right.jpg",
    "left02.jpg", "left03.jpg", "left04.jpg", "left05.jpg", "left06.jpg", "left07.jpg",
    "left08.jpg", "left09.jpg", "left11.jpg", "left12.jpg", "left13.jpg", "left14.jpg",
)

# Photos showing a person (hand-labelled): the calibration series (a man holding a chessboard),
# the basketball player and the footballer.
PERSON_PHOTOS: frozenset[str] = frozenset(
    {"messi5.jpg", "basketball1.png", "basketball2.png"}
    | {f"left{i:02d}.jpg" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)}
)

# Crops per output size: "squash" = whole frame, "centre" = centre square, "zoom" = centre
# square of 70% of the short side.
_PHOTO_VARIANTS: dict[int, tuple[str, ...]] = {32: ("squash", "centre", "zoom"), 96: ("squash", "centre")}
_ZOOM_FRACTION = 0.7
_OPENCV_DATA_IN_DEB = "./usr/share/doc/opencv-doc/examples/data"

# --------------------------------------------------------------------------------------------
# Speech
# --------------------------------------------------------------------------------------------

KEYWORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_WORDS: tuple[str, ...] = (
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
)
_SILENCE = "_silence_"

# espeak-ng voice (language + variant), speaking rate in words per minute, pitch 0..99.
_VOICES: tuple[tuple[str, int, int], ...] = (
    ("en-us", 150, 50), ("en-us+f2", 170, 60), ("en-gb+m3", 140, 40), ("en-gb-scotland+f4", 160, 55),
    ("en-029+m5", 130, 45), ("en-gb-x-rp+f1", 180, 65), ("en-us+m7", 150, 35), ("en-gb-x-gbclan+f5", 140, 70),
    ("en-gb-x-gbcwmd+m1", 170, 50), ("en-us+f3", 130, 60), ("en-gb+m2", 190, 45), ("en-us+m4", 160, 40),
    ("en-gb-x-rp+m6", 150, 55), ("en-029+f2", 170, 65), ("en-us+croak", 140, 50), ("en-gb+klatt", 160, 50),
)
_UNKNOWN_VOICES_PER_WORD = 4
_SILENCE_CLIPS = 16
_SAMPLE_RATE_HZ = 16000
_SPEECH_PEAK_DBFS = (-12.0, -3.0)  # uniform range of the word's peak level
_NOISE_RMS_DBFS = (-60.0, -45.0)  # uniform range of the background white noise
_WORD_JITTER_S = 0.05  # random shift of the word around the clip centre

# Class orders of the two keyword models (their MLTK specs).
_DS_CNN_CLASSES = KEYWORDS + ("unknown", "_background_noise_")
_MOBILENETV2_KWS_CLASSES = ("left", "right", "up", "down", "stop", "go", "_unknown_", "_silence_")
_VWW_CLASSES = ("person", "non_person")


@dataclasses.dataclass(frozen=True)
class FrontendSettings:
    """Settings of the TFLite-Micro audio frontend (MLTK `AudioFeatureGeneratorSettings` names).

    Attributes:
        clip_samples: samples per clip at 16 kHz; frames = 1 + (clip_samples - window) // step.
        window_ms: analysis window (Hann) length.
        step_ms: hop between windows.
        channels: mel filterbank channels.
        lower_hz: lower band limit of the filterbank.
        upper_hz: upper band limit of the filterbank.
        noise_reduction: whether spectral-subtraction noise reduction is applied.
        min_signal_remaining: noise reduction floor (fraction of the signal kept).
        pcan: whether per-channel amplitude normalisation (PCAN) gain control is applied.
        log_scale_shift: output = 2**shift * ln(filterbank energy), as uint16.
    """

    clip_samples: int
    window_ms: int = 30
    step_ms: int = 20
    channels: int = 10
    lower_hz: float = 125.0
    upper_hz: float = 4000.0
    noise_reduction: bool = False
    min_signal_remaining: float = 0.05
    pcan: bool = False
    log_scale_shift: int = 6

    @property
    def frames(self) -> int:
        """Number of output frames per clip."""
        window = self.window_ms * _SAMPLE_RATE_HZ // 1000
        step = self.step_ms * _SAMPLE_RATE_HZ // 1000
        return 1 + (self.clip_samples - window) // step


# keyword_spotting_mobilenetv2.py (MLTK 0.20.0): exact.
MOBILENETV2_KWS_FRONTEND = FrontendSettings(
    clip_samples=19200, channels=49, upper_hz=3999.0, noise_reduction=True, min_signal_remaining=0.03
)
# keyword_spotting.py (MLTK 0.20.0) names window 30 ms, step 20 ms, 10 bins, 4 kHz; the 50-frame
# input needs 1.01 s; noise reduction / PCAN off is an approximation (see the module docstring).
DS_CNN_FRONTEND = FrontendSettings(clip_samples=16160, channels=10, upper_hz=4000.0)
# uint16 frontend output -> the DS-CNN's 8-bit spectrogram-image domain; fit_bn_matched_affine()
# on the bundled clips gave a = 0.224, b = -42.3.
DS_CNN_FEATURE_SCALE = 0.22
DS_CNN_FEATURE_OFFSET = -40.0


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _check_model_name(model_name: str) -> None:
    if model_name not in _MODEL_NAMES:
        raise ValueError(
            f"Unknown MLTK model for real inputs. Expected one of {_MODEL_NAMES}. "
            f"Received: model_name={model_name!r}"
        )


def _load_bundle(path: pathlib.Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(
            f"Bundled real-input file is missing: {path}. Expected it in the repository; "
            "rebuild it with `python -m aimet_tf.testing.real_inputs --build=photos|speech` "
            "(see aimet_tf/testing/real_inputs.py)."
        )
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _photos(size: int) -> dict[str, np.ndarray]:
    return _load_bundle(OPENCV_SAMPLES_DIR / f"photos_{size}.npz")


def _speech() -> dict[str, np.ndarray]:
    return _load_bundle(SPEECH_SAMPLES_DIR / "keywords.npz")


def _with_mirrors(images: np.ndarray) -> np.ndarray:
    return np.concatenate([images, images[:, :, ::-1, :]], axis=0)


def real_inputs(model_name: str) -> np.ndarray:
    """Returns a batch of real inputs in the float model's input domain.

    Args:
        model_name: one of "resnet8", "ds_cnn", "vww_mobilenetv1", "mobilenetv2_kws".

    Returns:
        float32 array [N, H, W, C]: resnet8 [288, 32, 32, 3] in [-1, 1) ((pixel - 128) / 128);
        vww_mobilenetv1 [192, 96, 96, 3] pixels 0..255; ds_cnn [216, 50, 10, 1] in [0, 255];
        mobilenetv2_kws [216, 59, 49, 1] integer values -128..127. Image batches hold the
        bundled crops followed by their horizontal mirrors.

    Raises:
        ValueError: for an unknown model name.
        FileNotFoundError: if the bundled data file is missing.

    Example:
        >>> x = real_inputs("resnet8")
        >>> x.shape, float(x.min()) >= -1.0
        ((288, 32, 32, 3), True)
    """
    _check_model_name(model_name)
    if model_name == "resnet8":
        pixels = _with_mirrors(_photos(32)["images"]).astype(np.float32)
        return (pixels - 128.0) / 128.0
    if model_name == "vww_mobilenetv1":
        return _with_mirrors(_photos(96)["images"]).astype(np.float32)
    speech = _speech()
    if model_name == "ds_cnn":
        features = speech["ds_cnn_uint16"].astype(np.float32)
        image = np.clip(features * DS_CNN_FEATURE_SCALE + DS_CNN_FEATURE_OFFSET, 0.0, 255.0)
        return image[..., np.newaxis].astype(np.float32)
    return speech["mobilenetv2_kws_int8"].astype(np.float32)[..., np.newaxis]


def real_labels(model_name: str) -> np.ndarray:
    """Returns the expected class index of each input of `real_inputs`, -1 where unknown.

    Keyword models: the spoken word mapped to the model's classes (words a model does not know go
    to its unknown class; noise-only clips to its silence / background-noise class).
    `vww_mobilenetv1`: 0 (person) or 1 (non_person), hand-labelled. `resnet8`: -1 everywhere (the
    photos are mostly not of CIFAR-10 classes).

    Args:
        model_name: as for `real_inputs`.

    Returns:
        int64 array [N], aligned with `real_inputs(model_name)`.
    """
    _check_model_name(model_name)
    if model_name == "resnet8":
        return np.full(2 * len(_photos(32)["names"]), -1, dtype=np.int64)
    if model_name == "vww_mobilenetv1":
        names = _photos(96)["names"]
        labels = np.array([0 if str(n) in PERSON_PHOTOS else 1 for n in names], dtype=np.int64)
        return np.concatenate([labels, labels])
    classes = _DS_CNN_CLASSES if model_name == "ds_cnn" else _MOBILENETV2_KWS_CLASSES
    unknown, silence = len(classes) - 2, len(classes) - 1
    labels = []
    for word in _speech()["words"]:
        word = str(word)
        if word == _SILENCE:
            labels.append(silence)
        else:
            labels.append(classes.index(word) if word in classes[:unknown] else unknown)
    return np.array(labels, dtype=np.int64)


def describe_inputs(model_name: str) -> str:
    """Returns one line for BENCHMARKS.md saying what `real_inputs(model_name)` holds."""
    _check_model_name(model_name)
    if model_name in ("resnet8", "vww_mobilenetv1"):
        size = 32 if model_name == "resnet8" else 96
        photos = _photos(size)
        n_photos = len(set(photos["names"].tolist()))
        crops = ", ".join(_PHOTO_VARIANTS[size])
        domain = "(pixel-128)/128" if model_name == "resnet8" else "pixels 0..255"
        return (
            f"{2 * len(photos['names'])} views of {n_photos} natural photos from OpenCV's sample "
            f"data (opencv-doc 4.6.0): {crops} crops resized to {size}x{size} with anti-aliasing, "
            f"plus horizontal mirrors; {domain}"
            + ("; no ground-truth labels" if model_name == "resnet8" else
               f"; hand-labelled: {len(PERSON_PHOTOS)} of {n_photos} photos show a person")
        )
    speech = _speech()
    words = [str(w) for w in speech["words"]]
    n_kw = sum(w in KEYWORDS for w in words)
    n_unknown = sum(w in UNKNOWN_WORDS for w in words)
    n_silence = sum(w == _SILENCE for w in words)
    if model_name == "ds_cnn":
        frontend = (
            "TFLM microfrontend 50x10 (30/20 ms, 125-4000 Hz, no NR/PCAN), "
            f"mapped to 0..255 by {DS_CNN_FEATURE_SCALE}*u{DS_CNN_FEATURE_OFFSET:+g} (approximate)"
        )
    else:
        frontend = "MLTK's exact frontend 59x49 int8 (30/20 ms, 49 mel 125-3999 Hz, noise reduction)"
    return (
        f"{len(words)} espeak-ng synthesised clips ({n_kw} keywords by {len(_VOICES)} voices, "
        f"{n_unknown} other words, {n_silence} noise-only) at 16 kHz with white noise; {frontend}"
    )


# --------------------------------------------------------------------------------------------
# Build-time helpers (not needed to load the bundles)
# --------------------------------------------------------------------------------------------


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _opencv_data_dir(source: pathlib.Path, scratch: pathlib.Path) -> pathlib.Path:
    if source.is_dir():
        return source
    if source.suffix != ".deb":
        raise ValueError(
            "Expected the opencv-doc .deb or its extracted examples/data folder. "
            f"Received: source={source} (get it with `apt-get download opencv-doc`)"
        )
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(source)], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(scratch), _OPENCV_DATA_IN_DEB], input=tar, check=True)
    return scratch / _OPENCV_DATA_IN_DEB


def _crop_box(height: int, width: int, variant: str) -> tuple[int, int, int, int]:
    if variant == "squash":
        return 0, 0, height, width
    side = min(height, width)
    if variant == "zoom":
        side = int(round(_ZOOM_FRACTION * side))
    return (height - side) // 2, (width - side) // 2, side, side


def build_photo_bundle(source: str | pathlib.Path, out_dir: str | pathlib.Path = OPENCV_SAMPLES_DIR) -> dict[str, str]:
    """Resizes `NATURAL_PHOTOS` from opencv-doc and writes `photos_{32,96}.npz`.

    Each photo is decoded to RGB, cropped per variant (`squash` whole frame, `centre` square,
    `zoom` 70% centre square), resized with `tf.image.resize(bilinear, antialias=True)` and
    rounded to uint8. The npz holds `images` uint8 [N, S, S, 3], `names` and `variants` [N]
    (variant-major order, photos in `NATURAL_PHOTOS` order).

    Args:
        source: the `opencv-doc_*.deb` file or its extracted `examples/data` folder.
        out_dir: destination folder.

    Returns:
        sha256 per written file name.
    """
    import tensorflow as tf  # build-time only

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checksums = {}
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = _opencv_data_dir(pathlib.Path(source), pathlib.Path(scratch))
        decoded = {
            name: tf.io.decode_image((data_dir / name).read_bytes(), channels=3, expand_animations=False)
            for name in NATURAL_PHOTOS
        }
        for size, variants in _PHOTO_VARIANTS.items():
            images, names, kinds = [], [], []
            for variant in variants:
                for name in NATURAL_PHOTOS:
                    image = decoded[name]
                    top, left, h, w = _crop_box(int(image.shape[0]), int(image.shape[1]), variant)
                    crop = tf.cast(image[top : top + h, left : left + w], tf.float32)
                    resized = tf.image.resize(crop, (size, size), method="bilinear", antialias=True)
                    images.append(np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8))
                    names.append(name)
                    kinds.append(variant)
            path = out_dir / f"photos_{size}.npz"
            np.savez_compressed(path, images=np.stack(images), names=np.array(names), variants=np.array(kinds))
            checksums[path.name] = _sha256(path)
    return checksums


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise ValueError(
                "Expected 16-bit mono WAV from espeak-ng. Received: "
                f"sample width={wav.getsampwidth()}, channels={wav.getnchannels()}"
            )
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return pcm.astype(np.float64) / 32768.0, wav.getframerate()


def _resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling by truncating / zero-padding the spectrum (clips are short)."""
    n_out = int(round(len(signal) * rate_out / rate_in))
    spectrum = np.fft.rfft(signal)
    bins = n_out // 2 + 1
    spectrum = spectrum[:bins] if len(spectrum) >= bins else np.pad(spectrum, (0, bins - len(spectrum)))
    return np.fft.irfft(spectrum, n_out) * (n_out / len(signal))


def synthesize_word(word: str, voice: str, words_per_minute: int, pitch: int) -> np.ndarray:
    """Says `word` with espeak-ng; returns float64 audio at 16 kHz in [-1, 1].

    Raises:
        FileNotFoundError: if espeak-ng is not installed (`apt-get install -y espeak-ng`).
    """
    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng is not installed. Install it with `apt-get install -y espeak-ng`.")
    command = ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-p", str(pitch), "--stdout", word]
    audio, rate = _read_wav(subprocess.run(command, check=True, capture_output=True).stdout)
    return _resample(audio, rate, _SAMPLE_RATE_HZ)


def _trim(audio: np.ndarray, threshold_db: float = -40.0) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > np.max(np.abs(audio)) * 10 ** (threshold_db / 20))
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio


def _mix(word_audio: np.ndarray | None, length: int, rng: np.random.Generator) -> np.ndarray:
    """Centres the word (jittered) in `length` samples of white noise; returns int16 PCM."""
    clip = rng.normal(0.0, 10 ** (rng.uniform(*_NOISE_RMS_DBFS) / 20), length)
    if word_audio is not None:
        word = _trim(word_audio)[:length]
        word = word / np.max(np.abs(word)) * 10 ** (rng.uniform(*_SPEECH_PEAK_DBFS) / 20)
        jitter = int(rng.uniform(-_WORD_JITTER_S, _WORD_JITTER_S) * _SAMPLE_RATE_HZ)
        start = int(np.clip((length - len(word)) // 2 + jitter, 0, length - len(word)))
        clip[start : start + len(word)] += word
    return np.clip(np.round(clip * 32768.0), -32768, 32767).astype(np.int16)


def microfrontend(pcm: np.ndarray, settings: FrontendSettings) -> np.ndarray:
    """Runs the TFLite-Micro audio frontend (TensorFlow's C implementation) on int16 audio.

    The pipeline: Hann window, 512-point FFT, mel-spaced triangular filterbank (sqrt of the
    energy), optional noise reduction and PCAN, then u = round(2**shift * ln(8 * filterbank)).

    Args:
        pcm: int16 mono samples at 16 kHz, length `settings.clip_samples`.
        settings: the frontend configuration.

    Returns:
        uint16 array [settings.frames, settings.channels].
    """
    import tensorflow as tf  # build-time only
    from tensorflow.lite.experimental.microfrontend.python.ops import audio_microfrontend_op

    if pcm.dtype != np.int16 or pcm.shape != (settings.clip_samples,):
        raise ValueError(
            f"Expected int16 audio of shape ({settings.clip_samples},). "
            f"Received: dtype={pcm.dtype}, shape={pcm.shape}"
        )
    features = audio_microfrontend_op.audio_microfrontend(
        tf.constant(pcm),
        sample_rate=_SAMPLE_RATE_HZ,
        window_size=settings.window_ms,
        window_step=settings.step_ms,
        num_channels=settings.channels,
        upper_band_limit=settings.upper_hz,
        lower_band_limit=settings.lower_hz,
        min_signal_remaining=settings.min_signal_remaining if settings.noise_reduction else 1.0,
        enable_pcan=settings.pcan,
        scale_shift=settings.log_scale_shift,
        out_type=tf.uint16,
    ).numpy()
    if features.shape != (settings.frames, settings.channels):
        raise RuntimeError(f"Frontend returned {features.shape}, expected {(settings.frames, settings.channels)}")
    return features


def _micro_features_int8(features: np.ndarray) -> np.ndarray:
    """TFLM micro_features mapping of uint16 frontend output to int8: round(u*256/666) - 128."""
    scaled = (features.astype(np.int64) * 256 + 333) // 666 - 128
    return np.clip(scaled, -128, 127).astype(np.int8)


def _clip_plan(rng: np.random.Generator) -> list[tuple[str, tuple[str, int, int] | None]]:
    plan: list[tuple[str, tuple[str, int, int] | None]] = [(w, v) for v in _VOICES for w in KEYWORDS]
    for i, word in enumerate(UNKNOWN_WORDS):
        for j in range(_UNKNOWN_VOICES_PER_WORD):
            plan.append((word, _VOICES[(i * _UNKNOWN_VOICES_PER_WORD + j) % len(_VOICES)]))
    plan += [(_SILENCE, None)] * _SILENCE_CLIPS
    order = rng.permutation(len(plan))
    return [plan[i] for i in order]


def build_speech_bundle(out_dir: str | pathlib.Path = SPEECH_SAMPLES_DIR, seed: int = 0) -> dict[str, str]:
    """Synthesises the keyword clips and writes `keywords.npz` with both models' features.

    The npz holds `words` and `voices` [N], `ds_cnn_uint16` uint16 [N, 50, 10] (raw frontend
    output, mapped at load time) and `mobilenetv2_kws_int8` int8 [N, 59, 49]. Both feature sets
    come from the same synthesised word; each model's clip is the word centred in noise.

    Args:
        out_dir: destination folder.
        seed: seed of the clip order, levels, noise and jitter.

    Returns:
        sha256 per written file name.
    """
    rng = np.random.default_rng(seed)
    words, voices, ds_cnn, mobilenet = [], [], [], []
    for word, voice in _clip_plan(rng):
        audio = None if voice is None else synthesize_word(word, *voice)
        ds_cnn.append(microfrontend(_mix(audio, DS_CNN_FRONTEND.clip_samples, rng), DS_CNN_FRONTEND))
        pcm = _mix(audio, MOBILENETV2_KWS_FRONTEND.clip_samples, rng)
        mobilenet.append(_micro_features_int8(microfrontend(pcm, MOBILENETV2_KWS_FRONTEND)))
        words.append(word)
        voices.append("" if voice is None else f"{voice[0]} -s {voice[1]} -p {voice[2]}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "keywords.npz"
    np.savez_compressed(
        path,
        words=np.array(words),
        voices=np.array(voices),
        ds_cnn_uint16=np.stack(ds_cnn).astype(np.uint16),
        mobilenetv2_kws_int8=np.stack(mobilenet),
    )
    return {path.name: _sha256(path)}


def fit_bn_matched_affine(keras_model, features: np.ndarray) -> tuple[float, float]:
    """Finds a, b such that the model's first Conv -> BatchNorm sees its training statistics.

    With y_c = conv_c(a * u + b), the per-channel batch mean and variance of y over `features`
    should equal the BatchNormalization's moving mean m_c and variance v_c. Convolution is
    linear, so Var(y_c) = a**2 Var(conv_c(u) - bias_c) (padding aside) and a is the median of
    sqrt(v_c / Var(conv_c(u))); b then solves the means in least squares:
    m_c - bias_c - a * (E[conv_c(u)] - bias_c) = b * E[conv_c(1) - bias_c].

    Args:
        keras_model: a model whose layers start Input -> Conv2D -> BatchNormalization.
        features: raw features u, shaped like the model input.

    Returns:
        (a, b).
    """
    import keras  # build-time only

    conv, batch_norm = keras_model.layers[1], keras_model.layers[2]
    if not isinstance(conv, keras.layers.Conv2D) or not isinstance(batch_norm, keras.layers.BatchNormalization):
        raise ValueError(
            "Expected the model to start Input -> Conv2D -> BatchNormalization. Received: "
            f"{type(conv).__name__} -> {type(batch_norm).__name__}"
        )
    conv_out = keras.Model(keras_model.inputs, conv.output)
    bias = conv.bias.numpy() if conv.use_bias else 0.0
    y = conv_out.predict(features, verbose=0) - bias
    ones = conv_out.predict(np.ones_like(features[:1]), verbose=0) - bias
    axes = tuple(range(y.ndim - 1))
    a = float(np.median(np.sqrt(batch_norm.moving_variance.numpy() / y.var(axis=axes))))
    residual = batch_norm.moving_mean.numpy() - bias - a * y.mean(axis=axes)
    gain = ones.mean(axis=axes)
    b = float(np.dot(gain, residual) / np.dot(gain, gain))
    return a, b


def _main(argv: Sequence[str]) -> None:
    from absl import flags

    del argv
    build = flags.FLAGS.build
    if build == "photos":
        if not flags.FLAGS.opencv_doc:
            raise ValueError("--build=photos needs --opencv_doc=<opencv-doc .deb or examples/data folder>")
        checksums = build_photo_bundle(flags.FLAGS.opencv_doc)
    else:
        checksums = build_speech_bundle()
    for name, sha in checksums.items():
        print(f"{name} {sha}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_enum("build", None, ["photos", "speech"], "Which bundle to rebuild.", required=True)
    flags.DEFINE_string("opencv_doc", None, "opencv-doc .deb file or its extracted examples/data folder.")
    app.run(_main)
