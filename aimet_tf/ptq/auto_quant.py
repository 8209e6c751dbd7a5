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
from aimet_tf.graph import prepare_model
from aimet_tf.ptq.adaround import AdaroundParameters, apply_adaround
from aimet_tf.ptq.adaround_checkpoint import run_fingerprint
from aimet_tf.ptq.batch_norm_fold import fold_batch_norms
from aimet_tf.ptq.bias_correction import correct_bias
from aimet_tf.ptq.cle import equalize_model
from aimet_tf.quantization.calibration_data import iterate_batches, model_inputs
from aimet_tf.quantization.sim import QuantizationSimModel

__all__ = ["AutoQuantResult", "QuantSchemeCandidate", "StepRecord", "DEFAULT_SCHEME_CANDIDATES", "auto_quantize"]

_CACHE_VERSION = 1
# AdaRound iterations per layer when no AdaroundParameters are given (BENCHMARKS.md: 2k iterations
# recover most of what 10k do on the benchmark models, in a fifth of the time).
DEFAULT_ADAROUND_ITERATIONS = 2000
STEPS = ("prepare", "w16a16", "baseline", "batch_norm_fold", "quant_scheme", "cle", "bias_correction", "adaround")


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

    @property
    def target_met(self) -> bool:
        return self.score >= self.target


@dataclasses.dataclass
class _State:
    model: keras.Model
    scheme: QuantSchemeCandidate
    frozen_encodings: str | None = None  # AdaRound's parameter encodings file




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
    records: list[StepRecord] = []
    prepared = prepare_model(model)
    samples = _samples(data, prepared, num_calibration_batches, batch_size)
    settings = {
        "param_bw": param_bw, "output_bw": output_bw, "quant_scheme": str(quant_scheme), "config": repr(config_file),
        "candidates": [dataclasses.astuple(c) for c in scheme_candidates], "steps": list(steps),
        "adaround": None if adaround_params is None else repr(vars(adaround_params)),
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
    records.append(StepRecord("prepare", fp32, True, "FP32 score of the prepared model", 0.0))
    base_scheme = QuantSchemeCandidate(str(quant_scheme), str(quant_scheme))
    best = _State(prepared, base_scheme)

    if "w16a16" in steps:
        start = time.perf_counter()
        hit = cached("w16a16")
        score = hit[0]["score"] if hit else evaluate(make_sim(best, (16, 16)), "W16A16 sim")
        if cache is not None and not hit:
            cache.save("w16a16", {"score": score}, None)
        ok = score >= fp32 - 0.01
        records.append(StepRecord("w16a16", score, ok, "16-bit sim within 1 point of FP32" if ok else "16-bit sim more than 1 point below FP32", time.perf_counter() - start, bool(hit)))
        if not ok:
            message = (f"AutoQuant: the W16A16 sim scores {score:.4f} against FP32 {fp32:.4f}: the model is not simulated "
                       "faithfully (an unsupported layer or a data-dependent op?). Expected a drop below 0.01.")
            if strict_validation:
                raise ValueError(message + " Pass strict_validation=False to go on.")
            logging.warning("%s", message)

    start = time.perf_counter()
    best_sim = make_sim(best)
    best_score = evaluate(best_sim, "baseline sim")
    records.append(StepRecord("baseline", best_score, True, f"W{param_bw}A{output_bw}, {base_scheme.label}", time.perf_counter() - start))
    if stop_after_baseline:
        return AutoQuantResult(best_sim, best_score, fp32, target, None, None, records)

    def try_step(step: str, build: Callable[[], tuple[_State, QuantizationSimModel | None, str]], keep_ties: bool = False) -> None:
        nonlocal best, best_sim, best_score
        if step not in steps or best_score >= target:
            if step in steps:
                records.append(StepRecord(step, None, False, "skipped: target already met", 0.0))
            return
        start = time.perf_counter()
        hit = cached(step)
        if hit:
            record, paths = hit
            state = _State(keras.saving.load_model(paths[".keras"], compile=False), QuantSchemeCandidate(*record["scheme"]), paths.get(".encodings"))
            score, detail, was_cached = record["score"], record["detail"], True
            sim = None
        else:
            state, sim, detail = build()
            if sim is None:
                sim = make_sim(state)
            score = evaluate(sim, step)
            was_cached = False
            if cache is not None:
                cache.save(step, {"score": score, "detail": detail, "scheme": dataclasses.astuple(state.scheme)}, state)
        kept = score > best_score or (keep_ties and score == best_score)
        why = "" if kept else f"; not kept ({score:.4f} {'<' if keep_ties else '<='} {best_score:.4f})"
        records.append(StepRecord(step, score, kept, detail + why, time.perf_counter() - start, was_cached))
        logging.info("AutoQuant %s: %.4f (%s)", step, score, "kept" if kept else "not kept")
        if kept:
            best, best_sim, best_score = state, sim if sim is not None else make_sim(state), score
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
        ada = apply_adaround(best.model, params, folder, "adaround", default_param_bw=param_bw,
                             default_quant_scheme=best.scheme.param_scheme, config_file=config_file,
                             default_output_bw=output_bw, verbose=0)
        return _State(ada, best.scheme, os.path.join(folder, "adaround.encodings")), None, "AdaRound"

    try_step("adaround", adaround_step)

    paths = best_sim.export(results_dir, filename_prefix, convert_to_pb=False)
    encoding_path, model_path = paths["encodings"], paths["model"]
    for record in records:
        logging.info("AutoQuant step %-16s %s %s", record.name, "-" if record.score is None else f"{record.score:.4f}", record.detail)
    return AutoQuantResult(best_sim, best_score, fp32, target, encoding_path, model_path, records)
