import json

import pytest

from recipes.bert_text_classifier import TextClassifierConfig
from tfpretrain import config as c


def test_overrides_convert_types():
    cfg = c.parse_args(TextClassifierConfig(), ["--train.epochs=2", "--model.trainable", "false",
                                                  "--train.learning_rate=3e-5", "--workdir=/tmp/x"])
    assert (cfg.train.epochs, cfg.model.trainable, cfg.train.learning_rate, cfg.workdir) == (
        2, False, 3e-5, "/tmp/x")


@pytest.mark.parametrize("arg, message", [
    ("--train.epoch=2", "unknown config key 'train.epoch'"),
    ("--trian.epochs=2", "unknown config key 'trian'"),
    ("--train.epochs=two", "train.epochs expects int, got 'two'"),
    ("--model.trainable=maybe", "model.trainable expects bool"),
    ("--train=3", "unknown config key 'train'"),
])
def test_bad_keys_and_values_are_named(arg, message):
    with pytest.raises(c.ConfigError, match=message):
        c.parse_args(TextClassifierConfig(), [arg])


def test_saved_config_reruns_exactly(tmp_path):
    cfg = c.parse_args(TextClassifierConfig(), ["--train.epochs=7", "--data.name=imdb_reviews"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(c.to_dict(cfg)))
    again = c.parse_args(TextClassifierConfig(), ["--config", str(path), "--train.seed=1"])
    assert again.train.epochs == 7 and again.data.name == "imdb_reviews" and again.train.seed == 1
    path.write_text(json.dumps({"train": {"nope": 1}}))
    with pytest.raises(c.ConfigError, match="train.nope"):
        c.parse_args(TextClassifierConfig(), ["--config", str(path)])


def test_help_lists_every_key():
    text = "\n".join(c.help_text(TextClassifierConfig()))
    for key in ("--data.name=bbc_news", "--model.encoder=minilm_l6", "--train.global_batch_size",
                "--runtime.strategy", "--export.enabled", "--workdir"):
        assert key in text


def test_a_run_directory_refuses_a_different_run(tmp_path):
    c.save_config(TextClassifierConfig(), str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    c.save_config(c.parse_args(TextClassifierConfig(), ["--export.enabled=false"]), str(tmp_path))
    with pytest.raises(c.ConfigError, match=r"different config \(model.dropout, train.epochs\)"):
        c.save_config(c.parse_args(TextClassifierConfig(),
                                   ["--train.epochs=5", "--model.dropout=0"]),
                      str(tmp_path))
