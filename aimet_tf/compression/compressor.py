"""Whole-model compression: per-layer ratios given (manual) or chosen greedily (auto).

A ratio is the fraction of a layer's cost (MACs, or weights for ``cost_metric="memory"``) that
stays: 0.5 halves the layer. Channel pruning's ratio is the fraction of input channels kept; it
also removes the producer's matching output channels.

Greedy selection (AIMET's): every candidate layer is compressed alone at each candidate ratio
``k / n`` (k = 1..n, ``n = num_comp_ratio_candidates``) and the model evaluated, giving a
sensitivity table. For an accuracy level t, each layer takes the smallest ratio whose score is
>= t; the highest level whose choice meets the target cost ratio wins. With
``use_monotonic_fit`` each layer's scores are first made non-decreasing in the ratio (a running
maximum), so that noise cannot make a smaller ratio look better. The table is cached as JSON
after every layer (atomic writes); a rerun with the same cache file continues where it stopped,
and a cache written for another model, scheme, metric or candidate list is refused.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import numbers
import os
from typing import Callable, Mapping, Sequence

import keras
import numpy as np
from absl import logging

from aimet_tf import distribute, files
from aimet_tf.metrics import checked_score
from aimet_tf.compression import schemes
from aimet_tf.compression.channel_pruning import kept_channel_count, producer_of, prune_input_channels
from aimet_tf.graph.cost import total_cost
from aimet_tf.ptq.adaround_checkpoint import run_fingerprint

__all__ = [
    "CompressionStats",
    "LayerCompression",
    "StaleCacheError",
    "candidate_ratios",
    "compress_layer",
    "compress_model",
    "compress_with_ratios",
    "greedy_ratios",
    "layer_sensitivity",
    "ratio_savings",
]

_CACHE_VERSION = 1


class StaleCacheError(ValueError):
    """An eval-scores cache written for another model, scheme, cost metric or candidate list."""


def _check_ratio(ratio, where: str) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (numbers.Real, decimal.Decimal)):
        raise TypeError(f"Expected a number for {where}. Received: {ratio!r} ({type(ratio).__name__})")
    value = float(ratio)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"Expected {where} in (0, 1]. Received: {ratio!r}")
    return value


def _check_scheme(scheme: str) -> str:
    if scheme not in schemes.SCHEMES:
        raise ValueError(f"Expected compress_scheme in {schemes.SCHEMES}. Received: {scheme!r}")
    return scheme


def compress_layer(
    model: keras.Model,
    name: str,
    scheme: str,
    ratio: float,
    cost_metric: str = "mac",
    *,
    samples: np.ndarray | None = None,
    reference_model: keras.Model | None = None,
    tucker_iterations: int = 10,
    multiplicity: int = 1,
) -> keras.Model:
    """``model`` with layer ``name`` compressed by ``scheme`` to ``ratio`` of its cost (a new model).

    Raises:
        ValueError: for a ratio outside (0, 1], an unknown scheme, a layer the scheme cannot
            compress, or channel pruning without ``samples``.
    """
    _check_scheme(scheme)
    ratio = _check_ratio(ratio, f"the ratio of layer {name!r}")
    if scheme == "channel_pruning":
        if samples is None:
            raise ValueError("Channel pruning needs calibration samples (samples=...). Received: None")
        return prune_input_channels(model, name, ratio, samples, reference_model, multiplicity=multiplicity)[0]
    ranks = schemes.rank_for_ratio(model, name, scheme, ratio, cost_metric, multiplicity)
    if scheme == "spatial_svd":
        return schemes.spatial_svd_layer(model, name, *ranks)
    if scheme == "weight_svd":
        return schemes.weight_svd_layer(model, name, *ranks)
    return schemes.tucker2_layer(model, name, *ranks, iterations=tucker_iterations)


def compress_with_ratios(
    model: keras.Model,
    scheme: str,
    ratios: Mapping[str, float] | Sequence[tuple[str, float]],
    cost_metric: str = "mac",
    *,
    samples: np.ndarray | None = None,
    tucker_iterations: int = 10,
    multiplicity: int = 1,
) -> keras.Model:
    """Compresses each named layer to its ratio (manual mode), in model order; 1.0 leaves a layer.

    Every name and ratio is checked before any layer is compressed.

    Raises:
        ValueError: for an unknown layer, a layer the scheme cannot compress (naming the ones it
            can), a ratio outside (0, 1], or a layer given twice.
    """
    _check_scheme(scheme)
    pairs = list(ratios.items()) if isinstance(ratios, Mapping) else [tuple(p) for p in ratios]
    allowed = schemes.compressible_layers(model, scheme)
    seen = set()
    for name, ratio in pairs:
        if name in seen:
            raise ValueError(f"Layer {name!r} is given twice.")
        seen.add(name)
        if name not in allowed:
            raise ValueError(f"{scheme} cannot compress layer {name!r}. Expected one of {allowed}.")
        _check_ratio(ratio, f"the ratio of layer {name!r}")
    order = {name: i for i, name in enumerate(allowed)}
    compressed = model
    for name, ratio in sorted(pairs, key=lambda p: order[p[0]]):
        if float(ratio) < 1.0:
            compressed = compress_layer(
                compressed, name, scheme, ratio, cost_metric,
                samples=samples, reference_model=model, tucker_iterations=tucker_iterations, multiplicity=multiplicity,
            )
    return compressed


def candidate_ratios(num_candidates: int) -> list[float]:
    """AIMET's candidates: k / n for k = 1..n (n = 10: 0.1, 0.2, ..., 1.0)."""
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 2:
        raise ValueError(f"Expected num_comp_ratio_candidates >= 2. Received: {num_candidates!r}")
    return [round(k / num_candidates, 10) for k in range(1, num_candidates + 1)]


