"""Issue 6 benchmark: cross-layer equalization (+ high-bias fold) and empirical bias correction.

Per-tensor weight quantization (the "default" AIMET config) is where CLE matters: depthwise
layers whose channels span orders of magnitude share one scale. Each model is quantized W8A8
per-tensor with min/max ranges ("tf") on its BN-folded form, with and without CLE (and with CLE
+ bias correction), beside per-channel W8A8 without CLE, the ceiling CLE tries to reach with a
per-tensor grid. All rows are measured in the same run on the same inputs.

    python -m benchmarks.run --only=cle
"""

from __future__ import annotations

import importlib.resources
import json
import time

from absl import logging

from aimet_tf import datasets, metrics
from aimet_tf.ptq.batch_norm_fold import fold_batch_norms
from aimet_tf.ptq.bias_correction import correct_bias
from aimet_tf.ptq.cle import EqualizationReport, equalize_model_with_report
from aimet_tf.quantization import QuantizationSimModel
from aimet_tf.testing.mltk_models import load_mltk_model
from aimet_tf.testing.real_inputs import describe_inputs, real_inputs

BATCH = 64
SCHEME = "tf"
MLTK_MODELS = ("vww_mobilenetv1", "ds_cnn")


def _per_channel_config() -> dict:
    """AIMET's default config with per-channel weights (everything else unchanged)."""
    text = (importlib.resources.files("aimet_tf.quantization") / "presets" / "default.json").read_text()
    config = json.loads(text)
    config["defaults"]["per_channel_quantization"] = "True"
    return config


def _predict(model, x):
    return model.predict(x, batch_size=BATCH, verbose=0)


def _calibrated_sim(model, x_cal, param_bw: int, config) -> tuple[QuantizationSimModel, float]:
    t = time.perf_counter()
    sim = QuantizationSimModel(model, quant_scheme=SCHEME, default_param_bw=param_bw, config_file=config)
    # AIMET's callback form: runs on any input structure.
    sim.compute_encodings(lambda m, x: m.predict(x, batch_size=BATCH, verbose=0), x_cal)
    return sim, time.perf_counter() - t


def _score(ref, out, labels) -> tuple[str, str, str]:
    accuracy = "" if labels is None else f"{100 * metrics.top1_accuracy(out, labels):.2f}"
    return accuracy, f"{100 * metrics.top1_agreement(ref, out):.1f}", f"{metrics.sqnr_db(ref, out):.1f}"


def _what_cle_did(report: EqualizationReport) -> str:
    folds = sum(r.folded for r in report.high_bias_folds)
    skipped = "; ".join(f"`{c.layer}`: {c.reason}" for c in report.skipped) or "none"
    return (
        f"{len(report.folded_batch_norms)} BNs folded, {report.num_triples} triples + "
        f"{report.num_pairs} pairs equalized ({report.sweeps} sweeps, "
        f"{'converged' if report.converged else 'not converged'}), "
        f"{len(report.relu6_replaced)} ReLU6 -> ReLU, {folds} of {len(report.high_bias_folds)} "
        f"links high-bias folded. Skipped: {skipped}"
    )


