"""One training loop for every ``tf.distribute`` strategy, with exact resume.

Why not ``model.fit``: Keras 3 ``fit`` fails under MultiWorkerMirroredStrategy (keras#20585)
and ``BackupAndRestore`` resumes exactly only at epoch boundaries. This loop checkpoints the
model, the optimizer, the step and the input position (epoch, batch within epoch) with
``tf.train.CheckpointManager``; the input order is a pure function of (seed, epoch), so a killed
run resumes at the batch where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager

import keras
import tensorflow as tf

from tfpretrain.checkpoints import (
    StopSignals,
    TrainingError,
    load_history,
    log_evaluation,
    restore_newest,
    run_steps,
)
from tfpretrain.config import TrainConfig
from tfpretrain.distribute import distribute_batches, is_chief, report_worker_weights
from tfpretrain.step import make_train_step
from tfpretrain.tasks.classification import classification_loss

LossFn = Callable[[tf.Tensor, tf.Tensor], "tuple[tf.Tensor, tf.Tensor]"]


@dataclasses.dataclass
class TrainState:
    """What a run ended with."""

    step: int
    history: list  # one dict per evaluation: {"step": ..., "epoch": ..., metric: value}
    best: dict
    stopped_early: bool
    seconds: float
    stopped_by: str = ""  # "" (the schedule's end), "patience", "time" or "callback"


def _progress(step, total, loss, started, first_step, epoch):
    interactive = sys.stdout.isatty()
    if not interactive and step % max(1, total // 20) and step != total:
        return  # in a log file: about 20 lines per run
    elapsed = time.time() - started
    rate = (step - first_step) / elapsed if elapsed > 0 else 0.0
    eta = (total - step) / rate if rate else 0.0
    filled = int(24 * step / max(total, 1))
    bar = "=" * filled + "." * (24 - filled)
    print(("\r" if interactive else "") + f"  epoch {epoch + 1} [{bar}] {step}/{total} "
          f"loss {loss:.4f}  {rate:.2f} steps/s  ETA {int(eta // 60)}m{int(eta % 60):02d}s ",
          end="" if interactive else "\n", flush=True)


def fit(model: keras.Model, optimizer: keras.optimizers.Optimizer,
        make_batches: Callable[[int, int], tf.data.Dataset], steps_per_epoch: int,
        config: TrainConfig, strategy: tf.distribute.Strategy, workdir: str,
        evaluate: Callable[[keras.Model], dict] | None = None, *,
        loss_fn: LossFn = classification_loss, higher_is_better: bool = True,
        steps_per_execution: int = 1, jit_compile: bool = False,
        callbacks: list[keras.callbacks.Callback] | None = None) -> TrainState:
    """Trains ``model`` with a custom loop; resumes from ``workdir/checkpoints`` when present.

    Args:
        model: built inside ``strategy.scope()``.
        optimizer: built inside ``strategy.scope()`` (``build_optimizer``).
        make_batches: ``f(epoch, skip_batches) -> tf.data.Dataset`` of ``(inputs, labels)``
            global batches, in an order that depends only on the epoch.
        steps_per_epoch: batches per epoch (for the schedule, progress and ETA).
        config: a ``TrainConfig``.
        strategy: any ``tf.distribute`` strategy. Under multi-worker training every worker calls
            ``fit`` with the same ``workdir`` (a shared file system): all restore from it, only
            the chief writes to it (checkpoints, logs, best weights); the others write to a
            temporary directory that is deleted at the end, as TensorFlow documents.
        workdir: the run directory.
        evaluate: ``f(model) -> {metric: value}`` on the validation split, or ``None``; only
            its scalar values are logged and kept.
        loss_fn: ``f(labels, outputs) -> (losses, weights)``, same-shaped float32 tensors; the
            step minimises ``sum(losses * weights) / sum(weights)`` over the global batch
            (default: softmax cross-entropy; masked LM: ``pretrain.mlm.masked_lm_loss``).
        higher_is_better: whether a larger ``config.best_metric`` is better (False for losses).
        steps_per_execution: optimizer steps per ``tf.function`` call (less Python overhead per
            step; progress, evaluation and checkpoints still happen at their exact steps).
        jit_compile: compile each replica's forward and backward pass with XLA (per batch
            shape; README "Performance" says when it pays on CPU).
        callbacks: Keras callbacks: ``on_train_begin/end``, ``on_train_batch_end(batch,
            {"loss"})`` and ``on_epoch_end(epoch, {"loss", "val_<metric>", ...})`` are called;
            one that sets ``model.stop_training`` (``EarlyStopping``) stops the run.

    Returns:
        A ``TrainState``; the model holds the best weights by ``config.best_metric`` when
        ``evaluate`` is given, else the last ones (with ``train.average_decay``, their moving
        averages: what was evaluated is what is kept and exported).

    Example:
        >>> state = fit(model, build_optimizer(config, 100), lambda epoch, skip: batches, 50,
        ...             config, strategy, "/tmp/run")  # doctest: +SKIP
    """
    if steps_per_execution < 1:
        raise ValueError(f"runtime.steps_per_execution must be >= 1, got {steps_per_execution}")
    chief = is_chief(strategy)
    outdir = workdir if chief else tempfile.mkdtemp(prefix="tfpretrain-worker-")
    try:
        loop = _Loop(model=model, optimizer=optimizer, strategy=strategy, config=config,
                     workdir=workdir, outdir=outdir, evaluate=evaluate,
                     sign=1.0 if higher_is_better else -1.0,
                     callbacks=keras.callbacks.CallbackList(callbacks or [], model=model))
        train_steps = make_train_step(model, optimizer, strategy, config.clip_norm, loss_fn,
                                      jit_compile)
        return loop.run(train_steps, make_batches, steps_per_epoch, steps_per_execution)
    finally:
        if not chief:
            shutil.rmtree(outdir, ignore_errors=True)


class _Loop:
    """The state of one ``fit``: counters, checkpoints, TensorBoard writers, the history.

    ``best_value`` holds ``sign * metric``, so the best is always the largest.
    """

    def __init__(self, *, model, optimizer, strategy, config, workdir, outdir, evaluate, sign,
                 callbacks):
        if not config.best_metric:  # '' = the task's own; callers without a task: accuracy
            config = dataclasses.replace(config, best_metric="accuracy")
        self.model, self.optimizer, self.strategy, self.config = model, optimizer, strategy, config
        self.workdir, self.outdir, self.evaluate, self.sign = workdir, outdir, evaluate, sign
        with strategy.scope():
            self.counters = {name: tf.Variable(0, dtype=tf.int64, trainable=False, name=name)
                             for name in ("step", "epoch", "batch_in_epoch",
                                          "evals_without_improvement")}
            self.best_value = tf.Variable(-math.inf, dtype=tf.float64, trainable=False,
                                          name="best_value")
            # Training seconds of earlier (killed or capped) runs of this workdir.
            self.seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="seconds")
        # Keras keeps dropout's random state in SeedGenerator variables that tf.train.Checkpoint
        # does not reach through the model; without them a resumed run draws other dropout masks.
        random_state = [v.value for v in model.variables if v.path.endswith("seed_generator_state")]
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                              best_value=self.best_value, seconds=self.seconds,
                                              random_state=random_state, **self.counters)
        # Every worker restores the chief's checkpoints; each writes to its own directory.
        self.restored = restore_newest(self.checkpoint, tf.train.CheckpointManager(
            self.checkpoint, os.path.join(workdir, "checkpoints"), max_to_keep=2))
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(outdir, "checkpoints"), max_to_keep=2,
            step_counter=self.counters["step"])
        self.best_checkpoint = tf.train.Checkpoint(model=model)
        self.best_path = os.path.join(outdir, "best", "model")
        self.history = load_history(workdir)
        self.writer = tf.summary.create_file_writer(os.path.join(outdir, "logs", "train"))
        self.eval_writer = tf.summary.create_file_writer(os.path.join(outdir, "logs", "validation"))
        self.step = self.first_step = int(self.counters["step"].numpy())
        self.seconds_before, self.started = float(self.seconds.numpy()), time.time()
        self.stopped_by = "patience" if self.out_of_patience() else ""
        self.saved_at, self.last_loss, self.callbacks = None, math.nan, callbacks
        self.epoch_open = False
        model.stop_training = False
        # FusedAdamW(average_decay>0): evaluation, the best checkpoint and the end use averages.
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        self.averaging = inner if getattr(inner, "average_decay", 0) else None

    def _count(self, name):
        return int(self.counters[name].numpy())

    def out_of_patience(self):
        patience = self.config.early_stopping_patience
        return patience > 0 and self._count("evals_without_improvement") >= patience

    def check_time(self, total, earlier_runs_only=False):
        """Stops the run once train.max_minutes of training (over all its runs) have passed."""
        seconds = self.seconds_before + (0 if earlier_runs_only else time.time() - self.started)
        if self.config.max_minutes and seconds >= 60 * self.config.max_minutes and (
                not self.stopped_by):
            self.stopped_by = "time"
            print(f"\nstopping: train.max_minutes={self.config.max_minutes:g} reached at step "
                  f"{self.step:,} of {total:,}", flush=True)

    @contextmanager
    def averaged_weights(self):
        """The model holds the moving averages of its weights inside, if the run keeps them."""
        if self.averaging:
            self.averaging.swap_averages()
        try:
            yield
        finally:
            if self.averaging:
                self.averaging.swap_averages()

    def run_evaluation(self, steps_per_epoch):
        with self.averaged_weights():  # the best checkpoint holds what was evaluated
            self.score(steps_per_epoch)

    def score(self, steps_per_epoch):
        # Scalars only: per-class tables and confusion matrices go to the final report.
        metrics = {k: v for k, v in self.evaluate(self.model).items() if isinstance(v, float)}
        record = {"step": self.step, "epoch": round(self.step / steps_per_epoch, 2), **metrics}
        # A run killed after an evaluation but before its checkpoint evaluates that step again.
        self.history[:] = [r for r in self.history if r["step"] != self.step] + [record]
        log_evaluation(self.outdir, record, self.eval_writer)
        value = self.sign * metrics[self.config.best_metric]
        if value > float(self.best_value.numpy()):
            self.best_value.assign(value)
            self.counters["evals_without_improvement"].assign(0)
            self.best_checkpoint.write(self.best_path)
        else:
            self.counters["evals_without_improvement"].assign_add(1)
            if self.out_of_patience():
                self.stopped_by = "patience"
                print(f"early stop: no better validation {self.config.best_metric} in "
                      f"{self.config.early_stopping_patience} evaluations", flush=True)

    def save(self, force=False):
        # Once per step by this process (the newest on disk may be unreadable).
        if force or self.saved_at != self.step:
            self.seconds.assign(self.seconds_before + time.time() - self.started)
            self.manager.save(checkpoint_number=self.step)
            self.saved_at = self.step

    def steps_to_next_event(self, total, steps_per_execution):
        # A call ends where an evaluation, a checkpoint or the end falls, so they keep their steps.
        every = self.config.checkpoint_every
        gaps = [steps_per_execution, total - self.step, every - self.step % every]
        if self.evaluate and self.config.eval_every:
            gaps.append(self.config.eval_every - self.step % self.config.eval_every)
        return max(1, min(gaps))

    def record_losses(self, losses):
        for loss in losses:
            self.step += 1
            if not math.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss} at step {self.step}; stopped. The last good checkpoint "
                    f"is {self.manager.latest_checkpoint or 'none (no checkpoint yet)'}; lower "
                    "train.learning_rate or check the data")
            with self.writer.as_default(step=self.step):
                tf.summary.scalar("loss", loss)
            self.last_loss, self.epoch_open = float(loss), True
        for index, loss in enumerate(losses, self._count("batch_in_epoch")):
            self.callbacks.on_train_batch_end(index, {"loss": float(loss)})
        self.counters["step"].assign(self.step)
        self.counters["batch_in_epoch"].assign_add(len(losses))
        self.stop_if_asked()
        with self.writer.as_default(step=self.step):
            tf.summary.scalar("learning_rate", self.optimizer.learning_rate)

    def train_epoch(self, train_steps, batches, total, steps_per_epoch, steps_per_execution,
                    signals, started):
        """Trains until the epoch's batches run out (True) or the run ends first (False)."""
        epoch = self._count("epoch")
        iterator = iter(distribute_batches(self.strategy, batches))
        while True:
            steps = self.steps_to_next_event(total, steps_per_execution)
            losses = run_steps(train_steps, iterator, steps, self.step, self.manager)
            if not len(losses):
                return True
            self.record_losses(losses)
            _progress(self.step, total, float(losses[-1]), started, self.first_step, epoch)
            if self.evaluate and self.config.eval_every and self.step % self.config.eval_every == 0:
                print(flush=True)
                self.run_evaluation(steps_per_epoch)
            if self.step % self.config.checkpoint_every == 0:
                self.save()
            if signals.received:
                self.save()
                signals.stop(self.step, self.manager.latest_checkpoint)
            self.check_time(total)
            if self.step >= total or self.stopped_by:
                return False

    def run(self, train_steps, make_batches, steps_per_epoch, steps_per_execution):
        if self.restored:
            print(f"Resuming from {self.restored} (step {self.step}, epoch "
                  f"{self._count('epoch') + 1}, batch {self._count('batch_in_epoch')})",
                  flush=True)
        total, started = self.config.total_steps(steps_per_epoch), time.time()
        if total <= 0:
            raise ValueError("nothing to train: set train.epochs or train.max_steps (epochs=0, "
                             "auto, is decided by tfpretrain.Run.train)")
        self.callbacks.on_train_begin()
        self.check_time(total, earlier_runs_only=True)  # a resumed run whose time was up
        with StopSignals() as signals:
            while self.step < total and not self.stopped_by:
                batches = make_batches(self._count("epoch"), self._count("batch_in_epoch"))
                if self.train_epoch(train_steps, batches, total, steps_per_epoch,
                                    steps_per_execution, signals, started):
                    self.counters["epoch"].assign_add(1)
                    self.counters["batch_in_epoch"].assign(0)
                    print(flush=True)
                    if self.evaluate and not self.config.eval_every:
                        self.run_evaluation(steps_per_epoch)
                    self.end_epoch(self._count("epoch") - 1)
                self.save(force=True)  # also at an epoch end: it records the next epoch's position
        print(flush=True)
        if self.evaluate and (not self.history or self.history[-1]["step"] != self.step):
            # max_steps ended mid-epoch: the best pick needs the final weights too.
            self.run_evaluation(steps_per_epoch)
        if self.epoch_open:  # the run ended inside an epoch or at its last step
            self.end_epoch(self._count("epoch"))
        best = self.restore_best()
        report_worker_weights(self.model, self.strategy)
        self.callbacks.on_train_end()
        return TrainState(self.step, self.history, best, bool(self.stopped_by),
                          time.time() - started, self.stopped_by)

    def end_epoch(self, epoch):
        """Keras's ``on_epoch_end`` with the last loss and this step's validation metrics."""
        self.epoch_open = False
        logs = {"loss": self.last_loss}
        if self.history and self.history[-1]["step"] == self.step:
            logs.update({f"val_{k}": v for k, v in self.history[-1].items()
                         if k not in ("step", "epoch")})
        self.callbacks.on_epoch_end(epoch, logs)
        self.stop_if_asked()

    def stop_if_asked(self):
        """A callback (Keras ``EarlyStopping``, ...) set ``model.stop_training``."""
        if self.model.stop_training and not self.stopped_by:
            self.stopped_by = "callback"

    def restore_best(self):
        if not (self.evaluate and self.history):
            if self.averaging:
                self.averaging.swap_averages()  # no best checkpoint: the run ends on the averages
            return {}
        metric = self.config.best_metric
        best = max(self.history, key=lambda r: self.sign * r[metric])
        # A resumed non-chief worker may not have evaluated the best step itself: the chief has.
        for path in (self.best_path, os.path.join(self.workdir, "best", "model")):
            if tf.io.gfile.exists(path + ".index"):
                self.best_checkpoint.read(path).expect_partial()
                break
        return best
