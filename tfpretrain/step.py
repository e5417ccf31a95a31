"""The distributed training step: forward, backward, all-reduce, clip, apply (``fit`` runs it)."""

from __future__ import annotations

import keras
import tensorflow as tf


def make_train_step(model, optimizer, strategy, clip_norm, loss_fn, jit_compile=False):
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
