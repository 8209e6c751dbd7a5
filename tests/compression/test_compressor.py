"""Manual and greedy compression of whole models: selection maths, cache/resume, stats, bad input."""

import json

import keras
import numpy as np
import pytest

from aimet_tf.compression import compressor
from aimet_tf.graph.cost import total_cost
from aimet_tf.testing.models import random_images


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.Conv2D(12, 3, activation="relu", name="c3")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="fc")(x))


def _agreement(reference, x):
    want = np.argmax(reference(x), -1)

    def evaluate(model):
        return float(np.mean(np.argmax(model(x), -1) == want))

    return evaluate


def test_candidate_ratios_are_aimets():
    assert compressor.candidate_ratios(10) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    with pytest.raises(ValueError, match="num_comp_ratio_candidates >= 2"):
        compressor.candidate_ratios(1)


def test_greedy_ratios_picks_the_highest_level_meeting_the_target():
    scores = {"a": {0.5: 0.9, 1.0: 1.0}, "b": {0.5: 0.6, 1.0: 1.0}}
    savings = {"a": {0.5: 50, 1.0: 0}, "b": {0.5: 50, 1.0: 0}}
    # total 200: compressing a alone keeps 0.75; both keep 0.5.
    assert compressor.greedy_ratios(scores, savings, 200, 0.8) == {"a": 0.5, "b": 1.0}
    assert compressor.greedy_ratios(scores, savings, 200, 0.5) == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="cannot be met: .* keeps 0.500"):
        compressor.greedy_ratios(scores, savings, 200, 0.4)
    # A noisy curve: without the monotonic fit, 0.25 scores above 0.5 and is picked at level 0.8.
    noisy = {"a": {0.25: 0.8, 0.5: 0.7, 1.0: 1.0}}
    cost = {"a": {0.25: 75, 0.5: 50, 1.0: 0}}
    assert compressor.greedy_ratios(noisy, cost, 100, 0.3) == {"a": 0.25}
    assert compressor.greedy_ratios(noisy, cost, 100, 0.6, use_monotonic_fit=True) == {"a": 0.25}


@pytest.mark.parametrize("scheme", ["spatial_svd", "tucker", "channel_pruning"])
def test_manual_mode(scheme):
    model = _model()
    x = random_images(16, (10, 10, 3), seed=1)
    compressed, stats = compressor.compress_model(
        model, scheme, _agreement(model, x), ratios={"c2": 0.5, "c3": 0.5}, samples=x
    )
    assert stats.mac_compression_ratio < 1.0 and stats.baseline_model_accuracy == 1.0
    assert stats.mac_compression_ratio == pytest.approx(total_cost(compressed).macs / total_cost(model).macs)
    names = [l.name for l in compressed.layers]
    if scheme == "channel_pruning":
        assert compressed.get_layer("c2").kernel.shape[-2] == 4 and compressed.get_layer("c1").filters == 4
    else:
        assert "c2_a" in names and "c2" not in names and "c1" in names
    assert str(stats).startswith(f"Compression ({scheme}")


def test_auto_mode_meets_target_and_resumes_from_cache(tmp_path):
    model = _model(1)
    x = random_images(16, (10, 10, 3), seed=2)
    calls = []
    evaluate = _agreement(model, x)

    def counted(m):
        calls.append(1)
        return evaluate(m)

    cache = tmp_path / "scores.json"
    compressed, stats = compressor.compress_model(
        model, "spatial_svd", counted, target_ratio=0.7, num_candidates=4, cache_path=cache
    )
    assert stats.mac_compression_ratio <= 0.7 + 1e-9
    first = len(calls)
    assert first == 1 + 1 + 3 * 3 + 1  # baseline, sensitivity baseline, 3 layers x 3 ratios < 1, final
    assert json.loads(cache.read_text())["scores"]["c1"]
    calls.clear()
    again, stats2 = compressor.compress_model(
        model, "spatial_svd", counted, target_ratio=0.7, num_candidates=4, cache_path=cache
    )
    assert len(calls) == 3  # every layer's scores came from the cache
    assert [c.ratio for c in stats2.per_layer] == [c.ratio for c in stats.per_layer]
    # A cache of another model is refused.
    with pytest.raises(ValueError, match="written for another model"):
        compressor.compress_model(_model(2), "spatial_svd", counted, target_ratio=0.7, num_candidates=4, cache_path=cache)


def test_bad_input():
    model = _model()
    x = random_images(4, (10, 10, 3), seed=3)
    evaluate = _agreement(model, x)
    with pytest.raises(ValueError, match=r"ratio of layer 'c2' in \(0, 1\]"):
        compressor.compress_model(model, "spatial_svd", evaluate, ratios={"c2": 1.5})
    with pytest.raises(ValueError, match="cannot compress layer 'fc'. Expected one of \\['c1', 'c2', 'c3'\\]"):
        compressor.compress_model(model, "spatial_svd", evaluate, ratios={"fc": 0.5})
    with pytest.raises(ValueError, match="either ratios"):
        compressor.compress_model(model, "spatial_svd", evaluate)
    with pytest.raises(ValueError, match="cannot be met"):
        compressor.compress_model(model, "spatial_svd", evaluate, target_ratio=0.01, num_candidates=2)
    with pytest.raises(ValueError, match="finite number"):
        compressor.compress_model(model, "spatial_svd", lambda m: float("nan"), ratios={"c2": 0.5})
    with pytest.raises(TypeError, match="return a number"):
        compressor.compress_model(model, "spatial_svd", lambda m: "0.9", ratios={"c2": 0.5})
    with pytest.raises(ValueError, match="needs calibration samples"):
        compressor.compress_model(model, "channel_pruning", evaluate, ratios={"c2": 0.5})


def test_workers_share_the_sensitivity_sweep_and_return_the_whole_table(tmp_path):
    import threading

    model = _model(1)
    x = random_images(16, (10, 10, 3), seed=2)
    evaluate = _agreement(model, x)
    alone = compressor.layer_sensitivity(model, "spatial_svd", evaluate, [0.25, 0.5, 1.0], cache_path=tmp_path / "one.json")
    out, calls = {}, {0: [], 1: []}

    def worker(i):
        def counted(m):
            calls[i].append(1)
            return evaluate(m)

        out[i] = compressor.layer_sensitivity(model, "spatial_svd", counted, [0.25, 0.5, 1.0],
                                              cache_path=tmp_path / "two" / "scores.json", workers=(i, 2), worker_timeout=120)

    (tmp_path / "two").mkdir()
    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[0] == out[1] == alone
    # 3 layers x 2 ratios below 1 split 3 / 3, plus each worker's baseline.
    assert sorted(len(c) for c in calls.values()) == [4, 4]
    assert json.loads((tmp_path / "two" / "scores.json").read_text())["scores"] == json.loads((tmp_path / "one.json").read_text())["scores"]
    with pytest.raises(ValueError, match="Expected cache_path"):
        compressor.layer_sensitivity(model, "spatial_svd", evaluate, [0.5, 1.0], workers=(0, 2))
