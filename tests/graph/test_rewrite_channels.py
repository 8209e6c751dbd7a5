"""keep_channels / channel_group: slicing a producer's output channels and every reader to match."""

import keras
import numpy as np
import pytest

from aimet_tf.graph import ChannelGroup, ModelGraph, channel_group, keep_channels, output_channel_axis
from aimet_tf.testing.models import conv_bn_relu_model

L = keras.layers


def _seeded(build, seed=0):
    """``build()``'s model with a fixed seed and random batch-norm statistics (fresh BNs are identities)."""
    keras.utils.set_random_seed(seed)
    model = build()
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([
                rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c),
            ])
        if isinstance(layer, L.PReLU):
            layer.set_weights([rng.uniform(0.05, 0.5, layer.alpha.shape)])
    return model


def _kill(model, producer, dead):
    """Makes ``producer``'s channels ``dead`` zero everywhere downstream: zero kernel slice and bias, and
    zero shift in the batch norms and depthwise biases that read them directly (the test models put those
    right after the producer, before any reshape or concatenation)."""
    layer = model.get_layer(producer)
    channels = layer.get_config().get("filters") or layer.get_config()["units"]
    kernel_name = "pointwise_kernel" if "pointwise_kernel" in [v.name for v in layer.weights] else "kernel"
    for v in layer.weights:
        w = v.numpy()
        if v.name == kernel_name:
            index = [slice(None)] * w.ndim
            index[output_channel_axis(layer)] = dead
            w[tuple(index)] = 0
        elif v.name == "bias":
            w[dead] = 0
        v.assign(w)
    for name in channel_group(model, producer).through:
        other = model.get_layer(name)
        if isinstance(other, L.BatchNormalization) and other.gamma.shape[0] == channels:
            for v in (other.beta, other.moving_mean):
                w = v.numpy()
                w[dead] = 0
                v.assign(w)
        if isinstance(other, L.DepthwiseConv2D) and other.kernel.shape[-2] == channels:
            m = other.depth_multiplier
            w = other.bias.numpy()
            w[(np.asarray(dead)[:, None] * m + np.arange(m)).ravel()] = 0
            other.bias.assign(w)


def _assert_same_function(a, b, x, rtol=1e-6):
    ya = keras.tree.flatten(a(x, training=False))
    yb = keras.tree.flatten(b(x, training=False))
    for u, v in zip(ya, yb):
        u, v = np.asarray(u), np.asarray(v)
        assert u.shape == v.shape
        scale = max(float(np.max(np.abs(u))), 1e-12)
        assert float(np.max(np.abs(u - v))) <= rtol * scale, float(np.max(np.abs(u - v))) / scale


# --- models whose producer "p" has channels that can be removed ------------------------------------


def _conv_bn_depthwise_separable():
    x = keras.Input((9, 9, 3), name="image")
    p = L.Conv2D(6, 3, padding="same", name="p")(x)
    y = L.BatchNormalization(name="bn")(p)
    y = L.ReLU(name="relu")(y)
    y = L.ZeroPadding2D(1, name="pad")(y)
    y = L.MaxPooling2D(2, name="pool")(y)
    y = L.Dropout(0.5, name="drop")(y)
    a = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(y)
    a = L.ReLU(max_value=6.0, name="relu6")(a)
    a = L.Conv2D(4, 1, name="c2")(a)
    b = L.SeparableConv2D(4, 3, depth_multiplier=2, name="sep")(y)
    c = L.Conv2D(4, 3, name="c3")(L.Cropping2D(1, name="crop")(L.UpSampling2D(name="up")(y)))
    z = L.Concatenate(name="cat")([L.GlobalAveragePooling2D(name=f"gap_{i}")(t) for i, t in enumerate((a, b, c))])
    return keras.Model(x, L.Dense(3, name="fc")(z), name="conv_bn_dw_sep")


def _flatten_dense(data_format):
    def build():
        x = keras.Input((4, 3, 2), name="image")
        p = L.Conv2D(5, 3, padding="same", name="p")(x)
        y = L.PReLU(name="prelu")(p)
        y = L.Flatten(data_format=data_format, name="flat")(y)
        return keras.Model(x, L.Dense(3, name="fc")(y), name=f"flatten_{data_format}")

    return build