def _model_section(title, model, x_cal, x_eval, labels, bc_data, param_bws=(8,)) -> list[str]:
    ref = _predict(model, x_eval)
    t = time.perf_counter()
    equalized, report = equalize_model_with_report(model)
    t_cle = time.perf_counter() - t
    aimet_like, aimet_report = equalize_model_with_report(model, max_sweeps=1)
    folded = fold_batch_norms(model)
    per_channel = _per_channel_config()

    rows = [("FP32 Keras", *_score(ref, ref, labels), "reference")]
    rows.append(
        ("FP32 after CLE (no quantization)", *_score(ref, _predict(equalized, x_eval), labels),
         f"function check; {len(report.relu6_replaced)} ReLU6 -> ReLU")
    )
    timing = ""

    def add(label: str, sim: QuantizationSimModel, note: str = "") -> None:
        rows.append((label, *_score(ref, _predict(sim.model, x_eval), labels), note))

    for bw in param_bws:
        name = f"W{bw}A8"
        sim, _ = _calibrated_sim(folded, x_cal, bw, "default")
        add(f"{name} per-tensor, BN folded, no CLE", sim)
        bc = correct_bias(sim, bc_data, batch_size=32, verbose=0, keep_only_improving=False)
        add(f"{name} per-tensor, no CLE + bias correction, unguarded (AIMET's empirical)", sim,
            f"{len(bc.corrected)} biases corrected")
        sim, _ = _calibrated_sim(folded, x_cal, bw, "default")
        bc = correct_bias(sim, bc_data, batch_size=32, verbose=0)
        add(f"{name} per-tensor, no CLE + bias correction (default: keep_only_improving)", sim,
            f"{_rejected(bc)}")
        sim, _ = _calibrated_sim(aimet_like, x_cal, bw, "default")
        add(f"{name} per-tensor + CLE, 1 sweep (AIMET's single pass)", sim)
        sim, t_enc = _calibrated_sim(equalized, x_cal, bw, "default")
        add(f"{name} per-tensor + CLE (converged)", sim, f"{report.sweeps} sweeps")
        t = time.perf_counter()
        bc = correct_bias(sim, bc_data, batch_size=32, verbose=0)
        t_bc = time.perf_counter() - t
        add(f"{name} per-tensor + CLE + bias correction", sim,
            f"{len(bc.corrected)} biases corrected on {bc.num_samples} calibration inputs; {_rejected(bc)}")
        sim, _ = _calibrated_sim(equalized, x_cal, bw, "default")
        correct_bias(sim, bc_data, batch_size=32, verbose=0, keep_only_improving=False)
        add(f"{name} per-tensor + CLE + bias correction, unguarded", sim)
        sim, _ = _calibrated_sim(folded, x_cal, bw, per_channel)
        add(f"{name} per-channel, BN folded, no CLE (ceiling)", sim)
        if bw == param_bws[0]:
            timing = (
                f"Time: `equalize_model` {t_cle:.2f} s; `correct_bias` {t_bc:.1f} s = "
                f"{t_bc / t_enc:.1f}x the sim's build + `compute_encodings` ({t_enc:.1f} s) in the "
                "same run."
            )
    lines = [
        f"### {title}",
        "",
        "| variant | top-1 % | top-1 agreement with FP32 % | SQNR vs FP32 dB | notes |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {acc or '-'} | {agree} | {sqnr} | {note} |" for n, acc, agree, sqnr, note in rows]
    lines += [
        "",
        f"CLE: {_what_cle_did(report)}",
        "",
        f"AIMET-like single pass: scale range {_scale_span(aimet_report)}; converged: {_scale_span(report)}.",
        "",
        timing,
        "",
        "<details><summary>Full CLE report</summary>",
        "",
        "```",
        report.summary(),
        "```",
        "</details>",
        "",
    ]
    return lines


def _rejected(report) -> str:
    total = sum(r.channels for r in report.corrected)
    rejected = sum(r.rejected_channels for r in report.corrected)
    return f"{rejected} of {total} channel shifts rejected (they moved the activated output away from FP32)"


def _scale_span(report: EqualizationReport) -> str:
    if not report.equalized:
        return "n/a"
    low = min(s.scale_range[0] for s in report.equalized)
    high = max(s.scale_range[1] for s in report.equalized)
    return f"{low:.3g}..{high:.3g}"


def run() -> str:
    lines = [
        "## Cross-layer equalization, high-bias fold, bias correction (issue 6)",
        "",
        f"Weights per-tensor symmetric (AIMET `default` config), activations 8-bit asymmetric, "
        f"`{SCHEME}` (min/max) ranges. `no CLE` = the BN-folded model; `CLE` = `equalize_model` "
        "(BN fold, ReLU6 -> ReLU between equalized layers, scaling until converged, high-bias "
        "fold into unpadded consumers); bias correction = `correct_bias` on the calibration "
        "inputs. SQNR and agreement are against the original FP32 model (ReLU6 included).",
        "",
    ]
    model = datasets.load_bundled_model()
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_cal, _ = datasets.load_fashion_mnist("calibration")
    logging.info("bench_cle: bundled model")
    lines += _model_section(
        f"Bundled Fashion-MNIST CNN ({model.count_params():,} params), 10,000 test images, "
        f"calibrated on {len(x_cal):,} train images",
        model, x_cal, x_test, y_test, x_cal[:512], param_bws=(8, 4),
    )
    for name in MLTK_MODELS:
        logging.info("bench_cle: %s", name)
        m = load_mltk_model(name).keras_model
        x = real_inputs(name)
        x_cal, x_eval = x[0::2], x[1::2]
        lines += _model_section(
            f"MLTK `{name}` ({m.count_params():,} params), {len(x_eval)} scored inputs (odd "
            f"indices), calibrated on {len(x_cal)} (even): {describe_inputs(name)}",
            m, x_cal, x_eval, None, x_cal,
        )
    return "\n".join(lines)
