"""Issue 13, item 5: depthwise-heavy models at 4 bits, and what each tool recovers, beside aimet-onnx.

For each depthwise model of the benchmark set (default: ``mobilenet_v2``, the one built for this,
then ``ds_residual``, ``bundled_cnn``, ``vww_mobilenetv1`` and ``mobilenetv2_kws``), batch norms
folded first, W4A8 with per-tensor weights (AIMET's ``default`` config, where depthwise layers
whose channels differ by orders of magnitude share one scale) and with per-channel weights
(``default_per_channel``, aimet-onnx's default):

* ours: AIMET-Keras's default scheme (``tf_enhanced``), our default (``auto``), CLE then ``auto``,
  the depthwise kernels kept at 8 bits (per-layer fallback: they are a small share of the
  weights), both, and AdaRound (after CLE for per-tensor weights);
* aimet-onnx, same folded model and calibration inputs: ``min_max`` and ``tf_enhanced``, each
  with and without its own ``equalize_model`` (its per-tensor config is its
  ``default_config.json``, its per-channel one its default).

    python -m benchmarks.run --only=depthwise

ENV: DEPTHWISE_BENCH_MODELS (comma list of zoo names), DEPTHWISE_BENCH_ADAROUND (iterations per
layer, default 2000; 0 skips AdaRound).
"""

from __future__ import annotations

import os
import tempfile
import time

import keras
import numpy as np

from aimet_tf.ptq.batch_norm_fold import fold_batch_norms
from aimet_tf.ptq.cle import equalize_model_with_report
from aimet_tf.quantization import QuantizationSimModel
from benchmarks import bench_peers, zoo

BATCH = 256
MODELS = ("mobilenet_v2", "ds_residual", "bundled_cnn", "vww_mobilenetv1", "mobilenetv2_kws")
GRANULARITIES = (("per-tensor", "default", False), ("per-channel", "default_per_channel", True))


def depthwise_share(model: keras.Model) -> float:
    """Fraction of the model's kernel weights that belong to DepthwiseConv2D layers."""
    total = depthwise = 0
    for layer in model.layers:
        kernel = getattr(layer, "depthwise_kernel", None)
        if kernel is None:
            kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        size = int(np.prod(kernel.shape))
        total += size
        depthwise += size if isinstance(layer, keras.layers.DepthwiseConv2D) else 0
    return depthwise / total if total else 0.0


def _sim(model, case, scheme: str, config: str, depthwise_bw: int | None = None) -> QuantizationSimModel:
    sim = QuantizationSimModel(model, quant_scheme=scheme, default_param_bw=4, config_file=config)
    if depthwise_bw is not None:
        for wrapper in sim.wrappers():
            if isinstance(wrapper.layer, keras.layers.DepthwiseConv2D):
                wrapper.param_quantizers_by_path()["kernel"].bitwidth = depthwise_bw
    sim.compute_encodings(case.x_cal, batch_size=BATCH)
    return sim


