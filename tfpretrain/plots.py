"""Plots for run reports: learning curves, confusion matrices, predicted-vs-gold scatter (PNG
files, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import os

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    import matplotlib.pyplot as plt

    return plt


# Metrics drawn as they are; the others (accuracy, F1) as percentages.
UNSCALED = ("pearson", "spearman", "mse", "loss")


def plot_scatter(gold: np.ndarray, predicted: np.ndarray, path: str | os.PathLike,
                 title: str) -> None:
    """Predicted against gold values (regression), with the diagonal where they would agree."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 5))
    axes.scatter(gold, predicted, s=6, alpha=0.4, color="tab:blue")
    low = float(min(np.min(gold), np.min(predicted)))
    high = float(max(np.max(gold), np.max(predicted)))
    axes.plot([low, high], [low, high], color="gray", linewidth=1, linestyle="--")
    axes.set_xlabel("gold")
    axes.set_ylabel("predicted")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_confusion_matrix(matrix: np.ndarray | list, label_names: list[str],
                          path: str | os.PathLike, title: str = "Confusion matrix (test)") -> None:
    """Counts with row-normalised shading (recall per true class), class names on both axes."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    n = len(label_names)
    size = max(4.0, 0.9 * n + 2.2)
    figure, axes = plt.subplots(figsize=(size + 1.2, size))
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    axes.set_xticks(range(n), labels=label_names, rotation=45 if n > 4 else 0,
                    ha="right" if n > 4 else "center")
    axes.set_yticks(range(n), labels=label_names)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    axes.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                axes.text(j, i, str(matrix[i, j]), ha="center", va="center",
                          color="white" if share[i, j] > 0.5 else "black",
                          fontsize=10 if n <= 12 else 7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_learning_curves(train_loss: list[tuple[int, float]], history: list[dict],
                         path: str | os.PathLike, steps_per_epoch: int | None = None,
                         metric: str = "accuracy") -> None:
    """Training loss per step (raw and smoothed) with validation loss, and the validation
    ``metric`` (the one that picks the best checkpoint)."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if train_loss:
        steps, losses = map(np.asarray, zip(*train_loss))
        left.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8,
                  label="training loss (per step)")
        window = max(1, len(losses) // 20)
        if window > 1:
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            left.plot(steps[window - 1:], smooth, color="tab:blue",
                      label=f"training loss ({window}-step mean)")
    points = [r for r in history if "loss" in r]
    if points:
        left.plot([r["step"] for r in points], [r["loss"] for r in points], "o-",
                  color="tab:orange", label="validation loss")
    left.set_xlabel("training step")
    left.set_ylabel("loss")
    left.legend()
    left.grid(alpha=0.3)
    points = [r for r in history if metric in r]
    scale, unit = (1, "") if metric in UNSCALED else (100, "%")
    if points:
        values = [scale * r[metric] for r in points]
        right.plot([r["step"] for r in points], values, "o-", color="tab:green",
                   label=f"validation {metric}")
        for record, value in zip(points, values):
            right.annotate(f"{value:.2f}{unit}" if unit else f"{value:.4f}",
                           (record["step"], value), textcoords="offset points", xytext=(0, 7),
                           ha="center", fontsize=9)
        right.legend(loc="lower right")
    else:
        right.text(0.5, 0.5, "no validation split", ha="center", va="center",
                   transform=right.transAxes)
    right.set_xlabel("training step")
    right.set_ylabel(f"{metric} ({unit})" if unit else metric)
    right.grid(alpha=0.3)
    if points:  # at least a 2-point window, so small differences are not drawn as cliffs
        low, high = min(values), max(values)
        pad = max(scale / 100, (high - low) * 0.3)
        right.set_ylim(max(0.0, low - pad), min(float(scale), high + pad) + 0.3 * pad)
    right.set_xlim(left.get_xlim())  # the same step axis as the loss
    pad_title = 6
    if steps_per_epoch:
        pad_title = 20  # above the epoch axis
        for axes in (left, right):
            top = axes.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch,
                                                         lambda e: e * steps_per_epoch))
            top.set_xlabel("epoch", fontsize=9, labelpad=2)
    left.set_title("Loss", pad=pad_title)
    right.set_title(f"Validation {metric}", pad=pad_title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
