"""Text classification examples: ``(text, label_id)`` datasets and their label names.

From a TFDS name (with feature-key mapping and split slicing) or local CSV/TSV/JSONL files
(a text column and a label column; labels as strings or integers).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys

import tensorflow as tf

from tfpretrain.config import DatasetConfig, option
from tfpretrain.data.tfds import DataError, load_tfds_splits

INVALID_UTF8 = ("replace", "error")


@dataclasses.dataclass
class TextDataConfig(DatasetConfig):
    """Where a text recipe's examples come from: a TFDS dataset or local files."""

    name: str = option("TFDS dataset name (bbc_news, glue/sst2, imdb_reviews, ag_news_subset, "
                       "...); ignored when train_file is set", "bbc_news")
    train_file: str = option("local CSV/TSV/JSONL training file (instead of a TFDS name)", "")
    validation_file: str = option("local validation file (default: 10% split off train_file)",
                                  "")
    test_file: str = option("local test file (default: none)", "")
    text_key: str = option("text feature/column ('' = guess: text, sentence, description, ...)",
                           "")
    label_key: str = option("label feature/column", "label")
    invalid_utf8: str = option("invalid UTF-8 in local files: 'replace' (with U+FFFD, counted in "
                               "the log) or 'error'", "replace", INVALID_UTF8)


_TEXT_KEYS = ("text", "sentence", "description", "content", "document", "review")


def _guess_text_key(keys, text_key, where):
    if text_key:
        if text_key not in keys:
            raise DataError(f"{where} has no text column/feature {text_key!r} (data.text_key); "
                            f"it has {sorted(keys)}")
        return text_key
    for key in _TEXT_KEYS:
        if key in keys:
            return key
    raise DataError(f"{where}: cannot tell which column holds the text; set data.text_key to one "
                    f"of {sorted(keys)}")




def _decode(data, path, invalid_utf8):
    """UTF-8 text of ``data``; invalid byte sequences become U+FFFD and are counted, or are an
    error naming the line (``invalid_utf8="error"``)."""
    if invalid_utf8 not in INVALID_UTF8:
        raise DataError(f"data.invalid_utf8 must be one of {INVALID_UTF8}, got {invalid_utf8!r}")
    pieces, start, replaced = [], 0, 0
    while True:
        try:
            pieces.append(data[start:].decode("utf-8"))
            break
        except UnicodeDecodeError as error:
            bad = start + error.start
            if invalid_utf8 == "error":
                line = data[:bad].count(b"\n") + 1
                raise DataError(f"{path}, line {line}: invalid UTF-8 (byte {bad}); fix the file or "
                                "set data.invalid_utf8=replace") from None
            pieces += [data[start:bad].decode("utf-8"), "\ufffd"]
            replaced += 1
            start += error.end
    if replaced:
        print(f"warning: {path}: replaced {replaced} invalid UTF-8 sequence(s) with U+FFFD "
              "(data.invalid_utf8=error stops instead)", file=sys.stderr, flush=True)
    return "".join(pieces)


def _read_rows(path, invalid_utf8="replace"):
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    with open(path, "rb") as f:
        text = _decode(f.read(), path, invalid_utf8)
    if path.endswith((".jsonl", ".json")):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise DataError(f"{path}, line {number}: not valid JSON") from None
        return rows
    delimiter = "\t" if path.endswith(".tsv") else ","
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))


def _file_examples(path, text_key, label_key, invalid_utf8="replace"):
    rows = _read_rows(path, invalid_utf8)
    if not rows:
        raise DataError(f"data file {path} has no rows")
    text_key = _guess_text_key(rows[0].keys(), text_key, path)
    if label_key not in rows[0]:
        raise DataError(f"{path} has no label column {label_key!r} (data.label_key); "
                        f"it has {sorted(rows[0])}")
    return [str(r[text_key]) for r in rows], [str(r[label_key]).strip() for r in rows]


