"""Heads: pure Keras layers that sit on an encoder's output."""

import keras


def build_classification_head(num_classes, dropout=0.1, seed=None, name="classifier"):
    """Dropout → Dense logits, as a ``keras.Sequential``.

    Example:
        >>> head = build_classification_head(5)
        >>> head(keras.ops.zeros((2, 384))).shape
        (2, 5)
    """
    return keras.Sequential(
        [keras.layers.Dropout(dropout, seed=seed),
         keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.TruncatedNormal(
             stddev=0.02, seed=seed), name="logits")],
        name=name,
    )


def masked_mean(sequence, mask):
    """Mean over the real (mask = 1) positions of ``[batch, seq, width]`` (functional API)."""
    return keras.layers.GlobalAveragePooling1D(name="mean_pooling")(
        sequence, mask=keras.ops.cast(mask, "bool")
    )
