"""Sentence pairs, regression and multi-label: data, task metrics, and the recipe end to end."""

import dataclasses
import json
import re

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import (
    NEGATIVE,
    POSITIVE,
    kill_9_once_checkpointed,
    run_python,
    saved_model_cli_serving,
    write_csv,
)
from tfpretrain import predict
from tfpretrain.data.conll import entity_types, read_conll
from tfpretrain.data.pipeline import pack_texts
from tfpretrain.data.text import TextDataConfig, infer_task, load_text_data
from tfpretrain.data.tfds import DataError
from tfpretrain.tasks import make_task
from tfpretrain.tasks.multilabel import multilabel_metrics
from tfpretrain.tasks.regression import regression_metrics

CONLL = ("EU NNP B-ORG\nrejects VBZ O\nGerman JJ B-MISC\n\nPeter NNP B-PER\nBlackburn NNP I-PER\n"
         "\nthe DT O\nfilm NN O\n\nParis NNP B-LOC\nand CC O\nPeter NNP B-PER\n")


@pytest.fixture
def conll_files(tmp_path):
    paths = {}
    for split, copies in (("train", 8), ("validation", 2), ("test", 2)):
        paths[split] = tmp_path / f"{split}.conll"
        paths[split].write_text((CONLL + "\n") * copies)
    return {k: str(v) for k, v in paths.items()}


def test_pairs_and_the_task_are_read_from_the_columns(pair_files):
    config = TextDataConfig(train_file=pair_files["train"], test_file=pair_files["test"],
                            text_key="sentence1,sentence2")
    data = load_text_data(config)
    assert (data.task, data.label_names, data.pairs) == ("classification", ["0", "1"], True)
    (a, b), label = next(iter(data.datasets["train"]))
    assert a.dtype == b.dtype == tf.string and label.dtype == tf.int32
    regression = load_text_data(TextDataConfig(train_file=pair_files["train"],
                                               text_key="sentence1,sentence2", label_key="score"))
    assert regression.task == "regression" and regression.label_names == []
    _, score = next(iter(regression.datasets["validation"]))
    assert score.dtype == tf.float32 and float(score) == 5.0  # row 0: two positive texts


def test_swap_pairs_adds_each_training_pair_in_the_other_order(pair_files):
    config = TextDataConfig(train_file=pair_files["train"], test_file=pair_files["test"],
                            text_key="sentence1,sentence2")
    plain = list(load_text_data(config).datasets["train"].as_numpy_iterator())
    swapped = load_text_data(dataclasses.replace(config, swap_pairs=True)).datasets
    train = list(swapped["train"].as_numpy_iterator())
    assert train == plain + [((b, a), y) for (a, b), y in plain]
    test = list(load_text_data(config).datasets["test"].as_numpy_iterator())
    assert list(swapped["test"].as_numpy_iterator()) == test  # only training pairs are added
    with pytest.raises(DataError, match="swap_pairs=true needs pairs"):
        load_text_data(TextDataConfig(train_file=pair_files["train"], text_key="sentence1",
                                      swap_pairs=True))


def test_task_inference_and_the_conll_entity_types():
    assert infer_task(["0.5", "2", "5.000"]) == "regression"
    assert infer_task(["1", "0", "1"]) == "classification"
    assert infer_task(["PER|LOC", "", "ORG"]) == "multilabel"
    sentences = read_conll("-DOCSTART- -X- O\n\n" + CONLL)
    assert [len(words) for words, _, _ in sentences] == [3, 2, 2, 3]
    assert [entity_types(tags) for _, tags, _ in sentences] == [["MISC", "ORG"], ["PER"], [],
                                                              ["LOC", "PER"]]


def test_multilabel_from_conll_and_from_separated_labels(conll_files, tmp_path):
    data = load_text_data(TextDataConfig(train_file=conll_files["train"],
                                         validation_file=conll_files["validation"]))
    assert data.task == "multilabel" and data.label_names == ["LOC", "MISC", "ORG", "PER"]
    texts, labels = zip(*data.datasets["validation"].take(4).as_numpy_iterator())
    assert texts[0] == b"EU rejects German"
    np.testing.assert_array_equal(labels, [[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0],
                                           [1, 0, 0, 1]])
    tags = write_csv(tmp_path / "tags.csv", [("a", "x|y"), ("b", ""), ("c", "y")] * 4)
    data = load_text_data(TextDataConfig(train_file=tags))
    assert data.task == "multilabel" and data.label_names == ["x", "y"]