def _mlp():
    x = keras.Input((7,), name="features")
    p = L.Dense(8, activation="relu", name="p")(x)
    y = L.Dropout(0.2, name="drop")(L.LeakyReLU(0.1, name="leaky")(p))
    a = L.Dense(4, name="fc_a")(y)
    b = L.Dense(4, name="fc_b")(L.Activation("tanh", name="tanh")(y))
    return keras.Model(x, L.Add(name="sum")([a, b]), name="mlp")


def _conv1d():
    x = keras.Input((12, 3), name="signal")
    p = L.Conv1D(6, 3, name="p")(x)
    y = L.Activation("relu", name="act")(L.BatchNormalization(name="bn")(p))
    y = L.AveragePooling1D(2, name="pool")(y)
    y = L.Conv1D(4, 1, name="c2")(y)
    return keras.Model(x, L.Dense(2, name="fc")(L.GlobalMaxPooling1D(name="gmp")(y)), name="conv1d")


def _transposed():
    x = keras.Input((4, 4, 3), name="image")
    p = L.Conv2DTranspose(6, 3, strides=2, padding="same", name="p")(x)
    y = L.UpSampling2D(name="up")(L.ReLU(name="relu")(p))
    y = L.Conv2DTranspose(2, 3, name="t2")(y)
    return keras.Model(x, L.GlobalAveragePooling2D(name="gap")(y), name="transposed")


def _concat_and_self_merge():
    x = keras.Input((6, 6, 3), name="image")
    p = L.Conv2D(5, 3, padding="same", name="p")(x)
    r = L.ReLU(name="relu")(p)
    s = L.Add(name="self_add")([r, L.MaxPooling2D(3, 1, padding="same", name="pool")(r)])
    s = L.Multiply(name="self_mul")([s, r])
    other = L.Conv2D(3, 1, name="other")(x)
    cat = L.Concatenate(name="cat")([other, s, r])  # p's channels at offsets 3 and 8
    y = L.Conv2D(4, 1, name="c")(cat)
    return keras.Model(x, L.Dense(2, name="fc")(L.GlobalAveragePooling2D(name="gap")(y)), name="concat")


def _reshapes():
    x = keras.Input((4, 4, 2), name="image")
    p = L.Conv2D(6, 3, padding="same", name="p")(x)
    r = L.ReLU(name="relu")(p)
    a = L.Reshape((-1, 6), name="rows")(r)  # channel axis kept last: (16, 6)
    a = L.Conv1D(3, 1, name="c1d")(a)
    b = L.Reshape((4, 24), name="wide")(r)  # each row holds 4 pixels x 6 channels
    b = L.Dense(3, name="fc_wide")(b)
    c = L.Permute((2, 3, 1), name="back")(L.Permute((3, 1, 2), name="swap")(r))
    c = L.Conv2D(3, 1, name="c2d")(c)
    g = L.GlobalAveragePooling2D(keepdims=True, name="squeeze")(r)
    g = L.Conv2D(3, 1, name="excite")(g)
    outs = [L.Flatten(name=f"out_{i}")(t) for i, t in enumerate((a, b, c, g))]
    return keras.Model(x, L.Concatenate(name="cat")(outs), name="reshapes")


def _dense_reshape():
    x = keras.Input((5,), name="features")
    p = L.Dense(6, name="p")(x)
    y = L.Reshape((1, 1, 6), name="as_image")(L.ReLU(name="relu")(p))
    return keras.Model(x, L.Flatten(name="flat")(L.Conv2D(2, 1, name="c")(y)), name="dense_reshape")


def _sequential():
    return keras.Sequential(
        [keras.Input((6, 6, 2)), L.Conv2D(4, 3, name="p"), L.ReLU(name="relu"), L.Flatten(name="flat"),
         L.Dense(2, name="fc")],
        name="seq",
    )


CASES = {  # name: (model, producer, dead channels)
    "conv_bn_depthwise_separable": (_conv_bn_depthwise_separable, "p", [1, 4]),
    "flatten_channels_last": (_flatten_dense("channels_last"), "p", [0, 3]),
    "flatten_channels_first": (_flatten_dense("channels_first"), "p", [2]),
    "mlp": (_mlp, "p", [0, 5, 7]),
    "conv1d": (_conv1d, "p", [2, 3]),
    "transposed": (_transposed, "p", [0, 5]),
    "concat_and_self_merge": (_concat_and_self_merge, "p", [1, 2]),
    "reshapes": (_reshapes, "p", [0, 4]),
    "dense_reshape": (_dense_reshape, "p", [3]),
    "sequential": (_sequential, "p", [1]),
    # Its Add joins c1's channels with themselves through a depthwise conv: not a tie.
    "testing_conv_bn_relu": (conv_bn_relu_model, "c1", [0, 6]),
}


