import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from tfpretrain.encoders.bert import load_bert_encoder
from tfpretrain.export import export_text_classifier, serve_in_fresh_process, trim_to_longest
from tfpretrain.models import build_bert_classifier, feature_extractor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXTS = ["good movie", "the worst plot", "Café ß 東京 🍕 https://x.org", "", "fun " * 40]


def test_fresh_process_reproduces_in_memory_probabilities(toy_bert, tmp_path):
    loaded = load_bert_encoder(*toy_bert, trainable=True)
    model = build_bert_classifier(loaded.layer, 3, pooling="mean")
    path = export_text_classifier(model, ["a", "b", "c"], str(tmp_path / "export"),
                                  loaded.preprocessor, 32)
    inputs = loaded.preprocessor.bert_pack_inputs(
        [loaded.preprocessor.tokenize(tf.constant(TEXTS))], seq_length=32)
    in_memory = tf.nn.softmax(model(inputs, training=False)).numpy()
    served = serve_in_fresh_process(path, TEXTS)  # imports only tensorflow + tensorflow_text
    assert served.shape == (5, 3)
    assert np.abs(served - in_memory).max() <= 1e-5
    assert (tmp_path / "export" / "assets" / "labels.txt").read_text().split() == ["a", "b", "c"]


def test_serving_computes_only_up_to_the_longest_text_with_unchanged_outputs(toy_bert, tmp_path):
    loaded = load_bert_encoder(*toy_bert, trainable=True)
    model = build_bert_classifier(loaded.layer, 3, pooling="mean")
    texts = ["good", "the worst plot", "fun film " * 5, ""]  # all far shorter than 64 tokens
    path = export_text_classifier(model, ["a", "b", "c"], str(tmp_path / "e"),
                                  loaded.preprocessor, 64)
    packed = loaded.preprocessor.bert_pack_inputs(
        [loaded.preprocessor.tokenize(tf.constant(texts))], seq_length=64)
    trimmed = trim_to_longest(packed)
    assert {k: tuple(v.shape) for k, v in trimmed.items()} == {  # 10 pieces + 2
        "input_word_ids": (4, 12), "input_mask": (4, 12), "input_type_ids": (4, 12)}
    untrimmed = tf.nn.softmax(model(packed, training=False)).numpy()  # padded to 64
    served = tf.saved_model.load(path).signatures["serving_default"](text=tf.constant(texts))
    assert np.abs(served["probabilities"].numpy() - untrimmed).max() <= 1e-5
    assert np.abs(tf.nn.softmax(model(trimmed, training=False)).numpy() - untrimmed).max() <= 1e-5
    # The `preprocess` signature (what the TFLite models are fed) keeps the fixed length.
    fixed = tf.saved_model.load(path).signatures["preprocess"](text=tf.constant(texts))
    assert fixed["input_word_ids"].shape == (4, 64)


def test_tflite_models_take_any_length_and_a_cut_request_gives_the_same_logits(toy_bert,
                                                                              tmp_path):
    from tfpretrain import tflite

    loaded = load_bert_encoder(*toy_bert)
    model = build_bert_classifier(loaded.layer, 3, pooling="mean")
    texts = ["good", "the worst plot", "fun film " * 5]
    packed = {k: v.numpy() for k, v in loaded.preprocessor.bert_pack_inputs(
        [loaded.preprocessor.tokenize(tf.constant(texts))], seq_length=64).items()}
    cut = {k: v[:, :12] for k, v in packed.items()}  # the longest text: 10 pieces + 2
    expected = model(packed, training=False).numpy()
    for variant, tolerance in (("float32", 1e-5), ("dynamic_range", 0.05)):
        runner = tflite.interpreter(content=tflite.convert(model, None, variant)
                                    ).get_signature_runner()
        for inputs in (packed, cut):
            logits = runner(**inputs)["logits"]
            assert logits.shape == (3, 3)
            assert np.abs(logits - expected).max() <= tolerance, variant
    # tflite_logits (how the recipe scores its TFLite models) cuts each batch to its longest
    # text on a free-length model and keeps a fixed-length model's width.
    for seq_length in (None, 64):
        path = tmp_path / f"model_{seq_length}.tflite"
        path.write_bytes(tflite.convert(model, seq_length, "float32"))
        logits = tflite.tflite_logits(str(path), packed, batch_size=2)
        assert np.abs(logits - expected).max() <= 1e-5, seq_length


