"""AdaRound on a tiny one-block transformer: the four MultiHeadAttention projections and an
EinsumDense are AdaRounded, reconstruct better than nearest, and load back into a sim."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from aimet_tf import QuantizationSimModel
from aimet_tf.graph import GraphRunner
from aimet_tf.ptq import AdaroundParameters, apply_adaround
from aimet_tf.ptq import adaround
from aimet_tf.quantization import encodings_io

TOKENS, FEATURES, WIDTH, HEADS, HEAD_DIM = 6, 8, 16, 2, 8
PROJECTIONS = ("query_dense", "key_dense", "value_dense", "output_dense")


def _transformer(seed: int = 0) -> keras.Model:
    """EinsumDense embedding, self-attention mha(x, x) with a residual, a GELU Dense MLP, a head."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((TOKENS, FEATURES), name="tokens")
    x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(TOKENS, WIDTH), bias_axes="d", name="embed")(inp)
    a = keras.layers.MultiHeadAttention(HEADS, HEAD_DIM, name="mha")(x, x)
    x = keras.layers.Add(name="add")([x, a])
    x = keras.layers.Dense(WIDTH, activation="gelu", name="mlp")(x)
    out = keras.layers.Dense(4, name="head")(keras.layers.Flatten(name="flat")(x))
    return keras.Model(inp, out)


def _tokens(n: int, seed: int) -> np.ndarray:
    """Tokens with correlated features (a fixed mixing): on white inputs nearest rounding is
    already the best rounding of a layer that reads them."""
    mixing = np.random.default_rng(123).normal(size=(FEATURES, FEATURES))
    z = np.random.default_rng(seed).normal(size=(n, TOKENS, FEATURES))
    return (z @ mixing / np.sqrt(FEATURES)).astype(np.float32)


class _Logs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.layers = []

    def on_epoch_end(self, epoch, logs=None):
        self.layers.append(dict(logs))


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    model = _transformer()
    data = _tokens(160, seed=1)
    folder = tmp_path_factory.mktemp("adaround_mha")
    logs = _Logs()
    params = AdaroundParameters(data, num_batches=5, default_num_iterations=200, learning_rate=1e-2)
    ada = apply_adaround(
        model, params, path=str(folder), filename_prefix="tiny", default_param_bw=4,
        default_quant_scheme="tf_enhanced", verbose=0, callbacks=[logs], steps_per_call=100,
    )
    path = str(folder / "tiny.encodings")
    sim = QuantizationSimModel(ada, quant_scheme="tf_enhanced", default_param_bw=4)
    sim.set_and_freeze_param_encodings(path)
    sim.compute_encodings(data)
    return {"model": model, "ada": ada, "data": data, "encodings": path, "logs": logs, "sim": sim}


def _kernel(model: keras.Model, projection: str) -> np.ndarray:
    return getattr(model.get_layer("mha"), f"_{projection}").kernel.numpy()


def test_every_projection_is_a_layer_of_its_own(result):
    # embed, the four projections, mlp, head: one "epoch" each, in graph order.
    assert len(result["logs"].layers) == 7
    sim = QuantizationSimModel(result["model"], quant_scheme="tf_enhanced", default_param_bw=4)
    sim.compute_encodings(result["data"][:32])
    names = [task.name for task in adaround._plan(result["model"], sim)]
    assert names == ["embed", *(f"mha/{p}" for p in PROJECTIONS), "mlp", "head"]


