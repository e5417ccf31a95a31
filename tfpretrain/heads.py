"""Heads: pure Keras layers that sit on an encoder's output."""

from __future__ import annotations

from collections.abc import Sequence

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
                                  name="logits")]
    return keras.Sequential(layers, name=name)


def masked_mean(sequence: keras.KerasTensor, mask: keras.KerasTensor) -> keras.KerasTensor:
    """Mean over the real (mask = 1) positions of ``[batch, seq, width]`` (functional API)."""
    return keras.layers.GlobalAveragePooling1D(name="mean_pooling")(
        sequence, mask=keras.ops.cast(mask, "bool")
    )
