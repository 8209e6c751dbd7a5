"""QuantAnalyzer: where a model's quantization error comes from, as JSON, PNG and HTML per result.

``QuantAnalyzer(model, forward_pass_callback, eval_callback).analyze(...)`` builds a sim, computes
its encodings with the forward-pass callback, and writes into ``results_dir`` (AIMET's file names
where AIMET has the result):

* ``model_sensitivity``: eval score of FP32, weights only quantized, activations only, both;
* ``per_layer_quant_enabled`` / ``per_layer_quant_disabled``: the score with only that layer's
  quantizers on / with every quantizer but that layer's on (a layer = one sim wrapper);
* ``min_max_ranges/activations`` and ``min_max_ranges/weights``: each layer's encoding min/max;
* ``activations_pdf/`` and ``weights_pdf/``: per-layer histograms (float activations seen during a
  forward pass, float weights) with the encoding's min and max drawn on them; one PNG per layer,
  one HTML page per folder;
* ``weight_ranges/``: per output channel min/max of every Conv/Dense kernel (what CLE evens out);
* ``per_layer_mse_loss`` (after ``enable_per_layer_mse_loss``): MSE of each layer's output in the
  sim against FP32 on the unlabeled data.

Each result is a ``.json`` (the numbers), a ``.png`` and a self-contained ``.html``;
``index.html`` links them all. Quantizers are switched through their public ``enable()`` /
``disable()`` and every one is restored afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable

import keras
import numpy as np
from absl import logging

from aimet_tf import files
from aimet_tf.metrics import checked_score
from aimet_tf.analysis import report
from aimet_tf.graph import GraphRunner
from aimet_tf.graph.catalogue import output_channel_axis
from aimet_tf.quantization.analyzers import make_analyzer
from aimet_tf.quantization.calibration_data import as_forward_pass_callback, iterate_batches, model_inputs
from aimet_tf.quantization.sim import QuantizationSimModel
from aimet_tf.quantization.wrapper import get_param_variable

__all__ = ["QuantAnalyzer"]

HISTOGRAM_BINS = 128


def _callback(value: Any, what: str):
    callback = as_forward_pass_callback(value)
    if callback is None:
        raise TypeError(f"Expected {what} as CallbackFunc(func, func_callback_args) or (func, args). Received: {value!r}")
    return callback




def _encoding_range(quantizer) -> tuple[float, float] | None:
    encoding = quantizer.get_encoding()
    if encoding is None:
        return None
    return float(np.min(encoding.min)), float(np.max(encoding.max))


class QuantAnalyzer:
    """Per-layer analysis of quantization error (see the module docstring).

    Args:
        model: the float model (not modified).
        forward_pass_callback: runs a model on calibration data: ``CallbackFunc(func, args)`` or
            ``(func, args)``; called as ``func(model, args)``.
        eval_callback: scores a model, higher is better: ``CallbackFunc(func, args)``.
    """

    def __init__(self, model: keras.Model, forward_pass_callback: Any, eval_callback: Any):
        self.model = model
        self._forward = _callback(forward_pass_callback, "forward_pass_callback")
        self._eval = _callback(eval_callback, "eval_callback")
        self._mse_data: tuple[Any, int] | None = None

    def enable_per_layer_mse_loss(self, unlabeled_dataset: Any, num_batches: int) -> None:
        """Also compute each layer's output MSE against FP32 on ``num_batches`` batches of the data."""
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise ValueError(f"Expected num_batches >= 1. Received: {num_batches!r}")
        self._mse_data = (unlabeled_dataset, num_batches)

    def _evaluate(self, model: keras.Model, where: str) -> float:
        return checked_score(self._eval.func(model, self._eval.args), where)

    def analyze(
        self,
        quant_scheme: Any = "tf_enhanced",
        rounding_mode: str = "nearest",
        default_param_bw: int = 8,
        default_output_bw: int = 8,
        config_file: Any = None,
        results_dir: str | os.PathLike = "./tmp/",
    ) -> dict[str, Any]:
        """Runs every analysis and writes it into ``results_dir``; returns the numbers (the JSON contents).

        Raises:
            OSError: for a ``results_dir`` that cannot be written (before any work).
            TypeError / ValueError: an eval callback returning a non-number or a non-finite one.
        """
        folder = files.check_writable_folder(results_dir, "QuantAnalyzer's results (checked before any work)")
        sim = QuantizationSimModel(self.model, quant_scheme=quant_scheme, rounding_mode=rounding_mode,
                                   default_param_bw=default_param_bw, default_output_bw=default_output_bw, config_file=config_file)
        sim.compute_encodings(self._forward.func, self._forward.args)
        wrappers = [w for w in sim.quant_wrappers() if any(q.is_enabled() for q in w.quantizers())]
        results: dict[str, Any] = {}
        with self._restored(sim):
            results["model_sensitivity"] = self._model_sensitivity(sim, folder)
            results["per_layer"] = self._per_layer(sim, wrappers, folder, results["model_sensitivity"])
        results["min_max_ranges"] = self._min_max(wrappers, folder)
        results["activations_pdf"] = self._activation_histograms(sim, wrappers, folder)
        results["weights_pdf"] = self._weight_histograms(wrappers, folder)
        results["weight_ranges"] = self._weight_ranges(wrappers, folder)
        if self._mse_data is not None:
            results["per_layer_mse_loss"] = self._mse(sim, wrappers, folder)
        report.write_index(folder, f"QuantAnalyzer: {self.model.name}")
        return results

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    @contextlib.contextmanager
    def _restored(sim: QuantizationSimModel):
        states = [(q, q.is_enabled()) for w in sim.quant_wrappers() for q in w.quantizers()]
        try:
            yield
        finally:
            for quantizer, enabled in states:
                quantizer.enable() if enabled else quantizer.disable()

    @staticmethod
    def _set(quantizers, on: set[int]) -> None:
        for quantizer, enabled in quantizers:
            quantizer.enable() if (enabled and id(quantizer) in on) else quantizer.disable()

    @staticmethod
    def _write(folder: str, name: str, data: Any, chart, blocks=()) -> None:
        base = os.path.join(folder, name)
        files.atomic_write(base + ".json", json.dumps(data, indent=1))
        report.write_png(chart, base + ".png")
        report.write_html(base + ".html", chart.title, [chart, *blocks])

    def _model_sensitivity(self, sim: QuantizationSimModel, folder: str) -> dict[str, float]:
        states = [(q, q.is_enabled()) for w in sim.quant_wrappers() for q in w.quantizers()]
        params = {id(q) for w in sim.quant_wrappers() for q in w.param_quantizers if q is not None}
        everything = {id(q) for q, _ in states}
        scores = {"fp32": self._evaluate(self.model, "FP32 model")}
        for label, on in (("weights_quantized", params), ("activations_quantized", everything - params), ("all_quantized", everything)):
            self._set(states, on)
            scores[label] = self._evaluate(sim.model, label.replace("_", " "))
        logging.info("QuantAnalyzer sensitivity: %s", scores)
        chart = report.BarChart("Model sensitivity to weight vs activation quantization", "eval score",
                                ["FP32", "weights only", "activations only", "both"], {"score": list(scores.values())})
        self._write(folder, "model_sensitivity", scores, chart)
        return scores

    def _per_layer(self, sim: QuantizationSimModel, wrappers, folder: str, sensitivity: dict[str, float]) -> dict[str, dict[str, float]]:
        states = [(q, q.is_enabled()) for w in sim.quant_wrappers() for q in w.quantizers()]
        everything = {id(q) for q, _ in states}
        enabled, disabled = {}, {}
        for k, wrapper in enumerate(wrappers, 1):
            own = {id(q) for q in wrapper.quantizers()}
            self._set(states, own)
            enabled[wrapper.name] = self._evaluate(sim.model, f"only {wrapper.name} quantized")
            self._set(states, everything - own)
            disabled[wrapper.name] = self._evaluate(sim.model, f"all but {wrapper.name} quantized")
            logging.info("QuantAnalyzer per layer [%d/%d] %s: only %.4f, all but %.4f", k, len(wrappers), wrapper.name,
                         enabled[wrapper.name], disabled[wrapper.name])
        names = list(enabled)
        for key, scores, title in (("per_layer_quant_enabled", enabled, "Score with only this layer quantized"),
                                   ("per_layer_quant_disabled", disabled, "Score with every layer but this one quantized")):
            chart = report.BarChart(title, "eval score", names, {"score": [scores[n] for n in names]},
                                    hlines=[(sensitivity["fp32"], "FP32"), (sensitivity["all_quantized"], "all quantized")])
            self._write(folder, key, scores, chart)
        return {"quant_enabled": enabled, "quant_disabled": disabled}

    def _min_max(self, wrappers, folder: str) -> dict[str, dict]:
        sub = os.path.join(folder, "min_max_ranges")
        acts, weights = {}, {}
        for wrapper in wrappers:
            for i, q in enumerate(wrapper.output_quantizers):
                if q is not None and q.is_enabled() and _encoding_range(q):
                    acts[f"{wrapper.name}:{i}"] = _encoding_range(q)
            for path, q in wrapper.param_quantizers_by_path().items():
                if q is not None and q.is_enabled() and _encoding_range(q):
                    weights[f"{wrapper.name}/{path}"] = _encoding_range(q)
        for name, ranges in (("activations", acts), ("weights", weights)):
            labels = list(ranges)
            chart = report.BarChart(f"Encoding min / max of {name}", "value", labels,
                                    {"min": [ranges[n][0] for n in labels], "max": [ranges[n][1] for n in labels]})
            table = report.Table(f"{name} encodings", ["tensor", "min", "max"], [[n, *ranges[n]] for n in labels])
            os.makedirs(sub, exist_ok=True)
            self._write(sub, name, {n: {"min": r[0], "max": r[1]} for n, r in ranges.items()}, chart, [table])
        return {"activations": acts, "weights": weights}

    def _histogram_pages(self, folder: str, title: str, items: list[tuple[str, np.ndarray, np.ndarray, tuple | None]]) -> dict:
        os.makedirs(folder, exist_ok=True)
        charts, data = [], {}
        for name, counts, edges, encoding in items:
            markers = [] if encoding is None else [(encoding[0], "encoding min"), (encoding[1], "encoding max")]
            chart = report.HistogramChart(name, "value", counts.tolist(), edges.tolist(), markers)
            report.write_png(chart, os.path.join(folder, files.check_file_name(name.replace("/", "_").replace(":", "_")) + ".png"))
            charts.append(chart)
            data[name] = {"counts": counts.tolist(), "edges": edges.tolist(), "encoding": encoding}
        files.atomic_write(os.path.join(folder, "histograms.json"), json.dumps(data))
        report.write_html(os.path.join(folder, "index.html"), title, charts or ["No tensors."])
        return data

    def _activation_histograms(self, sim: QuantizationSimModel, wrappers, folder: str) -> dict:
        observed = []
        with contextlib.ExitStack() as stack:
            for wrapper in wrappers:
                q = wrapper.output_quantizers[0] if wrapper.output_quantizers else None
                if q is not None and q.is_enabled():
                    analyzer = stack.enter_context(q.calibration(make_analyzer("tf_enhanced", channel_axis=None, num_bins=HISTOGRAM_BINS)))
                    observed.append((wrapper.name, q, analyzer))
            self._forward.func(sim.model, self._forward.args)
        items = []
        for name, q, analyzer in observed:
            hist = analyzer.histogram()
            if hist is not None:
                items.append((name, hist[0], hist[1], _encoding_range(q)))
        return self._histogram_pages(os.path.join(folder, "activations_pdf"), "Activation histograms with their encodings", items)

    def _weight_histograms(self, wrappers, folder: str) -> dict:
        items = []
        for wrapper in wrappers:
            for path, q in wrapper.param_quantizers_by_path().items():
                if q is None or not q.is_enabled():
                    continue
                values = np.asarray(get_param_variable(wrapper.layer, path).numpy()).ravel()
                counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
                items.append((f"{wrapper.name}/{path}", counts.astype(np.float64), edges, _encoding_range(q)))
        return self._histogram_pages(os.path.join(folder, "weights_pdf"), "Weight histograms with their encodings", items)

    def _weight_ranges(self, wrappers, folder: str) -> dict:
        sub = os.path.join(folder, "weight_ranges")
        os.makedirs(sub, exist_ok=True)
        charts, data = [], {}
        for wrapper in wrappers:
            layer = wrapper.layer
            kernel = getattr(layer, "kernel", None)
            if kernel is None:
                continue
            try:
                axis = output_channel_axis(layer)
            except KeyError:
                continue
            k = np.asarray(kernel.numpy())
            axis = k.ndim - 2 if axis is None else axis  # depthwise: one channel per input channel
            flat = np.moveaxis(k, axis, 0).reshape(k.shape[axis], -1)
            lo, hi = flat.min(axis=1), flat.max(axis=1)
            channels = list(range(len(lo)))
            chart = report.LineChart(f"{wrapper.name}: per-channel weight range", "output channel", "weight",
                                     [report.Series("max", channels, hi.tolist()), report.Series("min", channels, lo.tolist())])
            report.write_png(chart, os.path.join(sub, f"{wrapper.name}.png"))
            charts.append(chart)
            data[wrapper.name] = {"min": lo.tolist(), "max": hi.tolist()}
        files.atomic_write(os.path.join(sub, "weight_ranges.json"), json.dumps(data))
        report.write_html(os.path.join(sub, "index.html"), "Per-channel weight ranges", charts or ["No kernels."])
        return data

    def _mse(self, sim: QuantizationSimModel, wrappers, folder: str) -> dict[str, float]:
        data, num_batches = self._mse_data
        batches = [b[0] for b in iterate_batches(data, model_inputs(self.model), 32, num_batches, purpose="per-layer MSE data")]
        if not batches:
            raise ValueError("enable_per_layer_mse_loss: the unlabeled dataset gave no batches.")
        samples = np.concatenate(batches)
        float_model = sim.float_model()
        quantized, reference = GraphRunner(sim.model, samples), GraphRunner(float_model, samples)
        order = {n.name: i for i, n in enumerate(quantized.graph.nodes)}
        mse = {}
        for wrapper in sorted(wrappers, key=lambda w: order.get(w.name, 0)):
            if wrapper.name not in order:
                continue
            got, want = quantized.output_of(wrapper.name), reference.output_of(wrapper.name)
            mse[wrapper.name] = float(np.mean((np.asarray(got, np.float64) - np.asarray(want, np.float64)) ** 2))
        chart = report.BarChart("Per-layer output MSE, sim vs FP32", "MSE", list(mse), {"mse": list(mse.values())})
        self._write(folder, "per_layer_mse_loss", mse, chart)
        return mse
