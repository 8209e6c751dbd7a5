"""Fine-tuning a compressed model with the original model as teacher, through plain ``model.fit``.

:class:`DistillationModel` wraps the compressed (student) model and a frozen copy of the original
(teacher). Calling it returns the student's outputs, so ``compile`` / ``fit`` / ``evaluate`` /
``predict`` work as on the student, and training updates the student's own weights. While
training it adds, through ``add_loss``:

* a **layer-wise** term: for each (teacher layer, student layer) pair, the mean squared difference
  of their outputs divided by the teacher output's mean square (so layers of any scale weigh alike);
* an **output** term: the KL divergence between the teacher's and the student's softened
  predictions at ``temperature`` (times ``temperature**2``, as in Hinton et al.).

The compiled loss (e.g. cross-entropy on labels) is kept as the task term; compile with
``loss=None`` and pass unlabelled inputs to distil from the teacher alone.

Why a model and not a ``keras.callbacks.Callback``: a callback cannot change what ``fit``
minimises, and the layer-wise targets need the student's intermediate outputs inside the training
step. The wrapper keeps the student untouched: after ``fit``, use the student itself.

By default the layers paired are the ones compression changed, matched by the names the schemes
give (``conv1`` -> ``conv1_b`` for SVD, ``conv1_c`` for Tucker, ``conv1`` itself when channel
pruning changed its kernel), where the output shapes agree.

Example:
    >>> trainer = DistillationModel(compressed, original)
    >>> trainer.compile(optimizer=keras.optimizers.Adam(1e-4),
    ...                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> trainer.fit(x_train, y_train, epochs=1)        # ``compressed`` now holds the tuned weights
"""

from __future__ import annotations

from typing import Sequence

import keras

from aimet_tf.graph.model_graph import ModelGraph, tensor_name
from aimet_tf.graph.rewrite import clone_model_graph

__all__ = ["DistillationModel", "changed_layer_pairs"]


def _weight_shapes(layer: keras.layers.Layer) -> list[tuple]:
    return [tuple(w.shape) for w in layer.weights]


def changed_layer_pairs(teacher: keras.Model, student: keras.Model) -> list[tuple[str, str]]:
    """(teacher layer, student layer) pairs for the layers compression replaced or re-shaped, whose
    outputs have the same shape in both models; in the teacher's graph order."""
    t_graph, s_graph = ModelGraph(teacher, "distillation"), ModelGraph(student, "distillation")
    pairs = []
    for node in t_graph.nodes:
        name = node.name
        if f"{name}_c" in s_graph and f"{name}_a" in s_graph:
            match = f"{name}_c"
        elif f"{name}_b" in s_graph and f"{name}_a" in s_graph:
            match = f"{name}_b"
        elif name in s_graph and _weight_shapes(s_graph.node(name).operation) != _weight_shapes(node.operation):
            match = name
        else:
            continue
        if t_graph.output_specs(name)[0][0] == s_graph.output_specs(match)[0][0]:
            pairs.append((name, match))
    return pairs


