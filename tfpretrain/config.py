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
import re
import typing


class ConfigError(ValueError):
    """A config key that does not exist, or a value that does not fit its field."""


def option(text: str, default: object, choices: tuple = ()) -> dataclasses.Field:
    """A config field with its ``--help`` text and, for a choice-valued field, its choices
    (listed in ``--help`` and checked when the value is set)."""
    return dataclasses.field(default=default, metadata={"help": text, "choices": tuple(choices)})


@dataclasses.dataclass
class SourceConfig:
    """What every data section shares: a TFDS dataset (or local files instead), the TFDS data
    directory, the shuffle buffer."""

    name: str = option("TFDS dataset name", "")
    data_dir: str = option("TFDS data directory (default: "
                           "$TFPRETRAIN_CACHE/tensorflow_datasets)", "")
    shuffle_buffer: int = option("shuffle buffer (examples)", 10000)


@dataclasses.dataclass
class DatasetConfig(SourceConfig):
    """A labelled dataset: a source and its three splits. Recipe data sections extend it
    (``TextDataConfig``, ``ImageDataConfig``)."""

    train_split: str = option("TFDS split for training; slicing works (train[:90%])", "train")
    validation_split: str = option("TFDS split for validation ('' = none)", "validation")
    test_split: str = option("TFDS split for the final evaluation ('' = none)", "test")


@dataclasses.dataclass
class TrainConfig:
    epochs: int = option("passes over the training split (0 = auto: from the number of "
                         "examples and classes, said at start-up; see tfpretrain/budget.py)", 0)
    global_batch_size: int = option("examples per step, summed over replicas", 32)
    learning_rate: float = option("peak AdamW learning rate (at global batch 32 when lr_scaling "
                                  "is on)", 1e-4)
    lr_scaling: str = option("how the peak rate follows global_batch_size: 'none', 'sqrt' "
                             "(x sqrt(batch / 32), Adam's rule) or 'linear' (x batch / 32)",
                             "none", ("none", "sqrt", "linear"))
    weight_decay: float = option("AdamW decoupled weight decay (not on biases/LayerNorm)", 0.01)
    warmup_fraction: float = option("fraction of steps with linear warm-up", 0.1)
    clip_norm: float = option("global gradient-norm clipping (0 = off)", 1.0)
    layer_decay: float = option("learning rate x this per transformer layer below the top "
                                "(embeddings lowest; 1 = the same rate everywhere)", 1.0)
    label_smoothing: float = option("classification: weight of the uniform distribution mixed "
                                    "into the training targets (0 = off)", 0.0)
    average_decay: float = option("evaluate, keep and export an exponential moving average of the "
                                  "weights with this decay (warmed up over the first steps; "
                                  "0 = off, the raw weights)", 0.0)
    checkpoint_every: int = option("steps between checkpoints", 50)
    eval_every: int = option("steps between evaluations (0 = at each epoch end; with epochs=0, "
                             "about 4 per epoch)", 0)
    best_metric: str = option("validation metric that picks the best checkpoint ('' = the "
                              "task's: accuracy for classification, spearman for regression, "
                              "micro_f1 for multi-label, entity f1 for tagging), one the task "
                              "reports, checked at start-up; losses are minimised", "")
    early_stopping_patience: int = option("evaluations without improvement before stopping "
                                          "(0 = auto: 3 when epochs=0, else off; -1 = off)", 0)
    max_steps: int = option("stop after this many steps (0 = epochs x steps per epoch)", 0)
    max_minutes: float = option("stop training after this many minutes (summed over resumed "
                                "runs), then evaluate and export as usual (0 = no cap)", 0.0)
    seed: int = option("seed for weights of new layers, shuffling and dropout", 42)

    def total_steps(self, steps_per_epoch: int) -> int:
        """The number of optimizer steps of a run: ``max_steps`` if set, else every epoch's."""
        return self.max_steps or self.epochs * steps_per_epoch


@dataclasses.dataclass
class HeadFirstTrainConfig(TrainConfig):
    """Training in two phases: the head alone first (``head_epochs`` at ``head_learning_rate``),
    then the rest (``epochs`` at ``learning_rate``)."""

    head_epochs: int = option("phase 1: epochs of the head alone, on features of the frozen "
                              "encoder (bert_text_classifier: 0 = no head warm-up)", 30)
    head_learning_rate: float = option("phase 1: peak AdamW learning rate of the head", 1e-3)

    def head_phase(self, extra_epochs: int = 0) -> TrainConfig:
        """This config for the head phase (``extra_epochs`` more: a baseline with as many steps)."""
        return dataclasses.replace(self, epochs=self.head_epochs + extra_epochs,
                                   learning_rate=self.head_learning_rate)


