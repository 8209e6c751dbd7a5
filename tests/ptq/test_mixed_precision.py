"""Automatic mixed precision: groups, candidates, costs, the search, the cache, files and bad input."""

import json
import os

import keras
import numpy as np
import pytest

from aimet_tf.graph import prepare_model
from aimet_tf.graph.cost import layer_costs
from aimet_tf.ptq import mixed_precision as amp
from aimet_tf.quantization import QuantizationSimModel
from aimet_tf.testing.models import branchy_model, conv_bn_relu_model, dense_model, random_images


def _sim(model=None, config="default_per_channel", scheme="tf"):
    model = conv_bn_relu_model() if model is None else model
    return QuantizationSimModel(model, quant_scheme=scheme, config_file=config)


def _every_quantizer(sim):
    return ({n for n, q in sim.activation_quantizers() if q.enabled}, {n for n, q, _ in sim.param_quantizers() if q.enabled})


def _bits(sim):
    params = {n: q for n, q, _ in sim.param_quantizers()}
    return {n: q.bitwidth for n, q in params.items() if q.enabled}


@pytest.mark.parametrize("build", [conv_bn_relu_model, dense_model, lambda: prepare_model(branchy_model())])
def test_groups_partition_the_enabled_quantizers(build):
    sim = _sim(build())
    groups = amp.find_quantizer_groups(sim)
    acts, params = _every_quantizer(sim)
    seen_a = [a for g in groups for a in g.activation_quantizers]
    seen_p = [p for g in groups for p in g.parameter_quantizers]
    assert sorted(seen_a) == sorted(acts) and sorted(seen_p) == sorted(params)  # each exactly once
    for g in groups:
        assert all(any(p.startswith(layer + "/") for layer in g.layers) for p in g.parameter_quantizers)


def test_a_layer_groups_with_the_quantizers_of_its_inputs_and_an_add_joins_its_inputs():
    sim = _sim()
    by_layer = {g.name: g for g in amp.find_quantizer_groups(sim)}
    # c1 reads the model input, quantized by c1's input quantizer.
    assert by_layer["c1"].activation_quantizers == ("c1/input:0",)
    dw_inputs = set(by_layer["dw"].activation_quantizers)
    assert "r1/output:0" in dw_inputs
    # The Add reads r1 (shared with dw's input) and r2: one group holds both.
    assert "r2/output:0" in dw_inputs
    fc = by_layer["fc"]
    assert fc.parameter_quantizers and all("fc/" in p for p in fc.parameter_quantizers)


def test_candidates_parse_aimets_form_and_refuse_float():
    from aimet_tf.common.defs import QuantizationDataType as T

    assert amp.Candidate.parse(((8, T.int), (4, T.int))) == amp.Candidate(8, 4)
    assert amp.Candidate.parse((16, 8)) == amp.Candidate(16, 8)
    assert str(amp.Candidate(8, 4)) == "W4A8"
    with pytest.raises(ValueError, match="only integer quantization"):
        amp.Candidate.parse(((16, T.float), (16, T.float)))
    with pytest.raises(ValueError, match="bitwidth in 2..32"):
        amp.Candidate.parse((8, 1))
    with pytest.raises(ValueError, match="Expected a candidate"):
        amp.Candidate.parse(8)


def test_bops_cost_is_macs_times_both_bitwidths():
    model = dense_model()
    sim = _sim(model)
    groups = amp.find_quantizer_groups(sim)
    macs = layer_costs(model)
    c88, c84 = amp.Candidate(8, 8), amp.Candidate(8, 4)
    choice = [c84 if "d1" in g.layers else c88 for g in groups]
    total = sum(macs[n].macs for n in ("d1", "d2", "d3")) * 64
    want = (macs["d1"].macs * 32 + (macs["d2"].macs + macs["d3"].macs) * 64) / total
    assert amp.relative_cost(sim, groups, choice, c88) == pytest.approx(want)
    # Memory counts weights x param bits.
    weights = {n: int(np.prod(v.shape)) for n, _, v in sim.param_quantizers()}
    mem = sum(w * (4 if n.startswith("d1/") else 8) for n, w in weights.items()) / (8 * sum(weights.values()))
    assert amp.relative_cost(sim, groups, choice, c88, "memory") == pytest.approx(mem)