def ratio_savings(model: keras.Model, name: str, scheme: str, ratio: float, cost_metric: str, multiplicity: int = 1) -> int:
    """Cost removed from the model by compressing layer ``name`` alone to ``ratio``."""
    if ratio >= 1.0:
        return 0
    if scheme == "channel_pruning":
        layer = model.get_layer(name)
        channels = int(layer.kernel.shape[-2])
        kept = kept_channel_count(channels, ratio, multiplicity) / channels
        both = schemes.layer_cost(model, name, cost_metric) + schemes.layer_cost(model, producer_of(model, name), cost_metric)
        return int(round((1.0 - kept) * both))
    graph_shapes = schemes.layer_io_shapes(model, name)
    layer = model.get_layer(name)
    ranks = schemes.rank_for_ratio(model, name, scheme, ratio, cost_metric, multiplicity)
    full = schemes.chain_cost(scheme, layer, *graph_shapes, (), cost_metric)
    return full - schemes.chain_cost(scheme, layer, *graph_shapes, ranks, cost_metric)




def _fingerprint(model: keras.Model, scheme: str, cost_metric: str, candidates: Sequence[float], multiplicity: int) -> str:
    return run_fingerprint(
        model, np.zeros(0, np.float32), {"scheme": scheme, "metric": cost_metric, "candidates": list(candidates), "multiplicity": multiplicity}
    )


def _read_cache(path: str, fingerprint: str) -> dict[str, dict[str, float]]:
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Eval-scores cache {path!r} cannot be read ({error}). Delete it or pass another path.") from error
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or data.get("fingerprint") != fingerprint:
        raise StaleCacheError(
            f"Eval-scores cache {path!r} was written for another model, scheme, cost metric or candidate list "
            "(its fingerprint differs). Expected a cache of this run. Delete it or pass another path."
        )
    return {layer: dict(scores) for layer, scores in data["scores"].items()}


