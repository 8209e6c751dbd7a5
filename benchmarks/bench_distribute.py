"""Issue 20 benchmark: calibration, QAT, AdaRound and AMP's phase 1 on 1 device, under MirroredStrategy over 2
logical CPU devices, and under MultiWorkerMirroredStrategy with 2 local worker processes.

Every run is a fresh process (``aimet_tf.testing.distributed``) on the bundled model: calibration
of 500 images (``tf`` and ``auto`` schemes, arrays and a distributed data set; also MLTK's ds_cnn
on its 216 real inputs, for the "encodings equal" column), 1 epoch of W4A8
QAT (2,000 images, global batch 64, range learning, ``tflite`` config) scored on the 5,000
odd-indexed test images, and AdaRound (W4, 256 images, 100 iterations per layer). The QAT step
time is the mean wall time of a train step after tracing. This machine has 2 cores and no GPU:
2 replicas share the cores one replica already uses, so no speed-up is expected here; the rows
say what the split costs. The projection splits the measured step into compute and
communication (see ``_projection``).
"""

from __future__ import annotations

import numpy as np

from aimet_tf.testing import distributed

JOBS = "calibrate,qat,adaround"
MODELS = "bundled,ds_cnn"


def _identical(a: dict, b: dict) -> float:
    same = sum(int(np.sum(np.asarray(a[k]) == np.asarray(b[k]))) for k in a)
    return same / sum(len(a[k]) for k in a)


def run() -> str:
    options = {"scheme": "tf,auto", "model": MODELS, "iterations": 100, "batch": 64}
    single = distributed.run_single(JOBS, **options)
    half = distributed.run_single("qat", **(options | {"batch": 32}))
    mirrored = distributed.run_mirrored(JOBS, **options)
    workers = distributed.run_multi_worker(JOBS, **options)
    lines = ["## tf.distribute (issue 20)", "", __doc__.split("\n\n", 1)[1].strip().replace("\n", " "), "",
             "| run | replicas | compute_encodings s, `auto` scheme, arrays (first call incl. tracing / again) | "
             "QAT step ms (global batch 64) | QAT held-out % after 1 epoch | "
             "AdaRound s | AdaRound kernels identical to 1 device % | encodings equal to 1 device (bundled, ds_cnn) |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in (("1 device", single), ("MirroredStrategy, 2 logical CPUs", mirrored),
                     ("MultiWorkerMirroredStrategy, 2 local workers", workers)):
        equal = "reference" if r is single else ("yes" if all(
            r["calibrate"][m][sc][src] == single["calibrate"][m][sc]["arrays"]
            for m in MODELS.split(",") for sc in ("tf", "auto") for src in ("arrays", "distributed_dataset")
            if src in r["calibrate"][m][sc]) else "no")
        lines.append(
            f"| {label} | {r['qat']['replicas']} | {r['calibrate']['bundled']['auto']['arrays_seconds']:.1f} / "
            f"{r['calibrate']['bundled']['auto']['arrays_again_seconds']:.1f} | {1000 * r['qat']['step_seconds']:.1f} | "
            f"{100 * r['qat']['after']:.2f} | {r['adaround']['seconds']:.1f} | "
            f"{100 * _identical(r['adaround']['kernels'], single['adaround']['kernels']):.2f} | {equal} |")
    lines += ["", *_amp_rows(), ""]
    from aimet_tf import datasets

    lines += ["", *_projection(single, half, workers, datasets.load_bundled_model().count_params()), ""]
    return "\n".join(lines)


def _amp_rows() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        single = distributed.run_single("amp", **{"results-dir": one})["amp"]
        shared = distributed.run_multi_worker("amp", strategy="processes", **{"results-dir": two})["amp"]
    same = shared["phase1"] == single["phase1"] and shared["choice"] == single["choice"]
    return [
        "AMP (`choose_mixed_precision(..., workers=(i, n))`): phase 1 shared out over worker processes that "
        "exchange their scores through files in one results_dir; phase 2 runs on every worker. Bundled model, "
        "candidates W8A8 / W4A8, `tf` scheme, top-1 on 1,000 test images, allowed drop 0.005.", "",
        "| run | phase-1 evaluations on this worker | phase-1 wall s | whole AMP s | same phase-1 scores and choice as 1 process |",
        "|---|---|---|---|---|",
        f"| 1 process | {single['evaluations']['phase1']} | {single['phase1_seconds']:.1f} | {single['amp_seconds']:.1f} | reference |",
        f"| 2 processes (worker 0) | {shared['evaluations']['phase1']} | {shared['phase1_seconds']:.1f} | "
        f"{shared['amp_seconds']:.1f} | {'yes' if same else 'no'} |",
    ]


def _projection(single: dict, half: dict, workers: dict, num_params: int) -> list[str]:
    """Data-parallel projection from this machine's measurements.

    With N replicas a step of global batch B costs compute(B / N) plus communication (the gradient
    all-reduce, and the per-step overhead of the strategy). Measured here: compute(64) and
    compute(32) on one device, and the 2-worker step. The 2-worker step minus compute(32) is
    taken as the communication of one step over loopback with both workers sharing the 2 cores,
    an overestimate for GPUs with their own links. Compute is assumed to scale with the batch as
    measured between 32 and 64.
    """
    c64, c32 = single["qat"]["step_seconds"], half["qat"]["step_seconds"]
    comm = max(workers["qat"]["step_seconds"] - c32, 0.0)
    per_sample = (c64 - c32) / 32
    fixed = c64 - 64 * per_sample
    lines = [
        "Projection (data parallel, global batch 64; compute(b) = fixed + b * per-sample, fitted to the "
        f"1-device steps at batch 32 ({1000 * c32:.1f} ms) and 64 ({1000 * c64:.1f} ms); communication = "
        f"2-worker step - compute(32) = {1000 * comm:.1f} ms, measured over loopback on shared cores):", "",
        "| N replicas | projected step ms | speed-up vs 1 |", "|---|---|---|"]
    for n in (1, 2, 4, 8):
        step = fixed + (64 / n) * per_sample + (comm if n > 1 else 0.0)
        lines.append(f"| {n} | {1000 * step:.1f} | {c64 / step:.2f} |")
    lines += ["", f"The bundled model has {num_params:,} parameters (an all-reduce of {4 * num_params / 1e6:.2f} MB "
              "per step). Where the fixed per-step cost and the communication exceed the compute a replica "
              "saves, data parallelism cannot pay off at this batch; a larger model or batch moves the "
              "balance towards compute."]
    return lines
