"""End-to-end runs of every recipe on toy inputs, and its command-line contract."""

import json
import os

import numpy as np
import pytest

from tests.conftest import (
    CPP_LOG_LINE,
    ROOT,
    TOY_ROWS,
    kill_9_once_checkpointed,
    run_in_one_process,
    run_python,
    saved_model_cli_serving,
    toy_recipe_args,
    write_csv,
    write_toy_csv,
)
from tfpretrain import tflite


def test_bert_text_classifier_end_to_end(toy_bert, toy_csv, tmp_path):
    workdir = tmp_path / "run"
    result = run_python(toy_recipe_args(toy_bert, toy_csv, workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not CPP_LOG_LINE.search(result.stderr + result.stdout), result.stderr[:3000]
    out = result.stdout
    assert "replicas 1 | global batch 8 | steps/epoch 6 | total steps 36" in out
    assert "trainable parameters" in out and "Summary" in out
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["steps"] == 36
    assert metrics["test"]["accuracy"] == 1.0  # the toy task is separable by word identity
    assert np.array(metrics["test"]["confusion_matrix"]).sum() == 6
    assert metrics["label_names"] == ["neg", "pos"]
    assert len(metrics["validation_history"]) == 6
    for artifact in ("config.json", "report.md", "confusion_matrix.png", "learning_curves.png",
                     "export/saved_model.pb", "checkpoints/checkpoint"):
        assert (workdir / artifact).exists(), artifact
    assert any(f.startswith("events") for f in os.listdir(workdir / "logs" / "train"))
    assert "tflite" not in metrics and not (workdir / "tflite").exists()
    report = (workdir / "report.md").read_text()
    for section in ("## Data", "## Encoder", "## Hyper-parameters", "## Results",
                    "### Per class (test)", "![confusion matrix](confusion_matrix.png)",
                    "![learning curves](learning_curves.png)", "`predict_embeddings`",
                    "### Serve it with TF Serving (REST)", "## Reproduce"):
        assert section in report, section
    request = json.loads((workdir / "request.json").read_text())
    assert request["signature_name"] == "serving_default" and len(request["instances"]) == 2
    line = [row for row in out.splitlines() if row.startswith("export check")][0]
    assert float(line.split("max abs diff ")[1].split()[0]) <= 1e-5
    serving = saved_model_cli_serving(workdir / "export")
    assert "dtype: DT_STRING" in serving and "name: serving_default_text:0" in serving
    for key in ("probabilities", "label_id", "label"):
        assert f"outputs['{key}']" in serving
    # --config reruns the saved configuration (here: nothing left to train, it resumes at the end).
    again = run_python(["-m", "recipes.bert_text_classifier", "--config",
                        str(workdir / "config.json"), "--export.enabled=false"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from" in again.stdout


@pytest.mark.slow  # 70 s; tests/test_export.py converts at any length by default
def test_tflite_export_writes_both_models_at_any_length_and_scores_them(toy_bert, toy_csv,
                                                                         tmp_path):
    workdir = tmp_path / "run"
    result = run_python(toy_recipe_args(toy_bert, toy_csv, workdir, "--export.tflite=true"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    # Both quantized models, run through the TFLite interpreter on the test split.
    for variant in ("dynamic_range", "int8"):
        info = metrics["tflite"][variant]
        assert (workdir / info["file"]).stat().st_size == info["bytes"] > 0
        assert info["accuracy"] == 1.0, variant
        runner = tflite.interpreter(str(workdir / info["file"])).get_signature_runner()
        inputs = runner.get_input_details()
        assert all(list(inputs[name]["shape_signature"]) == [-1, -1] for name in inputs)  # any
    assert (workdir / "tflite" / "vocab.txt").exists()
    report = (workdir / "report.md").read_text()
    assert "### TFLite" in report and "`tflite/model_int8.tflite`" in report


@pytest.mark.slow  # 45 s: two recipe runs (tests/test_train.py covers the loop by default)
def test_epochs_auto_says_what_it_chose_and_max_minutes_stops_evaluates_exports(
        toy_bert, toy_csv, tmp_path):
    workdir = tmp_path / "run"
    args = toy_recipe_args(toy_bert, toy_csv, workdir, "--train.epochs=0",
                           "--train.max_minutes=0.0001")
    result = run_python(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("epochs auto: 7 (48 examples, 2 classes, at least 2 epochs and 40 steps); evaluation "
            "at each epoch end; early stop after 3 evaluations without improvement"
            in result.stdout)
    assert "stopping: train.max_minutes=0.0001 reached at step 1 of 42" in result.stdout
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["stopped_by"] == "time" and metrics["budget"]["epochs"] == 7
    assert metrics["steps"] == 1 and metrics["validation_history"][-1]["step"] == 1
    assert "accuracy" in metrics["test"] and (workdir / "export" / "saved_model.pb").exists()
    again = run_python(args)  # the time is used up: it resumes, trains nothing, finishes again
    assert again.returncode == 0 and "Resuming from" in again.stdout, again.stderr[-3000:]
    assert json.loads((workdir / "metrics.json").read_text())["steps"] == 1


@pytest.mark.slow  # 30 s; tests/test_train.py covers each option in the loop by default
def test_head_warm_up_and_fine_tuning_options_run_through_the_recipe(toy_bert, toy_csv, tmp_path):
    workdir = tmp_path / "run"
    result = run_python(toy_recipe_args(
        toy_bert, toy_csv, workdir, "--train.epochs=1", "--train.head_epochs=2",
        "--train.average_decay=0.9", "--train.layer_decay=0.8", "--train.label_smoothing=0.1"))
    assert result.returncode == 0, result.stderr[-3000:]
    # The head trains first on features of the frozen encoder (6 batches x 2 epochs), then all.
    assert ("head warm-up on features of the frozen encoder: replicas 1 | global batch 8 | "
            "steps/epoch 6 | total steps 12" in result.stdout)
    assert (workdir / "head" / "checkpoints" / "ckpt-12.index").exists()
    # The averaged weights are the ones exported: the export matches the model in memory.
    line = [row for row in result.stdout.splitlines() if row.startswith("export check")][0]
    assert float(line.split("max abs diff ")[1].split()[0]) <= 1e-5


@pytest.mark.slow  # 60 s; tests/test_keras_bert.py covers the encoder, LoRA and merging
def test_keras_native_encoder_with_lora_trains_adapters_and_exports_them_merged(
        toy_bert, toy_csv, tmp_path):
    workdir = tmp_path / "run"
    result = run_python(toy_recipe_args(toy_bert, toy_csv, workdir, "--model.implementation=keras",
                                        "--model.lora_rank=4", "--train.learning_rate=2e-2"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    header = next(line for line in out.splitlines() if line.startswith("replicas "))
    assert ("Keras-native (KerasHub BertBackbone, tanh GELU, dropout 0.1, float32), LoRA rank 4"
            in header)
    trainable = int(header.split("trainable parameters ")[1].split(" |")[0].replace(",", ""))
    full = run_python(["-c", "import tfpretrain as tp, sys; "
                             "e = tp.load_bert_encoder(*sys.argv[1:]); "
                             "print(tp.count_parameters(e.layer.trainable_variables))", *toy_bert])
    assert trainable < 0.25 * int(full.stdout.split()[-1])  # of a tiny toy; far less on MiniLM
    assert "export: LoRA adapters merged into the weights they adapt" in out
    line = next(row for row in out.splitlines() if row.startswith("export check"))
    assert float(line.split("max abs diff ")[1].split()[0]) <= 1e-5
    assert json.loads((workdir / "metrics.json").read_text())["test"]["accuracy"] >= 0.8


@pytest.mark.slow  # 75 s; the kill matrix (tests/test_reliability.py) covers the SavedModel path
def test_kill_9_mid_training_of_the_keras_native_encoder_then_rerun_resumes(toy_bert, toy_csv,
                                                                             tmp_path):
    workdir = tmp_path / "run"
    args = toy_recipe_args(toy_bert, toy_csv, workdir, "--train.epochs=15",
                           "--train.checkpoint_every=5", "--export.enabled=false",
                           "--model.implementation=keras")
    kill_9_once_checkpointed(args, workdir)
    assert not (workdir / "metrics.json").exists()
    result = run_python(args)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = [line for line in result.stdout.splitlines() if line.startswith("Resuming from")]
    assert resumed and "step 0" not in resumed[0]
    assert json.loads((workdir / "metrics.json").read_text())["steps"] == 90


# Refusals before any training: (extra flags of a toy run, or a whole command; what the one
# error line says). Run in one Python (run_in_one_process): one TensorFlow import for all.
REFUSALS = {
    "unknown_preset": (["--model.encoder=no_such_preset"], "'no_such_preset' is not a preset"),
    "missing_file": (["--data.train_file=/nonexistent/train.csv"],
                     "/nonexistent/train.csv does not exist"),
    "no_label_column": (["--data.label_key=category"], "no label column 'category'"),
    "not_an_int": (["--train.epochs=x"], "train.epochs expects int"),
    "unknown_key": (["--bogus=1"], "unknown config key 'bogus'"),
    "remote_workdir": (["--workdir=gs://bucket/run"], "gs:// run directories are not supported"),
    "empty_split": (["--data.test_file={tmp}/empty.csv"], "has no rows"),
    # The encoder does not exist: the refusal must come before anything loads it.
    "unknown_best_metric": (["--train.best_metric=acc", "--model.encoder={tmp}/no_encoder"],
                            "train.best_metric='acc' is not a metric of this task"),
    "use_tflite": (["-m", "recipes.use_text_classifier", "--workdir={workdir}",
                    "--export.tflite=true"], "export.tflite is for recipes.bert_text_classifier"),
    "use_with_a_bert": (None, "strings"),  # a BERT encoder is not strings -> vectors
}


@pytest.fixture(scope="module")
def refusals(toy_bert, tmp_path_factory):
    base = tmp_path_factory.mktemp("refusals")
    toy = write_toy_csv(base)
    (base / "empty.csv").write_text("text,label\n")
    commands = []
    for case, (flags, _) in REFUSALS.items():
        if case == "use_with_a_bert":
            commands.append(_use_args(toy_bert[0], toy, base / case / "run"))
            continue
        flags = [flag.replace("{tmp}", str(base)).replace("{workdir}", str(base / case / "run"))
                 for flag in flags]
        commands.append(flags if flags[0] == "-m" else
                        toy_recipe_args(toy_bert, toy, base / case / "run", *flags))
    results = run_in_one_process(commands)
    return {case: (result, base / case / "run") for case, result in zip(REFUSALS, results)}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_input_gets_one_line_and_exit_2(refusals, case):
    result, workdir = refusals[case]
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and REFUSALS[case][1] in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (workdir / "metrics.json").exists() and not (workdir / "checkpoints").exists()
    assert not os.path.exists(os.path.join(ROOT, "gs:"))  # no local folder named after a scheme


HELP_FLAGS = [
    ("bert_text_classifier", "--model.encoder=minilm_l6 "),
    ("use_text_classifier", "--model.encoder=minilm_l6_sentence "),
    ("embed", "--encoder=minilm_l6_sentence "),
    ("resnet_pretrain", "--export.preset=digits_resnet "),
    ("resnet_image_classifier", "--model.encoder=glyphs_resnet "),
    ("bert_mlm_pretrain", "--model.whole_word=True "),
    ("bert_token_classifier", "--data.tag_scheme=auto "),
]


def test_help_lists_flags():
    results = run_in_one_process([["-m", f"recipes.{recipe}", "--help"]
                                  for recipe, _ in HELP_FLAGS])
    for result, (recipe, flag) in zip(results, HELP_FLAGS):
        assert result.returncode == 0, (recipe, result.stderr[-2000:])
        assert flag in result.stdout and "--debug" in result.stdout, recipe
        assert "--verbose" in result.stdout, recipe


def test_help_prints_no_tensorflow_logging():
    """An entry point's own process: the quiet start-up of tfpretrain/_entry.py."""
    result = run_python(["-m", "recipes.bert_text_classifier", "--help"], timeout=120)
    assert result.returncode == 0 and "--model.encoder=minilm_l6 " in result.stdout
    assert not CPP_LOG_LINE.search(result.stderr), result.stderr[:3000]


@pytest.mark.slow  # 14 s in the default suite, which must stay under 15 min
def test_verbose_and_tf_cpp_min_log_level_bring_tensorflow_logging_back():
    """The quiet default is the entry points' doing: --verbose or TF_CPP_MIN_LOG_LEVEL=0 undo it."""
    verbose = run_python(["-m", "recipes.embed", "--verbose", "--help"], timeout=120)
    by_env = run_python(["-m", "recipes.embed", "--help"], env={"TF_CPP_MIN_LOG_LEVEL": "0"},
                        timeout=120)
    for result in (verbose, by_env):
        assert result.returncode == 0 and CPP_LOG_LINE.search(result.stderr), result.stderr


def test_tensorflows_abseil_log_level_can_be_set():
    """_entry sets the level through a mangled Abseil symbol: fails if TensorFlow's Abseil moves."""
    from tfpretrain import _entry

    assert _entry.set_min_log_level(3)
    assert _entry.is_entry_point(["python", "-m", "recipes.embed", "--help"])
    assert _entry.is_entry_point(["python", "-X", "faulthandler", "-m", "tfpretrain.predict"])
    assert not _entry.is_entry_point(["python", "my_script.py", "-m", "recipes.embed"])
    assert _entry.is_entry_point(["python", os.path.join(ROOT, "benchmarks", "serve_speed.py")])
    assert not _entry.is_entry_point(["python", "-c", "import tfpretrain", "-m", "recipes.embed"])


_ALLOCATOR_STATS = """
import os, sys
from tfpretrain import _entry
if sys.argv[1] == "unset":
    os.environ.pop("TF_CPU_ALLOCATOR_USE_BFC", None)
_entry.pool_cpu_memory()
print("bfc", os.environ["TF_CPU_ALLOCATOR_USE_BFC"])
import tensorflow as tf
x = tf.random.uniform([500, 500])
y = x @ x
try:
    print("peak", tf.config.experimental.get_memory_info("CPU:0")["peak"])
except ValueError as error:  # the default CPU allocator keeps no statistics
    print(error)
"""


def test_entry_points_give_tensorflow_a_pooling_cpu_allocator_unless_told_otherwise():
    """pool_cpu_memory() before TensorFlow loads switches its CPU device to the BFC allocator
    (which keeps statistics); an explicit value in the environment wins. Whether TensorFlow's
    default CPU allocator keeps statistics depends on the machine (seen: not on an AVX2-only AMD
    EPYC, yes on an AVX-512 Xeon), so the told-otherwise run checks the setting it ran with."""
    from tfpretrain import _entry

    environ = {"TF_CPU_ALLOCATOR_USE_BFC": "false"}
    _entry.pool_cpu_memory(environ)
    assert environ == {"TF_CPU_ALLOCATOR_USE_BFC": "false"}
    pooled = run_python(["-c", _ALLOCATOR_STATS, "unset"], timeout=120)
    lines = pooled.stdout.splitlines()
    assert pooled.returncode == 0 and lines[0] == "bfc true", pooled.stderr[-2000:]
    assert lines[1].startswith("peak ") and int(lines[1].split()[1]) >= 2 * 500 * 500 * 4  # x, y
    told = run_python(["-c", _ALLOCATOR_STATS, "keep"], env={"TF_CPU_ALLOCATOR_USE_BFC": "false"},
                      timeout=120)
    assert told.returncode == 0 and told.stdout.startswith("bfc false\n"), told.stderr[-2000:]


def test_huge_pages_apply_to_glibc_2_35_and_later_with_transparent_huge_pages_on():
    from tfpretrain import _entry

    env = {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    chosen = _entry.huge_pages_environment(env, ("glibc", "2.36"), "madvise")
    assert chosen == {"PATH": "/bin",
                      "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    assert _entry.huge_pages_environment({}, ("glibc", "2.35"), "always") == {
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    for environ, libc, mode in [({}, ("glibc", "2.31"), "madvise"),  # no such tunable yet
                                ({}, ("glibc", "2.36"), "never"),
                                ({}, ("", ""), "madvise"),  # macOS, musl
                                ({"TFPRETRAIN_HUGE_PAGES": "0"}, ("glibc", "2.36"), "madvise"),
                                (chosen, ("glibc", "2.36"), "madvise")]:  # done: no loop
        assert _entry.huge_pages_environment(environ, libc, mode) is None, (environ, libc, mode)
    assert _entry.kernel_thp_mode("/nonexistent") == ""


def test_an_entry_point_reexecutes_itself_once_with_huge_pages(tmp_path):
    import platform

    from tfpretrain import _entry

    if _entry.huge_pages_environment({}, platform.libc_ver(), _entry.kernel_thp_mode()) is None:
        pytest.skip("this machine's C library or kernel has no transparent huge pages for malloc")
    log = tmp_path / "starts.txt"
    (tmp_path / "sitecustomize.py").write_text(  # runs at every interpreter start
        "import os\n"
        "tunables = os.environ.get('GLIBC_TUNABLES', '-')\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(f'{os.getpid()} {tunables}\\n')\n"
        "if 'hugetlb' in tunables:\n"
        "    os._exit(0)  # re-executed: what happens next is any run's business\n")
    path = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    result = run_python(["-m", "recipes.embed", "--help"], env={"PYTHONPATH": path}, timeout=120)
    assert result.returncode == 0, result.stderr
    starts = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert [tunables for _, tunables in starts] == ["-", "glibc.malloc.hugetlb=1"], starts
    assert starts[0][0] == starts[1][0]  # the same process: exec, not a child


def _use_args(encoder, toy_csv, workdir, *extra):
    return ["-m", "recipes.use_text_classifier", f"--workdir={workdir}",
            f"--model.encoder={encoder}", f"--data.train_file={toy_csv['train']}",
            f"--data.validation_file={toy_csv['validation']}",
            f"--data.test_file={toy_csv['test']}", "--train.global_batch_size=8", *extra]


def _export_difference(out):
    line = [row for row in out.splitlines() if row.startswith("export check")][0]
    return float(line.split("max abs diff ")[1].split()[0])


@pytest.mark.slow  # 40 s: two recipe runs (the frozen recipe runs by default in the test below)
def test_use_text_classifier_frozen_caches_embeddings_across_runs(toy_use, toy_csv, tmp_path):
    toy_csv["test"] = write_csv(tmp_path / "test.csv", TOY_ROWS[::-1])  # not the validation data
    first = run_python(_use_args(toy_use["from_bert"], toy_csv, tmp_path / "a",
                                 "--train.head_epochs=40"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count(": cached embeddings (") == 3 and "reusing" not in first.stdout
    assert ("training the head on cached embeddings: replicas 1 | global batch 8 | "
            "steps/epoch 6 | total steps 240" in first.stdout
            and "end to end" not in first.stdout)
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == 1.0 and metrics["label_names"] == ["neg", "pos"]
    assert _export_difference(first.stdout) <= 1e-5
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (saved["train"]["head_epochs"], saved["train"]["head_learning_rate"]) == (40, 1e-3)
    # A different head reuses every split's embeddings.
    second = run_python(_use_args(toy_use["from_bert"], toy_csv, tmp_path / "b",
                                  "--train.head_epochs=40", "--model.hidden_units=",
                                  "--model.dropout=0"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("reusing cached embeddings") == 3


# "call" runs in the slow suite (16 s): the same recipe path as "signature" but for the lookup.
@pytest.mark.parametrize("variant", [pytest.param("call", marks=pytest.mark.slow), "signature"])
def test_use_text_classifier_takes_any_strings_to_vectors_model(toy_use, toy_csv, tmp_path,
                                                                variant):
    result = run_python(_use_args(toy_use[variant], toy_csv, tmp_path / "run",
                                  "--train.head_epochs=2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dim 8" in result.stdout and _export_difference(result.stdout) <= 1e-5


# 34 s: the frozen recipe runs by default (above); tests/test_sentence.py fine-tunes the encoder.
@pytest.mark.slow
def test_use_text_classifier_fine_tunes_end_to_end(toy_use, toy_csv, tmp_path):
    result = run_python(_use_args(toy_use["from_bert"], toy_csv, tmp_path / "run",
                                  "--model.trainable=true", "--train.head_epochs=2",
                                  "--train.epochs=2", "--train.learning_rate=1e-3"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training the head on cached embeddings" in result.stdout
    assert "training the model end to end" in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 12 and (tmp_path / "run" / "head" / "checkpoints").is_dir()
    assert _export_difference(result.stdout) <= 1e-5
    assert (tmp_path / "run" / "export" / "saved_model.pb").exists()


@pytest.mark.slow  # 15 s in the default suite, which must stay under 15 min
def test_embed_writes_npy_metadata_and_projector_files(toy_use, tmp_path):
    texts = ["good film", "bad\tplot with a tab", "Café 東京"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    out = tmp_path / "emb"
    result = run_python(["-m", "recipes.embed", f"--encoder={toy_use['call']}",
                         f"--text_file={tmp_path / 'texts.txt'}", f"--output={out}",
                         "--projector=true"])
    assert result.returncode == 0, result.stderr[-3000:]
    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.shape == (3, 8) and embeddings.dtype == np.float32
    import tensorflow as tf
    expected = tf.saved_model.load(toy_use["call"])(tf.constant(texts)).numpy()
    np.testing.assert_allclose(embeddings, expected, atol=1e-6)
    assert (out / "metadata.tsv").read_text(encoding="utf-8").splitlines() == [
        "good film", "bad plot with a tab", "Café 東京"]
    assert 'tensor_path: "tensors.tsv"' in (out / "projector_config.pbtxt").read_text()
    assert np.loadtxt(out / "tensors.tsv", delimiter="\t").shape == (3, 8)
    missing = run_python(["-m", "recipes.embed", f"--encoder={toy_use['call']}",
                          "--text_file=/no/file"])
    assert missing.returncode == 2 and "error: --text_file /no/file: no such file" in missing.stderr
