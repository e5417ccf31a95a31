"""Single-label classification: softmax over C classes, cross-entropy, accuracy and macro F1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfpretrain import evaluate, heads, plots, report
from tfpretrain.tasks import higher_is_better


def classification_loss(labels: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0
                        ) -> tuple[tf.Tensor, tf.Tensor]:
    """Softmax cross-entropy per example, each example weighing 1; ``label_smoothing`` mixes
    that much of the uniform distribution into the one-hot target."""
    logits = tf.cast(logits, tf.float32)
    if label_smoothing:
        targets = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1])
        per_example = keras.losses.categorical_crossentropy(
            targets, logits, from_logits=True, label_smoothing=label_smoothing)
    else:
        per_example = keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                   from_logits=True)
    return per_example, tf.ones_like(per_example)


def classification_metrics(labels: Iterable[int], predictions: Iterable[int],
                           label_names: list[str]) -> dict:
    """Accuracy, macro precision/recall/F1, per-class scores and the confusion matrix.

    Example:
        >>> m = classification_metrics([0, 1, 1], [0, 1, 0], ["neg", "pos"])
        >>> round(m["accuracy"], 4), m["confusion_matrix"]
        (0.6667, [[1, 0], [1, 1]])
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    classes = len(label_names)
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    true_positive = np.diag(matrix).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(true_positive / matrix.sum(axis=0))
        recall = np.nan_to_num(true_positive / matrix.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return {
        "accuracy": float(true_positive.sum() / max(len(labels), 1)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "examples": int(len(labels)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(matrix[i].sum())}
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": matrix.tolist(),
        # Two classes: F1 of the second (the positive class of 0/1 labels), as GLUE reports it.
        **({"f1": float(f1[1])} if classes == 2 else {}),
    }


def evaluate_classifier(model: keras.Model, batches: tf.data.Dataset,
                        label_names: list[str]) -> dict:
    """Metrics of ``model`` on ``batches`` (see ``classification_metrics``) plus the mean loss."""
    logits, labels = evaluate.predict_outputs(model, batches)
    if (labels < 0).any():  # never a score on TFDS's "no label" (-1)
        raise ValueError(f"{int((labels < 0).sum())} of {len(labels)} examples have no label "
                         "(-1); score only labelled splits")
    metrics = classification_metrics(labels, logits.argmax(axis=-1), label_names)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    metrics["loss"] = float(-log_probs[np.arange(len(labels)), labels].mean())
    return metrics


def format_report(metrics: dict, label_names: list[str]) -> str:
    """A plain-text table: per-class scores, macro averages and the confusion matrix."""
    width = max(12, max(len(n) for n in label_names) + 2)
    lines = [f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for name in label_names:
        s = metrics["per_class"][name]
        lines.append(f"{name:<{width}}{s['precision']:>10.4f}{s['recall']:>10.4f}"
                     f"{s['f1']:>10.4f}{s['support']:>9}")
    lines.append(f"{'macro avg':<{width}}{metrics['macro_precision']:>10.4f}"
                 f"{metrics['macro_recall']:>10.4f}{metrics['macro_f1']:>10.4f}"
                 f"{metrics['examples']:>9}")
    lines.append(f"accuracy {metrics['accuracy']:.4f}")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    short = [n[:8] for n in label_names]
    lines.append(" " * width + "".join(f"{n:>9}" for n in short))
    for name, row in zip(label_names, metrics["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>9}" for v in row))
    return "\n".join(lines)


def label_table(label_names: list[str], scratch: str) -> tf.lookup.StaticHashTable:
    """A table from label id (int64) to name, read from ``labels.txt`` written to ``scratch``:
    an export that tracks it carries the names as ``assets/labels.txt``."""
    labels_file = os.path.join(scratch, "labels.txt")
    with open(labels_file, "w", encoding="utf-8") as f:
        f.write("\n".join(label_names) + "\n")
    return tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        labels_file, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
        tf.string, tf.lookup.TextFileIndex.WHOLE_LINE), default_value="")


class SingleLabelClassification:
    """One label of ``label_names`` per example: logits ``[batch, C]``, softmax cross-entropy.

    Example:
        >>> task = SingleLabelClassification(["neg", "pos"])
        >>> task.build_head(dropout=0.0)(keras.ops.zeros((2, 8))).shape
        (2, 2)
    """

    name = "classification"
    best_metric = "accuracy"
    metric_names = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "loss")
    headline_metrics = ("accuracy", "macro_f1")
    check_output = "probabilities"  # the serving output the export check compares

    def __init__(self, label_names: list[str]):
        self.label_names = list(label_names)
        if len(self.label_names) == 2:  # binary: F1 of the positive (second) class too
            self.metric_names = (*self.metric_names, "f1")
            self.headline_metrics = ("accuracy", "f1", "macro_f1")

    @property
    def num_classes(self) -> int:
        """Outputs of the head (also what the automatic training budget scales with)."""
        return len(self.label_names)

    def build_head(self, dropout: float = 0.1, seed: int | None = None,
                   hidden_units: Iterable[int] = ()) -> keras.Sequential:
        """The classification head (``heads.build_classification_head``), named ``classifier``."""
        return heads.build_classification_head(len(self.label_names), dropout, seed, hidden_units)

    def loss(self, labels: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0
             ) -> tuple[tf.Tensor, tf.Tensor]:
        return classification_loss(labels, logits, label_smoothing)

    def higher_is_better(self, metric: str) -> bool:
        return higher_is_better(metric)

    def evaluate(self, model: keras.Model, batches: tf.data.Dataset) -> dict:
        return evaluate_classifier(model, batches, self.label_names)

    def calibrate(self, model: keras.Model, batches: tf.data.Dataset) -> dict:
        """Nothing to choose on the validation split after training (the argmax decides)."""
        return {}

    def predict(self, model: keras.Model, inputs: Any) -> np.ndarray:
        """What ``serving_default`` returns as ``check_output``, computed in memory."""
        return tf.nn.softmax(tf.cast(model(inputs, training=False), tf.float32), axis=-1).numpy()

    def format_metrics(self, metrics: dict) -> str:
        return format_report(metrics, self.label_names)

    def summary_line(self, metrics: dict) -> str:
        binary = (f"   F1 ({self.label_names[1]!r}) {metrics['f1']:.4f}" if "f1" in metrics
                  else "")
        return (f"test accuracy   {metrics['accuracy']:.4f}{binary}   macro F1 "
                f"{metrics['macro_f1']:.4f}   ({metrics['examples']} examples)")

    def metadata(self) -> dict:
        """What ``metrics.json`` records about the task."""
        return {"task": self.name, "label_names": self.label_names}

    def describe_labels(self) -> str:
        return f"Labels ({len(self.label_names)}): {', '.join(self.label_names)}."

    def serving(self, scratch: str) -> tuple[Callable[[tf.Tensor], dict], list]:
        """``(logits -> {probabilities, label_id, label}, resources to track)``; the label names
        travel as ``assets/labels.txt`` (``label_table``)."""
        names = label_table(self.label_names, scratch)

        def outputs(logits):
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
            label_id = tf.argmax(probabilities, axis=-1)
            return {"probabilities": probabilities, "label_id": label_id,
                    "label": names.lookup(label_id)}

        return outputs, [names]

    def report_lines(self, test: dict, workdir: str) -> list[str]:
        """The per-class table and the confusion matrix (PNG) of the test metrics."""
        lines = ["### Per class (test)", ""]
        lines += report.table(["class", "precision", "recall", "F1", "support"],
                              [(n, f"{s['precision']:.4f}", f"{s['recall']:.4f}", f"{s['f1']:.4f}",
                                s["support"]) for n, s in test["per_class"].items()]) + [""]
        plots.plot_confusion_matrix(test["confusion_matrix"], self.label_names,
                                     os.path.join(workdir, "confusion_matrix.png"))
        return lines + ["### Confusion matrix (test)", "",
                        "![confusion matrix](confusion_matrix.png)", ""]
