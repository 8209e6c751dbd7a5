"""Per-layer compression sensitivity as pictures: one PNG and one self-contained HTML page.

The data is the greedy search's table (``CompressionStats.eval_scores``, or the JSON cache that
:func:`aimet_tf.compression.compressor.layer_sensitivity` writes): ``scores[layer][ratio]`` is the
eval score of the model with only that layer compressed at that ratio (ratio 1.0: uncompressed).

Run as a module to redraw a saved table, e.g. the benchmark's::

    python -m aimet_tf.compression.report benchmarks/results/compress_sensitivity_resnet8_spatial_svd.json out/resnet8
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Mapping

from aimet_tf.analysis import report

__all__ = ["load_scores", "sensitivity_chart", "write_sensitivity_report"]


def _check_scores(scores: Mapping[str, Mapping[float, float]]) -> dict[str, dict[float, float]]:
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError(f"Expected scores as a non-empty mapping layer -> {{ratio: score}}. Received: {scores!r:.200}")
    checked: dict[str, dict[float, float]] = {}
    for layer, by_ratio in scores.items():
        if not isinstance(by_ratio, Mapping) or not by_ratio:
            raise ValueError(f"Expected scores[{layer!r}] as a non-empty mapping ratio -> score. Received: {by_ratio!r:.200}")
        row = {}
        for ratio, value in by_ratio.items():
            r, v = float(ratio), float(value)
            if not 0.0 < r <= 1.0 or not math.isfinite(v):
                raise ValueError(f"scores[{layer!r}]: expected ratios in (0, 1] with finite scores. Received {ratio!r}: {value!r}")
            row[r] = v
        checked[str(layer)] = dict(sorted(row.items()))
    return checked


def sensitivity_chart(scores: Mapping[str, Mapping[float, float]], title: str, baseline: float | None = None,
                      score_label: str = "eval score", chosen: Mapping[str, float] | None = None) -> report.LineChart:
    """One line per layer: its score against the fraction of its cost kept; the ``chosen`` ratios
    (those below 1.0) as labelled points."""
    table = _check_scores(scores)
    series = [report.Series(layer, list(row), list(row.values()), labels=[f"{layer} @ {r:g}" for r in row])
              for layer, row in table.items()]
    picked = [(layer, float(r)) for layer, r in (chosen or {}).items() if float(r) < 1.0 and float(r) in table.get(layer, {})]
    if picked:
        series.append(report.Series("chosen", [r for _, r in picked], [table[layer][r] for layer, r in picked],
                                    labels=[layer for layer, _ in picked], lines=False, annotate=True))
    hlines = () if baseline is None else ((float(baseline), "uncompressed"),)
    return report.LineChart(title, "compression ratio of the layer (fraction of its cost kept)", score_label, series, hlines)


def write_sensitivity_report(
    scores: Mapping[str, Mapping[float, float]],
    path_prefix: str | os.PathLike,
    title: str = "Per-layer compression sensitivity",
    *,
    baseline: float | None = None,
    chosen: Mapping[str, float] | None = None,
    score_label: str = "eval score",
) -> tuple[str, str]:
    """Writes ``<path_prefix>.png`` and ``<path_prefix>.html`` (chart plus the table, with the chosen
    ratio per layer when given); returns both paths. Each file is written atomically."""
    table = _check_scores(scores)
    chosen = dict(chosen or {})
    unknown = sorted(set(chosen) - set(table))
    if unknown:
        raise ValueError(f"chosen names layers the scores do not have: {unknown}. Layers scored: {sorted(table)}")
    chart = sensitivity_chart(table, title, baseline, score_label, chosen)
    prefix = os.fspath(path_prefix)
    folder = os.path.dirname(prefix)
    if folder:
        os.makedirs(folder, exist_ok=True)
    ratios = sorted({r for row in table.values() for r in row})
    rows = [[layer, *(row.get(r, float("nan")) for r in ratios), chosen.get(layer, "")] for layer, row in table.items()]
    blocks = [chart, report.Table("Scores per layer and ratio", ["layer", *(f"{r:g}" for r in ratios), "chosen"], rows)]
    if baseline is not None:
        blocks.insert(0, f"Uncompressed model: {baseline:.4f}. Each line is the model with only that layer compressed.")
    png = report.write_png(chart, prefix + ".png", size=(8.0, 5.0))
    page = report.write_html(prefix + ".html", title, blocks)
    return png, page


def load_scores(path: str | os.PathLike) -> tuple[dict[str, dict[float, float]], dict[str, float]]:
    """Reads a sensitivity table: the benchmark's JSON (``scores`` and ``chosen``) or the greedy cache.

    Returns ``(scores, chosen)``; ``chosen`` is empty for a cache."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "scores" not in data:
        raise ValueError(f"Expected {os.fspath(path)!r} to hold a JSON object with a 'scores' table. Received keys: "
                         f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
    return _check_scores(data["scores"]), {k: float(v) for k, v in data.get("chosen", {}).items()}


def _main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m aimet_tf.compression.report SCORES.json OUTPUT_PREFIX", file=sys.stderr)
        return 2
    scores, chosen = load_scores(argv[0])
    baselines = {row[1.0] for row in scores.values() if 1.0 in row}
    baseline = baselines.pop() if len(baselines) == 1 else None
    for path in write_sensitivity_report(scores, argv[1], baseline=baseline, chosen=chosen):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
