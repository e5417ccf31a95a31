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


def test_a_regression_is_said_to_have_a_score():
    assert budget.auto_epochs(4_249, 1, 133)[1] == ("4,249 examples, a score, at least 2 epochs "
                                                    "and 40 steps")


def test_a_task_type_may_ask_for_more_epochs():
    assert budget.auto_epochs(14_042, 4, 439, min_epochs=3) == (
        3, "14,042 examples, 4 classes, at least 3 epochs and 80 steps")
    config, _ = budget.plan(TrainConfig(), 439, 14_042, 4, min_epochs=3)
    assert config.epochs == 3
    assert budget.plan(TrainConfig(epochs=2), 439, 14_042, 4, 3)[0].epochs == 2
