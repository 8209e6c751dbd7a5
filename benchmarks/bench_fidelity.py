"""Issue 11 benchmark: does the simulation predict the exported .tflite on inputs and models it was
never tuned on, for each LiteRT kernel path?

1. **Unseen real inputs** for the MLTK image models: random crops (30-100% of the short side, aspect
   0.7-1.4) of OpenCV's sample photos, resized with plain bilinear interpolation (no anti-aliasing),
   with a random gain (0.6-1.3) and offset (-30..30), clipped to 0..255 and kept on half pixels
   (what a 2x bilinear downscale of 8-bit pixels gives). None of these views is in the bundled
   benchmark set (which has whole frames and centre crops, anti-aliased, whole pixels). Half of the
   views (random split) calibrate, the other half score. The photos come from Debian's
   `opencv-doc` package (downloaded with `apt-get download opencv-doc` when no path is given).
2. **Random models** (`aimet_tf.testing.fuzz`), other seeds than the CI test: calibrated on
   N(0, 1), scored on shifted, wider, out-of-range and tie inputs.

Each file runs on LiteRT's three op resolvers; the sim is prepared for each in turn
(`prepare_sim_for_tflite(sim, kernels)`). The peer in the same run is LiteRT against itself: the
same file on the default resolver (XNNPACK) against the reference kernels, which is how far apart
two real runtimes are without modelling either.
"""

from __future__ import annotations

import pathlib
import subprocess
import tempfile
import time

import numpy as np

from aimet_tf.export.verify import output_steps
from aimet_tf.export import export_tflite, prepare_model_for_tflite, prepare_sim_for_tflite, run_tflite, verify_tflite
from aimet_tf.kernels import (
    FIXED_POINT_DSP,
    TFLITE_REFERENCE,
    TFLITE_SINGLE_ROUNDING,
    IntegerExecutor,
    UnsupportedOperatorError,
)
from aimet_tf.quantization import QuantizationSimModel
from aimet_tf.testing.fuzz import check_fidelity, input_distributions, random_model
from aimet_tf.testing.mltk_models import load_mltk_model
from aimet_tf.testing.real_inputs import _opencv_data_dir

_MODELS = {"resnet8": 32, "vww_mobilenetv1": 96}
_FUZZ_SEEDS = {8: range(50_000, 50_150), 4: range(60_000, 60_150)}
_FUZZ_PACK = 10
_DSP_TARGETS = (TFLITE_REFERENCE, TFLITE_SINGLE_ROUNDING, FIXED_POINT_DSP)


def load_photos(opencv_doc: str | None = None) -> list[np.ndarray]:
    """The decoded OpenCV sample photos (RGB uint8), from the given opencv-doc .deb (or its
    extracted data folder), else from one fetched with `apt-get download opencv-doc`."""
    with tempfile.TemporaryDirectory() as scratch:
        return _photos(opencv_doc, pathlib.Path(scratch))


def _photos(opencv_doc: str | None, scratch: pathlib.Path) -> list[np.ndarray]:
    import tensorflow as tf

    if opencv_doc is None:
        subprocess.run(["apt-get", "download", "opencv-doc"], cwd=scratch, check=True, capture_output=True)
        opencv_doc = str(next(scratch.glob("opencv-doc_*.deb")))
    data_dir = _opencv_data_dir(pathlib.Path(opencv_doc), scratch)
    photos = []
    for path in sorted(data_dir.iterdir()):
        if path.suffix.lower() not in (".jpg", ".png"):
            continue
        try:
            photos.append(tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False).numpy())
        except (tf.errors.InvalidArgumentError, ValueError):
            continue  # a few sample files are not plain images
    return photos


