"""Tiny encoders with the same contracts as the real ones, for tests.

A TF Hub-format BERT (random weights, a 2-layer 16-wide transformer, a small word-level
WordPiece vocabulary) and a Universal-Sentence-Encoder-contract model (hashed-word
embeddings): each exports in a second and trains in milliseconds per step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

TOY_WORDS = (
    "the a of to and in is it that for on with as was at by good bad great awful movie film "
    "plot actor fun boring love hate best worst sport goal team match win business market "
    "bank profit shares tech phone software computer internet politics election minister vote "
    "party government music show star award"
).split()


def export_toy_bert(directory: str, words: Sequence[str] = TOY_WORDS, num_layers: int = 2,
                    hidden_dim: int = 16, seed: int = 0, dropout: float = 0.1) -> tuple[str, str]:
    """Writes ``<directory>/encoder`` and ``<directory>/preprocessor``; returns both paths.

    Example:
        >>> encoder, preprocessor = export_toy_bert("/tmp/toy")  # doctest: +SKIP
    """
    import keras
    import keras_hub

    from tfpretrain.hub_export import export_bert_encoder, export_bert_preprocessor

    os.makedirs(directory, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(words))
    pieces = (["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
              + list("abcdefghijklmnopqrstuvwxyz.,!?"))
    vocab += [piece for piece in pieces if piece not in vocab]
    vocab_file = os.path.join(directory, "vocab.txt")
    with open(vocab_file, "w") as f:
        f.write("\n".join(vocab) + "\n")
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocab), num_layers=num_layers, num_heads=2, hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim, max_sequence_length=64, dropout=dropout,
    )
    encoder = os.path.join(directory, "encoder")
    preprocessor = os.path.join(directory, "preprocessor")
    export_bert_encoder(backbone, encoder)
    export_bert_preprocessor(vocab_file, preprocessor, lower_case=True, seq_length=32)
    return encoder, preprocessor


def export_toy_sentence_encoder(directory: str, dim: int = 8, buckets: int = 64,
                                signature_only: bool = False, seed: int = 0) -> str:
    """Writes a tiny Universal-Sentence-Encoder-contract SavedModel at ``directory``.

    Strings in, ``[batch, dim]`` float32 out: the mean of hashed-word embeddings (trainable).
    ``signature_only=True`` saves it with only a ``serving_default`` signature (input
    ``sentences``, output ``embedding``) and no ``__call__``, as some hub models are.

    Example:
        >>> path = export_toy_sentence_encoder("/tmp/toy_use")  # doctest: +SKIP
        >>> tf.saved_model.load(path)(tf.constant(["good film"])).shape  # doctest: +SKIP
        TensorShape([1, 8])
    """
    import tensorflow as tf

    root = tf.Module()
    root.table = tf.Variable(tf.random.stateless_normal([buckets, dim], seed=[seed, 0]),
                             name="table")

    def embed(texts):
        words = tf.strings.split(tf.strings.lower(texts))
        vectors = tf.gather(root.table, tf.strings.to_hash_bucket_fast(words, buckets))
        counts = tf.cast(tf.maximum(words.row_lengths(), 1), tf.float32)[:, tf.newaxis]
        return tf.reduce_sum(vectors, axis=1) / counts

    strings = tf.TensorSpec([None], tf.string, name="sentences")
    serve = tf.function(lambda sentences: {"embedding": embed(sentences)},
                        input_signature=[strings])
    if not signature_only:
        root.__call__ = tf.function(embed, input_signature=[strings])
    tf.saved_model.save(root, directory, signatures={"serving_default": serve})
    return directory


def export_unseeded_dropout_encoder(encoder_dir: str, path: str, rate: float = 0.1) -> str:
    """Re-exports the TF Hub BERT encoder at ``encoder_dir`` with one more dropout on its
    ``sequence_output`` whose random op carries no seed, as encoders exported by TF Model Garden's
    ``export_tfhub`` (tfhub.dev's BERTs) do when traced without a global seed. Writes ``path``.

    Example:
        >>> export_unseeded_dropout_encoder("/tmp/toy/encoder", "/tmp/unseeded")  # doctest: +SKIP
    """
    import tensorflow as tf

    encoder = tf.saved_model.load(encoder_dir)
    specs = {name: tf.TensorSpec([None, None], tf.int32, name=name)
             for name in ("input_word_ids", "input_mask", "input_type_ids")}

    @tf.function
    def call(inputs, training=False):
        outputs = dict(encoder(inputs, training=training))
        if training:  # seed=0, seed2=0: the op TensorFlow's determinism refuses
            sequence = outputs["sequence_output"]
            keep = tf.raw_ops.RandomUniform(shape=tf.shape(sequence), dtype=tf.float32, seed=0,
                                            seed2=0) >= rate
            outputs["sequence_output"] = tf.where(keep, sequence / (1 - rate), 0.0)
        return outputs

    for training in (False, True):
        call.get_concrete_function(specs, training=training)
    module = tf.__internal__.tracking.AutoTrackable()
    module.encoder = encoder
    module.__call__ = call
    module.variables = list(encoder.variables)
    module.trainable_variables = list(encoder.trainable_variables)
    tf.saved_model.save(module, path)
    return path
