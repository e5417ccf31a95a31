"""One training loop for every ``tf.distribute`` strategy, with exact resume.

Why not ``model.fit``: Keras 3 ``fit`` fails under MultiWorkerMirroredStrategy (keras#20585)
and ``BackupAndRestore`` resumes exactly only at epoch boundaries. This loop checkpoints the
model, the optimizer, the step and the input position (epoch, batch within epoch) with
``tf.train.CheckpointManager``; the input order is a pure function of (seed, epoch), so a killed
run resumes at the batch where it stopped.
"""

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time

import keras
import tensorflow as tf


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN or infinite loss, no readable checkpoint); the message says
    which step or file and what to do."""


class Preempted(RuntimeError):
    """SIGTERM arrived (a scheduler preempting the job): a checkpoint was saved, rerun to resume.

    Command-line entry points exit with ``exit_code`` (143 = 128 + SIGTERM, what schedulers expect).
    """

    exit_code = 143


class _SigtermFlag:
    """Records SIGTERM instead of dying, so the loop can finish its step and checkpoint."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _restore(checkpoint, manager):
    """Restores the newest readable checkpoint; returns its path (None: none to restore).

    A truncated or corrupt newest checkpoint (a crash mid-write, a bad disk) falls back to the
    one before it with a warning; when none can be read the run stops instead of silently
    starting again from scratch.
    """
    for path in reversed(manager.checkpoints):
        try:
            checkpoint.restore(path).expect_partial()
            return path
        except Exception as error:  # noqa: BLE001  (a bad file fails in many ways: DataLoss, IndexError, ...)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"warning: checkpoint {path} is unreadable ({first}); trying an older one",
                  file=sys.stderr, flush=True)
    if manager.checkpoints:
        raise TrainingError(f"no readable checkpoint in {manager.directory}; delete that directory "
                            "to start the run over")
    return None


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then linear decay to 0."""

    def __init__(self, peak, total_steps, warmup_steps):
        self.peak, self.total_steps, self.warmup_steps = peak, total_steps, warmup_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = step / max(self.warmup_steps, 1)
        decay = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        return self.peak * tf.maximum(0.0, tf.minimum(warmup, decay))

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}


def set_seed(seed, deterministic=True):
    """Seeds Python, NumPy, TensorFlow and Keras; with ``deterministic`` also makes TensorFlow's
    ops deterministic, so two runs with the same seed end bit-identical on CPU.

    On GPU, determinism costs speed and a few ops without a deterministic kernel raise an error;
    pass ``deterministic=False`` there if that matters more than bit-identical reruns.
    """
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def build_optimizer(config, total_steps):
    """AdamW with linear warm-up and decay; no weight decay on biases and LayerNorm.

    Example:
        >>> optimizer = build_optimizer(TrainConfig(), total_steps=1000)  # doctest: +SKIP
    """
    schedule = WarmupLinearDecay(
        config.learning_rate, total_steps, int(config.warmup_fraction * total_steps)
    )
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "layer_norm", "LayerNorm"])
    return optimizer


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


def _make_train_step(model, optimizer, strategy, clip_norm, loss_fn):
    with strategy.scope():
        # Slots made lazily inside the first distributed step break MirroredStrategy.
        optimizer.build(model.trainable_variables)

    def replica_step(inputs, labels):
        with tf.GradientTape() as tape:
            losses, weights = loss_fn(labels, model(inputs, training=True))
            # The weighted mean over the global batch (weights summed over replicas), so partial
            # batches and uneven masked-token counts are exact.
            context = tf.distribute.get_replica_context()
            total_weight = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(weights))
            loss = tf.reduce_sum(losses * weights) / tf.maximum(total_weight, 1e-9)
        variables = model.trainable_variables
        grads = tape.gradient(loss, variables)
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, clip_norm)
        # Keras sums gradients over replicas again inside apply_gradients; pre-dividing keeps
        # clipping on the true global gradient (Keras would clip each replica's part).
        if context.num_replicas_in_sync > 1:
            grads = [_scale(g, 1.0 / context.num_replicas_in_sync) for g in grads]
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        losses = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return train_step


def _scale(gradient, factor):
    if isinstance(gradient, tf.IndexedSlices):  # embedding gradients stay sparse
        return tf.IndexedSlices(gradient.values * factor, gradient.indices, gradient.dense_shape)
    return gradient * factor


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
        evaluate=None, write_checkpoints=True, loss_fn=classification_loss):
    """Trains ``model`` with a custom loop; resumes from ``workdir/checkpoints`` when present.

    Args:
        model, optimizer: built inside ``strategy.scope()``.
        make_batches: ``f(epoch, skip_batches) -> tf.data.Dataset`` of ``(inputs, labels)``
            global batches, in an order that depends only on the epoch.
        steps_per_epoch: batches per epoch (for the schedule, progress and ETA).
        config: a ``TrainConfig``.
        evaluate: ``f(model) -> {metric: value}`` on the validation split, or ``None``; only
            its scalar values are logged and kept.
        write_checkpoints: False on non-chief workers (they write to a temporary directory).
        loss_fn: ``f(labels, outputs) -> (losses, weights)``, same-shaped float32 tensors; the
            step minimises ``sum(losses * weights) / sum(weights)`` over the global batch
            (default: ``classification_loss``; masked LM: ``pretrain.mlm.masked_lm_loss``).

    Returns:
        A ``TrainState``; the model holds the best weights by ``config.best_metric`` when
        ``evaluate`` is given, else the last ones.
    """
    total = config.max_steps or config.epochs * steps_per_epoch
    with strategy.scope():
        counters = {name: tf.Variable(0, dtype=tf.int64, trainable=False, name=name)
                    for name in ("step", "epoch", "batch_in_epoch", "evals_without_improvement")}
        best_value = tf.Variable(-math.inf, dtype=tf.float64, trainable=False, name="best_value")
    # Keras keeps dropout's random state in SeedGenerator variables that tf.train.Checkpoint
    # does not reach through the model; without them a resumed run draws other dropout masks.
    random_state = [v.value for v in model.variables if v.path.endswith("seed_generator_state")]
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, best_value=best_value,
                                     random_state=random_state, **counters)
    directory = os.path.join(workdir, "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=2, step_counter=counters["step"])
    best_checkpoint = tf.train.Checkpoint(model=model)
    best_path = os.path.join(workdir, "best", "model")
    history = _load_history(workdir)
    restored = _restore(checkpoint, manager)
    if restored:
        print(f"Resuming from {restored} (step {int(counters['step'])}, epoch "
              f"{int(counters['epoch']) + 1}, batch {int(counters['batch_in_epoch'])})", flush=True)
    train_step = _make_train_step(model, optimizer, strategy, config.clip_norm, loss_fn)
    step, started, first_step = int(counters["step"]), time.time(), int(counters["step"])
    writer = tf.summary.create_file_writer(os.path.join(workdir, "logs", "train"))
    eval_writer = tf.summary.create_file_writer(os.path.join(workdir, "logs", "validation"))
    stopped_early = False

    def run_evaluation():
        nonlocal stopped_early
        # Scalars only: per-class tables and confusion matrices go to the final report.
        metrics = {k: v for k, v in evaluate(model).items() if isinstance(v, float)}
        record = {"step": step, "epoch": round(step / steps_per_epoch, 2), **metrics}
        # A run killed after an evaluation but before its checkpoint evaluates that step again.
        history[:] = [r for r in history if r["step"] != step] + [record]
        _log_eval(workdir, record, eval_writer)
        value = metrics[config.best_metric]
        if value > float(best_value):
            best_value.assign(value)
            counters["evals_without_improvement"].assign(0)
            if write_checkpoints:
                best_checkpoint.write(best_path)
        else:
            counters["evals_without_improvement"].assign_add(1)
            patience = config.early_stopping_patience
            stopped_early = bool(patience and int(counters["evals_without_improvement"]) >= patience)

    def save():  # once per step
        if write_checkpoints and not (manager.latest_checkpoint or "").endswith(f"-{step}"):
            manager.save(checkpoint_number=step)

    with _SigtermFlag() as sigterm:
        while step < total and not stopped_early:
            epoch = int(counters["epoch"])
            batches = strategy.experimental_distribute_dataset(
                make_batches(epoch, int(counters["batch_in_epoch"])))
            for batch in batches:
                loss = float(train_step(batch))
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"loss became {loss} at step {step + 1}; stopped. The last good checkpoint is "
                        f"{manager.latest_checkpoint or 'none (no checkpoint yet)'}; lower "
                        "train.learning_rate or check the data")
                step += 1
                counters["step"].assign(step)
                counters["batch_in_epoch"].assign_add(1)
                with writer.as_default(step=step):
                    tf.summary.scalar("loss", loss)
                    tf.summary.scalar("learning_rate", optimizer.learning_rate)
                _progress(step, total, loss, started, first_step, epoch)
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
            else:
                counters["epoch"].assign_add(1)
                counters["batch_in_epoch"].assign(0)
                print(flush=True)
                if evaluate and not config.eval_every:
                    run_evaluation()
            if write_checkpoints:  # also at an epoch end: it records the next epoch's position
                manager.save(checkpoint_number=step)
    print(flush=True)
    if evaluate and (not history or history[-1]["step"] != step):
        run_evaluation()  # max_steps ended mid-epoch: the best pick needs the final weights too
    best = {}
    if evaluate and history:
        best = max(history, key=lambda r: r[config.best_metric])
        if tf.io.gfile.exists(best_path + ".index"):
            best_checkpoint.read(best_path).expect_partial()
    return TrainState(step, history, best, stopped_early, time.time() - started)


def _history_path(workdir):
    return os.path.join(workdir, "logs", "eval_history.jsonl")


def _load_history(workdir):
    path = _history_path(workdir)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return list({record["step"]: record for record in records}.values())


def _log_eval(workdir, record, writer):
    printable = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
    print(f"  validation: {printable}", flush=True)
    os.makedirs(os.path.dirname(_history_path(workdir)), exist_ok=True)
    with open(_history_path(workdir), "a") as f:
        f.write(json.dumps(record) + "\n")
    with writer.as_default(step=record["step"]):
        for key, value in record.items():
            if isinstance(value, float):
                tf.summary.scalar(key, value)
