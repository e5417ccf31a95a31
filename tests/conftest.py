"""Shared fixtures: a toy TF Hub-format BERT and small labelled text files. No network."""

import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tfpretrain import _entry  # noqa: E402

# TensorFlow in this process and in the Pythons it starts pools its CPU memory as the entry points
# make it do, whether a test runs a recipe in-process or as a command.
_entry.pool_cpu_memory()

# A line of TensorFlow's C++ logging ("I0000 00:00:1795974347.369 32657 port.cc:153] ...") or of
# Abseil's notice before it; entry points must print none unless asked (tfpretrain/_entry.py).
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d|absl::InitializeLog|cuInit", re.MULTILINE)

TOY_ROWS = [
    ("good great fun movie love best", "pos"),
    ("bad awful boring plot hate worst", "neg"),
    ("great actor love the film", "pos"),
    ("worst film boring and bad", "neg"),
    ("fun film with the best plot", "pos"),
    ("awful actor hate it", "neg"),
]


# Every test (and every subprocess it starts) uses a private cache, never ~/.cache. Session scope:
# set before any module- or session-scoped fixture runs a recipe (a function-scoped fixture came too
# late for them, and their presets, such as digits_resnet, went into the user's cache).
@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "tfpretrain_cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TFPRETRAIN_CACHE", str(cache))
        yield


@pytest.fixture(scope="session")
def toy_bert(tmp_path_factory):
    """(encoder_dir, preprocessor_dir) of a tiny random TF Hub-format BERT."""
    from tfpretrain.encoders.toy import export_toy_bert

    return export_toy_bert(str(tmp_path_factory.mktemp("toy_bert")))


def write_csv(path, rows, header=("text", "label"), delimiter=","):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def write_toy_csv(folder):
    """Train/validation/test CSV files of a separable two-class toy task, in ``folder``."""
    return {
        "train": write_csv(folder / "train.csv", TOY_ROWS * 8),
        "validation": write_csv(folder / "validation.csv", TOY_ROWS),
        "test": write_csv(folder / "test.csv", TOY_ROWS),
    }


@pytest.fixture
def toy_csv(tmp_path):
    """``write_toy_csv`` in the test's own directory."""
    return write_toy_csv(tmp_path)


POSITIVE = [t for t, label in TOY_ROWS if label == "pos"]
NEGATIVE = [t for t, label in TOY_ROWS if label == "neg"]


def _pairs(n):
    """Pairs whose label is the sentiment of the second text, and a score: 2.5 per positive."""
    texts = POSITIVE + NEGATIVE
    rows = []
    for i in range(n):
        a, b = texts[i % 6], texts[(i * 5 + 1) % 6]
        rows.append((a, b, int(b in POSITIVE), f"{2.5 * ((a in POSITIVE) + (b in POSITIVE)):.3f}"))
    return rows


@pytest.fixture
def pair_files(tmp_path):
    """Train/validation/test TSV files of toy sentence pairs: columns sentence1, sentence2,
    label (the sentiment of sentence2) and score (2.5 per positive sentence)."""
    header = ("sentence1", "sentence2", "label", "score")
    return {split: write_csv(tmp_path / f"{split}.tsv", _pairs(n), header=header, delimiter="\t")
            for split, n in (("train", 48), ("validation", 12), ("test", 12))}


def python_env(**extra):
    """The environment of a test's subprocess: ours plus ``extra``, the project root first on
    PYTHONPATH."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_python(args, env=None, timeout=600):
    """Runs ``python args...`` from the project root; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=python_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout)


_IN_ONE_PROCESS = """
import contextlib, io, json, runpy, sys, time, traceback
results = []
for args in json.load(sys.stdin):
    assert args[0] == "-m", args
    out, err, started = io.StringIO(), io.StringIO(), time.time()
    sys.argv = [args[1], *args[2:]]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (stop.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append({"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                    "seconds": time.time() - started})
print("\\nRESULTS " + json.dumps(results))
"""


def run_in_one_process(commands, timeout=600):
    """Runs each ``["-m", module, *args]`` of ``commands`` as ``python -m`` would, one after the
    other in one new Python; returns, for each, a namespace with ``returncode``, ``stdout``,
    ``stderr`` (what Python code printed) and ``seconds``.

    For commands that stop before training (errors, --help): one TensorFlow import for all of
    them instead of one each (about 8 s a command on a 2-core CPU).
    """
    import json
    from types import SimpleNamespace

    result = subprocess.run([sys.executable, "-c", _IN_ONE_PROCESS], cwd=ROOT, env=python_env(),
                            input=json.dumps(commands), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0 and "\nRESULTS " in result.stdout, result.stderr[-3000:]
    return [SimpleNamespace(**r)
            for r in json.loads(result.stdout.rsplit("\nRESULTS ", 1)[1])]


def kill_9_once_checkpointed(args, workdir, timeout=300):
    """Starts ``python args...`` and kills it (SIGKILL) once a checkpoint is on record.

    On record means named in ``checkpoints/checkpoint``, the state file tf.train.CheckpointManager
    writes after each save and reads on restore: a ``ckpt-N.index`` can be on disk before it, and a
    run killed in between has nothing to resume from (it starts again, correctly).
    """
    state = os.path.join(workdir, "checkpoints", "checkpoint")
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=python_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not os.path.exists(state):
        time.sleep(0.2)  # the state file is written whole (a rename), so it exists or it does not
    process.kill()
    process.wait()
    assert os.path.exists(state), f"no checkpoint on record in {timeout} s"


@pytest.fixture(scope="session")
def toy_use(tmp_path_factory):
    """Directories of tiny strings → vectors SavedModels: {"call": with __call__,
    "signature": serving_default only, "from_bert": the toy BERT as a sentence encoder}."""
    from tfpretrain.encoders.toy import export_toy_bert, export_toy_sentence_encoder
    from tfpretrain.hub_export import export_sentence_encoder

    base = tmp_path_factory.mktemp("toy_use")
    encoder, preprocessor = export_toy_bert(str(base / "bert"))
    return {
        "call": export_toy_sentence_encoder(str(base / "call")),
        "signature": export_toy_sentence_encoder(str(base / "signature"), signature_only=True),
        "from_bert": export_sentence_encoder(encoder, preprocessor, str(base / "from_bert"),
                                             seq_length=32),
    }


def toy_recipe_args(toy_bert, toy_csv, workdir, *extra):
    """Arguments of a fast bert_text_classifier run on the toy encoder and toy files."""
    return ["-m", "recipes.bert_text_classifier", f"--workdir={workdir}",
            f"--model.encoder={toy_bert[0]}", f"--model.preprocessor={toy_bert[1]}",
            f"--data.train_file={toy_csv['train']}",
            f"--data.validation_file={toy_csv['validation']}",
            f"--data.test_file={toy_csv['test']}", "--model.seq_length=16", "--train.epochs=6",
            "--train.global_batch_size=8", "--train.learning_rate=5e-3", "--model.pooling=mean",
            *extra]


def saved_model_cli_serving(export_dir):
    """What ``saved_model_cli show --all`` prints for the export's ``serving_default``."""
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", str(export_dir), "--all"], capture_output=True,
                           text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    return shown.stdout.split("signature_def['serving_default']")[1].split("signature_def[")[0]