class DistillationModel(keras.Model):
    """``student`` trained towards ``teacher``'s layer outputs and predictions (see the module docstring).

    Args:
        student: the compressed Functional model; its weights are the ones trained.
        teacher: the original model; a frozen copy is used, so it is never changed.
        layer_pairs: (teacher layer, student layer) names; default :func:`changed_layer_pairs`.
        layer_weight: weight of the layer-wise term (0 turns it off).
        output_weight: weight of the output term (0 turns it off).
        temperature: softening of both models' predictions in the output term.
        outputs_are_logits: False when the models end in a softmax (their outputs are probabilities).

    Raises:
        ValueError: for models with different inputs or outputs, several outputs with an output term,
            unknown or mismatched layer pairs, or weights and temperature that are not positive numbers.
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: keras.Model,
        layer_pairs: Sequence[tuple[str, str]] | None = None,
        *,
        layer_weight: float = 1.0,
        output_weight: float = 1.0,
        temperature: float = 2.0,
        outputs_are_logits: bool = True,
        name: str | None = None,
    ):
        super().__init__(name=name or f"{student.name}_distillation")
        for label, value, low in (("layer_weight", layer_weight, 0.0), ("output_weight", output_weight, 0.0)):
            if not isinstance(value, (int, float)) or not value >= low:
                raise ValueError(f"Expected {label} >= 0. Received: {value!r}")
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"Expected temperature > 0. Received: {temperature!r}")
        s_graph = ModelGraph(student, "distillation (student)")
        t_graph = ModelGraph(clone_model_graph(teacher), "distillation (teacher)")
        s_in = [tuple(t.shape[1:]) for t in s_graph.model.inputs]
        t_in = [tuple(t.shape[1:]) for t in t_graph.model.inputs]
        s_out = [tuple(t.shape[1:]) for t in s_graph.model.outputs]
        t_out = [tuple(t.shape[1:]) for t in t_graph.model.outputs]
        if s_in != t_in or s_out != t_out:
            raise ValueError(
                "Expected student and teacher with the same input and output shapes. Received: student "
                f"inputs {s_in} outputs {s_out}, teacher inputs {t_in} outputs {t_out}"
            )
        if output_weight and len(s_out) != 1:
            raise ValueError(f"The output term needs a model with one output; this one has {len(s_out)}. Pass output_weight=0.")
        pairs = changed_layer_pairs(teacher, student) if layer_pairs is None else [tuple(p) for p in layer_pairs]
        for t_name, s_name in pairs:
            if t_name not in t_graph or s_name not in s_graph:
                raise ValueError(f"Layer pair ({t_name!r}, {s_name!r}): expected a teacher layer and a student layer. "
                                 f"{'teacher' if t_name not in t_graph else 'student'} has no such layer.")
            t_shape, s_shape = t_graph.output_specs(t_name)[0][0], s_graph.output_specs(s_name)[0][0]
            if t_shape != s_shape:
                raise ValueError(f"Layer pair ({t_name!r}, {s_name!r}): expected outputs of one shape. Received {t_shape} and {s_shape}")
        if layer_weight and not pairs:
            raise ValueError("No layer pairs to distil: the student has no layer that compression changed. "
                             "Pass layer_pairs, or layer_weight=0 for the output term alone.")
        self.student = student
        self.layer_pairs = pairs if layer_weight else []
        self.layer_weight = float(layer_weight)
        self.output_weight = float(output_weight)
        self.temperature = float(temperature)
        self.outputs_are_logits = bool(outputs_are_logits)
        n_out = len(s_graph.model.outputs)
        self._n_out = n_out
        self._student_probe = s_graph.probe(
            s_graph.output_names + [tensor_name(s) for _, s in self.layer_pairs], name=f"{student.name}_probe")
        teacher_probe = t_graph.probe(
            t_graph.output_names + [tensor_name(t) for t, _ in self.layer_pairs], name=f"{teacher.name}_teacher")
        teacher_probe.trainable = False
        self._teacher_probe = teacher_probe

    def _log_probabilities(self, outputs):
        if self.outputs_are_logits:
            return keras.ops.log_softmax(outputs / self.temperature, axis=-1)
        logits = keras.ops.log(keras.ops.clip(outputs, 1e-12, 1.0))
        return keras.ops.log_softmax(logits / self.temperature, axis=-1)

    def call(self, inputs, training=None):
        values = keras.tree.flatten(self._student_probe(inputs, training=training))
        outputs = values[: self._n_out]
        if training:
            targets = [keras.ops.stop_gradient(v) for v in keras.tree.flatten(self._teacher_probe(inputs, training=False))]
            if self.layer_pairs and self.layer_weight:
                terms = []
                for s, t in zip(values[self._n_out:], targets[self._n_out:]):
                    scale = keras.ops.mean(keras.ops.square(t)) + 1e-8
                    terms.append(keras.ops.mean(keras.ops.square(s - t)) / scale)
                self.add_loss(self.layer_weight * keras.ops.mean(keras.ops.stack(terms)))
            if self.output_weight:
                log_p_teacher = self._log_probabilities(targets[0])
                log_p_student = self._log_probabilities(outputs[0])
                kl = keras.ops.sum(keras.ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
                self.add_loss(self.output_weight * self.temperature**2 * keras.ops.mean(kl))
        return outputs[0] if self._n_out == 1 else outputs
