"""One training loop for every ``tf.distribute`` strategy, with exact resume.

Why not ``model.fit``: Keras 3 ``fit`` fails under MultiWorkerMirroredStrategy (keras#20585)
and ``BackupAndRestore`` resumes exactly only at epoch boundaries. This loop checkpoints the
model, the optimizer, the step and the input position (epoch, batch within epoch) with
``tf.train.CheckpointManager``; the input order is a pure function of (seed, epoch), so a killed
run resumes at the batch where it stopped.
"""

import dataclasses
import hashlib
import math
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tfpretrain.checkpoints import (Preempted, SigtermFlag, TrainingError, load_history, log_evaluation,
                                    restore_newest)
from tfpretrain.config import save_config
from tfpretrain.distribute import build_strategy, is_chief, per_replica_batch_size, set_precision
from tfpretrain.optimizers import WarmupLinearDecay, build_optimizer  # noqa: F401  (public via train)


def set_seed(seed, deterministic=True):
    """Seeds Python, NumPy, TensorFlow and Keras; with ``deterministic`` also makes TensorFlow's
    ops deterministic, so two runs with the same seed end bit-identical on CPU.

    On GPU, determinism costs speed and a few ops without a deterministic kernel raise an error;
    pass ``deterministic=False`` there if that matters more than bit-identical reruns.
    """
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def start_run(cfg, multi_worker=False):
    """What every recipe does first; returns the ``tf.distribute`` strategy.

    Builds the strategy before anything else touches TensorFlow (MultiWorkerMirroredStrategy
    requires it), seeds, sets the precision policy, checks the global batch splits over the
    replicas, and writes ``config.json`` on the chief. ``multi_worker=True`` says the recipe
    writes its files on the chief only; other recipes refuse a cluster instead of letting every
    worker write the same files.

    Example:
        >>> strategy = start_run(TextClassifierConfig())  # doctest: +SKIP
    """
    strategy = build_strategy(cfg.runtime.strategy, cfg.runtime.tpu)
    workers = 1
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        workers = strategy.extended._num_workers
    if workers > 1 and not multi_worker:
        raise ValueError(f"this recipe does not support multi-worker training yet ({workers} workers in "
                         "TF_CONFIG); run it on one host (one_device, mirrored) or use "
                         "recipes.bert_text_classifier, which does")
    set_seed(cfg.train.seed, cfg.runtime.deterministic)
    set_precision(cfg.runtime.precision)
    per_replica_batch_size(cfg.train.global_batch_size, strategy)
    if is_chief(strategy):
        save_config(cfg, os.path.abspath(cfg.workdir))
    return strategy


@dataclasses.dataclass
class TrainState:
    """What a run ended with."""

    step: int
    history: list  # one dict per evaluation: {"step": ..., "epoch": ..., metric: value}
    best: dict
    stopped_early: bool
    seconds: float


def classification_loss(labels, logits):
    """Softmax cross-entropy per example, each example weighing 1 (the default loss of ``fit``)."""
    per_example = keras.losses.sparse_categorical_crossentropy(labels, tf.cast(logits, tf.float32),
                                                               from_logits=True)
    return per_example, tf.ones_like(per_example)


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
            losses = losses.write(i, strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))
        return losses.stack()

    return train_steps


def _progress(step, total, loss, started, first_step, epoch):
    interactive = sys.stdout.isatty()
    if not interactive and step % max(1, total // 20) and step != total:
        return  # in a log file: about 20 lines per run
    done = step - first_step
    elapsed = time.time() - started
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - step) / rate if rate else 0.0
    width = 24
    filled = int(width * step / max(total, 1))
    sys.stdout.write(
        ("\r" if interactive else "") + f"  epoch {epoch + 1} [{'=' * filled}{'.' * (width - filled)}] {step}/{total} "
        f"loss {loss:.4f}  {rate:.2f} steps/s  ETA {int(eta // 60)}m{int(eta % 60):02d}s " + ("" if interactive else "\n")
    )
    sys.stdout.flush()


