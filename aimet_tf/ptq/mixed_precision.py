"""Automatic mixed precision (AMP): the cheapest per-group bitwidths within an accuracy budget.

The flow (AIMET's AMP, REFERENCE.md; the maths of groups, costs and the search is written here):

1. **Quantizer groups** (:func:`find_quantizer_groups`): quantizers that must share a bitwidth. A
   layer with weights forms a group with the activation quantizers that quantize its inputs (the
   nearest enabled ones upstream, through layers whose outputs are not quantized); a tensor read
   by several such layers joins their groups; the inputs of a multi-input op (Add, Concatenate...)
   share one group; a quantizer tied to another (TFLite's shared grids) joins its leader's group.
   Every other activation quantizer is a group of its own.
2. **Candidates** ``(activation_bw, param_bw)``: each group may take those the hardware config's
   ``supported_kernels`` allow for its layers' op types; under the ``tflite`` config a candidate
   TFLite's int8 kernels cannot run (activations other than 8 bits, weights above 8) is refused.
   The highest candidate (most bit operations) is the baseline every group starts from.
3. **Phase 1**: each group alone is lowered to each of its other candidates and the model is
   scored (``eval_fn``). With ``phase1_optimize`` (default, as AIMET's), the encodings of every
   quantizer at every candidate bitwidth are computed once, one ``compute_encodings`` per candidate,
   and a configuration is then applied by setting bitwidths and those encodings (activation ranges
   come from the float forward pass, so they depend on their own bitwidth only); otherwise every
   evaluation recomputes the encodings.
4. **Pareto front**: starting from the baseline, the (group, candidate) pairs are applied from the
   least to the most sensitive (phase-1 score), each one that lowers its group's bitwidths giving
   the next point; a point's cost is its relative bit operations (sum over layers of MACs x weight
   bits x activation bits, divided by the baseline's) or relative weight memory.
5. **Phase 2**: the front is searched (binary search, or interpolation search, or all points
   when ``allowed_accuracy_drop`` is None) with ``eval_fn_phase2`` for the cheapest point whose
   score is at least ``FP32 score - allowed_accuracy_drop`` (FP32: the phase-2 score with every
   quantizer off, as AIMET's; if even the baseline misses it, the baseline is kept, with a warning). The choice is applied to the sim
   and its encodings computed with the forward pass, as a plain ``compute_encodings`` would.

Every phase's results are written to ``results_dir`` as JSON after each evaluation (atomically), so
a rerun with ``clean_start=False`` resumes; a cache written for another model, config, candidate
list or eval data (its baseline score differs) is detected and not reused. The Pareto front is
drawn to ``results_dir/pareto_front.png`` and ``.html``; the choice per group is in
``results_dir/mixed_precision_choice.json``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import keras
import numpy as np
from absl import logging

from aimet_tf import distribute, files
from aimet_tf.graph.cost import layer_costs
from aimet_tf.graph.model_graph import ModelGraph, is_graph_model
from aimet_tf.metrics import checked_score
from aimet_tf.progress import Progress
from aimet_tf.quantization import config as hw_config
from aimet_tf.quantization.encodings_io import activation_name, param_name
from aimet_tf.quantization.quantizers import Quantizer
from aimet_tf.quantization.wrapper import QuantizationWrapper

__all__ = [
    "AMPSearchAlgo",
    "Candidate",
    "MixedPrecisionResult",
    "ParetoPoint",
    "QuantizerGroup",
    "allowed_candidates",
    "choose_fast_mixed_precision",
    "choose_mixed_precision",
    "find_quantizer_groups",
    "relative_cost",
    "sqnr_metric",
]

_CACHE_VERSION = 1
_MULTI_INPUT_OPS = (
    keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Average,
    keras.layers.Maximum, keras.layers.Minimum, keras.layers.Concatenate,
)


class AMPSearchAlgo(enum.Enum):
    """How phase 2 searches the Pareto front (AIMET's names)."""

    Binary = 0
    Interpolation = 1
    BruteForce = 2


@dataclasses.dataclass(frozen=True, order=True)
class Candidate:
    """A bitwidth pair: ``activation_bw`` for activation quantizers, ``param_bw`` for parameters."""

    activation_bw: int
    param_bw: int

    @classmethod
    def parse(cls, value: Any) -> "Candidate":
        """From a ``Candidate``, ``(activation_bw, param_bw)`` or AIMET's
        ``((activation_bw, dtype), (param_bw, dtype))`` with integer dtypes.

        Raises:
            ValueError: for any other form, float dtypes, or bitwidths outside 2..32.
        """
        if isinstance(value, Candidate):
            return value
        try:
            first, second = value
        except (TypeError, ValueError):
            raise ValueError(f"Expected a candidate (activation_bw, param_bw) or ((activation_bw, dtype), (param_bw, dtype)). "
                             f"Received: {value!r}") from None
        bits = []
        for part, what in ((first, "activation"), (second, "param")):
            if isinstance(part, (tuple, list)):
                if len(part) != 2:
                    raise ValueError(f"Expected ({what}_bw, dtype) in candidate {value!r}. Received: {part!r}")
                bw, dtype = part
                kind = getattr(dtype, "name", dtype)
                if kind != "int":
                    raise ValueError(f"Candidate {value!r}: only integer quantization is simulated. Expected dtype int for "
                                     f"the {what} bitwidth. Received: {dtype!r}")
                part = bw
            if isinstance(part, bool) or not isinstance(part, (int, np.integer)) or not 2 <= int(part) <= 32:
                raise ValueError(f"Candidate {value!r}: expected an integer {what} bitwidth in 2..32. Received: {part!r}")
            bits.append(int(part))
        return cls(bits[0], bits[1])

    @classmethod
    def from_text(cls, text: str) -> "Candidate":
        """From ``"activation_bw:param_bw"`` (a command-line flag), e.g. ``"8:4"``.

        Raises:
            ValueError: for any other text.
        """
        a, sep, p = str(text).partition(":")
        if not sep or not a.strip().isdigit() or not p.strip().isdigit():
            raise ValueError(f"Expected a candidate as activation_bw:param_bw, e.g. 8:4. Received: {text!r}")
        return cls.parse((int(a), int(p)))

    @property
    def bit_ops(self) -> int:
        return self.activation_bw * self.param_bw

    def __str__(self) -> str:
        return f"W{self.param_bw}A{self.activation_bw}"


@dataclasses.dataclass(frozen=True)
class QuantizerGroup:
    """Quantizers that take one candidate together (names as in ``sim.activation_quantizers()`` and
    ``sim.param_quantizers()``), and the layers whose weights are in it."""

    activation_quantizers: tuple[str, ...]
    parameter_quantizers: tuple[str, ...]
    layers: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.layers[0] if self.layers else self.activation_quantizers[0]

    def setting(self, candidate: Candidate) -> tuple[int | None, int | None]:
        """The bitwidths this group actually takes under ``candidate`` (None: it has no such quantizer)."""
        return (candidate.activation_bw if self.activation_quantizers else None,
                candidate.param_bw if self.parameter_quantizers else None)

    def to_dict(self) -> dict:
        return {"name": self.name, "layers": list(self.layers), "activation_quantizers": list(self.activation_quantizers),
                "parameter_quantizers": list(self.parameter_quantizers)}


@dataclasses.dataclass(frozen=True)
class ParetoPoint:
    """One configuration of the front: every group's candidate, its relative cost, and the phase-2
    score (None when phase 2 did not evaluate it)."""

    cost: float
    score: float | None
    group: str | None  # the group lowered at this step (None for the baseline)
    candidate: Candidate | None
    choice: tuple[Candidate, ...]  # one per searched group, in group order


@dataclasses.dataclass
class MixedPrecisionResult:
    """What :func:`choose_mixed_precision` found."""

    groups: list[QuantizerGroup]
    candidates: list[Candidate]
    baseline: Candidate
    baseline_score: float  # phase 1's score of the baseline candidate
    fp32_score: float  # phase 2's score with every quantizer off: the reference of allowed_accuracy_drop
    phase1: dict[str, dict[str, float]]  # group name -> str(candidate) -> score
    front: list[ParetoPoint]
    chosen: ParetoPoint | None
    final_score: float | None
    evaluations: dict[str, int]
    seconds: float
    cost_metric: str
    uniform: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)  # candidate -> (cost, phase-2 score)
    encoding_passes: int = 0  # compute_encodings calls AMP made
    phase1_seconds: float = 0.0  # wall time until every phase-1 score was known (all workers')

    def choice_by_group(self) -> dict[str, str]:
        if self.chosen is None:
            return {}
        return {g.name: str(c) for g, c in zip(self.groups, self.chosen.choice)}