def layer_sensitivity(
    model: keras.Model,
    scheme: str,
    eval_fn: Callable[[keras.Model], float],
    candidates: Sequence[float],
    layers: Sequence[str] | None = None,
    cost_metric: str = "mac",
    *,
    samples: np.ndarray | None = None,
    cache_path: str | os.PathLike | None = None,
    tucker_iterations: int = 10,
    multiplicity: int = 1,
    workers: tuple[int, int] | None = None,
    worker_timeout: float = 24 * 3600.0,
) -> dict[str, dict[float, float]]:
    """Eval score of ``model`` with each layer alone compressed at each candidate ratio.

    ``scores[layer][1.0]`` is the uncompressed model's score. With ``cache_path`` the table is
    written after every layer and reused by a rerun (see the module docstring).

    ``workers=(index, count)`` shares the (layer, ratio) evaluations out over ``count`` processes
    running the same call on the same model and data, with a ``cache_path`` in a folder they all
    see (``aimet_tf.distribute.SharedResults``: each worker's scores go to
    ``compression_sensitivity.worker{i}-of-{count}.json`` beside it, one at a time, and every
    worker returns the whole table).

    Raises:
        ValueError: for a bad scheme, ratio or ``workers``, or ``workers`` without ``cache_path``.
        TimeoutError: when another worker's scores do not arrive within ``worker_timeout``.
    """
    _check_scheme(scheme)
    layers = list(schemes.compressible_layers(model, scheme) if layers is None else layers)
    candidates = [_check_ratio(c, "a candidate ratio") for c in candidates]
    workers = distribute.check_workers(workers)
    if workers[1] > 1 and cache_path is None:
        raise ValueError(f"Expected cache_path (in a folder every worker sees) with workers={workers}. Received: cache_path=None")
    fingerprint = _fingerprint(model, scheme, cost_metric, candidates, multiplicity)
    cache_path = None if cache_path is None else os.fspath(cache_path)
    cached = _read_cache(cache_path, fingerprint) if cache_path else {}
    baseline = checked_score(eval_fn(model), "uncompressed model")
    shared = distribute.SharedResults(
        os.path.dirname(os.path.abspath(cache_path)) if cache_path else ".", "compression_sensitivity", workers,
        f"{fingerprint}:{baseline!r}")
    tasks = [(name, repr(ratio)) for name in layers for ratio in candidates if ratio < 1.0]
    mine = set(shared.mine(tasks))
    table: dict[str, dict[str, float]] = {}
    for index, name in enumerate(layers, 1):
        scores = dict(cached.get(name, {}))
        for ratio in candidates:
            key = repr(ratio)
            if ratio >= 1.0:
                scores.setdefault(key, baseline)
                continue
            if (name, key) not in mine:
                continue
            known = scores.get(key, shared.own.get(f"{name}|{key}"))
            if known is None:
                compressed = compress_layer(
                    model, name, scheme, ratio, cost_metric,
                    samples=samples, tucker_iterations=tucker_iterations, multiplicity=multiplicity,
                )
                known = checked_score(eval_fn(compressed), f"layer {name!r} at ratio {ratio}")
                logging.info("compression sensitivity [%d/%d] %s at %.2f: %.4f", index, len(layers), name, ratio, known)
            scores[key] = known
            shared.record(f"{name}|{key}", known)
        table[name] = scores
        if cache_path and shared.count == 1:
            _write_cache(cache_path, fingerprint, {**cached, **table})
    if shared.count > 1:
        everything = shared.gather([f"{n}|{k}" for n, k in tasks], worker_timeout)
        for name, key in tasks:
            table[name][key] = everything[f"{name}|{key}"]
        _write_cache(cache_path, fingerprint, {**cached, **table})
    return {name: {float(k): v for k, v in scores.items()} for name, scores in table.items()}


def _write_cache(path: str, fingerprint: str, scores: dict) -> None:
    files.atomic_write(path, json.dumps({"version": _CACHE_VERSION, "fingerprint": fingerprint, "scores": scores}, indent=1))


