"""tfpretrain: transfer learning on TensorFlow 2.21 + Keras 3.

Public API (see README.md); recipes reach the library only through ``import tfpretrain as tp``:
    load_bert_encoder, HubLayer, load_saved_model, resolve_handle,
    KerasBertEncoder, build_keras_bert_encoder                      — pretrained encoders
    load_sentence_encoder, embed_texts, load_embeddings             — sentence encoders (USE-style)
    load_image_encoder, scale_to_unit_range                         — image feature vectors
    build_bert_classifier, build_sentence_classifier, build_image_classifier,
    build_resnet_classifier, build_token_classifier, build_classification_head, pair_features,
    sentence_features, feature_extractor                            — models
    SingleLabelClassification, Regression, MultiLabelClassification, TokenClassification,
    make_task, entity_metrics                                       — task types
    TextDataConfig, ImageDataConfig, MlmDataConfig, load_text_data, make_text_datasets,
    make_corpus, tokenize_texts, make_batches, pack_texts, text_batch, decode_texts,
    count_examples, TaggingDataConfig, load_tagged_data, make_tagging_examples, split_words,
    word_windows                                                    — data
    Run, Export, start_run, set_seed, count_parameters              — the run seam
    build_strategy, fit, build_optimizer, set_precision, describe_precision, float32_compute,
    is_chief, warm_up_head                                          — training
    write_report                                                    — reports
    export_text_classifier, export_token_classifier, export_image_classifier,
    serve_in_fresh_process, check_export, merge_lora
    export_bert_encoder, export_bert_preprocessor, export_sentence_encoder,
    export_image_encoder                                            — TF Hub-format writers
Modules: tp.config (options, sections, recipe_config), tp.cli, tp.files, tp.zoo (presets),
tp.images (image data), tp.mlm (masked-LM pretraining), tp.report, tp.plots, tp.tflite.
"""

# First, before anything loads TensorFlow: process set-up under python -m recipes.* etc.
from tfpretrain import _entry  # noqa: F401

# isort: split
from tfpretrain import cli, config, files, plots, report, tflite, zoo
from tfpretrain.checkpoints import Interrupted, Preempted, TrainingError
from tfpretrain.data import images
from tfpretrain.data.corpus import MlmDataConfig, make_corpus
from tfpretrain.data.images import ImageDataConfig
from tfpretrain.data.pipeline import (
    TRUNCATIONS,
    count_examples,
    decode_texts,
    make_batches,
    pack_texts,
    text_batch,
    tokenize_texts,
)
from tfpretrain.data.tagging import (
    TaggingDataConfig,
    load_tagged_data,
    make_tagging_examples,
    split_words,
    word_windows,
)
from tfpretrain.data.text import (
    TASKS,
    TextData,
    TextDataConfig,
    load_text_data,
    make_text_datasets,
    task_option,
)
from tfpretrain.distribute import (
    build_strategy,
    describe_precision,
    float32_compute,
    is_chief,
    per_replica_batch_size,
    set_precision,
)
from tfpretrain.encoders.bert import (
    KerasBertEncoder,
    build_keras_bert_encoder,
    load_bert_encoder,
    load_encoder,
)
from tfpretrain.encoders.image import load_image_encoder, scale_to_unit_range
from tfpretrain.encoders.sentence import embed_texts, load_embeddings, load_sentence_encoder
from tfpretrain.export import (
    check_export,
    export_image_classifier,
    export_text_classifier,
    export_token_classifier,
    merge_lora,
    serve_in_fresh_process,
)
from tfpretrain.heads import build_classification_head, pair_features, sentence_features
from tfpretrain.hub import HubLayer, load_saved_model, resolve_handle
from tfpretrain.hub_export import (
    export_bert_encoder,
    export_bert_preprocessor,
    export_image_encoder,
    export_sentence_encoder,
)
from tfpretrain.models import (
    POOLINGS,
    build_bert_classifier,
    build_image_classifier,
    build_resnet_classifier,
    build_sentence_classifier,
    build_token_classifier,
    feature_extractor,
)
from tfpretrain.optimizers import build_optimizer
from tfpretrain.pretrain import mlm
from tfpretrain.pretrain.scratch import build_new_bert
from tfpretrain.report import write_report
from tfpretrain.run import Export, Run, count_parameters, set_seed, start_run
from tfpretrain.tasks import make_task
from tfpretrain.tasks.classification import (
    SingleLabelClassification,
    classification_metrics,
    evaluate_classifier,
    format_report,
)
from tfpretrain.tasks.multilabel import MultiLabelClassification, multilabel_metrics
from tfpretrain.tasks.regression import Regression, cosine_baseline, regression_metrics
from tfpretrain.tasks.tagging import TokenClassification, entity_metrics
from tfpretrain.train import TrainState, fit
from tfpretrain.warmup import warm_up_head

__version__ = "0.1.0"

__all__ = [
    "POOLINGS",
    "TASKS",
    "TRUNCATIONS",
    "Export",
    "HubLayer",
    "KerasBertEncoder",
    "ImageDataConfig",
    "Interrupted",
    "MlmDataConfig",
    "MultiLabelClassification",
    "Preempted",
    "Regression",
    "Run",
    "SingleLabelClassification",
    "TextData",
    "TextDataConfig",
    "TaggingDataConfig",
    "TokenClassification",
    "TrainState",
    "TrainingError",
    "build_bert_classifier",
    "build_classification_head",
    "build_image_classifier",
    "build_new_bert",
    "build_optimizer",
    "build_resnet_classifier",
    "build_sentence_classifier",
    "build_token_classifier",
    "build_strategy",
    "check_export",
    "classification_metrics",
    "cli",
    "config",
    "count_examples",
    "cosine_baseline",
    "count_parameters",
    "decode_texts",
    "describe_precision",
    "embed_texts",
    "entity_metrics",
    "evaluate_classifier",
    "export_bert_encoder",
    "export_bert_preprocessor",
    "export_image_classifier",
    "export_image_encoder",
    "export_sentence_encoder",
    "export_text_classifier",
    "export_token_classifier",
    "feature_extractor",
    "files",
    "fit",
    "format_report",
    "images",
    "is_chief",
    "load_bert_encoder",
    "build_keras_bert_encoder",
    "merge_lora",
    "float32_compute",
    "load_embeddings",
    "load_encoder",  # deprecated alias of load_bert_encoder, kept for one release
    "load_image_encoder",
    "load_saved_model",
    "load_sentence_encoder",
    "load_tagged_data",
    "load_text_data",
    "make_batches",
    "make_corpus",
    "make_task",
    "make_tagging_examples",
    "make_text_datasets",
    "mlm",
    "multilabel_metrics",
    "pack_texts",
    "pair_features",
    "per_replica_batch_size",
    "plots",
    "regression_metrics",
    "report",
    "resolve_handle",
    "scale_to_unit_range",
    "sentence_features",
    "serve_in_fresh_process",
    "set_precision",
    "set_seed",
    "split_words",
    "start_run",
    "text_batch",
    "task_option",
    "tflite",
    "tokenize_texts",
    "warm_up_head",
    "write_report",
    "word_windows",
    "zoo",
]
