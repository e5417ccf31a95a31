"""Masked-language-model pretraining of TF Hub-format BERT encoders.

The pieces: a WordPiece vocabulary learned from a corpus (KerasHub's learner), documents cut
into ``seq_length`` windows and masked with tensorflow-text's ``mask_language_model`` (15% of
tokens or whole words; of those 80% ``[MASK]``, 10% a random token, 10% unchanged), BERT's
masked-LM head tied to the encoder's word embeddings, its loss for ``tfpretrain.train.fit``, and
an export that adds an ``mlm`` sub-object to the encoder, as TF Model Garden's ``model_with_mlm``
export does:

    encoder = tf.saved_model.load("<export>/encoder")
    logits = encoder.mlm({"input_word_ids": ..., "input_mask": ..., "input_type_ids": ...,
                          "masked_lm_positions": ...})["mlm_logits"]
    # logits: [batch, positions, vocab]
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from tfpretrain.data.pipeline import finish_batches
from tfpretrain.encoders.bert import INPUT_NAMES
from tfpretrain.files import atomic_directory
from tfpretrain.hub_export import normalize_uncased

if TYPE_CHECKING:
    from tfpretrain.encoders.bert import LoadedBertEncoder

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def learn_wordpiece_vocabulary(documents: tf.data.Dataset, vocabulary_size: int, path: str | None,
                               lower_case: bool = True) -> list[str] | None:
    """Learns a WordPiece vocabulary of about ``vocabulary_size`` tokens from ``documents`` (a
    dataset of strings) with KerasHub's learner and writes it to ``path``, one token per line,
    ``SPECIAL_TOKENS`` first. Texts are normalised as ``export_bert_preprocessor`` will normalise
    them (``normalize_uncased`` when ``lower_case``), so the vocabulary matches its tokenizer.

    Example:
        >>> vocab = learn_wordpiece_vocabulary(corpus["train"], 8000,
        ...                                    "/tmp/vocab.txt")  # doctest: +SKIP
    """
    import keras_hub

    texts = documents.batch(256)
    if lower_case:
        texts = texts.map(normalize_uncased)
    return keras_hub.tokenizers.compute_word_piece_vocabulary(
        texts, vocabulary_size, vocabulary_output_file=path, lowercase=False, strip_accents=False,
        reserved_tokens=list(SPECIAL_TOKENS))


@dataclasses.dataclass
class Masking:
    """How examples are masked; the ids come from the encoder's vocabulary."""

    vocab_size: int
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    seq_length: int = 128
    mask_rate: float = 0.15
    max_predictions: int = 20
    whole_word: bool = False

    @classmethod
    def from_vocabulary(cls, vocab_file: str, **kwargs: Any) -> Masking:
        with tf.io.gfile.GFile(vocab_file) as f:
            vocab = [line.rstrip("\n") for line in f]
        missing = [t for t in ("[CLS]", "[SEP]", "[MASK]") if t not in vocab]
        if missing:
            raise ValueError(f"vocabulary {vocab_file} has no {missing} token(s); masked-LM "
                             "training needs them")
        return cls(len(vocab), vocab.index("[CLS]"), vocab.index("[SEP]"),
                   vocab.index("[PAD]") if "[PAD]" in vocab else 0, vocab.index("[MASK]"), **kwargs)


def make_windows(documents: tf.data.Dataset, preprocessor: Any,
                 seq_length: int) -> tf.data.Dataset:
    """Each document tokenized and cut into windows of at most ``seq_length - 2`` word pieces
    (room for ``[CLS]`` and ``[SEP]``): a dataset of ``(piece_ids, word_index)`` int vectors, the
    word index saying which word of the document each piece belongs to (for whole-word masking).
    Cache it: masking runs on every pass, the tokenization need not."""
    window = seq_length - 2

    def split(pieces):  # [words, pieces] of one document
        tokens, words = pieces.flat_values, pieces.value_rowids()
        count = tf.size(tokens, out_type=tf.int64)
        splits = tf.concat([tf.range(0, count, window, dtype=tf.int64), [count]], axis=0)
        return tf.data.Dataset.from_tensor_slices(
            (tf.RaggedTensor.from_row_splits(tokens, splits),
             tf.RaggedTensor.from_row_splits(words, splits)))

    pieces = documents.batch(64).map(preprocessor.tokenize).unbatch()
    return pieces.flat_map(split).map(lambda tokens, words: (tf.cast(tokens, tf.int32), words))


