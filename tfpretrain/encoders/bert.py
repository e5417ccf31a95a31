"""BERT-family encoders in the TF Hub format: a preset, a local directory, gs:// or a hub URL, or
any BERT KerasHub loads (hf://org/model, a KerasHub preset name), converted once into the cache."""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from tfpretrain import hub, zoo

INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")


class EncoderError(ValueError):
    """An encoder/preprocessor pair that cannot be used together, named in the message."""


@dataclasses.dataclass
class LoadedBertEncoder:
    """A fine-tunable encoder layer plus what feeding it needs."""

    layer: hub.HubLayer
    preprocessor: Any  # restored TF Hub-format preprocessor (tokenize, bert_pack_inputs)
    encoder_handle: str
    preprocessor_handle: str
    seq_length: int
    pooling: str


def _resolve_pair(encoder, preprocessor):
    if zoo.is_preset(encoder) or zoo.is_keras_hub_handle(encoder):
        info = zoo.load_preset(encoder)
        return info["encoder"], preprocessor or info["preprocessor"], info
    if not preprocessor:
        raise EncoderError(
            f"model.preprocessor is required with model.encoder={encoder!r} (presets and BERTs "
            "KerasHub loads carry their own: " + ", ".join(sorted(zoo.PRESETS))
            + ", hf://org/model, KerasHub preset names)"
        )
    return encoder, preprocessor, {}


def _rows(layer, word):
    tables = [v.shape[0] for v in layer.weights if len(v.shape) == 2 and word in v.path]
    return max(tables, default=None)


def _check_pair(layer, preprocessor, encoder, preprocessor_handle, seq_length):
    """Catches a mismatched pair here, with names, instead of as a gather error mid-training."""
    vocab_size = getattr(preprocessor, "vocab_size", None)
    if vocab_size is not None:  # a (possibly mirrored) variable in our exports
        vocab_size = int(tf.convert_to_tensor(vocab_size).numpy())
    rows = _rows(layer, "embedding")
    if vocab_size is not None and rows is not None and vocab_size > rows:
        raise EncoderError(
            f"preprocessor {preprocessor_handle!r} has a {vocab_size}-token vocabulary but "
            f"encoder {encoder!r} embeds at most {rows} tokens; use the preprocessor that was "
            "exported with this encoder"
        )
    positions = _rows(layer, "position")
    if positions is not None and seq_length > positions:
        raise EncoderError(
            f"model.seq_length={seq_length} is longer than encoder {encoder!r} supports "
            f"({positions} positions); use --model.seq_length={positions} or less"
        )
    for name in ("tokenize", "bert_pack_inputs"):
        if not hasattr(preprocessor, name):
            raise EncoderError(f"{preprocessor_handle!r} is not a TF Hub BERT preprocessor "
                               f"(no .{name})")


def load_bert_encoder(encoder: str = "minilm_l6", preprocessor: str = "", trainable: bool = True,
                      seq_length: int | None = None, pooling: str | None = None
                      ) -> LoadedBertEncoder:
    """Loads a TF Hub-format BERT encoder and preprocessor.

    Args:
        encoder: preset name (``python -m tfpretrain.zoo list``), TF Hub-format local dir,
            ``gs://`` or URL; or a BERT KerasHub loads (``hf://org/model``, a KerasHub preset
            name, a local Hugging Face or KerasHub directory), converted once into the cache.
        preprocessor: the matching preprocessor; presets supply their own.
        trainable: fine-tune the encoder's weights.
        seq_length: maximum tokens per example (default: the preset's, else 256 or the
            encoder's number of positions if smaller).
        pooling: ``"mean"`` or ``"pooled"`` (default: the preset's, else ``"pooled"``).

    Example:
        >>> loaded = load_bert_encoder("minilm_l6", trainable=True)  # doctest: +SKIP
        >>> loaded.layer, loaded.seq_length  # doctest: +SKIP
    """
    encoder_path, preprocessor_path, info = _resolve_pair(encoder, preprocessor)
    layer = hub.HubLayer(encoder_path, trainable=trainable, name="encoder")
    pre = hub.load_saved_model(preprocessor_path)
    seq_length = seq_length or info.get("seq_length") or min(256, _rows(layer, "position") or 256)
    _check_pair(layer, pre, encoder, preprocessor_path, seq_length)
    return LoadedBertEncoder(
        layer=layer,
        preprocessor=pre,
        encoder_handle=encoder,
        preprocessor_handle=preprocessor or preprocessor_path,
        seq_length=seq_length,
        pooling=pooling or info.get("pooling", "pooled"),
    )


# Deprecated names, kept for one release.
load_encoder = load_bert_encoder
LoadedEncoder = LoadedBertEncoder