def test_encodings_are_written_under_the_sims_names(result):
    with open(result["encodings"], encoding="utf-8") as f:
        saved = json.load(f)["param_encodings"]
    sim_names = {name for name, _, _ in result["sim"].param_quantizers()}
    for projection in PROJECTIONS:
        name = encodings_io.param_name("mha", f"_{projection}.kernel")
        assert name == f"mha/{projection}/kernel:0"
        assert name in saved and name in sim_names


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_frozen_sim_quantizes_mha_kernels_to_the_adarounded_values(result, projection):
    """The loaded encodings leave the AdaRounded kernels where they are, and those differ from
    the nearest rounding of the float kernels on the same grid for some weights."""
    sim, ada = result["sim"], result["ada"]
    wrapper = sim.model.get_layer("mha")
    quantizer = wrapper.param_quantizers_by_path()[f"_{projection}.kernel"]
    assert quantizer.frozen
    with open(result["encodings"], encoding="utf-8") as f:
        _, expected = encodings_io.from_dict(json.load(f))
    np.testing.assert_array_equal(quantizer.get_encoding().min, expected[f"mha/{projection}/kernel:0"].min)
    adarounded = _kernel(ada, projection)
    sim_kernel = getattr(wrapper.layer, f"_{projection}").kernel.numpy()
    np.testing.assert_array_equal(sim_kernel, adarounded)
    np.testing.assert_array_equal(quantizer(tf.constant(sim_kernel)).numpy(), adarounded)
    nearest = quantizer(tf.constant(_kernel(result["model"], projection))).numpy()
    changed = np.mean(nearest != adarounded)
    assert 0 < changed < 0.5
    # Every weight moved by at most one grid step from nearest (floor or ceil of the float weight).
    assert np.max(np.abs(nearest - adarounded)) <= np.max(quantizer.get_encoding().scale) * 1.001


def _projection_errors(result, projection: str) -> tuple[float, float]:
    """Reconstruction loss of the projection's output, AdaRounded vs nearest kernel, on held-out
    samples: inputs from the frozen sim (recorded in its MHA wrapper), targets from the float model."""
    sim, model = result["sim"], result["model"]
    held_out = tf.constant(_tokens(64, seed=7))
    wrapper = sim.model.get_layer("mha")
    with wrapper.recording() as record:
        sim.model(held_out)
    query_q, value_q = record.calls[0][0][:2]
    float_mha = model.get_layer("mha")
    x_float = keras.Model(model.inputs, model.get_layer("embed").output)(held_out)
    if projection == "output_dense":
        x_q = record.internal["attention_context"][0]
        target = float_mha(x_float, x_float)
    else:
        x_q = query_q if projection == "query_dense" else value_q
        target = getattr(float_mha, f"_{projection}")(x_float)
    module = getattr(wrapper.layer, f"_{projection}")
    quantizer = wrapper.param_quantizers_by_path()[f"_{projection}.kernel"]
    nearest = quantizer(tf.constant(_kernel(model, projection)))
    channels = adaround.einsum_output_channel_axes(module.equation)

    def error(kernel):
        with keras.StatelessScope(state_mapping=[(module.kernel, tf.constant(kernel))]):
            y = module(x_q)
        merged = lambda t: tf.reshape(t, (*t.shape[: len(t.shape) - channels], -1))
        return float(adaround.reconstruction_loss(merged(y), merged(target)))

    # Through the quantizer: the kernel the frozen sim runs (a float kernel left unrounded would
    # not count).
    return error(quantizer(tf.constant(_kernel(result["ada"], projection)))), error(nearest)


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_projection_reconstructs_better_than_nearest_on_held_out_samples(result, projection):
    ada_error, nearest_error = _projection_errors(result, projection)
    assert ada_error < 0.9 * nearest_error


def test_einsum_dense_in_the_model_is_adarounded(result):
    sim = result["sim"]
    quantizer = sim.model.get_layer("embed").param_quantizers_by_path()["kernel"]
    original = result["model"].get_layer("embed").kernel.numpy()
    adarounded = result["ada"].get_layer("embed").kernel.numpy()
    np.testing.assert_array_equal(quantizer(tf.constant(adarounded)).numpy(), adarounded)
    assert np.any(quantizer(tf.constant(original)).numpy() != adarounded)


