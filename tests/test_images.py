"""The image data layer: the digits TFDS builders, image folders, model input and batches. No
network."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfpretrain.data.images import (
    ImageDataConfig,
    build_augmenter,
    make_image_batches,
    make_image_datasets,
    to_float_image,
)
from tfpretrain.data.tfds import DataError, load_tfds


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """A private TFDS data_dir, so the user's cache is not touched."""
    return str(tmp_path_factory.mktemp("tfds"))


def _records(name, split, data_dir):
    dataset, _ = load_tfds(name, split, data_dir)
    return [(int(x["label"]), int(x["index_in_class"]), x["image"].tobytes())
            for x in dataset.as_numpy_iterator()]


def test_digits_builders_split_every_image_once(digits_dir):
    from sklearn.datasets import load_digits

    per_digit = np.bincount(load_digits().target)
    sizes = {
        "digits_source": {"train": 811, "validation": 90},
        "digits_target": {"train": 400, "validation": 249, "test": 247},
    }
    for name, first in (("digits_source", 0), ("digits_target", 5)):
        builder = tfds.builder(name, data_dir=digits_dir)
        builder.download_and_prepare()
        assert {k: v.num_examples for k, v in builder.info.splits.items()} == sizes[name]
        counts = np.zeros(5, int)
        for split in sizes[name]:
            records = _records(name, split, digits_dir)
            labels = np.array([label for label, _, _ in records])
            counts += np.bincount(labels, minlength=5)
            for label in range(5):  # index_in_class ranks each class 0, 1, 2, ...
                ranks = sorted(rank for y, rank, _ in records if y == label)
                assert ranks == list(range(len(ranks)))
        assert counts.tolist() == per_digit[first:first + 5].tolist()
    assert sum(per_digit[:5]) == 901 and sum(per_digit[5:]) == 896
    target = tfds.builder("digits_target", data_dir=digits_dir).info.features
    assert target["label"].names == ["5", "6", "7", "8", "9"]


def test_digits_are_deterministic_across_preparations(digits_dir, tmp_path):
    for split in ("train", "validation", "test"):
        assert (_records("digits_target", split, digits_dir)
                == _records("digits_target", split, str(tmp_path)))


def test_glyphs_render_like_the_uci_digits_and_repeat_exactly():
    from sklearn.datasets import load_digits

    from tfpretrain.data import glyphs

    first = list(glyphs.examples(("5", "A"), "train", 2))
    assert len(first) == len(glyphs.FONTS) * 2 * 2
    assert all(image.shape == (8, 8, 1) and image.dtype == np.uint8 for _, _, image in first)
    again = list(glyphs.examples(("5", "A"), "train", 2))
    assert all(a[0] == b[0] and np.array_equal(a[2], b[2]) for a, b in zip(first, again))
    other = list(glyphs.examples(("5", "A"), "validation", 2))
    assert not any(np.array_equal(a[2], b[2]) for a, b in zip(first, other))
    # Stroke weight and height like the handwritten digits: the median mean intensity within the
    # digits' 1st-99th percentile range and nine in ten renderings near it, and the glyph reaches
    # the top and bottom rows.
    ink = np.array([image.mean() / 255 for _, _, image in first])
    digits = load_digits().images.mean(axis=(1, 2)) / 16
    low, high = np.percentile(digits, [1, 99])
    assert low <= np.median(ink) <= high
    assert np.mean((ink >= low - 0.02) & (ink <= high + 0.02)) > 0.9
    rows = np.array([(image[..., 0].max(axis=1) > 40).sum() for _, _, image in first])
    assert np.median(rows) == 8


def test_every_glyph_font_draws_every_class():
    from tfpretrain.data import glyphs

    assert len(glyphs.CLASSES) == 47 and len(set(glyphs.CLASSES)) == 47
    for font in glyphs.FONTS:
        for char in glyphs.CLASSES:
            image = glyphs.glyph(font, char)
            assert image.ndim == 2 and min(image.shape) >= 5, (font, char)


def test_glyphs_configs_name_their_classes(digits_dir):
    builder = tfds.builder("glyphs/no_5_to_9", data_dir=digits_dir)
    names = builder.info.features["label"].names
    assert len(names) == 42 and not set("56789") & set(names)
    assert len(tfds.builder("glyphs", data_dir=digits_dir).info.features["label"].names) == 47


