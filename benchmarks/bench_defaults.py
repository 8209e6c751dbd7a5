"""Issue 13: which range scheme, per tensor kind, is the best default over the whole benchmark set.

For every model of ``benchmarks.zoo.cases()`` (batch norms folded first, as AIMET's flow does), each
(parameter scheme, activation scheme) pair of ``PAIRS`` is calibrated and scored at W4A8 with
per-channel weights (``htp`` config) and with per-tensor weights (the default config); at W8A8 the
schemes differ little (the peers table shows W8A8 with the default). ``tf`` / ``tf_enhanced`` are
AIMET's schemes as AIMET defines them; ``mse`` and ``output_mse`` are ours.

Scores: top-1 accuracy on labelled sets (Fashion-MNIST), top-1 agreement with FP32 otherwise (MLTK
models on real inputs), and the SQNR of the outputs against FP32 (dB), which ranks schemes more
smoothly than a top-1 count on small input sets.

ENV: DEFAULTS_BENCH_MODELS (comma list of zoo names, default all).
"""

from __future__ import annotations

import os
import time

import numpy as np

from aimet_tf import metrics
from aimet_tf.ptq.batch_norm_fold import fold_batch_norms
from aimet_tf.quantization import QuantizationSimModel
from benchmarks import zoo

PAIRS = (  # (parameter scheme, activation scheme)
    ("tf_enhanced", "tf_enhanced"),  # AIMET-Keras's default
    ("tf", "tf"),  # AIMET 2's default
    ("tf", "tf_enhanced"),
    ("mse", "tf_enhanced"),
    ("output_mse", "tf_enhanced"),
    ("output_mse", "tf"),
)
SETTINGS = (  # (label, param bits, config)
    ("W4A8 per-channel", 4, "htp"),
    ("W4A8 per-tensor", 4, None),
)
BATCH = 256


def score(case: zoo.Case, fp32: np.ndarray, out: np.ndarray) -> float:
    """Top-1 accuracy with labels, top-1 agreement with FP32 without."""
    if case.y_test is not None:
        return metrics.top1_accuracy(out, case.y_test)
    return metrics.top1_agreement(fp32, out)


def simulate(model, case: zoo.Case, param_bw: int, config, param_scheme: str, act_scheme: str) -> np.ndarray:
    """Outputs on ``case.x_test`` of a sim with the given scheme for each tensor kind."""
    sim = QuantizationSimModel(model, quant_scheme=act_scheme, default_param_bw=param_bw, config_file=config)
    for _, quantizer, _ in sim.param_quantizers():
        quantizer.quant_scheme = param_scheme
    sim.compute_encodings(case.x_cal, batch_size=BATCH)
    return sim.model.predict(case.x_test, batch_size=BATCH, verbose=0)


def run() -> str:
    names = [n for n in os.environ.get("DEFAULTS_BENCH_MODELS", "").split(",") if n] or None
    pairs = list(PAIRS)
    # results[setting][pair] = list of (score - fp32 score, sqnr) per model
    results = {label: {pair: [] for pair in pairs} for label, _, _ in SETTINGS}
    model_rows = []
    for case in zoo.cases(names):
        t = time.perf_counter()
        folded = fold_batch_norms(case.model)
        fp32 = folded.predict(case.x_test, batch_size=BATCH, verbose=0)
        fp32_score = score(case, fp32, fp32)
        row = [case.name, f"{100 * fp32_score:.2f}"]
        for label, bw, config in SETTINGS:
            cells = []
            for pair in pairs:
                out = simulate(folded, case, bw, config, *pair)
                s = score(case, fp32, out)
                results[label][pair].append((s - fp32_score, metrics.sqnr_db(fp32, out)))
                cells.append(100 * s)
            best = max(cells)
            row += [f"**{c:.2f}**" if c == best else f"{c:.2f}" for c in cells]
        model_rows.append(row)
        print(f"{case.name}: {time.perf_counter() - t:.0f} s", flush=True)

    def pair_name(pair):
        return f"W {pair[0]} / A {pair[1]}"

    lines = [
        "## Default range scheme: chosen over the whole benchmark set (issue 13)",
        "",
        f"Models: {', '.join(r[0] for r in model_rows)}.",
        "",
        "Every model of the benchmark set (`benchmarks/zoo.py`), batch norms folded first. Each pair is "
        "(parameter scheme / activation scheme); `tf` = min/max, `tf_enhanced` = AIMET's SQNR histogram "
        "search (gamma 3), `mse` = the lowest exact quantization MSE on the weight's own values (never "
        "above min/max's), `output_mse` = the lowest error in the layer's output on 256 calibration "
        "inputs (never above min/max's or tf_enhanced's there). `W tf_enhanced / A tf_enhanced` is "
        "AIMET-Keras's default, `W tf / A tf` AIMET 2's. "
        "Fashion-MNIST: top-1 % on the 10,000 test images (2,000 calibration images). MLTK models: top-1 "
        "agreement % with FP32 on their real inputs.",
        "",
        "Summary per setting, over all models: mean change of the score against FP32 (points), the worst "
        "model's change, and the mean SQNR of the outputs against FP32.",
        "",
        "| setting | " + " | ".join(pair_name(p) for p in pairs) + " |",
        "|---|" + "---|" * len(pairs),
    ]
    for label, _, _ in SETTINGS:
        means = {p: np.mean([d for d, _ in results[label][p]]) for p in pairs}
        best = max(means.values())
        cells = []
        for p in pairs:
            deltas = [d for d, _ in results[label][p]]
            sqnr = np.mean([q for _, q in results[label][p]])
            text = f"{100 * means[p]:+.2f} (worst {100 * min(deltas):+.2f}; {sqnr:.1f} dB)"
            cells.append(f"**{text}**" if means[p] == best else text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    header = ["model", "FP32"] + [f"{label}: {pair_name(p)}" for label, _, _ in SETTINGS for p in pairs]
    lines += [
        "",
        "Per model (best of each setting in bold):",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---|" * (len(header) - 1),
        *("| " + " | ".join(r) + " |" for r in model_rows),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