def _inputs(model, n=4, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *model.inputs[0].shape[1:])).astype("float32")


@pytest.mark.parametrize("case", sorted(CASES))
def test_removing_dead_channels_keeps_the_function(case):
    build, producer, dead = CASES[case]
    model = _seeded(build)
    _kill(model, producer, dead)
    channels = channel_group(model, producer).channels
    kept = [c for c in range(channels) if c not in dead]
    before = [w.copy() for w in model.get_weights()]
    pruned = keep_channels(model, producer, kept)
    x = _inputs(model)
    _assert_same_function(model, pruned, x)
    assert [l.name for l in pruned.layers] == [l.name for l in ModelGraph(model).model.layers]
    assert pruned.count_params() < model.count_params()
    for a, b in zip(before, model.get_weights()):  # the original is untouched
        np.testing.assert_array_equal(a, b)


def test_live_channels_change_the_function():
    # The oracle can fail: pruning channels that are not dead changes the outputs.
    model = _seeded(_conv_bn_depthwise_separable)
    pruned = keep_channels(model, "p", [0, 2, 3, 5])
    x = _inputs(model)
    assert not np.allclose(np.asarray(model(x)), np.asarray(pruned(x)), rtol=1e-3, atol=1e-4)


def _weights(model, name):
    return {v.name: v.numpy() for v in model.get_layer(name).weights}


def test_weights_and_shapes_are_sliced_for_each_layer_kind():
    model = _seeded(_conv_bn_depthwise_separable)
    kept = np.array([0, 2, 3])
    pruned = keep_channels(model, "p", [3, 0, 2])  # any order: kept in increasing order
    old, new = (lambda n: _weights(model, n)), (lambda n: _weights(pruned, n))
    assert pruned.get_layer("p").filters == 3
    np.testing.assert_array_equal(new("p")["kernel"], old("p")["kernel"][..., kept])
    np.testing.assert_array_equal(new("p")["bias"], old("p")["bias"][kept])
    for w in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(new("bn")[w], old("bn")[w][kept])
    doubled = np.array([0, 1, 4, 5, 6, 7])  # depth_multiplier 2: channel c -> 2c, 2c + 1
    np.testing.assert_array_equal(new("dw")["kernel"], old("dw")["kernel"][:, :, kept, :])
    np.testing.assert_array_equal(new("dw")["bias"], old("dw")["bias"][doubled])
    np.testing.assert_array_equal(new("c2")["kernel"], old("c2")["kernel"][:, :, doubled, :])
    np.testing.assert_array_equal(new("c2")["bias"], old("c2")["bias"])
    np.testing.assert_array_equal(new("sep")["depthwise_kernel"], old("sep")["depthwise_kernel"][:, :, kept, :])
    np.testing.assert_array_equal(new("sep")["pointwise_kernel"], old("sep")["pointwise_kernel"][:, :, doubled, :])
    np.testing.assert_array_equal(new("c3")["kernel"], old("c3")["kernel"][:, :, kept, :])
    np.testing.assert_array_equal(new("fc")["kernel"], old("fc")["kernel"])  # after the consumers: unchanged
    assert pruned.get_layer("dw").output.shape[-1] == 6 and pruned.get_layer("sep").output.shape[-1] == 4
    group = channel_group(model, "p")
    assert isinstance(group, ChannelGroup) and (group.producer, group.channels) == ("p", 6)
    assert sorted(group.through) == sorted(["bn", "relu", "pad", "pool", "drop", "dw", "relu6", "up", "crop"])
    assert sorted(group.consumers) == ["c2", "c3", "sep"]
    order = [n.name for n in ModelGraph(model).nodes]  # both in execution order
    assert list(group.through) == [n for n in order if n in group.through]