def test_digits_target_default_config_keeps_20_per_class(digits_dir, capsys):
    datasets, names = make_image_datasets(ImageDataConfig(data_dir=digits_dir))
    assert (names == ["5", "6", "7", "8", "9"]
            and sorted(datasets) == ["test", "train", "validation"])
    assert ("digits_target: train 100 (20 per class), validation 249, test 247 images, 5 classes"
            in capsys.readouterr().out)
    labels = [int(y) for _, y in datasets["train"]]
    assert np.bincount(labels).tolist() == [20] * 5
    expected = sorted(image for _, rank, image in _records("digits_target", "train", digits_dir)
                      if rank < 20)
    assert sorted(image.numpy().tobytes() for image, _ in datasets["train"]) == expected
    image, label = next(iter(datasets["validation"]))
    assert image.dtype == tf.uint8 and image.shape == (8, 8, 1) and label.dtype == tf.int64
    assert max(int(tf.reduce_max(image)) for image, _ in datasets["test"]) == 255


def test_digits_source_without_test_split_and_first_n_by_dataset_order(digits_dir, capsys):
    config = ImageDataConfig(name="digits_source", data_dir=digits_dir, test_split="",
                             train_per_class=0)
    datasets, names = make_image_datasets(config)
    assert names == ["0", "1", "2", "3", "4"] and sorted(datasets) == ["train", "validation"]
    assert "digits_source: train 811, validation 90 images, 5 classes" in capsys.readouterr().out

    from tfpretrain.data import images

    # The path for datasets without index_in_class.
    raw, _ = load_tfds("digits_source", "train", digits_dir)
    first = images._first_per_class(raw, lambda x: x["label"], 3, 5)
    labels = [int(x["label"]) for x in raw.as_numpy_iterator()]
    kept = [int(x["label"]) for x in first.as_numpy_iterator()]
    expected = [y for i, y in enumerate(labels) if labels[:i].count(y) < 3]
    assert kept == expected and len(kept) == 15


def test_tfds_bad_keys_and_splits_are_named(digits_dir):
    with pytest.raises(DataError,
                       match=r"no feature 'picture' \(data.image_key\).*'index_in_class'"):
        make_image_datasets(ImageDataConfig(data_dir=digits_dir, image_key="picture"))
    with pytest.raises(DataError, match=r"split 'test' of 'digits_source'.*available"):
        make_image_datasets(ImageDataConfig(name="digits_source", data_dir=digits_dir))


def _random_image(seed, height, width, channels=3):
    return np.random.RandomState(seed).randint(0, 256, (height, width, channels)).astype(np.uint8)


@pytest.fixture
def image_folder(tmp_path):
    """cat/: 3 PNG, 2 JPEG, 1 BMP, 1 GIF; dog/: 6 PNG, a truncated JPEG and a text file; empty/."""
    from PIL import Image

    root = tmp_path / "images"
    for name in ("cat", "dog", "empty"):
        (root / name).mkdir(parents=True)
    for i in range(3):
        (root / "cat" / f"c{i}.png").write_bytes(
            tf.io.encode_png(_random_image(i, 10 + i, 12)).numpy())
    for i in range(2):
        (root / "cat" / f"c{i}.JPG").write_bytes(
            tf.io.encode_jpeg(_random_image(10 + i, 16, 9)).numpy())
    Image.fromarray(_random_image(20, 7, 11)).save(root / "cat" / "c.bmp", format="BMP")
    Image.fromarray(_random_image(21, 9, 9)).save(root / "cat" / "c.gif", format="GIF")
    for i in range(6):
        (root / "dog" / f"d{i}.png").write_bytes(
            tf.io.encode_png(_random_image(30 + i, 8, 8, 1)).numpy())
    jpeg = tf.io.encode_jpeg(_random_image(40, 16, 16)).numpy()
    (root / "dog" / "broken.jpg").write_bytes(jpeg[:30])
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_skips_unreadable_files_and_empty_classes(image_folder, capsys):
    config = ImageDataConfig(image_dir=str(image_folder), train_per_class=0)
    datasets, names = make_image_datasets(config)
    captured = capsys.readouterr()
    assert names == ["cat", "dog"]
    assert f"skipping unreadable image {image_folder / 'dog' / 'broken.jpg'}" in captured.err
    assert str(image_folder / "empty") in captured.err and "'empty' dropped" in captured.err
    assert (f"{image_folder}: train 9, validation 2, test 2 images, 2 classes; 1 unreadable image "
            "skipped, 1 other file ignored") in captured.out
    labels = {split: [int(y) for _, y in dataset] for split, dataset in datasets.items()}
    assert sum(len(v) for v in labels.values()) == 13
    assert {split: sorted(v) for split, v in labels.items()} == {
        "train": [0] * 5 + [1] * 4, "validation": [0, 1], "test": [0, 1]}
    for dataset in datasets.values():
        for image, label in dataset:
            assert image.dtype == tf.string and label.dtype == tf.int64
            pixels = to_float_image(image, 24).numpy()
            assert pixels.shape == (24, 24, 3) and pixels.min() >= 0 and pixels.max() <= 1
    images, labels = next(iter(make_image_batches(datasets["train"], 16, 24, shuffle_seed=0)))
    assert (images.shape == (9, 24, 24, 3) and images.dtype == tf.float32
            and labels.dtype == tf.int64)
    again, _ = make_image_datasets(config)  # the split does not depend on anything but the names
    assert ([bytes(i.numpy()) for i, _ in again["test"]]
            == [bytes(i.numpy()) for i, _ in datasets["test"]])