def implementation_option() -> typing.Any:
    """The ``model.implementation`` flag of the BERT recipes."""
    return option("'keras': the weights in a KerasHub BertBackbone (mixed precision reaches it, "
                  "XLA, LoRA); 'saved_model': the restored SavedModel (any TF Hub-format "
                  "encoder); 'auto': Keras when the weights map", "saved_model",
                  ("auto", "keras", "saved_model"))


@dataclasses.dataclass
class BertEncoderConfig:
    """The model options of every recipe that fine-tunes a TF Hub-format BERT encoder; a recipe's
    model config adds its own to these."""

    encoder: str = option("preset name, local dir, gs:// path or tfhub.dev/Kaggle URL of a "
                          "TF Hub-format BERT encoder; or hf://org/model or a KerasHub preset name "
                          "(converted once)", "minilm_l6")
    preprocessor: str = option("matching TF Hub-format preprocessor ('' = the preset's)", "")
    trainable: bool = option("fine-tune the encoder (false: train the head only)", True)
    implementation: str = implementation_option()
    lora_rank: int = option("train rank-N LoRA adapters on the attention query/value projections "
                            "(and the head) instead of the encoder's weights; merged into the "
                            "export (needs implementation keras or auto; 0 = off)", 0)


STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass
class RuntimeConfig:
    strategy: str = option("tf.distribute strategy ('auto': TPU, then a TF_CONFIG cluster, then "
                           "2+ GPUs, else one device)", "auto", STRATEGIES)
    tpu: str = option("TPU address for strategy=tpu ('' = discover)", "")
    deterministic: bool = option("deterministic TensorFlow ops: same seed, bit-identical run on "
                                 "CPU (on GPU slower, and a few ops refuse)", True)
    precision: str = option("float32 | mixed_bfloat16 | mixed_float16 (float16 scales the loss); "
                            "a restored SavedModel encoder keeps its traced dtype (the log says "
                            "which)", "float32", PRECISIONS)
    jit_compile: bool = option("compile each training step's forward and backward pass with XLA "
                               "(once per batch shape)", False)
    steps_per_execution: int = option("training steps per tf.function call (less per-step "
                                      "overhead)", 1)


@dataclasses.dataclass
class ExportConfig:
    enabled: bool = option("export a serving SavedModel on raw inputs", True)
    tflite: bool = option("also write TFLite models (dynamic-range and int8 quantized) and test "
                          "them", False)
    tflite_calibration: int = option("training examples that calibrate the int8 TFLite model", 100)


def check_local_path(key: str, path: str) -> str:
    """``path`` when it is a local path; a ``ConfigError`` for a URL-style path (``gs://``,
    ``s3://``, ``hdfs://``, ...), which a run cannot write to yet: os-level writes would make a
    local folder named after the scheme instead."""
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", path)
    if scheme:
        raise ConfigError(f"{key}={path}: {scheme.group(1)}:// run directories are not supported; "
                          f"use a local directory and copy it there afterwards (for example "
                          f"gcloud storage cp -r <dir> {path})")
    return path


def recipe_config(recipe: str, *, data: type, model: type, train: type = TrainConfig,
                  export: type = ExportConfig, train_defaults: dict | None = None,
                  data_defaults: dict | None = None, extra: list | None = None) -> type:
    """The config class of a recipe: ``workdir`` (default ``runs/<recipe>``) and the sections
    ``data``, ``model``, ``train``, ``runtime`` and ``export``, in that order.

    ``train_defaults`` / ``data_defaults`` override the defaults of those sections for this recipe;
    ``extra`` adds top-level ``(name, type, option(...))`` fields after ``workdir``.

    Example:
        >>> Config = recipe_config("demo", data=DatasetConfig, model=TrainConfig)
        >>> Config().workdir, Config().runtime.strategy
        ('runs/demo', 'auto')
    """
    def section(kind, defaults):
        return dataclasses.field(default_factory=lambda: kind(**(defaults or {})))

    fields = [("workdir", str, option("run directory (config, checkpoints, logs, metrics, export)",
                                      f"runs/{recipe}")),
              *(extra or []),
              ("data", data, section(data, data_defaults)),
              ("model", model, section(model, None)),
              ("train", train, section(train, train_defaults)),
              ("runtime", RuntimeConfig, section(RuntimeConfig, None)),
              ("export", export, section(export, None))]
    name = "".join(part.title() for part in recipe.split("_")) + "Config"
    return dataclasses.make_dataclass(name, fields)


