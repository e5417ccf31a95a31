"""The automatic training budget (train.epochs=0): epochs, evaluation spacing, early stopping."""

import pytest

from tfpretrain import budget
from tfpretrain.config import TrainConfig


@pytest.mark.parametrize("examples, classes, steps_per_epoch, epochs, why", [
    (1_558, 5, 53, 2, "1,558 examples, 5 classes, at least 2 epochs and 100 steps"),  # BBC News
    (8_954, 64, 280, 5, "8,954 examples, 64 classes, at least 2 epochs and 1,280 steps"),  # HWU64
    (60_614, 2, 1_895, 2, "60,614 examples, 2 classes, at least 2 epochs and 40 steps"),  # SST-2
    (48, 2, 6, 7, "48 examples, 2 classes, at least 2 epochs and 40 steps"),
    (100, 150, 4, 20, "100 examples, 150 classes, at most 20 epochs"),
    (1_000_000, 2, 31_250, 1, "1,000,000 examples, 2 classes, at most 200,000 examples seen"),
])
def test_auto_epochs_follow_examples_and_classes(examples, classes, steps_per_epoch, epochs, why):
    assert budget.auto_epochs(examples, classes, steps_per_epoch) == (epochs, why)


@pytest.mark.parametrize("steps_per_epoch, every", [(53, 0), (280, 100), (1_895, 474)])
def test_evaluation_about_four_times_per_epoch_at_least_100_steps_apart(steps_per_epoch, every):
    assert budget.auto_eval_every(steps_per_epoch) == every


def test_plan_says_what_it_chose_and_explicit_flags_win():
    config, line = budget.plan(TrainConfig(), 280, 8_954, 64)
    assert (config.epochs, config.eval_every, config.early_stopping_patience) == (5, 100, 3)
    assert line == ("epochs auto: 5 (8,954 examples, 64 classes, at least 2 epochs and 1,280 "
                    "steps); evaluation every 100 steps; early stop after 3 evaluations without "
                    "improvement")
    explicit = TrainConfig(epochs=3)
    assert budget.plan(explicit, 280, 8_954, 64) == (explicit, "")
    off, line = budget.plan(TrainConfig(early_stopping_patience=-1, eval_every=50), 280, 8_954, 64)
    assert (off.epochs, off.eval_every, off.early_stopping_patience) == (5, 50, -1)
    assert "early stop" not in line


def test_short_texts_and_small_sets_get_at_least_min_tokens():
    per_epoch = budget.MIN_TOKENS // 6 + 1  # six epochs reach the minimum
    epochs, why = budget.auto_epochs(2_576, 2, 81, per_epoch)
    assert epochs == 6 and why == (f"2,576 examples, {per_epoch:,} tokens, 2 classes, at least 2 "
                                   f"epochs, 40 steps and {budget.MIN_TOKENS:,} tokens")
    # long texts reach it within the other minimums; the caps still hold; a score is one output
    assert budget.auto_epochs(1_558, 5, 53, budget.MIN_TOKENS)[0] == 2
    assert budget.auto_epochs(100, 2, 4, 10)[0] == budget.MAX_EPOCHS
    assert budget.auto_epochs(4_249, 1, 133, 0)[1] == ("4,249 examples, a score, at least 2 "
                                                       "epochs and 40 steps")


def test_the_tokens_of_a_text_split_are_counted(toy_bert):
    import tensorflow as tf

    from tfpretrain.data.pipeline import count_tokens, tokenize_texts
    from tfpretrain.encoders.bert import load_bert_encoder

    pre = load_bert_encoder(*toy_bert).preprocessor
    texts = tf.data.Dataset.from_tensor_slices((["good film", "bad"], [1, 0]))
    assert count_tokens(tokenize_texts(texts, pre, 16)) == 4 + 3  # [CLS] ... [SEP] each
    assert count_tokens(texts) == 0  # not BERT inputs
