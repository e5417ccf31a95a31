"""Unlabelled text corpora for pretraining: a TFDS text feature, or local text files.

Documents come from a TFDS dataset's split and feature (``bbc_news`` ``train`` ``text``, the
offline default; ``imdb_reviews`` ``unsupervised`` ``text``; ``wikipedia/20230601.en`` ``train``
``text``), or from a text file or a folder of ``.txt`` files, one document per file or per line.
The held-out part is chosen by a hash of each document's text, so it is the same on every run,
on every machine, whatever the order the documents are read in.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from tfpretrain.config import SourceConfig, option
from tfpretrain.data.rows import INVALID_UTF8, decode
from tfpretrain.data.tfds import DataError, load_tfds

DOCUMENT_UNITS = ("file", "line")


@dataclasses.dataclass
class MlmDataConfig(SourceConfig):
    """Where a masked-LM corpus comes from: a TFDS split or local text files."""

    name: str = option("TFDS dataset of the corpus (bbc_news, imdb_reviews, "
                       "wikipedia/20230601.en, ...); ignored when path is set", "bbc_news")
    split: str = option("TFDS split (imdb_reviews: unsupervised); slicing works (train[:10%])",
                        "train")
    feature: str = option("TFDS feature that holds the text", "text")
    path: str = option("a text file or a folder of .txt files (instead of a TFDS dataset)", "")
    document: str = option("'file' (one document per file) or 'line' (one per line); '' = 'line' "
                           "for a single file, 'file' for a folder", "", ("",) + DOCUMENT_UNITS)
    heldout_fraction: float = option("documents held out for evaluation, chosen by a hash of "
                                     "their text", 0.05)
    max_documents: int = option("use only the first N documents (0 = all)", 0)
    shuffle_buffer: int = option("shuffle buffer (windows)", 10000)
    invalid_utf8: str = option("invalid UTF-8 in local files: 'replace' or 'error'", "replace",
                               INVALID_UTF8)




def _text_files(path):
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"data.path {path!r} is neither a text file nor a folder")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                   if name.endswith(".txt"))
    if not files:
        raise DataError(f"data.path {path!r} holds no .txt files")
    return files


def _documents_from_files(path, document, invalid_utf8):
    document = document or ("line" if os.path.isfile(path) else "file")
    if document not in DOCUMENT_UNITS:
        raise DataError(f"data.document must be one of {DOCUMENT_UNITS}, got {document!r}")
    documents = []
    for name in _text_files(path):
        with open(name, "rb") as f:
            text = decode(f.read(), name, invalid_utf8)
        if document == "line":
            documents += [line.strip() for line in text.splitlines()]
        else:
            documents.append(text.strip())
    return tf.data.Dataset.from_tensor_slices(
        tf.constant([d for d in documents if d] or [""], tf.string)
    )


def _documents_from_tfds(name, split, feature, data_dir):
    dataset, info = load_tfds(name, split, data_dir)
    if feature not in info.features:
        raise DataError(f"TFDS {name} has no feature {feature!r} (data.feature); it has "
                        f"{sorted(info.features.keys())}")
    return dataset.map(lambda example: example[feature])


def _is_held_out(text, fraction):
    bucket = tf.strings.to_hash_bucket_fast(text, 10_000)
    return bucket < int(round(fraction * 10_000))


def make_corpus(config: MlmDataConfig) -> dict[str, tf.data.Dataset]:
    """``{"train": documents, "heldout": documents}``: datasets of scalar strings.

    Args:
        config: an ``MlmDataConfig`` (``path`` set: local files; else TFDS ``name``/``split``/
            ``feature``); ``heldout_fraction`` of the documents, chosen by text hash, are held out.

    Example:
        >>> corpus = make_corpus(MlmDataConfig(name="bbc_news"))  # doctest: +SKIP
        >>> next(iter(corpus["heldout"])).numpy()[:40]  # doctest: +SKIP
    """
    if not 0 < config.heldout_fraction < 1:
        raise DataError(f"data.heldout_fraction must be between 0 and 1, got "
                        f"{config.heldout_fraction}")
    if config.path:
        documents = _documents_from_files(os.path.expanduser(config.path), config.document,
                                          config.invalid_utf8)
    else:
        documents = _documents_from_tfds(config.name, config.split, config.feature, config.data_dir)
    documents = documents.filter(lambda text: tf.strings.length(tf.strings.strip(text)) > 0)
    if config.max_documents:
        documents = documents.take(config.max_documents)
    fraction = config.heldout_fraction
    corpus = {"train": documents.filter(lambda t: tf.logical_not(_is_held_out(t, fraction))),
              "heldout": documents.filter(lambda t: _is_held_out(t, fraction))}
    for split, dataset in corpus.items():
        if not any(True for _ in dataset.take(1)):
            where = config.path or f"TFDS {config.name} {config.split}"
            raise DataError(f"no {split} documents in {where}; it needs more documents or another "
                            "data.heldout_fraction")
    return corpus
