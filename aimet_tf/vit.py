"""A small vision transformer (ViT) for 28x28 grey images, built from standard Keras layers.

:func:`vit_model` builds the network behind the bundled Fashion-MNIST ViT
(``aimet_tf/assets/fashion_mnist_vit.keras``, trained by ``examples/train_vit.py``):

* patch embedding: ``Conv2D(dim, patch, strides=patch)`` (``patch_embed``) and ``Reshape`` to
  ``[N, T, dim]`` tokens (``patch_tokens``; ``T = (28 / patch) ** 2``);
* a learned class token (``cls_token``, :class:`aimet_tf.layers.ClassToken`) and learned position
  embeddings (``pos_embed``, :class:`aimet_tf.layers.PositionEmbedding`);
* ``depth`` pre-norm encoder blocks, block ``i`` (from 1) made of
  ``block{i}_ln1`` (LayerNormalization) -> ``block{i}_mha`` (MultiHeadAttention, self-attention)
  -> ``block{i}_add1`` (Add, residual) -> ``block{i}_ln2`` -> ``block{i}_mlp1`` (Dense, GELU)
  -> ``block{i}_mlp2`` (Dense) -> ``block{i}_add2`` (Add, residual), with optional ``Dropout``
  after the attention and each Dense;
* ``final_ln`` (LayerNormalization), the class token picked out by ``cls_crop``
  (``Cropping1D``) and ``cls_flatten`` (``Flatten``), and ``logits`` (``Dense(classes)``, no
  softmax).

Only ``ClassToken`` and ``PositionEmbedding`` are aimet_tf layers; everything else is built into
Keras.

Example:
    >>> model = vit_model()
    >>> model.output_shape, model.count_params()
    ((None, 10), 205962)
"""

from __future__ import annotations

import keras

from aimet_tf.layers import ClassToken, PositionEmbedding

__all__ = ["vit_model"]

_LN_EPSILON = 1e-6


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"vit_model expects {name} > 0. Received: {name}={value}.")


def _encoder_block(x: keras.KerasTensor, index: int, num_heads: int, mlp_dim: int,
                   dropout: float) -> keras.KerasTensor:
    """One pre-norm block: ``x + MHA(LN(x))`` then ``y + MLP(LN(y))``."""
    dim = x.shape[-1]
    name = f"block{index}"
    h = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name=f"{name}_ln1")(x)
    h = keras.layers.MultiHeadAttention(
        num_heads=num_heads, key_dim=dim // num_heads, dropout=dropout, name=f"{name}_mha"
    )(h, h)
    if dropout > 0:
        h = keras.layers.Dropout(dropout, name=f"{name}_drop1")(h)
    x = keras.layers.Add(name=f"{name}_add1")([x, h])
    h = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name=f"{name}_ln2")(x)
    h = keras.layers.Dense(mlp_dim, activation="gelu", name=f"{name}_mlp1")(h)
    if dropout > 0:
        h = keras.layers.Dropout(dropout, name=f"{name}_drop2")(h)
    h = keras.layers.Dense(dim, name=f"{name}_mlp2")(h)
    if dropout > 0:
        h = keras.layers.Dropout(dropout, name=f"{name}_drop3")(h)
    return keras.layers.Add(name=f"{name}_add2")([x, h])


def vit_model(
    image_shape: tuple[int, int, int] = (28, 28, 1),
    patch_size: int = 4,
    dim: int = 64,
    depth: int = 6,
    num_heads: int = 4,
    mlp_dim: int = 128,
    classes: int = 10,
    dropout: float = 0.0,
    name: str = "fashion_mnist_vit",
) -> keras.Model:
    """Builds the small vision transformer (Functional API, deterministic layer names).

    Args:
        image_shape: ``(H, W, C)`` of the input images; ``H`` and ``W`` must be multiples of
            ``patch_size``.
        patch_size: Side of the square, non-overlapping patches.
        dim: Token width ``D``; must be a multiple of ``num_heads``.
        depth: Number of encoder blocks.
        num_heads: Attention heads per block (each of width ``dim // num_heads``).
        mlp_dim: Hidden width of each block's MLP.
        classes: Number of output logits.
        dropout: Dropout rate in [0, 1) after attention and each MLP Dense (0: no Dropout layers).
        name: Model name.

    Returns:
        An uncompiled ``keras.Model`` mapping float32 ``[N, H, W, C]`` images to
        ``[N, classes]`` logits. The defaults give 6 blocks and 205,962 parameters.

    Raises:
        ValueError: If a size is not positive, the image sides are not multiples of
            ``patch_size``, ``dim`` is not a multiple of ``num_heads`` or ``dropout`` is
            outside [0, 1).
    """
    _check_positive(patch_size=patch_size, dim=dim, depth=depth, num_heads=num_heads,
                    mlp_dim=mlp_dim, classes=classes)
    if len(image_shape) != 3:
        raise ValueError(f"vit_model expects image_shape (H, W, C). Received: {image_shape}.")
    height, width, _ = image_shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"vit_model expects image sides that are multiples of patch_size={patch_size}. "
            f"Received: image_shape={tuple(image_shape)}."
        )
    if dim % num_heads:
        raise ValueError(
            f"vit_model expects dim to be a multiple of num_heads. Received: dim={dim}, "
            f"num_heads={num_heads}."
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"vit_model expects dropout in [0, 1). Received: dropout={dropout}.")

    tokens = (height // patch_size) * (width // patch_size)
    inputs = keras.Input(shape=tuple(image_shape), name="image")
    x = keras.layers.Conv2D(dim, patch_size, strides=patch_size, name="patch_embed")(inputs)
    x = keras.layers.Reshape((tokens, dim), name="patch_tokens")(x)
    x = ClassToken(name="cls_token")(x)
    x = PositionEmbedding(name="pos_embed")(x)
    for index in range(1, depth + 1):
        x = _encoder_block(x, index, num_heads, mlp_dim, dropout)
    x = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name="final_ln")(x)
    x = keras.layers.Cropping1D(cropping=(0, tokens), name="cls_crop")(x)
    x = keras.layers.Flatten(name="cls_flatten")(x)
    logits = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)
