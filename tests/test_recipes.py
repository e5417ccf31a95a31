"""End-to-end runs of every recipe on toy inputs, and its command-line contract."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, run_python


def _toy_args(toy_bert, toy_csv, workdir, *extra):
    return ["-m", "recipes.bert_text_classifier", f"--workdir={workdir}",
            f"--model.encoder={toy_bert[0]}", f"--model.preprocessor={toy_bert[1]}",
            f"--data.train_file={toy_csv['train']}", f"--data.validation_file={toy_csv['validation']}",
            f"--data.test_file={toy_csv['test']}", "--model.seq_length=16", "--train.epochs=6",
            "--train.global_batch_size=8", "--train.learning_rate=5e-3", "--model.pooling=mean", *extra]


def test_bert_text_classifier_end_to_end(toy_bert, toy_csv, tmp_path):
    workdir = tmp_path / "run"
    result = run_python(_toy_args(toy_bert, toy_csv, workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "replicas 1 | global batch 8 | steps/epoch 6 | total steps 36" in out
    assert "trainable parameters" in out and "Summary" in out
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["steps"] == 36
    assert metrics["test"]["accuracy"] == 1.0  # the toy task is separable by word identity
    assert np.array(metrics["test"]["confusion_matrix"]).sum() == 6
    assert metrics["label_names"] == ["neg", "pos"]
    assert len(metrics["validation_history"]) == 6
    for artifact in ("config.json", "README.md", "export/saved_model.pb", "checkpoints/checkpoint"):
        assert (workdir / artifact).exists(), artifact
    assert any(f.startswith("events") for f in os.listdir(workdir / "logs" / "train"))
    line = [l for l in out.splitlines() if l.startswith("export check")][0]
    assert float(line.split("max abs diff ")[1].split()[0]) <= 1e-5
    # --config reruns the saved configuration (here: nothing left to train, it resumes at the end).
    again = run_python(["-m", "recipes.bert_text_classifier", "--config", str(workdir / "config.json"),
                        "--export.enabled=false"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from" in again.stdout


def test_saved_model_cli_shows_a_string_input(toy_bert, toy_csv, tmp_path):
    workdir = tmp_path / "run"
    assert run_python(_toy_args(toy_bert, toy_csv, workdir, "--train.epochs=1")).returncode == 0
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", str(workdir / "export"), "--all"],
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    serving = shown.stdout.split("signature_def['serving_default']")[1]
    assert "dtype: DT_STRING" in serving and "name: serving_default_text:0" in serving
    for key in ("probabilities", "label_id", "label"):
        assert f"outputs['{key}']" in serving


def test_kill_9_mid_training_then_rerun_resumes(toy_bert, toy_csv, tmp_path):
    workdir = tmp_path / "run"
    args = _toy_args(toy_bert, toy_csv, workdir, "--train.epochs=40", "--train.checkpoint_every=5",
                     "--export.enabled=false")
    env = dict(os.environ, PYTHONPATH=ROOT)
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    checkpoints = workdir / "checkpoints"
    while time.time() < deadline and not list(checkpoints.glob("ckpt-1[05].index")):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(checkpoints.glob("*.index")), "no checkpoint before the kill"
    assert not (workdir / "metrics.json").exists()
    result = run_python(args)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = [l for l in result.stdout.splitlines() if l.startswith("Resuming from")]
    assert resumed and "step 0" not in resumed[0]
    assert json.loads((workdir / "metrics.json").read_text())["steps"] == 240


@pytest.mark.parametrize("extra, message", [
    (["--model.encoder=no_such_preset"], "'no_such_preset' is not a preset"),
    (["--data.train_file=/nonexistent/train.csv"], "/nonexistent/train.csv does not exist"),
    (["--data.label_key=category"], "no label column 'category'"),
    (["--train.epochs=x"], "train.epochs expects int"),
    (["--bogus=1"], "unknown config key 'bogus'"),
])
def test_bad_input_gets_one_line_and_exit_2(toy_bert, toy_csv, tmp_path, extra, message):
    result = run_python(_toy_args(toy_bert, toy_csv, tmp_path / "run", *extra), timeout=120)
    assert result.returncode == 2
    lines = [l for l in result.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_empty_split_is_an_error(toy_bert, toy_csv, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    result = run_python(_toy_args(toy_bert, toy_csv, tmp_path / "run", f"--data.test_file={empty}"))
    assert result.returncode == 2 and "has no rows" in result.stderr


def test_help_lists_flags():
    result = run_python(["-m", "recipes.bert_text_classifier", "--help"], timeout=120)
    assert result.returncode == 0
    assert "--model.encoder=minilm_l6" in result.stdout and "--data.name=bbc_news" in result.stdout
