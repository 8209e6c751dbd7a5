"""Issue 13: aimet_tf beside its peers on every benchmark model, all peers in the same run.

For each model of ``benchmarks.zoo.cases()`` (batch norms folded first, as AIMET's flow does):

* W8A8: our sim (default scheme, ``default_per_channel`` config, as aimet-onnx's default), our exported int8 .tflite
  (``TFLITE_CONFIG``, run in LiteRT), TFLite's own full-integer PTQ, and aimet-onnx with both of its
  schemes (``min_max``, ``tf_enhanced``; its default config: per-channel weights);
* W4A8 nearest (per-channel): ours with the default scheme and with AIMET's two, against aimet-onnx's
  two;
* (``run_adaround``, its own section) W4A8 AdaRound (per-channel, ``PEERS_BENCH_ADAROUND`` iterations
  per layer, default 2000): ours with the default scheme against aimet-onnx's AdaRound with its
  better nearest scheme, on the same calibration inputs, with wall times.

Scores: top-1 % on Fashion-MNIST's 10,000 test images; top-1 agreement % with FP32 on the MLTK
models' real inputs. "+a/-b" beside a peer counts scored inputs that only ours / only the peer
gets right (agreement sets: agrees with FP32).

ENV: PEERS_BENCH_MODELS (comma list of zoo names), PEERS_BENCH_ADAROUND, PEERS_BENCH_FRESH (run_adaround: 1 remeasures
models kept in benchmarks/results), AIMET_VENV.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np

from aimet_tf import files, metrics
from aimet_tf.export import TFLITE_CONFIG, export_tflite, prepare_model_for_tflite, run_tflite
from aimet_tf.export.baselines import tflite_ptq_int8
from aimet_tf.ptq.adaround import AdaroundParameters, apply_adaround
from aimet_tf.ptq.batch_norm_fold import fold_batch_norms
from aimet_tf.quantization import QuantizationSimModel
from benchmarks import bench_qat, zoo

BATCH = 256
DEFAULT = "auto"  # the sim's default scheme; spelled out so the table says what ran
# aimet-onnx's default config is AIMET's default_config_per_channel.json; ours is the same preset, so
# that both sides quantize the same tensors at the same granularity (``htp`` would keep Dense per-tensor).
PEER_CONFIG = "default_per_channel"


def _correct(case: zoo.Case, fp32: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per scored input: right (labels) or agreeing with FP32 (no labels)."""
    pred = np.argmax(out, -1)
    return pred == (case.y_test if case.y_test is not None else np.argmax(fp32, -1))


def _cell(ours: np.ndarray, peer: np.ndarray | None) -> str:
    if peer is None:
        return "-"
    return f"{100 * peer.mean():.2f} (+{int(np.sum(ours & ~peer))}/-{int(np.sum(peer & ~ours))})"


def _sim(model, case, param_bw: int, scheme: str, config):
    sim = QuantizationSimModel(model, quant_scheme=scheme, default_param_bw=param_bw, config_file=config)
    sim.compute_encodings(case.x_cal, batch_size=BATCH)
    return sim


def _predict(sim, case) -> np.ndarray:
    return sim.model.predict(case.x_test, batch_size=BATCH, verbose=0)


def _export(case: zoo.Case, workdir: str) -> np.ndarray:
    """Our W8A8 .tflite (default scheme, tflite config), run in LiteRT."""
    sim = _sim(prepare_model_for_tflite(case.model), case, 8, DEFAULT, TFLITE_CONFIG)
    path = os.path.join(workdir, f"{case.name}_w8a8.tflite")
    export_tflite(sim, path)
    return run_tflite(path, case.x_test, batch_size=BATCH)[0]


