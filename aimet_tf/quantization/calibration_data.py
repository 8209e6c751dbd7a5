"""Calibration data: the one reader of user data for every pass that runs a model on it.

``compute_encodings``, bias correction, AdaRound and BN re-estimation all take data in the same
forms and read them by the same rules. The rules look only at Python types and at the number of
model inputs, never at shapes, so no form can be read two ways:

* **array or tensor**: every sample of a single-input model, cut into ``batch_size`` batches.
* **dict** ``{input name: array}``: every sample of each input, cut into batches.
* **tuple**: one structure holding every sample: ``x``, ``(x, y)`` or ``(x, y, w)``. ``x`` is an
  array for a single-input model; for a model with n >= 2 inputs it is a tuple/list/dict of n
  arrays, and a tuple of exactly n arrays is read as those n inputs. Labels and weights are dropped.
* **list, tf.data.Dataset, generator, keras PyDataset or other iterable**: a sequence of batches.
  Each batch is read with the tuple rule above (a list batch like a tuple batch). A list is
  therefore never ``(x, y)``: ``[batch_a, batch_b]`` is two batches. One exception, which cannot
  be read two ways: for a model with n >= 2 inputs, a list of exactly n arrays is those n inputs
  (``[x_image, x_extra]``, as ``model.predict`` takes them), since a batch of such a model is never
  a single array.
* **forward-pass callback** (AIMET): ``(fn, args)`` with a callable ``fn``, or an object with
  ``func`` and ``func_callback_args`` (AIMET's ``CallbackFunc``). Only ``compute_encodings`` can
  use one (see ``as_forward_pass_callback``); the passes that need the inputs themselves raise.

Under a ``tf.distribute`` strategy (``iterate_replica_batches``) the same forms are read, plus a
**distributed data set** (``strategy.experimental_distribute_dataset(...)``, or any iterable of
per-replica values): each replica's part of a batch is checked like a batch. Whole-array and
plain-iterable data is cut into global batches that are split across the replicas.

Every batch is checked against the model inputs (rank, known dimensions, numeric dtype, equal
batch sizes across inputs, finite values) and cast to the input dtype, so errors say what was
expected and what was received instead of failing inside a traced function.

Example:
    >>> inputs = model_inputs(model)
    >>> for batch in iterate_batches(images, inputs, batch_size=64, num_batches=10):
    ...     model(as_model_input(batch))
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

__all__ = [
    "ForwardPassCallback",
    "InputSpec",
    "as_forward_pass_callback",
    "as_model_input",
    "is_distributed_data",
    "iterate_batches",
    "iterate_replica_batches",
    "model_inputs",
]

Batch = list  # one np.ndarray per model input, in the model's input order


class InputSpec(NamedTuple):
    """One model input: its name, shape (None for unknown dimensions, batch first) and dtype.

    ``shape=None`` checks nothing about the shape (a model whose inputs are not known yet).
    """

    name: str
    shape: tuple | None
    dtype: str


class ForwardPassCallback(NamedTuple):
    """AIMET's forward pass: ``func(model, args)`` runs the model on calibration data."""

    func: Callable[[keras.Model, Any], Any]
    args: Any


def model_inputs(model: keras.Model) -> list[InputSpec]:
    """The input specs of ``model`` in its input order (one unchecked input if it has none yet)."""
    tensors = getattr(model, "inputs", None)
    if not tensors:
        return [InputSpec("input", None, "float32")]
    return [
        InputSpec(str(t.name), tuple(None if d is None else int(d) for d in t.shape), str(t.dtype))
        for t in tensors
    ]


def as_forward_pass_callback(data: Any) -> ForwardPassCallback | None:
    """``data`` as an AIMET forward-pass callback, or None if it is data.

    Recognised: a callable (called with ``args=None``), ``(fn, args)`` with a callable ``fn``, and
    objects with ``func`` and ``func_callback_args`` attributes (AIMET's ``CallbackFunc``).
    """
    if callable(data) and not isinstance(data, (tf.data.Dataset, keras.utils.PyDataset)):
        return ForwardPassCallback(data, None)
    if isinstance(data, tuple) and len(data) == 2 and callable(data[0]) and not _is_array(data[0]):
        return ForwardPassCallback(data[0], data[1])
    func = getattr(data, "func", None)
    if callable(func) and hasattr(data, "func_callback_args"):
        return ForwardPassCallback(func, data.func_callback_args)
    return None


def as_model_input(batch: Batch) -> np.ndarray | list[np.ndarray]:
    """What ``model(...)`` takes: the array of a single-input model, else the list of arrays."""
    return batch[0] if len(batch) == 1 else list(batch)