# -- groups ----------------------------------------------------------------------------------------


class _UnionFind:
    def __init__(self):
        self.parent: dict[tuple[str, str], tuple[str, str]] = {}

    def add(self, key):
        self.parent.setdefault(key, key)

    def find(self, key):
        self.add(key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, keys: Iterable):
        keys = list(keys)
        for key in keys:
            self.add(key)
        for other in keys[1:]:
            a, b = self.find(keys[0]), self.find(other)
            if a != b:
                self.parent[b] = a


def _enabled(q) -> bool:
    return isinstance(q, Quantizer) and q.enabled


def find_quantizer_groups(sim) -> list[QuantizerGroup]:
    """The sim's quantizer groups, in graph order (see the module docstring).

    Raises:
        ValueError: for a sim whose model nests models (run ``aimet_tf.graph.prepare_model`` first).
    """
    graph = ModelGraph(sim.model, "finding mixed-precision quantizer groups")
    nested = [n.name for n in graph.nodes if is_graph_model(n.operation)]
    if nested:
        raise ValueError(f"Mixed precision needs a flat model; this sim nests models {nested}. "
                         "Expected a sim built on aimet_tf.graph.prepare_model(model).")
    uf = _UnionFind()
    order: dict[tuple[str, str], int] = {}
    layers_of: dict[tuple[str, str], list[str]] = {}
    by_id: dict[int, tuple[str, str]] = {}

    def register(key, q):
        uf.add(key)
        order.setdefault(key, len(order))
        by_id[id(q)] = key

    for node in graph.nodes:
        w = node.operation
        if not isinstance(w, QuantizationWrapper):
            continue
        for name, q in w.activation_slots():
            if _enabled(q):
                register(("a", name), q)
        for path, q in w.param_quantizers_by_path().items():
            if _enabled(q):
                register(("p", param_name(w.name, path)), q)

    def feeding(tensor: str, seen: set) -> list[tuple[str, str]]:
        producer = graph.producer(tensor)
        if producer is None or producer.name in seen:
            return []
        seen.add(producer.name)
        op = producer.operation
        if isinstance(op, QuantizationWrapper):
            index = producer.outputs.index(tensor)
            if index < len(op.output_quantizers) and _enabled(op.output_quantizers[index]):
                return [("a", activation_name(op.name, "output", index))]
        found = []
        for upstream in producer.inputs:
            found += feeding(upstream, seen)
        return found

    def input_keys(node) -> list[tuple[str, str]]:
        w = node.operation
        keys = []
        for i, tensor in enumerate(node.inputs):
            if i < len(w.input_quantizers) and _enabled(w.input_quantizers[i]):
                keys.append(("a", activation_name(w.name, "input", i)))
            else:
                keys += feeding(tensor, set())
        return keys

    for node in graph.nodes:
        w = node.operation
        if not isinstance(w, QuantizationWrapper):
            continue
        params = [("p", param_name(w.name, p)) for p, q in w.param_quantizers_by_path().items() if _enabled(q)]
        internal = [("a", n) for n, q in w.activation_slots() if _enabled(q) and "/input:" not in n and "/output:" not in n]
        if params:
            members = params + internal + input_keys(node)
            uf.union(members)
            layers_of.setdefault(params[0], []).append(w.name)
        elif isinstance(w.layer, _MULTI_INPUT_OPS):
            keys = input_keys(node)
            if len(keys) > 1:
                uf.union(keys)
    for name, q in sim.activation_quantizers():
        if _enabled(q) and q.leader() is not None and id(q.leader()) in by_id:
            uf.union([by_id[id(q.leader())], ("a", name)])

    components: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for key in sorted(order, key=order.get):
        components.setdefault(uf.find(key), []).append(key)
    layer_members = {}
    for key, names in layers_of.items():
        layer_members.setdefault(uf.find(key), []).extend(names)
    groups = []
    for root, keys in components.items():
        groups.append(QuantizerGroup(
            tuple(n for kind, n in keys if kind == "a"),
            tuple(n for kind, n in keys if kind == "p"),
            tuple(dict.fromkeys(layer_members.get(root, []))),
        ))
    return groups


