"""Image folders as labelled data: one subfolder of images per class, split deterministically
(see ``tfpretrain.data.images``), unreadable files skipped with a warning or refused."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import sys
from typing import TYPE_CHECKING

import tensorflow as tf

from tfpretrain.data.tfds import DataError

if TYPE_CHECKING:
    from tfpretrain.data.images import ImageDataConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
BAD_IMAGES = ("skip", "error")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def require_two_classes(names: list[str], where: str) -> None:
    if len(names) < 2:
        raise DataError(f"{where} has {len(names)} usable class(es) ({names}); a classifier "
                        "needs two or more")


# --- image folders --------------------------------------------------------------------------


def _error_line(error):
    """The first line of a TF error message, without its ``{{function_node ...}}`` prefix and
    ``[Op:...]`` suffix."""
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", message.strip()).splitlines()[0]
    return re.sub(r"\s*\[Op:\w+\].*$", "", message).strip() or type(error).__name__


def _check_image(path):
    """``None`` when ``path`` decodes as an image (the way ``to_float_image`` decodes it), else the
    first line of the error."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (OSError, tf.errors.OpError) as error:
        return _error_line(error)
    return None


def _class_files(folder):
    """(relative paths with an image extension, number of other files) under ``folder``,
    recursively; hidden files and folders (``.name``) are skipped."""
    images, others = [], 0
    for parent, subfolders, files in os.walk(folder, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if name.lower().endswith(IMAGE_EXTENSIONS):
                relative = os.path.relpath(os.path.join(parent, name), folder)
                images.append(relative.replace(os.sep, "/"))
            else:
                others += 1
    return images, others


def _split_sizes(n, validation_fraction, test_fraction):
    """(test, validation) sizes of a class of ``n`` images; at least one image stays for
    training."""
    n_test, n_validation = round(n * test_fraction), round(n * validation_fraction)
    excess = n_test + n_validation - (n - 1)
    if n >= 1 and excess > 0:
        taken = min(excess, n_validation)
        n_validation -= taken
        n_test -= excess - taken
    return n_test, n_validation


def check_folder_config(config: ImageDataConfig) -> list[str]:
    if config.bad_images not in BAD_IMAGES:
        raise DataError(f"data.bad_images must be one of {BAD_IMAGES}, got {config.bad_images!r}")
    for field in ("validation_fraction", "test_fraction"):
        if not 0 <= getattr(config, field) < 1:
            raise DataError(f"data.{field} must be in [0, 1), got {getattr(config, field)!r}")
    if config.validation_fraction + config.test_fraction >= 1:
        raise DataError(f"data.validation_fraction + data.test_fraction must be below 1, got "
                        f"{config.validation_fraction} + {config.test_fraction}")
    root = config.image_dir
    if not os.path.isdir(root):
        raise DataError(f"image_dir {root} does not exist or is not a folder (data.image_dir)")
    classes = sorted(d for d in os.listdir(root)
                     if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise DataError(f"image_dir {root} has no class subfolders; it needs one folder of images "
                        "per class")
    return classes


def from_folder(config: ImageDataConfig) -> tuple:
    """``(datasets of (file bytes, label), class names, split sizes, train counts per class,
    log notes)`` of ``config.image_dir``, split as the module docstring of ``images`` says."""
    root = config.image_dir
    classes = check_folder_config(config)
    readable, skipped, ignored = _readable_files(config, root, classes)
    names = [name for name in classes if readable[name]]
    require_two_classes(names, f"image_dir {root}")
    splits, train_counts = _assign_splits(config, root, names, readable)
    for split, (split_paths, _) in splits.items():
        if not split_paths:
            fraction = getattr(config, f"{split}_fraction")
            raise DataError(f"image_dir {root}: the {split} split is empty; its classes are too "
                            f"small for data.{split}_fraction={fraction} "
                            "(add images or set it to 0)")
    datasets = {
        split: tf.data.Dataset.from_tensor_slices(
            (tf.constant(split_paths, tf.string), tf.constant(split_labels, tf.int64))
        ).map(lambda path, label: (tf.io.read_file(path), label))
        for split, (split_paths, split_labels) in splits.items()
    }
    notes = (plural(skipped, "unreadable image") + " skipped" if skipped else "",
             plural(ignored, "other file") + " ignored" if ignored else "")
    counts = {split: len(split_paths) for split, (split_paths, _) in splits.items()}
    return datasets, names, counts, train_counts, notes


def _readable_files(config, root, classes):
    """``({class: [readable files]}, skipped, ignored)``; unreadable files are skipped with a
    warning or are an error (``data.bad_images``)."""
    listed, ignored = {}, 0
    for name in classes:
        listed[name], others = _class_files(os.path.join(root, name))
        ignored += others
    paths = [os.path.join(root, name, relative) for name in classes for relative in listed[name]]
    max_workers = min(16, (os.cpu_count() or 1) + 4)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
        errors = dict(zip(paths, pool.map(_check_image, paths)))  # TF decoding releases the GIL
    readable, skipped = {}, 0
    for name in classes:
        readable[name] = []
        for relative in listed[name]:
            path = os.path.join(root, name, relative)
            if errors[path] is None:
                readable[name].append(relative)
            elif config.bad_images == "error":
                raise DataError(f"unreadable image {path} ({errors[path]}); fix or remove it, or "
                                "set data.bad_images=skip")
            else:
                print(f"warning: skipping unreadable image {path} ({errors[path]})",
                      file=sys.stderr, flush=True)
                skipped += 1
        if not readable[name]:
            print(f"warning: class folder {os.path.join(root, name)} has no readable images; class "
                  f"{name!r} dropped", file=sys.stderr, flush=True)
    return readable, skipped, ignored


def _assign_splits(config, root, names, readable):
    """``({split: (paths, labels)}, train counts per class)`` in the SHA-1 order of each class."""
    splits = {"train": ([], [])}
    if config.validation_fraction > 0:
        splits["validation"] = ([], [])
    if config.test_fraction > 0:
        splits["test"] = ([], [])
    train_counts = []
    for label, name in enumerate(names):
        ordered = sorted(readable[name],
                         key=lambda r, n=name: hashlib.sha1(f"{n}/{r}".encode()).hexdigest())
        n_test, n_validation = _split_sizes(len(ordered), config.validation_fraction,
                                            config.test_fraction)
        parts = {"test": ordered[:n_test], "validation": ordered[n_test:n_test + n_validation],
                 "train": ordered[n_test + n_validation:]}
        if config.train_per_class > 0:
            parts["train"] = parts["train"][:config.train_per_class]
        train_counts.append(len(parts["train"]))
        for split, (split_paths, split_labels) in splits.items():
            split_paths += [os.path.join(root, name, relative) for relative in parts[split]]
            split_labels += [label] * len(parts[split])
    return splits, train_counts
