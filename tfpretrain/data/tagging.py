"""Token classification data: tagged sentences from files or TFDS, and the word → word-piece
windows that training, evaluation and the export share.

Each word's tag goes to its first word piece; the word's other pieces carry no label (left out of
the loss and the evaluation). A sentence longer than ``seq_length - 2`` pieces is cut into
consecutive windows of that many pieces, each packed as ``[CLS] pieces [SEP]``, so no word is
dropped; a word whose pieces cross a window edge is labelled where its first piece is.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from tfpretrain.config import DatasetConfig, option
from tfpretrain.data.conll import SCHEMES, Sentence, read_conll, read_tagged_jsonl, to_iob2
from tfpretrain.data.pipeline import word_cases
from tfpretrain.data.rows import INVALID_UTF8, decode
from tfpretrain.data.tfds import DataError, hold_out

_BATCH = 512  # sentences tokenised per call while preparing a split


@dataclasses.dataclass
class TaggingDataConfig(DatasetConfig):
    """Where a token classification recipe's tagged sentences come from."""

    name: str = option("TFDS dataset name (conll2003; needs the network); ignored when "
                       "train_file is set", "conll2003")
    train_file: str = option("local training file: CoNLL columns (a word and its tags per line, "
                             "a blank line between sentences) or JSON lines "
                             "({\"tokens\": [...], \"tags\": [...]})", "")
    validation_file: str = option("local validation file (default: every 10th training "
                                  "sentence)", "")
    test_file: str = option("local test file (default: none)", "")
    format: str = option("file format: 'auto' (.jsonl/.json: JSON lines, else CoNLL), 'conll' "
                         "or 'jsonl'", "auto", ("auto", "conll", "jsonl"))
    tag_column: int = option("CoNLL column holding the entity tag (0 is the word; -1 = last)", -1)
    tag_scheme: str = option("tag scheme of the data: 'auto' (detected), 'IOB1', 'IOB2' or "
                             "'IOBES'; checked, and trained as IOB2", "auto", SCHEMES)
    words_key: str = option("JSON-lines / TFDS feature with the words", "tokens")
    tags_key: str = option("JSON-lines / TFDS feature with the tags ('' = tags, or ner for "
                           "TFDS)", "")
    invalid_utf8: str = option("invalid UTF-8 in local files: 'replace' or 'error'", "replace",
                               INVALID_UTF8)


class TaggedData(NamedTuple):
    """What ``load_tagged_data`` read: IOB2-tagged sentences per split, the tag names (``O``
    first, then ``B-``/``I-`` of each type) and the scheme the data came in."""

    sentences: dict[str, list[Sentence]]
    tag_names: list[str]
    scheme: str

    @property
    def entity_types(self) -> list[str]:
        return sorted({tag[2:] for tag in self.tag_names if tag != "O"})


def _read_file(path: str, config: TaggingDataConfig) -> list[Sentence]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    with open(path, "rb") as f:
        text = decode(f.read(), path, config.invalid_utf8)
    fmt = config.format
    if fmt == "auto":
        fmt = "jsonl" if path.endswith((".jsonl", ".json")) else "conll"
    if fmt == "jsonl":
        return read_tagged_jsonl(text, path, config.words_key, config.tags_key or "tags")
    return read_conll(text, path, config.tag_column)


def _read_tfds(config: TaggingDataConfig) -> dict[str, list[Sentence]]:
    from tfpretrain.data.tfds import load_tfds_splits

    tags_key = config.tags_key or "ner"
    splits = {}
    for split, (dataset, info) in load_tfds_splits(config).items():
        names = info.features[tags_key].feature.names
        splits[split] = [
            Sentence([w.decode() for w in x[config.words_key]],
                     [names[t] for t in x[tags_key]], list(range(len(x[tags_key]))))
            for x in dataset.as_numpy_iterator()]
    return splits