def iterate_batches(
    data: Any,
    inputs: Sequence[InputSpec],
    batch_size: int = 32,
    num_batches: int | None = None,
    *,
    check_finite: bool = True,
    purpose: str = "calibration data",
    strategy: tf.distribute.Strategy | None = None,
) -> Iterator[Batch]:
    """Yields the batches of ``data`` (see the module docstring for the accepted forms), checked.

    Args:
        data: calibration data in one of the module's forms.
        inputs: the model inputs (``model_inputs(model)``).
        batch_size: batch size for data given as whole arrays.
        num_batches: stop after this many batches (None: all); an endless data set is fine.
        check_finite: raise on NaN/Inf in float inputs.
        purpose: what the data is for, used in error messages.
        strategy: the strategy of a distributed data set: each of this worker's replica parts of
            a per-replica batch is yielded as a batch (``num_batches`` then counts parts).

    Yields:
        One list per batch holding an array per model input, cast to the input's dtype.

    Raises:
        TypeError: for a form that is not data (a forward-pass callback, an unknown type).
        ValueError: for a batch that does not fit the inputs (rank, shape, dtype, NaN/Inf), or
            data that yields no batch.
    """
    inputs = list(inputs)
    _check_positive("batch_size", batch_size)
    if num_batches is not None:
        _check_positive("num_batches", num_batches)
    callback = as_forward_pass_callback(data)
    if callback is not None:
        raise TypeError(
            f"Expected {purpose} as arrays, a tf.data.Dataset or an iterable of batches: this pass "
            "needs the inputs themselves. Received: a forward-pass callback "
            f"{getattr(callback.func, '__name__', callback.func)!r} (only compute_encodings runs callbacks)."
        )
    if strategy is not None and is_distributed_data(data):
        data = (part for element in data for part in _local_parts(element, strategy))
    count = 0
    for count, raw in enumerate(itertools.islice(_raw_batches(data, inputs, batch_size), num_batches), 1):
        yield _check_batch(raw, inputs, f"batch {count - 1} of the {purpose}", check_finite)
    if count == 0:
        raise ValueError(
            f"Expected at least one batch of {purpose}. Received: an empty {type(data).__name__}."
        )


def iterate_replica_batches(
    data: Any,
    inputs: Sequence[InputSpec],
    strategy: tf.distribute.Strategy,
    batch_size: int = 32,
    num_batches: int | None = None,
    *,
    check_finite: bool = True,
    purpose: str = "calibration data",
) -> Iterator[Any]:
    """Yields per-replica batches of ``data`` for ``strategy.run(fn, args=(batch,))``, checked.

    A distributed data set yields its own per-replica values, each replica's part checked like a
    batch (on a multi-worker strategy, this worker's replicas). Any other form is read by
    ``iterate_batches`` into global batches of ``batch_size``, and replica ``r`` of ``R`` (its
    ``replica_id_in_sync_group``) gets rows ``[r * n // R, (r + 1) * n // R)`` of each: every worker
    must read the same data, as with ``model.fit`` on arrays.

    Args:
        data: see ``iterate_batches``; also a distributed data set.
        inputs: the model inputs (``model_inputs(model)``).
        strategy: the strategy the model's variables were created under.
        batch_size, num_batches, check_finite, purpose: see ``iterate_batches`` (``num_batches``
            counts global batches).

    Yields:
        What ``strategy.experimental_distribute_values_from_function`` makes of the replicas'
        parts: the model input of each replica (an array, or a list for several inputs).

    Raises:
        TypeError, ValueError: as ``iterate_batches``, naming the replica of a bad part.
    """
    inputs = list(inputs)
    replicas = strategy.num_replicas_in_sync
    if not is_distributed_data(data):
        for batch in iterate_batches(data, inputs, batch_size, num_batches, check_finite=check_finite, purpose=purpose):
            rows = len(batch[0])
            yield strategy.experimental_distribute_values_from_function(
                lambda ctx, b=batch, n=rows: as_model_input([
                    a[ctx.replica_id_in_sync_group * n // replicas : (ctx.replica_id_in_sync_group + 1) * n // replicas]
                    for a in b
                ])
            )
        return
    _check_positive("batch_size", batch_size)
    count = 0
    for count, element in enumerate(itertools.islice(iter(data), num_batches), 1):
        parts = _local_parts(element, strategy)
        checked = [
            _check_batch(_split(part, inputs, f"batch {count - 1} (replica part {i})", whole=False), inputs,
                         f"replica part {i} of batch {count - 1} of the {purpose}", check_finite)
            for i, part in enumerate(parts)
        ]
        yield strategy.experimental_distribute_values_from_function(
            lambda ctx, c=checked: as_model_input(c[ctx.replica_id_in_sync_group % len(c)])
        )
    if count == 0:
        raise ValueError(f"Expected at least one batch of {purpose}. Received: an empty distributed data set.")


def is_distributed_data(data: Any) -> bool:
    """A distributed data set or iterator (``strategy.experimental_distribute_dataset``)."""
    return isinstance(data, (tf.distribute.DistributedDataset, tf.distribute.DistributedIterator))


def _has_replica_values(element: Any) -> bool:
    return any(isinstance(v, tf.distribute.DistributedValues) for v in tf.nest.flatten(element))


def _local_parts(element: Any, strategy: tf.distribute.Strategy) -> list:
    """This worker's replica parts of a per-replica element (a structure of DistributedValues)."""
    leaves = tf.nest.flatten(element)
    local = [strategy.experimental_local_results(v) for v in leaves]
    count = {len(v) for v in local}
    if len(count) != 1:
        raise ValueError(f"Expected every part of a distributed batch on the same replicas. Received: {sorted(count)} replica counts")
    return [tf.nest.pack_sequence_as(element, [v[i] for v in local]) for i in range(count.pop())]


# ----------------------------------------------------------------------------------------------
# Reading the forms


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, tf.Tensor, tf.Variable)) or (
        keras.ops.is_tensor(value) and not isinstance(value, (list, tuple, dict))
    )


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected {name} to be an integer >= 1. Received: {name}={value!r}")


