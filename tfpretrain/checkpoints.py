"""What makes a run restartable: its errors (a lost worker among them), SIGTERM and Ctrl-C handling,
checkpoint restore with fallback, and the evaluation history kept beside the checkpoints."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from typing import Any

import numpy as np
import tensorflow as tf


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN or infinite loss, no readable checkpoint); the message says
    which step or file and what to do."""


class Preempted(RuntimeError):
    """SIGTERM arrived (a scheduler preempting the job): a checkpoint was saved, rerun to resume.

    Command-line entry points exit with ``exit_code`` (143 = 128 + SIGTERM, what schedulers
    expect).
    """

    exit_code = 143


class Interrupted(Preempted):
    """Ctrl-C (SIGINT) during training: a checkpoint was saved, rerun to resume.

    Command-line entry points exit with ``exit_code`` (130 = 128 + SIGINT, as shells do).
    """

    exit_code = 130


class StopSignals:
    """Records SIGTERM and a first Ctrl-C (SIGINT) instead of dying, so the loop can finish the
    step in flight, checkpoint and stop (``stop``); a second Ctrl-C exits at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            print("\ninterrupted again: exiting without a checkpoint", file=sys.stderr, flush=True)
            os._exit(130)
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)

    def stop(self, step: int, saved: str | None) -> None:
        """Raises ``Interrupted`` (Ctrl-C) or ``Preempted`` (SIGTERM) naming the checkpoint the
        loop just saved at ``step``."""
        if self.received == signal.SIGINT:
            raise Interrupted(f"interrupted (Ctrl-C) at step {step}: saved {saved}; run the same "
                              "command again to resume")
        raise Preempted(f"SIGTERM at step {step}: saved {saved}; run the same command again to "
                        "resume")


def restore_newest(checkpoint: tf.train.Checkpoint,
                   manager: tf.train.CheckpointManager) -> str | None:
    """Restores the newest readable checkpoint; returns its path (None: none to restore).

    A truncated or corrupt newest checkpoint (a crash mid-write, a bad disk) falls back to the
    one before it with a warning; when none can be read the run stops instead of silently
    starting again from scratch.
    """
    for path in reversed(manager.checkpoints):
        try:
            checkpoint.restore(path).expect_partial()
            return path
        # A bad file fails in many ways: DataLoss, IndexError, ...
        except Exception as error:  # noqa: BLE001
            first = (str(error).strip().splitlines()[0] if str(error).strip()
                     else type(error).__name__)
            print(f"warning: checkpoint {path} is unreadable ({first}); trying an older one",
                  file=sys.stderr, flush=True)
    if manager.checkpoints:
        raise TrainingError(f"no readable checkpoint in {manager.directory}; delete that "
                            "directory to start the run over")
    return None


def history_path(workdir: str) -> str:
    return os.path.join(workdir, "logs", "eval_history.jsonl")


def load_history(workdir: str) -> list[dict[str, Any]]:
    path = history_path(workdir)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return list({record["step"]: record for record in records}.values())


def log_evaluation(workdir: str, record: dict[str, Any],
                   writer: tf.summary.SummaryWriter) -> None:
    printable = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in record.items())
    print(f"  validation: {printable}", flush=True)
    os.makedirs(os.path.dirname(history_path(workdir)), exist_ok=True)
    with open(history_path(workdir), "a") as f:
        f.write(json.dumps(record) + "\n")
    with writer.as_default(step=record["step"]):
        for key, value in record.items():
            if isinstance(value, float):
                tf.summary.scalar(key, value)


# What a collective raises on the survivors when another worker dies or cannot be reached.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.CancelledError, tf.errors.AbortedError, tf.errors.InternalError)


def run_steps(train_steps: Any, iterator: Any, steps: int, step: int,
              manager: tf.train.CheckpointManager) -> np.ndarray:
    """``train_steps(iterator, steps)``'s losses; a lost peer worker becomes a ``TrainingError``
    naming the step and the last checkpoint."""
    try:
        return train_steps(iterator, tf.constant(steps)).numpy()
    except _PEER_ERRORS as error:
        # The useful line of a graph error is the op's message, not the trace before it.
        noise = ("Graph execution error", "Detected at node", " ")
        lines = [line.strip() for line in str(error).splitlines()
                 if line.strip() and not line.startswith(noise)]
        reason = (lines[-1] if lines else "")[:300]
        raise TrainingError(
            f"lost another worker during step {step + 1} ({type(error).__name__}: {reason}); "
            f"the last checkpoint is {manager.latest_checkpoint or 'none (no checkpoint yet)'}. "
            "Restart every worker with the same command to resume from it") from None
