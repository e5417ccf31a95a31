"""Labelled text examples: one text or a pair of texts, and a label per example.

From a TFDS name (with feature-key mapping and split slicing) or local CSV/TSV/JSONL files, or
CoNLL-format entity files (each sentence with the set of entity types it mentions). What a label
is depends on the task, inferred from the training labels unless given:

* ``classification``: one class per example (strings or integers) → an int32 class id;
* ``regression``: a number per example (a similarity score, a rating) → float32;
* ``multilabel``: a set of classes per example (``|``-separated in files, a sequence in TFDS;
  the empty set allowed) → a float32 multi-hot vector ``[C]``.

Texts are a string, or a ``(text_a, text_b)`` pair with ``text_key="a,b"``.
"""

from __future__ import annotations

import dataclasses
import sys

import tensorflow as tf

from tfpretrain.config import DatasetConfig, option
from tfpretrain.data.rows import INVALID_UTF8, file_format, read_rows, row_name
from tfpretrain.data.tfds import DataError, hold_out, load_tfds_splits

TASKS = ("auto", "classification", "regression", "multilabel")
LABEL_SEPARATOR = "|"


@dataclasses.dataclass
class TextDataConfig(DatasetConfig):
    """Where a text recipe's examples come from: a TFDS dataset or local files."""

    name: str = option("TFDS dataset name (bbc_news, glue/sst2, glue/mrpc, glue/stsb, "
                       "imdb_reviews, ...); ignored when train_file is set", "bbc_news")
    train_file: str = option("local training file: CSV/TSV/JSONL, or CoNLL entity tags (.conll, "
                             "or data.format=conll) read as sentences and the entity types they "
                             "mention", "")
    validation_file: str = option("local validation file (default: 10% split off train_file)",
                                  "")
    test_file: str = option("local test file (default: none)", "")
    format: str = option("file format: 'auto' (from the extension), 'csv', 'tsv', 'jsonl' or "
                         "'conll'", "auto", ("auto", "csv", "tsv", "jsonl", "conll"))
    text_key: str = option("text feature/column ('' = guess: GLUE's pairs sentence1,sentence2 / "
                           "question1,question2 / premise,hypothesis / question,sentence, else "
                           "text, sentence, description, ...); two names for a pair", "")
    label_key: str = option("label feature/column", "label")
    swap_pairs: bool = option("pairs: also train on each pair in the other order (b, a), for "
                              "symmetric tasks such as paraphrase and similarity (not entailment)",
                              False)
    invalid_utf8: str = option("invalid UTF-8 in local files: 'replace' (with U+FFFD, counted in "
                               "the log) or 'error'", "replace", INVALID_UTF8)


def task_option() -> dataclasses.Field:
    """The ``--model.task`` option of a text recipe (see ``load_text_data``)."""
    return option("what the labels are: 'auto' (inferred from the data: a '|' in a label means "
                  "multilabel, numbers that are not all whole mean regression), "
                  "'classification', 'regression' or 'multilabel'", "auto", TASKS)


@dataclasses.dataclass
class TextData:
    """What ``load_text_data`` read: ``datasets`` of ``(text or (text_a, text_b), label)`` per
    split, the ``task`` their labels are for, its ``label_names`` (none for regression) and the
    ``text_keys`` the texts came from (two for pairs)."""

    datasets: dict[str, tf.data.Dataset]
    task: str
    label_names: list[str]
    text_keys: tuple[str, ...]

    @property
    def pairs(self) -> bool:
        return len(self.text_keys) == 2


_TEXT_KEYS = ("text", "sentence", "description", "content", "document", "review")
# Pairs as GLUE names them (MRPC, STS-B, RTE; QQP; MNLI; QNLI).
_PAIR_KEYS = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
              ("question", "sentence"))


def _text_keys(keys, text_key, where):
    if not text_key:
        for pair in _PAIR_KEYS:
            if set(pair) <= set(keys):
                return pair
        for key in _TEXT_KEYS:
            if key in keys:
                return (key,)
        raise DataError(f"{where}: cannot tell which column holds the text; set data.text_key to "
                        f"one of {sorted(keys)} (or two, comma-separated, for pairs)")
    wanted = tuple(k.strip() for k in text_key.split(","))
    if len(wanted) > 2:
        raise DataError(f"data.text_key={text_key!r} names {len(wanted)} text columns; a recipe "
                        "takes one text or a pair of two")
    for key in wanted:
        if key not in keys:
            raise DataError(f"{where} has no text column/feature {key!r} (data.text_key); it has "
                            f"{sorted(keys)}")
    return wanted


