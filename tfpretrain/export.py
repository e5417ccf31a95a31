"""Exports: serving SavedModels on raw inputs, and the fresh-process check of an export."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from tfpretrain.data.pipeline import pack_texts
from tfpretrain.files import atomic_directory


def export_text_classifier(model, preprocessor, label_names, seq_length, path):
    """Writes a SavedModel whose ``serving_default`` takes a 1-D batch of raw strings.

    Signature ``serving_default(text: string [batch]) -> {probabilities: float32 [batch, C],
    label_id: int64 [batch], label: string [batch]}``. The preprocessor (tokeniser and
    vocabulary) is inside, so serving needs only ``tensorflow`` and ``tensorflow_text``. The label
    names are also in ``assets/labels.txt``.

    Example:
        >>> export_text_classifier(model, loaded.preprocessor, ["neg", "pos"], 128,
        ...                        "/tmp/export")  # doctest: +SKIP
        >>> served = tf.saved_model.load("/tmp/export")  # doctest: +SKIP
        >>> served.signatures["serving_default"](text=tf.constant(["great film"]))  # doctest: +SKIP
    """
    names = tf.constant(list(label_names))
    root = tf.Module()
    root.model = model
    root.preprocessor = preprocessor

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(text):
        inputs = pack_texts(preprocessor, text, seq_length)
        # Compute only up to the longest text in the batch, as training did.
        longest = tf.maximum(tf.reduce_max(tf.reduce_sum(inputs["input_mask"], axis=1)), 1)
        inputs = {key: value[:, :longest] for key, value in inputs.items()}
        probabilities = tf.nn.softmax(tf.cast(model(inputs, training=False), tf.float32), axis=-1)
        label_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "label_id": label_id, "label": tf.gather(names, label_id)}

    root.serve = serve
    with atomic_directory(path) as tmp, tempfile.TemporaryDirectory() as scratch:
        labels_file = os.path.join(scratch, "labels.txt")
        with open(labels_file, "w", encoding="utf-8") as f:
            f.write("\n".join(label_names) + "\n")
        root.labels = tf.saved_model.Asset(labels_file)
        tf.saved_model.save(root, tmp, signatures={"serving_default": serve})
    return path


_FRESH_PROCESS = """
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the export's tokeniser ops)
texts = json.load(open(sys.argv[2], encoding="utf-8"))
served = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = served(text=tf.constant(texts, tf.string))
np.save(sys.argv[3], out["probabilities"].numpy())
"""


def serve_in_fresh_process(path, texts):
    """Probabilities from the export at ``path`` in a new Python that imports only
    ``tensorflow`` and ``tensorflow_text`` (no tfpretrain, no keras)."""
    with tempfile.TemporaryDirectory() as scratch:
        texts_file = os.path.join(scratch, "texts.json")
        out_file = os.path.join(scratch, "probabilities.npy")
        with open(texts_file, "w", encoding="utf-8") as f:
            json.dump(list(texts), f)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        result = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, path, texts_file, out_file],
                                capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"the export at {path} failed in a fresh process:\n{result.stderr[-2000:]}")
        return np.load(out_file)
