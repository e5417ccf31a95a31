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
from tfpretrain.distribute import is_chief, report_worker_weights
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


def _make_train_step(model, optimizer, strategy, clip_norm, loss_fn, jit_compile=False):
    """Returns ``train_steps(iterator, steps) -> losses``: up to ``steps`` optimizer steps in one
    ``tf.function`` call (fewer when the iterator runs out), one global-batch loss per step."""
    with strategy.scope():
        # Slots made lazily inside the first distributed step break MirroredStrategy.
        optimizer.build(model.trainable_variables)
    variables = model.trainable_variables
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def local_gradients(inputs, labels):
        # No collectives here, so XLA can compile it (per input shape).
        with tf.GradientTape() as tape:
            losses, weights = loss_fn(labels, model(inputs, training=True))
            loss_sum = tf.reduce_sum(losses * weights)
            scaled = optimizer.scale_loss(loss_sum) if loss_scaled else loss_sum
        return loss_sum, tf.reduce_sum(weights), tape.gradient(scaled, variables)

    if jit_compile:
        local_gradients = tf.function(local_gradients, jit_compile=True, reduce_retracing=True)

    def replica_step(inputs, labels):
        loss_sum, weight, grads = local_gradients(inputs, labels)
        # A variable the loss does not reach (e.g. an unused pooler) has no gradient.
        grads, used = zip(*[(g, v) for g, v in zip(grads, variables) if g is not None])
        # The weighted mean over the global batch (weights summed over replicas), so partial
        # batches and uneven masked-token counts are exact.
        context = tf.distribute.get_replica_context()
        total_weight = tf.maximum(context.all_reduce(tf.distribute.ReduceOp.SUM, weight), 1e-9)
        # Dense: an embedding gradient lists a row once per occurrence of its token, and Keras's
        # Adam squares it per listed row (sum of squares, not square of the sum) and all-reduces
        # it again over replicas (more duplicates): a different step on 1 and on 2 replicas.
        grads = [tf.convert_to_tensor(g) / total_weight
                 for g in context.all_reduce(tf.distribute.ReduceOp.SUM, grads)]
        if clip_norm:
            # Clipping a loss-scaled gradient at the scaled norm == clipping the true one.
            scale = optimizer.dynamic_scale if loss_scaled else 1.0
            grads, _ = tf.clip_by_global_norm(grads, clip_norm * scale)
        # Keras sums gradients over replicas again inside apply_gradients; pre-dividing keeps
        # clipping on the true global gradient (Keras would clip each replica's part).
        if context.num_replicas_in_sync > 1:
            grads = [g / context.num_replicas_in_sync for g in grads]
        optimizer.apply_gradients(zip(grads, used))
        return loss_sum / total_weight

    @tf.function(reduce_retracing=True)
    def train_steps(iterator, steps):
        losses = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
        for i in tf.range(steps):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            per_replica = strategy.run(replica_step, args=batch.get_value())
            losses = losses.write(
                i, strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))
        return losses.stack()

    return train_steps


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
        ``evaluate`` is given, else the last ones.

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
        train_steps = _make_train_step(model, optimizer, strategy, config.clip_norm, loss_fn,
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
        self.model, self.optimizer, self.strategy, self.config = model, optimizer, strategy, config
        self.workdir, self.outdir, self.evaluate, self.sign = workdir, outdir, evaluate, sign
        with strategy.scope():
            self.counters = {name: tf.Variable(0, dtype=tf.int64, trainable=False, name=name)
                             for name in ("step", "epoch", "batch_in_epoch",
                                          "evals_without_improvement")}
            self.best_value = tf.Variable(-math.inf, dtype=tf.float64, trainable=False,
                                          name="best_value")
        # Keras keeps dropout's random state in SeedGenerator variables that tf.train.Checkpoint
        # does not reach through the model; without them a resumed run draws other dropout masks.
        random_state = [v.value for v in model.variables if v.path.endswith("seed_generator_state")]
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                              best_value=self.best_value,
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
        self.stopped_early = False
        self.saved_at, self.last_loss, self.callbacks = None, math.nan, callbacks
        self.epoch_open = False
        model.stop_training = False

    def _count(self, name):
        return int(self.counters[name].numpy())

    def run_evaluation(self, steps_per_epoch):
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
            patience = self.config.early_stopping_patience
            self.stopped_early = bool(
                patience and self._count("evals_without_improvement") >= patience)

    def save(self, force=False):
        # Once per step by this process (the newest on disk may be unreadable).
        if force or self.saved_at != self.step:
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
        self.stopped_early = self.stopped_early or self.model.stop_training
        with self.writer.as_default(step=self.step):
            tf.summary.scalar("learning_rate", self.optimizer.learning_rate)

    def train_epoch(self, train_steps, batches, total, steps_per_epoch, steps_per_execution,
                    signals, started):
        """Trains until the epoch's batches run out (True) or the run ends first (False)."""
        epoch = self._count("epoch")
        iterator = iter(self.strategy.experimental_distribute_dataset(batches))
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
            if self.step >= total or self.stopped_early:
                return False

    def run(self, train_steps, make_batches, steps_per_epoch, steps_per_execution):
        if self.restored:
            print(f"Resuming from {self.restored} (step {self.step}, epoch "
                  f"{self._count('epoch') + 1}, batch {self._count('batch_in_epoch')})",
                  flush=True)
        total, started = self.config.total_steps(steps_per_epoch), time.time()
        self.callbacks.on_train_begin()
        with StopSignals() as signals:
            while self.step < total and not self.stopped_early:
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
        return TrainState(self.step, self.history, best, self.stopped_early, time.time() - started)

    def end_epoch(self, epoch):
        """Keras's ``on_epoch_end`` with the last loss and this step's validation metrics."""
        self.epoch_open = False
        logs = {"loss": self.last_loss}
        if self.history and self.history[-1]["step"] == self.step:
            logs.update({f"val_{k}": v for k, v in self.history[-1].items()
                         if k not in ("step", "epoch")})
        self.callbacks.on_epoch_end(epoch, logs)
        self.stopped_early = self.stopped_early or self.model.stop_training

    def restore_best(self):
        if not (self.evaluate and self.history):
            return {}
        metric = self.config.best_metric
        best = max(self.history, key=lambda r: self.sign * r[metric])
        # A resumed non-chief worker may not have evaluated the best step itself: the chief has.
        for path in (self.best_path, os.path.join(self.workdir, "best", "model")):
            if tf.io.gfile.exists(path + ".index"):
                self.best_checkpoint.read(path).expect_partial()
                break
        return best
