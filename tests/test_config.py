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


def test_a_config_json_saved_by_the_previous_layout_still_reruns(tmp_path):
    # config.json as written before data sections moved beside their data modules (other key order).
    old = {"workdir": str(tmp_path), "data": {
        "name": "bbc_news", "data_dir": "", "train_file": "", "validation_file": "",
        "test_file": "", "text_key": "", "label_key": "label", "train_split": "train[:50%]",
        "validation_split": "validation", "test_split": "test", "shuffle_buffer": 10000,
        "invalid_utf8": "replace"},
        "model": {"encoder": "minilm_l6", "preprocessor": "", "seq_length": 0,
                  "truncation": "head_tail", "trainable": True, "pooling": "mean", "dropout": 0.1},
        "train": {"epochs": 3, "global_batch_size": 32, "learning_rate": 1e-4,
                  "weight_decay": 0.01, "warmup_fraction": 0.1, "clip_norm": 1.0,
                  "checkpoint_every": 50, "eval_every": 0, "best_metric": "accuracy",
                  "early_stopping_patience": 0, "max_steps": 0, "seed": 42},
        "runtime": {"strategy": "auto", "tpu": "", "deterministic": True, "precision": "float32",
                    "jit_compile": False, "steps_per_execution": 1},
        "export": {"enabled": True, "tflite": False, "tflite_calibration": 100}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = c.parse_args(TextClassifierConfig(), ["--config", str(tmp_path / "config.json")])
    assert cfg.data.train_split == "train[:50%]" and cfg.train.epochs == 3
    (tmp_path / "checkpoints").mkdir()  # a run to resume: the guard compares values, not order
    c.save_config(cfg, str(tmp_path))


@pytest.mark.parametrize("path", ["gs://bucket/run", "s3://bucket/run", "hdfs://host/run"])
def test_url_paths_are_refused_local_paths_pass(path):
    with pytest.raises(c.ConfigError, match="run directories are not supported"):
        c.check_local_path("workdir", path)
    assert c.check_local_path("workdir", "runs/a:b") == "runs/a:b"



def test_a_bare_boolean_flag_means_true_and_takes_an_explicit_value_after_it():
    cfg = c.parse_args(TextClassifierConfig(), ["--export.tflite", "--train.epochs=3"])
    assert cfg.export.tflite is True and cfg.train.epochs == 3
    cfg = c.parse_args(TextClassifierConfig(), ["--model.trainable", "false", "--export.tflite"])
    assert cfg.model.trainable is False and cfg.export.tflite is True
    with pytest.raises(c.ConfigError, match="--train.epochs needs a value"):
        c.parse_args(TextClassifierConfig(), ["--train.epochs"])


CHOICE_ERRORS = {
    "--model.truncation=tail": "model.truncation must be one of 'head', 'head_tail'; got 'tail'",
    "--runtime.strategy=gpu": "runtime.strategy must be one of 'auto', 'one_device'",
    "--model.pooling=max": "model.pooling must be one of 'mean', 'pooled'",
    "--data.invalid_utf8=ignore": "data.invalid_utf8 must be one of 'replace', 'error'",
}


@pytest.mark.parametrize("arg", CHOICE_ERRORS)
def test_choice_flags_are_checked_when_parsed_and_listed_in_help(arg):
    with pytest.raises(c.ConfigError, match=CHOICE_ERRORS[arg]):
        c.parse_args(TextClassifierConfig(), [arg])
    text = "\n".join(c.help_text(TextClassifierConfig()))
    assert "[head | head_tail]" in text and "[float32 | mixed_bfloat16 | mixed_float16]" in text