def test_image_folder_train_per_class_and_errors(image_folder, tmp_path, capsys):
    datasets, _ = make_image_datasets(ImageDataConfig(image_dir=str(image_folder),
                                                      train_per_class=2))
    assert sorted(int(y) for _, y in datasets["train"]) == [0, 0, 1, 1]
    assert "train 4 (2 per class)" in capsys.readouterr().out
    with pytest.raises(DataError, match=str(image_folder / "dog" / "broken.jpg")):
        make_image_datasets(ImageDataConfig(image_dir=str(image_folder), bad_images="error"))
    with pytest.raises(DataError, match="bad_images must be one of"):
        make_image_datasets(ImageDataConfig(image_dir=str(image_folder), bad_images="ignore"))
    with pytest.raises(DataError, match="does not exist"):
        make_image_datasets(ImageDataConfig(image_dir=str(tmp_path / "nowhere")))
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        make_image_datasets(ImageDataConfig(image_dir=str(tmp_path / "flat")))
    (tmp_path / "flat" / "only").mkdir()
    (tmp_path / "flat" / "only" / "a.png").write_bytes(
        tf.io.encode_png(_random_image(0, 4, 4)).numpy())
    with pytest.raises(DataError, match="needs two or more"):
        make_image_datasets(ImageDataConfig(image_dir=str(tmp_path / "flat")))


def test_to_float_image_same_for_bytes_and_tensors():
    image = _random_image(7, 13, 17)
    from_bytes = to_float_image(tf.io.encode_png(image), 20)
    from_tensor = to_float_image(tf.constant(image), 20)
    assert from_bytes.dtype == tf.float32 and from_bytes.shape == (20, 20, 3)
    assert float(tf.reduce_max(tf.abs(from_bytes - from_tensor))) == 0.0
    gray = to_float_image(tf.constant(_random_image(8, 8, 8, 1)), 32).numpy()
    assert gray.shape == (32, 32, 3)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    serving = tf.function(lambda b: to_float_image(b, 20),
                          input_signature=[tf.TensorSpec([], tf.string)])
    assert float(tf.reduce_max(tf.abs(serving(tf.io.encode_png(image)) - from_tensor))) == 0.0


def _toy_examples(n=24):
    images = np.stack([_random_image(i, 8, 8, 1) for i in range(n)])
    return tf.data.Dataset.from_tensor_slices((images, np.arange(n) % 3))


def _as_lists(batches):
    return [(x.numpy(), y.numpy()) for x, y in batches]


def test_make_image_batches_order_skip_and_augmentation():
    plain = _as_lists(make_image_batches(_toy_examples(), 8, 16))
    assert [x.shape for x, _ in plain] == [(8, 16, 16, 3)] * 3
    assert plain[0][0].dtype == np.float32 and plain[0][1].dtype == np.int64
    first = _as_lists(make_image_batches(_toy_examples(), 8, 16, shuffle_seed=5))
    second = _as_lists(make_image_batches(_toy_examples(), 8, 16, shuffle_seed=5))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(first, second))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, plain))
    resumed = _as_lists(make_image_batches(_toy_examples(), 8, 16, shuffle_seed=5, skip_batches=1))
    assert len(resumed) == 2 and all(np.array_equal(a[0], b[0]) for a, b in zip(resumed, first[1:]))

    augment = build_augmenter("flip,rotation,zoom,contrast", seed=1)
    augmented = _as_lists(make_image_batches(_toy_examples(), 8, 16, augment=augment))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(augmented, plain))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(augmented, plain))
    pixels = np.concatenate([x for x, _ in augmented])
    assert pixels.dtype == np.float32 and np.isfinite(pixels).all()
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_build_augmenter_names():
    assert build_augmenter("", seed=1) is None and build_augmenter([], seed=1) is None
    augment = build_augmenter(" flip, contrast ", seed=1)
    assert [type(layer).__name__ for layer in augment.layers] == ["RandomFlip", "RandomContrast"]
    allowed = r"'flip', 'rotation', 'zoom', 'contrast'"
    with pytest.raises(ValueError, match=rf"unknown augmentation 'blur'.*{allowed}"):
        build_augmenter("flip,blur", seed=1)
