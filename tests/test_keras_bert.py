"""The Keras-native BERT path: TF Hub-format weights in a KerasHub BertBackbone, its parity with
the SavedModel, mixed precision, LoRA and the fallback to the restored SavedModel."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT
from tfpretrain import hub
from tfpretrain.distribute import float32_compute
from tfpretrain.encoders import bert
from tfpretrain.export import merge_lora

MODEL_GARDEN = os.path.join(ROOT, "tests", "fixtures", "model_garden_bert")


def _inputs(vocabulary_size=40, batch=4, length=12, seed=1):
    rng = np.random.default_rng(seed)
    mask = np.arange(length)[None, :] < rng.integers(2, length + 1, (batch, 1))
    return {"input_word_ids": (rng.integers(1, vocabulary_size, (batch, length)) * mask
                               ).astype("int32"),
            "input_mask": mask.astype("int32"),
            "input_type_ids": ((np.arange(length)[None, :] >= length // 2) * mask).astype("int32")}


def _difference(got, expected, mask):
    """Max abs difference of pooled_output and of sequence_output at real tokens."""
    def gap(key):
        return np.abs(np.asarray(got[key]) - np.asarray(expected[key]))

    return max(gap("pooled_output").max(), (gap("sequence_output") * mask[..., None]).max())


def test_model_garden_export_maps_and_matches_model_gardens_own_outputs():
    # Written by TF Model Garden 2.20's export_tfhub (tests/fixtures/make_model_garden_bert.py),
    # with its outputs on a fixed batch computed there, in TensorFlow 2.20.
    layer = bert.build_keras_bert_encoder(hub.load_saved_model(os.path.join(MODEL_GARDEN,
                                                                            "encoder")))
    assert not layer.exact_gelu  # Model Garden's BERT uses the tanh approximation
    assert layer.backbone_config["num_layers"] == 2 and layer.backbone_config["hidden_dim"] == 16
    reference = np.load(os.path.join(MODEL_GARDEN, "reference.npz"))
    got = layer({name: reference[name] for name in bert.INPUT_NAMES})
    assert _difference(got, reference, reference["input_mask"]) <= 1e-5


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_this_projects_export_round_trips_through_keras_and_back(tmp_path, dropout):
    from tfpretrain.encoders.toy import export_toy_bert
    from tfpretrain.hub_export import export_bert_encoder

    saved = hub.load_saved_model(export_toy_bert(str(tmp_path / "toy"), dropout=dropout)[0])
    layer = bert.build_keras_bert_encoder(saved)
    assert layer.dropout == dropout  # trains with dropout exactly when the SavedModel does
    inputs = _inputs()
    assert _difference(layer(inputs), saved(inputs, training=False), inputs["input_mask"]) <= 1e-5
    export_bert_encoder(layer.backbone, str(tmp_path / "again"))  # the same TF Hub format
    again = hub.load_saved_model(str(tmp_path / "again"))
    assert _difference(again(inputs, training=False), layer(inputs), inputs["input_mask"]) <= 1e-6


@pytest.mark.parametrize("exact", [False, True])
def test_gelu_is_chosen_by_the_outputs_not_assumed(tmp_path, exact):
    import keras_hub

    from tfpretrain.hub_export import export_bert_encoder

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=40, num_layers=1, num_heads=2,
                                             hidden_dim=16, intermediate_dim=32,
                                             max_sequence_length=16)
    for layer in backbone.transformer_layers:  # pre-activations where the two GELUs differ
        dense = layer._feedforward_intermediate_dense
        dense.kernel.assign(dense.kernel * 100)
        if exact:
            dense.activation = keras.activations.gelu
    export_bert_encoder(backbone, str(tmp_path / "encoder"))
    saved = hub.load_saved_model(str(tmp_path / "encoder"))
    layer = bert.build_keras_bert_encoder(saved)
    assert layer.exact_gelu == exact
    inputs = _inputs(length=8)
    layer.set_exact_gelu(not exact)  # and the other one would not have matched
    assert (_difference(layer(inputs), saved(inputs, training=False), inputs["input_mask"])
            > bert.PARITY_TOLERANCE)


def _export_scaled(encoder_dir, path):
    """The toy encoder's weights under a different computation (outputs doubled)."""
    inner = tf.saved_model.load(encoder_dir)
    module = tf.__internal__.tracking.AutoTrackable()  # TF Hub style: variables as an attribute
    module.inner = inner
    specs = {name: tf.TensorSpec([None, None], tf.int32) for name in bert.INPUT_NAMES}

    @tf.function(input_signature=[specs])
    def call(inputs):
        out = inner(inputs, training=False)
        return {"pooled_output": 2 * out["pooled_output"],
                "sequence_output": 2 * out["sequence_output"]}

    module.__call__ = call
    module.variables = list(inner.variables)
    tf.saved_model.save(module, path)
    return path


