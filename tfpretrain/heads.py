"""Heads: pure Keras layers that sit on an encoder's output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras


def build_classification_head(num_classes: int, dropout: float = 0.1, seed: int | None = None,
                              hidden_units: Sequence[int] = (),
                              name: str = "classifier") -> keras.Sequential:
    """[Dropout → Dense(relu)] per hidden layer, then Dropout → Dense logits, as a
    ``keras.Sequential``.

    Example:
        >>> head = build_classification_head(5)
        >>> head(keras.ops.zeros((2, 384))).shape
        (2, 5)
        >>> build_classification_head(5, hidden_units=(256,))(keras.ops.zeros((2, 384))).shape
        (2, 5)
    """
    layers = []
    for index, units in enumerate(hidden_units):
        layers += [keras.layers.Dropout(dropout, seed=seed),
                   keras.layers.Dense(units, activation="relu", name=f"hidden_{index}")]
    layers += [keras.layers.Dropout(dropout, seed=seed),
               keras.layers.Dense(num_classes,
                                  kernel_initializer=keras.initializers.TruncatedNormal(
                                      stddev=0.02, seed=seed),
                                  # float32 logits under mixed precision too: the loss and
                                  # softmax need its range (the Keras mixed-precision guide)
                                  dtype="float32", name="logits")]
    return keras.Sequential(layers, name=name)


def masked_mean(sequence: keras.KerasTensor, mask: keras.KerasTensor) -> keras.KerasTensor:
    """Mean over the real (mask = 1) positions of ``[batch, seq, width]`` (functional API)."""
    return keras.layers.GlobalAveragePooling1D(name="mean_pooling")(
        sequence, mask=keras.ops.cast(mask, "bool")
    )


def pair_features(u: Any, v: Any) -> Any:
    """``[u, v, |u - v|, u * v]`` of two ``[batch, dim]`` embeddings → ``[batch, 4 * dim]``: how
    Sentence-BERT (Reimers & Gurevych 2019) classifies a pair of sentence embeddings. Works on
    Keras tensors (in a functional model) and on arrays alike.

    Example:
        >>> pair_features(keras.ops.ones((2, 3)), keras.ops.zeros((2, 3))).shape
        (2, 12)
    """
    return keras.ops.concatenate([u, v, keras.ops.abs(u - v), u * v], axis=-1)


def sentence_features(embeddings: Any) -> Any:
    """What a sentence classifier's head takes, from cached embeddings: ``[N, dim]`` as they are,
    ``[N, 2, dim]`` (pairs, ``load_embeddings``) as their ``pair_features``."""
    if len(embeddings.shape) == 3:
        return pair_features(embeddings[:, 0], embeddings[:, 1])
    return embeddings
