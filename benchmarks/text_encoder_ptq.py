r"""Issue 19: what TFLite makes of the BERT-style encoder (``aimet_tf.text_encoder``), random weights.

For each variant of ``bert_encoder`` (default; ``gelu_approximate``; ``causal``): the float
.tflite's op counts and its largest logit difference from Keras, then TFLite's own full-integer
PTQ (``Optimize.DEFAULT``, a representative dataset of ``random_token_batch`` sequences one at a
time, ``TFLITE_BUILTINS_INT8``, int8 output; the int32 inputs stay int32): whether it converts,
its op counts, the ops whose outputs stay float, the quantization of the attention-score tensors
(the masked ``SELECT_V2`` in front of each ``SOFTMAX``), and on held-out random sequences the
agreement of its logits' argmax with Keras and whether tokens under padding change its logits.
Last, the same agreement with a copy of the Keras model whose attention is uniform over the real
tokens (every ``key`` projection zeroed, so all scores of a query are equal): how close the int8
model is to one that ignores the scores.

    python -m benchmarks.text_encoder_ptq                     # 256 calibration, 512 test sequences
    python -m benchmarks.text_encoder_ptq --calibration=64 --test=128
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys

import numpy as np

from aimet_tf.kernels.tflite_model import read_tflite
from aimet_tf.text_encoder import bert_encoder, random_token_batch

_VARIANTS = {
    "default": {},
    "gelu_approximate": {"gelu_approximate": True},
    "causal": {"causal": True},
}


def _convert(model, calibration: tuple[np.ndarray, np.ndarray] | None) -> bytes:
    """Float conversion (``calibration`` None) or TFLite's full-int8 PTQ with int8 output."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calibration is not None:
        token_ids, padding_mask = calibration

        def representative():
            for i in range(len(token_ids)):
                yield [token_ids[i : i + 1], padding_mask[i : i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return converter.convert()


def _run(content: bytes, token_ids: np.ndarray, padding_mask: np.ndarray) -> np.ndarray:
    """The model's float logits on the whole batch (int8 outputs dequantized)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    inputs = interpreter.get_input_details()
    for detail in inputs:
        interpreter.resize_tensor_input(detail["index"], list(token_ids.shape))
    interpreter.allocate_tensors()
    for detail in inputs:
        interpreter.set_tensor(detail["index"], token_ids if "token_ids" in detail["name"] else padding_mask)
    interpreter.invoke()
    output = interpreter.get_output_details()[0]
    logits = interpreter.get_tensor(output["index"]).astype(np.float32)
    scale, zero_point = output["quantization"]
    return (logits - zero_point) * scale if scale else logits


def _float_outputs(content: bytes) -> dict[str, int]:
    graph = read_tflite(content)
    counts: dict[str, int] = {}
    for op in graph.operators:
        if any(graph.tensors[i].type_name == "FLOAT32" for i in op.outputs):
            counts[op.name] = counts.get(op.name, 0) + 1
    return counts


def _score_grids(content: bytes) -> list[str]:
    """The quantization of each SELECT_V2 that feeds a SOFTMAX: (scale, zero point, fill)."""
    graph = read_tflite(content)
    producers = {out: op for op in graph.operators for out in op.outputs}
    lines = []
    for op in graph.operators:
        select = producers.get(op.inputs[0])
        if op.name != "SOFTMAX" or select is None or select.name != "SELECT_V2":
            continue
        out = graph.tensors[select.outputs[0]]
        fill = next((graph.tensors[i].data for i in select.inputs[1:] if graph.tensors[i].data is not None), None)
        lines.append(f"scores {out.type_name} scale {out.scale[0]:.4g} zero point {out.zero_point[0]}, "
                     f"fill value {None if fill is None else fill.item()}")
    return lines


def _uniform_attention_copy(model):
    """A copy of ``model`` with every MultiHeadAttention's ``key`` kernel and bias set to zero."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    zeroed = 0
    for weight in copy.weights:
        if "_mha/key/" in weight.path:
            weight.assign(np.zeros(weight.shape, np.float32))
            zeroed += 1
    if zeroed == 0:
        raise ValueError("Expected MultiHeadAttention key weights (path '.../blockI_mha/key/...'). Received none.")
    return copy


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=256, help="calibration sequences")
    parser.add_argument("--test", type=int, default=512, help="held-out test sequences")
    args = parser.parse_args(argv)

    import keras

    calibration = random_token_batch(args.calibration, seed=0)
    token_ids, padding_mask = random_token_batch(args.test, seed=1)
    other = np.random.default_rng(2).integers(1, 1000, size=token_ids.shape).astype(np.int32)
    under_padding = np.where(padding_mask == 1, token_ids, other)
    for variant, kwargs in _VARIANTS.items():
        keras.utils.set_random_seed(0)
        model = bert_encoder(**kwargs)
        reference = np.asarray(model.predict([token_ids, padding_mask], verbose=0))
        print(f"== {variant} ({model.count_params()} params)")
        content = _convert(model, None)
        error = np.max(np.abs(_run(content, token_ids, padding_mask) - reference))
        print(f"float .tflite: max |logit - Keras| = {error:.3g}")
        print(f"  ops: {dict(sorted(read_tflite(content).op_counts().items()))}")
        try:
            content = _convert(model, calibration)
        except Exception as exc:  # report the converter's refusal, whatever its type
            print(f"int8 PTQ: does not convert: {type(exc).__name__}: {str(exc)[:2000]}")
            continue
        logits = _run(content, token_ids, padding_mask)
        agreement = float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1)))
        leak = float(np.max(np.abs(_run(content, under_padding, padding_mask) - logits)))
        print(f"int8 PTQ: argmax agreement with Keras {agreement:.4f} on {args.test} sequences; "
              f"max |logit - Keras| {np.max(np.abs(logits - reference)):.3g}; "
              f"largest change from tokens under padding {leak:.3g}")
        uniform = np.asarray(_uniform_attention_copy(model).predict([token_ids, padding_mask], verbose=0))
        print(f"  argmax agreement with uniform-attention Keras: int8 {np.mean(np.argmax(logits, -1) == np.argmax(uniform, -1)):.4f} "
              f"(max |logit difference| {np.max(np.abs(logits - uniform)):.3g}), Keras "
              f"{np.mean(np.argmax(reference, -1) == np.argmax(uniform, -1)):.4f}")
        print(f"  ops: {dict(sorted(read_tflite(content).op_counts().items()))}")
        print(f"  ops with float outputs: {_float_outputs(content)}")
        for line in _score_grids(content):
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
