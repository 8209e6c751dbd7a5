"""calibration_data: one reader of calibration data for compute_encodings, bias correction,
AdaRound and BN re-estimation."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from aimet_tf import QuantizationSimModel
from aimet_tf.ptq import adaround, correct_bias
from aimet_tf.qat import reestimate_bn_stats
from aimet_tf.quantization import calibration_data as cd
from aimet_tf.testing import models

IMAGE = [cd.InputSpec("image", (None, 16, 16, 3), "float32")]
TWO = [cd.InputSpec("image", (None, 8, 8, 3), "float32"), cd.InputSpec("extra", (None, 5), "float32")]


def _images(n, seed=0):
    return models.random_images(n, seed=seed)


def _sizes(data, inputs=IMAGE, **kwargs):
    return [tuple(a.shape[0] for a in batch) for batch in cd.iterate_batches(data, inputs, **kwargs)]


def _two(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 3)).astype(np.float32), rng.normal(size=(n, 5)).astype(np.float32)


# -- single input: every form ------------------------------------------------------------------


def test_list_of_two_batches_is_two_batches_not_x_y():
    a, b = _images(6), _images(4, seed=1)
    batches = list(cd.iterate_batches([a, b], IMAGE))
    assert [len(batch) for batch in batches] == [1, 1]
    np.testing.assert_array_equal(batches[0][0], a)
    np.testing.assert_array_equal(batches[1][0], b)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda x, y: x, [(16,), (16,), (8,)]),
        (lambda x, y: (x, y), [(16,), (16,), (8,)]),
        (lambda x, y: (x, y, np.ones(len(x))), [(16,), (16,), (8,)]),
        (lambda x, y: {"image": x}, [(16,), (16,), (8,)]),
        (lambda x, y: tf.constant(x), [(16,), (16,), (8,)]),
        (lambda x, y: tf.data.Dataset.from_tensor_slices(x).batch(10), [(10,), (10,), (10,), (10,)]),
        (lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).batch(20), [(20,), (20,)]),
        (lambda x, y: tf.data.Dataset.from_tensor_slices((x, y, y)).batch(40), [(40,)]),
        (lambda x, y: [(x[:30], y[:30]), (x[30:], y[30:])], [(30,), (10,)]),
        (lambda x, y: (b for b in (x[:5], x[5:])), [(5,), (35,)]),
    ],
)
def test_single_input_forms(make, expected):
    x, y = _images(40), np.arange(40)
    assert _sizes(make(x, y), batch_size=16) == expected


def test_num_batches_stops_an_endless_dataset():
    ds = tf.data.Dataset.from_tensor_slices(_images(8)).batch(4).repeat()
    assert _sizes(ds, num_batches=3) == [(4,), (4,), (4,)]


def test_batches_are_cast_to_the_input_dtype():
    (batch,) = cd.iterate_batches(_images(4).astype(np.float64), IMAGE)
    assert batch[0].dtype == np.float32


def test_tuple_of_two_input_shaped_arrays_warns(caplog):
    a, b = _images(4), _images(4, seed=1)
    with caplog.at_level(logging.WARNING):
        batches = list(cd.iterate_batches((a, b), IMAGE))
    assert len(batches) == 1 and "Pass a list" in caplog.text


# -- multi input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda a, b, y: (a, b),
        lambda a, b, y: ((a, b), y),
        lambda a, b, y: ([a, b], y, y),
        lambda a, b, y: {"extra": b, "image": a},
        lambda a, b, y: ({"extra": b, "image": a}, y),
        lambda a, b, y: [[a[:7], b[:7]], (a[7:], b[7:])],
        lambda a, b, y: [((a[:7], b[:7]), y[:7]), ((a[7:], b[7:]), y[7:])],
        lambda a, b, y: tf.data.Dataset.from_tensor_slices((a, b)).batch(7),
        lambda a, b, y: tf.data.Dataset.from_tensor_slices(((a, b), y)).batch(7),
        lambda a, b, y: tf.data.Dataset.from_tensor_slices({"image": a, "extra": b}).batch(7),
    ],
)
def test_multi_input_forms(make):
    a, b = _two(10)
    batches = list(cd.iterate_batches(make(a, b, np.arange(10)), TWO, batch_size=7))
    assert [tuple(x.shape[0] for x in batch) for batch in batches] == [(7, 7), (3, 3)]
    np.testing.assert_array_equal(np.concatenate([batch[0] for batch in batches]), a)
    np.testing.assert_array_equal(np.concatenate([batch[1] for batch in batches]), b)


def test_multi_input_model_calibrates_from_every_form():
    model = models.two_input_model()
    a, b = _two(12)
    reference = QuantizationSimModel(model, quant_scheme="tf")
    reference.compute_encodings(lambda m, args: m([args[0], args[1]], training=False), (a, b))
    expected = reference.get_encodings_dict()
    labels = np.zeros(12)
    for data in ((a, b), [a, b], ((a, b), labels), {"image": a, "extra": b}, [(a[:5], b[:5]), (a[5:], b[5:])],
                 [[a[:5], b[:5]], [a[5:], b[5:]]], (((a[:k], b[:k]), labels[:k]) for k in (12,)),
                 tf.data.Dataset.from_tensor_slices(((a, b), labels)).batch(4),
                 tf.data.Dataset.from_tensor_slices((a, b)).batch(5),
                 tf.data.Dataset.from_tensor_slices({"image": a, "extra": b}).batch(7),
                 (lambda m, args: m(list(args), training=False), (a, b))):
        sim = QuantizationSimModel(model, quant_scheme="tf")
        sim.compute_encodings(data)
        assert sim.get_encodings_dict() == expected


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, pattern",
    [
        (np.zeros((4, 16, 16, 4), np.float32), r"Expected batch 0 .* shape \(None, 16, 16, 3\).*Received: shape=\(4, 16, 16, 4\)"),
        (np.zeros((4, 16, 16), np.float32), r"Received: shape=\(4, 16, 16\)"),
        (tf.data.Dataset.from_tensor_slices(np.zeros((4, 16, 16, 3), np.float32)), r"Received: shape=\(16, 16, 3\)\. This is one unbatched sample"),
        (np.array([["a"]] * 4), r"Expected numeric data for input 'image'.*Received: dtype=<U1"),
        (tf.data.Dataset.from_tensor_slices(["a/b", "c"]).batch(2), r"Expected numeric data.*Received: dtype=string"),
        ([np.zeros((2, 16, 16, 3), np.float32), np.arange(2)], r"Expected batch 1 .*Received: shape=\(2,\)"),
        ([], r"Expected at least one batch of calibration data. Received: an empty list"),
        (np.zeros((0, 16, 16, 3), np.float32), r"Expected at least one batch"),
        (np.full((2, 16, 16, 3), np.nan, np.float32), r"Expected finite values.*Received: 1536 NaN"),
        (np.full((2, 16, 16, 3), 1e300), r"Expected finite values.*1536 Inf values \(after casting to float32\)"),
    ],
)
def test_errors_say_expected_and_received(data, pattern):
    with pytest.raises(ValueError, match=pattern):
        list(cd.iterate_batches(data, IMAGE))


@pytest.mark.parametrize(
    "data, pattern",
    [
        (lambda a, b: a, r"Expected 2 inputs \['image', 'extra'\].*Received: one array of shape \(6, 8, 8, 3\)"),
        (lambda a, b: {"image": a}, r"dict keyed by the model's input names \['image', 'extra'\]. Received: keys \['image'\]"),
        (lambda a, b: (a, b[:5]), r"as many samples for every input.*image=6, extra=5"),
        (lambda a, b: [(a, b, a)], r"Expected batch 0 as x, \(x, y\) or \(x, y, w\)"),
    ],
)
def test_multi_input_errors(data, pattern):
    a, b = _two(6)
    with pytest.raises(ValueError, match=pattern):
        list(cd.iterate_batches(data(a, b), TWO))


def test_sim_reports_shape_errors_without_tf_binding_dump():
    sim = QuantizationSimModel(models.conv_bn_relu_model(), quant_scheme="tf")
    with pytest.raises(ValueError) as info:
        sim.compute_encodings(tf.data.Dataset.from_tensor_slices(_images(4)))
    assert "Binding inputs" not in str(info.value) and "unbatched sample" in str(info.value)
    with pytest.raises(TypeError, match="Received: str"):
        sim.compute_encodings("/data/images")


# -- AIMET callbacks ---------------------------------------------------------------------------


class _CallbackFunc:
    """AIMET's CallbackFunc shape: func and func_callback_args."""

    def __init__(self, func, func_callback_args=None):
        self.func = func
        self.func_callback_args = func_callback_args