def unseen_views(photos: list[np.ndarray], size: int, per_photo: int = 6, seed: int = 1) -> np.ndarray:
    """Random crops, plain bilinear resize, random gain/offset, half pixels (see the module doc)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    views = []
    for image in photos:
        height, width = image.shape[:2]
        for _ in range(per_photo):
            crop_h = max(8, int(height * rng.uniform(0.3, 1.0)))
            crop_w = max(8, int(min(width, crop_h * rng.uniform(0.7, 1.4))))
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            crop = tf.convert_to_tensor(image[top:top + crop_h, left:left + crop_w].astype(np.float32))
            view = tf.image.resize(crop, (size, size), method="bilinear").numpy()
            view = np.clip(view * rng.uniform(0.6, 1.3) + rng.uniform(-30, 30), 0, 255)
            views.append(np.round(view * 2) / 2)
    return np.stack(views).astype(np.float32)


def _mltk_rows(photos: list[np.ndarray]) -> list[str]:
    rows = [
        "| model | weights | scored inputs | kernels (delegate) | top-1 agreement sim vs .tflite % | outputs identical % | within one step % | max steps apart |",
        "|---|---|---|---|---|---|---|---|",
    ]
    peer_rows = [
        "| model | weights | default (XNNPACK) vs reference kernels, same file: outputs identical % | max steps apart |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for name, size in _MODELS.items():
            views = unseen_views(photos, size)
            x = (views - 128.0) / 128.0 if name == "resnet8" else views
            order = np.random.default_rng(0).permutation(len(x))
            x_cal, x_eval = x[order[0::2]], x[order[1::2]]
            model = prepare_model_for_tflite(load_mltk_model(name).keras_model)
            for bw in (8, 4):
                sim = QuantizationSimModel(model, quant_scheme="tf_enhanced", default_param_bw=bw, config_file="tflite")
                sim.compute_encodings(x_cal, batch_size=64)
                path = export_tflite(sim, pathlib.Path(folder) / f"{name}_w{bw}.tflite")
                reports = verify_tflite(sim, path, x_eval, batch_size=64, kernels="all")
                for kernels, report in reports.items():
                    rows.append(
                        f"| {name} | int{bw} | {report.num_samples} | {kernels} ({report.delegate}) | "
                        f"{100 * report.top1_agreement:.2f} | {100 * report.exact_fraction:.3f} | "
                        f"{100 * report.within_one_step:.3f} | {report.max_step_difference:.0f} |"
                    )
                default = run_tflite(path, x_eval, batch_size=64, kernels="default")[0]
                ref = run_tflite(path, x_eval, batch_size=64, kernels="reference")[0]
                apart = np.abs(default.astype(np.float64) - ref) / reports["default"].output_step
                peer_rows.append(f"| {name} | int{bw} | {100 * np.mean(apart < 0.5):.3f} | {apart.max():.0f} |")
    return rows + ["", "Peer in the same run: two LiteRT kernel paths against each other on the same file and inputs.", "", *peer_rows]


def _fuzz_rows() -> list[str]:
    rows = [
        "| weights | random models | kernels | models with any differing output | largest difference, steps |",
        "|---|---|---|---|---|",
    ]
    paths = ("default", "reference", "builtin")
    for bw, seeds in _FUZZ_SEEDS.items():
        seeds = list(seeds)
        start = time.perf_counter()
        failures = []
        for k in range(0, len(seeds), _FUZZ_PACK):
            failures += check_fidelity(seeds[k:k + _FUZZ_PACK], bw, kernels=paths, locate=False)
        seconds = time.perf_counter() - start
        for kernels in paths:
            mine = [f for f in failures if f.kernels == kernels]
            worst = max((f.max_steps for f in mine), default=0.0)
            listed = ", ".join(str(f.seed) for f in mine[:6]) + (", ..." if len(mine) > 6 else "")
            rows.append(f"| int{bw} | {len(seeds)} (seeds {seeds[0]}..{seeds[-1]}) | {kernels} | "
                        f"{len(mine)}{f' ({listed})' if mine else ''} | {worst:.0f} |")
        rows.append(f"| int{bw} | | all three, one export per {_FUZZ_PACK} models | {seconds:.0f} s in all | |")
    return rows


def _executor_rows(count: int = 20) -> list[str]:
    """The sim prepared for each DspTarget against the integer executor with that target, on the
    first ``count`` fuzz models (seeds from 70000) the executor can run: it has no SHAPE /
    STRIDED_SLICE / PACK, which a Flatten of a batch-dynamic shape converts to (both MLTK image
    models have one)."""
    rows = [
        "| DspTarget | random models (W8 odd seeds, W4 even) | output elements identical % | max steps apart |",
        "|---|---|---|---|",
    ]
    totals = {t.name: [0, 0, 0.0] for t in _DSP_TARGETS}
    seed, used = 70_000, 0
    with tempfile.TemporaryDirectory() as folder:
        while used < count:
            model = prepare_model_for_tflite(random_model(seed))
            cal, score = input_distributions(seed, model.input_shape[1:])
            sim = QuantizationSimModel(model, quant_scheme="tf", config_file="tflite", default_param_bw=8 if seed % 2 else 4)
            sim.compute_encodings(cal)
            path = export_tflite(sim, pathlib.Path(folder) / f"m{seed}.tflite")
            seed += 1
            try:
                IntegerExecutor(str(path))
            except UnsupportedOperatorError:
                continue
            used += 1
            for target in _DSP_TARGETS:
                prepare_sim_for_tflite(sim, target)
                expected = np.asarray(sim.model(score, training=False), np.float64)
                got = IntegerExecutor(str(path), target=target, backend="numpy").run(score).astype(np.float64)
                apart = np.abs(got - expected) / output_steps(str(path))[0]
                total = totals[target.name]
                total[0] += int(np.sum(apart < 0.5))
                total[1] += apart.size
                total[2] = max(total[2], float(apart.max()))
    for name, (same, size, worst) in totals.items():
        rows.append(f"| {name} | {count} (seeds 70000..{seed - 1}) | {100 * same / size:.3f} | {worst:.0f} |")
    return rows


def run(opencv_doc: str | None = None) -> str:
    photos = load_photos(opencv_doc)
    mltk = _mltk_rows(photos)
    executor = _executor_rows()
    fuzz = _fuzz_rows()
    return "\n".join([
        "## Fidelity on unseen inputs and random models, per LiteRT kernel path (issue 11)",
        "",
        f"Unseen inputs: {len(photos)} OpenCV sample photos x 6 random crops each, plain bilinear "
        "resize, random gain and offset, half pixels; half calibrate (`tf_enhanced`, `tflite` config), "
        "half score. The sim is prepared for each kernel path in turn; \"builtin\" (LiteRT's optimized "
        "kernels without a delegate) is not modelled and is shown as measured.",
        "",
        *mltk,
        "",
        "Random models (`aimet_tf.testing.fuzz.check_fidelity`, packed ten to a file): every output "
        "element compared; calibrated on N(0, 1), scored on N(0.5, 1.5^2), U(-4, 4), a 1/8 lattice, "
        "3x the calibration samples and 16 inputs on half steps of each input grid.",
        "",
        *fuzz,
        "",
        "The simulation prepared for a `DspTarget` (`prepare_sim_for_tflite(sim, target)`) against "
        "`aimet_tf.kernels.IntegerExecutor(path, target)` (numpy golden model) on the same file and "
        "the fuzz models' scoring inputs:",
        "",
        *executor,
    ])
