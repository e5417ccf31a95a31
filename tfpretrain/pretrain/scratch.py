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
    ``num_heads``, ``hidden_dim``, ``intermediate_dim``, ``dropout`` and ``init`` (``"random"``:
    BERT's truncated-normal weights; ``"local"``: those, then ``init_local_attention``). The pair
    is kept: it is the initial-weights baseline of the pretrained model. Its weights are drawn
    from ``seed`` alone (Keras' global seed is set to it just before), whatever used random
    numbers earlier in the process (a TFDS dataset prepared on first use does). A directory that
    already holds the pair (a resumed run) is reused as it is.

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
    if m.init not in ("random", "local"):  # before the vocabulary, which takes a while
        raise ValueError(f"model.init must be 'random' or 'local', not {m.init!r}")
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
    if m.init == "local":
        init_local_attention(backbone, seed)
    export_bert_encoder(backbone, encoder)
    return encoder, preprocessor


def neighbour_offsets(num_heads: int) -> list[int]:
    """The offset each head of ``init_local_attention`` starts attending to: +1, -1, +2, -2, ..."""
    return [(h // 2 + 1) * (1 if h % 2 == 0 else -1) for h in range(num_heads)]


def init_local_attention(backbone: Any, seed: int, scale: float = 0.04,
                         sharpness: float = 3.0) -> None:
    """Start a new KerasHub ``BertBackbone``'s first layer attending to each piece's neighbours.

    A BERT trained from scratch with masked LM first learns to predict tokens by their frequency
    and spends most of a small compute budget on a plateau before its attention finds the
    neighbouring pieces (docs/pretraining.md). This initialisation starts it there, in the spirit
    of mimetic initialisation (Trockman & Kolter, 2023): sinusoidal position embeddings (the
    first ``head_dim / 2`` frequency pairs spread over 0.2-3.0 radians per position so that
    neighbours are told apart, the rest as in "Attention Is All You Need"), times ``scale`` (twice
    the token embeddings' standard deviation, so that position dominates layer 0's queries and
    keys). Head ``h`` of layer 0 gets query and key kernels that rotate those frequencies by its
    offset (``neighbour_offsets``), so it attends to the piece at that offset, ``sharpness``
    setting how sharply, and value/output kernels that copy a ``head_dim``-wide projection of it
    (disjoint per head, a random orthonormal basis drawn from ``seed``) into the residual stream.
    Every other weight keeps BERT's initialisation; training is free to change all of them.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    table = backbone.position_embedding.position_embeddings
    positions, width = table.shape
    attention = backbone.transformer_layers[0]._self_attention_layer
    query, key, value, output = (attention._query_dense, attention._key_dense,
                                 attention._value_dense, attention._output_dense)
    _, heads, head_dim = query.kernel.shape
    half, pairs = width // 2, head_dim // 2
    frequencies = 1.0 / 10000 ** (2 * np.arange(half) / width)
    frequencies[:pairs] = np.linspace(3.0, 0.2, pairs)
    angles = np.arange(positions)[:, None] * frequencies[None]
    table.assign((scale * np.concatenate([np.sin(angles), np.cos(angles)], 1)).astype("float32"))
    q = np.zeros((width, heads, head_dim))
    k = np.zeros((width, heads, head_dim))
    for h, offset in enumerate(neighbour_offsets(heads)):
        for j in range(pairs):  # q_i . k_j peaks where j = i + offset
            sin, cos = j, half + j
            c, s = np.cos(frequencies[j] * offset), np.sin(frequencies[j] * offset)
            q[sin, h, 2 * j] = q[cos, h, 2 * j + 1] = sharpness
            k[sin, h, 2 * j], k[cos, h, 2 * j] = sharpness * c, -sharpness * s
            k[cos, h, 2 * j + 1], k[sin, h, 2 * j + 1] = sharpness * c, sharpness * s
    basis = np.linalg.qr(rng.normal(size=(width, width)))[0][:, :heads * head_dim]
    query.kernel.assign(q.astype("float32"))
    key.kernel.assign(k.astype("float32"))
    value.kernel.assign(basis.reshape(width, heads, head_dim).astype("float32"))
    output.kernel.assign(basis.T.reshape(heads, head_dim, width).astype("float32"))
