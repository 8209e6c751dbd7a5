"""AIMET's ``aimet_tensorflow.keras.compress.ModelCompressor``.

``ModelCompressor.compress_model(model, eval_callback, eval_iterations, compress_scheme,
cost_metric, parameters, trainer=None, visualization_url=None) -> (compressed_model, stats)``,
with ``eval_callback(model, eval_iterations) -> score`` as in AIMET. The work is
``aimet_tf.compression.compressor.compress_model``.

In auto mode the per-layer eval scores are cached as JSON: at ``saved_eval_scores_dict`` when it is
a path (reused if it fits this run, an error if it was written for another model), else at AIMET's
default place ``./data/greedy_selection_eval_scores_dict.json`` (a cache of another run there is
replaced, with a warning). ``trainer`` and ``visualization_url`` are accepted and not used (fine-tune
the returned model with ``model.fit``; the sensitivity table is in ``stats.eval_scores``).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import keras
import numpy as np

from aimet_tf.common.defs import CompressionScheme, CompressionStats, CostMetric
from aimet_tf.compression import compressor
from aimet_tf.keras.defs import ChannelPruningParameters, SpatialSvdParameters, TuckerParameters, WeightSvdParameters
from aimet_tf.quantization.calibration_data import iterate_batches, model_inputs

__all__ = ["ModelCompressor"]

DEFAULT_SCORES_PATH = os.path.join(".", "data", "greedy_selection_eval_scores_dict.json")

_SCHEMES = {
    CompressionScheme.spatial_svd: ("spatial_svd", SpatialSvdParameters),
    CompressionScheme.weight_svd: ("weight_svd", WeightSvdParameters),
    CompressionScheme.tucker: ("tucker", TuckerParameters),
    CompressionScheme.channel_pruning: ("channel_pruning", ChannelPruningParameters),
}


def _layer_name(module: Any) -> str:
    return module if isinstance(module, str) else getattr(module, "name", None) or repr(module)


def _samples(model: keras.Model, params: ChannelPruningParameters) -> np.ndarray:
    batches = [b[0] for b in iterate_batches(params.data_set, model_inputs(model), params.batch_size, purpose="channel pruning data")]
    if not batches:
        raise ValueError("ChannelPruningParameters.data_set gave no batches. Expected calibration images.")
    return np.concatenate(batches)


class ModelCompressor:
    """AIMET's entry point for compression."""

    @staticmethod
    def compress_model(
        model: keras.Model,
        eval_callback: Callable[[keras.Model, Any], float],
        eval_iterations: Any,
        compress_scheme: CompressionScheme,
        cost_metric: CostMetric,
        parameters: Any,
        trainer: Any = None,
        visualization_url: Any = None,
    ) -> tuple[keras.Model, CompressionStats]:
        """Compresses ``model`` by ``compress_scheme`` with ``parameters``; returns (model, stats).

        Raises:
            TypeError: for parameters of another scheme, an unknown scheme or cost metric.
            ValueError: as ``aimet_tf.compression.compressor.compress_model``.
        """
        if compress_scheme not in _SCHEMES:
            raise TypeError(f"Expected a CompressionScheme. Received: {compress_scheme!r}")
        if not isinstance(cost_metric, CostMetric):
            raise TypeError(f"Expected CostMetric.mac or CostMetric.memory. Received: {cost_metric!r}")
        scheme, params_class = _SCHEMES[compress_scheme]
        if not isinstance(parameters, params_class):
            raise TypeError(f"Expected {params_class.__name__} for {compress_scheme}. Received: {type(parameters).__name__}")
        if trainer is not None:
            warnings.warn("compress_model: trainer is not called by aimet_tf; fine-tune the returned model with model.fit.", stacklevel=2)
        if visualization_url is not None:
            warnings.warn("compress_model: visualization_url is not used; the per-layer scores are in stats.eval_scores.", stacklevel=2)
        options = dict(
            cost_metric=cost_metric.name,
            multiplicity=parameters.multiplicity,
            tucker_iterations=getattr(parameters, "iterations", 10),
            samples=_samples(model, parameters) if scheme == "channel_pruning" else None,
        )

        def evaluate(candidate: keras.Model) -> float:
            return eval_callback(candidate, eval_iterations)

        mode = parameters.mode_params
        if parameters.mode is parameters.Mode.manual:
            ratios = [(_layer_name(p.module), float(p.comp_ratio)) for p in mode.list_of_module_comp_ratio_pairs]
            return compressor.compress_model(model, scheme, evaluate, ratios=ratios, **options)
        greedy = mode.greedy_select_params
        saved = greedy.saved_eval_scores_dict
        cache, scores = DEFAULT_SCORES_PATH, None
        if isinstance(saved, (str, os.PathLike)):
            cache = os.fspath(saved)
        elif saved is not None:
            scores, cache = saved, None
        else:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
        try:
            return compressor.compress_model(
                model, scheme, evaluate,
                target_ratio=float(greedy.target_comp_ratio),
                num_candidates=greedy.num_comp_ratio_candidates,
                use_monotonic_fit=greedy.use_monotonic_fit,
                layers_to_ignore=[_layer_name(m) for m in mode.modules_to_ignore],
                cache_path=cache, saved_eval_scores=scores, **options,
            )
        except compressor.StaleCacheError:
            if saved is not None:
                raise
            warnings.warn(f"compress_model: {cache} holds scores of another run; it is replaced.", stacklevel=2)
            os.remove(cache)
            return ModelCompressor.compress_model(
                model, eval_callback, eval_iterations, compress_scheme, cost_metric, parameters
            )
