"""Keras layers that aimet_tf's models need and Keras does not provide.

A vision transformer needs two learned tensors that no built-in Keras layer holds:

* :class:`ClassToken` prepends one learned ``[1, 1, D]`` token (weight ``token``) to a
  ``[N, T, D]`` sequence, giving ``[N, T + 1, D]``;
* :class:`PositionEmbedding` adds one learned ``[1, T, D]`` table (weight ``embeddings``) to a
  ``[N, T, D]`` sequence.

Both are plain ``keras.ops`` code with one weight each, so a quantizer can treat that weight as
a parameter like a kernel. They are registered for serialization under the package name
``aimet_tf`` (``"aimet_tf>ClassToken"``, ``"aimet_tf>PositionEmbedding"``): importing this
module is enough for ``keras.saving.load_model`` to rebuild a model that uses them.

Example:
    >>> tokens = keras.Input((49, 64))
    >>> x = ClassToken(name="cls_token")(tokens)            # [N, 50, 64]
    >>> x = PositionEmbedding(name="pos_embed")(x)          # [N, 50, 64]
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["ClassToken", "PositionEmbedding"]

_PACKAGE = "aimet_tf"
_DEFAULT_STDDEV = 0.02


def _sequence_shape(layer: keras.layers.Layer, input_shape: tuple[int | None, ...]) -> tuple[int | None, int]:
    """Returns ``(T, D)`` of a ``[N, T, D]`` input shape, with ``D`` known.

    Raises:
        ValueError: If the shape is not rank 3 or its last dimension is unknown.
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] is None:
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' expects a sequence of shape [N, T, D] with a "
            f"known D. Received: input shape {shape}."
        )
    return shape[1], int(shape[2])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClassToken(keras.layers.Layer):
    """Prepends one learned token to every sequence of a batch: ``[N, T, D] -> [N, T + 1, D]``.

    Output ``[:, 0, :]`` is the token (the same for every example); ``[:, 1:, :]`` is the input.

    Args:
        initializer: Initializer of the ``[1, 1, D]`` weight ``token`` (name, config or
            ``keras.initializers.Initializer``). Default: zeros, as in ViT.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).
    """

    def __init__(self, initializer: Any = "zeros", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Creates ``token`` of shape ``[1, 1, D]``.

        Raises:
            ValueError: If the input is not ``[N, T, D]`` with a known ``D``.
        """
        _, depth = _sequence_shape(self, input_shape)
        self.token = self.add_weight(name="token", shape=(1, 1, depth), initializer=self.initializer)

    def call(self, inputs: Any) -> Any:
        """Returns ``concat([token] * N, inputs)`` along the sequence axis."""
        batch = keras.ops.shape(inputs)[0]
        token = keras.ops.cast(self.token, inputs.dtype)
        token = keras.ops.broadcast_to(token, (batch, 1, keras.ops.shape(self.token)[-1]))
        return keras.ops.concatenate([token, inputs], axis=1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Returns ``[N, T + 1, D]`` (``T + 1`` unknown if ``T`` is)."""
        length, depth = _sequence_shape(self, input_shape)
        return (input_shape[0], None if length is None else length + 1, depth)

    def get_config(self) -> dict[str, Any]:
        """Returns the layer config, with the initializer serialized."""
        config = super().get_config()
        config["initializer"] = keras.initializers.serialize(self.initializer)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """Adds one learned table to every sequence of a batch: ``[N, T, D] -> [N, T, D]``.

    The table (weight ``embeddings``, shape ``[1, T, D]``) is fixed by the first input's shape,
    so ``T`` must be known when the layer is built.

    Args:
        initializer: Initializer of ``embeddings`` (name, config or
            ``keras.initializers.Initializer``). Default: ``RandomNormal(stddev=0.02)``.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).
    """

    def __init__(self, initializer: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if initializer is None:
            initializer = keras.initializers.RandomNormal(stddev=_DEFAULT_STDDEV)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Creates ``embeddings`` of shape ``[1, T, D]``.

        Raises:
            ValueError: If the input is not ``[N, T, D]`` with known ``T`` and ``D``.
        """
        length, depth = _sequence_shape(self, input_shape)
        if length is None:
            raise ValueError(
                f"PositionEmbedding '{self.name}' needs a known sequence length T to size its "
                f"table. Received: input shape {tuple(input_shape)}."
            )
        self.embeddings = self.add_weight(
            name="embeddings", shape=(1, int(length), depth), initializer=self.initializer
        )

    def call(self, inputs: Any) -> Any:
        """Returns ``inputs + embeddings`` (broadcast over the batch)."""
        return inputs + keras.ops.cast(self.embeddings, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Returns the input shape."""
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        """Returns the layer config, with the initializer serialized."""
        config = super().get_config()
        config["initializer"] = keras.initializers.serialize(self.initializer)
        return config
