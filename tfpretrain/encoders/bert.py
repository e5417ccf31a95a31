"""BERT-family encoders in the TF Hub format: a preset, a local directory, gs:// or a hub URL, or
any BERT KerasHub loads (hf://org/model, a KerasHub preset name), converted once into the cache."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfpretrain import hub, zoo
from tfpretrain.distribute import float32_compute

INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")
IMPLEMENTATIONS = ("auto", "keras", "saved_model")


class EncoderError(ValueError):
    """An encoder/preprocessor pair that cannot be used together, named in the message."""


@dataclasses.dataclass
class LoadedBertEncoder:
    """A fine-tunable encoder layer plus what feeding it needs."""

    layer: keras.layers.Layer  # KerasBertEncoder or hub.HubLayer: the same contract
    preprocessor: Any  # restored TF Hub-format preprocessor (tokenize, bert_pack_inputs)
    encoder_handle: str
    preprocessor_handle: str
    seq_length: int
    pooling: str
    implementation: str = "saved_model"  # what ``layer`` is, and why, for the run's log


def _resolve_pair(encoder, preprocessor):
    if zoo.is_preset(encoder) or zoo.is_keras_hub_handle(encoder):
        info = zoo.load_preset(encoder)
        return info["encoder"], preprocessor or info["preprocessor"], info
    if not preprocessor:
        raise EncoderError(
            f"model.preprocessor is required with model.encoder={encoder!r} (presets and BERTs "
            "KerasHub loads carry their own: " + ", ".join(sorted(zoo.PRESETS))
            + ", hf://org/model, KerasHub preset names)"
        )
    return encoder, preprocessor, {}


def _rows(layer, word):
    tables = [v.shape[0] for v in layer.weights if len(v.shape) == 2 and word in v.path]
    return max(tables, default=None)


def _check_pair(layer, preprocessor, encoder, preprocessor_handle, seq_length):
    """Catches a mismatched pair here, with names, instead of as a gather error mid-training."""
    vocab_size = getattr(preprocessor, "vocab_size", None)
    if vocab_size is not None:  # a (possibly mirrored) variable in our exports
        vocab_size = int(tf.convert_to_tensor(vocab_size).numpy())
    rows = _rows(layer, "embedding")
    if vocab_size is not None and rows is not None and vocab_size > rows:
        raise EncoderError(
            f"preprocessor {preprocessor_handle!r} has a {vocab_size}-token vocabulary but "
            f"encoder {encoder!r} embeds at most {rows} tokens; use the preprocessor that was "
            "exported with this encoder"
        )
    positions = _rows(layer, "position")
    if positions is not None and seq_length > positions:
        raise EncoderError(
            f"model.seq_length={seq_length} is longer than encoder {encoder!r} supports "
            f"({positions} positions); use --model.seq_length={positions} or less"
        )
    for name in ("tokenize", "bert_pack_inputs"):
        if not hasattr(preprocessor, name):
            raise EncoderError(f"{preprocessor_handle!r} is not a TF Hub BERT preprocessor "
                               f"(no .{name})")


# --- The Keras-native path: the same weights in a KerasHub BertBackbone -------------------------

# Variable names of TF Model Garden's BERT encoders (its export_tfhub, behind tfhub.dev's BERTs)
# → the KerasHub BertBackbone's. This project's exports already use KerasHub's names.
_MODEL_GARDEN_NAMES = (
    (r"^word_embeddings/", "token_embedding/"),
    (r"^type_embeddings/", "segment_embedding/"),
    (r"^embeddings/layer_norm/", "embeddings_layer_norm/"),
    (r"^transformer/layer_(\d+)/self_attention/", r"transformer_layer_\1/self_attention_layer/"),
    (r"^transformer/layer_(\d+)/intermediate/",
     r"transformer_layer_\1/feedforward_intermediate_dense/"),
    (r"^transformer/layer_(\d+)/output_layer_norm/",
     r"transformer_layer_\1/feedforward_layer_norm/"),
    (r"^transformer/layer_(\d+)/output/", r"transformer_layer_\1/feedforward_output_dense/"),
    (r"^transformer/layer_(\d+)/", r"transformer_layer_\1/"),
    (r"^pooler_transform/", "pooled_dense/"),
)
PARITY_TOLERANCE = 1e-5  # max abs difference from the SavedModel's outputs, float32


class NotMappable(ValueError):
    """A SavedModel whose weights do not map onto a KerasHub BertBackbone; says why."""


def _keras_hub_name(name):
    name = name.split(":")[0]
    for pattern, replacement in _MODEL_GARDEN_NAMES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return name


def _weights_by_name(saved_model):
    weights = {}
    for variable in getattr(saved_model, "variables", []):
        name = _keras_hub_name(variable.name)
        if "seed_generator" not in name:  # dropout RNG state, not a weight
            weights[name] = variable
    return weights


def _backbone_config(weights):
    def shape(name):
        if name not in weights:
            raise NotMappable(f"no variable {name!r} (nor its TF Model Garden name)")
        return weights[name].shape

    layers = {int(m.group(1)) for m in (re.match(r"transformer_layer_(\d+)/", n) for n in weights)
              if m}
    if not layers:
        raise NotMappable("no transformer layers named transformer_layer_<i> or "
                          "transformer/layer_<i>")
    vocabulary_size, hidden_dim = shape("token_embedding/embeddings")
    return {"vocabulary_size": int(vocabulary_size), "hidden_dim": int(hidden_dim),
            "num_layers": max(layers) + 1,
            "num_heads": int(shape("transformer_layer_0/self_attention_layer/query/kernel")[1]),
            "intermediate_dim": int(
                shape("transformer_layer_0/feedforward_intermediate_dense/kernel")[1]),
            "max_sequence_length": int(shape("position_embedding/embeddings")[0]),
            "num_segments": int(shape("segment_embedding/embeddings")[0])}


def _in_float32(activation):
    """``activation`` computed in float32 and cast back to its input's dtype. Under
    ``mixed_bfloat16`` TensorFlow's CPU kernels for bfloat16 ``erfc`` are slow (3.4x float32's
    in a profile), and a 32 x 128 ``minilm_l6`` training step took 4% less this way
    (docs/performance.md); float32 is also the more exact of the two."""

    def call(x):
        if keras.backend.standardize_dtype(x.dtype) == "float32":
            return activation(x)
        return keras.ops.cast(activation(keras.ops.cast(x, "float32")), x.dtype)

    return call


@keras.saving.register_keras_serializable(package="tfpretrain")
class KerasBertEncoder(keras.layers.Layer):
    """A KerasHub ``BertBackbone`` behind the TF Hub BERT encoder contract: a dict of
    ``input_word_ids``/``input_mask``/``input_type_ids`` in, ``pooled_output``/``sequence_output``
    out. Unlike a restored SavedModel it computes in the layer's dtype policy (mixed precision
    reaches the encoder), compiles with XLA like any Keras layer, and takes LoRA adapters
    (``enable_lora``).

    Args:
        backbone_config: ``BertBackbone`` arguments (vocabulary_size, num_layers, ...).
        exact_gelu: erf-based GELU (Hugging Face ``hidden_act="gelu"``) instead of KerasHub's
            tanh approximation (TF Model Garden's).
        dropout: the backbone's dropout rate.

    Example:
        >>> loaded = load_bert_encoder("minilm_l6", implementation="keras")  # doctest: +SKIP
        >>> loaded.layer.enable_lora(8)  # doctest: +SKIP
    """

    def __init__(self, backbone_config: dict, exact_gelu: bool = False, dropout: float = 0.1,
                 lora_rank: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        import keras_hub

        self.backbone_config = dict(backbone_config)
        self.exact_gelu = exact_gelu
        self.dropout = dropout
        self.lora_rank = 0
        self.backbone = keras_hub.models.BertBackbone(**self.backbone_config, dropout=dropout,
                                                      dtype=self.dtype_policy)
        self.set_exact_gelu(exact_gelu)
        if lora_rank:
            self.enable_lora(lora_rank)

    def set_exact_gelu(self, exact: bool) -> None:
        """Erf-based GELU (``exact``) or the layers' own (KerasHub's tanh approximation), either
        computed in float32."""
        self.exact_gelu = exact
        for layer in self.backbone.transformer_layers:
            layer._feedforward_intermediate_dense.activation = _in_float32(
                keras.activations.gelu if exact else layer.activation)

    def enable_lora(self, rank: int) -> None:
        """Freezes the backbone and adds rank-``rank`` adapters to every attention query and
        value projection (KerasHub's ``enable_lora``, which also leaves their biases trainable);
        ``tfpretrain.export.merge_lora`` folds them into the kernels."""
        self.backbone.enable_lora(rank)
        self.lora_rank = rank

    def call(self, inputs: dict, training: bool | None = False) -> dict:
        outputs = self.backbone({"token_ids": inputs["input_word_ids"],
                                 "padding_mask": inputs["input_mask"],
                                 "segment_ids": inputs["input_type_ids"]},
                                training=bool(training and self.trainable))
        return {"pooled_output": outputs["pooled_output"],
                "sequence_output": outputs["sequence_output"]}

    def get_config(self) -> dict:
        adapted = any(getattr(layer, "lora_enabled", False)
                      for layer in self.backbone._flatten_layers())  # not once merged
        return {**super().get_config(), "backbone_config": self.backbone_config,
                "exact_gelu": self.exact_gelu, "dropout": self.dropout,
                "lora_rank": self.lora_rank if adapted else 0}


def _probe_inputs(config, batch=3, length=17):
    rng = np.random.default_rng(0)
    length = min(length, config["max_sequence_length"])
    ids = rng.integers(1, config["vocabulary_size"], (batch, length)).astype("int32")
    mask = (np.arange(length)[None, :] < np.array([length, length - 5, 4])[:batch, None])
    types = (np.arange(length)[None, :] >= length // 2) * mask
    return {"input_word_ids": ids * mask, "input_mask": mask.astype("int32"),
            "input_type_ids": types.astype("int32")}


def _in_replica(function, inputs):
    """``function(inputs)`` on the first replica: under a strategy's scope a restored SavedModel
    holds distributed variables, which its functions can only read inside a replica."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context() is False:
        return function(inputs)
    strategy = tf.distribute.get_strategy()
    outputs = strategy.run(tf.function(function), args=(inputs,))
    return tf.nest.map_structure(lambda x: strategy.experimental_local_results(x)[0], outputs)


def _max_difference(got, expected, mask):
    # Padded positions of sequence_output are free to differ: nothing reads them.
    return max(float(np.max(np.abs(np.asarray(got[key]) - expected[key].numpy())
                            * (mask[..., None] if key == "sequence_output" else 1)))
               for key in ("pooled_output", "sequence_output"))


def build_keras_bert_encoder(saved_model: Any, trainable: bool = True,
                             dropout: float | None = None, name: str = "encoder"
                             ) -> KerasBertEncoder:
    """The Keras-native copy of a restored TF Hub-format BERT encoder (``hub.load_saved_model``).

    Names follow this project's exports (KerasHub's) or TF Model Garden's ``export_tfhub``
    (tfhub.dev's BERTs). The GELU (tanh approximation or exact) is the one whose outputs match
    the SavedModel's on a probe batch; the copy must match within ``PARITY_TOLERANCE`` or this
    raises ``NotMappable`` with the difference. ``dropout`` is the fine-tuning dropout rate; by
    default 0.1 (BERT's) when the SavedModel's own training mode drops anything, else 0.

    Example:
        >>> layer = build_keras_bert_encoder(hub.load_saved_model(path))  # doctest: +SKIP
    """
    weights = _weights_by_name(saved_model)
    config = _backbone_config(weights)
    probe = _probe_inputs(config)
    if not callable(saved_model):
        raise NotMappable("the SavedModel has no __call__")
    probe_tensors = {name: tf.constant(value) for name, value in probe.items()}
    takes_training = hub.takes_training_argument(saved_model.__call__)
    try:
        expected = _in_replica(lambda x: saved_model(x, training=False) if takes_training
                               else saved_model(x), probe_tensors)
    except (TypeError, ValueError) as error:  # another contract
        raise NotMappable(f"calling it on BERT inputs failed: {str(error).splitlines()[0]}"
                          ) from error
    if dropout is None:  # drop out while training if and only if the SavedModel does
        dropped = takes_training and _max_difference(
            _in_replica(lambda x: saved_model(x, training=True), probe_tensors), expected,
            probe["input_mask"]) > 0
        dropout = 0.1 if dropped else 0.0
    layer = KerasBertEncoder(config, dropout=dropout, name=name)  # under the run's policy
    for variable in layer.weights:
        if "seed_generator" in variable.path:
            continue
        if variable.path not in weights:
            raise NotMappable(f"KerasHub weight {variable.path!r} has no counterpart")
        source = weights[variable.path]
        if tuple(source.shape) != tuple(variable.shape):
            raise NotMappable(f"{variable.path}: shape {tuple(source.shape)} is not KerasHub's "
                              f"{tuple(variable.shape)}")
        variable.assign(source)
    differences = []
    for exact_gelu in (False, True):
        layer.set_exact_gelu(exact_gelu)
        with float32_compute(layer):  # parity is a float32 property
            differences.append(_max_difference(layer(probe), expected, probe["input_mask"]))
        if differences[-1] <= PARITY_TOLERANCE:
            break
    else:
        raise NotMappable(f"outputs differ from the SavedModel's by {min(differences):.1e} "
                          f"(> {PARITY_TOLERANCE:g}) with either GELU")
    layer.trainable = trainable
    return layer


def load_bert_encoder(encoder: str = "minilm_l6", preprocessor: str = "", trainable: bool = True,
                      seq_length: int | None = None, pooling: str | None = None,
                      implementation: str = "saved_model", lora_rank: int = 0
                      ) -> LoadedBertEncoder:
    """Loads a TF Hub-format BERT encoder and preprocessor.

    Args:
        encoder: preset name (``python -m tfpretrain.zoo list``), TF Hub-format local dir,
            ``gs://`` or URL; or a BERT KerasHub loads (``hf://org/model``, a KerasHub preset
            name, a local Hugging Face or KerasHub directory), converted once into the cache.
        preprocessor: the matching preprocessor; presets supply their own.
        trainable: fine-tune the encoder's weights.
        seq_length: maximum tokens per example (default: the preset's, else 256 or the
            encoder's number of positions if smaller).
        pooling: ``"mean"`` or ``"pooled"`` (default: the preset's, else ``"pooled"``).
        implementation: ``"keras"``: the weights in a KerasHub ``BertBackbone``
            (``KerasBertEncoder``: mixed precision, XLA, LoRA), an error if they do not map;
            ``"saved_model"``: the restored SavedModel (``hub.HubLayer``, any encoder in the TF
            Hub format); ``"auto"``: Keras when the weights map, else the SavedModel.
        lora_rank: train rank-``lora_rank`` adapters on the attention query and value
            projections instead of the encoder's weights (Keras implementation only).

    Example:
        >>> loaded = load_bert_encoder("minilm_l6", trainable=True)  # doctest: +SKIP
        >>> loaded.layer, loaded.seq_length  # doctest: +SKIP
    """
    if implementation not in IMPLEMENTATIONS:
        raise EncoderError(f"model.implementation must be one of {IMPLEMENTATIONS}, got "
                           f"{implementation!r}")
    if lora_rank and implementation == "saved_model":
        raise EncoderError("model.lora_rank needs the Keras implementation (a restored "
                           "SavedModel's graph cannot take adapters): model.implementation=keras")
    encoder_path, preprocessor_path, info = _resolve_pair(encoder, preprocessor)
    layer, described = _load_layer(encoder_path, trainable, implementation)
    if lora_rank:
        if not isinstance(layer, KerasBertEncoder):
            raise EncoderError(f"model.lora_rank needs the Keras implementation, and "
                               f"{encoder!r} runs as a {described}")
        layer.enable_lora(lora_rank)
        described += f", LoRA rank {lora_rank} on attention query/value"
    pre = hub.load_saved_model(preprocessor_path)
    seq_length = seq_length or info.get("seq_length") or min(256, _rows(layer, "position") or 256)
    _check_pair(layer, pre, encoder, preprocessor_path, seq_length)
    return LoadedBertEncoder(
        layer=layer,
        preprocessor=pre,
        encoder_handle=encoder,
        preprocessor_handle=preprocessor or preprocessor_path,
        seq_length=seq_length,
        pooling=pooling or info.get("pooling", "pooled"),
        implementation=described,
    )


def _load_layer(path, trainable, implementation):
    """The encoder layer ``implementation`` asks for, and a line saying which one it is."""
    saved_model = hub.load_saved_model(path)
    if implementation != "saved_model":
        try:
            layer = build_keras_bert_encoder(saved_model, trainable)
            return layer, (f"Keras-native (KerasHub BertBackbone, "
                           f"{'exact' if layer.exact_gelu else 'tanh'} GELU, dropout "
                           f"{layer.dropout:g}, {layer.compute_dtype})")
        except NotMappable as error:
            if implementation == "keras":
                raise EncoderError(f"{path} cannot run as a KerasHub BertBackbone: {error}; "
                                   "use model.implementation=saved_model") from error
            reason = f" (not Keras-mappable: {error})"
    else:
        reason = ""
    return (hub.HubLayer(saved_model, trainable=trainable, name="encoder", path=path),
            "restored SavedModel (float32 graph)" + reason)


# Deprecated names, kept for one release.
load_encoder = load_bert_encoder
LoadedEncoder = LoadedBertEncoder