def run() -> str:
    from benchmarks.peers.aimet_runner import run_aimet_peer

    names = [n for n in os.environ.get("DEPTHWISE_BENCH_MODELS", "").split(",") if n] or list(MODELS)
    iterations = int(os.environ.get("DEPTHWISE_BENCH_ADAROUND", "2000"))
    sections, versions = [], None
    for case in zoo.cases(names):
        t0 = time.perf_counter()
        workdir = tempfile.mkdtemp(prefix=f"depthwise_{case.name}_")
        folded = fold_batch_norms(case.model)
        equalized, report = equalize_model_with_report(folded)
        fp32 = folded.predict(case.x_test, batch_size=BATCH, verbose=0)
        fp32_score = 100 * bench_peers._correct(case, fp32, fp32).mean()

        def score(sim) -> float:
            return 100 * bench_peers._correct(case, fp32, sim.model.predict(case.x_test, batch_size=BATCH, verbose=0)).mean()

        rows: dict[str, dict[str, str]] = {}
        for column, config, _ in GRANULARITIES:
            def put(label: str, value: str) -> None:
                rows.setdefault(label, {})[column] = value

            put("ours, `tf_enhanced` (AIMET-Keras's default scheme)", f"{score(_sim(folded, case, 'tf_enhanced', config)):.2f}")
            put("ours, `auto` (our default)", f"**{score(_sim(folded, case, 'auto', config)):.2f}**")
            put("ours, CLE + `auto`", f"{score(_sim(equalized, case, 'auto', config)):.2f}")
            put("ours, `auto`, depthwise kernels at 8 bits", f"{score(_sim(folded, case, 'auto', config, 8)):.2f}")
            put("ours, CLE + `auto`, depthwise kernels at 8 bits", f"{score(_sim(equalized, case, 'auto', config, 8)):.2f}")
            if iterations:
                base, label = (equalized, "CLE + ") if config == "default" else (folded, "")
                sim, seconds = bench_peers._adaround(base, case, iterations, workdir, config)
                put(f"ours, {label}AdaRound ({iterations:,} it/layer), `auto`", f"{score(sim):.2f} ({seconds:.0f} s)")

        configs = [{"param_bw": 4, "act_bw": 8, "quant_scheme": s, "adaround_iterations": 0, "per_channel": pc, "cle": cle}
                   for _, _, pc in GRANULARITIES for cle in (False, True) for s in ("min_max", "tf_enhanced")]
        aimet = run_aimet_peer(folded, case.x_cal, case.x_test, case.y_test, configs, workdir=os.path.join(workdir, "aimet"))
        versions = ", ".join(f"{k} {v}" for k, v in aimet.get("versions", {}).items()) or versions
        truth = case.y_test if case.y_test is not None else np.argmax(fp32, -1)
        for run_ in aimet["runs"]:
            column = "per-channel" if run_["per_channel"] else "per-tensor"
            label = f"AIMET, {'CLE + ' if run_['cle'] else ''}`{run_['quant_scheme']}`"
            if run_["cle"] and run_.get("cle_changed_initializers") == 0:
                label += " (aimet-onnx's CLE changed no weight of this export)"
            value = 100 * np.mean(np.asarray(run_["predictions"]) == truth)
            rows.setdefault(label, {})[column] = f"{value:.2f}"

        skipped = len(report.skipped)
        sections += [
            f"### {case.name} (FP32 {fp32_score:.2f}; depthwise kernels are {100 * depthwise_share(folded):.1f}% "
            f"of the kernel weights)",
            "",
            f"{case.description}; {len(case.x_cal):,} calibration inputs, {len(case.x_test):,} scored. Our CLE "
            f"equalized {len(report.equalized)} sets, high-bias folded {sum(r.folded for r in report.high_bias_folds)} links"
            f"{f', skipped {skipped} candidates' if skipped else ''}; {time.perf_counter() - t0:.0f} s for this model.",
            "",
            "| W4A8 | per-tensor weights | per-channel weights |",
            "|---|---|---|",
            *[f"| {label} | {cells.get('per-tensor', '-')} | {cells.get('per-channel', '-')} |" for label, cells in rows.items()],
            "",
        ]
    score_text = "top-1 % on the 10,000 Fashion-MNIST test images; MLTK models: top-1 agreement % with FP32"
    return "\n".join([
        "## Depthwise-heavy models at 4 bits: CLE, AdaRound, defaults and 8-bit fallback, beside aimet-onnx (issue 13)",
        "",
        f"Scores: {score_text}. Batch norms folded first; 8-bit activations everywhere. Per-tensor = AIMET's "
        "`default` config (ours) and aimet-onnx's `default_config.json`; per-channel = `default_per_channel` (ours) and "
        "aimet-onnx's default config (the same file). CLE = `equalize_model` (ours) / aimet-onnx's `equalize_model`: both replace "
        "ReLU6 by ReLU, scale and high-bias fold. `depthwise kernels at 8 bits` sets those quantizers' bitwidth "
        "through the sim (a per-layer fallback). AIMET = aimet-onnx in its own venv "
        f"({versions or 'versions not reported'}), same folded model, same calibration inputs.",
        "",
        *sections,
    ])


if __name__ == "__main__":
    print(run())
