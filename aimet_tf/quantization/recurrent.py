"""Quantized forward passes of Keras' recurrent layers: LSTM, GRU and SimpleRNN.

A recurrent layer is one Keras layer, but a target runs it as a small graph per time step: two
matmuls, gate activations, products and sums. AIMET's Keras LSTM quantizes each of those tensors
(``aimet_tensorflow/keras/rnn``), with one encoding per tensor shared by every time step. These
forwards do the same: they recompute the layer's recurrence with ``tf.scan`` and pass each
intermediate tensor through ``quantize(name, tensor)``, which the ``QuantizationWrapper`` maps to the
wrapper's internal quantizer of that name (identity when the slot is empty). The weights are read
from the layer's variables, so the wrapper's parameter quantizers (``cell.kernel``,
``cell.recurrent_kernel``) apply as they do for any layer.

The recurrences are Keras' own (``keras/src/layers/rnn``), checked to 1e-6 against the layers with
every quantizer off (``tests/quantization/test_recurrent.py``):

- SimpleRNN: h_t = act(x_t W + b + h_{t-1} U).
- LSTM (gate order i, f, c, o): z = x_t W + b + h_{t-1} U; i, f, o = rec_act(z_i, z_f, z_o);
  c~ = act(z_c); c_t = f * c_{t-1} + i * c~; h_t = o * act(c_t).
- GRU (gate order z, r, h): with ``reset_after`` (Keras' default), x_t W + b_in and
  h_{t-1} U + b_rec split into three; z = rec_act(x_z + r_z), r = rec_act(x_r + r_r),
  h~ = act(x_h + r * r_h). Without it, h~ = act(x_h + (r * h_{t-1}) U_h). Then
  h_t = z * h_{t-1} + (1 - z) * h~.

Tensor names (in the encodings: ``"<layer>/<name>:0"``) are listed in ``INTERNAL_TENSORS``. The
hidden state ``h`` is quantized inside the loop, because the next step's matmul reads it: the
layer's outputs are therefore already on that grid, and the layers get no separate output
quantizer.

Not supported, with an error naming the layer: masks (``Masking``, ``mask_zero``), ``stateful``
layers, dropout during training (set ``dropout=0`` and ``recurrent_dropout=0`` for QAT), and
LSTM/GRU ``initial_state`` given as more tensors than the layer's states.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import tensorflow as tf
from keras import ops

__all__ = ["INTERNAL_TENSORS", "recurrent_forward"]

Quantize = Callable[[str, Any], Any]

INTERNAL_TENSORS: dict[type, tuple[str, ...]] = {
    keras.layers.SimpleRNN: ("input_projection", "recurrent_projection", "preactivation", "hidden_state"),
    keras.layers.LSTM: (
        "input_projection", "recurrent_projection", "gate_preactivation",
        "input_gate", "forget_gate", "cell_candidate", "output_gate",
        "forget_carry", "input_carry", "cell_state", "cell_activation", "hidden_state",
    ),
    keras.layers.GRU: (
        "input_projection", "recurrent_projection", "update_gate", "reset_gate", "reset_recurrent",
        "candidate_preactivation", "candidate", "hidden_state",
    ),
}
"""Per layer class, the names of the intermediate tensors that get activation quantizers."""


def _refuse_unsupported(layer: keras.layers.Layer, mask: Any, training: bool) -> None:
    kind = type(layer).__name__
    if mask is not None:
        raise NotImplementedError(
            f"Layer {layer.name!r} ({kind}) received a mask: the quantized {kind} does not "
            "implement masked time steps. Expected unmasked sequences (no Masking layer or "
            "Embedding(mask_zero=True) before it)."
        )
    if layer.stateful:
        raise NotImplementedError(
            f"Layer {layer.name!r} ({kind}) is stateful: the quantized {kind} keeps no state "
            "between calls. Expected stateful=False."
        )
    if training and (layer.cell.dropout > 0 or layer.cell.recurrent_dropout > 0):
        raise NotImplementedError(
            f"Layer {layer.name!r} ({kind}) trains with dropout={layer.cell.dropout}, "
            f"recurrent_dropout={layer.cell.recurrent_dropout}: the quantized {kind} does not "
            "apply recurrent dropout masks. Expected dropout=0 and recurrent_dropout=0 for "
            "quantization-aware training (rebuild the layer with them and copy the weights)."
        )


def _initial_states(layer: keras.layers.Layer, sequences: Any, initial_state: Any, count: int) -> list:
    if initial_state is None:
        batch = ops.shape(sequences)[0]
        return [ops.zeros((batch, layer.cell.units), dtype=sequences.dtype) for _ in range(count)]
    states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
    if len(states) != count:
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) expected {count} initial state tensor(s). "
            f"Received: {len(states)}"
        )
    return [ops.convert_to_tensor(s, dtype=sequences.dtype) for s in states]


def _bias_parts(cell: Any) -> tuple[Any, Any]:
    """(input bias, recurrent bias) of a cell; either may be None."""
    if not cell.use_bias:
        return None, None
    if isinstance(cell, keras.layers.GRUCell) and cell.reset_after:
        return cell.bias[0], cell.bias[1]
    return cell.bias, None


def _simple_rnn_step(cell: Any, quantize: Quantize) -> Callable:
    def step(x_proj, states):
        (h_prev,) = states
        rec = quantize("recurrent_projection", ops.matmul(h_prev, cell.recurrent_kernel))
        pre = quantize("preactivation", x_proj + rec)
        h = quantize("hidden_state", cell.activation(pre) if cell.activation is not None else pre)
        return [h], h

    return step


def _lstm_step(cell: Any, quantize: Quantize) -> Callable:
    def step(x_proj, states):
        h_prev, c_prev = states
        rec = quantize("recurrent_projection", ops.matmul(h_prev, cell.recurrent_kernel))
        z = quantize("gate_preactivation", x_proj + rec)
        z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
        i = quantize("input_gate", cell.recurrent_activation(z_i))
        f = quantize("forget_gate", cell.recurrent_activation(z_f))
        c_new = quantize("cell_candidate", cell.activation(z_c))
        o = quantize("output_gate", cell.recurrent_activation(z_o))
        carry = quantize("forget_carry", f * c_prev)
        added = quantize("input_carry", i * c_new)
        c = quantize("cell_state", carry + added)
        h = quantize("hidden_state", o * quantize("cell_activation", cell.activation(c)))
        return [h, c], h

    return step


def _gru_step(cell: Any, quantize: Quantize) -> Callable:
    units = cell.units
    _, recurrent_bias = _bias_parts(cell)

    def step(x_proj, states):
        (h_prev,) = states
        x_z, x_r, x_h = ops.split(x_proj, 3, axis=-1)
        if cell.reset_after:
            rec = ops.matmul(h_prev, cell.recurrent_kernel)
            if recurrent_bias is not None:
                rec = rec + recurrent_bias
        else:
            rec = ops.matmul(h_prev, cell.recurrent_kernel[:, : 2 * units])
        rec = quantize("recurrent_projection", rec)
        r_z, r_r = rec[:, :units], rec[:, units : 2 * units]
        z = quantize("update_gate", cell.recurrent_activation(x_z + r_z))
        r = quantize("reset_gate", cell.recurrent_activation(x_r + r_r))
        if cell.reset_after:
            reset_rec = quantize("reset_recurrent", r * rec[:, 2 * units :])
        else:
            gated = quantize("reset_recurrent", r * h_prev)
            reset_rec = ops.matmul(gated, cell.recurrent_kernel[:, 2 * units :])
        pre = quantize("candidate_preactivation", x_h + reset_rec)
        hh = quantize("candidate", cell.activation(pre))
        h = quantize("hidden_state", z * h_prev + (1.0 - z) * hh)
        return [h], h

    return step


_STEPS = {
    keras.layers.SimpleRNN: (_simple_rnn_step, 1),
    keras.layers.LSTM: (_lstm_step, 2),
    keras.layers.GRU: (_gru_step, 1),
}


def _recurrence_of(layer: keras.layers.Layer) -> tuple[Callable, int]:
    for cls in type(layer).__mro__:
        if cls in _STEPS:
            return _STEPS[cls]
    raise TypeError(
        f"Expected a keras.layers.SimpleRNN, LSTM or GRU. Received: layer {layer.name!r} of class "
        f"{type(layer).__name__}"
    )


def recurrent_forward(
    layer: keras.layers.Layer, args: tuple, kwargs: dict, training: bool, quantize: Quantize
) -> Any:
    """Runs ``layer`` (SimpleRNN, LSTM or GRU) on ``args``, quantizing its intermediate tensors.

    Args:
        layer: the recurrent layer (its variables may be mapped to quantized values by the
            wrapper's ``StatelessScope``).
        args: the call's positional arguments: ``(sequences[, initial_state])``.
        kwargs: the call's keyword arguments (``initial_state``, ``mask``, ``training``).
        training: whether the call trains.
        quantize: ``quantize(name, tensor)``, one of ``INTERNAL_TENSORS[type(layer)]``.

    Returns:
        What the layer returns: the last output or the sequence (``return_sequences``), followed
        by the final states when ``return_state``.
    """
    make_step, num_states = _recurrence_of(layer)
    cell = layer.cell
    sequences = args[0]
    initial_state = args[1] if len(args) > 1 else kwargs.get("initial_state")
    _refuse_unsupported(layer, kwargs.get("mask"), bool(training))
    states = _initial_states(layer, sequences, initial_state, num_states)

    # The input projection of every step at once: the same values, one matmul per sequence.
    input_bias, _ = _bias_parts(cell)
    x_proj = ops.matmul(sequences, cell.kernel)
    if input_bias is not None:
        x_proj = x_proj + input_bias
    x_proj = quantize("input_projection", x_proj)
    time_major = ops.transpose(x_proj, (1, 0, 2))
    step = make_step(cell, quantize)

    def body(accumulated, x_t):
        new_states, h = step(x_t, list(accumulated[1:]))
        return (h, *new_states)

    if layer.go_backwards:
        time_major = ops.flip(time_major, axis=0)
    # tf.scan stacks what every step returns: (outputs, *states) over time.
    stacked = tf.scan(body, time_major, initializer=(states[0], *states))
    outputs, final_states = stacked[0], [s[-1] for s in stacked[1:]]
    output = ops.transpose(outputs, (1, 0, 2)) if layer.return_sequences else final_states[0]
    if layer.return_state:
        return [output, *final_states]
    return output