def greedy_ratios(
    scores: Mapping[str, Mapping[float, float]],
    savings: Mapping[str, Mapping[float, int]],
    total: int,
    target_ratio: float,
    use_monotonic_fit: bool = False,
) -> dict[str, float]:
    """Per-layer ratios meeting ``target_ratio`` of ``total`` cost at the highest accuracy level.

    Args:
        scores: ``scores[layer][ratio]`` eval scores (ratio 1.0 = uncompressed).
        savings: ``savings[layer][ratio]`` cost removed by that choice.
        total: the model's cost.
        target_ratio: the fraction of ``total`` that may stay, in (0, 1].

    Raises:
        ValueError: when even every layer at its smallest ratio keeps more than the target.
    """
    target_ratio = _check_ratio(target_ratio, "target_comp_ratio")
    curves = {}
    for layer, by_ratio in scores.items():
        ratios = sorted(by_ratio)
        values = [by_ratio[r] for r in ratios]
        if use_monotonic_fit:
            values = list(np.maximum.accumulate(values))
        curves[layer] = list(zip(ratios, values))

    def choose(level: float) -> dict[str, float]:
        picked = {}
        for layer, curve in curves.items():
            fitting = [r for r, v in curve if v >= level]
            picked[layer] = min(fitting) if fitting else max(r for r, _ in curve)
        return picked

    def kept(choice: Mapping[str, float]) -> float:
        return (total - sum(savings[layer][r] for layer, r in choice.items())) / total

    levels = sorted({v for curve in curves.values() for _, v in curve}, reverse=True)
    for level in levels:
        choice = choose(level)
        if kept(choice) <= target_ratio + 1e-12:
            return choice
    smallest = {layer: min(r for r, _ in curve) for layer, curve in curves.items()}
    raise ValueError(
        f"Target compression ratio {target_ratio} cannot be met: with every candidate layer at its smallest "
        f"ratio the model keeps {kept(smallest):.3f} of its cost. Expected a target >= {kept(smallest):.3f}, "
        "or more layers / smaller candidate ratios."
    )


@dataclasses.dataclass(frozen=True)
class LayerCompression:
    """One layer's choice: its ratio and the cost it had and keeps."""

    layer: str
    ratio: float
    cost_before: int
    cost_after: int


@dataclasses.dataclass
class CompressionStats:
    """What a compression run did (AIMET's ``CompressionStats`` fields, plus the per-layer table)."""

    baseline_model_accuracy: float
    compressed_model_accuracy: float
    mac_compression_ratio: float
    memory_compression_ratio: float
    scheme: str
    cost_metric: str
    per_layer: list[LayerCompression]
    eval_scores: dict[str, dict[float, float]] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"Compression ({self.scheme}, cost metric {self.cost_metric})",
            f"  baseline accuracy   {self.baseline_model_accuracy:.4f}",
            f"  compressed accuracy {self.compressed_model_accuracy:.4f}",
            f"  MACs kept           {self.mac_compression_ratio:.3f}",
            f"  weights kept        {self.memory_compression_ratio:.3f}",
            "  layer ratios:",
        ]
        lines += [f"    {c.layer:<24} {c.ratio:.2f}  ({c.cost_before} -> {c.cost_after})" for c in self.per_layer]
        return "\n".join(lines)


