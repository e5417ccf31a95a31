"""Builders: every builder's model saves as a .keras file and loads in a fresh process with the
same outputs and its encoder's trainable choice (HubLayer keeps its handle and options)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import run_python
from tests.test_image_encoders import _toy_application
from tfpretrain import converters
from tfpretrain.encoders.bert import load_bert_encoder
from tfpretrain.encoders.image import load_image_encoder
from tfpretrain.encoders.sentence import load_sentence_encoder
from tfpretrain.heads import build_classification_head
from tfpretrain.models import (
    build_bert_classifier,
    build_image_classifier,
    build_sentence_classifier,
)

_LOAD = """
import sys
import keras, numpy as np
import tfpretrain  # registers HubLayer
model = keras.models.load_model(sys.argv[1])
inputs = dict(np.load(sys.argv[2], allow_pickle=True).item())
inputs = inputs["x"] if list(inputs) == ["x"] else inputs
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(inputs, training=False)))
print("trainable", sum(int(np.prod(w.shape)) for w in model.trainable_weights))
"""


def _round_trip(model, inputs, tmp_path):
    for weight in model.trainable_weights[-2:]:  # "fine-tuned" weights must survive the trip
        weight.assign(weight + 0.05)
    expected = model(inputs, training=False).numpy()
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "inputs.npy", inputs if isinstance(inputs, dict) else {"x": inputs},
            allow_pickle=True)
    result = run_python(["-c", _LOAD, str(tmp_path / "model.keras"), str(tmp_path / "inputs.npy"),
                         str(tmp_path / "out.npy")], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-6)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert f"trainable {trainable}" in result.stdout


def test_bert_classifier_round_trips_through_a_keras_file(toy_bert, tmp_path):
    loaded = load_bert_encoder(*toy_bert, trainable=True)
    model = build_bert_classifier(loaded.layer, 3, pooling="mean")
    packed = loaded.preprocessor(tf.constant(["good film", "bad"]))
    inputs = {k: v.numpy() for k, v in packed.items()}
    _round_trip(model, inputs, tmp_path)


@pytest.mark.parametrize("variant", ["call", "signature"])
def test_sentence_classifier_round_trips_through_a_keras_file(toy_use, tmp_path, variant):
    encoder = load_sentence_encoder(toy_use[variant])
    head = build_classification_head(2)
    head.build((None, encoder.dim))
    model = build_sentence_classifier(encoder.layer, head)
    _round_trip(model, np.array(["good film", "bad plot"], dtype=object), tmp_path)


def test_image_classifier_with_a_partly_trainable_encoder_round_trips(tmp_path):
    path = converters.export_keras_application(_toy_application(), str(tmp_path / "toy"),
                                               image_size=16)
    encoder = load_image_encoder(path, fine_tune_blocks=1)
    model = build_image_classifier(encoder.layer, 2, encoder.image_size)
    images = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    _round_trip(model, images, tmp_path)