def test_callback_forms_run_in_compute_encodings_only():
    x = _images(8)
    seen = []

    def forward(model, args):
        seen.append(args.shape[0])
        model(args, training=False)

    for form in ((forward, x), _CallbackFunc(forward, x)):
        sim = QuantizationSimModel(models.conv_bn_relu_model(), quant_scheme="tf")
        sim.compute_encodings(form)
        assert not sim.uncalibrated_quantizers()
    assert seen == [8, 8]
    with pytest.raises(TypeError, match="Received: a forward-pass callback 'forward'"):
        list(cd.iterate_batches((forward, x), IMAGE))


# -- every pass reads a list of two batches as two batches -------------------------------------


def test_sim_uses_both_batches_of_a_two_batch_list():
    model = models.conv_bn_relu_model()
    a, b = _images(8), 3.0 * _images(8, seed=1)
    listed = QuantizationSimModel(model, quant_scheme="tf")
    listed.compute_encodings([a, b])
    whole = QuantizationSimModel(model, quant_scheme="tf")
    whole.compute_encodings(np.concatenate([a, b]))
    listed_acts = listed.get_encodings_dict()["activation_encodings"]
    whole_acts = whole.get_encodings_dict()["activation_encodings"]
    assert listed_acts.keys() == whole_acts.keys()
    for name in listed_acts:
        # Equal up to float32 rounding: a matmul over a batch of 8 and one of 16 may sum in another
        # order (seen: the Dense output's max one ulp apart). b is 3x a, so a missed batch is far off.
        for key in ("min", "max"):
            np.testing.assert_allclose(listed_acts[name][0][key], whole_acts[name][0][key], rtol=1e-6, err_msg=name)
    assert listed.get_encodings_dict()["param_encodings"] == whole.get_encodings_dict()["param_encodings"]


