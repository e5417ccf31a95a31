"""The optimizer every recipe uses: AdamW with linear warm-up and decay."""

import keras
import tensorflow as tf


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
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        # float16 gradients underflow without it; the loop unscales, skips non-finite steps.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
