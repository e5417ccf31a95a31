"""A tiny BERT in the TF Hub format, with the same contracts as the real ones, for tests.

Random weights, a 2-layer 16-wide transformer and a small word-level WordPiece vocabulary:
it exports in a second and trains in milliseconds per step.
"""

import os

TOY_WORDS = (
    "the a of to and in is it that for on with as was at by good bad great awful movie film "
    "plot actor fun boring love hate best worst sport goal team match win business market "
    "bank profit shares tech phone software computer internet politics election minister vote "
    "party government music show star award"
).split()


def export_toy_bert(directory, words=TOY_WORDS, num_layers=2, hidden_dim=16, seed=0):
    """Writes ``<directory>/encoder`` and ``<directory>/preprocessor``; returns both paths.

    Example:
        >>> encoder, preprocessor = export_toy_bert("/tmp/toy")  # doctest: +SKIP
    """
    import keras
    import keras_hub

    from tfpretrain.hub_format import export_bert_encoder, export_bert_preprocessor

    os.makedirs(directory, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(words))
    pieces = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz.,!?")
    vocab += [piece for piece in pieces if piece not in vocab]
    vocab_file = os.path.join(directory, "vocab.txt")
    with open(vocab_file, "w") as f:
        f.write("\n".join(vocab) + "\n")
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocab), num_layers=num_layers, num_heads=2, hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim, max_sequence_length=64, dropout=0.1,
    )
    encoder = os.path.join(directory, "encoder")
    preprocessor = os.path.join(directory, "preprocessor")
    export_bert_encoder(backbone, encoder)
    export_bert_preprocessor(vocab_file, preprocessor, lower_case=True, seq_length=32)
    return encoder, preprocessor