def _file_examples(path, config, text_keys=None):
    rows = read_rows(path, config.invalid_utf8, config.format)
    if not rows:
        raise DataError(f"data file {path} has no rows")
    keys = text_keys or _text_keys(rows[0].keys(), config.text_key, path)
    for key in (*keys, config.label_key):
        if key not in rows[0]:
            what = "label" if key == config.label_key else "text"
            raise DataError(f"{path} has no {what} column {key!r} (data.{what}_key); it has "
                            f"{sorted(rows[0])}")
    texts = [[str(r[k]) for r in rows] for k in keys]
    labels = [str(r[config.label_key]).strip() for r in rows]
    return texts, labels, keys


def _number(label):
    try:
        return float(label)
    except ValueError:
        return None


def infer_task(labels: list[str]) -> str:
    """The task string labels are for: ``multilabel`` when any holds a ``|``, ``regression`` when
    all are numbers and some are not whole, else ``classification``.

    Example:
        >>> infer_task(["3.8", "5.000"]), infer_task(["1", "0"]), infer_task(["PER|LOC", ""])
        ('regression', 'classification', 'multilabel')
    """
    if any(LABEL_SEPARATOR in label for label in labels):
        return "multilabel"
    numbers = [_number(label) for label in labels]
    if all(n is not None for n in numbers) and any(n != int(n) for n in numbers):
        return "regression"
    return "classification"


def _label_set(label):
    return [part for part in (p.strip() for p in label.split(LABEL_SEPARATOR)) if part]


def _label_names(labels, task):
    if task == "regression":
        return []
    if task == "multilabel":
        return sorted({name for label in labels for name in _label_set(label)})
    if all(label.lstrip("-").isdigit() for label in labels):
        largest = max(int(label) for label in labels)
        return [str(i) for i in range(largest + 1)]
    return sorted(set(labels))


def _encode(labels, task, names, where):
    """Labels as the task's values (class ids, numbers, multi-hot rows); ``where(i)`` names row
    ``i`` in an error."""
    index = {name: i for i, name in enumerate(names)}
    values = []
    for i, label in enumerate(labels):
        if task == "multilabel":
            row = [0.0] * len(names)
            for name in _label_set(label):
                if name not in index:
                    raise DataError(f"{where(i)}: label {name!r} is not one of the training "
                                    f"labels {names}")
                row[index[name]] = 1.0
            values.append(row)
        elif not label:
            raise DataError(f"{where(i)}: empty label (a {task} task needs one per example)")
        elif task == "regression":
            if _number(label) is None:
                raise DataError(f"{where(i)}: label {label!r} is not a number (the task is "
                                "regression)")
            values.append(_number(label))
        elif label not in index:
            raise DataError(f"{where(i)}: label {label!r} is not one of the training labels "
                            f"{names}")
        else:
            values.append(index[label])
    return values


_LABEL_DTYPES = {"classification": tf.int32, "regression": tf.float32, "multilabel": tf.float32}


def _dataset(texts, values, task):
    text = tuple(tf.constant(t, tf.string) for t in texts)
    labels = tf.constant(values, _LABEL_DTYPES[task])
    if task == "multilabel" and not values:
        labels = tf.zeros([0, 0], tf.float32)
    return tf.data.Dataset.from_tensor_slices((text if len(text) == 2 else text[0], labels))


def _from_files(config, task):
    texts, labels, keys = _file_examples(config.train_file, config)
    if task == "auto":
        task = ("multilabel" if file_format(config.train_file, config.format) == "conll"
                else infer_task(labels))
    names = _label_names(labels, task)
    _require_classes(task, names)  # before the other files: the training file is the cause

    def encoded(path, texts, labels):
        return texts, _encode(labels, task, names, lambda i: row_name(path, config.format, i))

    splits = {"train": encoded(config.train_file, texts, labels)}
    if config.validation_file:
        splits["validation"] = encoded(config.validation_file,
                                       *_file_examples(config.validation_file, config, keys)[:2])
    else:
        texts, values = splits["train"]
        kept = hold_out(list(range(len(values))), "no data.validation_file",
                        f"row of {config.train_file}")
        splits["train"], splits["validation"] = (([[t[i] for i in rows] for t in texts],
                                                  [values[i] for i in rows]) for rows in kept)
    if config.test_file:
        splits["test"] = encoded(config.test_file,
                                 *_file_examples(config.test_file, config, keys)[:2])
    return TextData({split: _dataset(t, v, task) for split, (t, v) in splits.items()}, task,
                    names, keys)


