import numpy as np
import tensorflow as tf

from tfpretrain.encoders.bert import load_encoder
from tfpretrain.export import export_text_classifier, serve_in_fresh_process
from tfpretrain.models import build_bert_classifier

TEXTS = ["good movie", "the worst plot", "Café ß 東京 🍕 https://x.org", "", "fun " * 40]


def test_fresh_process_reproduces_in_memory_probabilities(toy_bert, tmp_path):
    loaded = load_encoder(*toy_bert, trainable=True)
    model = build_bert_classifier(loaded.layer, 3, pooling="mean")
    path = export_text_classifier(model, ["a", "b", "c"], str(tmp_path / "export"), loaded.preprocessor, 32)
    inputs = loaded.preprocessor.bert_pack_inputs([loaded.preprocessor.tokenize(tf.constant(TEXTS))],
                                                  seq_length=32)
    in_memory = tf.nn.softmax(model(inputs, training=False)).numpy()
    served = serve_in_fresh_process(path, TEXTS)  # imports only tensorflow + tensorflow_text
    assert served.shape == (5, 3)
    assert np.abs(served - in_memory).max() <= 1e-5
    assert (tmp_path / "export" / "assets" / "labels.txt").read_text().split() == ["a", "b", "c"]


def test_export_serves_labels_and_empty_batches(toy_bert, tmp_path):
    loaded = load_encoder(*toy_bert)
    model = build_bert_classifier(loaded.layer, 2)
    export_text_classifier(model, ["neg", "pos"], str(tmp_path / "e"), loaded.preprocessor, 32)
    serve = tf.saved_model.load(str(tmp_path / "e")).signatures["serving_default"]
    out = serve(text=tf.constant(["good", ""]))
    assert set(out) == {"probabilities", "label_id", "label"}
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-6)
    assert set(out["label"].numpy().tolist()) <= {b"neg", b"pos"}
    empty = serve(text=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 2)