def test_cross_attention_operands():
    """query reads the query, key the key (the value when no key is passed), value the value."""
    layer = keras.layers.MultiHeadAttention(2, 4)
    q, v, k = (tf.fill((1, 3, 4), float(i)) for i in range(3))
    assert adaround._attention_operand(layer, "_query_dense", (q, v, k), {}) is q
    assert adaround._attention_operand(layer, "_key_dense", (q, v), {"key": k}) is k
    assert adaround._attention_operand(layer, "_key_dense", (q, v), {}) is v
    assert adaround._attention_operand(layer, "_value_dense", (q, v, k), {}) is v


@pytest.mark.parametrize(
    "equation, expected",
    [("abc,cde->abde", 2), ("abcd,cde->abe", 1), ("ab,bc->ac", 1), ("abc,cd->abd", 1)],
)
def test_einsum_output_channel_axes(equation, expected):
    assert adaround.einsum_output_channel_axes(equation) == expected


@pytest.mark.parametrize("equation", ["abc->abc", "ab,bc", "ab,bc->ca", 3])
def test_einsum_output_channel_axes_rejects_bad_equations(equation):
    with pytest.raises(ValueError, match="Expected"):
        adaround.einsum_output_channel_axes(equation)


def test_graph_runner_call_batches_fill_every_input():
    inp = keras.Input((3, 4), name="x")
    y = keras.layers.Dense(4, name="d")(inp)
    out = keras.layers.MultiHeadAttention(1, 2, name="att")(y, inp)
    model = keras.Model(inp, out)
    samples = _tokens(10, seed=3)[:, :3, :4]
    runner = GraphRunner(model, samples, batch_size=4)
    batches = list(runner.call_batches("att"))
    assert [len(args[0]) for args, _ in batches] == [4, 4, 2]
    query = np.concatenate([args[0] for args, _ in batches])
    value = np.concatenate([args[1] for args, _ in batches])
    np.testing.assert_allclose(query, model.get_layer("d")(samples).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(value, samples)


def test_wrapper_recording_collects_quantized_inputs_and_internal_tensors(result):
    wrapper = result["sim"].model.get_layer("mha")
    x = tf.constant(np.random.default_rng(0).normal(size=(2, TOKENS, WIDTH)).astype(np.float32))
    with wrapper.recording() as record:
        wrapper(x, x)
        with pytest.raises(RuntimeError, match="already recording"):
            with wrapper.recording():
                pass
    assert len(record.calls) == 1
    assert set(record.internal) == {"query", "key", "value", "attention_scores", "scaled_scores",
                                    "attention_probs", "attention_context"}
    context = record.internal["attention_context"][0]
    assert tuple(context.shape) == (2, TOKENS, HEADS, HEAD_DIM)
    assert wrapper._recording is None
    wrapper(x, x)  # no recording outside the block
    assert len(record.calls) == 1


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, calls: int):
        super().__init__()
        self.calls, self.seen = calls, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.calls:
            self.model.stop_training = True


def test_an_interrupted_run_resumes_at_the_projection_it_stopped_in(result, tmp_path):
    """Stopped inside the key projection (2 calls per layer: embed, query, then one of key), the
    rerun resumes from the checkpoint and ends with the uninterrupted run's kernels."""
    params = AdaroundParameters(result["data"], num_batches=5, default_num_iterations=200, learning_rate=1e-2)
    kwargs = dict(path=str(tmp_path), filename_prefix="tiny", default_param_bw=4,
                  default_quant_scheme="tf_enhanced", verbose=0, steps_per_call=100)
    apply_adaround(result["model"], params, callbacks=[_StopAfter(5)], **kwargs)
    logs = _Logs()
    resumed = apply_adaround(result["model"], params, callbacks=[logs], **kwargs)
    assert [bool(l.get("resumed")) for l in logs.layers] == [True, True] + [False] * 5
    for projection in PROJECTIONS:
        np.testing.assert_array_equal(_kernel(resumed, projection), _kernel(result["ada"], projection))
    for name in ("embed", "mlp", "head"):
        np.testing.assert_array_equal(resumed.get_layer(name).kernel.numpy(), result["ada"].get_layer(name).kernel.numpy())
