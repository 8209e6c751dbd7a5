"""Rescaling, Normalization and unfoldable batch norms become 1x1 depthwise convs for TFLite."""

import keras
import numpy as np

from aimet_tf.export.prepare import affine_layers_as_depthwise, prepare_model_for_tflite

L = keras.layers


def _model():
    x = keras.Input((8, 8, 3))
    y = L.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(x)
    y = L.Normalization(mean=[0.1, 0.2, 0.3], variance=[1.0, 2.0, 4.0], name="norm")(y)
    y = L.BatchNormalization(name="bn")(L.ReLU(name="relu")(y))  # after a ReLU: nothing to fold into
    model = keras.Model(x, L.Conv2D(2, 3, padding="same", name="conv")(y))  # padded: no backward fold
    model.get_layer("bn").set_weights([np.full(3, 1.5, "f"), np.full(3, 0.2, "f"), np.full(3, 0.3, "f"),
                                       np.full(3, 2.0, "f")])
    return model


def test_same_function_as_depthwise_convs_with_the_same_names():
    model = _model()
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    rewritten = affine_layers_as_depthwise(model)
    kinds = {layer.name: type(layer).__name__ for layer in rewritten.layers}
    assert kinds["rescale"] == kinds["norm"] == kinds["bn"] == "DepthwiseConv2D"
    np.testing.assert_allclose(rewritten(x), model(x), rtol=1e-5, atol=1e-6)
    kept = affine_layers_as_depthwise(model, batch_norms=False)
    assert type(kept.get_layer("bn")).__name__ == "BatchNormalization"
    # prepare_model_for_tflite: the batch norm becomes a conv only when batch norms are folded.
    assert type(prepare_model_for_tflite(model).get_layer("bn")).__name__ == "DepthwiseConv2D"
    assert type(prepare_model_for_tflite(model, fold_batch_norms=False).get_layer("bn")).__name__ == (
        "BatchNormalization")
