r"""Export a calibrated simulation as a full-integer TFLite model and check it reproduces the sim.

Folds batch norms (and splits separable convolutions / unfusable activations), builds a
QuantizationSimModel with TFLite's int8 scheme, computes encodings, writes the .tflite file
(int8 activations, int8 or int4 weights) and prints how closely LiteRT reproduces the simulation,
next to TFLite's own post-training quantization of the float model (same calibration images).

Usage (from the repository root):
    python examples/export_tflite.py                                  # bundled Fashion-MNIST CNN
    python examples/export_tflite.py --param_bw=4 --output=/tmp/w4a8.tflite
    python examples/export_tflite.py --model=my_model.keras --calibration=calib.npy
    python examples/export_tflite.py --mltk_model=resnet8           # an MLTK model (third_party/mltk)
    python examples/export_tflite.py --bundled=vit --reference_kernels   # the bundled ViT
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
import numpy as np  # noqa: E402

from aimet_tf.export.baselines import tflite_float, tflite_ptq_int8  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the script's flags (only when run as a script: importing it for ``run`` must not
    clash with other modules' flags)."""
    flags.DEFINE_string("model", None, "A .keras model file; default: a bundled Fashion-MNIST model (--bundled).")
    flags.DEFINE_enum("bundled", "cnn", ["cnn", "vit"], "Which bundled Fashion-MNIST model without --model / "
                      "--mltk_model: the edge CNN or the vision transformer.")
    flags.DEFINE_string("mltk_model", None, "An MLTK model name (resnet8, ds_cnn, vww_mobilenetv1, "
                        "mobilenetv2_kws) instead of --model (shipped in third_party/mltk).")
    flags.DEFINE_string(
        "calibration", "auto",
        "Calibration data: 'fashion_mnist' (bundled calibration split), 'random' (N(0, 1) inputs), "
        "a .npy file of inputs, or 'auto' (fashion_mnist for the bundled model, the real inputs for "
        "an MLTK model, random otherwise).",
    )
    flags.DEFINE_integer("num_calibration", 1000, "Calibration inputs to use.")
    flags.DEFINE_enum("param_bw", "8", ["8", "4"], "Weight bitwidth (4: int4-packed conv/dense weights).")
    flags.DEFINE_string("quant_scheme", "auto", "Range scheme: auto (the default: output_mse weights, tf_enhanced activations), tf, tf_enhanced, mse, output_mse or percentile.")
    flags.DEFINE_string("config", None, "Hardware config (preset name or JSON path); default: TFLite's.")
    flags.DEFINE_string("output", None, "Output .tflite path; default: <model>_w<bw>a8.tflite.")
    flags.DEFINE_enum("input_type", "float32", ["float32", "int8"], "Model input type.")
    flags.DEFINE_enum("output_type", "float32", ["float32", "int8"], "Model output type.")
    flags.DEFINE_integer("eval_samples", 10000, "Evaluation inputs (Fashion-MNIST test split).")
    flags.DEFINE_bool("reference_kernels", False, "Also verify with LiteRT's reference kernels.")
    flags.DEFINE_bool("compare_ptq", True, "Also convert with TFLite's own post-training quantization.")


def load(model_path, mltk_model, calibration, num_calibration, eval_samples, bundled="cnn"):
    """(name, float model, calibration inputs, evaluation inputs, labels or None)."""
    from aimet_tf import datasets

    labels = None
    if mltk_model:
        from aimet_tf.testing.mltk_models import load_mltk_model
        from aimet_tf.testing.real_inputs import real_inputs

        model = load_mltk_model(mltk_model).keras_model
        x = real_inputs(mltk_model)
        # Calibrate on even indices, score on odd ones.
        calibration_default, x_eval, name = x[0::2], x[1::2], mltk_model
    elif model_path:
        import keras

        model = keras.models.load_model(model_path, compile=False)
        name = os.path.splitext(os.path.basename(model_path))[0]
        calibration_default = None
        x_eval = np.random.default_rng(1).normal(size=(256, *model.input_shape[1:])).astype(np.float32)
    else:
        if bundled not in ("cnn", "vit"):
            raise app.UsageError(f"Expected --bundled to be cnn or vit. Received: {bundled!r}")
        model, name = ((datasets.load_bundled_model(), "fashion_mnist_cnn") if bundled == "cnn"
                       else (datasets.load_bundled_vit(), "fashion_mnist_vit"))
        calibration_default, _ = datasets.load_fashion_mnist("calibration")
        x_eval, labels = datasets.load_fashion_mnist("test")
        x_eval, labels = x_eval[:eval_samples], labels[:eval_samples]
    if calibration == "fashion_mnist":
        x_cal, _ = datasets.load_fashion_mnist("calibration")
    elif calibration == "random":
        x_cal = np.random.default_rng(0).normal(size=(num_calibration, *model.input_shape[1:]))
    elif calibration == "auto":
        x_cal = calibration_default
        if x_cal is None:
            x_cal = np.random.default_rng(0).normal(size=(num_calibration, *model.input_shape[1:]))
    elif calibration.endswith(".npy"):
        x_cal = np.load(calibration)
    else:
        raise app.UsageError(
            "Expected --calibration to be fashion_mnist, random, auto or a .npy file. Received: "
            f"{calibration!r}"
        )
    return name, model, np.asarray(x_cal[:num_calibration], np.float32), x_eval, labels