def test_export_serves_labels_and_empty_batches(toy_bert, tmp_path):
    loaded = load_bert_encoder(*toy_bert)
    model = build_bert_classifier(loaded.layer, 2)
    export_text_classifier(model, ["neg", "pos"], str(tmp_path / "e"), loaded.preprocessor, 32)
    serve = tf.saved_model.load(str(tmp_path / "e")).signatures["serving_default"]
    out = serve(text=tf.constant(["good", ""]))
    assert set(out) == {"probabilities", "label_id", "label"}
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-6)
    assert set(out["label"].numpy().tolist()) <= {b"neg", b"pos"}
    empty = serve(text=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 2)


def test_embeddings_and_preprocess_signatures(toy_bert, tmp_path):
    loaded = load_bert_encoder(*toy_bert)
    model = build_bert_classifier(loaded.layer, 2, pooling="mean")
    path = export_text_classifier(model, ["neg", "pos"], str(tmp_path / "e"),
                                  loaded.preprocessor, 32)
    signatures = tf.saved_model.load(path).signatures
    assert set(signatures) == {"serving_default", "predict_embeddings", "preprocess"}
    packed = signatures["preprocess"](text=tf.constant(TEXTS))
    assert {k: tuple(v.shape) for k, v in packed.items()} == {
        "input_word_ids": (5, 32), "input_mask": (5, 32), "input_type_ids": (5, 32)}
    embeddings = signatures["predict_embeddings"](text=tf.constant(TEXTS))["embeddings"].numpy()
    expected = feature_extractor(model)(dict(packed), training=False).numpy()
    assert embeddings.shape == (5, 16)
    assert np.abs(embeddings - expected).max() <= 1e-5
    # The embeddings are what the head classifies: head(embeddings) gives the served probabilities.
    logits = model.get_layer("classifier")(embeddings, training=False)
    served = signatures["serving_default"](text=tf.constant(TEXTS))["probabilities"].numpy()
    assert np.abs(tf.nn.softmax(logits).numpy() - served).max() <= 1e-5


def test_saved_model_cli_run_prints_a_label(toy_bert, tmp_path):
    loaded = load_bert_encoder(*toy_bert)
    model = build_bert_classifier(loaded.layer, 2)
    path = export_text_classifier(model, ["neg", "pos"], str(tmp_path / "e"),
                                  loaded.preprocessor, 32)
    result = subprocess.run(
        [sys.executable, "-m", "tfpretrain.saved_model_cli", "run", "--dir", path,
         "--tag_set", "serve", "--signature_def", "serving_default",
         "--input_exprs", 'text=["good movie", "the worst plot"]'],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "Result for output key label:" in out and "Result for output key probabilities:" in out
    labels = out.split("Result for output key label:")[1].split("Result")[0]
    assert labels.count("b'neg'") + labels.count("b'pos'") == 2


def test_the_report_names_the_tensorflow_text_ops_a_model_server_needs(toy_bert, tmp_path):
    from tfpretrain import report

    loaded = load_bert_encoder(*toy_bert)
    path = export_text_classifier(build_bert_classifier(loaded.layer, 2), ["a", "b"],
                                  str(tmp_path / "e"), loaded.preprocessor, 16)
    ops = report.custom_ops(path)
    assert {"NormalizeUTF8", "WordpieceTokenizeWithOffsets"} <= set(ops)
    assert not {"MatMul", "StatefulPartitionedCall", "Softmax"} & set(ops)  # core TensorFlow
