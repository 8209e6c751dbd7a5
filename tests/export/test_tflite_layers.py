"""One tiny model per supported layer kind: the LiteRT interpreter reproduces the simulation.

Tolerance tier: within one output quantization step for every element (TFMOT's own end-to-end
test allows atol=1e-1), and in fact bit-identical for at least 99.9% of the elements.
"""

import keras
import pytest

from aimet_tf.testing.models import randomize_batch_norms

L = keras.layers


def _model(kind: str) -> keras.Model:
    keras.utils.set_random_seed(7)
    inp = keras.Input((8, 8, 3), name="image")
    if kind == "conv2d":
        x = L.Conv2D(6, 3, strides=2, padding="same", name="conv")(inp)
    elif kind == "conv2d_relu6":
        x = L.Conv2D(6, 3, padding="same", name="conv")(inp)
        x = L.ReLU(max_value=6.0, name="relu6")(x)
    elif kind == "depthwise":
        x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(inp)
        x = L.ReLU(name="relu")(x)
    elif kind == "separable":
        x = L.SeparableConv2D(6, 3, padding="same", use_bias=False, name="sep")(inp)
        x = L.BatchNormalization(name="bn")(x)
        x = L.ReLU(name="relu")(x)
    elif kind == "dense":
        x = L.Flatten(name="flat")(inp)
        x = L.Dense(8, activation="relu", name="fc1")(x)
        x = L.Dense(4, name="fc2")(x)
    elif kind == "add":
        y = L.Conv2D(3, 1, name="conv")(inp)
        x = L.Add(name="add")([inp, y])
        x = L.ReLU(name="relu")(x)
    elif kind == "concatenate":
        y = L.Conv2D(4, 1, name="conv")(inp)
        x = L.Concatenate(name="cat")([inp, y])
    elif kind == "average_pooling":
        y = L.Conv2D(4, 1, name="conv")(inp)
        x = L.AveragePooling2D(2, name="pool")(y)
    elif kind == "max_pooling":
        y = L.Conv2D(4, 3, padding="same", name="conv")(inp)
        x = L.MaxPooling2D(2, name="pool")(y)
    elif kind == "global_average_pooling":
        y = L.Conv2D(6, 3, padding="same", name="conv")(inp)
        x = L.GlobalAveragePooling2D(name="gap")(y)
        x = L.Dense(3, name="fc")(x)
    elif kind == "relu_standalone":
        # After a Concatenate nothing fuses: TFLite runs RELU / RELU6 ops of their own.
        y = L.Conv2D(3, 1, name="conv")(inp)
        x = L.Concatenate(name="cat")([inp, y])
        x = L.ReLU(name="relu")(x)
        x = L.Conv2D(4, 1, name="conv2")(x)
        x = L.Concatenate(name="cat2")([x, x])
        x = L.ReLU(max_value=6.0, name="relu6")(x)
    elif kind == "reshape_flatten":
        y = L.Conv2D(4, 3, padding="same", name="conv")(inp)
        x = L.Reshape((16, 16), name="reshape")(y)
        x = L.Flatten(name="flat")(x)
        x = L.Dense(5, name="fc")(x)
    elif kind == "conv2d_transpose":
        x = L.Conv2DTranspose(4, 3, strides=2, padding="same", name="deconv")(inp)
        x = L.ReLU(name="relu")(x)
    else:
        raise ValueError(kind)
    model = keras.Model(inp, x, name=kind)
    return randomize_batch_norms(model, seed=3)


# kind -> a TFLite builtin the exported file must contain.
KINDS = {
    "conv2d": "CONV_2D",
    "conv2d_relu6": "CONV_2D",
    "depthwise": "DEPTHWISE_CONV_2D",
    "separable": "DEPTHWISE_CONV_2D",
    "dense": "FULLY_CONNECTED",
    "add": "ADD",
    "concatenate": "CONCATENATION",
    "average_pooling": "AVERAGE_POOL_2D",
    "max_pooling": "MAX_POOL_2D",
    "global_average_pooling": "MEAN",
    "relu_standalone": "RELU6",
    "reshape_flatten": "RESHAPE",
    "conv2d_transpose": "TRANSPOSE_CONV",
}


def _assert_reproduces(exported, expected_op):
    report = exported.verify()
    assert expected_op in exported.op_names()
    assert report.within_one_step == 1.0, report.summary()
    assert report.max_step_difference <= 1.0 + 1e-6, report.summary()
    assert report.exact_fraction >= 0.999, report.summary()
    return report


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_int8_layer_matches_interpreter(export_model, kind):
    exported = export_model(_model(kind))
    _assert_reproduces(exported, KINDS[kind])


def test_fused_relu_leaves_no_relu_op(export_model):
    exported = export_model(_model("conv2d_relu6"))
    assert "RELU6" not in exported.op_names() and "RELU" not in exported.op_names()


def test_standalone_relu_ops_present(export_model):
    ops = export_model(_model("relu_standalone")).op_names()
    assert "RELU" in ops and "RELU6" in ops


@pytest.mark.parametrize("kind", ["conv2d", "depthwise", "dense", "conv2d_transpose"])
def test_int4_weights_match_interpreter(export_model, kind):
    exported = export_model(_model(kind), param_bw=4)
    _assert_reproduces(exported, KINDS[kind])
