"""Exports: serving SavedModels on raw inputs, and the fresh-process check of an export.

What a serving signature returns comes from the run's task type (``task.serving``); the writer
here only wires inputs to the model and the model to those outputs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfpretrain.data.pipeline import pack_texts, trim_to_longest
from tfpretrain.files import atomic_directory
from tfpretrain.hub import HubLayer
from tfpretrain.models import feature_extractor
from tfpretrain.tasks.classification import SingleLabelClassification


def merge_lora(model: keras.layers.Layer) -> int:
    """Folds the LoRA adapters of every Keras layer in ``model`` (``Dense``, ``EinsumDense``,
    ``Embedding`` after ``enable_lora``) into the weight they adapt and drops them: the model
    computes the same, at the cost it had without adapters. Returns how many layers it merged.

    Example:
        >>> dense = keras.layers.Dense(4)
        >>> dense.build((None, 3)); dense.enable_lora(2)
        >>> merge_lora(dense), [w.path for w in dense.weights]
        (1, ['dense/kernel', 'dense/bias'])
    """
    merged = 0
    for layer in model._flatten_layers():
        if not getattr(layer, "lora_enabled", False):
            continue
        name = "embeddings" if isinstance(layer, keras.layers.Embedding) else "kernel"
        getattr(layer, f"_{name}").assign(keras.ops.convert_to_tensor(getattr(layer, name)))
        adapters = [key for key, value in vars(layer).items()
                    if key.startswith("lora_") and isinstance(value, keras.Variable)]
        layer._tracker.unlock()
        for key in adapters:
            layer._untrack_variable(getattr(layer, key))
            delattr(layer, key)
        layer._tracker.lock()
        layer.lora_enabled = False
        merged += 1
    return merged


def export_text_classifier(model: keras.Model, label_names: list[str] | None, path: str,
                           preprocessor: Any = None, seq_length: int | None = None,
                           truncation: str = "head", task: Any = None,
                           inputs: Sequence[str] = ("text",), cases: bool = False) -> str:
    """Writes a SavedModel whose ``serving_default`` takes raw strings: a 1-D batch of texts, or
    two (``inputs=("text_a", "text_b")``) for a model of sentence pairs.

    Signatures (TF Serving conventions, named inputs and outputs):

    - ``serving_default(text: string [batch]) -> {probabilities: float32 [batch, C],
      label_id: int64 [batch], label: string [batch]}`` for single-label classification; the
      task's outputs otherwise (``score`` for regression, ``probabilities`` and ``labels`` for
      multi-label);
    - ``predict_embeddings(text) -> {embeddings: float32 [batch, dim]}``: the features the head
      classifies (pooled encoder output);
    - ``preprocess(text) -> {input_word_ids, input_mask, input_type_ids: int32 [batch,
      seq_length]}`` when ``preprocessor`` is given: the token ids the TFLite export takes.

    Tokenisation is inside, so serving needs only ``tensorflow`` and ``tensorflow_text``. The
    label names are also in ``assets/labels.txt``.

    Args:
        model: a Keras model returning the head's outputs: on BERT inputs when ``preprocessor``
            is given (``build_bert_classifier``), else on strings (``build_sentence_classifier``).
        label_names: class names, in logit order (ignored when ``task`` is given).
        path: output directory, written atomically.
        preprocessor: TF Hub-format BERT preprocessor that turns strings into the model's inputs.
        seq_length, truncation, cases: how the preprocessor packs texts, as in training
            (see ``pack_texts``; pairs share ``seq_length`` round robin).
        task: the task type whose outputs ``serving_default`` returns (default: single-label
            classification over ``label_names``).
        inputs: the names of the string inputs: one, or two for pairs (a model on strings takes
            them as a dict by these names, ``build_sentence_classifier(..., pairs=True)``).

    Example:
        >>> export_text_classifier(model, ["neg", "pos"], "/tmp/export", loaded.preprocessor,
        ...                        128)  # doctest: +SKIP
        >>> served = tf.saved_model.load("/tmp/export")  # doctest: +SKIP
        >>> served.signatures["serving_default"](text=tf.constant(["great film"]))  # doctest: +SKIP
    """
    specs = [tf.TensorSpec([None], tf.string, name=name) for name in inputs]

    def texts(*strings):
        return strings if len(strings) == 2 else strings[0]

    def model_inputs(*strings):
        if preprocessor is None:  # a model on strings: one, or {text_a, text_b}
            return dict(zip(inputs, strings)) if len(strings) == 2 else strings[0]
        return trim_to_longest(pack_texts(preprocessor, texts(*strings), seq_length, truncation,
                                          cases))

    endpoints = {"serving_default": (model_inputs, specs)}
    if preprocessor is not None:
        # What the TFLite models take: token ids padded to seq_length.
        endpoints["preprocess"] = (
            lambda *strings: pack_texts(preprocessor, texts(*strings), seq_length, truncation,
                                        cases), specs)
    task = task or SingleLabelClassification(label_names)
    return _write_model(model, task, path, endpoints, track=[preprocessor] if preprocessor else [])


def export_token_classifier(model: keras.Model, path: str, preprocessor: Any, seq_length: int,
                            task: Any) -> str:
    """Writes a SavedModel of a token classifier (``build_token_classifier``) on raw strings.

    Signatures (outputs padded per batch, so TF Serving can return them):

    - ``serving_default(text: string [batch])``: the text split into words (whitespace, and
      punctuation at either end of a word, ``tfpretrain.data.tagging.split_words``), tagged, and
      its entities: ``entity_type``, ``entity_text`` ``[batch, entities]`` string;
      ``entity_start``, ``entity_end`` int64 character offsets (end exclusive; -1 = padding);
      ``entity_score`` float32; ``entity_count`` ``[batch]``; plus ``words``, ``tags``,
      ``tag_ids`` and ``word_scores`` ``[batch, words]``;
    - ``tag_words(tokens: string [batch, words], "" after the last word)``: one IOB2 tag per
      given word, as evaluation scores them: ``tags``, ``tag_ids``, ``word_scores`` and
      ``tag_probabilities`` ``[batch, words, tags]``.

    Word pieces, windows of ``seq_length`` tokens and the first-piece rule are the training
    pipeline's own (``tfpretrain.data.tagging.word_windows``).
    """
    from tfpretrain.data.tagging import split_words, word_windows

    cases = "input_case_ids" in model.input  # build_token_classifier(case_segments=True)

    def probabilities(words):
        windows = word_windows(words, preprocessor, seq_length, cases)
        return task.word_probabilities(model, windows, words)

    def serve_text(text):
        words, starts, ends = split_words(text)
        tagged = probabilities(words)
        return {**task.entities(text, starts, ends, tagged), **task.word_outputs(tagged),
                "words": words.to_tensor("")}

    def serve_words(tokens):
        tagged = probabilities(tf.RaggedTensor.from_tensor(tokens, padding=""))
        return {**task.word_outputs(tagged), "tag_probabilities": tagged.to_tensor(0.0)}

    _write_archive(model, path, {
        "serving_default": (serve_text, [tf.TensorSpec([None], tf.string, name="text")]),
        "tag_words": (serve_words, [tf.TensorSpec([None, None], tf.string, name="tokens")])},
        [preprocessor])
    return path


def export_image_classifier(model: keras.Model, label_names: list[str] | None, path: str,
                            image_size: int, task: Any = None) -> str:
    """Writes a SavedModel of an image classifier that takes encoded images or float images.

    Signatures:

    - ``serving_default(image_bytes: string [batch])``: JPEG/PNG/BMP/GIF bytes of any size →
      ``{probabilities, label_id, label}``;
    - ``serving_float(images: float32 [batch, height, width, 3] in [0, 1])``, any size → the same;
    - ``predict_embeddings(image_bytes) -> {embeddings}``: what the head classifies.

    Images are decoded, scaled to [0, 1] and resized to ``image_size`` inside, exactly as the
    training pipeline does (``tfpretrain.data.images.to_float_image``).
    """
    from tfpretrain.data.images import to_float_image

    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")
    float_spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
    signature = tf.TensorSpec([image_size, image_size, 3], tf.float32)

    def decode(image_bytes):
        return tf.map_fn(lambda b: to_float_image(b, image_size), image_bytes,
                         fn_output_signature=signature)

    def resize(images):
        return tf.image.resize(images, (image_size, image_size))

    task = task or SingleLabelClassification(label_names)
    return _write_model(model, task, path, {"serving_default": (decode, [bytes_spec]),
                                            "serving_float": (resize, [float_spec])})


def _write_model(model, task, path, endpoints, track=()):
    """Writes ``model`` (inputs → head outputs) as a SavedModel, atomically, with Keras's
    ExportArchive.

    ``endpoints``: ``{name: (to_model_inputs, input_specs)}``. ``serving_default`` and every
    ``serving_*`` endpoint return the task's serving outputs; ``predict_embeddings`` (on
    ``serving_default``'s input) returns ``{embeddings}``; other endpoints return what their
    function returns.
    """
    features = feature_extractor(model)
    to_inputs, specs = endpoints["serving_default"]
    endpoints["predict_embeddings"] = (
        lambda *x: {"embeddings": tf.cast(features(to_inputs(*x), training=False), tf.float32)},
        specs)
    with tempfile.TemporaryDirectory() as scratch:
        outputs, resources = task.serving(scratch)  # e.g. label names as an asset
        endpoints = {name: (_serving(model, fn, outputs) if name == "serving_default"
                            or name.startswith("serving_") else fn, specs)
                     for name, (fn, specs) in endpoints.items()}
        _write_archive(model, path, endpoints, [*resources, *track])
    return path


def _write_archive(model, path, endpoints, track):
    """Writes the SavedModel of ``endpoints`` (``{name: (fn, input_specs)}``) on ``model``
    atomically, tracking ``track`` (tables, preprocessors) and the SavedModels inside the model."""
    # Keras's ExportArchive, not tf.saved_model.save of a module holding the model: with the
    # latter, graph-mode loaders (TF Serving, saved_model_cli run, the TFLite converter) cannot
    # find the Keras layers' variables ("Could not find variable classifier/logits/bias"). And
    # no archive.track(model): the archive saves the variables its endpoints use by itself, and
    # tracking the model stores every weight a second time through its Keras wrappers (Keras 3.15).
    with atomic_directory(path) as tmp:
        archive = keras.export.ExportArchive()
        for resource in track:
            archive.track(resource)
        # tables inside Hub SavedModels (a sentence encoder's vocabulary)
        for layer in model.layers:
            if isinstance(layer, HubLayer):
                archive.track(layer.saved_model)
        for name, (fn, input_specs) in endpoints.items():
            archive.add_endpoint(name, fn, input_signature=list(input_specs))
        archive.write_out(tmp, verbose=False)


def _serving(model, to_inputs, outputs):
    return lambda *x: outputs(model(to_inputs(*x), training=False))


_FRESH_PROCESS = """
import base64, json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (the export's tokeniser ops)
request = json.loads(sys.stdin.read())  # sent once the export is written
decode = (lambda v: base64.b64decode(v)) if request["b64"] else (lambda v: v)
served = tf.saved_model.load(request["path"]).signatures["serving_default"]
out = served(**{name: tf.constant([decode(v) for v in column], tf.string)
                for name, column in zip(request["names"], request["columns"])})
np.save(request["out_file"], out[request["output_key"]].numpy())
"""


def start_fresh_process() -> subprocess.Popen:
    """A new Python that imports only ``tensorflow`` and ``tensorflow_text`` (no tfpretrain, no
    keras), then waits for one ``serve_in_fresh_process`` request on its standard input.

    Starting it before the export is written overlaps its imports (7 s on a 2-core CPU) with the
    writing; a process that gets no request (its standard input closes) exits.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, "-c", _FRESH_PROCESS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def serve_in_fresh_process(path: str, texts: Sequence, input_name: str | Sequence[str] = "text",
                           output_key: str = "probabilities",
                           process: subprocess.Popen | None = None) -> np.ndarray:
    """``serving_default`` of the SavedModel at ``path`` on ``texts`` (strings, or bytes such as
    encoded images; ``(text_a, text_b)`` tuples with two ``input_name``s), in a new Python that
    imports only ``tensorflow`` and ``tensorflow_text`` (no tfpretrain, no keras): ``process``,
    from ``start_fresh_process``, or one started here.

    Returns the output ``output_key`` as a NumPy array (``input_name``/``output_key``:
    ``text``/``probabilities`` for classifiers, ``inputs``/``outputs`` for sentence encoders).
    """
    process = process or start_fresh_process()
    names = [input_name] if isinstance(input_name, str) else list(input_name)
    values = list(texts)
    columns = [values] if len(names) == 1 else [list(column) for column in zip(*values)]
    b64 = bool(values) and isinstance(values[0], bytes)  # encoded images travel as base64
    if b64:
        columns = [[base64.b64encode(v).decode() for v in column] for column in columns]
    with tempfile.TemporaryDirectory() as scratch:
        out_file = os.path.join(scratch, "outputs.npy")
        _, stderr = process.communicate(json.dumps(
            {"path": path, "names": names, "columns": columns, "b64": b64,
             "out_file": out_file, "output_key": output_key}))
        if process.returncode != 0:
            raise RuntimeError(f"the export at {path} failed in a fresh process:\n"
                               f"{stderr[-2000:]}")
        return np.load(out_file)


def check_export(path: str, texts: Sequence, expected: np.ndarray,
                 input_name: str | Sequence[str] = "text",
                 output_key: str = "probabilities",
                 process: subprocess.Popen | None = None) -> float:
    """Prints and returns the max abs difference between ``expected`` (in-memory outputs on
    ``texts``) and the export at ``path`` served in a fresh process (``process``, from
    ``start_fresh_process``, or a new one)."""
    served = serve_in_fresh_process(path, texts, input_name, output_key, process)
    difference = float(np.abs(served - np.asarray(expected)).max())
    print(f"export check: fresh-process {output_key} vs in-memory, max abs diff {difference:.2e} "
          f"on {len(texts)} inputs", flush=True)
    return difference
