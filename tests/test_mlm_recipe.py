"""recipes.bert_mlm_pretrain end to end on toy corpora: from scratch, continued, fine-tuned
after."""

import json
import os
import textwrap

import pytest

from tests.conftest import run_python, toy_recipe_args

SENTENCES = ["the cat sat on the mat", "the dog ate the bone", "the bird sang a song",
             "my team won the cup", "our bank made a profit"]


def _corpus(path, lines=400):
    # 25 different lines (the held-out documents are chosen by text: copies go together), in
    # which each sentence appears beside every other.
    n = len(SENTENCES)
    path.write_text("\n".join(f"{SENTENCES[i % n]} . {SENTENCES[i // n % n]}"
                              for i in range(lines)) + "\n")
    return str(path)


def _scratch_args(corpus, workdir, *extra):
    # BERT's 15% of pieces, not the recipe's 60% of words: the toy corpus is learned within the
    # test's budget when most of each window stays visible.
    return ["-m", "recipes.bert_mlm_pretrain", f"--workdir={workdir}", f"--data.path={corpus}",
            "--data.heldout_fraction=0.2", "--model.vocab_size=120", "--model.seq_length=32",
            "--model.mask_rate=0.15", "--model.whole_word=false",
            "--model.max_predictions=4", "--model.hidden_dim=32", "--model.intermediate_dim=64",
            "--model.dropout=0.0", "--train.epochs=25", "--train.global_batch_size=16",
            "--train.learning_rate=5e-3", *extra]


# The from-scratch run trains long enough to fill [MASK] reliably (~2 min): the three tests that use
# it are in the slow suite (.ci/run runs it), and so is the continued-pretraining test below;
# tests/test_mlm.py covers the recipe's pieces by default.
@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlm")
    workdir = base / "run"
    result = run_python(_scratch_args(_corpus(base / "corpus.txt"), workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


@pytest.mark.slow
def test_from_scratch_learns_the_corpus_and_exports_a_tf_hub_pair(scratch_run):
    workdir, result = scratch_run
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["mode"] == "scratch"
    assert metrics["heldout_end"]["accuracy"] >= metrics["most_frequent_token"]["accuracy"] + 0.3
    assert metrics["heldout_end"]["loss"] < metrics["heldout_start"]["loss"] - 1.0
    for name in ("encoder/saved_model.pb", "preprocessor/saved_model.pb", "vocab.txt"):
        assert (workdir / "export" / name).exists(), name
    assert (workdir / "initial" / "encoder" / "saved_model.pb").exists()
    assert "most-frequent-token baseline" in result.stdout and "learning_curves.png" in (
        workdir / "report.md").read_text()


@pytest.mark.slow
def test_exported_mlm_fills_mask_in_a_fresh_process(scratch_run):
    workdir, _ = scratch_run
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf, tensorflow_text
        encoder = tf.saved_model.load("{workdir}/export/encoder")
        preprocessor = tf.saved_model.load("{workdir}/export/preprocessor")
        vocab = open("{workdir}/export/vocab.txt").read().split("\\n")
        for sentence, word in [("the cat sat on the mat", "mat"), ("the dog ate the bone", "bone")]:
            tokens = preprocessor.tokenize(tf.constant([sentence]))
            inputs = preprocessor.bert_pack_inputs([tokens], seq_length=tf.constant(16))
            ids = inputs["input_word_ids"].numpy()
            position = int(np.where(ids[0] == vocab.index(word))[0][0])
            ids[0, position] = vocab.index("[MASK]")
            inputs = dict(inputs, input_word_ids=tf.constant(ids),
                          masked_lm_positions=tf.constant([[position]]))
            logits = encoder.mlm(inputs)["mlm_logits"]
            print(sentence.replace(word, "[MASK]"), "->", vocab[int(tf.argmax(logits[0, 0]))])
    """)
    result = run_python(["-c", script], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the cat sat on the [MASK] -> mat" in result.stdout
    assert "the dog ate the [MASK] -> bone" in result.stdout


@pytest.mark.slow
def test_text_classifier_fine_tunes_the_pretrained_encoder(scratch_run, toy_csv, tmp_path):
    workdir, _ = scratch_run
    pair = (str(workdir / "export" / "encoder"), str(workdir / "export" / "preprocessor"))
    result = run_python(toy_recipe_args(pair, toy_csv, tmp_path / "classifier",
                                        "--export.enabled=false"))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "classifier" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.8


@pytest.mark.slow  # 32 s a run; tests/test_mlm.py covers the pieces (resume, export) by default
@pytest.mark.parametrize("flags", [
    [],
    pytest.param(["--model.implementation=keras", "--runtime.precision=mixed_bfloat16"],
                 id="keras-bfloat16")])
def test_continued_pretraining_of_a_bert_lowers_its_heldout_loss(toy_bert, tmp_path, flags):
    words = "the team won the match with a great goal and the market made a profit".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(words[i % 5:] + words[:i % 5]) for i in range(300)))
    result = run_python(["-m", "recipes.bert_mlm_pretrain", f"--workdir={tmp_path / 'run'}",
                         f"--model.encoder={toy_bert[0]}", f"--model.preprocessor={toy_bert[1]}",
                         f"--data.path={corpus}", "--data.heldout_fraction=0.2",
                         "--model.seq_length=32", "--train.max_steps=30",
                         "--train.global_batch_size=16", "--train.learning_rate=3e-3", *flags])
    assert result.returncode == 0, result.stderr[-3000:]
    if flags:
        assert "Keras-native" in result.stdout and "bfloat16: " in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    vocab = os.path.join(os.path.dirname(toy_bert[0]), "vocab.txt")
    assert metrics["mode"] == "continued" and metrics["vocab_size"] == sum(1 for _ in open(vocab))
    assert metrics["heldout_end"]["loss"] < metrics["heldout_start"]["loss"]
    assert os.path.exists(tmp_path / "run" / "export" / "preprocessor" / "assets" / "vocab.txt")
    assert not (tmp_path / "run" / "initial").exists()
