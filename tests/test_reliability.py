"""Reliability: exact resume after kills and SIGTERM, corrupt checkpoints, determinism, bad
input, safe loading. The kill matrix is `slow` (run by .ci/run after the default suite)."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import (
    ROOT,
    TOY_ROWS,
    python_env,
    run_in_one_process,
    run_python,
    toy_recipe_args,
    write_csv,
    write_toy_csv,
)
from tfpretrain import converters, zoo


def _weights(workdir):
    """Every saved tensor of the run's latest checkpoint (model, optimizer, counters), except
    the training seconds (wall time, kept for train.max_minutes)."""
    reader = tf.train.load_checkpoint(str(workdir / "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if "_CHECKPOINTABLE_OBJECT_GRAPH" not in name
            and not name.startswith(("save_counter", "seconds/"))}


def _same_weights(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _popen(args):
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=python_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # three short toy runs
def test_same_seed_is_bit_identical_and_another_seed_differs(toy_bert, toy_csv, tmp_path):
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        result = run_python(toy_recipe_args(toy_bert, toy_csv, tmp_path / name,
                                            f"--train.seed={seed}", "--train.epochs=2",
                                            "--export.enabled=false"))
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = (_weights(tmp_path / name), (tmp_path / name / "metrics.json").read_bytes())
    assert _same_weights(runs["a"][0], runs["b"][0]) and runs["a"][1] == runs["b"][1]
    assert not _same_weights(runs["a"][0], runs["c"][0])


@pytest.mark.slow  # a toy run interrupted and resumed
def test_sigterm_checkpoints_exits_143_and_the_rerun_resumes(toy_bert, toy_csv, tmp_path):
    workdir = tmp_path / "run"
    # 120 steps: the signal comes at the first progress line, long before the end.
    args = toy_recipe_args(toy_bert, toy_csv, workdir, "--train.epochs=20",
                           "--train.checkpoint_every=100000", "--export.enabled=false")
    process = _popen(args)
    for line in process.stdout:  # wait until it is training
        if line.lstrip().startswith("epoch"):
            break
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-2000:]
    assert time.time() - sent < 30
    assert "error: SIGTERM at step" in stderr and "run the same command again to resume" in stderr
    stopped_at = int(stderr.split("SIGTERM at step ")[1].split(":")[0])
    assert not (workdir / "metrics.json").exists()
    result = run_python(args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"(step {stopped_at}," in result.stdout and "Resuming from" in result.stdout
    assert json.loads((workdir / "metrics.json").read_text())["steps"] == 120


@pytest.mark.slow  # 50 s: two recipe runs (tests/test_mlm.py resumes exactly by default)
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(toy_bert, toy_csv, tmp_path):
    workdir = tmp_path / "run"
    args = toy_recipe_args(toy_bert, toy_csv, workdir, "--train.max_steps=20",
                           "--train.checkpoint_every=5", "--export.enabled=false")
    assert run_python(args).returncode == 0
    finished = _weights(workdir)
    checkpoints = workdir / "checkpoints"
    previous = tf.train.get_checkpoint_state(str(checkpoints)).all_model_checkpoint_paths[-2]
    data = next(checkpoints.glob("ckpt-20.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    result = run_python(args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: checkpoint" in result.stderr and "ckpt-20 is unreadable" in result.stderr
    assert f"Resuming from {previous} " in result.stdout
    assert _same_weights(_weights(workdir), finished)  # the lost steps were redone exactly
    for index in checkpoints.glob("ckpt-*.index"):
        index.write_bytes(b"garbage")
    result = run_python(args)
    assert result.returncode == 2 and "error: no readable checkpoint in" in result.stderr


@pytest.mark.slow
def test_kill_matrix_ends_bit_identical_to_an_uninterrupted_run(toy_bert, toy_csv, tmp_path):
    """Six `kill -9`s at random moments (training, checkpoint writes, evaluation, test, export),
    each followed by the same command; the end state equals an uninterrupted run's."""
    # 120 steps: 40 checkpoints and 30 evaluations to be killed in (with 240 steps this test took
    # 9.5 minutes of the CI budget on a slow VM, 8.5 with 120).
    extra = ("--train.epochs=20", "--train.checkpoint_every=3", "--train.eval_every=4")
    started = time.time()
    assert run_python(toy_recipe_args(toy_bert, toy_csv, tmp_path / "reference",
                                      *extra)).returncode == 0
    duration = time.time() - started
    reference = (_weights(tmp_path / "reference"),
                 (tmp_path / "reference" / "metrics.json").read_bytes())
    timing = json.loads((tmp_path / "reference" / "timing.json").read_text())
    train_seconds = timing["train_seconds"]
    total_steps = json.loads(reference[1])["steps"]
    workdir = tmp_path / "killed"
    args = toy_recipe_args(toy_bert, toy_csv, workdir, *extra)
    rng, kills, resumed, eligible, completed = random.Random(0), 0, 0, 0, 0
    while kills < 6:
        state = tf.train.get_checkpoint_state(str(workdir / "checkpoints"))
        latest = state.model_checkpoint_path if state else None
        done = int(latest.rsplit("-", 1)[1]) / total_steps if latest else 0.0
        process = _popen(args)
        lines = []
        reader = threading.Thread(target=lambda p=process: lines.extend(p.stdout))
        reader.start()
        waited = time.time()  # kill after start-up: once the run has said where it starts
        while (not any(line.startswith("replicas") for line in lines)
               and process.poll() is None):
            assert time.time() - waited < 300, "no start-up line within 300 s"
            time.sleep(0.05)
        # A random moment of what is left: training, checkpoint writes, evaluation, test, export.
        time.sleep(rng.uniform(0.0, 0.9) * (train_seconds * (1 - done) + 0.2 * duration))
        if process.poll() is not None:  # it finished first: check it, then start over
            reader.join()
            assert process.returncode == 0 and _same_weights(_weights(workdir), reference[0])
            assert (workdir / "metrics.json").read_bytes() == reference[1]
            shutil.rmtree(workdir)
            completed += 1
            continue
        process.kill()
        process.wait()
        reader.join()
        kills += 1
        starts = [line for line in lines if line.startswith("Resuming from")]
        eligible += bool(latest)
        if latest and starts:  # each run resumes from the newest checkpoint on disk
            assert starts[0].startswith(f"Resuming from {latest} "), (latest, starts[0])
            resumed += 1
    # Runs with a checkpoint behind them resumed from it (one may be killed in the instant
    # between its start-up line and its "Resuming from" line).
    assert eligible >= 3 and resumed >= eligible - 1, (eligible, resumed, completed)
    final = run_python(args)
    assert final.returncode == 0, final.stderr[-2000:]
    assert _same_weights(_weights(workdir), reference[0])
    assert (workdir / "metrics.json").read_bytes() == reference[1]
    assert json.loads(reference[1])["steps"] == 120


