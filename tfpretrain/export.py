"""Exports: serving SavedModels on raw inputs, and the fresh-process check of an export."""

import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfpretrain.data.pipeline import pack_texts
from tfpretrain.files import atomic_directory
from tfpretrain.hub import HubLayer
from tfpretrain.models import feature_extractor


def export_text_classifier(model, label_names, path, preprocessor=None, seq_length=None,
                           truncation="head"):
    """Writes a SavedModel whose ``serving_default`` takes a 1-D batch of raw strings.

    Signatures (TF Serving conventions, named inputs and outputs):

    - ``serving_default(text: string [batch]) -> {probabilities: float32 [batch, C],
      label_id: int64 [batch], label: string [batch]}``;
    - ``predict_embeddings(text) -> {embeddings: float32 [batch, dim]}``: the features the head
      classifies (pooled encoder output);
    - ``preprocess(text) -> {input_word_ids, input_mask, input_type_ids: int32 [batch,
      seq_length]}`` when ``preprocessor`` is given: the token ids the TFLite export takes.

    Tokenisation is inside, so serving needs only ``tensorflow`` and ``tensorflow_text``. The
    label names are also in ``assets/labels.txt``.

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
    features = feature_extractor(model)
    text_spec = tf.TensorSpec([None], tf.string, name="text")

    def model_inputs(text):
        if preprocessor is None:
            return text
        inputs = pack_texts(preprocessor, text, seq_length, truncation)
        # Compute only up to the longest text in the batch, as training did.
        longest = tf.maximum(tf.reduce_max(tf.reduce_sum(inputs["input_mask"], axis=1)), 1)
        return {key: value[:, :longest] for key, value in inputs.items()}

    def serve(text):
        probabilities = tf.nn.softmax(tf.cast(model(model_inputs(text), training=False), tf.float32), axis=-1)
        label_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "label_id": label_id, "label": names.lookup(label_id)}

    def predict_embeddings(text):
        return {"embeddings": tf.cast(features(model_inputs(text), training=False), tf.float32)}

    # Keras's ExportArchive, not tf.saved_model.save of a module holding the model: with the
    # latter, graph-mode loaders (TF Serving, saved_model_cli run, the TFLite converter) cannot
    # find the Keras layers' variables ("Could not find variable classifier/logits/bias"). And
    # no archive.track(model): the archive saves the variables its endpoints use by itself, and
    # tracking the model stores every weight a second time through its Keras wrappers (Keras 3.15).
    with atomic_directory(path) as tmp, tempfile.TemporaryDirectory() as scratch:
        labels_file = os.path.join(scratch, "labels.txt")
        with open(labels_file, "w", encoding="utf-8") as f:
            f.write("\n".join(label_names) + "\n")
        # Label names come from assets/labels.txt, which predict.py and people read too.
        names = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            labels_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
            tf.string, tf.lookup.TextFileIndex.WHOLE_LINE), default_value="")
        archive = keras.export.ExportArchive()
        archive.track(names)
        for layer in model.layers:  # tables inside Hub SavedModels (a sentence encoder's vocabulary)
            if isinstance(layer, HubLayer):
                archive.track(layer.saved_model)
        archive.add_endpoint("serving_default", serve, input_signature=[text_spec])
        archive.add_endpoint("predict_embeddings", predict_embeddings, input_signature=[text_spec])
        if preprocessor is not None:
            archive.track(preprocessor)
            # What the TFLite models take: token ids padded to seq_length.
            archive.add_endpoint("preprocess", lambda text: pack_texts(preprocessor, text, seq_length, truncation),
                                 input_signature=[text_spec])
        archive.write_out(tmp, verbose=False)
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
