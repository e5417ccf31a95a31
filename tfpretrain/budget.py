"""The training budget of a run with ``--train.epochs=0`` (auto): how many epochs, how often to
evaluate, when to stop.

Small data and many classes need many passes; a large set needs few. The rule: train for at least
``MIN_EPOCHS`` epochs (a task type may ask for more: ``min_epochs``, 3 for token classification)
and at least ``STEPS_PER_CLASS`` optimizer steps per class, but show the model
no more than ``MAX_EXAMPLES_SEEN`` examples (then at least one epoch) and no more than
``MAX_EPOCHS`` epochs. Evaluation runs about ``EVALS_PER_EPOCH`` times per epoch (never closer than
``MIN_EVAL_GAP`` steps, at least once per epoch); early stopping (``train.early_stopping_patience``,
``AUTO_PATIENCE`` evaluations) ends a run whose validation metric stopped improving, and the best
checkpoint is the one kept.
The constants were chosen by measurement (docs/budget.md). Explicit flags win: ``--train.epochs``,
``--train.eval_every`` and ``--train.max_steps`` are used as given.
"""

from __future__ import annotations

import dataclasses
import math

from tfpretrain.config import TrainConfig

MIN_EPOCHS = 2
MAX_EPOCHS = 20
STEPS_PER_CLASS = 20
MAX_EXAMPLES_SEEN = 200_000
EVALS_PER_EPOCH = 4
MIN_EVAL_GAP = 100
AUTO_PATIENCE = 3


def auto_epochs(examples: int, classes: int, steps_per_epoch: int,
                min_epochs: int = MIN_EPOCHS) -> tuple[int, str]:
    """The number of epochs for ``examples`` training examples of ``classes`` classes (1: a
    score), and why."""
    min_steps = STEPS_PER_CLASS * max(classes, 2)
    epochs = max(min_epochs, math.ceil(min_steps / max(steps_per_epoch, 1)))
    reason = f"at least {min_epochs} epochs and {min_steps:,} steps"
    most = min(MAX_EPOCHS, max(1, MAX_EXAMPLES_SEEN // max(examples, 1)))
    if epochs > most:
        epochs = most
        reason = (f"at most {MAX_EPOCHS} epochs" if most == MAX_EPOCHS else
                  f"at most {MAX_EXAMPLES_SEEN:,} examples seen")
    what = f"{classes} classes" if classes > 1 else "a score"
    return epochs, f"{examples:,} examples, {what}, {reason}"


def auto_eval_every(steps_per_epoch: int) -> int:
    """Steps between evaluations: about EVALS_PER_EPOCH per epoch, at least MIN_EVAL_GAP apart;
    0 (each epoch's end) when an epoch is shorter than that."""
    every = max(MIN_EVAL_GAP, math.ceil(steps_per_epoch / EVALS_PER_EPOCH))
    return 0 if every >= steps_per_epoch else every


def plan(config: TrainConfig, steps_per_epoch: int, examples: int, classes: int,
         min_epochs: int = MIN_EPOCHS) -> tuple[TrainConfig, str]:
    """``config`` with its automatic values decided, and the line that says what was chosen
    (empty when nothing was automatic)."""
    said = []
    if not config.epochs and not config.max_steps:
        epochs, why = auto_epochs(examples, classes, steps_per_epoch, min_epochs)
        config = dataclasses.replace(config, epochs=epochs)
        said.append(f"epochs auto: {epochs} ({why})")
        if not config.eval_every:
            config = dataclasses.replace(config, eval_every=auto_eval_every(steps_per_epoch))
            said.append("evaluation " + (f"every {config.eval_every} steps"
                                         if config.eval_every else "at each epoch end"))
        if not config.early_stopping_patience:
            config = dataclasses.replace(config, early_stopping_patience=AUTO_PATIENCE)
        if config.early_stopping_patience > 0:
            said.append(f"early stop after {config.early_stopping_patience} evaluations without "
                        "improvement")
    return config, "; ".join(said)
