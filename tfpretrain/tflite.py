"""TFLite exports of a BERT classifier with post-training quantization, and their evaluation.

The tokeniser stays outside the TFLite model: TensorFlow Text's WordPiece and normalisation ops
are neither TFLite builtins nor TF Select (Flex) ops, so a ``.tflite`` file with them inside would
need a custom-op build of the interpreter. The models take the token ids of the export's
``preprocess`` signature (``input_word_ids``, ``input_mask``, ``input_type_ids``: int32
``[batch, width]``, any width up to the export's ``seq_length``: cut a request to its longest
text and it costs only that) and return ``logits`` ``[batch, classes]``; ``vocab.txt`` is written
beside them for on-device WordPiece tokenisers.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfpretrain.data.pipeline import pack_texts, text_batch
from tfpretrain.encoders.bert import INPUT_NAMES
from tfpretrain.files import atomic_directory

VARIANTS = ("dynamic_range", "int8")


def convert(model: keras.Model, seq_length: int | None, variant: str,
            representative: Mapping[str, np.ndarray] | None = None) -> bytes:
    """The ``.tflite`` bytes of ``model`` (BERT inputs → logits) at a fixed ``seq_length``, or
    (``None``) at any length: the interpreter then takes each request cut to its longest text.

    Args:
        variant: ``"float32"`` (no quantization), ``"dynamic_range"`` (int8 weights, float
            activations) or ``"int8"`` (the fully-connected layers' weights and activations int8,
            calibrated on ``representative``; other ops float, see ``INT8_OPS``; int32 ids in,
            float32 logits out).
        representative: for ``"int8"``, a dict of int32 ``[N, seq_length]`` arrays: a sample of
            the training split packed like training (``preprocess`` signature).
    """
    spec = {name: tf.TensorSpec([None, seq_length], tf.int32, name=name) for name in INPUT_NAMES}

    # Through Keras's own ExportArchive: tf.saved_model.save of a module holding the model (or a
    # concrete function) leaves the Keras head's variables as TFLite resource variables, which
    # the interpreter reads uninitialised.
    archive = keras.export.ExportArchive()  # no track(model): see export.export_text_classifier
    archive.add_endpoint("serving_default",
                         lambda inputs: {"logits": model(inputs, training=False)},
                         input_signature=[spec])
    with tempfile.TemporaryDirectory() as scratch:
        archive.write_out(scratch, verbose=False)
        return _convert(tf.lite.TFLiteConverter.from_saved_model(scratch), variant,
                        representative)


# Per-tensor int8 activations everywhere cost the default BBC News model 25 points (97.30% →
# 72.30%): LayerNorm's moments and the attention core do not survive them (found with
# tf.lite.experimental.QuantizationDebugger). The fully-connected layers, which hold nearly all
# weights and FLOPs, do, and so do the embedding lookups: int8 only there measured 97.07%.
INT8_OPS = ("FULLY_CONNECTED", "GATHER")


def _convert(converter, variant, representative):
    if variant not in ("float32",) + VARIANTS:
        raise ValueError(f"TFLite variant must be float32, dynamic_range or int8, got {variant!r}")
    if variant == "dynamic_range":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()
    float_model = converter.convert()
    if variant == "float32":
        return float_model
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative is None:
        raise ValueError("int8 quantization needs a representative sample of the training inputs")
    count = len(next(iter(representative.values())))

    def sample():
        for i in range(count):
            yield {name: representative[name][i:i + 1] for name in INPUT_NAMES}

    float_ops = _op_names(float_model) - set(INT8_OPS)
    converter.representative_dataset = sample
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # Selective quantization, the TFLite debugger's documented way to keep named ops in float.
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=sample,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=sorted(float_ops)))
    return debugger.get_nondebug_quantized_model()


def interpreter(path: str | None = None, content: bytes | None = None) -> Any:
    """A TFLite interpreter on a ``.tflite`` file or its bytes, using every core."""
    # "tf.lite.Interpreter is deprecated": LiteRT is not a dependency
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(model_path=path, model_content=content,
                                   num_threads=os.cpu_count())


def _op_names(content):
    return {op["op_name"] for op in interpreter(content=content)._get_ops_details()}


def tflite_logits(path: str, inputs: Mapping[str, np.ndarray],
                  batch_size: int = 16) -> np.ndarray:
    """Logits ``[N, C]`` of the ``.tflite`` model at ``path`` on BERT inputs (dict of ``[N,
    seq]``, padded at the end) through the TFLite interpreter. Each batch is cut to its longest
    example, as a server does: a model converted at any length computes only those tokens (one
    converted at a fixed length needs its full width)."""
    runner = interpreter(path).get_signature_runner()
    fixed = runner.get_input_details()["input_word_ids"]["shape_signature"][1]
    count = len(next(iter(inputs.values())))
    out = []
    for start in range(0, count, batch_size):
        mask = inputs["input_mask"][start:start + batch_size]
        width = fixed if fixed > 0 else max(int(np.asarray(mask).sum(1).max()), 1)
        batch = {name: np.asarray(inputs[name][start:start + batch_size, :width], np.int32)
                 for name in INPUT_NAMES}
        out.append(runner(**batch)["logits"])
    return np.concatenate(out)


def export_tflite(model: keras.Model, directory: str,
                  representative: Mapping[str, np.ndarray] | None, vocab_file: str | None = None,
                  variants: Sequence[str] = VARIANTS) -> dict[str, dict[str, Any]]:
    """Writes ``model_<variant>.tflite`` per variant (and ``vocab.txt``) into ``directory``,
    atomically; returns ``{variant: {"file": relative path, "bytes": size}}``. The models take
    any sequence length (``convert`` with ``seq_length=None``)."""
    written = {}
    with atomic_directory(directory) as tmp:
        for variant in variants:
            print(f"TFLite: converting ({variant})", flush=True)
            name = f"model_{variant}.tflite"
            data = convert(model, None, variant, representative)
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
            written[variant] = {"file": os.path.join(os.path.basename(directory), name),
                                "bytes": len(data)}
        if vocab_file:
            tf.io.gfile.copy(vocab_file, os.path.join(tmp, "vocab.txt"))
    return written


def export_and_score(model: keras.Model, directory: str, encoder: Any,
                     datasets: Mapping[str, tf.data.Dataset], truncation: str = "head",
                     calibration: int = 100, seed: int = 0, cases: bool = False
                     ) -> dict[str, dict[str, Any]]:
    """``export_tflite`` for a BERT classifier, then each model's accuracy through the TFLite
    interpreter; returns ``export_tflite``'s dict with ``accuracy`` and ``split`` added.

    ``encoder`` is the ``load_bert_encoder`` result (the preprocessor packs the texts; the
    sequence length and ``vocab.txt``); ``datasets`` are the ``(text, label_id)`` splits:
    ``calibration`` shuffled training examples calibrate int8, and the test split (else
    validation) is scored; ``truncation`` and ``cases`` pack the texts as in training."""
    def packed(dataset):
        texts, labels = zip(*dataset.as_numpy_iterator())
        inputs = pack_texts(encoder.preprocessor, text_batch(list(texts)), encoder.seq_length,
                            truncation, cases)
        return {k: v.numpy() for k, v in inputs.items()}, np.array(labels)

    representative, _ = packed(datasets["train"].shuffle(100_000, seed=seed).take(calibration))
    split = "test" if "test" in datasets else "validation"
    inputs, labels = packed(datasets[split])
    vocab = getattr(encoder.preprocessor, "vocab_file", None)
    written = export_tflite(model, directory, representative,
                            vocab.asset_path.numpy().decode() if vocab is not None else None)
    root = os.path.dirname(directory)
    for variant, info in written.items():
        predictions = tflite_logits(os.path.join(root, info["file"]), inputs).argmax(-1)
        info["accuracy"] = float((predictions == labels).mean())
        info["split"] = split
        print(f"TFLite {variant}: {info['bytes'] / 2**20:.1f} MiB, {split} accuracy "
              f"{info['accuracy']:.4f}", flush=True)
    return written
