"""Token classification (named entities): one IOB2 tag per word, scored per entity as conlleval
and seqeval score it (an entity counts when its type and both ends match)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfpretrain import heads, plots, report
from tfpretrain.data.conll import chunks
from tfpretrain.data.pipeline import trim_to_longest
from tfpretrain.evaluate import forward_function
from tfpretrain.tasks import higher_is_better

NONE = "(none)"  # the confusion matrix's row/column for a span only one side has


def entity_metrics(gold: Iterable[list[str]], predicted: Iterable[list[str]]) -> dict:
    """Entity-level micro precision/recall/F1 (as conlleval), per-type scores, word accuracy and
    a confusion matrix over entity types (spans matched by their ends; ``(none)`` for a span only
    one side has), over sentences of IOB2 tags.

    Example:
        >>> m = entity_metrics([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "O"]])
        >>> m["precision"], m["recall"], round(m["f1"], 4), m["token_accuracy"]
        (1.0, 0.5, 0.6667, 0.75)
    """
    gold_spans, predicted_spans, correct_words, words = [], [], 0, 0
    for sentence, (g, p) in enumerate(zip(gold, predicted)):
        gold_spans += [(sentence, *c) for c in chunks(g)]
        predicted_spans += [(sentence, *c) for c in chunks(p)]
        correct_words += sum(a == b for a, b in zip(g, p))
        words += len(g)
    types = sorted({s[1] for s in gold_spans} | {s[1] for s in predicted_spans})
    found = set(gold_spans) & set(predicted_spans)
    per_type = {}
    for kind in types:
        g = sum(s[1] == kind for s in gold_spans)
        p = sum(s[1] == kind for s in predicted_spans)
        c = sum(s[1] == kind for s in found)
        per_type[kind] = {**_scores(c, p, g), "support": g, "predicted": p}
    names = [*types, NONE]
    matrix = np.zeros((len(names), len(names)), np.int64)
    by_place = {(s[0], s[2], s[3]): s[1] for s in predicted_spans}
    for s in gold_spans:
        matrix[names.index(s[1]), names.index(by_place.pop((s[0], s[2], s[3]), NONE))] += 1
    for kind in by_place.values():
        matrix[-1, names.index(kind)] += 1
    return {**_scores(len(found), len(predicted_spans), len(gold_spans)),
            "token_accuracy": correct_words / max(words, 1), "entities": len(gold_spans),
            "predicted_entities": len(predicted_spans), "words": words, "per_type": per_type,
            "confusion_types": names, "confusion_matrix": matrix.tolist()}


def _scores(correct, predicted, gold):
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


class TokenClassification:
    """One of ``tag_names`` (IOB2, ``O`` first) per word: logits ``[batch, seq, tags]``, softmax
    cross-entropy on each word's first piece (labels ``[batch, seq, 3]`` from
    ``tfpretrain.data.tagging.make_tagging_examples``).

    Example:
        >>> task = TokenClassification(["O", "B-PER", "I-PER"])
        >>> tuple(task.build_head(dropout=0.0)(keras.ops.zeros((2, 7, 8))).shape)
        (2, 7, 3)
    """

    name = "tagging"
    best_metric = "f1"
    metric_names = ("f1", "precision", "recall", "token_accuracy", "loss")
    headline_metrics = ("f1", "precision", "recall")
    check_output = "word_scores"  # the serving output the export check compares
    # The automatic budget's least number of epochs: on CoNLL-2003, validation entity F1 was still
    # rising at the end of 2 epochs in every run (docs/tasks.md).
    min_epochs = 3

    def __init__(self, tag_names: list[str]):
        self.tag_names = list(tag_names)
        self.entity_types = sorted({t[2:] for t in self.tag_names if t != "O"})

    @property
    def num_classes(self) -> int:
        """Entity types (what the automatic training budget scales with)."""
        return max(len(self.entity_types), 2)

    def build_head(self, dropout: float = 0.1, seed: int | None = None,
                   hidden_units: Iterable[int] = ()) -> keras.Sequential:
        """Dropout → Dense per position, named ``classifier``."""
        return heads.build_classification_head(len(self.tag_names), dropout, seed, hidden_units)

    def loss(self, labels: tf.Tensor, logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Cross-entropy at each labelled position (a word's first piece), weight 0 elsewhere."""
        tags = labels[..., 0]
        per_position = keras.losses.sparse_categorical_crossentropy(
            tf.maximum(tags, 0), tf.cast(logits, tf.float32), from_logits=True)
        return per_position, tf.cast(tags >= 0, tf.float32)

    def higher_is_better(self, metric: str) -> bool:
        return higher_is_better(metric)

    def word_predictions(self, model: keras.Model, batches: tf.data.Dataset
                         ) -> tuple[list[list[str]], list[list[str]], float]:
        """Gold and predicted tags per sentence (in split order) and the mean loss per word."""
        forward, rows, loss_sum = forward_function(model), [], 0.0
        for inputs, labels in batches:
            logits = tf.cast(forward(inputs), tf.float32)
            labels = labels.numpy()
            where = labels[..., 0] >= 0
            log_probs = tf.nn.log_softmax(logits).numpy()[where]
            gold = labels[where]
            loss_sum -= float(log_probs[np.arange(len(gold)), gold[:, 0]].sum())
            rows.append(np.column_stack([gold, log_probs.argmax(-1)]))
        rows = np.concatenate(rows)
        rows = rows[np.argsort(rows[:, 1], kind="stable")]
        boundaries = np.flatnonzero(np.diff(rows[:, 2])) + 1
        names = np.asarray(self.tag_names, dtype=object)
        gold = [list(names[s[:, 0]]) for s in np.split(rows, boundaries)]
        predicted = [list(names[s[:, 3]]) for s in np.split(rows, boundaries)]
        return gold, predicted, loss_sum / max(len(rows), 1)

    def evaluate(self, model: keras.Model, batches: tf.data.Dataset) -> dict:
        gold, predicted, loss = self.word_predictions(model, batches)
        return {**entity_metrics(gold, predicted), "loss": loss, "sentences": len(gold)}

    def calibrate(self, model: keras.Model, batches: tf.data.Dataset) -> dict:
        """Nothing to choose on the validation split (the argmax tag decides)."""
        return {}

    def format_metrics(self, metrics: dict) -> str:
        lines = [f"{'entity type':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
        for kind, s in metrics["per_type"].items():
            lines.append(f"{kind:<14}{s['precision']:>10.4f}{s['recall']:>10.4f}{s['f1']:>10.4f}"
                         f"{s['support']:>9}")
        lines.append(f"{'micro avg':<14}{metrics['precision']:>10.4f}{metrics['recall']:>10.4f}"
                     f"{metrics['f1']:>10.4f}{metrics['entities']:>9}")
        lines.append(f"word accuracy {metrics['token_accuracy']:.4f} ({metrics['words']} words, "
                     f"{metrics['sentences']} sentences)")
        return "\n".join(lines)

    def summary_line(self, metrics: dict) -> str:
        return (f"test entity F1 {metrics['f1']:.4f}   precision {metrics['precision']:.4f}   "
                f"recall {metrics['recall']:.4f}   ({metrics['entities']} entities)")

    def metadata(self) -> dict:
        return {"task": self.name, "tag_names": self.tag_names,
                "entity_types": self.entity_types}

    def describe_labels(self) -> str:
        return f"Tags ({len(self.tag_names)}, IOB2): {', '.join(self.tag_names)}."

    def report_lines(self, test: dict, workdir: str) -> list[str]:
        """The per-type table and the confusion matrix over entity types (PNG)."""
        lines = ["### Per entity type (test)", ""]
        lines += report.table(
            ["type", "precision", "recall", "F1", "support", "predicted"],
            [(k, f"{s['precision']:.4f}", f"{s['recall']:.4f}", f"{s['f1']:.4f}", s["support"],
              s["predicted"]) for k, s in test["per_type"].items()]) + [""]
        plots.plot_confusion_matrix(test["confusion_matrix"], test["confusion_types"],
                                     os.path.join(workdir, "confusion_matrix.png"))
        return lines + ["### Confusion matrix over entity types (test)", "",
                        "Spans matched by their first and last word; `(none)`: a gold entity "
                        "without a predicted span at its place, or the other way round.", "",
                        "![confusion matrix](confusion_matrix.png)", ""]

    def word_probabilities(self, model: keras.Model, windows: Any, words: tf.RaggedTensor
                           ) -> tf.RaggedTensor:
        """Tag probabilities ``[texts, (words), tags]`` of ``words``, from ``model`` on their
        ``windows`` (``tfpretrain.data.tagging.word_windows``): each word's first piece."""
        logits = model(trim_to_longest(windows.inputs), training=False)
        first = tf.gather_nd(logits, windows.first_piece)
        return tf.RaggedTensor.from_row_splits(
            tf.nn.softmax(tf.cast(first, tf.float32), axis=-1), words.row_splits)

    def predict(self, model: keras.Model, inputs: tuple) -> np.ndarray:
        """``word_scores`` as ``serving_default`` returns them (the probability of each word's
        tag, padded with 0), computed in memory from ``(windows, words)``."""
        return tf.reduce_max(self.word_probabilities(model, *inputs), -1).to_tensor().numpy()

    def word_outputs(self, probabilities: tf.RaggedTensor) -> dict[str, tf.Tensor]:
        """``{tags: string, tag_ids: int64, word_scores: float32}``, each ``[texts, words]``
        padded (``""``, -1, 0), from tag probabilities ``[texts, (words), tags]``."""
        ids = tf.ragged.map_flat_values(tf.argmax, probabilities, axis=-1)
        names = tf.constant(self.tag_names)
        return {"tags": tf.gather(names, ids).to_tensor(""), "tag_ids": ids.to_tensor(-1),
                "word_scores": tf.reduce_max(probabilities, -1).to_tensor(0.0)}

    def entities(self, texts: tf.Tensor, starts: tf.RaggedTensor, ends: tf.RaggedTensor,
                 probabilities: tf.RaggedTensor) -> dict[str, tf.Tensor]:
        """The entities of ``texts`` from their words' character offsets and tag probabilities,
        chunked as ``tfpretrain.data.conll.chunks`` does, in graph: ``entity_type``,
        ``entity_text`` (string), ``entity_start``, ``entity_end`` (int64 character offsets,
        end exclusive), ``entity_score`` (float32: the mean probability of its words' tags),
        each ``[texts, entities]`` padded (``""``, -1, 0), and ``entity_count`` ``[texts]``."""
        kinds = tf.constant([self.entity_types.index(t[2:]) if t != "O" else -1
                             for t in self.tag_names], tf.int64)
        begins = tf.constant([t.startswith("B-") for t in self.tag_names])
        ids = tf.ragged.map_flat_values(tf.argmax, probabilities, axis=-1)
        kind, begin = tf.gather(kinds, ids.flat_values), tf.gather(begins, ids.flat_values)
        position = tf.ragged.range(ids.row_lengths()).flat_values
        first = position == 0
        last = position == tf.gather(ids.row_lengths(), ids.value_rowids()) - 1
        none = tf.constant(-1, tf.int64)  # the type before a text's first / after its last word
        before = tf.where(first, none, tf.roll(kind, 1, 0))
        after = tf.where(last, none, tf.roll(kind, -1, 0))
        after_begins = tf.where(last, False, tf.roll(begin, -1, 0))
        span_start = tf.where((kind >= 0) & (begin | (before != kind)))[:, 0]
        span_end = tf.where((kind >= 0) & (after_begins | (after != kind)))[:, 0]
        scores = tf.reduce_max(probabilities, -1).flat_values
        total = tf.concat([[0.0], tf.cumsum(scores)], 0)
        score = ((tf.gather(total, span_end + 1) - tf.gather(total, span_start))
                 / tf.cast(span_end + 1 - span_start, tf.float32))
        row = tf.gather(ids.value_rowids(), span_start)
        start = tf.gather(starts.flat_values, span_start)
        end = tf.gather(ends.flat_values, span_end)
        surface = tf.strings.substr(tf.gather(texts, row), start, end - start, unit="UTF8_CHAR")
        names = tf.constant(self.entity_types or [""])
        batch = tf.shape(texts)[0]

        def per_text(values, pad):
            return tf.RaggedTensor.from_value_rowids(
                values, row, nrows=tf.cast(batch, tf.int64)).to_tensor(pad)

        return {"entity_type": per_text(tf.gather(names, tf.gather(kind, span_start)), ""),
                "entity_text": per_text(surface, ""), "entity_start": per_text(start, -1),
                "entity_end": per_text(end, -1), "entity_score": per_text(score, 0.0),
                "entity_count": tf.math.bincount(tf.cast(row, tf.int32), minlength=batch,
                                                 maxlength=batch, dtype=tf.int64)}