def _write(content: bytes, path: str) -> str:
    with open(path, "wb") as handle:
        handle.write(content)
    return path


def tflite_ptq(model, calibration: np.ndarray, path: str) -> str:
    """TFLite's own full-integer post-training quantization, written to ``path``."""
    return _write(tflite_ptq_int8(model, calibration), path)


def float_tflite(model, path: str) -> str:
    return _write(tflite_float(model), path)

def run(
    *,
    model_path: str | None = None,
    mltk_model: str | None = None,
    calibration: str = "auto",
    num_calibration: int = 1000,
    param_bw: int = 8,
    quant_scheme: str = "auto",
    config: str | None = None,
    output: str | None = None,
    input_type: str = "float32",
    output_type: str = "float32",
    eval_samples: int = 10000,
    reference_kernels: bool = False,
    compare_ptq: bool = True,
    bundled: str = "cnn",
) -> dict:
    """Runs the whole flow and prints the results; returns them as a dict (for tests)."""
    from aimet_tf import QuantizationSimModel, metrics
    from aimet_tf.export import (
        TFLITE_CONFIG,
        export_tflite,
        measure_latency,
        prepare_model_for_tflite,
        run_tflite,
        verify_tflite,
    )

    name, model, x_cal, x_eval, labels = load(
        model_path, mltk_model, calibration, num_calibration, eval_samples, bundled
    )
    output = output or f"{name}_w{param_bw}a8.tflite"
    prepared = prepare_model_for_tflite(model)
    sim = QuantizationSimModel(
        prepared,
        quant_scheme=quant_scheme,
        default_param_bw=param_bw,
        default_output_bw=8,
        config_file=config or TFLITE_CONFIG,
    )
    logging.info("Calibrating on %d inputs", len(x_cal))
    sim.compute_encodings(x_cal)
    export_tflite(sim, output, input_type=input_type, output_type=output_type)
    results = {"output": output, "reports": {}}
    print(f"\nExported {name} W{param_bw}A8 to {output} ({os.path.getsize(output)} bytes)\n")
    for kernels in ("default", "reference") if reference_kernels else ("default",):
        report = verify_tflite(sim, output, x_eval, labels=labels, kernels=kernels)
        results["reports"][kernels] = report
        print(f"Simulation vs .tflite ({kernels} kernels):\n{report.summary()}\n")
    if compare_ptq:
        with tempfile.TemporaryDirectory() as scratch:
            ptq = tflite_ptq(model, x_cal, os.path.join(scratch, "ptq.tflite"))
            fp32 = float_tflite(model, os.path.join(scratch, "float.tflite"))
            rows = [("float32 (TFLite)", fp32), ("TFLite PTQ int8", ptq), (f"aimet_tf W{param_bw}A8", output)]
            reference = run_tflite(fp32, x_eval)[0]
            print(f"{'model':22s} {'bytes':>9s} {'top-1 %':>8s} {'agree w/ fp32 %':>16s} {'ms @ batch 1':>13s}")
            for label, path in rows:
                out = run_tflite(path, x_eval)[0]
                accuracy = "-" if labels is None else f"{100 * metrics.top1_accuracy(out, labels):.2f}"
                latency = measure_latency(path)
                results[label] = {"bytes": os.path.getsize(path), "latency_ms": latency}
                print(
                    f"{label:22s} {os.path.getsize(path):9d} {accuracy:>8s} "
                    f"{100 * metrics.top1_agreement(reference, out):16.2f} {latency:13.3f}"
                )
    return results


def main(argv):
    del argv
    run(
        model_path=FLAGS.model,
        mltk_model=FLAGS.mltk_model,
        calibration=FLAGS.calibration,
        num_calibration=FLAGS.num_calibration,
        param_bw=int(FLAGS.param_bw),
        quant_scheme=FLAGS.quant_scheme,
        config=FLAGS.config,
        output=FLAGS.output,
        input_type=FLAGS.input_type,
        output_type=FLAGS.output_type,
        eval_samples=FLAGS.eval_samples,
        reference_kernels=FLAGS.reference_kernels,
        compare_ptq=FLAGS.compare_ptq,
        bundled=FLAGS.bundled,
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
