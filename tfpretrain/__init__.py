"""tfpretrain: transfer learning on TensorFlow 2.21 + Keras 3.

Public API (see README.md):
    load_encoder, HubLayer, load_saved_model, resolve_handle   — pretrained encoders
    load_sentence_encoder, embed_texts, load_embeddings        — sentence encoders (USE-style)
    load_image_encoder                                         — image feature vectors
    build_bert_classifier, build_sentence_classifier, build_image_classifier,
    build_classification_head, feature_extractor               — models
    make_text_datasets, tokenize_texts, make_batches, pack_texts,
    count_examples                                             — data
    start_run, build_strategy, fit, build_optimizer, set_seed,
    set_precision, describe_precision, is_chief               — training
    evaluate_classifier, classification_metrics, format_report,
    print_summary, write_report                                — evaluation and reports
    export_text_classifier, serve_in_fresh_process, check_export — export
    export_bert_encoder, export_bert_preprocessor,
    export_sentence_encoder                                    — TF Hub-format writers
"""

from tfpretrain.config import EmbedConfig, SentenceClassifierConfig, TextClassifierConfig
from tfpretrain.data.pipeline import count_examples, make_batches, pack_texts, tokenize_texts
from tfpretrain.data.text import make_text_datasets
from tfpretrain.distribute import (build_strategy, describe_precision, is_chief, per_replica_batch_size,
                                   set_precision)
from tfpretrain.encoders.bert import load_encoder
from tfpretrain.encoders.image import load_image_encoder
from tfpretrain.encoders.sentence import embed_texts, load_embeddings, load_sentence_encoder
from tfpretrain.evaluate import classification_metrics, evaluate_classifier, format_report, print_summary
from tfpretrain.export import check_export, export_text_classifier, serve_in_fresh_process
from tfpretrain.heads import build_classification_head
from tfpretrain.hub import HubLayer, load_saved_model, resolve_handle
from tfpretrain.hub_format import export_bert_encoder, export_bert_preprocessor, export_sentence_encoder
from tfpretrain.models import (build_bert_classifier, build_image_classifier, build_sentence_classifier,
                               feature_extractor)
from tfpretrain.report import write_report
from tfpretrain.train import Preempted, TrainingError, build_optimizer, fit, set_seed, start_run

__version__ = "0.1.0"

__all__ = [
    "EmbedConfig",
    "HubLayer",
    "Preempted",
    "TrainingError",
    "SentenceClassifierConfig",
    "TextClassifierConfig",
    "build_bert_classifier",
    "build_image_classifier",
    "build_classification_head",
    "build_optimizer",
    "build_sentence_classifier",
    "build_strategy",
    "describe_precision",
    "check_export",
    "classification_metrics",
    "count_examples",
    "embed_texts",
    "evaluate_classifier",
    "export_bert_encoder",
    "export_bert_preprocessor",
    "export_sentence_encoder",
    "export_text_classifier",
    "feature_extractor",
    "fit",
    "format_report",
    "load_embeddings",
    "load_encoder",
    "load_image_encoder",
    "load_saved_model",
    "load_sentence_encoder",
    "make_batches",
    "make_text_datasets",
    "pack_texts",
    "per_replica_batch_size",
    "is_chief",
    "set_precision",
    "start_run",
    "print_summary",
    "resolve_handle",
    "serve_in_fresh_process",
    "set_seed",
    "tokenize_texts",
    "write_report",
]
