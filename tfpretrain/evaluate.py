"""Classification metrics and reports: accuracy, macro P/R/F1, per-class scores, confusion matrix."""

import os
import weakref

import numpy as np
import tensorflow as tf



# One compiled forward pass per model, reused by every evaluation of a run (a new tf.function
# per call would retrace each bucket length at every evaluation).
_FORWARD = weakref.WeakKeyDictionary()


def predict_logits(model, batches):
    """(logits [N, C], labels [N]) for a dataset of ``(inputs, labels)`` batches."""
    if model not in _FORWARD:
        ref = weakref.ref(model)  # the function must not keep the model alive
        _FORWARD[model] = tf.function(lambda inputs: ref()(inputs, training=False), reduce_retracing=True)
    forward = _FORWARD[model]
    logits, labels = [], []
    for inputs, y in batches:
        logits.append(forward(inputs).numpy())
        labels.append(y.numpy())
    return np.concatenate(logits), np.concatenate(labels)


def classification_metrics(labels, predictions, label_names):
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
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(matrix[i].sum())}
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": matrix.tolist(),
    }


def evaluate_classifier(model, batches, label_names):
    """Metrics of ``model`` on ``batches`` (see ``classification_metrics``) plus the mean loss."""
    logits, labels = predict_logits(model, batches)
    metrics = classification_metrics(labels, logits.argmax(axis=-1), label_names)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    metrics["loss"] = float(-log_probs[np.arange(len(labels)), labels].mean())
    return metrics


def format_report(metrics, label_names):
    """A plain-text table: per-class scores, macro averages and the confusion matrix."""
    width = max(12, max(len(n) for n in label_names) + 2)
    lines = [f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for name in label_names:
        s = metrics["per_class"][name]
        lines.append(f"{name:<{width}}{s['precision']:>10.4f}{s['recall']:>10.4f}{s['f1']:>10.4f}{s['support']:>9}")
    lines.append(f"{'macro avg':<{width}}{metrics['macro_precision']:>10.4f}{metrics['macro_recall']:>10.4f}"
                 f"{metrics['macro_f1']:>10.4f}{metrics['examples']:>9}")
    lines.append(f"accuracy {metrics['accuracy']:.4f}")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    short = [n[:8] for n in label_names]
    lines.append(" " * width + "".join(f"{n:>9}" for n in short))
    for name, row in zip(label_names, metrics["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>9}" for v in row))
    return "\n".join(lines)


def print_summary(workdir, results, artifacts, train_seconds):
    """The end-of-run table: test scores, training time, and the path of every artifact."""
    print("\nSummary")
    test = results.get("test")
    if test:
        print(f"  test accuracy   {test['accuracy']:.4f}   macro F1 {test['macro_f1']:.4f} "
              f"  ({test['examples']} examples)")
    print(f"  steps           {results['steps']} in {train_seconds:.1f} s")
    for name, relative in artifacts.items():
        print(f"  {name:<15} {os.path.join(workdir, relative)}")