@pytest.mark.parametrize("rows, extra, message", [
    ([("a", "b", "1.5"), ("c", "d", "high")], {"label_key": "score"},
     "row 3: label 'high' is not a number (the task is regression)"),
    ([("a", "b", "1"), ("c", "d", "")], {}, "row 3: empty label"),
    ([("a", "b", "1")], {"text_key": "s1,s2,s3"}, "names 3 text columns"),
])
def test_data_that_contradict_the_task_name_the_row(tmp_path, rows, extra, message):
    header = ("s1", "s2", extra.get("label_key", "label"))
    path = write_csv(tmp_path / "t.tsv", rows * 3, header=header, delimiter="\t")
    task = "regression" if "score" in extra.values() else "auto"
    config = TextDataConfig(train_file=path, **{"text_key": "s1,s2", **extra})
    with pytest.raises(DataError, match=re.escape(message)):
        load_text_data(config, task)


def test_a_pair_is_packed_round_robin_with_segment_ids(toy_bert):
    from tfpretrain.encoders.bert import load_bert_encoder

    pre = load_bert_encoder(*toy_bert).preprocessor
    packed = pack_texts(pre, (tf.constant(["good great fun movie love best", "bad"]),
                              tf.constant(["worst plot", "awful actor hate it film"])), 8)
    # [CLS] a [SEP] b [SEP]: the longer text gives up its last tokens first.
    np.testing.assert_array_equal(packed["input_type_ids"], [[0, 0, 0, 0, 0, 1, 1, 1],
                                                             [0, 0, 0, 1, 1, 1, 1, 1]])
    assert packed["input_mask"].numpy().all()


def test_regression_metrics_match_scipy_and_a_constant_prediction_scores_zero():
    import scipy.stats

    gold, predicted = np.array([0.0, 1.2, 2.5, 3.1, 4.8]), np.array([0.4, 1.0, 3.0, 2.9, 4.0])
    metrics = regression_metrics(gold, predicted)
    assert metrics["pearson"] == pytest.approx(scipy.stats.pearsonr(gold, predicted)[0])
    assert metrics["spearman"] == pytest.approx(0.9)  # one swapped pair of five
    assert metrics["mse"] == pytest.approx(np.mean((gold - predicted) ** 2))
    assert regression_metrics(gold, np.ones(5))["spearman"] == 0.0