def _bad_input(case, toy_bert, tmp_path):
    """The extra flags of a bad-input ``case`` and what its one error line must say."""
    if case == "not_saved_model":
        (tmp_path / "empty").mkdir()
        return [f"--model.encoder={tmp_path / 'empty'}"], "holds no SavedModel"
    if case == "vocab_mismatch":
        from tfpretrain.encoders.toy import TOY_WORDS, export_toy_bert

        bigger = export_toy_bert(str(tmp_path / "bigger"),
                                 words=TOY_WORDS + [f"w{i}" for i in range(300)])
        return [f"--model.preprocessor={bigger[1]}"], "vocabulary but encoder"
    if case == "too_long":
        return ["--model.seq_length=100000"], "longer than encoder"
    if case == "bad_utf8_error":
        path = tmp_path / "bad.csv"
        path.write_bytes(b"text,label\ngood film,pos\nbad \xff\xfe plot,neg\n" * 4)
        return [f"--data.train_file={path}", "--data.invalid_utf8=error"], "line 3: invalid UTF-8"
    if case == "label_out_of_range":
        test = write_csv(tmp_path / "t.csv", [("good film", "maybe")])
        return [f"--data.test_file={test}"], "row 2: label 'maybe' is not one of"
    if case == "single_class":
        train = write_csv(tmp_path / "one.csv", [(t, "pos") for t, _ in TOY_ROWS])
        return [f"--data.train_file={train}"], "single class"
    if case == "unwritable_workdir":
        (tmp_path / "a_file").write_text("x")
        return [f"--workdir={tmp_path / 'a_file' / 'run'}"], "cannot write to workdir"
    if case == "bad_choice":
        return ["--model.truncation=middle"], "truncation must be one of"
    if case == "score_not_a_number":  # regression
        train = write_csv(tmp_path / "s.csv", [("good film", "4.5"), ("bad plot", "high")] * 3)
        return ([f"--data.train_file={train}", "--model.task=regression"],
                "s.csv, row 3: label 'high' is not a number")
    if case == "third_text_column":  # pairs take two
        return ["--data.text_key=text,text,text"], "names 3 text columns"
    if case == "unknown_label_in_a_set":  # multi-label
        train = write_csv(tmp_path / "m.csv", [("good film", "a|b"), ("bad plot", "b")] * 3)
        test = write_csv(tmp_path / "mt.csv", [("good film", "a|c")])
        return ([f"--data.train_file={train}", f"--data.validation_file={train}",
                 f"--data.test_file={test}"],
                "mt.csv, row 2: label 'c' is not one of the training labels")
    raise AssertionError(case)


BAD_INPUTS = ["not_saved_model", "too_long", "bad_utf8_error", "label_out_of_range",
              "single_class", "unwritable_workdir", "bad_choice", "score_not_a_number",
              "third_text_column", "unknown_label_in_a_set"]


@pytest.fixture(scope="module")
def bad_input_runs(toy_bert, tmp_path_factory):
    """{case: (result, workdir, message)} of every ``BAD_INPUTS`` case, run in one Python."""
    base = tmp_path_factory.mktemp("bad_input")
    toy = write_toy_csv(base)
    commands, expected = [], {}
    for case in BAD_INPUTS:
        (base / case).mkdir()
        extra, message = _bad_input(case, toy_bert, base / case)
        expected[case] = (base / case / "run", message)
        commands.append(toy_recipe_args(toy_bert, toy, base / case / "run", *extra))
    results = run_in_one_process(commands)
    return {case: (result, *expected[case]) for case, result in zip(BAD_INPUTS, results)}


