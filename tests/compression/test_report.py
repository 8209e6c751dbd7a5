"""The per-layer compression sensitivity pictures: PNG + self-contained HTML, from a run or a saved table."""

import json
import os

import keras
import numpy as np
import pytest

from aimet_tf.compression import compressor
from aimet_tf.compression import report as compression_report
from aimet_tf.testing.browser import check_page
from aimet_tf.testing.models import random_images

_SCORES = {"conv_a": {0.25: 0.4, 0.5: 0.8, 1.0: 0.9}, "conv_b": {0.25: 0.85, 0.5: 0.88, 1.0: 0.9}}


def test_chart_has_one_line_per_layer_and_the_chosen_points():
    chart = compression_report.sensitivity_chart(_SCORES, "t", baseline=0.9, chosen={"conv_a": 0.5, "conv_b": 1.0})
    names = [s.name for s in chart.series]
    assert names == ["conv_a", "conv_b", "chosen"]
    assert list(chart.series[0].xs) == [0.25, 0.5, 1.0] and list(chart.series[0].ys) == [0.4, 0.8, 0.9]
    chosen = chart.series[-1]
    assert list(chosen.xs) == [0.5] and list(chosen.ys) == [0.8] and list(chosen.labels) == ["conv_a"]
    assert chart.hlines == ((0.9, "uncompressed"),)


def test_writes_png_and_html_with_the_table(tmp_path):
    png, page = compression_report.write_sensitivity_report(_SCORES, tmp_path / "sub" / "sens", baseline=0.9, chosen={"conv_a": 0.5})
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    text = open(page, encoding="utf-8").read()
    assert "<td>conv_a</td><td>0.4</td><td>0.8</td><td>0.9</td><td>0.5</td>" in text
    assert "<script src=" not in text  # every script is inline
    assert sorted(os.listdir(tmp_path / "sub")) == ["sens.html", "sens.png"]


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="non-empty mapping"):
        compression_report.write_sensitivity_report({}, "/tmp/x")
    with pytest.raises(ValueError, match=r"ratios in \(0, 1\]"):
        compression_report.sensitivity_chart({"a": {1.5: 0.3}}, "t")
    with pytest.raises(ValueError, match="finite scores"):
        compression_report.sensitivity_chart({"a": {0.5: float("nan")}}, "t")
    with pytest.raises(ValueError, match="chosen names layers the scores do not have"):
        compression_report.write_sensitivity_report(_SCORES, "/tmp/x", chosen={"zzz": 0.5})


def test_load_scores_reads_the_benchmark_file_and_the_cache(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"scores": {"c": {"0.5": 0.7, "1.0": 0.9}}, "chosen": {"c": 0.5}}))
    assert compression_report.load_scores(path) == ({"c": {0.5: 0.7, 1.0: 0.9}}, {"c": 0.5})
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="'scores' table"):
        compression_report.load_scores(tmp_path / "bad.json")


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="fc")(x))


def test_greedy_compress_model_writes_the_report_into_results_dir(tmp_path):
    model = _model()
    x = random_images(32, (10, 10, 3))
    want = np.argmax(model(x), -1)

    def evaluate(m):
        return float(np.mean(np.argmax(m(x), -1) == want))

    _, stats = compressor.compress_model(model, "spatial_svd", evaluate, target_ratio=0.8, num_candidates=4, results_dir=tmp_path / "r")
    page = tmp_path / "r" / "compression_sensitivity_spatial_svd.html"
    assert (tmp_path / "r" / "compression_sensitivity_spatial_svd.png").exists() and page.exists()
    for layer in stats.eval_scores:
        assert f"<td>{layer}</td>" in page.read_text(encoding="utf-8")


def test_an_unwritable_results_dir_fails_before_any_evaluation(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    calls = []

    def evaluate(m):
        calls.append(1)
        return 1.0

    with pytest.raises(OSError, match="writable folder for the compression report"):
        compressor.compress_model(_model(), "spatial_svd", evaluate, target_ratio=0.8, results_dir=blocker / "sub")
    assert calls == []


@pytest.mark.slow
def test_the_page_opens_in_chromium_and_draws_the_chart(tmp_path):
    _, page = compression_report.write_sensitivity_report(_SCORES, tmp_path / "sens", baseline=0.9)
    result = check_page(page)
    assert result.problems == []
    assert result.drawn_canvases >= 1
