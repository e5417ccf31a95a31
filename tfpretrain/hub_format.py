"""Deprecated alias of ``tfpretrain.hub_export`` (the TF Hub-format writers), kept for one
release."""

from tfpretrain.hub_export import (  # noqa: F401
    block_groups,
    export_bert_encoder,
    export_bert_preprocessor,
    export_image_encoder,
    export_sentence_encoder,
    normalize_uncased,
)
