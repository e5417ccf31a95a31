"""The optimizer every recipe uses: AdamW with linear warm-up and decay."""

from __future__ import annotations

import re
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

    ``average_decay > 0`` also keeps an exponential moving average of every trainable weight
    (``averages``, checkpointed with the other slots; ``swap_averages`` exchanges them with the
    weights). Its decay warms up as in ``tf.train.ExponentialMovingAverage`` with
    ``num_updates``: ``min(average_decay, (1 + t) / (10 + t))`` at step ``t``, so a short run
    averages over its last few steps and a long one over about ``1 / (1 - average_decay)``.
    Keras's own ``use_ema`` has a fixed decay (it would average a 100-step run's initial weights
    in) and updates in replica context; this update runs per device with the weight's own.

    ``layer_decay < 1`` scales each transformer layer's learning rate by ``layer_decay`` per
    layer below the top (embeddings lowest; the head and pooler keep the full rate), as ELECTRA
    and BEiT fine-tune (``layer_scales``).
    """

    def __init__(self, *args: Any, average_decay: float = 0.0, layer_decay: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.average_decay, self.layer_decay = average_decay, layer_decay
        self.averages: list = []
        self.scales: list = []

    def build(self, var_list: list) -> None:
        super().build(var_list)
        if self.layer_decay != 1.0:
            self.scales = layer_scales(var_list, self.layer_decay)
        if self.average_decay:
            # Starts at the weight's own value; a restored checkpoint overrides it on creation.
            self.averages = [self.add_variable_from_reference(
                v, "average", initializer=lambda shape, dtype, v=v: tf.identity(v.value))
                for v in var_list]

    def update_step(self, gradient: tf.Tensor, variable: keras.Variable,
                    learning_rate: float | tf.Tensor) -> None:
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        if self.scales:
            learning_rate = learning_rate * self.scales[index]
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))
        if self.averages:
            # step counts from 1: step / (9 + step) is (1 + t) / (10 + t) for t from 0.
            decay = tf.minimum(tf.cast(self.average_decay, dtype), step / (9 + step))
            average = self.averages[index]
            self.assign(average, decay * average + (1 - decay) * variable)

    def swap_averages(self) -> None:
        """Exchanges the trainable weights with their moving averages (outside ``strategy.run``;
        calling it twice restores both)."""
        for variable, average in zip(self._trainable_variables, self.averages):
            value = tf.identity(variable.value)
            variable.assign(average.value)
            average.assign(value)


def layer_scales(variables: list, decay: float) -> list[float]:
    """Learning-rate factors ``decay ** (top - depth)``: depth 0 for embeddings, ``i + 1`` for
    ``transformer/layer_i``, top (factor 1) for the rest (pooler, head).

    Example:
        >>> class V:
        ...     def __init__(self, path): self.path = path
        >>> names = ["word_embeddings", "transformer/layer_0/k", "transformer/layer_1/k", "logits"]
        >>> layer_scales([V(n) for n in names], 0.5)
        [0.125, 0.25, 0.5, 1.0]
    """
    depths = []
    for variable in variables:
        name = getattr(variable, "path", None) or variable.name
        layer = re.search(r"transformer[/_]layer_(\d+)", name)
        depths.append(int(layer.group(1)) + 1 if layer else 0 if "embedding" in name else None)
    top = max([d for d in depths if d is not None], default=-1) + 1
    return [decay ** (top - (top if d is None else d)) for d in depths]


def _handle(variable):
    # Inside a distribution strategy's update() a mirrored variable's handle is this device's
    # copy.
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


REFERENCE_BATCH = 32  # the global batch a learning rate is given for when train.lr_scaling is on


def peak_learning_rate(config: TrainConfig) -> tuple[float, str]:
    """The peak learning rate after ``config.lr_scaling`` and how it was reached (empty when
    unscaled): ``sqrt`` multiplies by sqrt(batch / 32), the rule for Adam (Malladi et al. 2022,
    "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms"); ``linear`` by batch / 32
    (Goyal et al. 2017, for SGD).

    Example:
        >>> peak_learning_rate(TrainConfig(global_batch_size=128, lr_scaling="sqrt"))
        (0.0002, 'learning rate 0.0001 x sqrt(128 / 32) = 0.0002 (train.lr_scaling=sqrt)')
    """
    ratio = config.global_batch_size / REFERENCE_BATCH
    factor = {"none": 1.0, "sqrt": ratio ** 0.5, "linear": ratio}[config.lr_scaling]
    if factor == 1.0:
        return config.learning_rate, ""
    rate = config.learning_rate * factor
    rule = (f"sqrt({config.global_batch_size} / {REFERENCE_BATCH})" if config.lr_scaling == "sqrt"
            else f"{config.global_batch_size} / {REFERENCE_BATCH}")
    return rate, (f"learning rate {config.learning_rate:g} x {rule} = {rate:.3g} "
                  f"(train.lr_scaling={config.lr_scaling})")


def build_optimizer(config: TrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """AdamW (fused, see ``FusedAdamW``) with linear warm-up and decay to the peak rate
    ``peak_learning_rate(config)``; no weight decay on biases and LayerNorm.

    Example:
        >>> optimizer = build_optimizer(TrainConfig(), total_steps=1000)  # doctest: +SKIP
    """
    schedule = WarmupLinearDecay(
        peak_learning_rate(config)[0], total_steps, int(config.warmup_fraction * total_steps)
    )
    optimizer = FusedAdamW(learning_rate=schedule, weight_decay=config.weight_decay,
                           average_decay=config.average_decay, layer_decay=config.layer_decay)
    optimizer.exclude_from_weight_decay(
        var_names=["bias", "gamma", "beta", "layer_norm", "LayerNorm"])
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        # float16 gradients underflow without it; the loop unscales, skips non-finite steps.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