def fit(model, optimizer, make_batches, steps_per_epoch, config, strategy, workdir,
        evaluate=None, loss_fn=classification_loss, steps_per_execution=1, jit_compile=False):
    """Trains ``model`` with a custom loop; resumes from ``workdir/checkpoints`` when present.

    Args:
        model, optimizer: built inside ``strategy.scope()``.
        make_batches: ``f(epoch, skip_batches) -> tf.data.Dataset`` of ``(inputs, labels)``
            global batches, in an order that depends only on the epoch.
        steps_per_epoch: batches per epoch (for the schedule, progress and ETA).
        config: a ``TrainConfig``.
        strategy: any ``tf.distribute`` strategy. Under multi-worker training every worker calls
            ``fit`` with the same ``workdir`` (a shared file system): all restore from it, only
            the chief writes to it (checkpoints, logs, best weights); the others write to a
            temporary directory that is deleted at the end, as TensorFlow documents.
        evaluate: ``f(model) -> {metric: value}`` on the validation split, or ``None``; only
            its scalar values are logged and kept.
        loss_fn: ``f(labels, outputs) -> (losses, weights)``, same-shaped float32 tensors; the
            step minimises ``sum(losses * weights) / sum(weights)`` over the global batch
            (default: ``classification_loss``; masked LM: ``pretrain.mlm.masked_lm_loss``).
        steps_per_execution: optimizer steps per ``tf.function`` call (less Python overhead per
            step; progress, evaluation and checkpoints still happen at their exact steps).
        jit_compile: compile each replica's forward and backward pass with XLA (per batch
            shape; README "Performance" says when it pays on CPU).

    Returns:
        A ``TrainState``; the model holds the best weights by ``config.best_metric`` when
        ``evaluate`` is given, else the last ones.
    """
    if steps_per_execution < 1:
        raise ValueError(f"runtime.steps_per_execution must be >= 1, got {steps_per_execution}")
    total = config.max_steps or config.epochs * steps_per_epoch
    chief = is_chief(strategy)
    outdir = workdir if chief else tempfile.mkdtemp(prefix="tfpretrain-worker-")
    try:
        return _fit(model, optimizer, make_batches, steps_per_epoch, config, strategy, workdir, outdir,
                    evaluate, loss_fn, steps_per_execution, jit_compile, total)
    finally:
        if not chief:
            shutil.rmtree(outdir, ignore_errors=True)