def _assert_one_error_line(result, workdir, message):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (workdir / "metrics.json").exists() and not (workdir / "export").exists()


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_matrix(bad_input_runs, case):
    result, workdir, message = bad_input_runs[case]
    assert result.seconds < 30  # refused before any training
    _assert_one_error_line(result, workdir, message)


@pytest.mark.slow  # 16 s: exports a second toy encoder
def test_a_preprocessor_with_another_vocabulary_is_refused(toy_bert, toy_csv, tmp_path):
    extra, message = _bad_input("vocab_mismatch", toy_bert, tmp_path)
    result = run_python(toy_recipe_args(toy_bert, toy_csv, tmp_path / "run", *extra), timeout=120)
    _assert_one_error_line(result, tmp_path / "run", message)


@pytest.mark.slow  # a recipe run: the default suite stays under 15 minutes
def test_invalid_utf8_is_replaced_and_counted_by_default(toy_bert, toy_csv, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"text,label\n" + b"good \xff film,pos\nbad plot,neg\n" * 8)
    result = run_python(toy_recipe_args(toy_bert, toy_csv, tmp_path / "run",
                                        f"--data.train_file={path}", "--train.epochs=1",
                                        "--export.enabled=false"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"warning: {path}: replaced 8 invalid UTF-8 sequence(s)" in result.stderr


def test_serving_rejects_the_wrong_dtype_clearly(toy_bert, tmp_path):
    from tfpretrain.encoders.bert import load_bert_encoder
    from tfpretrain.export import export_text_classifier
    from tfpretrain.models import build_bert_classifier

    loaded = load_bert_encoder(*toy_bert)
    export_text_classifier(build_bert_classifier(loaded.layer, 2), ["neg", "pos"],
                           str(tmp_path / "e"), loaded.preprocessor, 16)
    serve = tf.saved_model.load(str(tmp_path / "e")).signatures["serving_default"]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="string"):
        serve(text=tf.constant([1.0, 2.0]))
    out = serve(text=tf.constant(["", ""]))
    assert out["probabilities"].shape == (2, 2)
    # The export holds no absolute path of the machine that built it (the vocabulary is an asset).
    for root, _, names in os.walk(tmp_path / "e"):
        for name in names:
            content = open(os.path.join(root, name), "rb").read()
            assert (str(tmp_path).encode() not in content
                    and toy_bert[1].encode() not in content), name


@pytest.mark.parametrize("member", ["gt/model/../../evil.txt", "/etc/evil", "gt/model/link"])
def test_zoo_refuses_archive_members_that_escape(tmp_path, member):
    archive = tmp_path / "crafted.whl"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("gt/model/config.json", "{}")
        info = zipfile.ZipInfo(member)
        if member.endswith("link"):
            info.external_attr = (0o120777 << 16)  # a symbolic link to /etc/passwd
            z.writestr(info, "/etc/passwd")
        else:
            z.writestr(info, "x")
    with zipfile.ZipFile(archive) as z, pytest.raises(zoo.PresetError,
                                                      match="refusing archive member"):
        converters.extract_members(z, "gt/model/" if member.startswith("gt") else "/",
                            str(tmp_path / "out"))
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


def test_nothing_in_the_package_unpickles():
    for folder in ("tfpretrain", "recipes"):
        for root, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in (n for n in names if n.endswith(".py")):
                source = open(os.path.join(root, name), encoding="utf-8").read()
                assert "pickle" not in source and "allow_pickle=True" not in source, name
                assert ("yaml.load(" not in source
                        and "eval(" not in source.replace("_eval(", "")), name


@pytest.mark.slow  # a recipe run: the default suite stays under 15 minutes
def test_a_full_disk_is_one_line_not_a_traceback(toy_bert, toy_csv, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(tiny)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs permission to mount a small tmpfs (root)")
    try:
        result = run_python(toy_recipe_args(toy_bert, toy_csv, tiny / "run"), timeout=120)
    finally:
        subprocess.run(["umount", str(tiny)], capture_output=True)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # like the SIGTERM test: a toy run interrupted and resumed (~60 s)
def test_ctrl_c_checkpoints_exits_130_with_one_line_and_the_rerun_resumes(toy_bert, toy_csv,
                                                                         tmp_path):
    args = toy_recipe_args(toy_bert, toy_csv, tmp_path / "run", "--train.epochs=20",
                           "--train.checkpoint_every=100000", "--export.enabled=false")
    process = _popen(args)
    next(line for line in process.stdout if line.lstrip().startswith("epoch"))  # training now
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "error: interrupted (Ctrl-C) at step" in stderr and "Traceback" not in stderr
    stopped_at = int(stderr.split("interrupted (Ctrl-C) at step ")[1].split(":")[0])
    result = run_python(args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"(step {stopped_at}," in result.stdout and "Resuming from" in result.stdout