def _raw_batches(data: Any, inputs: list[InputSpec], batch_size: int) -> Iterator[list]:
    """The unchecked batches of ``data``, each split into one value per model input."""
    # A list of exactly n arrays for an n-input model (n >= 2) can only be the n inputs: a batch of
    # such a model holds n arrays, so a single array is never one of its batches.
    n = len(inputs)
    inputs_list = isinstance(data, list) and n > 1 and len(data) == n and all(_is_array(e) for e in data)
    if _is_array(data) or isinstance(data, (tuple, Mapping)) or inputs_list:
        arrays = _split(tuple(data) if inputs_list else data, inputs, "the data", whole=True)
        total = _leading_dim(arrays, inputs, "the data")
        for start in range(0, total, batch_size):
            yield [a[start : start + batch_size] for a in arrays]
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise TypeError(
            "Expected calibration data as an array, a dict of arrays, an (x, y) tuple, a list or "
            "tf.data.Dataset of batches, an iterable of batches or a (fn, args) forward-pass "
            f"callback. Received: {type(data).__name__}"
        )
    for index, element in enumerate(data):
        if _has_replica_values(element):
            raise TypeError(
                f"Expected batch {index} as arrays: this model was not built under a tf.distribute "
                "strategy with several replicas. Received: per-replica values (a distributed data set). "
                "Build the sim (QuantizationSimModel) under strategy.scope(), or pass the data set "
                "before strategy.experimental_distribute_dataset."
            )
        yield _split(element, inputs, f"batch {index}", whole=False)


def _split(element: Any, inputs: list[InputSpec], where: str, whole: bool) -> list:
    """One value per model input from ``element``: x, (x,), (x, y), (x, y, w) or a dict."""
    n = len(inputs)
    names = [i.name for i in inputs]
    if _is_array(element):
        if n == 1:
            return [element]
        raise ValueError(
            f"Expected {n} inputs {names} for this {n}-input model in {where}: a tuple/list of "
            f"{n} arrays or a dict keyed by input name. Received: one array of shape "
            f"{tuple(element.shape)}."
        )
    if isinstance(element, Mapping):
        return _from_dict(element, inputs, where)
    if isinstance(element, (tuple, list)):
        if n > 1 and len(element) == n and all(_is_array(e) for e in element):
            return list(element)
        if len(element) in (1, 2, 3):
            x = element[0]
            if (n == 1 and _is_array(x)) or (n > 1 and isinstance(x, (tuple, list, Mapping))):
                if whole and n == 1 and len(element) >= 2:
                    _warn_if_batches(x, element[1:])
                return _split(x, inputs, where, whole) if n > 1 else [x]
        kinds = ", ".join(type(e).__name__ for e in element[:4])
        raise ValueError(
            f"Expected {where} as x, (x, y) or (x, y, w) where x is "
            f"{'an array' if n == 1 else f'a tuple/list/dict of {n} arrays {names}'}. Received: a "
            f"{type(element).__name__} of {len(element)} elements ({kinds}"
            f"{', ...' if len(element) > 4 else ''})."
        )
    raise TypeError(
        f"Expected {where} as an array, a tuple/list of arrays or a dict of arrays. Received: "
        f"{type(element).__name__}"
    )


