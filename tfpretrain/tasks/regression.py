"""Regression: one number per example (a similarity score, a rating); squared error, Pearson and
Spearman correlation."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
import scipy.stats
import tensorflow as tf

from tfpretrain import evaluate, heads, plots
from tfpretrain.tasks import higher_is_better


def regression_metrics(labels: Iterable[float], predictions: Iterable[float]) -> dict:
    """Pearson and Spearman correlation, mean squared error (also the ``loss``), examples.

    Example:
        >>> m = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.1, 1.9, 3.5, 3.6])
        >>> round(m["pearson"], 4), m["spearman"]
        (0.9616, 1.0)
    """
    labels, predictions = np.asarray(labels, float), np.asarray(predictions, float)
    constant = np.ptp(labels) == 0 or np.ptp(predictions) == 0  # correlation undefined: 0
    mse = float(np.mean((predictions - labels) ** 2)) if len(labels) else 0.0
    return {"pearson": 0.0 if constant else float(scipy.stats.pearsonr(labels, predictions)[0]),
            "spearman": 0.0 if constant else float(scipy.stats.spearmanr(labels,
                                                                          predictions)[0]),
            "mse": mse, "loss": mse, "examples": int(len(labels))}


def cosine_baseline(pairs: np.ndarray, scores: np.ndarray) -> dict:
    """``regression_metrics`` of the cosine similarity of embedding pairs ``[N, 2, dim]`` as the
    predicted scores: what a sentence encoder scores on a similarity task with no training."""
    cosine = (pairs[:, 0] * pairs[:, 1]).sum(-1) / np.linalg.norm(pairs, axis=-1).prod(-1).clip(
        1e-12)
    return regression_metrics(scores, cosine)


class Regression:
    """One number per example: output ``[batch, 1]``, mean squared error; the best checkpoint is
    the one with the highest validation Spearman correlation.

    ``last_predictions`` holds ``(gold, predicted)`` of the latest ``evaluate`` (the test split's
    after a run), for the report's scatter plot.

    Example:
        >>> Regression().build_head(dropout=0.0)(keras.ops.zeros((2, 8))).shape
        (2, 1)
    """

    name = "regression"
    best_metric = "spearman"
    metric_names = ("spearman", "pearson", "mse", "loss")
    headline_metrics = ("pearson", "spearman")
    check_output = "score"
    num_classes = 1  # one output (the training budget counts it as two classes)

    def __init__(self) -> None:
        self.last_predictions: tuple[np.ndarray, np.ndarray] | None = None

    def build_head(self, dropout: float = 0.1, seed: int | None = None,
                   hidden_units: Iterable[int] = ()) -> keras.Sequential:
        return heads.build_classification_head(1, dropout, seed, hidden_units)

    def loss(self, labels: tf.Tensor, outputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Squared error per example, each weighing 1."""
        error = tf.cast(outputs, tf.float32)[:, 0] - tf.cast(labels, tf.float32)
        return tf.square(error), tf.ones_like(error)

    def higher_is_better(self, metric: str) -> bool:
        return higher_is_better(metric) and metric != "mse"

    def calibrate(self, model: keras.Model, batches: tf.data.Dataset) -> dict:
        return {}

    def evaluate(self, model: keras.Model, batches: tf.data.Dataset) -> dict:
        outputs, labels = evaluate.predict_outputs(model, batches)
        if (labels < 0).all():
            raise ValueError("every example has the score -1 (TFDS's 'no label'); score only "
                             "labelled splits")
        self.last_predictions = (labels, outputs[:, 0])
        return regression_metrics(labels, outputs[:, 0])

    def predict(self, model: keras.Model, inputs: Any) -> np.ndarray:
        """What ``serving_default`` returns as ``score``, computed in memory."""
        return tf.cast(model(inputs, training=False), tf.float32)[:, 0].numpy()

    def format_metrics(self, metrics: dict) -> str:
        return (f"pearson {metrics['pearson']:.4f}   spearman {metrics['spearman']:.4f}   "
                f"mse {metrics['mse']:.4f}   ({metrics['examples']} examples)")

    def summary_line(self, metrics: dict) -> str:
        return (f"test Spearman   {metrics['spearman']:.4f}   Pearson {metrics['pearson']:.4f}"
                f"   ({metrics['examples']} examples)")

    def metadata(self) -> dict:
        return {"task": self.name}

    def describe_labels(self) -> str:
        return "Labels: a number per example (regression)."

    def serving(self, scratch: str) -> tuple[Callable[[tf.Tensor], dict], list]:
        """``(outputs -> {score: float32 [batch]}, no resources)``."""
        return lambda outputs: {"score": tf.cast(outputs, tf.float32)[:, 0]}, []

    def report_lines(self, test: dict, workdir: str) -> list[str]:
        """A predicted-vs-gold scatter plot of the test split."""
        if self.last_predictions is None:
            return []
        gold, predicted = self.last_predictions
        plots.plot_scatter(gold, predicted, os.path.join(workdir, "scatter.png"),
                            f"Test: Pearson {test['pearson']:.3f}, Spearman "
                            f"{test['spearman']:.3f}")
        return ["### Predicted vs gold (test)", "", "![predicted vs gold](scatter.png)", ""]
