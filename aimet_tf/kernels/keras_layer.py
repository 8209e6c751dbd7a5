"""`IntegerModelLayer`: a TFLite model's integer path as a Keras 3 layer (TensorFlow backend).

The layer holds no weights of its own: the integer constants of the model are baked into the
C++ TF ops it calls, so it can sit inside a Keras model, a `tf.function` or a SavedModel graph
(which then needs the kernel library loaded, see `aimet_tf.kernels.build`).
"""

from __future__ import annotations

import keras

__all__ = ["IntegerModelLayer"]


class IntegerModelLayer(keras.layers.Layer):
    """Runs an `IntegerExecutor`'s model with the C++ ops, in a Keras / TF graph.

    Inputs and outputs have the TFLite model's dtypes (int8 or float32) and shapes, with any
    batch size. Not trainable.

    Args:
        executor: the `IntegerExecutor` to run.
        name: layer name.

    Example:
        >>> layer = IntegerExecutor(tflite_bytes).as_keras_layer()
        >>> inp = keras.Input((32, 32, 3), dtype="int8")
        >>> model = keras.Model(inp, layer(inp))
    """

    def __init__(self, executor, name: str | None = None, **kwargs):
        super().__init__(name=name, trainable=False, autocast=False, **kwargs)
        if len(executor.input_tensors) != 1:
            raise ValueError(
                f"IntegerModelLayer supports single-input models. Received a model with {len(executor.input_tensors)} inputs."
            )
        self.executor = executor

    def call(self, inputs):
        return self.executor.call_tf(inputs)

    def compute_output_spec(self, inputs):
        outputs = [
            keras.KerasTensor((inputs.shape[0], *t.shape[1:]), dtype=str(t.dtype)) for t in self.executor.output_tensors
        ]
        return outputs[0] if len(outputs) == 1 else outputs
