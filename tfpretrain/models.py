"""Builders: encoder + head → ``keras.Model``."""

import keras

from tfpretrain import heads
from tfpretrain.encoders.bert import INPUT_NAMES


def build_bert_classifier(encoder_layer, num_classes, pooling="pooled", dropout=0.1, seed=None):
    """A text classifier on BERT inputs: dict of int32 ``[batch, seq]`` → logits ``[batch, C]``.

    Trains with a custom loop (``tfpretrain.train``) or plain ``model.fit``; the encoder's
    weights are the model's own weights either way.

    Args:
        encoder_layer: a TF Hub-format BERT encoder layer (``load_encoder(...).layer``).
        num_classes: number of labels.
        pooling: ``"pooled"`` (the encoder's ``pooled_output``) or ``"mean"`` (masked mean of
            ``sequence_output``, how sentence-transformers models were trained).
        dropout: dropout before the output layer.

    Example:
        >>> loaded = load_encoder("minilm_l6")  # doctest: +SKIP
        >>> model = build_bert_classifier(loaded.layer, 5, pooling="mean")  # doctest: +SKIP
    """
    if pooling not in ("pooled", "mean"):
        raise ValueError(f"model.pooling must be 'pooled' or 'mean', got {pooling!r}")
    inputs = {name: keras.Input((None,), dtype="int32", name=name) for name in INPUT_NAMES}
    outputs = encoder_layer(inputs)
    if pooling == "mean":
        features = heads.masked_mean(outputs["sequence_output"], inputs["input_mask"])
    else:
        features = outputs["pooled_output"]
    logits = heads.build_classification_head(num_classes, dropout, seed=seed)(features)
    return keras.Model(inputs, logits, name="bert_classifier")


def build_sentence_classifier(encoder_layer, head):
    """A text classifier on raw strings: ``[batch]`` strings → logits, from a sentence encoder.

    ``head`` maps ``[batch, dim]`` embeddings to logits (``heads.build_classification_head``).
    With a frozen encoder the head can be trained alone on cached embeddings and the model
    built from it afterwards: they share the head's weights.

    Example:
        >>> encoder = load_sentence_encoder("minilm_l6_sentence")  # doctest: +SKIP
        >>> head = heads.build_classification_head(5, hidden_units=(256,))  # doctest: +SKIP
        >>> model = build_sentence_classifier(encoder.layer, head)  # doctest: +SKIP
        >>> model(tf.constant(["a news article"])).shape  # doctest: +SKIP
        (1, 5)
    """
    texts = keras.Input((), dtype="string", name="text")
    return keras.Model(texts, head(encoder_layer(texts)), name="sentence_classifier")


def build_image_classifier(encoder_layer, num_classes, image_size, dropout=0.0, seed=None):
    """An image classifier: float32 ``[batch, size, size, 3]`` in [0, 1] → logits ``[batch, C]``.

    ``encoder_layer`` maps those images to ``[batch, features]``: ``load_image_encoder(...).layer``
    (which keeps batch norm in inference mode) or a Keras backbone trained from scratch.

    Example:
        >>> encoder = load_image_encoder("digits_resnet")  # doctest: +SKIP
        >>> model = build_image_classifier(encoder.layer, 5, encoder.image_size)  # doctest: +SKIP
    """
    images = keras.Input((image_size, image_size, 3), name="images")
    features = encoder_layer(images)
    logits = heads.build_classification_head(num_classes, dropout, seed=seed)(features)
    return keras.Model(images, logits, name="image_classifier")


def feature_extractor(classifier):
    """The part of a classifier built here that computes what its head classifies: a
    ``keras.Model`` from the classifier's inputs to the input of its ``classifier`` head layer
    (sharing weights)."""
    try:
        head = classifier.get_layer("classifier")
    except ValueError:
        raise ValueError(f"model {classifier.name!r} has no layer named 'classifier' (the head of "
                         "build_bert_classifier / build_sentence_classifier)") from None
    return keras.Model(classifier.input, head.input, name=f"{classifier.name}_features")