def test_auto_falls_back_to_the_saved_model_with_the_reason_and_keras_refuses(toy_bert,
                                                                             tmp_path):
    scaled = _export_scaled(toy_bert[0], str(tmp_path / "scaled"))
    layer, described = bert._load_layer(scaled, True, "auto")
    assert isinstance(layer, hub.HubLayer)
    assert described.startswith("restored SavedModel") and "outputs differ" in described
    with pytest.raises(bert.EncoderError, match="cannot run as a KerasHub BertBackbone"):
        bert._load_layer(scaled, True, "keras")
    layer, described = bert._load_layer(toy_bert[0], True, "auto")
    assert isinstance(layer, bert.KerasBertEncoder) and described.startswith("Keras-native")


def test_weights_that_are_not_a_bert_are_named_in_the_refusal(tmp_path):
    module = tf.__internal__.tracking.AutoTrackable()
    module.variables = [tf.Variable(tf.zeros([3, 4]), name="dense/kernel")]
    module.__call__ = tf.function(lambda inputs: {"pooled_output": inputs["input_mask"]})
    tf.saved_model.save(module, str(tmp_path / "other"))
    with pytest.raises(bert.NotMappable, match="no transformer layers"):
        bert.build_keras_bert_encoder(hub.load_saved_model(str(tmp_path / "other")))


def test_lora_trains_adapters_only_and_merging_keeps_the_outputs(toy_bert):
    layer = bert.build_keras_bert_encoder(hub.load_saved_model(toy_bert[0]))
    everything = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
    layer.enable_lora(2)
    trained = layer.trainable_weights  # adapters, and the projections' biases (KerasHub's way)
    assert all(("query" in w.path or "value" in w.path)
               and ("lora_kernel" in w.path or w.path.endswith("bias")) for w in trained)
    adapters = [w for w in trained if "lora_kernel" in w.path]
    assert len(adapters) == 2 * 2 * layer.backbone.num_layers  # A and B, query and value
    assert sum(int(np.prod(w.shape)) for w in trained) < 0.2 * everything
    for weight in adapters:  # B starts at zero; make the adapters do something
        weight.assign(np.random.default_rng(0).normal(0, 0.5, weight.shape))
    inputs = _inputs()
    before = layer(inputs)
    assert merge_lora(layer) == 2 * layer.backbone.num_layers
    assert not [w for w in layer.weights if "lora" in w.path]
    assert layer.get_config()["lora_rank"] == 0
    assert _difference(layer(inputs), before, inputs["input_mask"]) <= 1e-5


def test_lora_needs_the_keras_implementation(toy_bert, tmp_path):
    with pytest.raises(bert.EncoderError, match="model.implementation=keras"):
        bert.load_bert_encoder(*toy_bert, implementation="saved_model", lora_rank=4)
    scaled = _export_scaled(toy_bert[0], str(tmp_path / "scaled"))  # auto falls back: refused
    with pytest.raises(bert.EncoderError, match="runs as a restored SavedModel"):
        bert.load_bert_encoder(scaled, toy_bert[1], implementation="auto", lora_rank=4)


def test_mixed_bfloat16_reaches_the_encoder(toy_bert):
    saved = hub.load_saved_model(toy_bert[0])
    inputs = _inputs()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        layer = bert.build_keras_bert_encoder(saved)
        outputs = layer(inputs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert outputs["sequence_output"].dtype == tf.bfloat16
    assert layer.backbone.weights[0].dtype == "float32"  # variables stay float32
    assert _difference(outputs, saved(inputs, training=False), inputs["input_mask"]) < 0.1
    with float32_compute(layer):
        served = layer(inputs)
    assert served["sequence_output"].dtype == tf.float32
    assert _difference(served, saved(inputs, training=False), inputs["input_mask"]) <= 1e-5
    assert layer(inputs)["sequence_output"].dtype == tf.bfloat16  # and back after the block


@pytest.mark.parametrize("exact", [True, False])
def test_gelu_computes_in_float32_under_mixed_precision(toy_bert, exact):
    layer = bert.build_keras_bert_encoder(hub.load_saved_model(toy_bert[0]))
    layer.set_exact_gelu(exact)
    activation = layer.backbone.transformer_layers[0]._feedforward_intermediate_dense.activation
    x = tf.linspace(-5.0, 5.0, 4001)
    reference = keras.activations.gelu(x, approximate=not exact)
    np.testing.assert_array_equal(activation(x), reference)  # float32: the function itself
    x = tf.cast(x, tf.bfloat16)
    half = activation(x)
    assert half.dtype == tf.bfloat16
    # Computed in float32 and rounded once, which bfloat16 arithmetic does not give.
    np.testing.assert_array_equal(half, tf.cast(keras.activations.gelu(
        tf.cast(x, tf.float32), approximate=not exact), tf.bfloat16))
    in_bfloat16 = keras.activations.gelu(x, approximate=not exact)
    assert np.any(np.asarray(in_bfloat16) != np.asarray(half))
