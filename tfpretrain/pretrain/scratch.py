"""New encoders from scratch, written in the TF Hub format the rest of the toolkit loads."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from tfpretrain.hub_export import export_bert_encoder, export_bert_preprocessor
from tfpretrain.pretrain.mlm import learn_wordpiece_vocabulary

if TYPE_CHECKING:
    import tensorflow as tf


def build_new_bert(model_config: Any, documents: tf.data.Dataset, directory: str,
                   seed: int) -> tuple[str, str]:
    """A randomly initialised BERT with a WordPiece vocabulary learned from ``documents`` (a
    dataset of strings), written as a TF Hub-format pair under ``directory``; returns
    ``(encoder_dir, preprocessor_dir)``.

    ``model_config`` has ``vocab_size``, ``lower_case``, ``seq_length``, ``num_layers``,
    ``num_heads``, ``hidden_dim``, ``intermediate_dim`` and ``dropout``. The pair is kept: it is
    the random-init baseline of the pretrained model. Its weights are drawn from ``seed`` alone
    (Keras' global seed is set to it just before), whatever used random numbers earlier in the
    process (a TFDS dataset prepared on first use does). A directory that already holds the pair
    (a resumed run) is reused as it is.

    Example:
        >>> encoder, preprocessor = build_new_bert(cfg.model, corpus["train"],
        ...                                        "runs/mlm/initial", seed=42)  # doctest: +SKIP
    """
    import keras
    import keras_hub

    encoder, preprocessor = (os.path.join(directory, "encoder"),
                             os.path.join(directory, "preprocessor"))
    if os.path.exists(encoder):
        return encoder, preprocessor
    m = model_config
    vocab_file = os.path.join(os.path.dirname(os.path.abspath(directory)), "vocab.txt")
    print(f"learning a {m.vocab_size}-token WordPiece vocabulary from the corpus ...", flush=True)
    learn_wordpiece_vocabulary(documents, m.vocab_size, vocab_file, m.lower_case)
    export_bert_preprocessor(vocab_file, preprocessor, m.lower_case, m.seq_length)
    with open(vocab_file) as f:
        vocab_size = sum(1 for _ in f)
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocab_size, num_layers=m.num_layers, num_heads=m.num_heads,
        hidden_dim=m.hidden_dim, intermediate_dim=m.intermediate_dim, dropout=m.dropout,
        max_sequence_length=m.seq_length,
        dtype="float32")  # the initial weights are a float32 encoder under any run policy
    export_bert_encoder(backbone, encoder)
    return encoder, preprocessor