def _fit(model, optimizer, make_batches, steps_per_epoch, config, strategy, workdir, outdir,
         evaluate, loss_fn, steps_per_execution, jit_compile, total):
    with strategy.scope():
        counters = {name: tf.Variable(0, dtype=tf.int64, trainable=False, name=name)
                    for name in ("step", "epoch", "batch_in_epoch", "evals_without_improvement")}
        best_value = tf.Variable(-math.inf, dtype=tf.float64, trainable=False, name="best_value")
    # Keras keeps dropout's random state in SeedGenerator variables that tf.train.Checkpoint
    # does not reach through the model; without them a resumed run draws other dropout masks.
    random_state = [v.value for v in model.variables if v.path.endswith("seed_generator_state")]
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, best_value=best_value,
                                     random_state=random_state, **counters)
    # Every worker restores the chief's checkpoints; each writes to its own directory.
    restored = restore_newest(checkpoint, tf.train.CheckpointManager(
        checkpoint, os.path.join(workdir, "checkpoints"), max_to_keep=2))
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(outdir, "checkpoints"), max_to_keep=2,
                                         step_counter=counters["step"])
    best_checkpoint = tf.train.Checkpoint(model=model)
    best_path = os.path.join(outdir, "best", "model")
    history = load_history(workdir)
    if restored:
        print(f"Resuming from {restored} (step {int(counters['step'].numpy())}, epoch "
              f"{int(counters['epoch'].numpy()) + 1}, batch {int(counters['batch_in_epoch'].numpy())})",
              flush=True)
    train_steps = _make_train_step(model, optimizer, strategy, config.clip_norm, loss_fn, jit_compile)
    step, started, first_step = int(counters["step"].numpy()), time.time(), int(counters["step"].numpy())
    writer = tf.summary.create_file_writer(os.path.join(outdir, "logs", "train"))
    eval_writer = tf.summary.create_file_writer(os.path.join(outdir, "logs", "validation"))
    stopped_early = False

    def run_evaluation():
        nonlocal stopped_early
        # Scalars only: per-class tables and confusion matrices go to the final report.
        metrics = {k: v for k, v in evaluate(model).items() if isinstance(v, float)}
        record = {"step": step, "epoch": round(step / steps_per_epoch, 2), **metrics}
        # A run killed after an evaluation but before its checkpoint evaluates that step again.
        history[:] = [r for r in history if r["step"] != step] + [record]
        log_evaluation(outdir, record, eval_writer)
        value = metrics[config.best_metric]
        if value > float(best_value.numpy()):
            best_value.assign(value)
            counters["evals_without_improvement"].assign(0)
            best_checkpoint.write(best_path)
        else:
            counters["evals_without_improvement"].assign_add(1)
            patience = config.early_stopping_patience
            stopped_early = bool(patience and int(counters["evals_without_improvement"].numpy()) >= patience)

    saved_at = [None]

    def save(force=False):  # once per step by this process (the newest on disk may be unreadable)
        if force or saved_at[0] != step:
            manager.save(checkpoint_number=step)
            saved_at[0] = step

    def steps_to_next_event():
        # A call ends where an evaluation, a checkpoint or the end falls, so they keep their steps.
        gaps = [steps_per_execution, total - step, config.checkpoint_every - step % config.checkpoint_every]
        if evaluate and config.eval_every:
            gaps.append(config.eval_every - step % config.eval_every)
        return max(1, min(gaps))

    with SigtermFlag() as sigterm:
        while step < total and not stopped_early:
            epoch = int(counters["epoch"].numpy())
            iterator = iter(strategy.experimental_distribute_dataset(
                make_batches(epoch, int(counters["batch_in_epoch"].numpy()))))
            while True:
                losses = _run_steps(train_steps, iterator, steps_to_next_event(), step, manager)
                for loss in losses:
                    step += 1
                    if not math.isfinite(loss):
                        raise TrainingError(
                            f"loss became {loss} at step {step}; stopped. The last good checkpoint is "
                            f"{manager.latest_checkpoint or 'none (no checkpoint yet)'}; lower "
                            "train.learning_rate or check the data")
                    with writer.as_default(step=step):
                        tf.summary.scalar("loss", loss)
                if not len(losses):
                    break  # the epoch's batches are used up
                counters["step"].assign(step)
                counters["batch_in_epoch"].assign_add(len(losses))
                with writer.as_default(step=step):
                    tf.summary.scalar("learning_rate", optimizer.learning_rate)
                _progress(step, total, float(losses[-1]), started, first_step, epoch)
                if evaluate and config.eval_every and step % config.eval_every == 0:
                    print(flush=True)
                    run_evaluation()
                if step % config.checkpoint_every == 0:
                    save()
                if sigterm.raised:
                    save()
                    raise Preempted(f"SIGTERM at step {step}: saved {manager.latest_checkpoint}; run "
                                    "the same command again to resume")
                if step >= total or stopped_early:
                    break
            if not len(losses):
                counters["epoch"].assign_add(1)
                counters["batch_in_epoch"].assign(0)
                print(flush=True)
                if evaluate and not config.eval_every:
                    run_evaluation()
            save(force=True)  # also at an epoch end: it records the next epoch's position
    print(flush=True)
    if evaluate and (not history or history[-1]["step"] != step):
        run_evaluation()  # max_steps ended mid-epoch: the best pick needs the final weights too
    best = {}
    if evaluate and history:
        best = max(history, key=lambda r: r[config.best_metric])
        # A resumed non-chief worker may not have evaluated the best step itself: the chief has.
        for path in (best_path, os.path.join(workdir, "best", "model")):
            if tf.io.gfile.exists(path + ".index"):
                best_checkpoint.read(path).expect_partial()
                break
    _report_worker_weights(model, strategy)
    return TrainState(step, history, best, stopped_early, time.time() - started)


# What a collective raises on the survivors when another worker dies or cannot be reached.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                tf.errors.AbortedError, tf.errors.InternalError)


def _run_steps(train_steps, iterator, steps, step, manager):
    try:
        return train_steps(iterator, tf.constant(steps)).numpy()
    except _PEER_ERRORS as error:
        # The useful line of a graph error is the op's message, not the trace before it.
        lines = [line.strip() for line in str(error).splitlines()
                 if line.strip() and not line.startswith(("Graph execution error", "Detected at node", " "))]
        reason = (lines[-1] if lines else "")[:300]
        raise TrainingError(
            f"lost another worker during step {step + 1} ({type(error).__name__}: {reason}); "
            f"the last checkpoint is {manager.latest_checkpoint or 'none (no checkpoint yet)'}. Restart "
            "every worker with the same command to resume from it") from None


def _report_worker_weights(model, strategy):
    """Multi-worker runs print a digest of the final weights on each worker: equal digests mean
    the workers stayed in sync bit for bit."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.asarray(variable.numpy()).tobytes())
    print(f"worker {resolver.task_type}:{resolver.task_id}: final weights sha256 {digest.hexdigest()[:16]}",
          flush=True)