def _label_names(labels):
    if all(label.lstrip("-").isdigit() for label in labels):
        largest = max(int(label) for label in labels)
        return [str(i) for i in range(largest + 1)]
    return sorted(set(labels))


def _to_ids(labels, names, path):
    index = {name: i for i, name in enumerate(names)}
    for row, label in enumerate(labels, 2):
        if label not in index:
            raise DataError(f"{path}, row {row}: label {label!r} is not one of the training "
                            f"labels {names}")
    return [index[label] for label in labels]


def _require_two_classes(names):
    if len(names) < 2:
        raise DataError(f"the training data has a single class ({names}); a classifier needs two "
                        "or more")


def _from_files(config):
    texts, labels = _file_examples(config.train_file, config.text_key, config.label_key,
                                   config.invalid_utf8)
    names = _label_names(labels)
    _require_two_classes(names)
    splits = {"train": (texts, _to_ids(labels, names, config.train_file))}
    if config.validation_file:
        t, label_strings = _file_examples(config.validation_file, config.text_key,
                                          config.label_key, config.invalid_utf8)
        splits["validation"] = (t, _to_ids(label_strings, names, config.validation_file))
    else:  # Deterministic: every 10th row is held out.
        texts, ids = splits.pop("train")
        splits["train"] = ([t for i, t in enumerate(texts) if i % 10],
                           [y for i, y in enumerate(ids) if i % 10])
        splits["validation"] = (texts[::10], ids[::10])
    if config.test_file:
        t, label_strings = _file_examples(config.test_file, config.text_key, config.label_key,
                                          config.invalid_utf8)
        splits["test"] = (t, _to_ids(label_strings, names, config.test_file))
    datasets = {
        split: tf.data.Dataset.from_tensor_slices(
            (tf.constant(t, tf.string), tf.constant(y, tf.int32))
        )
        for split, (t, y) in splits.items()
    }
    return datasets, names


def _from_tfds(config):
    datasets, names = {}, None
    for split, (dataset, info) in load_tfds_splits(config).items():
        features = info.features
        text_key = _guess_text_key(features.keys(), config.text_key, f"TFDS {config.name}")
        if config.label_key not in features or not hasattr(features[config.label_key], "names"):
            raise DataError(f"TFDS {config.name} has no class-label feature {config.label_key!r} "
                            f"(data.label_key); it has {sorted(features.keys())}")
        names = list(features[config.label_key].names)
        datasets[split] = dataset.map(
            lambda x, t=text_key: (x[t], tf.cast(x[config.label_key], tf.int32))
        )
    return _drop_unlabelled(datasets, config), names


def _drop_unlabelled(datasets, config):
    """Leaves out evaluation splits whose labels are all -1 (TFDS's "no label", as in every
    ``glue/*`` test split), saying so: a score on them would be meaningless. A split with some
    -1 labels is an error."""
    for split in [s for s in ("validation", "test") if s in datasets]:
        unlabelled, total = datasets[split].reduce(
            (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
            lambda counts, example: (counts[0] + tf.cast(example[1] < 0, tf.int64),
                                     counts[1] + 1))
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


def make_text_datasets(config: TextDataConfig) -> tuple[dict[str, tf.data.Dataset], list[str]]:
    """({'train'|'validation'|'test': dataset of (text, label_id)}, label_names) for a
    TextDataConfig.

    Example:
        >>> datasets, names = make_text_datasets(TextDataConfig(name="bbc_news"))  # doctest: +SKIP
        >>> names
        ['business', 'entertainment', 'politics', 'sport', 'tech']
    """
    datasets, names = _from_files(config) if config.train_file else _from_tfds(config)
    _require_two_classes(names)
    for split, dataset in datasets.items():
        if not any(True for _ in dataset.take(1)):
            raise DataError(f"the {split} split is empty (data.{split}_split / data.{split}_file)")
    return datasets, names