def _batch_item_selector():
    """tensorflow-text's ``RandomItemSelector`` drawing all rows of a batch in one op: its own
    selection shuffles row by row in a ``map_fn`` whose iterations may run in any order, which
    makes a batch's masks nondeterministic. Same distribution: a uniformly random
    ``min(ceil(rate x selectable), max_selections)`` of each row's selectable items."""
    import tensorflow_text as text

    class BatchItemSelector(text.RandomItemSelector):
        def get_selection_mask(self, input_ids, axis):
            selectable = self.get_selectable(input_ids, axis)  # [batch, (items)]
            scores = tf.random.uniform(tf.shape(selectable.flat_values))
            # Selectable items first in random order, then the rest, then the padding.
            scores = selectable.with_flat_values(tf.where(selectable.flat_values, scores, 2.0))
            rank = tf.argsort(tf.argsort(scores.to_tensor(3.0), axis=1), axis=1)
            count = tf.reduce_sum(tf.cast(selectable, tf.float32), axis=1)
            chosen = tf.minimum(tf.math.ceil(count * self.selection_rate),
                                self.max_selections_per_batch)
            return tf.RaggedTensor.from_tensor(rank < tf.cast(chosen, rank.dtype)[:, None],
                                               lengths=selectable.row_lengths())

    return BatchItemSelector


def _mask_batch(tokens, words, masking):
    """A batch of windows (ragged ``[batch, (pieces)]`` piece ids and word indices) → (inputs,
    labels), masked with tensorflow-text in one call per batch (per window it costs the input
    pipeline several times more): whole words or pieces, ``[CLS]``/``[SEP]`` added, padded to
    the longest window."""
    import tensorflow_text as text

    # Group the pieces into words: a group starts at each row's first piece and wherever the word
    # index changes (with whole words) or at every piece.
    flat, rows = tokens.flat_values, tokens.value_rowids()
    first = tf.range(tf.size(flat, out_type=tf.int64)) == tf.gather(tokens.row_splits, rows)
    if masking.whole_word:
        word = words.flat_values
        first |= tf.concat([[True], word[1:] != word[:-1]], axis=0)
    else:
        first = tf.ones_like(first)
    starts = tf.cast(first, tf.int64)
    grouped = tf.RaggedTensor.from_row_lengths(
        tf.RaggedTensor.from_value_rowids(flat, tf.cumsum(starts) - 1),
        tf.math.segment_sum(starts, rows))
    batch = grouped.nrows()
    ends = [tf.RaggedTensor.from_tensor(tf.fill([batch, 1, 1], i), ragged_rank=2)
            for i in (masking.cls_id, masking.sep_id)]
    grouped = tf.concat([ends[0], grouped, ends[1]], axis=1)
    selector = _batch_item_selector()(
        masking.max_predictions, masking.mask_rate,
        unselectable_ids=[masking.cls_id, masking.sep_id, masking.pad_id])
    chooser = text.MaskValuesChooser(masking.vocab_size, masking.mask_id, 0.8, 0.1)
    ids, positions, targets = text.mask_language_model(grouped, selector, chooser, axis=1)
    # Whole words can mask more pieces than max_predictions; only the first ones are scored.
    positions = tf.cast(positions[:, :masking.max_predictions], tf.int32)
    targets = tf.cast(targets[:, :masking.max_predictions], tf.int32)
    scored = [None, masking.max_predictions]
    inputs = {"input_word_ids": ids.to_tensor(masking.pad_id),
              "input_mask": tf.ones_like(ids).to_tensor(),
              "input_type_ids": tf.zeros_like(ids).to_tensor(),
              "masked_lm_positions": positions.to_tensor(shape=scored)}
    labels = {"masked_lm_ids": targets.to_tensor(shape=scored),
              "masked_lm_weights": tf.ones_like(positions, tf.float32).to_tensor(shape=scored)}
    return inputs, labels