def _from_dict(element: Mapping, inputs: list[InputSpec], where: str) -> list:
    names = [i.name for i in inputs]
    if set(element) != set(names):
        raise ValueError(
            f"Expected {where} as a dict keyed by the model's input names {names}. Received: keys "
            f"{sorted(map(str, element))}."
        )
    return [element[name] for name in names]


def _warn_if_batches(x: Any, rest: Sequence) -> None:
    # A tuple is (x, y[, w]); arrays shaped like x may have been meant as more batches.
    if any(_is_array(r) and tuple(np.shape(r)) == tuple(np.shape(x)) for r in rest):
        logging.warning(
            "Calibration data: read a tuple of %d arrays of shape %s as (x, y[, w]) and used only "
            "x. Pass a list [batch_a, batch_b, ...] to give several batches.",
            len(rest) + 1,
            tuple(np.shape(x)),
        )


def _leading_dim(arrays: list, inputs: list[InputSpec], where: str) -> int:
    dims = []
    for spec, array in zip(inputs, arrays):
        shape = tuple(np.shape(array))
        if not shape:
            raise ValueError(
                f"Expected {where} for input {spec.name!r} batch first, shape {_shape_text(spec)}. "
                "Received: a scalar."
            )
        dims.append(int(shape[0]))
    if len(set(dims)) > 1:
        raise ValueError(
            f"Expected as many samples for every input in {where}. Received: "
            + ", ".join(f"{s.name}={d}" for s, d in zip(inputs, dims))
        )
    return dims[0]


# ----------------------------------------------------------------------------------------------
# Checking one batch


def _shape_text(spec: InputSpec) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in spec.shape) + ")"


def _to_numpy(value: Any, spec: InputSpec, where: str) -> np.ndarray:
    if isinstance(value, (tf.Tensor, tf.Variable)):
        if value.dtype == tf.string:
            raise ValueError(
                f"Expected numeric data for input {spec.name!r} in {where}. Received: dtype=string"
            )
        return value.numpy()
    return np.asarray(value)


def _check_array(value: Any, spec: InputSpec, where: str, check_finite: bool) -> np.ndarray:
    array = _to_numpy(value, spec, where)
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"Expected numeric data for input {spec.name!r} in {where}. Received: "
            f"dtype={array.dtype}"
        )
    if spec.shape is not None:
        fits = array.ndim == len(spec.shape) and all(
            e is None or e == r for e, r in zip(spec.shape[1:], array.shape[1:])
        )
        if not fits:
            single = array.ndim == len(spec.shape) - 1 and all(
                e is None or e == r for e, r in zip(spec.shape[1:], array.shape)
            )
            hint = (
                " This is one unbatched sample: batch the data (tf.data: dataset.batch(n); "
                "arrays: a leading batch axis)."
                if single
                else ""
            )
            raise ValueError(
                f"Expected {where} for input {spec.name!r} with shape {_shape_text(spec)} (batch "
                f"first). Received: shape={tuple(array.shape)}.{hint}"
            )
    if array.ndim == 0 or array.shape[0] == 0:
        raise ValueError(
            f"Expected at least one sample in {where} for input {spec.name!r}. Received: "
            f"shape={tuple(array.shape)}"
        )
    target = np.dtype(spec.dtype)
    if target.kind in "iub" and array.dtype.kind == "f":
        raise ValueError(
            f"Expected {target} data for input {spec.name!r} in {where}. Received: "
            f"dtype={array.dtype}"
        )
    with np.errstate(over="ignore"):  # an overflow to Inf is reported just below
        array = array.astype(target, copy=False)
    if check_finite and array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(
            f"Expected finite values in {where} for input {spec.name!r}. Received: "
            f"{int(np.count_nonzero(np.isnan(array)))} NaN and "
            f"{int(np.count_nonzero(np.isinf(array)))} Inf values (after casting to {target})."
        )
    return array


def _check_batch(raw: list, inputs: list[InputSpec], where: str, check_finite: bool) -> Batch:
    batch = [_check_array(v, s, where, check_finite) for v, s in zip(raw, inputs)]
    _leading_dim(batch, inputs, where)
    return batch
