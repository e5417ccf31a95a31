"""Image classification examples: ``(image, label)`` datasets, their label names, and batches.

From a TFDS name (an image feature and a class-label feature; the project's ``digits_source`` and
``digits_target`` need no network) or a local folder with one subfolder of images per class.
Images stay compact until batching, encoded bytes from a folder and uint8 tensors from TFDS, and
``to_float_image`` turns either into float32 ``[size, size, 3]`` in [0, 1] with TF ops only, so
the training pipeline and the exported serving function preprocess identically.

Folder splits are deterministic and independent of file system order: within each class, files
are ordered by the SHA-1 of ``"<class>/<path in the class folder>"``; the first
``round(n * test_fraction)`` go to ``test``, the next ``round(n * validation_fraction)`` to
``validation``, the rest to ``train`` (Python's ``round``; validation, then test, give up images
so that every class keeps at least one training image).

Training order is a pure function of the shuffle seed, as in ``pipeline.py``: the caller passes
``seed + epoch`` to ``make_image_batches``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import tensorflow as tf

from tfpretrain.config import DatasetConfig, option
from tfpretrain.data.image_folders import BAD_IMAGES, from_folder, require_two_classes
from tfpretrain.data.pipeline import count_examples, finish_batches
from tfpretrain.data.tfds import DataError, load_tfds_splits


@dataclasses.dataclass
class ImageDataConfig(DatasetConfig):
    """Where an image recipe's examples come from: a TFDS dataset or a folder of class folders."""

    name: str = option("TFDS image dataset (digits_target, digits_source, tf_flowers, cifar10, "
                       "beans, mnist, ...); ignored when image_dir is set", "digits_target")
    image_dir: str = option("local folder with one subfolder of images per class "
                            "(JPEG/PNG/BMP/GIF)", "")
    validation_fraction: float = option("image_dir: share of each class held out for validation",
                                        0.1)
    test_fraction: float = option("image_dir: share of each class held out for testing", 0.2)
    bad_images: str = option("an unreadable image file: 'skip' (named and counted in the log) or "
                             "'error'", "skip", BAD_IMAGES)
    image_key: str = option("TFDS image feature", "image")
    label_key: str = option("TFDS label feature", "label")
    train_per_class: int = option("keep only the first N training images of each class (0 = all); "
                                  "digits_target's default low-data regime is 20", 20)
    augment: str = option("training-split augmentation, comma-separated from flip, rotation, "
                          "zoom, contrast ('' = none)", "rotation,zoom,contrast")

AUGMENTATIONS = ("flip", "rotation", "zoom", "contrast")
INDEX_IN_CLASS = "index_in_class"  # the feature the project's digits builders rank examples by


def _per_class_note(counts, per_class):
    """``"20 per class"`` when every class has ``per_class`` training images, else the fewest."""
    if min(counts) == per_class:
        return f" ({per_class} per class)"
    return f" (up to {per_class} per class, fewest {min(counts)})"


def _summary(where, counts, train_per_class, n_classes, train_counts=None, notes=()):
    parts = []
    for split, count in counts.items():
        per_class = split == "train" and train_per_class > 0 and train_counts
        note = _per_class_note(train_counts, train_per_class) if per_class else ""
        parts.append(f"{split} {count}{note}")
    line = f"{where}: {', '.join(parts)} images, {n_classes} classes"
    notes = [note for note in notes if note]
    print(line + (f"; {', '.join(notes)}" if notes else ""), flush=True)


# --- TFDS -----------------------------------------------------------------------------------


def _first_per_class(dataset, label_of, per_class, n_classes):
    """The first ``per_class`` elements of each class of ``dataset``, in dataset order.

    A streaming per-class counter (``dataset.scan``), so it works on datasets of any size with TF
    ops only; it reads the whole split each time the result is iterated, so ``cache()`` the
    result of a big dataset.
    """

    def count(seen, element):
        label = tf.cast(label_of(element), tf.int32)
        seen_now = tf.tensor_scatter_nd_add(seen, tf.reshape(label, [1, 1]),
                                            tf.ones([1], tf.int64))
        return seen_now, (seen[label], element)

    def is_early(rank, element):
        del element
        return rank < per_class

    def drop_rank(rank, element):
        del rank
        return element

    return dataset.scan(tf.zeros([n_classes], tf.int64), count).filter(is_early).map(drop_rank)