def test_bias_correction_uses_both_batches():
    sim = QuantizationSimModel(models.conv_bn_relu_model(), quant_scheme="tf", default_param_bw=4)
    sim.compute_encodings(_images(16))
    report = correct_bias(sim, [_images(8), _images(6, seed=1)], verbose=0)
    assert report.num_samples == 14


def test_adaround_uses_both_batches():
    samples = adaround._collect_samples([_images(8), _images(6, seed=1)], models.conv_bn_relu_model(), 2, 32)
    assert samples.shape == (14, 16, 16, 3)


def test_bn_reestimation_uses_both_batches():
    model = models.conv_bn_relu_model()
    handle = reestimate_bn_stats(model, [_images(8), 2.0 * _images(8, seed=1)], bn_num_batches=10)
    assert handle.num_batches == 2


def test_bias_correction_reads_multi_input_data():
    a, b = _two(12)
    sim = QuantizationSimModel(models.two_input_model(), quant_scheme="tf", default_param_bw=4)
    sim.compute_encodings({"image": a, "extra": b})
    report = correct_bias(sim, [((a[:5], b[:5]), None), {"image": a[5:], "extra": b[5:]}], verbose=0)
    assert report.num_samples == 12
    assert [r.layer for r in report.corrected] == ["conv", "side", "head"]