def _penalty_eval(sim, weights):
    """A score that falls by weights[layer] when that layer's kernel is below 8 bits (no model run)."""
    params = {n: q for n, q, _ in sim.param_quantizers()}

    def evaluate(model):
        return 1.0 - sum(w for layer, w in weights.items()
                         if params[f"{layer}/kernel:0"].enabled and params[f"{layer}/kernel:0"].bitwidth < 8)

    return evaluate


def test_the_search_picks_the_cheapest_front_point_within_the_drop(tmp_path):
    x = random_images(32, (16, 16, 3))
    results = {}
    for algo in (amp.AMPSearchAlgo.Binary, amp.AMPSearchAlgo.Interpolation, amp.AMPSearchAlgo.BruteForce):
        sim = _sim()
        evaluate = _penalty_eval(sim, {"c1": 0.05, "dw": 0.001, "fc": 0.002})
        result = amp.choose_mixed_precision(sim, [(8, 8), (8, 4)], evaluate, None, 0.0025, tmp_path / algo.name,
                                            forward_pass=x, amp_search_algo=algo, verbose=False, front_order="sensitivity")
        results[algo] = result
        # Phase 1 ranks dw, then fc, then c1: AIMET's order lowers dw, then fc, then c1.
        assert [p.group for p in result.front] == [None, "dw", "fc", "c1"]
        costs = [p.cost for p in result.front]
        assert costs == sorted(costs, reverse=True) and costs[0] == 1.0
        # dw + fc cost 0.003 > 0.0025: only dw may go to 4 bits.
        assert result.choice_by_group() == {"c1": "W8A8", "dw": "W4A8", "fc": "W8A8"}
        assert result.final_score == pytest.approx(0.999)
        assert _bits(sim)["dw/kernel:0"] == 4 and _bits(sim)["c1/kernel:0"] == 8
    assert results[amp.AMPSearchAlgo.BruteForce].evaluations["phase2"] >= results[amp.AMPSearchAlgo.Binary].evaluations["phase2"]


def test_precomputed_encodings_equal_a_fresh_compute_encodings():
    x = random_images(32, (16, 16, 3))
    for scheme in ("tf", "tf_enhanced"):
        sim = _sim(scheme=scheme)
        groups = amp.find_quantizer_groups(sim)
        candidates = [amp.Candidate(16, 8), amp.Candidate(8, 4)]
        applier = amp._Applier(sim, groups, x, candidates)
        choice = [candidates[k % 2] for k in range(len(groups))]
        applier.apply(choice)
        fast = {n: q.get_encoding() for n, q in sim.activation_quantizers() if q.enabled}
        fast.update({n: q.get_encoding() for n, q, _ in sim.param_quantizers() if q.enabled})
        applier.apply(choice, exact=True)
        exact = {n: q.get_encoding() for n, q in sim.activation_quantizers() if q.enabled}
        exact.update({n: q.get_encoding() for n, q, _ in sim.param_quantizers() if q.enabled})
        assert fast.keys() == exact.keys()
        for name in exact:
            assert fast[name].bitwidth == exact[name].bitwidth, name
            np.testing.assert_allclose(fast[name].min, exact[name].min, rtol=1e-6, err_msg=name)
            np.testing.assert_allclose(fast[name].max, exact[name].max, rtol=1e-6, err_msg=name)


def test_a_rerun_resumes_from_the_cache_and_a_changed_model_does_not(tmp_path):
    x = random_images(32, (16, 16, 3))
    calls = []

    def run(model, clean_start, shift=0.0):
        sim = _sim(model)
        evaluate = _penalty_eval(sim, {"c1": 0.05, "dw": 0.001, "fc": 0.002})
        return amp.choose_mixed_precision(sim, [(8, 8), (8, 4)], lambda m: calls.append(1) or evaluate(m) + shift, None,
                                          0.0025, tmp_path, clean_start=clean_start, forward_pass=x, verbose=False)

    model = conv_bn_relu_model()
    first = run(model, True)
    n_first = len(calls)
    calls.clear()
    second = run(model, False)
    assert len(calls) == 3  # the baseline (to check the eval data), FP32 and the final score
    assert second.choice_by_group() == first.choice_by_group()
    calls.clear()
    run(model, False, shift=-0.1)  # other eval data: the baseline differs, nothing reused
    assert len(calls) == n_first
    calls.clear()
    run(conv_bn_relu_model(seed=3), False)  # another model
    assert len(calls) == n_first