def _from_tfds(config):
    where = f"TFDS {config.name}"
    datasets, names = {}, None
    for split, (dataset, info) in load_tfds_splits(config).items():
        features = info.features
        for key, field in ((config.image_key, "image_key"), (config.label_key, "label_key")):
            if key not in features:
                raise DataError(f"{where} has no feature {key!r} (data.{field}); it has "
                                f"{sorted(features.keys())}")
        if len(features[config.image_key].shape) != 3:
            raise DataError(f"{where}: feature {config.image_key!r} (data.image_key) is not an "
                            f"image [height, width, channels] but has shape "
                            f"{features[config.image_key].shape}")
        if not hasattr(features[config.label_key], "names"):
            raise DataError(f"{where}: feature {config.label_key!r} (data.label_key) is not a "
                            f"class label; it has {sorted(features.keys())}")
        names = list(features[config.label_key].names)
        if split == "train" and config.train_per_class > 0:
            if INDEX_IN_CLASS in features:
                dataset = dataset.filter(lambda x: x[INDEX_IN_CLASS] < config.train_per_class)
            else:
                dataset = _first_per_class(dataset, lambda x: x[config.label_key],
                                           config.train_per_class, len(names))
        datasets[split] = dataset.map(
            lambda x: (x[config.image_key], tf.cast(x[config.label_key], tf.int64))
        )
    return datasets, names


def _class_counts(dataset, n_classes):
    labels = dataset.map(lambda image, label: label)
    counts = [0] * n_classes
    for label in labels.as_numpy_iterator():
        counts[int(label)] += 1
    return counts


def make_image_datasets(
    config: ImageDataConfig,
) -> tuple[dict[str, tf.data.Dataset], list[str]]:
    """({'train'|'validation'|'test': dataset of (image, label)}, label_names) for an
    ImageDataConfig.

    ``image`` is the encoded file (a ``tf.string`` scalar: JPEG, PNG, BMP or GIF) from
    ``config.image_dir``, or a uint8 ``[height, width, channels]`` tensor from TFDS
    ``config.name``; ``label`` is int64. ``to_float_image`` turns either into model input.

    TFDS: the splits are ``config.train_split`` / ``validation_split`` / ``test_split`` ('' =
    absent). ``train_per_class > 0`` keeps the first N training images of each class: those
    with ``index_in_class < N`` where the dataset has that feature (the digits builders), else
    the first N in dataset order (counted as the split streams; see ``_first_per_class``).

    Image folder (``config.image_dir``): one subfolder per class, sorted names = label names;
    files ending in ``IMAGE_EXTENSIONS`` (any case, mixed formats) are decoded once here, and an
    unreadable one is skipped with a warning or is an error (``config.bad_images``); other files
    are ignored and counted. A class without readable images is dropped with a warning. The
    split is the SHA-1 one of the module docstring; ``validation``/``test`` are absent when
    their fraction is 0, and ``train_per_class`` keeps the first N of each class's train part.

    Prints one line: the split sizes and the number of classes (plus skipped/ignored files).

    Example:
        >>> datasets, names = make_image_datasets(
        ...     ImageDataConfig(name="digits_target"))  # doctest: +SKIP
        digits_target: train 100 (20 per class), validation 249, test 247 images, 5 classes
        >>> names
        ['5', '6', '7', '8', '9']
    """
    if config.image_dir:
        datasets, names, counts, train_counts, notes = from_folder(config)
        where = config.image_dir
    else:
        datasets, names = _from_tfds(config)
        if names is None:
            raise DataError(f"TFDS {config.name}: no split to load (data.train_split is empty)")
        where, notes = config.name, ()
        require_two_classes(names, f"TFDS {config.name}")
        train_counts = None
        if "train" in datasets and config.train_per_class > 0:
            train_counts = _class_counts(datasets["train"], len(names))
        counts = {split: sum(train_counts) if split == "train" and train_counts
                  else count_examples(dataset)
                  for split, dataset in datasets.items()}
        for split, count in counts.items():
            if not count:
                raise DataError(f"TFDS {config.name}: the {split} split is empty "
                                f"(data.{split}_split)")
    _summary(where, counts, config.train_per_class, len(names), train_counts, notes)
    return datasets, names


# --- model input ----------------------------------------------------------------------------


def _to_rgb(image):
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]  # RGBA: the alpha channel is dropped
    if channels is None:
        rgb = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]),
                      lambda: image[..., :3])
        return tf.ensure_shape(rgb, [None, None, 3])
    raise ValueError(f"an image needs 1, 3 or 4 channels, got shape {image.shape}")


def to_float_image(image: tf.Tensor | bytes, image_size: int) -> tf.Tensor:
    """One image → float32 ``[image_size, image_size, 3]`` in [0, 1], with TF ops only.

    ``image`` is encoded JPEG/PNG/BMP/GIF bytes (a ``tf.string`` scalar; a GIF's first frame) or
    a uint8 ``[height, width, channels]`` tensor with 1 (grayscale, copied to R, G and B), 3 or
    4 (alpha dropped) channels. Values become ``uint8 / 255``; the image is then stretched to a
    square with bilinear resizing (no antialiasing), as Keras's ``image_dataset_from_directory``
    does by default. Graph-safe: used in ``tf.data`` maps and in exported serving functions.

    Example:
        >>> to_float_image(tf.zeros([8, 8, 1], tf.uint8), 32).shape
        TensorShape([32, 32, 3])
    """
    image = tf.convert_to_tensor(image)
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
    image = _to_rgb(image)
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=False)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def _augmentation_names(names):
    if isinstance(names, str):
        names = names.split(",")
    chosen = []
    for name in (n.strip() for n in names):
        if name and name not in chosen:
            if name not in AUGMENTATIONS:
                raise ValueError(f"unknown augmentation {name!r} (data.augment); choose from "
                                 f"{AUGMENTATIONS}")
            chosen.append(name)
    return chosen


