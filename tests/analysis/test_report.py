"""Reports: PNG files, self-contained HTML pages that open in headless Chromium without errors."""

import os
import re

import pytest

from aimet_tf.analysis import report
from aimet_tf.testing.browser import check_page


def _charts():
    line = report.LineChart("Pareto front", "relative BOPs", "accuracy", [
        report.Series("front", [0.3, 0.5, 1.0], [0.90, 0.93, 0.94], labels=["a", "b", "c"], annotate=True),
        report.Series("uniform", [0.5, 1.0], [0.91, 0.94], lines=False)], hlines=[(0.94, "FP32")])
    bars = report.BarChart("per layer", "accuracy", ["l1", "l2"], {"only this layer": [0.9, 0.8], "all but": [0.5, 0.6]})
    hist = report.HistogramChart("activations", "value", [1, 5, 3], [0.0, 1.0, 2.0, 3.0], markers=[(0.5, "min"), (2.5, "max")])
    return line, bars, hist


def test_png_and_html_are_written_and_self_contained(tmp_path):
    charts = _charts()
    for i, chart in enumerate(charts):
        path = report.write_png(chart, tmp_path / f"c{i}.png")
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    page = report.write_html(tmp_path / "sub" / "page.html", "Test <page>", [*charts, report.Table("t", ["a", "b"], [["x", 1.5]]), "text & more"])
    text = open(page, encoding="utf-8").read()
    assert "<title>Test &lt;page&gt;</title>" in text and "text &amp; more" in text
    assert not re.search(r"<script[^>]+src=", text) and not re.search(r"<link[^>]+href=", text)
    index = report.write_index(tmp_path, "Results")
    assert 'href="sub/page.html"' in open(index, encoding="utf-8").read()


def test_bad_chart_data_is_refused():
    with pytest.raises(ValueError, match="as many xs as ys"):
        report.Series("s", [1, 2], [1])
    with pytest.raises(ValueError, match="len\\(edges\\) == len\\(counts\\) \\+ 1"):
        report.HistogramChart("h", "x", [1, 2], [0, 1])
    with pytest.raises(ValueError, match="has 1 values for 2 categories"):
        report.BarChart("b", "y", ["a", "b"], {"s": [1]})


@pytest.mark.slow
def test_html_opens_in_chromium_without_errors_and_draws_every_chart(tmp_path):
    page = report.write_html(tmp_path / "page.html", "Charts", list(_charts()))
    result = check_page(page)
    assert result.problems == []
    assert result.drawn_canvases >= 3  # one canvas per plot at least


@pytest.mark.slow
def test_the_browser_check_catches_errors_and_network_requests(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<html><head><script src="https://cdn.example.com/x.js"></script></head>'
                   '<body><script>console.error("boom"); missing();</script></body></html>')
    result = check_page(bad)
    assert "https://cdn.example.com/x.js" in result.external_requests
    assert any("boom" in e for e in result.console_errors)
    assert any("missing is not defined" in e for e in result.exceptions)
    assert result.drawn_canvases == 0
