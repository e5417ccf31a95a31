"""Sentence encoders (strings → vectors): loading, caching embeddings, the USE-contract export."""

import numpy as np
import pytest
import tensorflow as tf

from tfpretrain.encoders.bert import load_bert_encoder
from tfpretrain.encoders.sentence import (
    SentenceEncoderError,
    load_embeddings,
    load_sentence_encoder,
)
from tfpretrain.export import serve_in_fresh_process

TEXTS = ["good movie", "the worst plot", "Café ß 東京 🍕 https://x.org", "", "fun " * 40]


@pytest.mark.parametrize("variant", ["call", "signature", "from_bert"])
def test_every_variant_loads_as_a_strings_to_vectors_layer(toy_use, variant):
    encoder = load_sentence_encoder(toy_use[variant])
    out = encoder.layer(tf.constant(TEXTS))
    assert out.shape == (5, encoder.dim) and out.dtype == tf.float32
    assert np.isfinite(out.numpy()).all()
    assert len(encoder.fingerprint) == 16


def test_sentence_export_of_a_bert_pair_is_its_mean_pooled_normalised_output(toy_bert, toy_use):
    bert = load_bert_encoder(*toy_bert, seq_length=32)
    inputs = bert.preprocessor.bert_pack_inputs([bert.preprocessor.tokenize(tf.constant(TEXTS))],
                                                seq_length=32)
    sequence = bert.layer(inputs)["sequence_output"]
    mask = tf.cast(inputs["input_mask"], tf.float32)[..., None]
    expected = tf.math.l2_normalize(
        tf.reduce_sum(sequence * mask, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1e-9), -1)
    model = tf.saved_model.load(toy_use["from_bert"])
    assert np.abs(model(tf.constant(TEXTS)).numpy() - expected.numpy()).max() <= 1e-6
    # Loadable with only tensorflow + tensorflow_text, through the USE signature names.
    served = serve_in_fresh_process(toy_use["from_bert"], TEXTS, "inputs", "outputs")
    assert np.abs(served - expected.numpy()).max() <= 1e-5
    # Dropout runs only with training=True.
    assert not np.allclose(model(tf.constant(TEXTS[:1]), training=True), expected.numpy()[:1])


def test_fine_tuning_changes_the_saved_models_own_variables(toy_use):
    encoder = load_sentence_encoder(toy_use["call"], trainable=True)
    before = [w.numpy().copy() for w in encoder.layer.trainable_weights]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(
            encoder.layer(tf.constant(["good film", "bad plot"]), training=True) ** 2)
    grads = tape.gradient(loss, encoder.layer.trainable_weights)
    for weight, grad in zip(encoder.layer.trainable_weights, grads):
        weight.assign_sub(grad)
    assert any(not np.allclose(b, w.numpy())
               for b, w in zip(before, encoder.layer.trainable_weights))
    frozen = load_sentence_encoder(toy_use["call"])
    assert not frozen.layer.trainable_weights


def test_bad_sentence_encoders_get_clear_errors(toy_bert):
    with pytest.raises(SentenceEncoderError, match="does not take a 1-D batch of strings"):
        load_sentence_encoder(toy_bert[0])
    with pytest.raises(ValueError, match="not a preset"):
        load_sentence_encoder("/no/such/dir")


def test_embeddings_are_cached_by_encoder_and_data(toy_use, tmp_path, capsys):
    data = tf.data.Dataset.from_tensor_slices((TEXTS, [0, 1, 0, 1, 0]))
    encoder = load_sentence_encoder(toy_use["call"])
    first, labels = load_embeddings(encoder, data, str(tmp_path), "train")
    assert "cached embeddings (5, 8)" in capsys.readouterr().out
    again, _ = load_embeddings(encoder, data, str(tmp_path), "train")
    assert "reusing cached embeddings" in capsys.readouterr().out
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, encoder.layer(tf.constant(TEXTS)).numpy(), atol=1e-6)
    assert labels.tolist() == [0, 1, 0, 1, 0]
    changed = tf.data.Dataset.from_tensor_slices((TEXTS, [1, 1, 0, 1, 0]))
    load_embeddings(encoder, changed, str(tmp_path), "train")
    assert "reusing" not in capsys.readouterr().out
    other = load_sentence_encoder(toy_use["signature"])
    load_embeddings(other, data, str(tmp_path), "train")
    assert "reusing" not in capsys.readouterr().out


@pytest.mark.network
def test_universal_sentence_encoder_from_tfhub():
    encoder = load_sentence_encoder("https://tfhub.dev/google/universal-sentence-encoder/4")
    out = encoder.layer(tf.constant(["The quick brown fox.", "A fast auburn fox."]))
    assert out.shape == (2, 512) and encoder.dim == 512
    assert float(tf.reduce_sum(out[0] * out[1])) > 0.5  # similar sentences, similar vectors
