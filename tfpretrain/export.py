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


def export_text_classifier(model, label_names, path, preprocessor=None, seq_length=None,
                           truncation="head"):
    """Writes a SavedModel whose ``serving_default`` takes a 1-D batch of raw strings.

    Signature ``serving_default(text: string [batch]) -> {probabilities: float32 [batch, C],
    label_id: int64 [batch], label: string [batch]}``. Tokenisation is inside, so serving needs
    only ``tensorflow`` and ``tensorflow_text``. The label names are also in ``assets/labels.txt``.

    Args:
        model: a Keras model returning logits: on BERT inputs when ``preprocessor`` is given
            (``build_bert_classifier``), else on strings (``build_sentence_classifier``).
        label_names: class names, in logit order.
        path: output directory, written atomically.
        preprocessor: TF Hub-format BERT preprocessor that turns strings into the model's inputs.
        seq_length, truncation: how the preprocessor packs long texts, as in training
            (see ``pack_texts``).

    Example:
        >>> export_text_classifier(model, ["neg", "pos"], "/tmp/export", loaded.preprocessor,
        ...                        128)  # doctest: +SKIP
        >>> served = tf.saved_model.load("/tmp/export")  # doctest: +SKIP
        >>> served.signatures["serving_default"](text=tf.constant(["great film"]))  # doctest: +SKIP
    """
    names = tf.constant(list(label_names))
    root = tf.Module()
    root.model = model
    root.preprocessor = preprocessor

    def logits(text):
        if preprocessor is None:
            return model(text, training=False)
        inputs = pack_texts(preprocessor, text, seq_length, truncation)
        # Compute only up to the longest text in the batch, as training did.
        longest = tf.maximum(tf.reduce_max(tf.reduce_sum(inputs["input_mask"], axis=1)), 1)
        return model({key: value[:, :longest] for key, value in inputs.items()}, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(text):
        probabilities = tf.nn.softmax(tf.cast(logits(text), tf.float32), axis=-1)
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
out = served(**{sys.argv[4]: tf.constant(texts, tf.string)})
np.save(sys.argv[3], out[sys.argv[5]].numpy())
"""


def serve_in_fresh_process(path, texts, input_name="text", output_key="probabilities"):
    """``serving_default`` of the SavedModel at ``path`` on ``texts``, in a new Python that
    imports only ``tensorflow`` and ``tensorflow_text`` (no tfpretrain, no keras).

    Returns the output ``output_key`` as a NumPy array (``input_name``/``output_key``:
    ``text``/``probabilities`` for classifiers, ``inputs``/``outputs`` for sentence encoders).
    """
    with tempfile.TemporaryDirectory() as scratch:
        texts_file = os.path.join(scratch, "texts.json")
        out_file = os.path.join(scratch, "outputs.npy")
        with open(texts_file, "w", encoding="utf-8") as f:
            json.dump(list(texts), f)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        command = [sys.executable, "-c", _FRESH_PROCESS, path, texts_file, out_file, input_name, output_key]
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"the export at {path} failed in a fresh process:\n{result.stderr[-2000:]}")
        return np.load(out_file)


def check_export(path, texts, expected, input_name="text", output_key="probabilities"):
    """Prints and returns the max abs difference between ``expected`` (in-memory outputs on
    ``texts``) and the export at ``path`` served in a fresh process."""
    served = serve_in_fresh_process(path, texts, input_name, output_key)
    difference = float(np.abs(served - np.asarray(expected)).max())
    print(f"export check: fresh-process {output_key} vs in-memory, max abs diff {difference:.2e} "
          f"on {len(texts)} texts", flush=True)
    return difference