def load_tagged_data(config: TaggingDataConfig) -> TaggedData:
    """Tagged sentences per split from ``config``'s files (or TFDS ``config.name``), their tags
    checked against the scheme and rewritten in IOB2.

    Example:
        >>> data = load_tagged_data(TaggingDataConfig(train_file="train.txt"))  # doctest: +SKIP
        >>> data.tag_names  # doctest: +SKIP
        ['O', 'B-LOC', 'I-LOC', 'B-PER', 'I-PER']
    """
    if config.train_file:
        splits = {"train": _read_file(config.train_file, config)}
        for split, path in (("validation", config.validation_file), ("test", config.test_file)):
            if path:
                splits[split] = _read_file(path, config)
        if "validation" not in splits:
            splits["train"], splits["validation"] = hold_out(
                splits["train"], "no data.validation_file", f"sentence of {config.train_file}")
        paths = {"train": config.train_file, "validation": config.validation_file or
                 config.train_file, "test": config.test_file}
    else:
        splits = _read_tfds(config)
        paths = {split: f"TFDS {config.name} {split}" for split in splits}
    splits["train"], scheme = to_iob2(splits["train"], config.tag_scheme, paths["train"])
    tag_names = sorted({t for s in splits["train"] for t in s.tags},
                       key=lambda t: (t != "O", t[2:], t[:1]))
    known = set(tag_names)
    for split in ("validation", "test"):
        if split in splits:
            splits[split] = to_iob2(splits[split], scheme, paths[split])[0]
            for sentence in splits[split]:
                for tag, line in zip(sentence.tags, sentence.lines):
                    if tag not in known:
                        raise DataError(f"{paths[split]}, line {line}: tag {tag!r} is not in the "
                                        f"training data (its tags: {', '.join(tag_names)})")
    return TaggedData(splits, tag_names, scheme)


