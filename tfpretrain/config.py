"""Run configuration: dataclasses, ``--section.key=value`` overrides, saved as ``config.json``.

Unknown keys and values of the wrong type are errors that name the key. A saved ``config.json``
reloads with ``--config`` so a run can be repeated exactly.

Example:
    >>> cfg = parse_args(TextClassifierConfig(), ["--train.epochs=2", "--model.trainable=false"])
    >>> cfg.train.epochs, cfg.model.trainable
    (2, False)
"""

import dataclasses
import json
import os
import typing


class ConfigError(ValueError):
    """A config key that does not exist, or a value that does not fit its field."""


def _help(text, default):
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass
class DataConfig:
    name: str = _help("TFDS dataset name (bbc_news, glue/sst2, imdb_reviews, ag_news_subset, ...); "
                      "ignored when train_file is set", "bbc_news")
    data_dir: str = _help("TFDS data directory (default: $TFPRETRAIN_CACHE/tensorflow_datasets)", "")
    train_file: str = _help("local CSV/TSV/JSONL training file (instead of a TFDS name)", "")
    validation_file: str = _help("local validation file (default: 10% split off train_file)", "")
    test_file: str = _help("local test file (default: none)", "")
    text_key: str = _help("text feature/column ('' = guess: text, sentence, description, ...)", "")
    label_key: str = _help("label feature/column", "label")
    train_split: str = _help("TFDS split for training; slicing works (train[:90%])", "train")
    validation_split: str = _help("TFDS split for validation ('' = none)", "validation")
    test_split: str = _help("TFDS split for the final evaluation ('' = none)", "test")
    shuffle_buffer: int = _help("shuffle buffer (examples)", 10000)
    invalid_utf8: str = _help("invalid UTF-8 in local files: 'replace' (with U+FFFD, counted in the "
                              "log) or 'error'", "replace")


@dataclasses.dataclass
class ModelConfig:
    encoder: str = _help("preset name, local dir, gs:// path or tfhub.dev/Kaggle URL of a "
                         "TF Hub-format BERT encoder", "minilm_l6")
    preprocessor: str = _help("matching TF Hub-format preprocessor ('' = the preset's)", "")
    seq_length: int = _help("maximum tokens per example (batches are padded to their own longest "
                            "example); 0 = the preset's (256), else 256 or the encoder's positions if fewer", 0)
    truncation: str = _help("tokens kept of longer texts: 'head' (the first seq_length) or "
                            "'head_tail' (a quarter from the start, the rest from the end)", "head_tail")
    trainable: bool = _help("fine-tune the encoder (false: train the head only)", True)
    pooling: str = _help("'mean' (masked mean of sequence_output) or 'pooled' (pooled_output)",
                         "mean")
    dropout: float = _help("dropout before the classification layer", 0.1)


@dataclasses.dataclass
class TrainConfig:
    epochs: int = _help("passes over the training split", 2)
    global_batch_size: int = _help("examples per step, summed over replicas", 32)
    learning_rate: float = _help("peak AdamW learning rate", 1e-4)
    weight_decay: float = _help("AdamW decoupled weight decay (not on biases/LayerNorm)", 0.01)
    warmup_fraction: float = _help("fraction of steps with linear warm-up", 0.1)
    clip_norm: float = _help("global gradient-norm clipping (0 = off)", 1.0)
    checkpoint_every: int = _help("steps between checkpoints", 50)
    eval_every: int = _help("steps between evaluations (0 = at each epoch end)", 0)
    best_metric: str = _help("validation metric that picks the best checkpoint", "accuracy")
    early_stopping_patience: int = _help("evaluations without improvement before stopping "
                                         "(0 = off)", 0)
    max_steps: int = _help("stop after this many steps (0 = epochs x steps per epoch)", 0)
    seed: int = _help("seed for weights of new layers, shuffling and dropout", 42)


