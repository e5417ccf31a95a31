"""Evaluation shared by every task type: the model's outputs over a dataset of batches.

What the outputs mean (metrics, tables) is the task's business: ``tfpretrain.tasks``.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf

# One compiled forward pass per model, reused by every evaluation of a run (a new tf.function
# per call would retrace each bucket length at every evaluation).
_FORWARD = weakref.WeakKeyDictionary()


def forward_function(model: keras.Model):
    """The model's compiled inference-mode forward pass, made once per model and reused by every
    evaluation of a run."""
    if model not in _FORWARD:
        ref = weakref.ref(model)  # the function must not keep the model alive
        _FORWARD[model] = tf.function(lambda inputs: ref()(inputs, training=False),
                                      reduce_retracing=True)
    return _FORWARD[model]


def predict_outputs(model: keras.Model, batches: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(outputs [N, ...], labels [N, ...])`` of ``model`` on a dataset of ``(inputs, labels)``
    batches, in inference mode.

    Example:
        >>> logits, labels = predict_outputs(model, batches)  # doctest: +SKIP
    """
    forward = forward_function(model)
    outputs, labels = [], []
    for inputs, y in batches:
        outputs.append(forward(inputs).numpy())
        labels.append(y.numpy())
    return np.concatenate(outputs), np.concatenate(labels)