def test_files_are_written(tmp_path):
    x = random_images(32, (16, 16, 3))
    sim = _sim()
    result = amp.choose_mixed_precision(sim, [(8, 8), (8, 4)], _penalty_eval(sim, {"c1": 0.05, "dw": 0.001, "fc": 0.002}),
                                        None, 0.0025, tmp_path, forward_pass=x, verbose=False)
    assert {"pareto_front.png", "pareto_front.html", "mixed_precision_choice.json", "amp_cache.json"} <= set(os.listdir(tmp_path))
    choice = json.loads((tmp_path / "mixed_precision_choice.json").read_text())
    assert choice["chosen"]["groups"] == result.choice_by_group()
    assert set(choice["uniform"]) == {"W8A8", "W4A8"}
    assert choice["uniform"]["W4A8"]["cost"] == pytest.approx(0.5)
    assert 0.5 < choice["chosen"]["relative_weight_memory"] < 1.0


def test_tflite_and_supported_kernels_refuse_candidates():
    x = random_images(8, (16, 16, 3))
    sim = _sim(config="tflite")
    with pytest.raises(ValueError, match=r"\['W8A16'\] cannot run under the tflite config"):
        amp.choose_mixed_precision(sim, [(16, 8), (8, 8)], lambda m: 1.0, None, 0.01, "/tmp/amp_never", forward_pass=x)
    from aimet_tf.quantization.config import load_config
    raw = json.loads(json.dumps({"defaults": {"ops": {"is_output_quantized": "True"}, "params": {"is_quantized": "True", "is_symmetric": "True"},
                                              "supported_kernels": [{"activation": {"bitwidth": 8, "dtype": "int"}, "param": {"bitwidth": 8, "dtype": "int"}},
                                                                    {"activation": {"bitwidth": 8, "dtype": "int"}, "param": {"bitwidth": 4, "dtype": "int"}}]},
                              "params": {}, "op_type": {}, "supergroups": [], "model_input": {"is_input_quantized": "True"}, "model_output": {}}))
    load_config(raw)
    sim = _sim(config=raw)
    with pytest.raises(ValueError, match=r"not among the config's supported_kernels"):
        amp.choose_mixed_precision(sim, [(16, 16), (8, 8)], lambda m: 1.0, None, 0.01, "/tmp/amp_never", forward_pass=x)


def test_bad_input_is_refused_before_work(tmp_path):
    x = random_images(8, (16, 16, 3))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    calls = []
    with pytest.raises(OSError, match="writable folder for mixed precision"):
        amp.choose_mixed_precision(_sim(), [(8, 8), (8, 4)], lambda m: calls.append(1) or 1.0, None, 0.01, blocker / "sub", forward_pass=x)
    assert calls == []
    with pytest.raises(ValueError, match="finite number"):
        amp.choose_mixed_precision(_sim(), [(8, 8), (8, 4)], lambda m: float("nan"), None, 0.01, tmp_path, forward_pass=x, verbose=False)
    with pytest.raises(TypeError, match="return a number"):
        amp.choose_mixed_precision(_sim(), [(8, 8), (8, 4)], lambda m: "0.9", None, 0.01, tmp_path, forward_pass=x, verbose=False)
    with pytest.raises(ValueError, match="at least two distinct candidates"):
        amp.choose_mixed_precision(_sim(), [(8, 8)], lambda m: 1.0, None, 0.01, tmp_path, forward_pass=x)
    with pytest.raises(ValueError, match="allowed_accuracy_drop >= 0"):
        amp.choose_mixed_precision(_sim(), [(8, 8), (8, 4)], lambda m: 1.0, None, -0.1, tmp_path, forward_pass=x)
    with pytest.raises(ValueError, match="Expected forward_pass"):
        amp.choose_mixed_precision(_sim(), [(8, 8), (8, 4)], lambda m: 1.0, None, 0.1, tmp_path)


