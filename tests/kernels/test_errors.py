"""Malformed models, unsupported operators and bad inputs give clear Python errors, never a crash."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from aimet_tf.kernels import IntegerExecutor, TFLiteFormatError, UnsupportedOperatorError, read_tflite
from tests.kernels import tflite_models


@pytest.fixture(scope="module")
def model_bytes():
    return tflite_models.ptq_int8("depthwise_add")[0]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "file identifier"),
        (b"\x00" * 64, "file identifier"),
        (b"\x10\x00\x00\x00TFL3" + b"\xff" * 8, "Malformed TFLite flatbuffer|subgraph"),
    ],
)
def test_garbage_bytes_raise_format_errors(data, message):
    with pytest.raises(TFLiteFormatError, match=message):
        read_tflite(data)


def test_truncated_model_raises_a_format_error(model_bytes):
    with pytest.raises(TFLiteFormatError):
        IntegerExecutor(model_bytes[: len(model_bytes) // 3])


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        IntegerExecutor(tmp_path / "absent.tflite")


def test_unsupported_operator_is_named():
    with pytest.raises(UnsupportedOperatorError, match=r"Operator \d+ is LOGISTIC.*Supported: CONV_2D"):
        IntegerExecutor(tflite_models.logistic_model())


def test_softmax_with_a_non_standard_output_scale_is_rejected():
    model = tflite_models.single_op_model("SOFTMAX", [((1, 10), 0.1, 0)], ((1, 10), 0.01, 0))
    with pytest.raises(UnsupportedOperatorError, match="SOFTMAX.*scale 1/256"):
        IntegerExecutor(model)


def test_wrong_inputs_are_rejected(model_bytes):
    executor = IntegerExecutor(model_bytes)
    with pytest.raises(ValueError, match=r"shape \[N, 12, 12, 4\]"):
        executor.run(np.zeros((2, 12, 12, 3), np.float32))
    with pytest.raises(ValueError, match="dtype float32"):
        executor.run(np.zeros((2, 12, 12, 4), np.int8))
    with pytest.raises(ValueError, match="Expected 1 model inputs"):
        executor.run(np.zeros((2, 12, 12, 4), np.float32), np.zeros((2, 12, 12, 4), np.float32))
    with pytest.raises(ValueError, match="backend"):
        IntegerExecutor(model_bytes, backend="gpu")


def test_corrupted_models_never_crash_the_process(model_bytes, tmp_path):
    """Byte-flipped models must load and run, or raise a Python exception: checked in a child
    process, so that a crash would show as its exit code instead of killing the test run."""
    path = tmp_path / "model.tflite"
    path.write_bytes(model_bytes)
    script = textwrap.dedent(
        f"""
        import numpy as np
        import tensorflow as tf
        from aimet_tf.kernels import IntegerExecutor
        data = bytearray(open({str(path)!r}, "rb").read())
        rng = np.random.default_rng(0)
        outcomes = {{}}
        for trial in range(150):
            corrupted = bytearray(data)
            for position in rng.integers(0, len(corrupted), 1 + trial % 4):
                corrupted[position] = int(rng.integers(0, 256))
            try:
                executor = IntegerExecutor(bytes(corrupted))
                executor.run(np.zeros((1, 12, 12, 4), np.float32))
                kind = "ran"
            except (ValueError, FileNotFoundError, tf.errors.OpError) as exc:
                kind = type(exc).__name__
            outcomes[kind] = outcomes.get(kind, 0) + 1
        print("OUTCOMES", sorted(outcomes.items()))
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OUTCOMES" in result.stdout, result.stdout + result.stderr[-2000:]
    print(result.stdout)