@dataclasses.dataclass
class RuntimeConfig:
    strategy: str = _help("auto | one_device | mirrored | multi_worker | tpu", "auto")
    tpu: str = _help("TPU address for strategy=tpu ('' = discover)", "")
    deterministic: bool = _help("deterministic TensorFlow ops: same seed, bit-identical run on CPU "
                                "(on GPU slower, and a few ops refuse)", True)
    precision: str = _help("float32 | mixed_bfloat16 | mixed_float16 (float16 scales the loss); a "
                           "restored SavedModel encoder keeps its traced dtype (the log says which)", "float32")
    jit_compile: bool = _help("compile each training step's forward and backward pass with XLA "
                              "(once per batch shape)", False)
    steps_per_execution: int = _help("training steps per tf.function call (less per-step overhead)", 1)


@dataclasses.dataclass
class ExportConfig:
    enabled: bool = _help("export a serving SavedModel on raw strings", True)
    tflite: bool = _help("also write TFLite models (dynamic-range and int8 quantized) and test them", False)
    tflite_calibration: int = _help("training examples that calibrate the int8 TFLite model", 100)


@dataclasses.dataclass
class TextClassifierConfig:
    workdir: str = _help("run directory (config, checkpoints, logs, metrics, export)",
                         "runs/bert_text_classifier")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


@dataclasses.dataclass
class SentenceModelConfig:
    encoder: str = _help("preset name, local dir, gs:// path or tfhub.dev/Kaggle URL of a "
                         "sentence encoder (strings in, [batch, dim] out)", "minilm_l6_sentence")
    signature: str = _help("call this signature instead of __call__ ('' = __call__ if the model "
                           "has one, else serving_default)", "")
    output_key: str = _help("output to take when the model returns a dict ('' = its only one)", "")
    trainable: bool = _help("fine-tune the encoder end to end (false: train the head on cached "
                            "embeddings)", False)
    hidden_units: str = _help("comma-separated hidden layer sizes of the MLP head ('' = linear)", "256")
    dropout: float = _help("dropout before each head layer", 0.1)


@dataclasses.dataclass
class SentenceTrainConfig(TrainConfig):
    head_epochs: int = _help("passes of the head over the cached embeddings (frozen mode, and the "
                             "first phase of fine-tuning)", 30)
    head_learning_rate: float = _help("peak AdamW learning rate of the head on cached embeddings", 1e-3)
    epochs: int = _help("passes of end-to-end fine-tuning (model.trainable=true only)", 2)
    learning_rate: float = _help("peak AdamW learning rate of end-to-end fine-tuning", 5e-5)