def test_fast_mode_ranks_groups_by_output_sqnr(tmp_path):
    x = random_images(32, (16, 16, 3))
    sim = _sim()
    metric = amp.sqnr_metric(sim, x)
    with sim.quantizers_disabled():
        assert metric(sim.model) > 100.0  # the float model against itself
    result = amp.choose_fast_mixed_precision(sim, [(8, 8), (8, 4)], x, lambda m: 1.0, 0.0, tmp_path, forward_pass=x, verbose=False)
    # Phase 1 holds each group's output SQNR (dB): recomputed here with that group alone at 4 bits.
    check = _sim()
    groups = result.groups  # the searched ones (the same names in a sim of the same model)
    c88, c84 = amp.Candidate(8, 8), amp.Candidate(8, 4)
    applier = amp._Applier(check, groups, x, None)
    recheck = amp.sqnr_metric(check, x)
    for k, g in enumerate(groups):
        applier.apply([c84 if i == k else c88 for i in range(len(groups))])
        assert result.phase1[g.name]["W4A8"] == pytest.approx(recheck(check.model), abs=1e-3)
    assert min(s["W4A8"] - s["W8A8"] for s in result.phase1.values()) < -10  # c1 and fc lose >10 dB at 4 bits
    # Every point scores 1.0, so the cheapest (every group at 4 bits) is chosen.
    assert result.chosen.cost == pytest.approx(0.5)


def test_the_mixed_int4_int8_result_exports_to_one_tflite_that_reproduces_the_sim(tmp_path):
    from aimet_tf.export import export_tflite, prepare_model_for_tflite, verify_tflite

    x = random_images(64, (16, 16, 3), seed=2)
    sim = QuantizationSimModel(prepare_model_for_tflite(conv_bn_relu_model()), quant_scheme="tf_enhanced", config_file="tflite")
    penalties = {w.name: 0.01 * (k + 1) for k, w in enumerate(sim.quant_wrappers()) if "kernel" in w.param_names}
    assert len(penalties) >= 3
    chosen_drop = sum(sorted(penalties.values())[:2]) + 1e-6  # room for the two cheapest-to-lose layers only
    result = amp.choose_mixed_precision(sim, [(8, 8), (8, 4)], _penalty_eval(sim, penalties), None, chosen_drop,
                                        tmp_path, forward_pass=x, verbose=False)
    bits = _bits(sim)
    kernel_bits = {n: b for n, b in bits.items() if n.endswith("/kernel:0")}
    assert sorted(kernel_bits.values()).count(4) == 2 and 8 in kernel_bits.values(), kernel_bits
    path = export_tflite(sim, tmp_path / "mixed.tflite")
    report = verify_tflite(sim, path, x)
    assert report.exact_fraction == 1.0
    from tensorflow.lite.tools import flatbuffer_utils

    types = {t.name.decode(): t.type for t in flatbuffer_utils.read_model(path).subgraphs[0].tensors}
    int4, int8 = 17, 9  # TensorType.INT4 / INT8
    assert int4 in types.values() and int8 in types.values()
    # The 4-bit conv/dense filters are packed int4 (a 4-bit depthwise filter is stored as int8).
    packable = [n.split("/")[0] for n, b in kernel_bits.items() if b == 4 and not n.startswith("dw/")]
    assert all(any(name.startswith(layer) and t == int4 for name, t in types.items()) for layer in packable), (packable, types)
    assert result.chosen is not None and result.chosen.cost < 1.0


def test_the_target_is_fp32_minus_the_drop_and_a_missed_target_keeps_the_baseline(tmp_path):
    x = random_images(16, (16, 16, 3))
    sim = _sim()
    acts = [q for _, q in sim.activation_quantizers()]

    def evaluate(model):  # FP32 1.0; any quantized configuration 0.5
        return 1.0 if not any(q.enabled for q in acts) else 0.5

    result = amp.choose_mixed_precision(sim, [(8, 8), (8, 4)], evaluate, None, 0.1, tmp_path, forward_pass=x, verbose=False)
    assert result.fp32_score == 1.0
    assert result.chosen.cost == 1.0 and result.chosen.group is None
    assert set(_bits(sim).values()) == {8}