def test_flatten_transposed_prelu_concat_and_reshape_slices():
    model = _seeded(_flatten_dense("channels_last"))
    pruned = keep_channels(model, "p", [1, 4])
    np.testing.assert_array_equal(_weights(pruned, "prelu")["alpha"], _weights(model, "prelu")["alpha"][..., [1, 4]])
    rows = (np.arange(4 * 3)[:, None] * 5 + np.array([1, 4])).ravel()  # pixel-major, channels last
    np.testing.assert_array_equal(_weights(pruned, "fc")["kernel"], _weights(model, "fc")["kernel"][rows])

    model = _seeded(_transposed)
    pruned = keep_channels(model, "p", [2, 3])
    np.testing.assert_array_equal(_weights(pruned, "p")["kernel"], _weights(model, "p")["kernel"][:, :, [2, 3], :])
    np.testing.assert_array_equal(_weights(pruned, "t2")["kernel"], _weights(model, "t2")["kernel"][..., [2, 3]])

    model = _seeded(_concat_and_self_merge)
    pruned = keep_channels(model, "p", [0, 4])
    rows = [0, 1, 2, 3, 7, 8, 12]  # other (3 channels) | self_mul (5 -> 0, 4) | relu (5 -> 0, 4)
    np.testing.assert_array_equal(_weights(pruned, "c")["kernel"], _weights(model, "c")["kernel"][:, :, rows, :])

    model = _seeded(_reshapes)
    pruned = keep_channels(model, "p", [1, 2, 5])
    assert pruned.get_layer("rows").target_shape == (-1, 3)
    assert pruned.get_layer("wide").target_shape == (4, 12)
    wide = (np.arange(4)[:, None] * 6 + np.array([1, 2, 5])).ravel()
    np.testing.assert_array_equal(_weights(pruned, "fc_wide")["kernel"], _weights(model, "fc_wide")["kernel"][wide])
    for name in ("c1d", "c2d", "excite"):
        np.testing.assert_array_equal(_weights(pruned, name)["kernel"], _weights(model, name)["kernel"][..., [1, 2, 5], :])
    assert keep_channels(_seeded(_dense_reshape), "p", [0, 1]).get_layer("as_image").target_shape == (1, 1, 2)


# --- refusals ----------------------------------------------------------------------------------------


def _residual():
    x = keras.Input((6, 6, 3), name="image")
    skip = L.Conv2D(4, 1, name="skip")(x)
    p = L.Conv2D(4, 3, padding="same", name="p")(x)
    y = L.Add(name="add_3")([L.ReLU(name="relu")(p), skip])
    return keras.Model(x, L.Dense(2, name="fc")(L.GlobalAveragePooling2D(name="gap")(y)))


def _squeeze_excite():
    x = keras.Input((6, 6, 3), name="image")
    p = L.ReLU(name="relu")(L.Conv2D(4, 3, name="p")(x))
    s = L.Dense(4, activation="sigmoid", name="excite")(L.GlobalAveragePooling2D(name="gap")(p))
    y = L.Multiply(name="scale")([p, L.Reshape((1, 1, 4), name="s_hw")(s)])
    return keras.Model(x, L.Flatten(name="flat")(L.Conv2D(2, 1, name="c")(y)))


def _chain(*layers, shape=(6, 6, 3)):
    """Input -> Conv2D(4, name="p") (or Dense for a flat shape) -> layers..., as a model."""
    x = keras.Input(shape, name="inp")
    y = (L.Conv2D(4, 3, padding="same", name="p") if len(shape) == 3 else L.Dense(4, name="p"))(x)
    for layer in layers:
        y = layer(y)
    return keras.Model(x, y)


def _shared_consumer():
    x = keras.Input((6, 6, 3), name="image")
    shared = L.Conv2D(2, 1, name="shared")
    a = shared(L.Conv2D(4, 1, name="p")(x))
    return keras.Model(x, L.Add(name="add")([a, shared(L.Conv2D(4, 1, name="q")(x))]))


def _ops_consumer():
    x = keras.Input((6, 6, 3), name="image")
    y = keras.ops.relu(L.Conv2D(4, 1, name="p")(x))
    return keras.Model(x, L.Conv2D(2, 1, name="c")(y))


def _nested_consumer():
    inner = keras.Sequential([keras.Input((6, 6, 4)), L.Conv2D(2, 1, name="inner_c")], name="inner")
    x = keras.Input((6, 6, 3), name="image")
    return keras.Model(x, inner(L.Conv2D(4, 1, name="p")(x)))


def _depthwise_producer():
    x = keras.Input((6, 6, 3), name="image")
    return keras.Model(x, L.Conv2D(2, 1, name="c")(L.DepthwiseConv2D(3, name="dw")(x)))


def _lora_consumer():
    model = _chain(L.Flatten(name="flat"), L.Dense(2, name="fc"), shape=(3,))
    model.get_layer("fc").enable_lora(1)
    return model


