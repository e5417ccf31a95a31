"""Head warm-up: a classifier's head trains alone on features its frozen encoder computed once,
then the whole model fine-tunes from a trained head instead of a random one ("linear probing,
then fine-tuning", Kumar et al. 2022; ``recipes.use_text_classifier`` does the same with its
embedding cache)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

from tfpretrain.evaluate import predict_outputs
from tfpretrain.models import feature_extractor

if TYPE_CHECKING:
    from tfpretrain.config import HeadFirstTrainConfig
    from tfpretrain.run import Run
    from tfpretrain.train import TrainState


def featurize(model: keras.Model, batches: tf.data.Dataset) -> tf.data.Dataset:
    """``(features, label)`` examples: what ``model``'s ``classifier`` head sees for each example
    of ``batches`` (inference mode, one compiled forward pass per batch shape)."""
    return tf.data.Dataset.from_tensor_slices(predict_outputs(feature_extractor(model), batches))


def warm_up_head(run: Run, model: keras.Model, train: tf.data.Dataset,
                 validation: tf.data.Dataset | None, config: HeadFirstTrainConfig
                 ) -> TrainState:
    """Trains ``model``'s head for ``config.head_epochs`` at ``config.head_learning_rate`` (in
    ``<workdir>/head``) on the features of ``train`` and ``validation`` (unshuffled batches);
    ``model`` shares the trained head's weights.

    Example:
        >>> warm_up_head(run, model, batches("train"), batches("validation"),
        ...              cfg.train)  # doctest: +SKIP
    """
    examples, batch = featurize(model, train), config.global_batch_size
    size = len(examples)

    def head_batches(epoch, skip):
        shuffled = examples.shuffle(size, seed=config.seed + epoch, reshuffle_each_iteration=False)
        return shuffled.batch(batch).skip(skip).prefetch(tf.data.AUTOTUNE)

    return run.train(model.get_layer("classifier"), head_batches,
                     validation=None if validation is None
                     else featurize(model, validation).batch(batch),
                     train_config=config.head_phase(), workdir=os.path.join(run.workdir, "head"),
                     what="head warm-up on features of the frozen encoder",
                     details=f"{size:,} examples")