def build_augmenter(names: str | Sequence[str], seed: int | None) -> keras.Sequential | None:
    """A ``keras.Sequential`` of random Keras preprocessing layers, or ``None`` for no names.

    ``names``: a comma-separated string (``"rotation,zoom,contrast"``) or a sequence, applied in
    the order given, from ``AUGMENTATIONS``: flip (horizontal), rotation (±5% of a turn), zoom
    (±10%), contrast (factor in [0.8, 1.2], clipped to [0, 1]). Layer ``i`` of
    ``AUGMENTATIONS`` is seeded ``seed + i`` so the layers draw independent random numbers
    (the same seed would make, say, the rotation and zoom amounts move together).

    Example:
        >>> augment = build_augmenter("flip,contrast", seed=42)
        >>> [layer.name for layer in augment.layers]
        ['augment_flip', 'augment_contrast']
    """
    chosen = _augmentation_names(names)
    if not chosen:
        return None

    def layer_seed(name):
        return None if seed is None else seed + AUGMENTATIONS.index(name)

    factories = {
        "flip": lambda s: keras.layers.RandomFlip("horizontal", seed=s, name="augment_flip"),
        "rotation": lambda s: keras.layers.RandomRotation(0.05, seed=s, name="augment_rotation"),
        "zoom": lambda s: keras.layers.RandomZoom(0.1, seed=s, name="augment_zoom"),
        "contrast": lambda s: keras.layers.RandomContrast(0.2, value_range=(0, 1), seed=s,
                                                          name="augment_contrast"),
    }
    return keras.Sequential([factories[name](layer_seed(name)) for name in chosen], name="augment")


def make_image_batches(examples: tf.data.Dataset, batch_size: int, image_size: int,
                       augment: keras.layers.Layer | None = None, shuffle_seed: int | None = None,
                       shuffle_buffer: int = 10000, skip_batches: int = 0) -> tf.data.Dataset:
    """``(image, label)`` examples → batches of (float32 ``[b, s, s, 3]`` in [0, 1], int64
    ``[b]``).

    Args:
        examples: a split from ``make_image_datasets`` (images as bytes or uint8 tensors).
        batch_size: examples per batch (the global batch under a distribution strategy).
        image_size: ``s``, the side of the square model input.
        augment: a layer from ``build_augmenter``, applied to each batch with ``training=True``
            (training only: pass ``None`` for evaluation). Its random stream advances with each
            batch, so augmentation, unlike the order, is not repeated across runs or resumes.
        shuffle_seed: shuffle with this seed (``None`` = keep order, for evaluation); the order
            depends on the seed only, so pass ``seed + epoch``.
        skip_batches: batches to skip (resuming mid-epoch); skipped before decoding.

    Example:
        >>> batches = make_image_batches(datasets["train"], 32, 96,
        ...                              augment=build_augmenter("flip", 42),
        ...                              shuffle_seed=42 + epoch)  # doctest: +SKIP
    """
    if shuffle_seed is not None:
        examples = examples.shuffle(shuffle_buffer, seed=shuffle_seed,
                                    reshuffle_each_iteration=False)
    if skip_batches:
        examples = examples.skip(skip_batches * batch_size)  # = batch().skip(), without decoding
    batches = examples.map(
        lambda image, label: (to_float_image(image, image_size), tf.cast(label, tf.int64)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
    ).batch(batch_size)
    if augment is not None:  # sequential map: the layers' random state advances in batch order
        batches = batches.map(
            lambda images, labels: (tf.cast(augment(images, training=True), tf.float32), labels)
        )
    return finish_batches(batches)


def encode_images(examples: tf.data.Dataset, count: int) -> list[bytes]:
    """Encoded bytes of the first ``count`` images of a split: a folder's own file bytes, else
    PNG and JPEG in turn (so an export check covers both decoders)."""
    encoded = []
    for index, (image, _) in enumerate(examples.take(count)):
        if image.dtype == tf.string:
            encoded.append(image.numpy())
        else:
            encoded.append((tf.io.encode_png if index % 2 else tf.io.encode_jpeg)(image).numpy())
    return encoded


def decode_images(encoded: list[bytes], image_size: int) -> tf.Tensor:
    """Encoded images → float32 ``[n, image_size, image_size, 3]``, as training and serving
    decode them (``to_float_image``)."""
    return tf.stack([to_float_image(tf.constant(b), image_size) for b in encoded])