def _adaround(model, case: zoo.Case, iterations: int, workdir: str, config: str = PEER_CONFIG) -> tuple[QuantizationSimModel, float]:
    """W4A8 AdaRound with the default scheme on ``config``; the sim with its encodings frozen, and seconds."""
    params = AdaroundParameters(case.x_cal, num_batches=-(-len(case.x_cal) // 32), default_num_iterations=iterations)
    prefix = f"{case.name}_{config}_ada"
    t = time.perf_counter()
    ada = apply_adaround(model, params, path=workdir, filename_prefix=prefix, default_param_bw=4,
                         default_quant_scheme=DEFAULT, config_file=config, verbose=0)
    seconds = time.perf_counter() - t
    sim = QuantizationSimModel(ada, quant_scheme=DEFAULT, default_param_bw=4, config_file=config)
    sim.set_and_freeze_param_encodings(os.path.join(workdir, f"{prefix}.encodings"))
    sim.compute_encodings(case.x_cal, batch_size=BATCH)
    return sim, seconds


def run() -> str:
    from benchmarks.peers.aimet_runner import run_aimet_peer

    names = [n for n in os.environ.get("PEERS_BENCH_MODELS", "").split(",") if n] or None
    w8_rows, w4_rows, notes = [], [], []
    versions = None
    for case in zoo.cases(names):
        t0 = time.perf_counter()
        workdir = tempfile.mkdtemp(prefix=f"peers_{case.name}_")
        folded = fold_batch_norms(case.model)
        fp32 = folded.predict(case.x_test, batch_size=BATCH, verbose=0)
        fp32_ok = _correct(case, fp32, fp32)

        def ok(out):
            return _correct(case, fp32, out)

        configs = [{"param_bw": bw, "act_bw": 8, "quant_scheme": s, "adaround_iterations": 0}
                   for bw in (8, 4) for s in ("min_max", "tf_enhanced")]
        aimet = run_aimet_peer(folded, case.x_cal, case.x_test, case.y_test, configs)
        versions = ", ".join(f"{k} {v}" for k, v in aimet.get("versions", {}).items()) or versions
        truth = case.y_test if case.y_test is not None else np.argmax(fp32, -1)
        peer = {(r["param_bw"], r["quant_scheme"]): np.asarray(r["predictions"]) == truth for r in aimet["runs"]}

        w8_sim = ok(_predict(_sim(folded, case, 8, DEFAULT, PEER_CONFIG), case))
        w8_export = ok(_export(case, workdir))
        ptq = ok(run_tflite(tflite_ptq_int8(case.model, case.x_cal), case.x_test, batch_size=BATCH)[0])
        w8_rows.append(
            f"| {case.name} | {100 * fp32_ok.mean():.2f} | {100 * w8_sim.mean():.2f} | {100 * w8_export.mean():.2f} | "
            f"{_cell(w8_export, ptq)} | {_cell(w8_sim, peer[(8, 'min_max')])} | {_cell(w8_sim, peer[(8, 'tf_enhanced')])} |"
        )

        w4 = {s: ok(_predict(_sim(folded, case, 4, s, PEER_CONFIG), case)) for s in (DEFAULT, "tf", "tf_enhanced")}
        best_peer = max(("min_max", "tf_enhanced"), key=lambda s: peer[(4, s)].mean())
        w4_rows.append(
            f"| {case.name} | {100 * fp32_ok.mean():.2f} | **{100 * w4[DEFAULT].mean():.2f}** | "
            f"{100 * w4['tf'].mean():.2f} | {100 * w4['tf_enhanced'].mean():.2f} | "
            f"{_cell(w4[DEFAULT], peer[(4, 'min_max')])} | {_cell(w4[DEFAULT], peer[(4, 'tf_enhanced')])} | "
            f"{'yes' if w4[DEFAULT].mean() >= peer[(4, best_peer)].mean() else '**no**'} |"
        )

        notes.append(f"- `{case.name}`: {case.description}; {len(case.x_cal):,} calibration inputs, "
                     f"{len(case.x_test):,} scored; {time.perf_counter() - t0:.0f} s for this model")

    score = "top-1 % (agreement % with FP32 for MLTK)"
    lines = [
        "## Peers on every benchmark model (issue 13)",
        "",
        f"Scores: {score}. Batch norms folded first. `default` = the sim's default scheme (`{DEFAULT}`: "
        "weights `output_mse` on tight grids, kept over min/max grids only where the model's output error on the "
        "calibration inputs says so; activations `tf_enhanced`). Peer cells: the peer's score, then (+a/-b) = scored "
        "inputs only ours / only the peer gets right. AIMET = aimet-onnx in its own venv "
        f"({versions or 'versions not reported'}), its default config (per-channel weights), same folded "
        "model (exported to ONNX), same calibration inputs. Our sims use the same config "
        f"(`{PEER_CONFIG}`, AIMET's default_config_per_channel.json); our .tflite uses the `tflite` config.",
        "",
        "### W8A8",
        "",
        f"| model | FP32 | ours sim (`{PEER_CONFIG}`) | ours .tflite (LiteRT) | TFLite PTQ int8 vs our .tflite | AIMET min_max vs our sim | AIMET tf_enhanced vs our sim |",
        "|---|---|---|---|---|---|---|",
        *w8_rows,
        "",
        "### W4A8 nearest, per-channel weights",
        "",
        "| model | FP32 | ours, default | ours, tf | ours, tf_enhanced | AIMET min_max vs our default | AIMET tf_enhanced vs our default | default >= AIMET's best |",
        "|---|---|---|---|---|---|---|---|",
        *w4_rows,
    ]
    lines += ["", "Models:", *notes]
    return "\n".join(lines)


RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _adaround_cache_path(iterations: int) -> str:
    return os.path.join(RESULTS_DIR, f"peers_adaround_{iterations}.json")


def _load_adaround_cache(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def run_adaround() -> str:
    """W4A8 AdaRound (per-channel weights), ours with the default scheme against aimet-onnx's.

    One model takes tens of minutes on this machine (AIMET's AdaRound most of it), so each model's row
    is kept, as soon as it is measured, in ``benchmarks/results/peers_adaround_<iterations>.json``
    (written atomically) with its date; a rerun measures only the models not in it
    (``PEERS_BENCH_FRESH=1`` measures them all again) and writes the section from every kept row.
    """
    from benchmarks.peers.aimet_runner import run_aimet_peer

    names = [n for n in os.environ.get("PEERS_BENCH_MODELS", "").split(",") if n] or None
    iterations = int(os.environ.get("PEERS_BENCH_ADAROUND", "2000"))
    cache_path = _adaround_cache_path(iterations)
    cache = {} if os.environ.get("PEERS_BENCH_FRESH") == "1" else _load_adaround_cache(cache_path)
    from aimet_tf.testing.mltk_models import MLTK_MODEL_NAMES

    every = [*zoo.FASHION_MNIST_MODELS, *MLTK_MODEL_NAMES]
    todo = [n for n in (names or every) if n not in cache]
    for case in zoo.cases(todo) if todo else ():
        t0 = time.perf_counter()
        workdir = tempfile.mkdtemp(prefix=f"peers_ada_{case.name}_")
        folded = fold_batch_norms(case.model)
        fp32 = folded.predict(case.x_test, batch_size=BATCH, verbose=0)
        truth = case.y_test if case.y_test is not None else np.argmax(fp32, -1)
        nearest = run_aimet_peer(folded, case.x_cal, case.x_test, case.y_test, [
            {"param_bw": 4, "act_bw": 8, "quant_scheme": s, "adaround_iterations": 0} for s in ("min_max", "tf_enhanced")])
        best = max(nearest["runs"], key=lambda r: np.mean(np.asarray(r["predictions"]) == truth))["quant_scheme"]
        peer_run = run_aimet_peer(folded, case.x_cal, case.x_test, case.y_test, [
            {"param_bw": 4, "act_bw": 8, "quant_scheme": best, "adaround_iterations": iterations}])
        peer = peer_run["runs"][0]
        theirs = np.asarray(peer["predictions"]) == truth
        ours_sim, ours_s = _adaround(folded, case, iterations, workdir)
        ours = np.argmax(_predict(ours_sim, case), -1) == truth
        fp32_ok = np.argmax(fp32, -1) == truth
        cache[case.name] = {
            "fp32": 100 * float(fp32_ok.mean()), "ours": 100 * float(ours.mean()), "aimet": 100 * float(theirs.mean()),
            "only_ours": int(np.sum(ours & ~theirs)), "only_aimet": int(np.sum(theirs & ~ours)),
            "aimet_scheme": best, "ours_seconds": ours_s, "aimet_seconds": float(peer["adaround_seconds"]),
            "model_seconds": time.perf_counter() - t0, "date": time.strftime("%Y-%m-%d"),
            "versions": peer_run.get("versions"),
        }
        files.atomic_write(cache_path, json.dumps(cache, indent=1, sort_keys=True))
        print(case.name, cache[case.name], flush=True)
    rows, notes = [], []
    for name in every:
        if name not in cache:
            rows.append(f"| {name} | not measured yet | | | | | | |")
            continue
        r = cache[name]
        rows.append(
            f"| {name} | {r['fp32']:.2f} | {r['ours']:.2f} | {r['aimet']:.2f} (+{r['only_ours']}/-{r['only_aimet']}) "
            f"({r['aimet_scheme']}) | {'yes' if r['ours'] >= r['aimet'] else '**no**'} | {r['ours_seconds']:.0f} s | "
            f"{r['aimet_seconds']:.0f} s | **{r['aimet_seconds'] / r['ours_seconds']:.2f}x** |"
        )
        notes.append(f"- `{name}`: measured {r['date']}, {r['model_seconds']:.0f} s for this model")
    versions = next((r["versions"] for r in cache.values() if r.get("versions")), None)
    versions = ", ".join(f"{k} {v}" for k, v in versions.items()) if isinstance(versions, dict) else versions
    return "\n".join([
        f"## W4A8 AdaRound beside aimet-onnx on every benchmark model, {iterations:,} iterations per layer (issue 13)",
        "",
        f"Per-channel 4-bit weights, 8-bit activations, batch norms folded first, {iterations:,} iterations per "
        "layer, AIMET's AdaRound defaults on both sides, the same calibration inputs (batches of 32). Ours: "
        f"`apply_adaround(..., default_quant_scheme='{DEFAULT}', config_file='{PEER_CONFIG}')`. AIMET (aimet-onnx"
        + (f" in its own venv: {versions}" if versions else "") + "; its default config) runs AdaRound with whichever of its two schemes "
        "scored higher at W4A8 nearest. Scores as in the peers section; (+a/-b) = scored inputs only ours / only "
        "AIMET gets right. Wall times on this shared 2-core machine, one after the other (AIMET first). Both sides "
        f"of a row come from the same run; rows are kept in `benchmarks/results/peers_adaround_{iterations}.json` "
        "and a rerun measures only the models missing there (`PEERS_BENCH_FRESH=1` remeasures all).",
        "",
        "| model | FP32 | ours | AIMET vs ours | ours >= AIMET | ours time | AIMET time | AIMET time / ours |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *notes,
    ])


QAT_EPOCHS = 1
QAT_VARIANTS = (
    # (label, scheme, batch norms folded first)
    ("static grid (STE)", DEFAULT, True),
    ("range learning", "auto_range_learning", True),
)


def _qat_accuracy(model, x_train, y_train, x_test, y_test) -> tuple[float, float]:
    """Fine-tunes ``model`` in place as bench_qat does; returns (test top-1, seconds)."""
    bench_qat._compile(model)
    t = time.perf_counter()
    model.fit(x_train, y_train, batch_size=bench_qat.BATCH, epochs=QAT_EPOCHS, shuffle=False, verbose=0)
    seconds = time.perf_counter() - t
    return metrics.top1_accuracy(model.predict(x_test, batch_size=512, verbose=0), y_test), seconds


def run_qat() -> str:
    """W4A8 QAT (1 epoch) against the same model's float fine-tune, and TFMOT's QAT, per model."""
    import keras

    from aimet_tf import datasets

    names = [n for n in os.environ.get("PEERS_BENCH_MODELS", "").split(",") if n] or list(zoo.FASHION_MNIST_MODELS)
    x_train_raw, y_train = datasets.load_fashion_mnist("train")
    order = np.random.default_rng(bench_qat.SEED).permutation(len(x_train_raw))
    x_train_raw, y_train = x_train_raw[order], y_train[order]
    rows, notes, versions = [], [], None
    for case in zoo.cases([n for n in names if n in zoo.FASHION_MNIST_MODELS]):
        t0 = time.perf_counter()
        _, prepare = zoo.load(case.name)
        x_train = prepare(x_train_raw)
        keras.utils.set_random_seed(bench_qat.SEED)
        fp32 = metrics.top1_accuracy(case.model.predict(case.x_test, batch_size=512, verbose=0), case.y_test)
        float_ft = keras.models.clone_model(case.model)
        float_ft.set_weights(case.model.get_weights())
        ft_acc, ft_s = _qat_accuracy(float_ft, x_train, y_train, case.x_test, case.y_test)
        folded = fold_batch_norms(case.model)
        ptq = metrics.top1_accuracy(_predict(_sim(folded, case, 4, DEFAULT, "htp"), case), case.y_test)
        cells = []
        for label, scheme, fold in QAT_VARIANTS:
            keras.utils.set_random_seed(bench_qat.SEED)
            sim = _sim(folded if fold else case.model, case, 4, scheme, "htp")
            acc, seconds = _qat_accuracy(sim.model, x_train, y_train, case.x_test, case.y_test)
            gap = 100 * (acc - ft_acc)
            cells.append(f"{100 * acc:.2f} ({gap:+.2f}{'' if gap >= -0.5 else ' **>0.5 below**'}; {seconds:.0f} s)")
        peer = bench_qat.run_tfmot_peer(case.model, x_train, y_train, case.x_test, case.y_test,
                                        timing_batches=5, timing_repeats=1)
        if "error" in peer:
            peer_cell = f"not measured: {peer['error'][:200]}"
        else:
            versions = peer["versions"]
            peer_cell = (f"{100 * peer['qat_accuracy']:.2f} ({100 * (peer['qat_accuracy'] - peer['float_finetune_accuracy']):+.2f} "
                         f"vs its float fine-tune {100 * peer['float_finetune_accuracy']:.2f}; {peer['qat_seconds']:.0f} s)")
        rows.append(f"| {case.name} | {100 * fp32:.2f} | {100 * ft_acc:.2f} ({ft_s:.0f} s) | {100 * ptq:.2f} | "
                    f"{' | '.join(cells)} | {peer_cell} |")
        notes.append(f"- `{case.name}`: {case.description}; {time.perf_counter() - t0:.0f} s for this model")
        print(rows[-1], flush=True)  # a row as soon as it is measured (the section is written at the end)
    variant_heads = " | ".join(f"ours W4A8 QAT, {label}" for label, _, _ in QAT_VARIANTS)
    return "\n".join([
        "## W4A8 QAT on every Fashion-MNIST benchmark model, beside the float fine-tune and TFMOT (issue 13)",
        "",
        f"Every trained variant: {QAT_EPOCHS} epoch over the 60,000-image train split in one fixed shuffled order, "
        f"batch {bench_qat.BATCH}, Adam lr {bench_qat.LEARNING_RATE:g}, `sim.model.fit`. The control is the same "
        "training without quantization (float fine-tune); a QAT cell gives its top-1 %, then (its change against "
        "the float fine-tune; the goal is within 0.5 points) and its wall time. Our sims: per-channel 4-bit weights, "
        f"8-bit activations (`htp` config), batch norms folded first (AIMET's QAT flow), calibrated with `{DEFAULT}` "
        "on the 2,000 calibration images; `static grid` trains the weights through fixed grids (straight-through "
        "estimator), `range learning` (`auto_range_learning`) also trains the ranges. TFMOT: its default 8-bit QAT "
        "(it has no 4-bit default) on the same weights rebuilt in tf_keras, same data order and settings, in its own "
        f"venv ({', '.join(f'{k} {v}' for k, v in (versions or {}).items()) or 'versions not reported'}). "
        "Top-1 % on the 10,000 test images.",
        "",
        f"| model | FP32 | float fine-tune | W4A8 PTQ ({DEFAULT}) | {variant_heads} | TFMOT W8A8 QAT |",
        "|---|---|---|---|" + "---|" * len(QAT_VARIANTS) + "---|",
        *rows,
        "",
        *notes,
    ])


if __name__ == "__main__":
    print(run())