# -- candidates and costs --------------------------------------------------------------------------


def _is_tflite(sim) -> bool:
    return "tflite" in getattr(sim, "preparations", {}) or sim.config == hw_config.load_config("tflite")


def _group_op_types(sim, group: QuantizerGroup) -> list[str]:
    types = []
    for layer in group.layers:
        op = hw_config.onnx_op_type(sim.get_quant_wrapper_for_layer_name(layer).layer)
        if op is not None:
            types.append(op)
    return types


def allowed_candidates(sim, group: QuantizerGroup, candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates the sim's hardware config lets ``group`` take (``supported_kernels``)."""
    config = sim.config
    out = []
    for c in candidates:
        a, p = group.setting(c)
        if config.supported_kernels:
            if p is not None and (c.activation_bw, c.param_bw) not in config.supported_kernels:
                continue
            if p is None and not any(k[0] == c.activation_bw for k in config.supported_kernels):
                continue
        ok = True
        for op_type in _group_op_types(sim, group):
            kernels = config.op_supported_kernels.get(op_type)
            if kernels and not any(ka == c.activation_bw and kp in (None, c.param_bw) for ka, kp in kernels):
                ok = False
        if ok:
            out.append(c)
    return out


def _check_candidates(sim, candidates: Sequence[Any]) -> list[Candidate]:
    parsed = [Candidate.parse(c) for c in candidates]
    if len(parsed) < 2 or len(set(parsed)) != len(parsed):
        raise ValueError(f"Expected at least two distinct candidates. Received: {[str(c) for c in parsed]}")
    if _is_tflite(sim):
        bad = [str(c) for c in parsed if c.activation_bw != 8 or c.param_bw > 8]
        if bad:
            raise ValueError(
                f"Candidates {bad} cannot run under the tflite config: TFLite's integer kernels take 8-bit "
                "activations and weights of at most 8 bits. Expected candidates (8, param_bw <= 8), e.g. "
                "(8, 8) and (8, 4); use the 'htp' or a custom config to simulate others."
            )
    config = sim.config
    if config.supported_kernels:
        bad = [str(c) for c in parsed if (c.activation_bw, c.param_bw) not in config.supported_kernels]
        if bad:
            raise ValueError(f"Candidates {bad} are not among the config's supported_kernels "
                             f"{[f'W{p}A{a}' for a, p in config.supported_kernels]}. Expected only supported candidates.")
    return sorted(parsed, key=lambda c: (c.bit_ops, c.activation_bw, c.param_bw), reverse=True)


class _Costs:
    """Bit operations and weight memory of a choice (one candidate per group)."""

    def __init__(self, sim, groups: Sequence[QuantizerGroup]):
        macs = layer_costs(sim.float_model())
        params = {name: int(np.prod(var.shape)) for name, _, var in sim.param_quantizers()}
        self.macs = [sum(macs[layer].macs for layer in g.layers if layer in macs) for g in groups]
        self.weights = [sum(params.get(p, 0) for p in g.parameter_quantizers) for g in groups]
        self.groups = list(groups)

    def bit_ops(self, choice: Sequence[Candidate]) -> float:
        return float(sum(m * c.activation_bw * c.param_bw for m, c in zip(self.macs, choice)))

    def memory_bits(self, choice: Sequence[Candidate]) -> float:
        return float(sum(n * c.param_bw for n, c in zip(self.weights, choice)))

    def cost(self, choice: Sequence[Candidate], metric: str) -> float:
        return self.bit_ops(choice) if metric == "bops" else self.memory_bits(choice)


def relative_cost(sim, groups: Sequence[QuantizerGroup], choice: Sequence[Candidate], reference: Candidate,
                  cost_metric: str = "bops") -> float:
    """Cost of ``choice`` (one candidate per group) as a fraction of every group at ``reference``."""
    costs = _Costs(sim, groups)
    base = costs.cost([reference] * len(groups), cost_metric)
    return costs.cost(choice, cost_metric) / base if base else 1.0


# -- applying a choice ------------------------------------------------------------------------------


class _Applier:
    """Puts groups at candidates, through the quantizers' public API (bitwidth, set_encoding)."""

    def __init__(self, sim, groups: Sequence[QuantizerGroup], forward_pass: Any, precompute: Sequence[Candidate] | None):
        self.sim = sim
        self.groups = list(groups)
        self.forward_pass = forward_pass
        self.acts = dict(sim.activation_quantizers())
        self.params = {name: q for name, q, _ in sim.param_quantizers()}
        self.table: dict[tuple[str, int], Any] | None = None
        self.encoding_passes = 0
        if precompute is not None:
            self.table = {}
            for c in precompute:
                self._set_bits([c] * len(self.groups))
                self._compute()
                for g in self.groups:
                    for name in g.activation_quantizers:
                        self.table[(name, c.activation_bw)] = self.acts[name].get_encoding()
                    for name in g.parameter_quantizers:
                        self.table[(name, c.param_bw)] = self.params[name].get_encoding()

    def _compute(self):
        self.sim.compute_encodings(self.forward_pass)
        self.encoding_passes += 1

    def _members(self, group: QuantizerGroup, candidate: Candidate):
        for name in group.activation_quantizers:
            yield name, self.acts[name], candidate.activation_bw
        for name in group.parameter_quantizers:
            yield name, self.params[name], candidate.param_bw

    def _set_bits(self, choice: Sequence[Candidate]):
        for g, c in zip(self.groups, choice):
            for _, q, bits in self._members(g, c):
                if q.leader() is None:
                    q.bitwidth = bits

    def apply(self, choice: Sequence[Candidate], exact: bool = False) -> None:
        if self.table is None or exact:
            self._set_bits(choice)
            self._compute()
            return
        followers = []
        for g, c in zip(self.groups, choice):
            for name, q, bits in self._members(g, c):
                if q.leader() is not None:
                    followers.append(q)
                    continue
                encoding = self.table.get((name, bits))
                if encoding is None:
                    raise RuntimeError(f"No precomputed {bits}-bit encoding for {name!r}.")
                q.set_encoding(encoding)
        for q in followers:
            q.set_encoding(q.leader().get_encoding())


# -- cache -----------------------------------------------------------------------------------------


def _fingerprint(sim, groups, candidates, cost_metric: str, phase1_optimize: bool) -> str:
    digest = hashlib.sha256()
    settings = {
        "version": _CACHE_VERSION, "candidates": [str(c) for c in candidates], "cost_metric": cost_metric,
        "phase1_optimize": bool(phase1_optimize), "groups": [g.to_dict() for g in groups],
        # Quantizer settings other than the bitwidths (which AMP itself changes).
        "quantizers": [[name, q.quant_scheme.name, q.symmetric, q.strict, repr(q.channel_axis), q.enabled]
                       for name, q in [*sim.activation_quantizers(), *((n, q) for n, q, _ in sim.param_quantizers())]],
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, _, var in sim.param_quantizers():
        value = np.ascontiguousarray(var.numpy())
        digest.update(f"{name}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


class _Cache:
    """``results_dir/amp_cache.json``: baseline score, phase-1 scores and phase-2 scores by point."""

    def __init__(self, folder: str, fingerprint: str, clean_start: bool):
        self.path = os.path.join(folder, "amp_cache.json")
        self.fingerprint = fingerprint
        self.data = {"version": _CACHE_VERSION, "fingerprint": fingerprint, "baseline": None, "phase1": {}, "phase2": {}}
        self.resumed = False
        if clean_start or not os.path.exists(self.path):
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                cached = json.load(f)
        except (OSError, ValueError) as error:
            logging.warning("AMP: ignoring unreadable cache %s (%s)", self.path, error)
            return
        if cached.get("version") != _CACHE_VERSION or cached.get("fingerprint") != fingerprint:
            logging.warning("AMP: the cache in %s was written for another model, config or candidate list; not reused", self.path)
            return
        self.data = cached
        self.resumed = True

    def check_baseline(self, score: float) -> None:
        cached = self.data.get("baseline")
        if cached is not None and abs(cached - score) > 1e-9:
            logging.warning("AMP: cached baseline score %.6f differs from this run's %.6f (other eval data?); "
                            "the cache is not reused", cached, score)
            self.data = {"version": _CACHE_VERSION, "fingerprint": self.fingerprint, "baseline": None, "phase1": {}, "phase2": {}}
            self.resumed = False
        self.data["baseline"] = score
        self.save()

    def save(self) -> None:
        files.atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=True))


# -- the search -------------------------------------------------------------------------------------


FRONT_ORDERS = ("efficiency", "sensitivity")


def _front(groups: Sequence[QuantizerGroup], options: Sequence[Sequence[Candidate]], baseline: Candidate,
           phase1: Mapping[str, Mapping[str, float]], costs: _Costs, cost_metric: str,
           order: str = "efficiency") -> list[ParetoPoint]:
    """Points from the baseline down, each lowering one more (group, candidate) pair.

    ``order="sensitivity"`` (AIMET's) applies the pairs from the highest phase-1 score down;
    ``"efficiency"`` from the smallest score drop per unit of cost saved (a drop at or below zero
    counts as zero; ties go to the larger saving), so that a cheap-to-lower, costly layer comes
    before a small one that is just as harmless."""
    base = costs.cost([baseline] * len(groups), cost_metric)
    base_score = phase1[groups[0].name][str(baseline)]
    choice = [baseline] * len(groups)
    points = [ParetoPoint(1.0, None, None, None, tuple(choice))]
    pairs = []
    for index, (g, opts) in enumerate(zip(groups, options)):
        for c in opts:
            if c == baseline:
                continue
            score = phase1[g.name][str(c)]
            saving = base - costs.cost([c if i == index else baseline for i in range(len(groups))], cost_metric)
            if order == "sensitivity":
                key = (-score, -saving, index)
            else:
                key = (max(base_score - score, 0.0) / max(saving, 1e-30), -saving, index)
            pairs.append((key, index, c))
    pairs.sort(key=lambda t: t[0])
    for _, index, c in pairs:
        current = choice[index]
        trial = list(choice)
        trial[index] = c
        if costs.cost(trial, cost_metric) >= costs.cost(choice, cost_metric) or groups[index].setting(c) == groups[index].setting(current):
            continue
        choice = trial
        points.append(ParetoPoint(costs.cost(choice, cost_metric) / base if base else 1.0, None, groups[index].name, c, tuple(choice)))
    return points


def choose_mixed_precision(
    sim,
    candidates: Sequence[Any],
    eval_fn: Callable[[keras.Model], float],
    eval_fn_phase2: Callable[[keras.Model], float] | None,
    allowed_accuracy_drop: float | None,
    results_dir: str | os.PathLike,
    clean_start: bool = True,
    forward_pass: Any = None,
    amp_search_algo: AMPSearchAlgo = AMPSearchAlgo.Binary,
    phase1_optimize: bool = True,
    *,
    cost_metric: str = "bops",
    phase1_metric: Callable[[keras.Model], float] | None = None,
    front_order: str = "efficiency",
    verbose: bool = True,
    workers: tuple[int, int] | None = None,
    worker_timeout: float = 24 * 3600.0,
) -> MixedPrecisionResult:
    """Finds and applies the cheapest per-group candidates within ``allowed_accuracy_drop``.

    Args:
        sim: the ``QuantizationSimModel``; it ends at the chosen point with its encodings computed.
        candidates: ``(activation_bw, param_bw)`` pairs or AIMET's ``((bw, dtype), (bw, dtype))``.
        eval_fn: ``eval_fn(sim.model) -> score`` for phase 1 (higher is better).
        eval_fn_phase2: the same for phase 2 (None: ``eval_fn``).
        allowed_accuracy_drop: the score the result may lose against FP32 (the phase-2 score with
            every quantizer off, as AIMET's), in the score's own units; None evaluates the whole
            front and leaves the sim at the baseline.
        results_dir: where the cache, the plot and the choice go (checked writable before any work).
        clean_start: False resumes from the cache of an earlier run with the same model and settings.
        forward_pass: calibration data or callback, as ``sim.compute_encodings`` takes it.
        amp_search_algo: ``AMPSearchAlgo.Binary`` (default), ``Interpolation`` or ``BruteForce``.
        phase1_optimize: compute each candidate's encodings once (see the module docstring).
        cost_metric: "bops" (MACs x weight bits x activation bits) or "memory" (weight bits).
        phase1_metric: scores phase 1 instead of ``eval_fn`` (``choose_fast_mixed_precision``'s SQNR).
        front_order: how the Pareto front is built from phase 1 (``FRONT_ORDERS``; see ``_front``).
        verbose: a progress line per evaluation on stderr (else absl logging).
        workers: ``(index, count)``: this process is worker ``index`` of ``count`` that run the same
            call on the same model and data with one ``results_dir`` (a folder they all see). Phase
            1's evaluations are shared out (worker i takes every count-th one, from the i-th); each
            worker writes its scores, one at a time, to ``amp_phase1.worker{i}-of-{count}.json``
            and then reads the others'. Phase 2 runs on every worker, so all return the same
            result. A rerun resumes each worker's file. None or ``(0, 1)``: one process.
            ``aimet_tf.distribute.worker_of(strategy)`` gives a MultiWorkerMirroredStrategy
            worker's pair.
        worker_timeout: seconds to wait for the other workers' phase-1 scores.

    Returns:
        A :class:`MixedPrecisionResult`.

    Raises:
        ValueError: for bad candidates (see the module docstring), an unknown metric or algorithm, a
            negative ``allowed_accuracy_drop``, no group that can change, a bad eval score, or bad
            ``workers``.
        OSError: for a ``results_dir`` that cannot be written (before any work).
        TimeoutError: when another worker's phase-1 scores are not complete within ``worker_timeout``.
    """
    start = time.perf_counter()
    workers = distribute.check_workers(workers)
    folder = files.check_writable_folder(results_dir, "mixed precision's results (checked before any work)")
    if front_order not in FRONT_ORDERS:
        raise ValueError(f"Expected front_order in {FRONT_ORDERS}. Received: {front_order!r}")
    if cost_metric not in ("bops", "memory"):
        raise ValueError(f"Expected cost_metric 'bops' or 'memory'. Received: {cost_metric!r}")
    if not isinstance(amp_search_algo, AMPSearchAlgo):
        raise ValueError(f"Expected amp_search_algo as an AMPSearchAlgo. Received: {amp_search_algo!r}")
    if allowed_accuracy_drop is not None and (
            isinstance(allowed_accuracy_drop, bool) or not isinstance(allowed_accuracy_drop, (int, float))
            or not allowed_accuracy_drop >= 0 or not math.isfinite(allowed_accuracy_drop)):
        raise ValueError(f"Expected allowed_accuracy_drop >= 0 or None. Received: {allowed_accuracy_drop!r}")
    if forward_pass is None:
        raise ValueError("Expected forward_pass: calibration data or a callback, as sim.compute_encodings takes it.")
    ordered = _check_candidates(sim, candidates)
    baseline = ordered[0]
    all_groups = find_quantizer_groups(sim)
    frozen = [name for name, q in sim.activation_quantizers() if q.enabled and q.frozen]
    frozen += [name for name, q, _ in sim.param_quantizers() if q.enabled and q.frozen]
    if frozen:
        raise ValueError(f"Mixed precision changes bitwidths, but these quantizers have frozen encodings: {frozen[:5]}. "
                         "Expected a sim without frozen encodings (run AMP before AdaRound or set_and_freeze_param_encodings).")
    searched, options = [], []
    for g in all_groups:
        opts = allowed_candidates(sim, g, ordered)
        if baseline not in opts:
            raise ValueError(f"Group {g.name!r} cannot take the baseline candidate {baseline} under the sim's config "
                             f"(its layers' supported_kernels). Allowed there: {[str(c) for c in opts]}.")
        settings = {g.setting(c) for c in opts}
        if len(settings) > 1:
            searched.append(g)
            options.append(opts)
    if not searched:
        raise ValueError(f"No quantizer group can take another of the candidates {[str(c) for c in ordered]}; nothing to search.")
    phase2_fn = eval_fn if eval_fn_phase2 is None else eval_fn_phase2
    phase1_fn = eval_fn if phase1_metric is None else phase1_metric
    fingerprint = _fingerprint(sim, searched, ordered, cost_metric, phase1_optimize)
    cache = _Cache(folder, fingerprint, clean_start)
    progress = Progress("AMP", verbose)
    evaluations = {"phase1": 0, "phase2": 0}
    applier = _Applier(sim, searched, forward_pass, ordered if phase1_optimize else None)
    costs = _Costs(sim, searched)

    def score(fn, where: str, phase: str) -> float:
        evaluations[phase] += 1
        return checked_score(fn(sim.model), where)

    applier.apply([baseline] * len(searched))
    base_score = score(phase1_fn, f"baseline {baseline}", "phase1")
    cache.check_baseline(base_score)
    phase1 = cache.data["phase1"]
    tasks = [(index, g, c) for index, (g, opts) in enumerate(zip(searched, options)) for c in opts if c != baseline]
    for g in searched:
        phase1.setdefault(g.name, {})[str(baseline)] = base_score
    # The baseline score is part of the run's identity: workers scoring other data never mix.
    shared = distribute.SharedResults(folder, "amp_phase1", workers, f"{fingerprint}:{base_score!r}", clean_start)
    mine = shared.mine(tasks)
    for step, (index, g, c) in enumerate(mine, 1):
        scores = phase1[g.name]
        key = f"{g.name}|{c}"
        known = scores.get(str(c), shared.own.get(key))
        if known is not None:
            scores[str(c)] = known
            shared.record(key, known)  # the other workers read it from this worker's file
            progress.show("phase 1", step, len(mine), f"{g.name} at {c}", known, cached=True)
            continue
        choice = [baseline] * len(searched)
        choice[index] = c
        applier.apply(choice)
        scores[str(c)] = score(phase1_fn, f"group {g.name!r} at {c}", "phase1")
        cache.save()
        shared.record(key, scores[str(c)])
        progress.show("phase 1", step, len(mine), f"{g.name} at {c}", scores[str(c)])
    if shared.count > 1:
        everything = shared.gather([f"{g.name}|{c}" for _, g, c in tasks], worker_timeout)
        for _, g, c in tasks:
            phase1[g.name][str(c)] = everything[f"{g.name}|{c}"]
        cache.save()
    phase1_seconds = time.perf_counter() - start
    front = _front(searched, options, baseline, phase1, costs, cost_metric, front_order)

    phase2_cache = cache.data["phase2"]

    def phase2_score(choice: Sequence[Candidate], where: str) -> tuple[float, bool]:
        """The phase-2 score of a configuration, from the cache or evaluated (and cached)."""
        key = ",".join(str(c) for c in choice)
        if key in phase2_cache:
            return phase2_cache[key], True
        applier.apply(list(choice))
        phase2_cache[key] = score(phase2_fn, where, "phase2")
        cache.save()
        return phase2_cache[key], False

    def evaluate_point(k: int) -> float:
        value, was_cached = phase2_score(front[k].choice, f"Pareto point {k}")
        progress.show("phase 2", k, len(front) - 1, f"point {k} (cost {front[k].cost:.3f})", value, cached=was_cached)
        front[k] = dataclasses.replace(front[k], score=value)
        return value

    # AIMET's reference: the FP32 score (every quantizer off), with the phase-2 callback.
    with sim.quantizers_disabled():
        fp32_score = score(phase2_fn, "FP32 (quantizers disabled)", "phase2")
    target = None if allowed_accuracy_drop is None else fp32_score - allowed_accuracy_drop
    chosen_index = 0
    evaluate_point(0)
    if target is None or amp_search_algo is AMPSearchAlgo.BruteForce:
        for k in range(1, len(front)):
            evaluate_point(k)
        if target is not None:
            fits = [k for k in range(len(front)) if front[k].score >= target]
            chosen_index = max(fits) if fits else 0
    elif front[0].score >= target:
        lo, hi = 0, len(front) - 1  # front[lo] meets the target; find the last index that does
        if evaluate_point(hi) >= target:
            lo = hi
        while hi - lo > 1:
            if amp_search_algo is AMPSearchAlgo.Interpolation and front[lo].score > front[hi].score:
                fraction = (front[lo].score - target) / (front[lo].score - front[hi].score)
                mid = min(hi - 1, max(lo + 1, lo + int(round(fraction * (hi - lo)))))
            else:
                mid = (lo + hi) // 2
            if evaluate_point(mid) >= target:
                lo = mid
            else:
                hi = mid
        chosen_index = lo
    if target is not None and front[chosen_index].score < target:
        logging.warning("AMP: even the baseline %s scores %.4f, below the target %.4f (FP32 %.4f - allowed drop %s); "
                        "keeping the baseline", baseline, front[0].score, target, fp32_score, allowed_accuracy_drop)
    uniform: dict[str, tuple[float, float]] = {}
    for c in ordered:
        choice = [c if c in opts else opts[-1] for opts in options]
        value, was_cached = phase2_score(choice, f"every group at {c}")
        uniform[str(c)] = (costs.cost(choice, cost_metric) / costs.cost([baseline] * len(searched), cost_metric), value)
        progress.show("uniform", ordered.index(c) + 1, len(ordered), f"every group at {c}", value, cached=was_cached)
    chosen = front[chosen_index] if allowed_accuracy_drop is not None else None
    final_choice = list(chosen.choice) if chosen is not None else [baseline] * len(searched)
    applier.apply(final_choice, exact=True)
    final_score = checked_score(phase2_fn(sim.model), "the chosen configuration") if chosen is not None else None
    if final_score is not None:
        evaluations["phase2"] += 1
    result = MixedPrecisionResult(
        groups=searched, candidates=ordered, baseline=baseline, baseline_score=base_score, fp32_score=fp32_score, phase1=phase1,
        front=front, chosen=chosen, final_score=final_score, evaluations=evaluations, uniform=uniform,
        encoding_passes=applier.encoding_passes,
        seconds=time.perf_counter() - start, cost_metric=cost_metric, phase1_seconds=phase1_seconds,
    )
    _write_results(folder, result, costs, target)
    logging.info("AMP: %d groups searched, %d front points, %d + %d evaluations, %d encoding passes, %.1f s; chose %s",
                 len(searched), len(front), evaluations["phase1"], evaluations["phase2"], applier.encoding_passes,
                 result.seconds, "none" if chosen is None else f"point {chosen_index} (cost {chosen.cost:.3f}, score {final_score:.4f})")
    return result


def _write_results(folder: str, result: MixedPrecisionResult, costs: _Costs, target: float | None) -> None:
    from aimet_tf.analysis import report

    evaluated = [p for p in result.front if p.score is not None]
    base_bits = costs.memory_bits([result.baseline] * len(result.groups))
    rows = []
    for k, p in enumerate(result.front):
        rows.append([k, p.group or "(baseline)", "" if p.candidate is None else str(p.candidate), p.cost,
                     costs.memory_bits(p.choice) / base_bits if base_bits else 1.0,
                     float("nan") if p.score is None else p.score])
    chart = report.LineChart(
        "Mixed precision: Pareto front", f"relative cost ({result.cost_metric})", "phase-2 score",
        [report.Series("Pareto front (evaluated points)", [p.cost for p in evaluated], [p.score for p in evaluated],
                       labels=[f"{p.group or 'baseline'} -> {p.candidate or result.baseline}" for p in evaluated])],
        hlines=((result.fp32_score, "FP32"),) + (() if target is None else ((target, "target (FP32 - allowed drop)"),)),
    )
    if result.uniform:
        names = list(result.uniform)
        chart = dataclasses.replace(chart, series=[*chart.series, report.Series(
            "uniform", [result.uniform[n][0] for n in names], [result.uniform[n][1] for n in names],
            labels=[f"uniform {n}" for n in names], lines=False, annotate=True)])
    if result.chosen is not None:
        chart = dataclasses.replace(chart, series=[*chart.series, report.Series(
            "chosen", [result.chosen.cost], [result.chosen.score], labels=["chosen"], lines=False, annotate=True)])
    report.write_png(chart, os.path.join(folder, "pareto_front.png"))
    report.write_html(os.path.join(folder, "pareto_front.html"), "Mixed precision: Pareto front", [
        chart,
        report.Table("Front points", ["point", "group lowered", "to", "relative cost", "relative weight memory", "phase-2 score"], rows),
        report.Table("Phase 1: score with one group lowered", ["group", *[str(c) for c in result.candidates]],
                     [[g, *[scores.get(str(c), float("nan")) for c in result.candidates]] for g, scores in result.phase1.items()]),
    ])
    files.atomic_write(os.path.join(folder, "mixed_precision_choice.json"), json.dumps({
        "baseline": str(result.baseline), "baseline_score": result.baseline_score, "fp32_score": result.fp32_score,
        "chosen": None if result.chosen is None else {
            "cost": result.chosen.cost, "score": result.chosen.score, "final_score": result.final_score,
            "relative_weight_memory": costs.memory_bits(result.chosen.choice) / base_bits if base_bits else 1.0,
            "groups": result.choice_by_group(),
        },
        "groups": [g.to_dict() for g in result.groups],
        "front": [{"cost": p.cost, "score": p.score, "group": p.group, "candidate": None if p.candidate is None else str(p.candidate)}
                  for p in result.front],
        "uniform": {n: {"cost": c, "score": v} for n, (c, v) in result.uniform.items()},
        "evaluations": result.evaluations, "seconds": result.seconds, "cost_metric": result.cost_metric,
    }, indent=1))


def sqnr_metric(sim, data: Any, batch_size: int = 128) -> Callable[[keras.Model], float]:
    """A phase-1 score without labels: the SQNR (dB) of the sim's outputs against the float model's
    on ``data`` (any form of ``aimet_tf.quantization.calibration_data``), over every output."""
    from aimet_tf.quantization import calibration_data

    inputs = calibration_data.model_inputs(sim.model)
    batches = list(calibration_data.iterate_batches(data, inputs, batch_size, purpose="SQNR inputs"))
    if not batches:
        raise ValueError("Expected data for the SQNR metric. Received: no batch.")
    with sim.quantizers_disabled():
        reference = [[np.asarray(o) for o in keras.tree.flatten(sim.model(calibration_data.as_model_input(b), training=False))]
                     for b in batches]
    signal = sum(float(np.sum(np.square(o, dtype=np.float64))) for ref in reference for o in ref)

    def metric(model: keras.Model) -> float:
        noise = 0.0
        for batch, ref in zip(batches, reference):
            outs = keras.tree.flatten(model(calibration_data.as_model_input(batch), training=False))
            noise += sum(float(np.sum(np.square(np.asarray(o, np.float64) - r))) for o, r in zip(outs, ref))
        return 10.0 * math.log10(signal / max(noise, 1e-30))

    return metric


def choose_fast_mixed_precision(
    sim,
    candidates: Sequence[Any],
    data: Any,
    eval_fn_phase2: Callable[[keras.Model], float],
    allowed_accuracy_drop: float | None,
    results_dir: str | os.PathLike,
    clean_start: bool = True,
    forward_pass: Any = None,
    amp_search_algo: AMPSearchAlgo = AMPSearchAlgo.Binary,
    phase1_optimize: bool = True,
    **kwargs,
) -> MixedPrecisionResult:
    """:func:`choose_mixed_precision` with phase 1 scored by the output SQNR on ``data`` (no labels,
    no eval callback): each group's sensitivity is how much its lowering costs the output's SQNR."""
    return choose_mixed_precision(
        sim, candidates, eval_fn_phase2, eval_fn_phase2, allowed_accuracy_drop, results_dir, clean_start,
        forward_pass, amp_search_algo, phase1_optimize, phase1_metric=sqnr_metric(sim, data), **kwargs,
    )
