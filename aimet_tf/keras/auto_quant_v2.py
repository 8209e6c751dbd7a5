"""AIMET's ``aimet_tensorflow.keras.auto_quant_v2``: ``AutoQuant`` and ``AutoQuantWithAutoMixedPrecision``.

``AutoQuant(model, eval_callback, dataset, param_bw=8, output_bw=8, quant_scheme=tf_enhanced,
rounding_mode='nearest', config_file=None, results_dir='/tmp', cache_id=None,
strict_validation=True)``; ``eval_callback(model) -> score``. ``.run_inference() -> (sim, score)``,
``.optimize(allowed_accuracy_drop=0.0) -> (model, score, encoding_path)``,
``.set_adaround_params(params)``, ``.get_quant_scheme_candidates()`` /
``.set_quant_scheme_candidates(candidates)``. The flow is ``aimet_tf.ptq.auto_quant`` (which adds a
bias-correction step AIMET's v2 does not have). ``model`` in the returned tuple is the best sim's
``model``, as AIMET returns its sim's model. ``AutoQuantWithAutoMixedPrecision`` adds the last-resort
AMP step: ``.set_mixed_precision_params(candidates, num_samples_for_phase_1=128, forward_fn=None,
num_samples_for_phase_2=None)``. The eval callback scores both AMP phases on its own data, so
``num_samples_for_phase_1`` / ``_2`` and ``forward_fn`` are accepted with a warning when not the
defaults and not used. Every run writes ``results_dir/auto_quant_report.html``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import warnings

import keras

from aimet_tf.common.defs import QuantScheme
from aimet_tf.ptq.adaround import AdaroundParameters
from aimet_tf.ptq.auto_quant import DEFAULT_SCHEME_CANDIDATES, AutoQuantResult, QuantSchemeCandidate, auto_quantize

__all__ = ["AutoQuant", "AutoQuantWithAutoMixedPrecision", "QuantSchemeCandidate"]


def _scheme_name(scheme: Any) -> str:
    return scheme.value if isinstance(scheme, QuantScheme) else str(scheme)


class AutoQuant:
    """AIMET's AutoQuant v2 (see the module docstring)."""

    def __init__(
        self,
        model: keras.Model,
        eval_callback: Callable[[keras.Model], float],
        dataset: Any,
        param_bw: int = 8,
        output_bw: int = 8,
        quant_scheme: QuantScheme = QuantScheme.post_training_tf_enhanced,
        rounding_mode: str = "nearest",
        config_file: str | None = None,
        results_dir: str = "/tmp",
        cache_id: str | None = None,
        strict_validation: bool = True,
    ):
        if rounding_mode != "nearest":
            raise ValueError(f"Expected rounding_mode='nearest' (TF's kernels round to nearest). Received: {rounding_mode!r}")
        if not callable(eval_callback):
            raise TypeError(f"Expected a callable eval_callback(model) -> float. Received: {eval_callback!r}")
        self.model = model
        self.eval_callback = eval_callback
        self.dataset = dataset
        self._settings = dict(
            param_bw=param_bw, output_bw=output_bw, quant_scheme=_scheme_name(quant_scheme), config_file=config_file,
            results_dir=results_dir, cache_id=cache_id, strict_validation=strict_validation,
        )
        self._adaround_params: AdaroundParameters | None = None
        self._candidates: tuple[QuantSchemeCandidate, ...] = DEFAULT_SCHEME_CANDIDATES
        self.result: AutoQuantResult | None = None
        self._amp_candidates: list | None = None

    def set_adaround_params(self, adaround_params: AdaroundParameters) -> None:
        """AdaRound's settings for the adaround step (default: the dataset, 2,000 iterations per layer)."""
        if not isinstance(adaround_params, AdaroundParameters):
            raise TypeError(f"Expected AdaroundParameters. Received: {type(adaround_params).__name__}")
        self._adaround_params = adaround_params

    def get_quant_scheme_candidates(self) -> tuple[QuantSchemeCandidate, ...]:
        return self._candidates

    def set_quant_scheme_candidates(self, candidates: Sequence[QuantSchemeCandidate | tuple]) -> None:
        """Candidates of the quant-scheme step: ``QuantSchemeCandidate`` or (param scheme, output scheme[, percentile])."""
        parsed = []
        for candidate in candidates:
            if isinstance(candidate, QuantSchemeCandidate):
                parsed.append(candidate)
            elif isinstance(candidate, (tuple, list)) and len(candidate) in (2, 3):
                parsed.append(QuantSchemeCandidate(_scheme_name(candidate[0]), _scheme_name(candidate[1]), *candidate[2:]))
            else:
                raise TypeError(f"Expected QuantSchemeCandidate or (param_scheme, output_scheme[, percentile]). Received: {candidate!r}")
        if not parsed:
            raise ValueError("Expected at least one quant scheme candidate. Received: none")
        self._candidates = tuple(parsed)

    def _run(self, allowed_accuracy_drop: float, stop_after_baseline: bool) -> AutoQuantResult:
        return auto_quantize(
            self.model, self.eval_callback, self.dataset, allowed_accuracy_drop,
            scheme_candidates=self._candidates, adaround_params=self._adaround_params,
            stop_after_baseline=stop_after_baseline, amp_candidates=self._amp_candidates, **self._settings,
        )

    def run_inference(self):
        """The baseline sim (the requested bitwidths and scheme) and its score: ``(sim, score)``."""
        result = self._run(0.0, stop_after_baseline=True)
        return result.sim, result.score

    def optimize(self, allowed_accuracy_drop: float = 0.0):
        """Runs the flow; returns ``(model, score, encoding_path)`` of the best result."""
        self.result = self._run(allowed_accuracy_drop, stop_after_baseline=False)
        return self.result.sim.model, self.result.score, self.result.encoding_path



class AutoQuantWithAutoMixedPrecision(AutoQuant):
    """AIMET's AutoQuant v2 with AMP as the last step (see the module docstring)."""

    def set_mixed_precision_params(
        self,
        candidates: Sequence[Any],
        num_samples_for_phase_1: int | None = 128,
        forward_fn: Callable | None = None,
        num_samples_for_phase_2: int | None = None,
    ) -> None:
        """The AMP candidates, AIMET's ``((act_bw, QuantizationDataType.int), (param_bw, QuantizationDataType.int))``."""
        from aimet_tf.ptq.mixed_precision import Candidate

        parsed = [Candidate.parse(c) for c in candidates]
        if len(parsed) < 2:
            raise ValueError(f"Expected at least two mixed-precision candidates. Received: {candidates!r}")
        unused = {k: v for k, v in (("num_samples_for_phase_1", num_samples_for_phase_1 if num_samples_for_phase_1 != 128 else None),
                                    ("forward_fn", forward_fn), ("num_samples_for_phase_2", num_samples_for_phase_2)) if v is not None}
        if unused:
            warnings.warn(f"set_mixed_precision_params: {sorted(unused)} are not used by aimet_tf: the eval callback scores "
                          "both AMP phases on its own data and the dataset calibrates.", stacklevel=2)
        self._amp_candidates = parsed
