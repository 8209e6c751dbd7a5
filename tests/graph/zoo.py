"""A zoo of model shapes real users bring: subclassed, shared, nested, ops nodes, Lambda, multi-IO, applications.

Each entry builds a model with random weights and says what its inputs look like; the tests send
every one through ``prepare_model`` -> W8A8 sim -> ``compute_encodings`` -> ``export`` (and TFLite).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import numpy as np

L = keras.layers


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[[], keras.Model]
    input_shapes: tuple[tuple[int, ...], ...]  # without the batch dimension
    slow: bool = False


class ResBlock(L.Layer):
    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = L.Conv2D(channels, 3, padding="same")
        self.bn = L.BatchNormalization()
        self.conv2 = L.Conv2D(channels, 3, padding="same", activation="relu")

    def call(self, x, training=None):
        y = keras.ops.relu(self.bn(self.conv1(x), training=training))
        return keras.ops.relu(x + self.conv2(y))


class ResNet(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed_resnet")
        self.stem = L.Conv2D(8, 3, padding="same", activation="relu")
        self.blocks = [ResBlock(8), ResBlock(8)]
        self.head = L.Dense(5)

    def call(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(keras.ops.mean(x, axis=(1, 2)))


class Inner(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(6, activation="tanh")

    def call(self, x):
        return self.dense(x) * 2.0


class Outer(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = Inner()
        self.proj = L.Dense(6)

    def call(self, x):
        return self.proj(x) + self.inner(x)


class NestedLayers(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed_nested")
        self.outer = Outer()
        self.dropout = L.Dropout(0.5)
        self.out = L.Dense(3)

    def call(self, x, training=False):
        return self.out(self.dropout(self.outer(x), training=training))


def _built(model: keras.Model, shape) -> keras.Model:
    model(np.zeros((1, *shape), "float32"))
    return model


def _shared_dense():
    shared = L.Dense(4, activation="relu", name="shared")
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    return keras.Model([a, b], L.Dense(2)(L.Add()([shared(a), shared(b)])), name="shared_dense")


def _multi_io():
    image, side = keras.Input((8, 8, 3), name="image"), keras.Input((4,), name="side")
    x = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, activation="relu")(image))
    joined = L.Concatenate()([x, L.Dense(4)(side)])
    return keras.Model([image, side], [L.Dense(3, name="cls")(joined), L.Dense(1, name="reg")(joined)], name="multi_io")


def _ops_nodes():
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same")(x)
    b = L.Conv2D(4, 1)(x)
    y = keras.ops.relu(a + b) * 0.5
    y = keras.ops.mean(y, axis=(1, 2))
    return keras.Model(x, L.Dense(3)(keras.ops.sigmoid(y)), name="ops_nodes")


def _lambda():
    x = keras.Input((10,))
    y = L.Dense(8)(x)
    y = L.Lambda(lambda t: keras.ops.maximum(t, 0.0) - 0.25 * keras.ops.abs(t))(y)
    return keras.Model(x, L.Dense(2)(y), name="lambda")


def _rescaling_front():
    x = keras.Input((12, 12, 3))
    y = L.Rescaling(1 / 127.5, offset=-1.0)(x)
    y = L.Conv2D(6, 3, activation="relu")(y)
    return keras.Model(x, L.Dense(4)(L.Flatten()(y)), name="rescaling_front")


def _sequential_in_functional():
    body = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, padding="same"), L.ReLU(), L.MaxPooling2D()],
                            name="body")
    x = keras.Input((8, 8, 3))
    return keras.Model(x, L.Dense(3)(L.Flatten()(body(x))), name="sequential_in_functional")


def _nested_model_twice():
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, L.Dense(6, activation="relu")(inner_in), name="inner")
    x = keras.Input((6,))
    return keras.Model(x, L.Dense(2)(inner(inner(x))), name="nested_model_twice")


def _conv_bn_relu():
    x = keras.Input((10, 10, 3))
    y = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, use_bias=False)(x)))
    y = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(8, 3)(y)))
    return keras.Model(x, L.Dense(4)(L.GlobalAveragePooling2D()(y)), name="conv_bn_relu")


def _depthwise_separable():
    x = keras.Input((12, 12, 4))
    y = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same")(x)))
    y = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(8, 1)(y)))
    y = L.SeparableConv2D(8, 3, activation="relu")(y)
    return keras.Model(x, L.Dense(3)(L.GlobalAveragePooling2D()(y)), name="depthwise_separable")


def _conv1d_audio():
    x = keras.Input((40, 5))
    y = L.Conv1D(8, 5, activation="relu")(x)
    y = L.MaxPooling1D(2)(y)
    y = L.Conv1D(8, 3, activation="relu")(y)
    return keras.Model(x, L.Dense(4)(L.GlobalAveragePooling1D()(y)), name="conv1d_audio")


def _decoder():
    x = keras.Input((8,))
    y = L.Reshape((2, 2, 2))(L.Dense(8, activation="relu")(x))
    y = L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu")(y)
    y = L.UpSampling2D()(y)
    return keras.Model(x, L.Conv2D(1, 3, padding="same")(y), name="decoder")


def _inception():
    x = keras.Input((10, 10, 4))
    a = L.Conv2D(4, 1, activation="relu")(x)
    b = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    c = L.AveragePooling2D(3, strides=1, padding="same")(x)
    y = L.Concatenate()([a, b, c])
    return keras.Model(x, L.Dense(3)(L.GlobalMaxPooling2D()(y)), name="inception")


def _mlp():
    x = keras.Input((20,))
    y = L.Dense(16, activation="relu")(x)
    y = L.Dense(16, activation="sigmoid")(y)
    return keras.Model(x, L.Dense(4, activation="softmax")(y), name="mlp")


def _attention():
    x = keras.Input((6, 8))
    y = L.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
    y = L.LayerNormalization()(L.Add()([x, y]))
    return keras.Model(x, L.Dense(3)(L.GlobalAveragePooling1D()(y)), name="attention")


def _reshape_transpose():
    x = keras.Input((4, 6))
    y = keras.ops.transpose(L.Dense(6)(x), (0, 2, 1))
    y = keras.ops.reshape(y, (-1, 24))
    return keras.Model(x, L.Dense(3)(y), name="reshape_transpose")


class TwoTower(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed_two_inputs")
        self.left, self.right = L.Dense(5, activation="relu"), L.Dense(5, activation="relu")
        self.head = L.Dense(2)

    def call(self, inputs):
        a, b = inputs
        return self.head(keras.ops.concatenate([self.left(a), self.right(b)], axis=-1))


def _two_tower():
    model = TwoTower()
    model([np.zeros((1, 3), "float32"), np.zeros((1, 7), "float32")])
    return model


def _lstm_stack():
    x = keras.Input((12, 6))
    y = L.LSTM(16, return_sequences=True)(x)
    y = L.LSTM(8)(y)
    return keras.Model(x, L.Dense(4, activation="softmax")(y), name="lstm_stack")


class KeywordGru(keras.Model):
    """A subclassed keyword spotter: Conv1D front end, GRU, classifier."""

    def __init__(self):
        super().__init__(name="subclassed_gru")
        self.front = L.Conv1D(8, 3, padding="same", activation="relu")
        self.gru = L.GRU(12)
        self.head = L.Dense(5)

    def call(self, x):
        return self.head(self.gru(self.front(x)))


def _simple_rnn_state():
    x = keras.Input((9, 4))
    sequence, state = L.SimpleRNN(10, return_sequences=True, return_state=True)(x)
    pooled = L.GlobalAveragePooling1D()(sequence)
    return keras.Model(x, L.Dense(3)(L.Concatenate()([pooled, state])), name="simple_rnn_state")


def _bidirectional():
    x = keras.Input((14, 5))
    y = L.Bidirectional(L.LSTM(8, return_sequences=True))(x)
    y = L.Bidirectional(L.GRU(6), merge_mode="sum")(y)
    return keras.Model(x, L.Dense(4)(y), name="bidirectional")


def _application(fn, name):
    def build():
        model = fn(input_shape=(32, 32, 3), weights=None, classes=10)
        model.name = name
        return model
    return build


ENTRIES = (
    Entry("subclassed_resnet", lambda: _built(ResNet(), (8, 8, 3)), ((8, 8, 3),)),
    Entry("subclassed_nested", lambda: _built(NestedLayers(), (5,)), ((5,),)),
    Entry("shared_dense", _shared_dense, ((6,), (6,))),
    Entry("multi_io", _multi_io, ((8, 8, 3), (4,))),
    Entry("ops_nodes", _ops_nodes, ((8, 8, 3),)),
    Entry("lambda", _lambda, ((10,),)),
    Entry("rescaling_front", _rescaling_front, ((12, 12, 3),)),
    Entry("sequential_in_functional", _sequential_in_functional, ((8, 8, 3),)),
    Entry("nested_model_twice", _nested_model_twice, ((6,),)),
    Entry("conv_bn_relu", _conv_bn_relu, ((10, 10, 3),)),
    Entry("depthwise_separable", _depthwise_separable, ((12, 12, 4),)),
    Entry("conv1d_audio", _conv1d_audio, ((40, 5),)),
    Entry("decoder", _decoder, ((8,),)),
    Entry("inception", _inception, ((10, 10, 4),)),
    Entry("mlp", _mlp, ((20,),)),
    Entry("attention", _attention, ((6, 8),)),
    Entry("reshape_transpose", _reshape_transpose, ((4, 6),)),
    Entry("subclassed_two_inputs", _two_tower, ((3,), (7,))),
    Entry("lstm_stack", _lstm_stack, ((12, 6),)),
    Entry("subclassed_gru", lambda: _built(KeywordGru(), (16, 5)), ((16, 5),)),
    Entry("simple_rnn_state", _simple_rnn_state, ((9, 4),)),
    Entry("bidirectional", _bidirectional, ((14, 5),)),
    Entry("mobilenet_v3_small", _application(keras.applications.MobileNetV3Small, "mobilenet_v3_small"),
          ((32, 32, 3),), slow=True),
    Entry("efficientnet_v2_b0", _application(keras.applications.EfficientNetV2B0, "efficientnet_v2_b0"),
          ((32, 32, 3),), slow=True),
    Entry("resnet50_v2", _application(keras.applications.ResNet50V2, "resnet50_v2"), ((32, 32, 3),), slow=True),
)


def inputs(entry: Entry, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, *shape)).astype("float32") for shape in entry.input_shapes]
