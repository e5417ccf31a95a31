"""Builders: encoder + head → ``keras.Model``."""

from __future__ import annotations

import keras

from tfpretrain import heads
from tfpretrain.data.pipeline import CAPITALISED
from tfpretrain.encoders.bert import INPUT_NAMES
from tfpretrain.encoders.image import build_resnet, scale_to_unit_range

POOLINGS = ("mean", "pooled")


def build_bert_classifier(encoder_layer: keras.layers.Layer, num_classes: int,
                          pooling: str = "pooled", dropout: float = 0.1,
                          seed: int | None = None) -> keras.Model:
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
    if pooling not in POOLINGS:
        raise ValueError(f"model.pooling must be 'pooled' or 'mean', got {pooling!r}")
    inputs = {name: keras.Input((None,), dtype="int32", name=name) for name in INPUT_NAMES}
    outputs = encoder_layer(inputs)
    if pooling == "mean":
        features = heads.masked_mean(outputs["sequence_output"], inputs["input_mask"])
    else:
        features = outputs["pooled_output"]
    logits = heads.build_classification_head(num_classes, dropout, seed=seed)(features)
    return keras.Model(inputs, logits, name="bert_classifier")


def build_token_classifier(encoder_layer: keras.layers.Layer, num_tags: int,
                           dropout: float = 0.1, seed: int | None = None,
                           case_segments: bool = False) -> keras.Model:
    """A token classifier on BERT inputs: dict of int32 ``[batch, seq]`` → logits ``[batch, seq,
    tags]``, a dense layer (the ``classifier`` head) on each position of ``sequence_output``.

    ``case_segments`` adds an input ``input_case_ids`` (how each piece's word is written,
    ``tfpretrain.data.pipeline.CASES``) and gives the pieces of capitalised words (Title, UPPER)
    segment id 1 in the encoder's input: the one thing an uncased encoder cannot see, through an
    embedding it already has. (On CoNLL-2003 with ``minilm_l6``: test entity F1 84.26 against
    82.98 without; a case embedding beside the encoder's output instead gave 82.96.)

    Example:
        >>> model = build_token_classifier(load_encoder("minilm_l6").layer, 9)  # doctest: +SKIP
    """
    inputs = {name: keras.Input((None,), dtype="int32", name=name) for name in INPUT_NAMES}
    encoder_inputs = dict(inputs)
    if case_segments:
        case = inputs["input_case_ids"] = keras.Input((None,), dtype="int32",
                                                      name="input_case_ids")
        encoder_inputs["input_type_ids"] = keras.ops.cast(keras.ops.logical_or(
            keras.ops.equal(case, CAPITALISED[0]), keras.ops.equal(case, CAPITALISED[1])), "int32")
    sequence = encoder_layer(encoder_inputs)["sequence_output"]
    logits = heads.build_classification_head(num_tags, dropout, seed=seed)(sequence)
    return keras.Model(inputs, logits, name="bert_token_classifier")


def build_sentence_classifier(encoder_layer: keras.layers.Layer, head: keras.layers.Layer,
                              pairs: bool = False) -> keras.Model:
    """A text classifier on raw strings: ``[batch]`` strings → logits, from a sentence encoder;
    with ``pairs``, inputs ``{"text_a", "text_b"}`` → the head on ``heads.pair_features(u, v)``
    of their embeddings (Sentence-BERT's ``(u, v, |u-v|, u*v)``).

    ``head`` maps ``[batch, dim]`` embeddings (``[batch, 4 * dim]`` pair features) to logits
    (``heads.build_classification_head``). With a frozen encoder the head can be trained alone on
    cached embeddings and the model built from it afterwards: they share the head's weights.

    Example:
        >>> encoder = load_sentence_encoder("minilm_l6_sentence")  # doctest: +SKIP
        >>> head = heads.build_classification_head(5, hidden_units=(256,))  # doctest: +SKIP
        >>> model = build_sentence_classifier(encoder.layer, head)  # doctest: +SKIP
        >>> model(tf.constant(["a news article"])).shape  # doctest: +SKIP
        (1, 5)
    """
    if pairs:
        texts = {name: keras.Input((), dtype="string", name=name)
                 for name in ("text_a", "text_b")}
        features = heads.pair_features(encoder_layer(texts["text_a"]),
                                       encoder_layer(texts["text_b"]))
        return keras.Model(texts, head(features), name="sentence_pair_classifier")
    texts = keras.Input((), dtype="string", name="text")
    return keras.Model(texts, head(encoder_layer(texts)), name="sentence_classifier")


def build_image_classifier(encoder_layer: keras.layers.Layer, num_classes: int, image_size: int,
                           dropout: float = 0.0, seed: int | None = None) -> keras.Model:
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


def build_resnet_classifier(image_size: int, filters: list[int], blocks: list[int],
                            num_classes: int, dropout: float = 0.0, seed: int | None = None
                            ) -> keras.Model:
    """A ResNet image classifier from random weights: float32 ``[batch, size, size, 3]`` in [0, 1]
    → logits. Its layer ``resnet_features`` is the backbone (``encoders.image.build_resnet``, on
    [-1, 1] inputs), what ``recipes.resnet_pretrain`` exports as a TF Hub image feature vector.

    Example:
        >>> model = build_resnet_classifier(32, [64, 128], [1, 1], 5)  # doctest: +SKIP
    """
    backbone = build_resnet(image_size, filters, blocks, seed=seed)
    images = keras.Input((image_size, image_size, 3), name="images")
    features = backbone(scale_to_unit_range(images))
    logits = heads.build_classification_head(num_classes, dropout, seed=seed)(features)
    return keras.Model(images, logits, name="resnet_classifier")


def feature_extractor(classifier: keras.Model) -> keras.Model:
    """The part of a classifier built here that computes what its head classifies: a
    ``keras.Model`` from the classifier's inputs to the input of its ``classifier`` head layer
    (sharing weights)."""
    try:
        head = classifier.get_layer("classifier")
    except ValueError:
        raise ValueError(f"model {classifier.name!r} has no layer named 'classifier' (the head of "
                         "build_bert_classifier / build_sentence_classifier)") from None
    return keras.Model(classifier.input, head.input, name=f"{classifier.name}_features")