REFUSALS = {
    "residual_add": (_residual, "p", r"channels tied at Add 'add_3'.*'relu/output:0' \(4 -> [24] entries.*'skip/output:0' \(all channels stay\)"),
    "squeeze_excite": (_squeeze_excite, "p", r"channels tied at Multiply 'scale'"),
    "concat_other_axis": (
        lambda: _chain(lambda y: L.Concatenate(axis=1, name="stack")([y, L.Conv2D(4, 1, name="o")(y)])),
        "p", r"channels tied at Concatenate 'stack'",
    ),
    "reshape_mixes": (
        lambda: _chain(L.Reshape((2, 2), name="split"), L.Dense(2, name="fc"), shape=(3,)),
        "p", r"channels mixed at Reshape 'split'.*Received: input shape \(4,\), output shape \(2, 2\)",
    ),
    "model_output": (lambda: _chain(L.ReLU(name="relu")), "p", r"channels reach a model output at ReLU 'relu'.*'relu/output:0'"),
    "producer_is_output": (lambda: _chain(), "p", r"channels reach a model output at Conv2D 'p'"),
    "softmax": (lambda: _chain(L.Softmax(name="soft"), L.Dense(2, name="fc"), shape=(3,)), "p",
                r"cross-channel activation at Softmax 'soft'"),
    "layer_norm": (lambda: _chain(L.LayerNormalization(name="ln"), L.Conv2D(2, 1, name="c")), "p",
                   r"cannot slice at LayerNormalization 'ln'.*Received: LayerNormalization"),
    "grouped_consumer": (lambda: _chain(L.Conv2D(4, 1, groups=2, name="g")), "p", r"cannot slice at Conv2D 'g'.*groups=2"),
    "grouped_producer": (lambda: _chain(L.Conv2D(4, 1, groups=2, name="g"), L.Conv2D(2, 1, name="c")), "g",
                         r"no output channels of its own at Conv2D 'g'.*groups=2"),
    "depthwise_producer": (_depthwise_producer, "dw", r"at DepthwiseConv2D 'dw'.*prune the layer that feeds it"),
    "not_a_producer": (lambda: _chain(L.ReLU(name="relu"), L.Conv2D(2, 1, name="c")), "relu",
                       r"no output channels of its own at ReLU 'relu'.*Received: ReLU"),
    "softmax_builtin": (lambda: _chain(L.Dense(3, activation="softmax", name="sm"), L.Dense(2, name="fc"), shape=(3,)),
                        "sm", r"built-in activation at Dense 'sm'.*activation='softmax'"),
    "data_format": (lambda: _chain(L.MaxPooling2D(data_format="channels_first", name="cf"), L.Conv2D(2, 1, name="c")),
                    "p", r"channels mixed at MaxPooling2D 'cf'.*as channels \(1\).*on axis 3"),
    "shared_consumer": (_shared_consumer, "p", r"a shared layer at Conv2D 'shared'.*unshare=True"),
    "ops_node": (_ops_consumer, "p", r"cannot slice at Relu 'relu(_\d+)?'.*prepare_model"),
    "nested_model": (_nested_consumer, "p", r"cannot slice at Sequential 'inner'.*inline_nested_models"),
    "lora": (_lora_consumer, "p", r"weights that cannot be sliced at Dense 'fc'.*lora_kernel_a"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_name_the_layer_and_the_reason(case):
    build, producer, message = REFUSALS[case]
    model = build()
    with pytest.raises(ValueError, match=message):
        channel_group(model, producer)
    with pytest.raises(ValueError, match=r"keep_channels\('" + producer + "'\\): .*" + message):
        keep_channels(model, producer, [0, 1])


@pytest.mark.parametrize(
    "kept, received",
    [([], r"kept=\[\]"), ([0, 0], r"kept=\[0, 0\]"), ([1, 4], r"kept=\[1, 4\]"), ([-1], r"kept=\[-1\]"), ([0.5], r"kept=\[0.5\]")],
)
def test_invalid_kept_channels(kept, received):
    model = _chain(L.ReLU(name="relu"), L.Conv2D(2, 1, name="c"))
    with pytest.raises(ValueError, match=r"Expected distinct integer channel indices in \[0, 4\).*Received: " + received):
        keep_channels(model, "p", kept)


def test_shared_producer_is_refused():
    shared = L.Dense(4, name="p")
    x = keras.Input((3,), name="x")
    model = keras.Model(x, L.Dense(2, name="fc")(shared(shared(L.Dense(4, name="d")(x)))))
    with pytest.raises(ValueError, match=r"layer 'p' is called 2 times.*unshare=True"):
        keep_channels(model, "p", [0])