def test_efficiency_order_lowers_the_larger_saving_first_when_drops_are_close():
    sim = _sim(dense_model())
    groups = [g for g in amp.find_quantizer_groups(sim) if g.layers]
    assert [g.name for g in groups] == ["d1", "d2", "d3"]
    c88, c84 = amp.Candidate(8, 8), amp.Candidate(8, 4)
    costs = amp._Costs(sim, groups)
    assert costs.macs == [160, 128, 16]
    phase1 = {"d1": {"W8A8": 0.9, "W4A8": 0.889}, "d2": {"W8A8": 0.9, "W4A8": 0.89}, "d3": {"W8A8": 0.9, "W4A8": 0.9}}
    options = [[c88, c84]] * 3
    by_sensitivity = amp._front(groups, options, c88, phase1, costs, "bops", "sensitivity")
    by_efficiency = amp._front(groups, options, c88, phase1, costs, "bops", "efficiency")
    assert [p.group for p in by_sensitivity] == [None, "d3", "d2", "d1"]
    # 0.011 / 160 MAC-bits saved < 0.010 / 128: d1 goes before d2.
    assert [p.group for p in by_efficiency] == [None, "d3", "d1", "d2"]
    assert by_efficiency[2].cost == pytest.approx(1 - (16 + 160) * 32 / (304 * 64))  # d3 and d1 at 4 bits
    with pytest.raises(ValueError, match="front_order"):
        amp.choose_mixed_precision(sim, [(8, 8), (8, 4)], lambda m: 1.0, None, 0.0, "/tmp/amp_never2",
                                   forward_pass=random_images(4, (10,)), front_order="magic")


def test_candidates_from_command_line_text():
    assert amp.Candidate.from_text("8:4") == amp.Candidate(8, 4)
    for bad in ("8", "8:x", ":4", "8:1"):
        with pytest.raises(ValueError):
            amp.Candidate.from_text(bad)


@pytest.mark.slow
def test_the_pareto_page_opens_in_chromium_and_draws(tmp_path):
    from aimet_tf.testing.browser import check_page

    x = random_images(16, (16, 16, 3))
    sim = _sim()
    amp.choose_mixed_precision(sim, [(8, 8), (8, 4)], _penalty_eval(sim, {"c1": 0.05, "dw": 0.001, "fc": 0.002}),
                               None, 0.0025, tmp_path, forward_pass=x, verbose=False)
    result = check_page(tmp_path / "pareto_front.html")
    assert result.problems == [] and result.drawn_canvases >= 1


def test_workers_share_phase1_out_and_reach_the_one_process_result(tmp_path):
    import threading

    x = random_images(32, (16, 16, 3))
    weights = {"c1": 0.05, "dw": 0.001, "fc": 0.002}
    model = conv_bn_relu_model()  # one model: the workers must run the same one (its fingerprint)

    def run(folder, workers):
        sim = _sim(model)
        calls = []
        evaluate = _penalty_eval(sim, weights)
        result = amp.choose_mixed_precision(sim, [(8, 8), (8, 4)], lambda m: calls.append(1) or evaluate(m), None, 0.0025,
                                            folder, forward_pass=x, verbose=False, workers=workers, worker_timeout=120)
        return result, len(calls)

    alone, alone_calls = run(tmp_path / "one", None)
    shared = {}
    threads = [threading.Thread(target=lambda i=i: shared.__setitem__(i, run(tmp_path / "two", (i, 2)))) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for result, calls in shared.values():
        assert result.phase1 == alone.phase1
        assert result.choice_by_group() == alone.choice_by_group() == {"c1": "W8A8", "dw": "W4A8", "fc": "W8A8"}
        assert calls < alone_calls  # each worker scored only its share of phase 1 (plus the baseline)
    assert shared[0][0].evaluations["phase1"] + shared[1][0].evaluations["phase1"] == alone.evaluations["phase1"] + 1
    files = sorted(p.name for p in (tmp_path / "two").iterdir() if p.name.startswith("amp_phase1"))
    assert files == ["amp_phase1.worker0-of-2.json", "amp_phase1.worker1-of-2.json"]


def test_a_worker_without_the_others_times_out_clearly_and_bad_workers_are_refused(tmp_path):
    x = random_images(32, (16, 16, 3))
    sim = _sim()
    with pytest.raises(TimeoutError, match=r"Worker 1 of 2: .* did not arrive"):
        amp.choose_mixed_precision(sim, [(8, 8), (8, 4)], _penalty_eval(sim, {"c1": 0.05}), None, 0.01, tmp_path,
                                   forward_pass=x, verbose=False, workers=(1, 2), worker_timeout=0.5)
    assert (tmp_path / "amp_phase1.worker1-of-2.json").exists()  # its own share, kept for a rerun
    for bad in ((2, 2), (0,), (-1, 2), (0, True), "0/2"):
        with pytest.raises(ValueError, match="Expected workers as"):
            amp.choose_mixed_precision(sim, [(8, 8), (8, 4)], lambda m: 1.0, None, 0.01, tmp_path, forward_pass=x,
                                       verbose=False, workers=bad)
