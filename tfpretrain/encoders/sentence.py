"""Universal-Sentence-Encoder-style encoders: a 1-D batch of strings in, ``[batch, dim]`` out.

Any SavedModel with that contract loads: tfhub.dev / Kaggle USE handles, local directories,
presets (``minilm_l6_sentence``), and models whose callable is a signature (``serving_default``
with one named string input) rather than ``__call__``. Frozen, their embeddings can be computed
once and cached (``load_embeddings``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfpretrain import hub, zoo
from tfpretrain.files import atomic_directory

_EMBED_BATCH = 64


class SentenceEncoderError(ValueError):
    """A SavedModel that does not have the strings → vectors contract, named in the message."""


@dataclasses.dataclass
class LoadedSentenceEncoder:
    """A sentence-encoder layer (strings → ``[batch, dim]`` float32) plus what caching needs."""

    layer: hub.HubLayer
    handle: str
    dim: int
    fingerprint: str  # changes when the SavedModel's graph or weights change


def _fingerprint(path):
    # saved_model.pb holds the graph; variables.index holds every tensor's checksum.
    digest = hashlib.sha256()
    for name in ("saved_model.pb", os.path.join("variables", "variables.index")):
        file = os.path.join(path, name)
        if tf.io.gfile.exists(file):
            with tf.io.gfile.GFile(file, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def _resolve(handle):
    if zoo.is_preset(handle):
        info = zoo.load_preset(handle)
        if info.get("contract") != "sentence":
            sentence = [n for n, s in zoo.PRESETS.items() if s.get("contract") == "sentence"]
            raise SentenceEncoderError(
                f"preset {handle!r} is a BERT encoder (token ids in), not a sentence encoder; use "
                f"{', '.join(sentence)}, or recipes.bert_text_classifier for BERT encoders")
        return info["encoder"]
    return hub.resolve_handle(handle)


def load_sentence_encoder(handle: str = "minilm_l6_sentence", trainable: bool = False,
                          signature: str = "", output_key: str = "") -> LoadedSentenceEncoder:
    """Loads a strings → vectors SavedModel as a Keras layer.

    Args:
        handle: preset name, local directory, ``gs://`` path or tfhub.dev / Kaggle URL.
        trainable: fine-tune its trainable variables (an error if it has none).
        signature: call this signature instead of ``__call__`` ('' = ``__call__`` when the model
            has one, else ``serving_default``).
        output_key: the output to take when the model returns a dict ('' = its only output).

    Example:
        >>> encoder = load_sentence_encoder("minilm_l6_sentence")  # doctest: +SKIP
        >>> encoder.layer(tf.constant(["hello world"])).shape  # doctest: +SKIP
        TensorShape([1, 384])
    """
    path = _resolve(handle)
    obj = hub.load_saved_model(path)
    if not signature and not callable(obj):
        if "serving_default" not in obj.signatures:
            raise SentenceEncoderError(f"{handle!r} has neither __call__ nor a serving_default "
                                       "signature")
        signature = "serving_default"
    if signature and not output_key:
        outputs = (obj.signatures[signature].structured_outputs
                   if signature in obj.signatures else {})
        if len(outputs) != 1:
            raise SentenceEncoderError(
                f"signature {signature!r} of {handle!r} has outputs {sorted(outputs)}; "
                "choose one with model.output_key")
        output_key = next(iter(outputs))
    layer = hub.HubLayer(obj, trainable=trainable, signature=signature or None, path=path,
                         output_key=output_key or None, name="sentence_encoder")
    if trainable and not layer.trainable_weights:
        raise SentenceEncoderError(f"{handle!r} has no trainable variables; use "
                                   "model.trainable=false")
    try:
        probe = layer(tf.constant(["probe"]))
    except (TypeError, ValueError, tf.errors.OpError) as error:
        raise SentenceEncoderError(
            f"{handle!r} does not take a 1-D batch of strings: "
            f"{str(error).splitlines()[0]}") from error
    if probe.shape.rank != 2 or not probe.dtype.is_floating:
        raise SentenceEncoderError(
            f"{handle!r} returns {probe.dtype.name} {probe.shape}, not [batch, dim] floats")
    return LoadedSentenceEncoder(layer=layer, handle=handle, dim=int(probe.shape[-1]),
                                 fingerprint=_fingerprint(path))


def _data_fingerprint(texts, labels):
    digest = hashlib.sha256()
    for text in texts:
        for part in text if isinstance(text, tuple) else (text,):
            digest.update(part)
            digest.update(b"\0")
    digest.update(labels.tobytes())
    return digest.hexdigest()[:16]


def embed_texts(encoder: LoadedSentenceEncoder, texts: Sequence[str | bytes],
                batch_size: int = _EMBED_BATCH, progress: str | None = None) -> np.ndarray:
    """``[len(texts), dim]`` float32 embeddings, in batches, with a progress line on stderr
    (redrawn in a terminal; about ten lines in a log file)."""
    embed = tf.function(lambda batch: encoder.layer(batch, training=False),
                        reduce_retracing=True)
    chunks, start = [], time.time()
    interactive = sys.stderr.isatty()
    every = max(1, len(texts) // batch_size // 10)
    for number, i in enumerate(range(0, len(texts), batch_size), 1):
        chunks.append(embed(tf.constant(texts[i:i + batch_size])).numpy())
        done = min(i + batch_size, len(texts))
        if progress and (interactive or number % every == 0 or done == len(texts)):
            rate = done / max(time.time() - start, 1e-9)
            print(f"{chr(13) if interactive else ''}  {progress}: {done}/{len(texts)} texts  "
                  f"{rate:.1f} texts/s", end="" if interactive else "\n", file=sys.stderr,
                  flush=True)
    if progress and interactive:
        print(file=sys.stderr)
    return np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)


def load_embeddings(encoder: LoadedSentenceEncoder, dataset: tf.data.Dataset, cache_dir: str,
                    name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, labels) of a ``(text, label)`` dataset, computed once and cached: embeddings
    ``[N, dim]``, or ``[N, 2, dim]`` for a dataset of ``((text_a, text_b), label)`` pairs.

    The cache file is keyed by the encoder's fingerprint and a hash of every text and label, so
    a changed encoder or changed data is computed again and an unchanged one is reused.

    Example:
        >>> x, y = load_embeddings(encoder, datasets["train"], "/tmp/cache")  # doctest: +SKIP
    """
    texts, labels = [], []
    for text, label in dataset.as_numpy_iterator():
        texts.append(text)
        labels.append(label)
    labels = np.asarray(labels)
    if labels.dtype.kind == "i":  # class ids: int64, as cache keys have always hashed them
        labels = labels.astype(np.int64)
    key = f"{encoder.fingerprint}-{_data_fingerprint(texts, labels)}"
    directory = os.path.join(cache_dir, key)
    file = os.path.join(directory, "embeddings.npy")
    if os.path.exists(file):
        embeddings = np.load(file)
        print(f"  {name}: reusing cached embeddings {embeddings.shape} from {directory}",
              flush=True)
        return embeddings, labels
    if texts and isinstance(texts[0], tuple):  # pairs: each side embedded on its own
        embeddings = np.stack([embed_texts(encoder, [t[i] for t in texts],
                                           progress=f"embedding {name} (text {'ab'[i]})")
                               for i in (0, 1)], axis=1)
    else:
        embeddings = embed_texts(encoder, texts, progress=f"embedding {name}")
    with atomic_directory(directory) as tmp:
        np.save(os.path.join(tmp, "embeddings.npy"), embeddings)
    print(f"  {name}: cached embeddings {embeddings.shape} in {directory}", flush=True)
    return embeddings, labels