@functools.lru_cache(maxsize=8)
def _unknown_id(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            if line.strip() == "[UNK]":
                return index
    raise ValueError(f"the preprocessor's vocabulary {path} has no [UNK] token")


def unknown_piece_id(preprocessor: Any) -> int:
    """The id of ``[UNK]`` in a TF Hub-format BERT preprocessor's vocabulary."""
    with tf.init_scope():  # eager even while a serving function is traced
        return _unknown_id(preprocessor.vocab_file.asset_path.numpy().decode())


class Windows(NamedTuple):
    """``inputs`` (packed BERT inputs ``[windows, seq_length]``), ``first_piece`` (``[words, 2]``:
    the window and position of each word's first piece, words in order) and ``window_text``
    (``[windows]``: the text each window belongs to)."""

    inputs: dict[str, tf.Tensor]
    first_piece: tf.Tensor
    window_text: tf.Tensor


def word_windows(words: tf.RaggedTensor, preprocessor: Any, seq_length: int,
                 cases: bool = False) -> Windows:
    """Pre-split words ``[texts, (words)]`` → BERT inputs in windows of ``seq_length - 2`` pieces
    (see the module docstring); a word without pieces (control characters only) becomes
    ``[UNK]``. With ``cases``, the inputs also hold ``input_case_ids``: each piece's word's
    ``word_cases``. Graph-compatible: the export runs this exact function."""
    budget, unknown_id = seq_length - 2, unknown_piece_id(preprocessor)
    pieces = preprocessor.tokenize(words.flat_values).merge_dims(1, 2)  # [words, (pieces)]
    empty = tf.cast(pieces.row_lengths() == 0, tf.int64)
    unknown = tf.fill([tf.reduce_sum(empty)], tf.constant(unknown_id, pieces.dtype))
    pieces = tf.concat([pieces, tf.RaggedTensor.from_row_lengths(unknown, empty)], axis=1)
    text_splits = tf.gather(pieces.row_splits, words.row_splits)
    text_pieces = tf.RaggedTensor.from_row_splits(pieces.values, text_splits)
    lengths = text_pieces.row_lengths()
    windows_per_text = tf.maximum((lengths + budget - 1) // budget, 1)
    offsets = tf.cumsum(windows_per_text, exclusive=True)
    position = tf.ragged.range(lengths).flat_values
    piece_window = tf.gather(offsets, text_pieces.value_rowids()) + position // budget
    total = tf.reduce_sum(windows_per_text)
    windows = tf.RaggedTensor.from_value_rowids(text_pieces.flat_values, piece_window,
                                                nrows=total)
    one_per_word = tf.ones_like(windows.values, dtype=windows.row_splits.dtype)
    windows = windows.with_values(tf.RaggedTensor.from_row_lengths(windows.values, one_per_word))
    inputs = preprocessor.bert_pack_inputs([windows], seq_length=tf.constant(seq_length))
    if cases:
        places = tf.stack([piece_window, position % budget + 1], axis=1)
        inputs["input_case_ids"] = tf.scatter_nd(
            places, tf.repeat(word_cases(words.flat_values), pieces.row_lengths()),
            tf.stack([total, seq_length]))
    word_text = words.value_rowids()
    start = pieces.row_splits[:-1] - tf.gather(text_splits, word_text)
    first_piece = tf.stack([tf.gather(offsets, word_text) + start // budget,
                            start % budget + 1], axis=1)
    window_text = tf.repeat(tf.range(tf.size(lengths, tf.int64)), windows_per_text)
    return Windows(inputs, first_piece, window_text)


def make_tagging_examples(sentences: list[Sentence], tag_names: list[str], preprocessor: Any,
                          seq_length: int, split: str = "", cases: bool = False
                          ) -> tf.data.Dataset:
    """One example per window: (BERT inputs of its length, labels ``[length, 3]``), where a
    labelled position (a word's first piece) holds ``(tag id, word number, sentence number)``
    in the split, and every other position ``-1``; ``cases`` adds ``input_case_ids``
    (``word_windows``). Prints how many sentences were cut into windows and how many words had
    no word piece."""
    ids = {tag: i for i, tag in enumerate(tag_names)}
    unknown_id = unknown_piece_id(preprocessor)
    inputs, labels, word, cut, unknown = {}, [], 0, 0, 0
    for begin in range(0, len(sentences), _BATCH):
        batch = sentences[begin:begin + _BATCH]
        windows = word_windows(tf.ragged.constant([s.words for s in batch]), preprocessor,
                               seq_length, cases)
        packed = {k: v.numpy() for k, v in windows.inputs.items()}
        lengths = packed["input_mask"].sum(axis=1)
        label = np.full(packed["input_word_ids"].shape + (3,), -1, np.int64)
        tags = np.array([ids[t] for s in batch for t in s.tags])
        sentence = np.repeat(np.arange(begin, begin + len(batch)), [len(s.words) for s in batch])
        window, position = windows.first_piece.numpy().T
        label[window, position] = np.stack([tags, word + np.arange(len(tags)), sentence], 1)
        word += len(tags)
        cut += len(lengths) - len(batch)
        unknown += int((packed["input_word_ids"][window, position] == unknown_id).sum())
        for key, value in packed.items():
            inputs.setdefault(key, []).extend(row[:n] for row, n in zip(value, lengths))
        labels.extend(row[:n] for row, n in zip(label, lengths))
    print(f"{split or 'data'}: {len(sentences):,} sentences, {word:,} words, "
          f"{len(labels):,} windows of at most {seq_length} tokens ({cut} more than sentences: "
          f"long sentences cut into windows, no word dropped); {unknown} words without a word "
          "piece read as [UNK]", flush=True)
    lengths = [len(row) for row in labels]

    def ragged(rows, dtype):
        return tf.RaggedTensor.from_row_lengths(np.concatenate(rows).astype(dtype), lengths)

    def dense(*element):  # rows of a ragged tensor arrive typed as ragged; make them tensors
        return tf.nest.map_structure(tf.convert_to_tensor, element)

    return tf.data.Dataset.from_tensor_slices(
        ({k: ragged(v, np.int32) for k, v in inputs.items()}, ragged(labels, np.int64))
    ).map(dense)


# Punctuation and symbols at either end of a whitespace-separated word are words of their own
# ("(Reuters)," → "(", "Reuters", "),"), as CoNLL-style tokenisation has them; inside a word they
# stay ("U.S", "Jean-Marie", "don't").
_EDGE_PUNCTUATION = r"^[\p{P}\p{S}]+|[\p{P}\p{S}]+$"


def split_words(texts: tf.Tensor) -> tuple[tf.RaggedTensor, tf.RaggedTensor, tf.RaggedTensor]:
    """Raw texts ``[batch]`` → ``(words, starts, ends)``, each ``[batch, (words)]``: the words a
    tagger labels and their character offsets (Unicode code points, as Python indexes ``str``).

    Example:
        >>> words, starts, ends = split_words(tf.constant(["Zürich (Reuters) -"]))
        >>> [w.decode() for w in words[0].numpy()]
        ['Zürich', '(', 'Reuters', ')', '-']
        >>> starts.to_list(), ends.to_list()
        ([[0, 7, 8, 15, 17]], [[6, 8, 15, 16, 18]])
    """
    import tensorflow_text as text

    spaced, space_starts, _ = text.WhitespaceTokenizer().tokenize_with_offsets(texts)
    pieces, starts, ends = text.regex_split_with_offsets(
        spaced.flat_values, _EDGE_PUNCTUATION, _EDGE_PUNCTUATION)
    base = tf.expand_dims(tf.cast(space_starts.flat_values, starts.dtype), 1)
    starts, ends = starts + base, ends + base  # byte offsets into the text
    row = tf.gather(spaced.value_rowids(), pieces.value_rowids())
    source = tf.gather(texts, row)

    def characters(byte_offsets):
        before = tf.strings.substr(source, tf.zeros_like(byte_offsets.flat_values),
                                   byte_offsets.flat_values)
        return tf.strings.length(before, unit="UTF8_CHAR")

    splits = tf.gather(pieces.row_splits, spaced.row_splits)

    def per_text(values):
        return tf.RaggedTensor.from_row_splits(values, splits)

    return (per_text(pieces.flat_values), per_text(tf.cast(characters(starts), tf.int64)),
            per_text(tf.cast(characters(ends), tf.int64)))