def _tfds_task(feature, task, where):
    """The task a TFDS label feature is for, and its label names."""
    names = getattr(feature, "names", None)
    inner = getattr(getattr(feature, "feature", None), "names", None)
    if inner is not None and task in ("auto", "multilabel"):
        return "multilabel", list(inner)
    if names is not None and task in ("auto", "classification"):
        return "classification", list(names)
    if getattr(feature, "dtype", None) is not None and tf.as_dtype(feature.dtype).is_floating \
            and task in ("auto", "regression"):
        return "regression", []
    raise DataError(f"{where}: label feature {feature!r} cannot be the labels of a "
                    f"{'classification, regression or multilabel' if task == 'auto' else task} "
                    "task (data.label_key, model.task)")


def _from_tfds(config, task):
    datasets, names, keys = {}, [], ()
    for split, (dataset, info) in load_tfds_splits(config).items():
        features = info.features
        where = f"TFDS {config.name}"
        keys = _text_keys(features.keys(), config.text_key, where)
        if config.label_key not in features:
            raise DataError(f"{where} has no label feature {config.label_key!r} (data.label_key); "
                            f"it has {sorted(features.keys())}")
        found, names = _tfds_task(features[config.label_key], task, where)

        def example(x, keys=keys, found=found, classes=len(names)):
            texts = tuple(x[k] for k in keys)
            label = x[config.label_key]
            if found == "multilabel":  # class ids → multi-hot (the empty set → zeros)
                label = tf.minimum(tf.reduce_sum(tf.one_hot(label, classes), axis=0), 1.0)
            return texts if len(texts) == 2 else texts[0], tf.cast(label, _LABEL_DTYPES[found])

        datasets[split] = dataset.map(example)
    return TextData(_drop_unlabelled(datasets, config), found, names, keys)


def _drop_unlabelled(datasets, config):
    """Leaves out evaluation splits whose labels are all -1 (TFDS's "no label", as in every
    ``glue/*`` test split), saying so: a score on them would be meaningless. A split with some
    -1 labels is an error."""
    for split in [s for s in ("validation", "test") if s in datasets]:
        unlabelled, total = datasets[split].reduce(
            (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
            lambda counts, example: (
                counts[0] + tf.cast(tf.reduce_any(example[1] < 0), tf.int64), counts[1] + 1))
        unlabelled, total = int(unlabelled), int(total)
        if unlabelled and unlabelled == total:
            print(f"note: the {split} split of TFDS {config.name} "
                  f"({getattr(config, split + '_split')!r}) has no labels (label -1 on all "
                  f"{total} examples): it is not scored", file=sys.stderr, flush=True)
            del datasets[split]
        elif unlabelled:
            raise DataError(f"the {split} split of TFDS {config.name} has {unlabelled} of {total} "
                            "examples without a label (-1); use a labelled split "
                            f"(data.{split}_split)")
    return datasets


def _require_classes(task, names):
    if task != "regression" and len(names) < 2:
        raise DataError(f"the training data has a single class ({names}); a classifier needs two "
                        "or more")


def load_text_data(config: TextDataConfig, task: str = "auto") -> TextData:
    """The splits of a TextDataConfig and what their labels are (see the module docstring);
    ``task`` is ``auto`` (inferred from the training labels or the TFDS label feature),
    ``classification``, ``regression`` or ``multilabel``.

    Example:
        >>> data = load_text_data(TextDataConfig(train_file="stsb/train.tsv",
        ...     text_key="sentence1,sentence2", label_key="score"))  # doctest: +SKIP
        >>> data.task, data.pairs
        ('regression', True)
    """
    if task not in TASKS:
        raise DataError(f"model.task must be one of {TASKS}, got {task!r}")
    data = _from_files(config, task) if config.train_file else _from_tfds(config, task)
    _require_classes(data.task, data.label_names)
    if config.swap_pairs:
        if not data.pairs:
            raise DataError("data.swap_pairs=true needs pairs (data.text_key=a,b)")
        train = data.datasets["train"]
        data.datasets["train"] = train.concatenate(train.map(lambda t, y: ((t[1], t[0]), y)))
    for split, dataset in data.datasets.items():
        if not any(True for _ in dataset.take(1)):
            raise DataError(f"the {split} split is empty (data.{split}_split / data.{split}_file)")
    return data


def make_text_datasets(config: TextDataConfig) -> tuple[dict[str, tf.data.Dataset], list[str]]:
    """({'train'|'validation'|'test': dataset of (text, label_id)}, label_names): the splits of a
    single-label classification TextDataConfig (``load_text_data`` reads the other tasks).

    Example:
        >>> datasets, names = make_text_datasets(TextDataConfig(name="bbc_news"))  # doctest: +SKIP
        >>> names
        ['business', 'entertainment', 'politics', 'sport', 'tech']
    """
    data = load_text_data(config, "classification")
    return data.datasets, data.label_names