def compress_model(
    model: keras.Model,
    scheme: str,
    eval_fn: Callable[[keras.Model], float],
    *,
    ratios: Mapping[str, float] | Sequence[tuple[str, float]] | None = None,
    target_ratio: float | None = None,
    cost_metric: str = "mac",
    num_candidates: int = 10,
    use_monotonic_fit: bool = False,
    layers_to_ignore: Sequence[str] = (),
    samples: np.ndarray | None = None,
    cache_path: str | os.PathLike | None = None,
    saved_eval_scores: Mapping[str, Mapping[float, float]] | None = None,
    tucker_iterations: int = 10,
    multiplicity: int = 1,
    results_dir: str | os.PathLike | None = None,
    workers: tuple[int, int] | None = None,
) -> tuple[keras.Model, CompressionStats]:
    """Compresses ``model`` with given ``ratios`` (manual) or to ``target_ratio`` (greedy auto mode).

    In auto mode with ``results_dir``, the per-layer sensitivity is drawn to
    ``results_dir/compression_sensitivity_<scheme>.png`` and ``.html``
    (:func:`aimet_tf.compression.report.write_sensitivity_report`). ``workers`` shares the
    sensitivity sweep out over processes (:func:`layer_sensitivity`; needs ``cache_path``).

    Returns:
        ``(compressed model, stats)``; ``model`` is untouched.

    Raises:
        ValueError: for both or neither of ``ratios`` / ``target_ratio``, and as the functions above.
    """
    _check_scheme(scheme)
    if (ratios is None) == (target_ratio is None):
        raise ValueError("Expected either ratios (manual mode) or target_ratio (auto mode). Received: "
                         f"ratios={ratios!r}, target_ratio={target_ratio!r}")
    if results_dir is not None:
        results_dir = files.check_writable_folder(results_dir, "the compression report (checked before any work)")
    baseline = checked_score(eval_fn(model), "uncompressed model")
    scores: dict[str, dict[float, float]] = {}
    if ratios is None:
        ignored = set(layers_to_ignore)
        allowed = schemes.compressible_layers(model, scheme)
        unknown = sorted(ignored - set(allowed) - {l.name for l in model.layers})
        if unknown:
            raise ValueError(f"layers_to_ignore names layers the model does not have: {unknown}")
        layers = [n for n in allowed if n not in ignored]
        if not layers:
            raise ValueError(f"No layer of model {model.name!r} left to compress with {scheme}. Compressible: {allowed}")
        candidates = candidate_ratios(num_candidates)
        if saved_eval_scores is not None:
            scores = {n: {float(r): float(v) for r, v in saved_eval_scores[n].items()} for n in layers}
        else:
            scores = layer_sensitivity(
                model, scheme, eval_fn, candidates, layers, cost_metric,
                samples=samples, cache_path=cache_path, tucker_iterations=tucker_iterations, multiplicity=multiplicity,
                workers=workers,
            )
        savings = {n: {r: ratio_savings(model, n, scheme, r, cost_metric, multiplicity) for r in scores[n]} for n in layers}
        cost = total_cost(model)
        choice = greedy_ratios(scores, savings, cost.macs if cost_metric == "mac" else cost.params, target_ratio, use_monotonic_fit)
    else:
        choice = dict(ratios.items()) if isinstance(ratios, Mapping) else {n: r for n, r in ratios}
    compressed = compress_with_ratios(
        model, scheme, choice, cost_metric, samples=samples, tucker_iterations=tucker_iterations, multiplicity=multiplicity
    )
    before, after = total_cost(model), total_cost(compressed)
    per_layer = []
    for name, ratio in choice.items():
        full = schemes.layer_cost(model, name, cost_metric)
        saved = ratio_savings(model, name, scheme, float(ratio), cost_metric, multiplicity)
        per_layer.append(LayerCompression(name, float(ratio), full, full - saved))
    stats = CompressionStats(
        baseline_model_accuracy=baseline,
        compressed_model_accuracy=checked_score(eval_fn(compressed), "compressed model"),
        mac_compression_ratio=after.macs / before.macs if before.macs else 1.0,
        memory_compression_ratio=after.params / before.params if before.params else 1.0,
        scheme=scheme,
        cost_metric=cost_metric,
        per_layer=per_layer,
        eval_scores=scores,
    )
    logging.info("%s", stats)
    if results_dir is not None and scores:
        from aimet_tf.compression.report import write_sensitivity_report

        write_sensitivity_report(
            scores, os.path.join(os.fspath(results_dir), f"compression_sensitivity_{scheme}"),
            f"Per-layer {scheme} sensitivity of {model.name}", baseline=baseline, chosen=choice,
        )
    return compressed, stats