def test_multilabel_metrics_and_the_threshold_chosen_on_validation():
    gold = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probabilities = np.array([[.9, .1, .42], [.2, .6, .1], [.7, .37, .2], [.1, .2, .3]])
    at_half = multilabel_metrics(gold, probabilities, 0.5, ["a", "b", "c"])
    # predicted {a,c→no}, {b}, {a}, {}: tp 3, fp 0, fn 2 → micro P 1, R 0.6, F1 0.75
    assert at_half["micro_f1"] == pytest.approx(0.75) and at_half["exact_match"] == 0.5
    assert at_half["per_label"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    task = make_task("multilabel", ["a", "b", "c"])
    logits = np.log(probabilities / (1 - probabilities)).astype(np.float32)
    model = tf.keras.Sequential([tf.keras.layers.Lambda(lambda x: x)])
    batches = tf.data.Dataset.from_tensor_slices((logits, gold.astype(np.float32))).batch(2)
    chosen = task.calibrate(model, batches)
    # 0.35 and 0.4 become labels at 0.35 (tp 5, fp 0): F1 1.0; 0.30 would add a false positive.
    assert task.threshold == 0.35 and chosen["threshold"]["validation_micro_f1"] == 1.0
    assert task.evaluate(model, batches)["micro_f1"] == 1.0


def _args(workdir, toy_bert, files, *extra):
    return ["-m", "recipes.bert_text_classifier", f"--workdir={workdir}",
            f"--model.encoder={toy_bert[0]}", f"--model.preprocessor={toy_bert[1]}",
            f"--data.train_file={files['train']}", f"--data.validation_file={files['validation']}",
            f"--data.test_file={files['test']}", "--model.seq_length=16", "--train.epochs=6",
            "--train.global_batch_size=8", "--train.learning_rate=5e-3", "--model.pooling=mean",
            *extra]


def _export_check(stdout):
    line = [row for row in stdout.splitlines() if row.startswith("export check")][0]
    return float(line.split("max abs diff ")[1].split()[0])


@pytest.mark.slow  # a recipe run: the default suite stays under 15 minutes
def test_pair_regression_end_to_end_with_predict_on_pairs(toy_bert, pair_files, tmp_path,
                                                           capsys):
    workdir = tmp_path / "run"
    result = run_python(_args(workdir, toy_bert, pair_files, "--data.text_key=sentence1,sentence2",
                              "--data.label_key=score"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["task"] == "regression" and metrics["test"]["examples"] == 12
    assert metrics["test"]["spearman"] > 0.5, metrics["test"]
    assert _export_check(result.stdout) <= 1e-5
    assert "test Spearman" in result.stdout
    report = (workdir / "report.md").read_text()
    assert "![predicted vs gold](scatter.png)" in report and (workdir / "scatter.png").exists()
    assert "text_a" in report and "text_b" in report
    serving = saved_model_cli_serving(workdir / "export")  # as TF Serving users see it
    assert serving.count("dtype: DT_STRING") == 2 and "outputs['score']" in serving
    assert "serving_default_text_a:0" in serving and "serving_default_text_b:0" in serving
    signature = tf.saved_model.load(str(workdir / "export")).signatures["serving_default"]
    assert sorted(signature.structured_input_signature[1]) == ["text_a", "text_b"]
    assert set(signature.structured_outputs) == {"score"}
    a, b = POSITIVE[0], NEGATIVE[0]
    expected = signature(text_a=tf.constant([a, b]), text_b=tf.constant([b, a]))["score"].numpy()
    table = run_python(["-m", "tfpretrain.predict", "--model", str(workdir / "export"), a, b, b, a,
                        "--json"], timeout=120)
    assert table.returncode == 0, table.stderr[-2000:]
    rows = [json.loads(line) for line in table.stdout.splitlines()]
    assert [r["input"] for r in rows] == [[a, b], [b, a]]
    np.testing.assert_allclose([r["score"] for r in rows], expected, atol=1e-5)
    # An odd number of inputs is a one-line error (in-process: the CLI's start-up is tested above).
    assert predict.main(["--model", str(workdir / "export"), a]) == 2
    assert "two at a time" in capsys.readouterr().err


@pytest.mark.slow  # a recipe run: the default suite stays under 15 minutes
def test_multilabel_end_to_end_threshold_in_the_export(toy_bert, conll_files, tmp_path):
    workdir = tmp_path / "run"
    result = run_python(_args(workdir, toy_bert, conll_files, "--train.epochs=4",
                              "--model.case_segments=true"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    threshold = metrics["threshold"]["value"]
    assert metrics["task"] == "multilabel" and metrics["test"]["threshold"] == threshold
    assert metrics["threshold"]["chosen_on"] == "validation"
    assert set(metrics["test"]["per_label"]) == {"LOC", "MISC", "ORG", "PER"}
    assert _export_check(result.stdout) <= 1e-5
    report = (workdir / "report.md").read_text()
    assert "### Per label (test)" in report and "case segments" in report
    served = tf.saved_model.load(str(workdir / "export")).signatures["serving_default"]
    out = served(text=tf.constant(["Peter Blackburn", "the film", "EU rejects German"]))
    probabilities, labels = out["probabilities"].numpy(), out["labels"].numpy()
    names = np.array(["LOC", "MISC", "ORG", "PER"])
    for p, row in zip(probabilities, labels):
        assert sorted(v.decode() for v in row if v) == sorted(names[p >= threshold])
    table = run_python(["-m", "tfpretrain.predict", "--model", str(workdir / "export"),
                        "Peter Blackburn"], timeout=120)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split() == ["input", "labels"]


@pytest.mark.slow  # 75 s, as the single-text kill test
def test_kill_9_mid_training_of_a_pair_task_then_rerun_resumes(toy_bert, pair_files, tmp_path):
    workdir = tmp_path / "run"
    args = _args(workdir, toy_bert, pair_files, "--data.text_key=sentence1,sentence2",
                 "--train.epochs=8", "--train.checkpoint_every=5", "--export.enabled=false")
    kill_9_once_checkpointed(args, workdir)
    assert not (workdir / "metrics.json").exists()
    resumed = run_python(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [line for line in resumed.stdout.splitlines()
            if line.startswith("Resuming from") and "step 0" not in line]
    fresh = run_python(_args(tmp_path / "fresh", toy_bert, pair_files,
                             "--data.text_key=sentence1,sentence2", "--train.epochs=8",
                             "--train.checkpoint_every=5", "--export.enabled=false"))
    assert fresh.returncode == 0
    # Exact resume: the same metrics as a run that was never killed.
    assert ((workdir / "metrics.json").read_text()
            == (tmp_path / "fresh" / "metrics.json").read_text())


@pytest.mark.network  # downloads the datasets from the TFDS hosts
@pytest.mark.parametrize("name, splits, task, pairs", [
    ("glue/mrpc", {}, "classification", ("sentence1", "sentence2")),
    ("glue/stsb", {}, "regression", ("sentence1", "sentence2")),
    ("glue/qqp", {}, "classification", ("question1", "question2")),
    ("glue/mnli", {"validation_split": "validation_matched",
                   "test_split": "validation_mismatched"}, "classification",
     ("premise", "hypothesis")),
])
def test_glue_pair_datasets_load_and_unlabelled_test_splits_are_never_scored(name, splits, task,
                                                                             pairs):
    data = load_text_data(TextDataConfig(name=name, train_split="train[:200]", **splits))
    assert (data.task, data.text_keys) == (task, pairs)
    # glue/*'s own test splits are unlabelled (-1): left out; MNLI's mismatched split is labelled.
    assert ("test" in data.datasets) == (name == "glue/mnli")
