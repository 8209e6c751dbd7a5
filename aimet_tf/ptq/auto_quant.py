"""AutoQuant: from a float model to the best quantized model in one call, step by step, resumable.

The flow (AIMET's AutoQuant v2, plus bias correction):

1. **prepare**: ``aimet_tf.graph.prepare_model``; the FP32 score is the reference.
2. **W16A16 check** (``strict_validation``): a 16-bit sim must score within 1 point of FP32, else
   the model is not simulated faithfully and AutoQuant stops with an error (without
   ``strict_validation``: a warning).
3. **baseline**: the sim at the requested bitwidths and scheme (``run_inference``).
4. **batch_norm_fold**, 5. **quant_scheme** (each candidate (weight scheme, activation scheme,
   percentile) scored, the best kept), 6. **cle**, 7. **bias_correction**, 8. **adaround**.

A step is kept only if its score beats the best so far (BN folding also on a tie); the flow stops as soon as a score reaches
``FP32 - allowed_accuracy_drop``. The state a step hands on is a float model, a scheme choice and,
after AdaRound, frozen weight encodings, so every step's result can be rebuilt from files: each
finished step is written to ``results_dir/.auto_quant/<cache_id>/`` as one bundle
(``aimet_tf.files.write_bundle``: record JSON, float model, encodings), and a rerun with the same
``cache_id`` reuses the finished steps (AdaRound also resumes per layer from its own checkpoint). A
cache written for another model, data or settings is detected by its fingerprint and not reused.
The best result is exported as ``results_dir/<prefix>.encodings`` + ``.keras`` (``sim.export``).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import time
from typing import Any, Callable, Sequence

import keras
import numpy as np
from absl import logging

from aimet_tf import files
from aimet_tf.metrics import checked_score
from aimet_tf.progress import Progress
from aimet_tf.graph import prepare_model
from aimet_tf.ptq.adaround import AdaroundParameters, apply_adaround
from aimet_tf.ptq.adaround_checkpoint import run_fingerprint
from aimet_tf.ptq.batch_norm_fold import fold_batch_norms
from aimet_tf.ptq.bias_correction import correct_bias
from aimet_tf.ptq.cle import equalize_model
from aimet_tf.quantization.calibration_data import iterate_batches, model_inputs
from aimet_tf.quantization.sim import QuantizationSimModel

__all__ = ["AutoQuantResult", "QuantSchemeCandidate", "StepRecord", "DEFAULT_SCHEME_CANDIDATES", "auto_quantize", "write_report"]

_CACHE_VERSION = 1
# AdaRound iterations per layer when no AdaroundParameters are given (BENCHMARKS.md: 2k iterations
# recover most of what 10k do on the benchmark models, in a fifth of the time).
DEFAULT_ADAROUND_ITERATIONS = 2000
_BITWIDTH_FREE_STEPS = ("batch_norm_fold", "quant_scheme", "cle")
STEPS = ("prepare", "w16a16", "baseline", "batch_norm_fold", "quant_scheme", "cle", "bias_correction", "adaround", "amp")


@dataclasses.dataclass(frozen=True)
class QuantSchemeCandidate:
    """Range schemes for weights and activations (and the percentile of a "percentile" scheme)."""

    param_scheme: str
    output_scheme: str
    percentile: float = 100.0

    @property
    def label(self) -> str:
        pct = f", percentile {self.percentile:g}" if "percentile" in (self.param_scheme, self.output_scheme) else ""
        return f"W {self.param_scheme} / A {self.output_scheme}{pct}"


# REFERENCE section 3: AIMET's AutoQuant candidates.
DEFAULT_SCHEME_CANDIDATES = (
    QuantSchemeCandidate("tf", "tf"),
    QuantSchemeCandidate("tf_enhanced", "tf"),
    QuantSchemeCandidate("tf_enhanced", "tf_enhanced"),
    QuantSchemeCandidate("tf_enhanced", "percentile", 99.9),
    QuantSchemeCandidate("tf_enhanced", "percentile", 99.99),
)


@dataclasses.dataclass
class StepRecord:
    """One step: its score, whether it was kept, why, and how long it took."""

    name: str
    score: float | None
    kept: bool
    detail: str
    seconds: float
    cached: bool = False


@dataclasses.dataclass
class AutoQuantResult:
    """What ``auto_quantize`` returns: the best sim, its score, where its files are, every step."""

    sim: QuantizationSimModel
    score: float
    fp32_score: float
    target: float
    encoding_path: str | None
    model_path: str | None
    steps: list[StepRecord]
    report_path: str | None = None

    @property
    def target_met(self) -> bool:
        return self.score >= self.target


@dataclasses.dataclass
class _State:
    model: keras.Model
    scheme: QuantSchemeCandidate
    frozen_encodings: str | None = None  # AdaRound's parameter encodings file
    bitwidths: dict[str, int] | None = None  # AMP's choice: quantizer name -> bits




class _Cache:
    """Finished steps as bundles under one folder, valid for one fingerprint."""

    def __init__(self, folder: str, fingerprint: str):
        self.folder = folder
        self.fingerprint = fingerprint
        os.makedirs(folder, exist_ok=True)

    def load(self, step: str) -> tuple[dict, dict[str, str]] | None:
        files.recover_bundle(self.folder, step)
        if not files.verify_bundle(self.folder, step):
            return None
        paths = {s: os.path.join(self.folder, step + s) for s in (".json", ".keras", ".encodings")}
        with open(paths[".json"], encoding="utf-8") as f:
            record = json.load(f)
        if record.get("version") != _CACHE_VERSION or record.get("fingerprint") != self.fingerprint:
            logging.warning("AutoQuant: cached step %s was made for another model, data or settings; it is redone", step)
            return None
        return record, {s: p for s, p in paths.items() if os.path.exists(p)}

    def save(self, step: str, record: dict, state: _State | None) -> None:
        writers = {".json": lambda path: files.atomic_write(path, json.dumps({**record, "version": _CACHE_VERSION, "fingerprint": self.fingerprint}, indent=1))}
        if state is not None:
            writers[".keras"] = lambda path: state.model.save(path)
            if state.frozen_encodings:
                writers[".encodings"] = lambda path: files.atomic_write(path, open(state.frozen_encodings, "rb").read())
        files.write_bundle(self.folder, step, writers)


def _samples(data: Any, model: keras.Model, num_batches: int | None, batch_size: int) -> np.ndarray:
    batches = [b[0] for b in iterate_batches(data, model_inputs(model), batch_size, num_batches, purpose="AutoQuant data")]
    if not batches:
        raise ValueError("AutoQuant data gave no batches. Expected unlabeled calibration samples.")
    return np.concatenate(batches)


def auto_quantize(
    model: keras.Model,
    eval_fn: Callable[[keras.Model], float],
    data: Any,
    allowed_accuracy_drop: float = 0.0,
    *,
    param_bw: int = 8,
    output_bw: int = 8,
    quant_scheme: str = "tf_enhanced",
    config_file: Any = None,
    results_dir: str | os.PathLike = "/tmp",
    cache_id: str | None = None,
    strict_validation: bool = True,
    scheme_candidates: Sequence[QuantSchemeCandidate] = DEFAULT_SCHEME_CANDIDATES,
    adaround_params: AdaroundParameters | None = None,
    num_calibration_batches: int | None = None,
    batch_size: int = 32,
    filename_prefix: str = "auto_quant",
    steps: Sequence[str] = STEPS,
    stop_after_baseline: bool = False,
    amp_candidates: Sequence[Any] | None = None,
    amp_eval_fn_phase2: Callable[[keras.Model], float] | None = None,
    analyze: bool = False,
    verbose: bool = True,
) -> AutoQuantResult:
    """Runs the AutoQuant flow (module docstring) and returns the best result.

    Args:
        model: the float model (not modified).
        eval_fn: ``eval_fn(model) -> score`` (higher is better), called on sims' models.
        data: unlabeled calibration samples in any ``calibration_data`` form (array, dataset...).
        allowed_accuracy_drop: the score may fall this much below FP32, in [0, 1].
        param_bw / output_bw / quant_scheme / config_file: the sim's settings (``quant_scheme`` is
            the baseline's scheme for weights and activations).
        results_dir: where the best result and the cache go (checked writable first).
        cache_id: name of the cache folder; None: no cache.
        strict_validation: a failed W16A16 check raises (else it warns).
        scheme_candidates: candidates of the quant_scheme step.
        adaround_params: AdaRound settings (default: every calibration sample, ``DEFAULT_ADAROUND_ITERATIONS``
            iterations per layer).
        num_calibration_batches: batches of ``data`` used (None: all).
        steps: the steps to run, a subset of ``STEPS`` in any order (run in ``STEPS`` order).
        stop_after_baseline: ``run_inference``: stop after the baseline.
        amp_candidates: ``(activation_bw, param_bw)`` candidates of the last-resort ``amp`` step
            (``aimet_tf.ptq.mixed_precision``; None: the step is skipped). It starts from the last kept
            BN-fold / scheme / CLE state (bias correction and AdaRound fit the weights to ``param_bw``
            and are not carried over) and is kept only if it scores higher.
        amp_eval_fn_phase2: AMP's phase-2 score (None: ``eval_fn`` for both phases).
        analyze: also run ``QuantAnalyzer`` on the best result into ``results_dir/quant_analyzer``
            (linked from the report).
        verbose: a progress line per step on stderr (else absl logging).

    Raises:
        ValueError: for ``allowed_accuracy_drop`` outside [0, 1], unknown steps, a model
            ``prepare_model`` refuses, a failed W16A16 check under ``strict_validation``.
        TypeError / ValueError: an eval callback returning a non-number or a non-finite one.
        OSError: an unwritable ``results_dir`` (before any work).
    """
    if isinstance(allowed_accuracy_drop, bool) or not isinstance(allowed_accuracy_drop, numbers.Real) or not 0.0 <= float(allowed_accuracy_drop) <= 1.0:
        raise ValueError(f"Expected allowed_accuracy_drop in [0, 1]. Received: {allowed_accuracy_drop!r}")
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"Unknown AutoQuant steps {unknown}. Expected names from {STEPS}.")
    results_dir = files.check_writable_folder(results_dir, "AutoQuant's results (checked before any work)")
    if amp_candidates is not None:
        from aimet_tf.ptq.mixed_precision import Candidate

        amp_candidates = [Candidate.parse(c) for c in amp_candidates]
    records: list[StepRecord] = []
    progress = Progress("AutoQuant", verbose)
    planned = [step for step in STEPS if step in steps or step in ("prepare", "baseline")]

    def note(record: StepRecord) -> None:
        records.append(record)
        progress.show("step", len(records), len(planned), f"{record.name}: {record.detail[:70]}", record.score, record.cached)

    prepared = prepare_model(model)
    samples = _samples(data, prepared, num_calibration_batches, batch_size)
    settings = {
        "param_bw": param_bw, "output_bw": output_bw, "quant_scheme": str(quant_scheme), "config": repr(config_file),
        "candidates": [dataclasses.astuple(c) for c in scheme_candidates], "steps": list(steps),
        "adaround": None if adaround_params is None else repr(vars(adaround_params)),
        "amp": None if amp_candidates is None else [str(c) for c in amp_candidates],
    }
    cache = None
    if cache_id is not None:
        files.check_file_name(cache_id, "cache_id")
        cache = _Cache(os.path.join(results_dir, ".auto_quant", cache_id), run_fingerprint(prepared, samples, settings))

    def make_sim(state: _State, bitwidths: tuple[int, int] = (param_bw, output_bw)) -> QuantizationSimModel:
        sim = QuantizationSimModel(
            state.model, quant_scheme=state.scheme.output_scheme, default_param_bw=bitwidths[0],
            default_output_bw=bitwidths[1], config_file=config_file, percentile=state.scheme.percentile,
        )
        for _, quantizer, _ in sim.param_quantizers():
            quantizer.quant_scheme = state.scheme.param_scheme
        if state.bitwidths:
            by_name = {**dict(sim.activation_quantizers()), **{n: q for n, q, _ in sim.param_quantizers()}}
            for name, bits in state.bitwidths.items():
                by_name[name].bitwidth = bits
        if state.frozen_encodings:
            sim.set_and_freeze_param_encodings(state.frozen_encodings)
        sim.compute_encodings(samples, batch_size=batch_size)
        return sim

    def evaluate(sim_or_model, where: str) -> float:
        target_model = sim_or_model.model if isinstance(sim_or_model, QuantizationSimModel) else sim_or_model
        return checked_score(eval_fn(target_model), where)

    def cached(step: str) -> tuple[dict, dict[str, str]] | None:
        return None if cache is None else cache.load(step)

    fp32 = evaluate(prepared, "FP32 model")
    target = fp32 - float(allowed_accuracy_drop)
    note(StepRecord("prepare", fp32, True, "FP32 score of the prepared model", 0.0))
    base_scheme = QuantSchemeCandidate(str(quant_scheme), str(quant_scheme))
    best = _State(prepared, base_scheme)

    if "w16a16" in steps:
        start = time.perf_counter()
        hit = cached("w16a16")
        score = hit[0]["score"] if hit else evaluate(make_sim(best, (16, 16)), "W16A16 sim")
        if cache is not None and not hit:
            cache.save("w16a16", {"score": score}, None)
        ok = score >= fp32 - 0.01
        note(StepRecord("w16a16", score, ok, "16-bit sim within 1 point of FP32" if ok else "16-bit sim more than 1 point below FP32", time.perf_counter() - start, bool(hit)))
        if not ok:
            message = (f"AutoQuant: the W16A16 sim scores {score:.4f} against FP32 {fp32:.4f}: the model is not simulated "
                       "faithfully (an unsupported layer or a data-dependent op?). Expected a drop below 0.01.")
            if strict_validation:
                raise ValueError(message + " Pass strict_validation=False to go on.")
            logging.warning("%s", message)

    start = time.perf_counter()
    best_sim = make_sim(best)
    best_score = evaluate(best_sim, "baseline sim")
    note(StepRecord("baseline", best_score, True, f"W{param_bw}A{output_bw}, {base_scheme.label}", time.perf_counter() - start))
    if stop_after_baseline:
        return AutoQuantResult(best_sim, best_score, fp32, target, None, None, records)

    amp_start = [best]  # the last kept state whose weights do not depend on the bitwidths

    def try_step(step: str, build: Callable[[], tuple[_State, QuantizationSimModel | None, str]], keep_ties: bool = False) -> None:
        nonlocal best, best_sim, best_score
        if step not in steps or best_score >= target:
            if step in steps:
                note(StepRecord(step, None, False, "skipped: target already met", 0.0))
            return
        start = time.perf_counter()
        hit = cached(step)
        if hit:
            record, paths = hit
            state = _State(keras.saving.load_model(paths[".keras"], compile=False), QuantSchemeCandidate(*record["scheme"]),
                           paths.get(".encodings"), record.get("bitwidths"))
            score, detail, was_cached = record["score"], record["detail"], True
            sim = None
        else:
            state, sim, detail = build()
            if sim is None:
                sim = make_sim(state)
            score = evaluate(sim, step)
            was_cached = False
            if cache is not None:
                cache.save(step, {"score": score, "detail": detail, "scheme": dataclasses.astuple(state.scheme),
                                  "bitwidths": state.bitwidths}, state)
        kept = score > best_score or (keep_ties and score == best_score)
        why = "" if kept else f"; not kept ({score:.4f} {'<' if keep_ties else '<='} {best_score:.4f})"
        note(StepRecord(step, score, kept, detail + why, time.perf_counter() - start, was_cached))
        logging.info("AutoQuant %s: %.4f (%s)", step, score, "kept" if kept else "not kept")
        if kept:
            best, best_sim, best_score = state, sim if sim is not None else make_sim(state), score
            if step in _BITWIDTH_FREE_STEPS:
                amp_start[0] = state
            if was_cached:
                logging.info("AutoQuant %s: restored from the cache", step)

    # Kept on a tie too: a folded model is what every target runs.
    try_step("batch_norm_fold", lambda: (_State(fold_batch_norms(best.model), best.scheme), None, "batch norms folded"), keep_ties=True)

    def scheme_step():
        scored = []
        for candidate in scheme_candidates:
            state = _State(best.model, candidate)
            sim = make_sim(state)
            scored.append((evaluate(sim, f"scheme {candidate.label}"), candidate, sim))
            logging.info("AutoQuant quant_scheme %s: %.4f", candidate.label, scored[-1][0])
        score, candidate, sim = max(scored, key=lambda t: t[0])
        detail = "; ".join(f"{c.label}: {s:.4f}" for s, c, _ in scored)
        return _State(best.model, candidate), sim, f"best {candidate.label} ({detail})"

    try_step("quant_scheme", scheme_step)
    try_step("cle", lambda: (_State(equalize_model(best.model), best.scheme), None, "cross-layer equalization"))

    def bias_step():
        sim = make_sim(best)
        correct_bias(sim, samples, batch_size=batch_size, verbose=0)
        return _State(sim.float_model(), best.scheme), None, "empirical bias correction"

    try_step("bias_correction", bias_step)

    def adaround_step():
        params = adaround_params or AdaroundParameters(
            samples, num_batches=max(1, len(samples) // batch_size), default_num_iterations=DEFAULT_ADAROUND_ITERATIONS, batch_size=batch_size
        )
        folder = os.path.join(results_dir, ".auto_quant", cache_id or "adaround")
        # AdaRound learns the rounding of the weights as they are: it starts from the last
        # bitwidth-free state, not from bias-corrected weights (AIMET's v2 has no bias correction).
        start = amp_start[0]
        ada = apply_adaround(start.model, params, folder, "adaround", default_param_bw=param_bw,
                             default_quant_scheme=best.scheme.param_scheme, config_file=config_file,
                             default_output_bw=output_bw, verbose=0)
        return _State(ada, best.scheme, os.path.join(folder, "adaround.encodings")), None, "AdaRound (from the last BN-fold / scheme / CLE state)"

    try_step("adaround", adaround_step)

    def amp_step():
        from aimet_tf.ptq.mixed_precision import choose_mixed_precision

        candidates = amp_candidates  # parsed before any work
        top = max(candidates, key=lambda c: (c.bit_ops, c.activation_bw, c.param_bw))
        # AMP changes bitwidths, so it starts from the last state whose weights fit any bitwidth: bias
        # correction and AdaRound fitted the weights to param_bw and are not carried over.
        start_state = _State(amp_start[0].model, amp_start[0].scheme)
        sim = make_sim(start_state, (top.param_bw, top.activation_bw))
        result = choose_mixed_precision(
            sim, candidates, eval_fn, amp_eval_fn_phase2, float(allowed_accuracy_drop), os.path.join(results_dir, "amp"),
            clean_start=cache is None, forward_pass=samples, verbose=False,
        )
        bitwidths = {n: q.bitwidth for n, q in sim.activation_quantizers()}
        bitwidths.update({n: q.bitwidth for n, q, _ in sim.param_quantizers()})
        chosen = result.choice_by_group()
        counts = {c: list(chosen.values()).count(c) for c in sorted(set(chosen.values()))}
        detail = f"mixed precision over {[str(c) for c in candidates]}: groups per candidate {counts}"
        return _State(start_state.model, start_state.scheme, None, bitwidths), sim, detail

    if amp_candidates:
        try_step("amp", amp_step)
    elif "amp" in steps and best_score < target:
        note(StepRecord("amp", None, False, "skipped: no mixed-precision candidates given", 0.0))

    paths = best_sim.export(results_dir, filename_prefix, convert_to_pb=False)
    encoding_path, model_path = paths["encodings"], paths["model"]
    for record in records:
        logging.info("AutoQuant step %-16s %s %s", record.name, "-" if record.score is None else f"{record.score:.4f}", record.detail)
    result = AutoQuantResult(best_sim, best_score, fp32, target, encoding_path, model_path, records)
    analysis = None
    if analyze:
        analysis = _analyze(best, eval_fn, samples, batch_size, param_bw, output_bw, config_file, results_dir)
    result.report_path = write_report(results_dir, result, filename_prefix, analysis)
    return result


def _analyze(best: _State, eval_fn, samples, batch_size, param_bw, output_bw, config_file, results_dir) -> str:
    """QuantAnalyzer on the best float model with the best scheme; returns its index page."""
    from aimet_tf.analysis.quant_analyzer import QuantAnalyzer

    def forward(model, data):
        for start in range(0, len(data), batch_size):
            model(data[start:start + batch_size], training=False)

    analyzer = QuantAnalyzer(best.model, (forward, samples), (lambda m, _: eval_fn(m), None))
    folder = os.path.join(results_dir, "quant_analyzer")
    analyzer.analyze(quant_scheme=best.scheme.output_scheme, default_param_bw=param_bw, default_output_bw=output_bw,
                     config_file=config_file, results_dir=folder)
    return os.path.join(folder, "index.html")


_STEP_COLOURS = {"kept": "#2ca02c", "not kept": "#d62728", "skipped": "#bbbbbb"}


def _status(record: StepRecord) -> str:
    if record.score is None:
        return "skipped"
    return "kept" if record.kept else "not kept"


def _diagram(records: Sequence[StepRecord]) -> str:
    """The steps as a row of boxes (inline SVG), coloured by what happened to each."""
    import html as _html

    width, gap, height = 118, 22, 58
    parts = []
    for k, record in enumerate(records):
        x = k * (width + gap) + 4
        colour = _STEP_COLOURS[_status(record)]
        score = "" if record.score is None else f"{record.score:.4f}"
        parts.append(
            f'<rect x="{x}" y="4" width="{width}" height="{height}" rx="8" fill="{colour}" fill-opacity="0.18" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{x + width / 2}" y="27" text-anchor="middle" font-size="13" font-family="sans-serif">{_html.escape(record.name)}</text>'
            f'<text x="{x + width / 2}" y="47" text-anchor="middle" font-size="12" font-family="monospace">{score or _status(record)}</text>'
        )
        if k + 1 < len(records):
            ax = x + width
            parts.append(f'<line x1="{ax}" y1="{4 + height / 2}" x2="{ax + gap - 4}" y2="{4 + height / 2}" stroke="#444" stroke-width="2"/>'
                         f'<polygon points="{ax + gap - 4},{4 + height / 2 - 5} {ax + gap},{4 + height / 2} {ax + gap - 4},{4 + height / 2 + 5}" fill="#444"/>')
    total = len(records) * (width + gap)
    legend = " ".join(f'<span style="color:{c}">&#9632;</span> {name}' for name, c in _STEP_COLOURS.items())
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{height + 10}" role="img" '
            f'aria-label="AutoQuant steps">{"".join(parts)}</svg><p>{legend}</p>')


def write_report(results_dir: str, result: AutoQuantResult, filename_prefix: str = "auto_quant",
                 analysis_index: str | None = None) -> str:
    """``results_dir/<prefix>_report.html``: the step diagram, each step's score, whether it was kept
    and why, a chart of the score after each step against FP32 and the target, the files of the best
    result and, when given, a link to the QuantAnalyzer pages. Self-contained (no network)."""
    from aimet_tf.analysis import report

    scored = [(k, r) for k, r in enumerate(result.steps) if r.score is not None]
    chart = report.LineChart(
        "Score after each step", "step", "eval score",
        [report.Series("score", [k for k, _ in scored], [r.score for _, r in scored], labels=[r.name for _, r in scored])],
        hlines=((result.fp32_score, "FP32"), (result.target, "target")),
    )
    rows = [[r.name, "" if r.score is None else r.score, _status(r), r.detail, f"{r.seconds:.1f}", "yes" if r.cached else ""]
            for r in result.steps]
    links = []
    for label, path in (("encodings", result.encoding_path), ("model", result.model_path), ("QuantAnalyzer pages", analysis_index)):
        if path:
            links.append(f'<li>{label}: <a href="{os.path.relpath(path, results_dir)}">{os.path.relpath(path, results_dir)}</a></li>')
    summary = (f"Best score {result.score:.4f} against FP32 {result.fp32_score:.4f} (target {result.target:.4f}: "
               f"{'met' if result.target_met else 'not met'}).")
    blocks = [
        report.Html(_diagram(result.steps)),
        summary,
        chart,
        report.Table("Steps", ["step", "score", "status", "what and why", "seconds", "from cache"], rows),
        report.Html("<h3>Files of the best result</h3><ul>" + "".join(links) + "</ul>"),
    ]
    return report.write_html(os.path.join(results_dir, f"{filename_prefix}_report.html"), "AutoQuant report", blocks)