def make_mlm_batches(windows: tf.data.Dataset, masking: Masking, batch_size: int, seed: int,
                     shuffle_seed: int | None = None, shuffle_buffer: int = 10000,
                     skip_batches: int = 0) -> tf.data.Dataset:
    """Masked batches of ``windows`` (``make_windows``), padded to their longest window.

    The masks are a pure function of ``seed`` and the window order: tensorflow-text's masking
    draws from TensorFlow's global seed, which is set to ``seed`` while the pipeline is built, and
    the masking map runs sequentially. A new ``seed`` per epoch gives new masks per epoch (dynamic
    masking), and a resumed run redraws exactly the masks of the batches it skips.

    Example:
        >>> batches = make_mlm_batches(windows, masking, 32, seed=42 + epoch,
        ...                            shuffle_seed=42 + epoch)  # doctest: +SKIP
    """
    if shuffle_seed is not None:
        windows = windows.shuffle(shuffle_buffer, seed=shuffle_seed,
                                  reshuffle_each_iteration=False)
    tf.random.set_seed(seed)
    batches = windows.ragged_batch(batch_size).map(lambda t, w: _mask_batch(t, w, masking))
    if skip_batches:
        batches = batches.skip(skip_batches)
    return finish_batches(batches)


def masked_lm_loss(labels: dict[str, tf.Tensor],
                   logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Cross-entropy at each masked position, weighted by ``masked_lm_weights`` (0 for padding):
    the ``loss_fn`` of ``tfpretrain.train.fit`` for masked LM."""
    losses = keras.losses.sparse_categorical_crossentropy(
        labels["masked_lm_ids"], tf.cast(logits, tf.float32), from_logits=True)
    return losses, tf.cast(labels["masked_lm_weights"], tf.float32)


class MaskedLMHead(keras.layers.Layer):
    """BERT's masked-LM head: gather the masked positions, dense + GELU, LayerNorm, then logits
    against the word-embedding table (tied weights) plus a per-token bias.

    KerasHub's ``MaskedLMHead`` ties only to a KerasHub ``ReversibleEmbedding`` layer; an encoder
    loaded from a SavedModel has its table as a plain variable, which this head takes.

    ``tied=False`` gives the head its own output table of the same shape (initialised as BERT's
    weights are): the softmax's gradient then no longer reaches the input embeddings, which it
    otherwise pushes all rare tokens along one shared direction ("representation degeneration",
    Gao et al. 2019).
    """

    def __init__(self, embeddings: keras.Variable, activation: str = "gelu",
                 epsilon: float = 1e-12, tied: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        vocab_size, width = embeddings.shape
        initializer = keras.initializers.TruncatedNormal(stddev=0.02)
        if tied:
            # A closure, not an attribute: the table is the encoder's weight, and an attribute
            # would make it this layer's too (tracked, saved and trained twice).
            self._embeddings = lambda: embeddings
        else:
            table = self.add_weight(shape=(vocab_size, width), initializer=initializer,
                                    name="output_embeddings")
            self._embeddings = lambda: table
        self.transform = keras.layers.Dense(width, activation=activation,
                                            kernel_initializer=initializer, name="transform")
        self.layer_norm = keras.layers.LayerNormalization(epsilon=epsilon, name="layer_norm")
        self.transform.build((None, None, width))
        self.layer_norm.build((None, None, width))
        self.output_bias = self.add_weight(shape=(vocab_size,), initializer="zeros",
                                           name="output_bias")

    def call(self, sequence: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
        hidden = tf.gather(sequence, positions, batch_dims=1)
        hidden = self.layer_norm(self.transform(hidden))
        # Under a mixed policy the table is float32 and the hidden states are not.
        table = tf.cast(self._embeddings(), hidden.dtype)
        return tf.matmul(hidden, table, transpose_b=True) + self.output_bias


def word_embeddings(encoder_layer: keras.layers.Layer, vocab_size: int) -> keras.Variable:
    """The encoder's word-embedding table: its ``[vocab_size, width]`` weight (by shape; by name
    when several fit), as a Keras variable shared with the encoder."""
    tables = [w for w in encoder_layer.weights if len(w.shape) == 2 and w.shape[0] == vocab_size]
    named = [w for w in tables if any(k in w.path for k in ("word", "token"))]
    if len(named or tables) != 1:
        raise ValueError(f"cannot tell the word-embedding table of encoder "
                         f"{encoder_layer.name!r}: {len(named or tables)} weights have "
                         f"{vocab_size} rows (the vocabulary size)")
    return (named or tables)[0]


def build_mlm_model(encoder_layer: keras.layers.Layer, vocab_size: int,
                    tied: bool = True) -> tuple[keras.Model, MaskedLMHead]:
    """A masked-LM model: BERT inputs plus ``masked_lm_positions`` → logits ``[batch, positions,
    vocab_size]``, the head tied to the encoder's word embeddings (or, ``tied=False``, with its
    own output table).

    Example:
        >>> loaded = load_encoder("minilm_l6")  # doctest: +SKIP
        >>> model, head = build_mlm_model(loaded.layer, 30522)  # doctest: +SKIP
    """
    inputs = {name: keras.Input((None,), dtype="int32", name=name)
              for name in INPUT_NAMES + ("masked_lm_positions",)}
    sequence = encoder_layer({name: inputs[name] for name in INPUT_NAMES})["sequence_output"]
    head = MaskedLMHead(word_embeddings(encoder_layer, vocab_size), tied=tied, name="mlm_head")
    model = keras.Model(inputs, head(sequence, inputs["masked_lm_positions"]), name="bert_mlm")
    return model, head


@tf.function(reduce_retracing=True)
def _score(model, inputs, labels):
    logits = model(inputs, training=False)
    losses, weights = masked_lm_loss(labels, logits)
    correct = tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == labels["masked_lm_ids"],
                      tf.float32)
    return tf.reduce_sum(losses * weights), tf.reduce_sum(correct * weights), tf.reduce_sum(weights)


def evaluate_mlm(
    model: keras.Model, batches: Iterable[tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]],
) -> dict[str, float]:
    """``{"accuracy", "loss", "masked_tokens"}`` over the masked positions of ``batches``."""
    loss = correct = count = 0.0
    for inputs, labels in batches:
        batch_loss, batch_correct, batch_count = (float(x) for x in _score(model, inputs, labels))
        loss, correct, count = loss + batch_loss, correct + batch_correct, count + batch_count
    return {"accuracy": correct / max(count, 1), "loss": loss / max(count, 1),
            "masked_tokens": int(count)}


def most_frequent_token_baseline(
    windows: tf.data.Dataset,
    batches: Iterable[tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]],
    masking: Masking,
) -> tuple[int, float]:
    """Accuracy of always predicting the corpus's most frequent token (``windows``: the training
    windows) on the masked positions of ``batches``; returns ``(token_id, accuracy)``."""
    counts = np.zeros(masking.vocab_size, np.int64)
    for tokens in windows.map(lambda tokens, _: tokens).ragged_batch(4096):
        counts += np.bincount(tokens.flat_values.numpy(),
                              minlength=masking.vocab_size)[:masking.vocab_size]
    counts[[masking.cls_id, masking.sep_id, masking.pad_id, masking.mask_id]] = 0
    token = int(counts.argmax())
    hits = total = 0.0
    for _, labels in batches:
        weights = labels["masked_lm_weights"].numpy()
        hits += float(((labels["masked_lm_ids"].numpy() == token) * weights).sum())
        total += float(weights.sum())
    return token, hits / max(total, 1)


def mlm_object(encoder: Callable, head: MaskedLMHead, variables: list,
               trainable_variables: list) -> tf.Module:
    """The ``mlm`` sub-object of an exported encoder: ``mlm(inputs, training=False)`` on the
    encoder's inputs plus int32 ``masked_lm_positions`` ``[batch, positions]`` returns the
    encoder's outputs plus ``mlm_logits`` ``[batch, positions, vocab]``; its ``variables`` are
    the encoder's (``variables``, ``trainable_variables``: as the SavedModel stores them) and the
    head's. ``encoder``: ``f(inputs, training=...) -> {"sequence_output", ...}``."""
    specs = {name: tf.TensorSpec([None, None], tf.int32, name=name)
             for name in INPUT_NAMES + ("masked_lm_positions",)}

    @tf.function
    def call(inputs, training=False):
        outputs = dict(encoder({name: inputs[name] for name in INPUT_NAMES}, training=training))
        outputs["mlm_logits"] = head(outputs["sequence_output"], inputs["masked_lm_positions"])
        return outputs

    for training in (False, True):
        call.get_concrete_function(specs, training=training)
    mlm = tf.__internal__.tracking.AutoTrackable()
    mlm.__call__ = call
    mlm.variables = list(variables) + [w.value for w in head.weights]
    mlm.trainable_variables = (list(trainable_variables)
                               + [w.value for w in head.trainable_weights])
    return mlm


