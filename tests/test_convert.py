"""BERTs that KerasHub loads become TF Hub-format pairs: a Hugging Face directory (the format of
hf:// ids) checked against a NumPy BERT, and a KerasHub preset directory. No network."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import run_python
from tfpretrain import zoo
from tfpretrain.encoders.bert import load_bert_encoder

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot", "##s", "the"]
WIDTH, HEADS, INTERMEDIATE, POSITIONS = 8, 2, 16, 32


def _hf_weights(rng):
    """Random weights under Hugging Face BertModel's names and shapes (one layer)."""
    def w(*shape):
        return rng.normal(0, 0.5, shape).astype(np.float32)

    weights = {"embeddings.word_embeddings.weight": w(len(VOCAB), WIDTH),
               "embeddings.position_embeddings.weight": w(POSITIONS, WIDTH),
               "embeddings.token_type_embeddings.weight": w(2, WIDTH),
               "pooler.dense.weight": w(WIDTH, WIDTH), "pooler.dense.bias": w(WIDTH)}
    for name, (out, inp) in {"attention.self.query": (WIDTH, WIDTH),
                             "attention.self.key": (WIDTH, WIDTH),
                             "attention.self.value": (WIDTH, WIDTH),
                             "attention.output.dense": (WIDTH, WIDTH),
                             "intermediate.dense": (INTERMEDIATE, WIDTH),
                             "output.dense": (WIDTH, INTERMEDIATE)}.items():
        weights[f"encoder.layer.0.{name}.weight"] = w(out, inp)
        weights[f"encoder.layer.0.{name}.bias"] = w(out)
    for norm in ("embeddings.LayerNorm", "encoder.layer.0.attention.output.LayerNorm",
                 "encoder.layer.0.output.LayerNorm"):
        weights[f"{norm}.weight"] = 1 + w(WIDTH)
        weights[f"{norm}.bias"] = w(WIDTH)
    return weights


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    """A directory as hf:// downloads it: config, safetensors, vocabulary, sentence-transformers
    mean pooling. Returns (directory, weights)."""
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("hf_bert")
    weights = _hf_weights(np.random.default_rng(0))
    save_file(weights, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_act": "gelu", "vocab_size": len(VOCAB),
        "hidden_size": WIDTH, "num_hidden_layers": 1, "num_attention_heads": HEADS,
        "intermediate_size": INTERMEDIATE, "max_position_embeddings": POSITIONS,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12}))
    (path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return str(path), weights


def _numpy_bert(weights, ids):
    """Hugging Face BertModel's forward pass (exact erf GELU), one layer, no padding."""
    def dense(x, name):
        return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]

    def norm(x, name):
        unit = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12)
        return unit * weights[f"{name}.weight"] + weights[f"{name}.bias"]

    e = "embeddings."
    x = (weights[e + "word_embeddings.weight"][ids] + weights[e + "position_embeddings.weight"][
        : ids.shape[1]] + weights[e + "token_type_embeddings.weight"][0])
    x = norm(x, e + "LayerNorm")
    layer, size = "encoder.layer.0.", WIDTH // HEADS

    def heads(t):
        return t.reshape(*t.shape[:2], HEADS, size).transpose(0, 2, 1, 3)

    q, k, v = (heads(dense(x, layer + f"attention.self.{n}")) for n in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    context = (probs / probs.sum(-1, keepdims=True)) @ v
    context = context.transpose(0, 2, 1, 3).reshape(x.shape)
    x = norm(x + dense(context, layer + "attention.output.dense"),
             layer + "attention.output.LayerNorm")
    hidden = dense(x, layer + "intermediate.dense")
    hidden = 0.5 * hidden * (1 + np.vectorize(math.erf)(hidden / math.sqrt(2)))
    x = norm(x + dense(hidden, layer + "output.dense"), layer + "output.LayerNorm")
    return x, np.tanh(dense(x[:, 0], "pooler.dense"))


def _feed(ids):
    return {"input_word_ids": tf.constant(ids, tf.int32),
            "input_mask": tf.ones(ids.shape, tf.int32),
            "input_type_ids": tf.zeros(ids.shape, tf.int32)}


def test_a_hugging_face_bert_converts_exactly_and_once(hf_bert, capfd):
    import tensorflow_text  # noqa: F401

    path, weights = hf_bert
    assert zoo.is_keras_hub_handle(path)
    loaded = load_bert_encoder(path, trainable=False)
    assert "converting" in capfd.readouterr().err
    info = zoo.read_preset(path)
    assert (info["pooling"], info["lower_case"], info["seq_length"]) == ("mean", True, POSITIONS)
    assert (loaded.pooling, loaded.seq_length) == ("mean", POSITIONS)
    pre = loaded.preprocessor
    inputs = pre.bert_pack_inputs([pre.tokenize(tf.constant(["Good films", "the BAD plot"]))],
                                  seq_length=6)
    assert inputs["input_word_ids"].numpy().tolist() == [[2, 5, 7, 9, 3, 0], [2, 10, 6, 8, 3, 0]]
    ids = np.array([[2, 5, 7, 9, 3], [2, 10, 6, 8, 3]])
    out = loaded.layer(_feed(ids))
    sequence, pooled = _numpy_bert(weights, ids)
    assert np.abs(out["sequence_output"].numpy() - sequence).max() <= 1e-5
    assert np.abs(out["pooled_output"].numpy() - pooled).max() <= 1e-5
    load_bert_encoder(path, trainable=False)  # from the cache: no second conversion
    assert "converting" not in capfd.readouterr().err
    listed = run_python(["-m", "tfpretrain.zoo", "list"], timeout=120)
    assert f"{path}  ready  {zoo.preset_dir(path)}" in listed.stdout


def test_a_cached_bfloat16_conversion_is_converted_again_in_float32_under_mixed_bfloat16(
        hf_bert, tmp_path, monkeypatch, capfd):
    # A run sets its precision before it pulls its preset. Earlier versions converted under that
    # policy and cached an encoder computing in bfloat16; such a cache entry is converted again,
    # and a conversion under mixed_bfloat16 writes a float32 encoder.
    import contextlib
    import shutil

    import keras

    path, weights = hf_bert
    copy = str(shutil.copytree(path, tmp_path / "hf_bert"))  # another handle: converted afresh
    encoder = os.path.join(zoo.preset_dir(copy), "encoder")
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        with monkeypatch.context() as patch:  # what earlier versions did
            patch.setattr(zoo, "_float32_policy", contextlib.nullcontext)
            zoo.pull(copy)
        assert zoo.computes_in_reduced_precision(encoder)
        capfd.readouterr()
        loaded = load_bert_encoder(copy, trainable=False)
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    finally:
        keras.config.set_dtype_policy("float32")
    assert "converted under a mixed precision policy" in capfd.readouterr().err
    assert not zoo.computes_in_reduced_precision(encoder)
    ids = np.array([[2, 5, 7, 9, 3], [2, 10, 6, 8, 3]])
    sequence, _ = _numpy_bert(weights, ids)
    assert np.abs(loaded.layer(_feed(ids))["sequence_output"].numpy() - sequence).max() <= 1e-5


def test_a_keras_hub_preset_directory_converts(tmp_path):
    import keras_hub

    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(VOCAB), num_layers=1,
                                             num_heads=HEADS, hidden_dim=WIDTH,
                                             intermediate_dim=INTERMEDIATE,
                                             max_sequence_length=POSITIONS)
    backbone.save_to_preset(str(tmp_path))
    keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=False).save_to_preset(str(tmp_path))
    loaded = load_bert_encoder(str(tmp_path), trainable=False)
    assert not zoo.read_preset(str(tmp_path))["lower_case"] and loaded.pooling == "pooled"
    ids = np.array([[2, 5, 7, 3]])
    expected = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids),
                         "segment_ids": np.zeros_like(ids)})
    out = loaded.layer(_feed(ids))
    difference = out["pooled_output"].numpy() - np.asarray(expected["pooled_output"])
    assert np.abs(difference).max() <= 1e-6


def test_a_model_that_is_not_bert_is_refused_with_its_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(zoo.PresetError, match="is a 'roberta' model"):
        load_bert_encoder(str(tmp_path))
    assert not os.path.exists(zoo.preset_dir(str(tmp_path)))