@dataclasses.dataclass
class SentenceClassifierConfig:
    workdir: str = _help("run directory (config, checkpoints, logs, metrics, export)",
                         "runs/use_text_classifier")
    embedding_cache: str = _help("cached embeddings of a frozen encoder ('' = "
                                 "$TFPRETRAIN_CACHE/embeddings)", "")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: SentenceModelConfig = dataclasses.field(default_factory=SentenceModelConfig)
    train: SentenceTrainConfig = dataclasses.field(default_factory=SentenceTrainConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


@dataclasses.dataclass
class ImageDataConfig:
    name: str = _help("TFDS image dataset (digits_target, digits_source, tf_flowers, cifar10, beans, "
                      "mnist, ...); ignored when image_dir is set", "digits_target")
    data_dir: str = _help("TFDS data directory (default: $TFPRETRAIN_CACHE/tensorflow_datasets)", "")
    image_dir: str = _help("local folder with one subfolder of images per class (JPEG/PNG/BMP/GIF)", "")
    validation_fraction: float = _help("image_dir: share of each class held out for validation", 0.1)
    test_fraction: float = _help("image_dir: share of each class held out for testing", 0.2)
    bad_images: str = _help("an unreadable image file: 'skip' (named and counted in the log) or 'error'",
                            "skip")
    image_key: str = _help("TFDS image feature", "image")
    label_key: str = _help("TFDS label feature", "label")
    train_split: str = _help("TFDS split for training; slicing works (train[:90%])", "train")
    validation_split: str = _help("TFDS split for validation ('' = none)", "validation")
    test_split: str = _help("TFDS split for the final evaluation ('' = none)", "test")
    train_per_class: int = _help("keep only the first N training images of each class (0 = all); "
                                 "digits_target's default low-data regime is 20", 20)
    augment: str = _help("training-split augmentation, comma-separated from flip, rotation, zoom, "
                         "contrast ('' = none)", "rotation,zoom,contrast")
    shuffle_buffer: int = _help("shuffle buffer (examples)", 10000)


@dataclasses.dataclass
class ImageModelConfig:
    encoder: str = _help("image feature vector: preset (digits_resnet, resnet50, resnet50v2), local dir, "
                         "gs:// path or tfhub.dev/Kaggle URL", "digits_resnet")
    image_size: int = _help("input size when the encoder does not fix one (0 = the encoder's, else 224)", 0)
    fine_tune_blocks: int = _help("after the head: fine-tune the top N residual blocks (-1 = all, "
                                  "0 = keep the encoder frozen)", -1)
    dropout: float = _help("dropout before the classification layer", 0.2)
    baselines: bool = _help("also train the same classifier frozen-only and from scratch with the same "
                            "number of steps, and report all three", True)


@dataclasses.dataclass
class ImageTrainConfig(TrainConfig):
    head_epochs: int = _help("phase 1: epochs of the head on the frozen encoder", 40)
    head_learning_rate: float = _help("phase 1 peak AdamW learning rate (also the from-scratch "
                                      "baseline's)", 1e-3)
    epochs: int = _help("phase 2: epochs of fine-tuning the top blocks with the head", 40)
    learning_rate: float = _help("phase 2 peak AdamW learning rate", 5e-4)
    checkpoint_every: int = _help("steps between checkpoints", 100)


@dataclasses.dataclass
class ImageClassifierConfig:
    workdir: str = _help("run directory (config, checkpoints, logs, metrics, export)",
                         "runs/resnet_image_classifier")
    data: ImageDataConfig = dataclasses.field(default_factory=ImageDataConfig)
    model: ImageModelConfig = dataclasses.field(default_factory=ImageModelConfig)
    train: ImageTrainConfig = dataclasses.field(default_factory=ImageTrainConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


@dataclasses.dataclass
class ResnetModelConfig:
    image_size: int = _help("input size (images are resized to it)", 32)
    filters: str = _help("comma-separated filters per stack (the first must be 64)", "64,128,256")
    blocks: str = _help("comma-separated residual blocks per stack", "2,2,2")
    dropout: float = _help("dropout before the classification layer", 0.1)


@dataclasses.dataclass
class PretrainExportConfig:
    enabled: bool = _help("export the encoder as a TF Hub image feature vector", True)
    preset: str = _help("also install the export as this zoo preset in $TFPRETRAIN_CACHE ('' = no)",
                        "digits_resnet")


def _source_data():
    return ImageDataConfig(name="digits_source", test_split="", train_per_class=0)


def _pretrain_train():
    return TrainConfig(epochs=30, global_batch_size=64, learning_rate=2e-3, checkpoint_every=200)


@dataclasses.dataclass
class ResnetPretrainConfig:
    workdir: str = _help("run directory (config, checkpoints, logs, metrics, export)", "runs/resnet_pretrain")
    data: ImageDataConfig = dataclasses.field(default_factory=_source_data)
    model: ResnetModelConfig = dataclasses.field(default_factory=ResnetModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=_pretrain_train)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    export: PretrainExportConfig = dataclasses.field(default_factory=PretrainExportConfig)


@dataclasses.dataclass
class EmbedConfig:
    output: str = _help("output directory (embeddings.npy, metadata.tsv)", "runs/embed")
    encoder: str = _help("sentence encoder: preset, local dir, gs:// path or hub URL",
                         "minilm_l6_sentence")
    signature: str = _help("signature to call instead of __call__ ('' = automatic)", "")
    output_key: str = _help("output to take from a dict-returning model ('' = its only one)", "")
    text_file: str = _help("a text file, one text per line (instead of a dataset)", "")
    dataset: str = _help("TFDS dataset name (when no text_file)", "bbc_news")
    split: str = _help("TFDS split to embed; slicing works (test[:100])", "test")
    data_dir: str = _help("TFDS data directory (default: $TFPRETRAIN_CACHE/tensorflow_datasets)", "")
    text_key: str = _help("text feature ('' = guess)", "")
    label_key: str = _help("label feature, written to metadata.tsv when present", "label")
    batch_size: int = _help("texts per encoder call", 64)
    projector: bool = _help("also write TensorBoard projector files (tensorboard --logdir OUTPUT)",
                            False)


def _convert(value, kind, key):
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    text = str(value).strip()
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return kind(text)
    except ValueError:
        raise ConfigError(f"{key} expects {kind.__name__}, got {value!r}") from None


def set_value(config, key, value):
    """Sets dotted ``key`` (``train.epochs``) on ``config``, converting ``value`` to its type."""
    *path, name = key.split(".")
    target = config
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(target) or part not in _field_types(target):
            raise ConfigError(_unknown(".".join(path[: i + 1]), target))
        target = getattr(target, part)
    types = _field_types(target)
    if name not in types or dataclasses.is_dataclass(types[name]):
        raise ConfigError(_unknown(key, target))
    setattr(target, name, _convert(value, types[name], key))


def _field_types(config):
    hints = typing.get_type_hints(type(config))
    return {f.name: hints[f.name] for f in dataclasses.fields(config)}


def _unknown(key, target):
    known = ", ".join(f.name for f in dataclasses.fields(target)) if dataclasses.is_dataclass(target) else ""
    return f"unknown config key {key!r}" + (f" (known here: {known})" if known else "")


def to_dict(config):
    return dataclasses.asdict(config)


def update_from_dict(config, data, prefix=""):
    """Applies a nested dict (a saved ``config.json``) to ``config``; unknown keys are errors."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            update_from_dict(config, value, dotted + ".")
        else:
            set_value(config, dotted, value)
    return config


def load_config(config, path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"--config {path}: not valid JSON ({error})") from None
    return update_from_dict(config, data)


def help_text(config, prefix=""):
    """One line per key with its default and help, for ``--help``, in aligned columns."""
    entries = _help_entries(config, prefix)
    width = min(max(len(flag) for flag, _ in entries), 44)
    return [f"  {flag:<{width}}  {text}" for flag, text in entries]


def _help_entries(config, prefix):
    entries = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            entries += _help_entries(value, f"{prefix}{field.name}.")
        else:
            entries.append((f"--{prefix}{field.name}={value!s}", field.metadata.get("help", "")))
    return entries


def parse_args(config, argv):
    """Applies ``--config FILE`` then ``--a.b=value`` / ``--a.b value`` overrides to ``config``.

    ``--help`` and ``--debug`` are left to the caller. Unknown keys raise ``ConfigError``.
    """
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value")
            value, i = argv[i + 1], i + 1
        pairs.append((key, value))
        i += 1
    for key, value in pairs:
        if key == "config":
            load_config(config, value)
    for key, value in pairs:
        if key != "config":
            set_value(config, key, value)
    return config


@dataclasses.dataclass
class MlmDataConfig:
    name: str = _help("TFDS dataset of the corpus (bbc_news, imdb_reviews, wikipedia/20230601.en, ...); "
                      "ignored when path is set", "bbc_news")
    split: str = _help("TFDS split (imdb_reviews: unsupervised); slicing works (train[:10%])", "train")
    feature: str = _help("TFDS feature that holds the text", "text")
    data_dir: str = _help("TFDS data directory (default: $TFPRETRAIN_CACHE/tensorflow_datasets)", "")
    path: str = _help("a text file or a folder of .txt files (instead of a TFDS dataset)", "")
    document: str = _help("'file' (one document per file) or 'line' (one per line); '' = 'line' for "
                          "a single file, 'file' for a folder", "")
    heldout_fraction: float = _help("documents held out for evaluation, chosen by a hash of their text", 0.05)
    max_documents: int = _help("use only the first N documents (0 = all)", 0)
    shuffle_buffer: int = _help("shuffle buffer (windows)", 10000)
    invalid_utf8: str = _help("invalid UTF-8 in local files: 'replace' or 'error'", "replace")


@dataclasses.dataclass
class MlmModelConfig:
    encoder: str = _help("'' = a new BERT trained from scratch with a WordPiece vocabulary learned from "
                         "the corpus; else the BERT to continue pretraining: preset, local dir, gs:// "
                         "path or hub URL", "")
    preprocessor: str = _help("the encoder's TF Hub-format preprocessor ('' = the preset's)", "")
    vocab_size: int = _help("WordPiece vocabulary size to learn (from scratch)", 4000)
    lower_case: bool = _help("lower-case and strip accents before tokenizing (from scratch)", True)
    num_layers: int = _help("transformer layers (from scratch)", 2)
    hidden_dim: int = _help("hidden width (from scratch)", 256)
    num_heads: int = _help("attention heads (from scratch)", 4)
    intermediate_dim: int = _help("feed-forward width (from scratch)", 1024)
    dropout: float = _help("dropout inside the new BERT (from scratch)", 0.0)
    seq_length: int = _help("tokens per window; documents are cut into windows of this length", 128)
    mask_rate: float = _help("fraction of tokens (or words) selected for prediction", 0.15)
    max_predictions: int = _help("most masked positions scored per window", 20)
    whole_word: bool = _help("mask all pieces of a selected word together", False)


@dataclasses.dataclass
class MlmExportConfig:
    enabled: bool = _help("export the encoder (with its mlm sub-object) and preprocessor in TF Hub format", True)


def _mlm_train():
    return TrainConfig(epochs=7, learning_rate=2e-3, checkpoint_every=200)


@dataclasses.dataclass
class MlmPretrainConfig:
    workdir: str = _help("run directory (config, vocabulary, checkpoints, logs, metrics, export)",
                         "runs/bert_mlm_pretrain")
    data: MlmDataConfig = dataclasses.field(default_factory=MlmDataConfig)
    model: MlmModelConfig = dataclasses.field(default_factory=MlmModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=_mlm_train)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    export: MlmExportConfig = dataclasses.field(default_factory=MlmExportConfig)


_RUN_DEFINING = ("data", "model", "train")


def save_config(config, workdir):
    """Writes ``workdir/config.json``; refuses a run directory that holds a different run.

    Resuming needs the same ``data``, ``model`` and ``train`` sections: checkpoints of another
    model or schedule would fail to restore or silently continue the wrong run. The other
    sections (runtime, export, paths) may change between a run and its resumption.
    """
    from tfpretrain.files import write_json

    path = os.path.join(workdir, "config.json")
    current = to_dict(config)
    if os.path.exists(path) and os.path.isdir(os.path.join(workdir, "checkpoints")):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        changed = sorted(k for k in set(_flatten(saved)) | set(_flatten(current))
                         if k.split(".")[0] in _RUN_DEFINING
                         and _flatten(saved).get(k) != _flatten(current).get(k))
        if changed:
            raise ConfigError(
                f"{workdir} holds a run with a different config ({', '.join(changed)}); use another "
                "--workdir, or delete it to start over")
    try:
        write_json(path, current)
    except OSError as error:
        raise OSError(f"cannot write to workdir {workdir} ({error.strerror or error}); choose another "
                      "--workdir") from error


def _flatten(data, prefix=""):
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
