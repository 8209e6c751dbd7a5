"""AIMET's ``aimet_tensorflow.keras.mixed_precision``: ``choose_mixed_precision`` and
``choose_fast_mixed_precision`` with AIMET's arguments, defaults and return value.

The search is :mod:`aimet_tf.ptq.mixed_precision`'s (see there for groups, costs, phases and the
files written to ``results_dir``). What differs from AIMET, by design:

* a candidate is AIMET's ``((activation_bw, QuantizationDataType.int), (param_bw,
  QuantizationDataType.int))``; float candidates are refused (float16 is not simulated);
* the returned Pareto list holds the points phase 2 evaluated, from the baseline down, each
  ``(relative bit operations, eval score, QuantizerGroup lowered at that point (None for the
  baseline), candidate it was lowered to (None for the baseline))``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from aimet_tf.common.defs import AMPSearchAlgo, CallbackFunc, QuantizationDataType
from aimet_tf.ptq import mixed_precision as _native
from aimet_tf.ptq.mixed_precision import QuantizerGroup

__all__ = ["AMPSearchAlgo", "QuantizerGroup", "choose_fast_mixed_precision", "choose_mixed_precision"]


def _evaluator(callback: Any, what: str):
    if isinstance(callback, CallbackFunc):
        return lambda model: callback.func(model, callback.func_callback_args)
    if isinstance(callback, tuple) and len(callback) == 2 and callable(callback[0]):
        return lambda model: callback[0](model, callback[1])
    raise TypeError(f"Expected {what} as CallbackFunc(func, func_callback_args). Received: {callback!r}")


def _aimet_candidate(candidate: _native.Candidate | None):
    if candidate is None:
        return None
    return ((candidate.activation_bw, QuantizationDataType.int), (candidate.param_bw, QuantizationDataType.int))


def _pareto_list(result: _native.MixedPrecisionResult) -> list[tuple]:
    by_name = {g.name: g for g in result.groups}
    return [(p.cost, p.score, by_name.get(p.group), _aimet_candidate(p.candidate)) for p in result.front if p.score is not None]


def choose_mixed_precision(
    sim,
    candidates: Sequence[Any],
    eval_callback_for_phase1: CallbackFunc,
    eval_callback_for_phase2: CallbackFunc,
    allowed_accuracy_drop: float | None,
    results_dir: str | os.PathLike,
    clean_start: bool,
    forward_pass_callback: CallbackFunc,
    amp_search_algo: AMPSearchAlgo = AMPSearchAlgo.Binary,
    phase1_optimize: bool = True,
) -> list[tuple]:
    """AIMET's AMP: sets ``sim`` to the cheapest point within ``allowed_accuracy_drop`` and returns
    the Pareto list (see the module docstring)."""
    result = _native.choose_mixed_precision(
        sim, candidates, _evaluator(eval_callback_for_phase1, "eval_callback_for_phase1"),
        _evaluator(eval_callback_for_phase2, "eval_callback_for_phase2"), allowed_accuracy_drop, results_dir,
        clean_start, forward_pass_callback, amp_search_algo, phase1_optimize,
    )
    return _pareto_list(result)


def choose_fast_mixed_precision(
    sim,
    candidates: Sequence[Any],
    data_loader_wrapper: Any,
    eval_callback_for_phase2: CallbackFunc,
    allowed_accuracy_drop: float | None,
    results_dir: str | os.PathLike,
    clean_start: bool,
    forward_pass_callback: CallbackFunc,
    amp_search_algo: AMPSearchAlgo = AMPSearchAlgo.Binary,
    phase1_optimize: bool = True,
) -> list[tuple]:
    """AIMET's fast AMP: phase 1 scored by output SQNR on ``data_loader_wrapper`` (a function
    returning the unlabelled data, or the data itself), phase 2 by ``eval_callback_for_phase2``."""
    data = data_loader_wrapper() if callable(data_loader_wrapper) else data_loader_wrapper
    result = _native.choose_fast_mixed_precision(
        sim, candidates, data, _evaluator(eval_callback_for_phase2, "eval_callback_for_phase2"), allowed_accuracy_drop,
        results_dir, clean_start, forward_pass_callback, amp_search_algo, phase1_optimize,
    )
    return _pareto_list(result)
