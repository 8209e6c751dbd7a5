"""QuantAnalyzer: the numbers it writes equal the same quantities computed by hand."""

import json
import os

import keras
import numpy as np
import pytest

from aimet_tf.analysis.quant_analyzer import QuantAnalyzer
from aimet_tf.common.defs import CallbackFunc
from aimet_tf.graph import GraphRunner
from aimet_tf.quantization import QuantizationSimModel
from aimet_tf.testing.models import conv_bn_relu_model, random_images


def _setup(seed=0):
    model = conv_bn_relu_model(seed=seed)
    x = random_images(64, (16, 16, 3), seed=seed)
    reference = np.asarray(model(x))

    def forward(m, data):
        m(data, training=False)

    def evaluate(m, data):
        out = np.asarray(m(data))
        return float(1.0 - np.linalg.norm(out - reference) / np.linalg.norm(reference))

    return model, x, CallbackFunc(forward, x), CallbackFunc(evaluate, x), evaluate


def test_results_match_hand_computed_quantities(tmp_path):
    model, x, forward, evaluate_cb, evaluate = _setup()
    analyzer = QuantAnalyzer(model, forward, evaluate_cb)
    analyzer.enable_per_layer_mse_loss(x, 2)
    results = analyzer.analyze(default_param_bw=4, results_dir=tmp_path)

    # The same sim, built by hand: scores with only one layer's quantizers on.
    sim = QuantizationSimModel(model, quant_scheme="tf_enhanced", default_param_bw=4)
    sim.compute_encodings(lambda m, d: m(d, training=False), x)
    wrappers = {w.name: w for w in sim.quant_wrappers()}
    every = [(q, q.is_enabled()) for w in wrappers.values() for q in w.quantizers()]
    name = next(iter(results["per_layer"]["quant_enabled"]))
    for q, on in every:
        q.disable()
    for q in wrappers[name].quantizers():
        q.enable()
    assert results["per_layer"]["quant_enabled"][name] == pytest.approx(evaluate(sim.model, x), abs=1e-6)
    for q, on in every:
        q.enable() if on else q.disable()
    assert results["model_sensitivity"]["all_quantized"] == pytest.approx(evaluate(sim.model, x), abs=1e-6)
    assert results["model_sensitivity"]["fp32"] == pytest.approx(1.0)

    # Weight histograms count every weight; per-channel ranges are numpy's.
    kernels = {t: h for t, h in results["weights_pdf"].items() if t.endswith("/kernel")}
    assert kernels
    for tensor, hist in kernels.items():
        assert sum(hist["counts"]) == model.get_layer(tensor.split("/")[0]).kernel.numpy().size
    conv = next(l for l in model.layers if isinstance(l, keras.layers.Conv2D))
    kernel = conv.kernel.numpy()
    np.testing.assert_allclose(results["weight_ranges"][conv.name]["max"], kernel.reshape(-1, kernel.shape[-1]).max(0), rtol=1e-6)
    # Activation histograms hold one count per element the forward pass produced.
    first = next(iter(results["activations_pdf"]))
    produced = GraphRunner(model, x).output_of(first)
    assert sum(results["activations_pdf"][first]["counts"]) == pytest.approx(produced.size)
    # MSE equals numpy's on the same layer outputs.
    layer = next(iter(results["per_layer_mse_loss"]))
    want = GraphRunner(sim.float_model(), x).output_of(layer)
    got = GraphRunner(sim.model, x).output_of(layer)
    assert results["per_layer_mse_loss"][layer] == pytest.approx(float(np.mean((got - want) ** 2)), rel=1e-5)

    for name in ("model_sensitivity", "per_layer_quant_enabled", "per_layer_quant_disabled", "per_layer_mse_loss"):
        for suffix in (".json", ".png", ".html"):
            assert os.path.isfile(tmp_path / f"{name}{suffix}")
    assert json.loads((tmp_path / "per_layer_quant_disabled.json").read_text()) == results["per_layer"]["quant_disabled"]
    index = (tmp_path / "index.html").read_text()
    for page in ("activations_pdf/index.html", "weights_pdf/index.html", "weight_ranges/index.html", "min_max_ranges/weights.html"):
        assert f'href="{page}"' in index


def test_bad_input(tmp_path):
    model, x, forward, evaluate_cb, _ = _setup(1)
    with pytest.raises(ValueError, match="finite number"):
        QuantAnalyzer(model, forward, CallbackFunc(lambda m, d: float("nan"), None)).analyze(results_dir=tmp_path)
    with pytest.raises(TypeError, match="return a number"):
        QuantAnalyzer(model, forward, CallbackFunc(lambda m, d: "good", None)).analyze(results_dir=tmp_path)
    with pytest.raises(TypeError, match="forward_pass_callback as CallbackFunc"):
        QuantAnalyzer(model, 42, evaluate_cb)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    calls = []
    analyzer = QuantAnalyzer(model, CallbackFunc(lambda m, d: calls.append(1), None), evaluate_cb)
    with pytest.raises(OSError, match="writable folder"):
        analyzer.analyze(results_dir=blocker / "sub")
    assert not calls
    with pytest.raises(ValueError, match="num_batches >= 1"):
        analyzer.enable_per_layer_mse_loss(x, 0)


@pytest.mark.slow
def test_pages_open_in_chromium(tmp_path):
    from aimet_tf.testing.browser import check_page

    model, x, forward, evaluate_cb, _ = _setup(2)
    QuantAnalyzer(model, forward, evaluate_cb).analyze(results_dir=tmp_path)
    pages = [os.path.join(root, f) for root, _, names in os.walk(tmp_path) for f in names if f.endswith(".html")]
    assert len(pages) >= 8
    for page in pages:
        result = check_page(page)
        assert result.problems == [], page
        if not page.endswith("/index.html") or "pdf" in page or "weight_ranges" in page:
            assert result.drawn_canvases >= 1, page