def export_encoder_with_mlm(encoder_layer: keras.layers.Layer, head: MaskedLMHead,
                            path: str) -> None:
    """Writes the trained encoder at ``path`` in the TF Hub format with an ``mlm`` sub-object
    (``mlm_object``); the encoder's own contract (``__call__``, ``serving_default``) is unchanged.

    ``encoder_layer`` is a ``HubLayer`` (its SavedModel, variables updated in place, is saved
    again) or a ``KerasBertEncoder`` (its backbone is written by ``export_bert_encoder``)."""
    from tfpretrain.encoders.bert import KerasBertEncoder
    from tfpretrain.hub_export import export_bert_encoder

    if isinstance(encoder_layer, KerasBertEncoder):
        backbone = encoder_layer.backbone
        mlm = mlm_object(encoder_layer, head, [w.value for w in backbone.weights],
                         [w.value for w in backbone.trainable_weights])
        export_bert_encoder(backbone, path, mlm=mlm)
        return
    encoder = encoder_layer.saved_model
    encoder.mlm = mlm_object(encoder, head, encoder.variables, encoder.trainable_variables)
    with atomic_directory(path) as tmp:
        tf.saved_model.save(encoder, tmp,
                            signatures={"serving_default": encoder.signatures["serving_default"]})


def export_pretrained(encoder: LoadedBertEncoder, head: MaskedLMHead, path: str) -> str:
    """Writes what masked-LM pretraining produced under ``path``: ``encoder/`` (with its ``mlm``
    sub-object, see ``export_encoder_with_mlm``), a copy of the ``preprocessor/`` it was trained
    with and that preprocessor's ``vocab.txt``."""
    import shutil

    from tfpretrain.hub import resolve_handle

    export_encoder_with_mlm(encoder.layer, head, os.path.join(path, "encoder"))
    with atomic_directory(os.path.join(path, "preprocessor")) as tmp:
        shutil.copytree(resolve_handle(encoder.preprocessor_handle), tmp, dirs_exist_ok=True)
    vocab_file = encoder.preprocessor.vocab_file.asset_path.numpy().decode()
    shutil.copyfile(vocab_file, os.path.join(path, "vocab.txt"))
    return path


def restart_safe_evaluation(path: str, model: keras.Model, batches: list) -> dict[str, float]:
    """``evaluate_mlm`` before training, kept in ``path``: a resumed run (checkpoints beside
    ``path``) reads the first run's score instead of scoring its restored weights."""
    from tfpretrain.files import write_json

    checkpoints = os.path.join(os.path.dirname(path), "checkpoints")
    if os.path.exists(path) and os.path.isdir(checkpoints):
        with open(path) as f:
            return json.load(f)
    start = evaluate_mlm(model, batches)
    write_json(path, start)
    return start
