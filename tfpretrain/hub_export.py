"""Writes TF Hub-format SavedModels: BERT encoders and their preprocessors, sentence encoders,
image feature vectors.

The contract is the one tfhub.dev's BERTs and TF Model Garden's exporter use, so anything that
loads those loads these (and ``tfpretrain.hub`` loads both):

* encoder: ``__call__(inputs, training=False)`` with ``inputs`` a dict of int32 ``[batch, seq]``
  tensors ``input_word_ids``, ``input_mask``, ``input_type_ids``; returns ``pooled_output``
  ``[batch, width]``, ``sequence_output`` ``[batch, seq, width]`` and ``encoder_outputs`` (one
  ``[batch, seq, width]`` tensor per layer). Also ``variables``, ``trainable_variables`` and a
  ``serving_default`` signature (without ``encoder_outputs``, which a signature cannot hold).
* preprocessor: ``__call__``/``serving_default`` on a 1-D batch of strings; ``tokenize(strings)``
  returns a ``[batch, words, pieces]`` RaggedTensor; ``bert_pack_inputs(segments, seq_length)``
  packs one or two tokenized segments. The vocabulary travels as an asset.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from tfpretrain.files import atomic_directory

_INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")


def _int_specs():
    return {name: tf.TensorSpec([None, None], tf.int32, name=name) for name in _INPUT_NAMES}


def _variables(keras_variables):
    # The tf.Variable inside each Keras variable: those are what the SavedModel stores.
    return [v.value for v in keras_variables]


def _save_reusable(path, call, input_spec, serve, variables, trainable_variables, **children):
    """Saves a TF Hub reusable SavedModel: ``__call__`` traced with training True and False,
    ``variables``/``trainable_variables`` as attributes, a ``serving_default`` signature."""
    for training in (False, True):
        call.get_concrete_function(input_spec, training=training)
    # tf.Module exposes variables as read-only properties; TF Hub's reusable SavedModel
    # convention wants them as saved attributes, so the root is a plain AutoTrackable.
    saved = tf.__internal__.tracking.AutoTrackable()
    for name, child in children.items():
        setattr(saved, name, child)
    saved.__call__ = call
    saved.serving = serve
    saved.variables = variables
    saved.trainable_variables = trainable_variables
    saved.regularization_losses = []
    with atomic_directory(path) as tmp:
        tf.saved_model.save(saved, tmp, signatures={"serving_default": serve})


def export_bert_encoder(backbone: keras.Model, path: str, **children: Any) -> None:
    """Writes a ``keras_hub.models.BertBackbone`` as a TF Hub-format BERT encoder at ``path``.

    Args:
        backbone: a built ``keras_hub.models.BertBackbone`` (functional, with ``token_ids``,
            ``segment_ids`` and ``padding_mask`` inputs and ``transformer_layer_<i>`` layers).
        path: output directory, written atomically.
        children: trackable objects saved as attributes of the SavedModel's root (the masked-LM
            recipe's ``mlm``).

    Example:
        >>> backbone = keras_hub.models.BertBackbone(vocabulary_size=100, num_layers=1,
        ...     num_heads=2, hidden_dim=8, intermediate_dim=16)  # doctest: +SKIP
        >>> export_bert_encoder(backbone, "/tmp/encoder")  # doctest: +SKIP
    """
    layers = [backbone.get_layer(f"transformer_layer_{i}") for i in range(backbone.num_layers)]
    outputs = dict(backbone.output)
    outputs["encoder_outputs"] = [layer.output for layer in layers]
    model = keras.Model(backbone.input, outputs)

    @tf.function
    def call(inputs, training=False):
        out = model(
            {
                "token_ids": inputs["input_word_ids"],
                "padding_mask": inputs["input_mask"],
                "segment_ids": inputs["input_type_ids"],
            },
            training=training,
        )
        return {
            "pooled_output": out["pooled_output"],
            "sequence_output": out["sequence_output"],
            "encoder_outputs": list(out["encoder_outputs"]),
        }

    @tf.function(input_signature=[_int_specs()])
    def serve(inputs):
        out = call(inputs, training=False)
        return {"pooled_output": out["pooled_output"], "sequence_output": out["sequence_output"]}

    _save_reusable(path, call, _int_specs(), serve, _variables(model.variables),
                   _variables(model.trainable_variables), **children)


def normalize_uncased(strings: tf.Tensor) -> tf.Tensor:
    """BERT's uncased normalisation, as Hugging Face's BertNormalizer does it.

    Drops control characters, maps whitespace to spaces, lowercases, decomposes (NFD) and strips
    accents. ``tensorflow_text.BertTokenizer(lower_case=True)`` case-folds with NFKC instead,
    which turns ``ß`` into ``ss`` and full-width letters into ASCII and so changes token ids.
    """
    import tensorflow_text as text

    strings = tf.strings.regex_replace(strings, r"[\x{FFFD}]|[^\P{C}\t\n\r]", "")
    strings = tf.strings.regex_replace(strings, r"[\t\n\r\p{Zs}]", " ")
    strings = tf.strings.lower(strings, encoding="utf-8")
    strings = text.normalize_utf8(strings, "NFD")
    return tf.strings.regex_replace(strings, r"\p{Mn}", "")


class _BertPreprocessor(tf.Module):
    def __init__(self, vocab_file, lower_case, seq_length):
        import tensorflow_text as text

        super().__init__()
        with open(vocab_file, encoding="utf-8") as f:
            vocab = [line.rstrip("\n") for line in f]
        self.cls_id, self.sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
        self.pad_id = vocab.index("[PAD]") if "[PAD]" in vocab else 0
        # A variable, not a Python int, so it survives saving: loaders check it against the
        # encoder's embedding table.
        self.vocab_size = tf.Variable(len(vocab), dtype=tf.int32, trainable=False,
                                      name="vocab_size")
        self.lower_case = lower_case
        self.seq_length = seq_length
        self.vocab_file = tf.saved_model.Asset(vocab_file)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                self.vocab_file,
                key_dtype=tf.string,
                key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
                value_dtype=tf.int64,
                value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            default_value=vocab.index("[UNK]"),
        )
        self.tokenizer = text.BertTokenizer(
            self.table, token_out_type=tf.int32, lower_case=False, unknown_token="[UNK]"
        )

    def tokenize_strings(self, strings):
        if self.lower_case:
            strings = normalize_uncased(strings)
        return self.tokenizer.tokenize(strings).with_row_splits_dtype(tf.int64)

    def pack(self, segments, seq_length):
        import tensorflow_text as text

        segments = [s.merge_dims(-2, -1) if s.ragged_rank == 2 else s for s in segments]
        trimmed = text.RoundRobinTrimmer(max_seq_length=seq_length - len(segments) - 1).trim(
            segments
        )
        ids, type_ids = text.combine_segments(trimmed, self.cls_id, self.sep_id)
        word_ids, mask = text.pad_model_inputs(ids, seq_length, pad_value=self.pad_id)
        type_ids, _ = text.pad_model_inputs(type_ids, seq_length, pad_value=0)
        return {"input_word_ids": word_ids, "input_mask": mask, "input_type_ids": type_ids}


def export_bert_preprocessor(vocab_file: str, path: str, lower_case: bool = True,
                             seq_length: int = 128) -> None:
    """Writes a TF Hub-format BERT preprocessor for a WordPiece ``vocab_file`` at ``path``.

    Args:
        vocab_file: one WordPiece token per line, with ``[CLS]``, ``[SEP]``, ``[UNK]``.
        path: output directory, written atomically.
        lower_case: apply BERT's uncased normalisation (``normalize_uncased``).
        seq_length: the length ``__call__`` packs to (``bert_pack_inputs`` takes any).

    Example:
        >>> export_bert_preprocessor("vocab.txt", "/tmp/preprocessor")  # doctest: +SKIP
        >>> pre = tf.saved_model.load("/tmp/preprocessor")  # doctest: +SKIP
        >>> pre(tf.constant(["hello world"]))["input_word_ids"].shape  # doctest: +SKIP
        TensorShape([1, 128])
    """
    module = _BertPreprocessor(vocab_file, lower_case, seq_length)
    strings = tf.TensorSpec([None], tf.string)
    segment = tf.RaggedTensorSpec([None, None, None], tf.int32, ragged_rank=2,
                                  row_splits_dtype=tf.int64)
    length = tf.TensorSpec([], tf.int32)

    module.tokenize = tf.function(module.tokenize_strings, input_signature=[strings])
    pack = tf.function(module.pack)
    for count in (1, 2):
        pack.get_concrete_function([segment] * count, length)
    module.bert_pack_inputs = pack

    @tf.function(input_signature=[strings])
    def serve(texts):
        return module.pack([module.tokenize_strings(texts)], tf.constant(seq_length))

    module.__call__ = serve
    with atomic_directory(path) as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": serve})


def export_sentence_encoder(encoder_dir: str, preprocessor_dir: str, path: str,
                            seq_length: int = 256) -> str:
    """Writes a Universal-Sentence-Encoder-contract SavedModel from a TF Hub BERT pair.

    The result is called on a 1-D batch of strings and returns mean-pooled, L2-normalised
    ``[batch, width]`` embeddings (how sentence-transformers models embed), tokenisation inside:
    ``__call__(texts, training=False)`` and ``serving_default(inputs) -> {"outputs"}``, the
    names TF Hub's USE uses. Texts longer than ``seq_length`` tokens are truncated. The
    encoder's variables stay trainable, so the model can be fine-tuned end to end.

    Example:
        >>> export_sentence_encoder("/tmp/pair/encoder", "/tmp/pair/preprocessor",
        ...                         "/tmp/sentence")  # doctest: +SKIP
        >>> tf.saved_model.load("/tmp/sentence")(tf.constant(["hello"])).shape  # doctest: +SKIP
        TensorShape([1, 384])
    """
    import tensorflow_text  # noqa: F401  (the preprocessor's ops)

    encoder = tf.saved_model.load(encoder_dir)
    preprocessor = tf.saved_model.load(preprocessor_dir)
    strings = tf.TensorSpec([None], tf.string, name="inputs")

    @tf.function
    def call(texts, training=False):
        tokens = preprocessor.tokenize(texts)
        inputs = preprocessor.bert_pack_inputs([tokens], seq_length=tf.constant(seq_length))
        # Compute only up to the longest text in the batch.
        longest = tf.maximum(tf.reduce_max(tf.reduce_sum(inputs["input_mask"], axis=1)), 1)
        inputs = {key: value[:, :longest] for key, value in inputs.items()}
        sequence = encoder(inputs, training=training)["sequence_output"]
        mask = tf.cast(inputs["input_mask"], sequence.dtype)[..., tf.newaxis]
        mean = (tf.reduce_sum(sequence * mask, axis=1)
                / tf.maximum(tf.reduce_sum(mask, axis=1), 1e-9))
        return tf.math.l2_normalize(mean, axis=-1)

    @tf.function(input_signature=[strings])
    def serve(inputs):
        return {"outputs": call(inputs, training=False)}

    _save_reusable(path, call, strings, serve, list(encoder.variables),
                   list(encoder.trainable_variables), encoder=encoder, preprocessor=preprocessor)
    return path


# Keras Applications and KerasHub name residual blocks "conv4_block2_..." / "stack1_block0_...".
_BLOCK = re.compile(r"^((?:conv|stack)\d+_block\d+)_")


def block_groups(model: keras.Model) -> list[list[keras.Variable]]:
    """The variables of a Keras image backbone grouped as ``[stem, block 1, ..., block K, top]``,
    input to output, by layer names (``conv<i>_block<j>_*`` of Keras Applications ResNets,
    ``stack<i>_block<j>_*`` of KerasHub's). Without such names: ``[everything, []]``."""
    groups, after_blocks = {"stem": []}, False
    for layer in model.layers:
        match = _BLOCK.match(layer.name)
        after_blocks = after_blocks or bool(match)
        key = match.group(1) if match else ("top" if after_blocks else "stem")
        groups.setdefault(key, []).extend(layer.weights)
    groups["top"] = groups.pop("top", [])  # last
    return list(groups.values())


def export_image_encoder(model: keras.Model, path: str, image_size: int | None = None,
                         preprocess: Callable[[tf.Tensor], tf.Tensor] | None = None) -> None:
    """Writes a Keras image backbone as a TF Hub image feature vector at ``path``.

    Contract (tfhub.dev's ``feature_vector`` models): ``__call__(images, training=False)`` on
    float32 ``[batch, height, width, 3]`` images with values in [0, 1] returns ``[batch,
    features]``; ``serving_default(images) -> {"feature_vector"}``; ``variables`` and
    ``trainable_variables``. The model's own input scaling (``preprocess``) is inside, so callers
    always pass [0, 1]. ``block_sizes`` (int32) says how many of ``variables``, in order, belong to
    the stem, each residual block and the top (see ``block_groups``), so a loader can fine-tune
    only the top blocks.

    Args:
        model: Keras model from images to ``[batch, features]`` (pooling included).
        image_size: the input size the model expects (fixed in the signature), or None for any.
        preprocess: ``f(images in [0, 1]) -> model inputs`` (e.g. ``lambda x:
            keras.applications.resnet.preprocess_input(x * 255)``), or None.

    Example:
        >>> features = keras.applications.ResNet50V2(include_top=False, weights=None,
        ...                                          pooling="avg")  # doctest: +SKIP
        >>> export_image_encoder(features, "/tmp/resnet", 224,
        ...                      lambda x: x * 2 - 1)  # doctest: +SKIP
    """
    groups = block_groups(model)
    seen = {id(v) for group in groups for v in group}
    groups[-1] += [v for v in model.weights if id(v) not in seen]  # e.g. weights of nested models
    ordered = [v for group in groups for v in group]
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")

    @tf.function
    def call(images, training=False):
        inputs = preprocess(images) if preprocess else images
        return tf.cast(model(inputs, training=training), tf.float32)

    @tf.function(input_signature=[spec])
    def serve(images):
        return {"feature_vector": call(images, training=False)}

    trainable_ids = {id(v) for v in model.trainable_weights}
    _save_reusable(path, call, spec, serve, _variables(ordered),
                   _variables([v for v in ordered if id(v) in trainable_ids]),
                   block_sizes=tf.Variable([len(g) for g in groups], dtype=tf.int32,
                                           trainable=False))