_BOOLEANS = ("1", "true", "yes", "on", "0", "false", "no", "off")


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


def set_value(config: typing.Any, key: str, value: typing.Any) -> None:
    """Sets dotted ``key`` (``train.epochs``) on ``config``, converting ``value`` to its type and
    checking it against the field's choices."""
    target, name, kind = _field(config, key)
    value = _convert(value, kind, key)
    choices = next(f for f in dataclasses.fields(target) if f.name == name).metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    setattr(target, name, value)


def _field(config, key):
    """(the section holding dotted ``key``, the field name, its type); unknown keys are errors."""
    *path, name = key.split(".")
    target = config
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(target) or part not in _field_types(target):
            raise ConfigError(_unknown(".".join(path[: i + 1]), target))
        target = getattr(target, part)
    types = _field_types(target)
    if name not in types or dataclasses.is_dataclass(types[name]):
        raise ConfigError(_unknown(key, target))
    return target, name, types[name]


def _field_types(config):
    hints = typing.get_type_hints(type(config))
    return {f.name: hints[f.name] for f in dataclasses.fields(config)}


def _unknown(key, target):
    known = (", ".join(f.name for f in dataclasses.fields(target))
             if dataclasses.is_dataclass(target) else "")
    return f"unknown config key {key!r}" + (f" (known here: {known})" if known else "")


def to_dict(config: typing.Any) -> dict[str, typing.Any]:
    return dataclasses.asdict(config)


def update_from_dict(config: typing.Any, data: dict, prefix: str = "") -> typing.Any:
    """Applies a nested dict (a saved ``config.json``) to ``config``; unknown keys are errors."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            update_from_dict(config, value, dotted + ".")
        else:
            set_value(config, dotted, value)
    return config


def load_config(config: typing.Any, path: str) -> typing.Any:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"--config {path}: not valid JSON ({error})") from None
    return update_from_dict(config, data)


def help_text(config: typing.Any, prefix: str = "") -> list[str]:
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
            choices = [repr(c) if c == "" else str(c) for c in field.metadata.get("choices", ())]
            text = field.metadata.get("help", "") + (f" [{' | '.join(choices)}]" if choices else "")
            entries.append((f"--{prefix}{field.name}={value!s}", text))
    return entries


def parse_args(config: typing.Any, argv: list[str]) -> typing.Any:
    """Applies ``--config FILE`` then ``--a.b=value`` / ``--a.b value`` overrides to ``config``;
    a bare boolean flag (``--export.tflite``) means true.

    ``--help`` and ``--debug`` are left to the caller. Unknown keys raise ``ConfigError``.
    """
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --key=value")
        key, eq, value = arg[2:].partition("=")
        following = argv[i + 1] if i + 1 < len(argv) else None
        if not eq and key != "config" and _field(config, key)[2] is bool:
            if following is not None and following.lower() in _BOOLEANS:
                value, i = following, i + 1
            else:
                value = "true"
        elif not eq:
            if following is None or following.startswith("--"):
                raise ConfigError(f"--{key} needs a value")
            value, i = following, i + 1
        pairs.append((key, value))
        i += 1
    for key, value in pairs:
        if key == "config":
            load_config(config, value)
    for key, value in pairs:
        if key != "config":
            set_value(config, key, value)
    return config


_RUN_DEFINING = ("data", "model", "train")
# Keys of those sections a resumed run may change: a wall-time cap does not change the schedule.
_MAY_CHANGE_ON_RESUME = ("train.max_minutes",)


def save_config(config: typing.Any, workdir: str) -> None:
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
        # Keys a config saved by an older version lacks hold their defaults: not a change.
        old, new = _flatten(saved), _flatten(current)
        changed = sorted(k for k in old if k.split(".")[0] in _RUN_DEFINING
                         and k not in _MAY_CHANGE_ON_RESUME and old[k] != new.get(k))
        if changed:
            raise ConfigError(
                f"{workdir} holds a run with a different config ({', '.join(changed)}); use "
                "another --workdir, or delete it to start over")
    try:
        write_json(path, current)
    except OSError as error:
        raise OSError(f"cannot write to workdir {workdir} ({error.strerror or error}); choose "
                      "another --workdir") from error


def _flatten(data, prefix=""):
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
