"""Multi-label classification: any subset of C labels per example; a sigmoid per label, binary
cross-entropy, micro and macro F1 at a decision threshold chosen on the validation split."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfpretrain import evaluate, heads, report
from tfpretrain.tasks import higher_is_better
from tfpretrain.tasks.classification import label_table

# Candidate decision thresholds (one for all labels): 0.05, 0.10, ..., 0.95.
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def multilabel_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float,
                       label_names: list[str]) -> dict:
    """Micro and macro precision/recall/F1, exact-match ratio and per-label scores of the labels
    whose probability is at least ``threshold``.

    Example:
        >>> m = multilabel_metrics(np.array([[1, 0], [1, 1]]), np.array([[.9, .2], [.8, .4]]),
        ...                        0.5, ["PER", "LOC"])
        >>> round(m["micro_f1"], 4), m["exact_match"], m["per_label"]["LOC"]["recall"]
        (0.8, 0.5, 0.0)
    """
    gold, predicted = np.asarray(labels) > 0.5, np.asarray(probabilities) >= threshold
    tp = (gold & predicted).sum(axis=0).astype(float)
    fp, fn = (~gold & predicted).sum(axis=0), (gold & ~predicted).sum(axis=0)

    def prf(tp, fp, fn):
        with np.errstate(divide="ignore", invalid="ignore"):
            p, r = np.nan_to_num(tp / (tp + fp)), np.nan_to_num(tp / (tp + fn))
            return p, r, np.nan_to_num(2 * p * r / (p + r))

    precision, recall, f1 = prf(tp, fp, fn)
    micro = prf(tp.sum(), fp.sum(), fn.sum())
    return {"micro_f1": float(micro[2]), "micro_precision": float(micro[0]),
            "micro_recall": float(micro[1]), "macro_f1": float(f1.mean()),
            "exact_match": float((gold == predicted).all(axis=1).mean()) if len(gold) else 0.0,
            "threshold": float(threshold), "examples": int(len(gold)),
            "per_label": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                                 "f1": float(f1[i]), "support": int(gold[:, i].sum())}
                          for i, name in enumerate(label_names)}}


class MultiLabelClassification:
    """Any subset of ``label_names`` per example: logits ``[batch, C]``, a sigmoid and binary
    cross-entropy per label. A label is predicted when its probability reaches ``threshold``:
    0.5 while training; after training ``calibrate`` sets the one threshold (for all labels)
    with the best micro F1 on the validation split, which the test scores and the export use.

    Example:
        >>> MultiLabelClassification(["PER", "LOC"]).build_head(0.0)(keras.ops.zeros((2, 8))).shape
        (2, 2)
    """

    name = "multilabel"
    best_metric = "micro_f1"
    metric_names = ("micro_f1", "macro_f1", "exact_match", "micro_precision", "micro_recall",
                    "loss")
    headline_metrics = ("micro_f1", "macro_f1", "exact_match")
    check_output = "probabilities"

    def __init__(self, label_names: list[str], threshold: float = 0.5):
        self.label_names, self.threshold = list(label_names), threshold

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def build_head(self, dropout: float = 0.1, seed: int | None = None,
                   hidden_units: Iterable[int] = ()) -> keras.Sequential:
        return heads.build_classification_head(self.num_classes, dropout, seed, hidden_units)

    def loss(self, labels: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0
             ) -> tuple[tf.Tensor, tf.Tensor]:
        """Binary cross-entropy averaged over the labels, per example, each weighing 1."""
        per_example = keras.losses.binary_crossentropy(
            tf.cast(labels, tf.float32), tf.cast(logits, tf.float32), from_logits=True,
            label_smoothing=label_smoothing)
        return per_example, tf.ones_like(per_example)

    def higher_is_better(self, metric: str) -> bool:
        return higher_is_better(metric)

    def _probabilities(self, model, batches):
        logits, labels = evaluate.predict_outputs(model, batches)
        return labels, 1 / (1 + np.exp(-logits.astype(np.float64)))

    def evaluate(self, model: keras.Model, batches: tf.data.Dataset) -> dict:
        labels, probabilities = self._probabilities(model, batches)
        metrics = multilabel_metrics(labels, probabilities, self.threshold, self.label_names)
        p = np.clip(probabilities, 1e-7, 1 - 1e-7)
        metrics["loss"] = float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())
        return metrics

    def calibrate(self, model: keras.Model, batches: tf.data.Dataset) -> dict:
        """Sets ``threshold`` to the candidate (0.05 ... 0.95) with the best micro F1 on
        ``batches`` (the validation split); returns what was chosen, for ``metrics.json``."""
        labels, probabilities = self._probabilities(model, batches)
        scores = {t: multilabel_metrics(labels, probabilities, t, self.label_names)["micro_f1"]
                  for t in THRESHOLDS}
        self.threshold = max(scores, key=lambda t: (scores[t], -abs(t - 0.5)))
        print(f"decision threshold {self.threshold:.2f} (one for all labels): the best validation "
              f"micro F1, {scores[self.threshold]:.4f} (at 0.50: {scores[0.5]:.4f})", flush=True)
        return {"threshold": {"value": self.threshold, "chosen_on": "validation",
                              "applies_to": "all labels",
                              "validation_micro_f1": scores[self.threshold]}}

    def predict(self, model: keras.Model, inputs: Any) -> np.ndarray:
        """What ``serving_default`` returns as ``probabilities``, computed in memory."""
        return tf.sigmoid(tf.cast(model(inputs, training=False), tf.float32)).numpy()

    def format_metrics(self, metrics: dict) -> str:
        width = max(12, max(len(n) for n in self.label_names) + 2)
        lines = [f"{'label':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
        for name, s in metrics["per_label"].items():
            lines.append(f"{name:<{width}}{s['precision']:>10.4f}{s['recall']:>10.4f}"
                         f"{s['f1']:>10.4f}{s['support']:>9}")
        lines.append(f"micro F1 {metrics['micro_f1']:.4f}   macro F1 {metrics['macro_f1']:.4f}   "
                     f"exact match {metrics['exact_match']:.4f}   (threshold "
                     f"{metrics['threshold']:.2f}, {metrics['examples']} examples)")
        return "\n".join(lines)

    def summary_line(self, metrics: dict) -> str:
        return (f"test micro F1   {metrics['micro_f1']:.4f}   macro F1 {metrics['macro_f1']:.4f}"
                f"   exact match {metrics['exact_match']:.4f}   ({metrics['examples']} examples)")

    def metadata(self) -> dict:
        return {"task": self.name, "label_names": self.label_names}

    def describe_labels(self) -> str:
        return (f"Labels ({len(self.label_names)}, any subset per example): "
                f"{', '.join(self.label_names)}.")

    def serving(self, scratch: str) -> tuple[Callable[[tf.Tensor], dict], list]:
        """``(logits -> {probabilities [batch, C], labels [batch, k]}, resources to track)``:
        ``labels`` are the names of the labels at or above the threshold (a constant of the
        graph), padded with "" to the most any example in the batch has; the names also travel
        as ``assets/labels.txt``."""
        table, threshold = label_table(self.label_names, scratch), self.threshold

        def outputs(logits):
            probabilities = tf.sigmoid(tf.cast(logits, tf.float32))
            names = table.lookup(tf.range(len(self.label_names), dtype=tf.int64))
            chosen = tf.ragged.boolean_mask(tf.broadcast_to(names, tf.shape(probabilities)),
                                            probabilities >= threshold)
            return {"probabilities": probabilities, "labels": chosen.to_tensor(default_value="")}

        return outputs, [table]

    def report_lines(self, test: dict, workdir: str) -> list[str]:
        """The per-label table of the test metrics and the threshold it used."""
        lines = ["### Per label (test)", "",
                 f"Decision threshold {test['threshold']:.2f} for every label, chosen on the "
                 "validation split (best micro F1).", ""]
        return lines + report.table(
            ["label", "precision", "recall", "F1", "support"],
            [(n, f"{s['precision']:.4f}", f"{s['recall']:.4f}", f"{s['f1']:.4f}", s["support"])
             for n, s in test["per_label"].items()]) + [""]
