"""Token classification: tagged files, tag schemes, word-piece windows, entity scores as
conlleval computes them, and the recipe end to end with its raw-text export."""

import json
import random

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import kill_9_once_checkpointed, run_python, saved_model_cli_serving
from tfpretrain.data.conll import Sentence, chunks, read_conll, to_iob2
from tfpretrain.data.tagging import (
    TaggingDataConfig,
    load_tagged_data,
    make_tagging_examples,
    split_words,
    word_windows,
)
from tfpretrain.data.tfds import DataError
from tfpretrain.encoders.toy import TOY_WORDS
from tfpretrain.tasks.tagging import TokenClassification, entity_metrics

# Which toy words are entities (the toy encoder's vocabulary has no names).
ENTITIES = {"minister": "PER", "actor": "PER", "star": "PER", "bank": "ORG", "party": "ORG",
            "government": "ORG", "market": "LOC", "internet": "MISC"}


def _toy_sentences(count, seed):
    rng, sentences = random.Random(seed), []
    for _ in range(count):
        words = [rng.choice(TOY_WORDS) for _ in range(rng.randint(3, 9))]
        tags, previous = [], None
        for word in words:
            kind = ENTITIES.get(word)
            tags.append("O" if kind is None else ("I-" if previous == kind else "B-") + kind)
            previous = kind
        sentences.append((words, tags))
    return sentences


def _write_conll(path, sentences):
    path.write_text("".join("".join(f"{w} X {t}\n" for w, t in zip(words, tags)) + "\n"
                            for words, tags in sentences))
    return str(path)


@pytest.fixture
def tagged_files(tmp_path):
    return {split: _write_conll(tmp_path / f"{split}.txt", _toy_sentences(count, seed))
            for split, count, seed in (("train", 300, 0), ("validation", 40, 1),
                                       ("test", 40, 2))}


# Hand-checked against conlleval's rules (and seqeval 1.2.2's default mode, which agrees):
# 11 gold entities, 11 predicted, 6 correct; 17 of 26 words tagged right.
GOLD = [["B-ORG", "O", "B-PER", "O", "O", "B-LOC", "O"], ["B-PER", "I-PER", "O", "O"],
        ["B-MISC", "O", "O", "O", "B-MISC", "O"], ["B-ORG", "I-ORG", "I-ORG", "I-ORG"],
        ["B-LOC", "O", "B-LOC"], ["B-LOC", "B-LOC"]]
PREDICTED = [["B-ORG", "O", "B-PER", "O", "O", "B-LOC", "O"], ["B-PER", "O", "O", "O"],
             ["I-MISC", "O", "O", "O", "B-ORG", "O"], ["B-LOC", "I-LOC", "B-ORG", "I-ORG"],
             ["B-LOC", "I-LOC", "I-LOC"], ["I-LOC", "B-LOC"]]


def test_entity_scores_match_conlleval_on_hand_checked_sentences():
    m = entity_metrics(GOLD, PREDICTED)
    assert (m["entities"], m["predicted_entities"]) == (11, 11)
    assert m["precision"] == m["recall"] == m["f1"] == pytest.approx(6 / 11)
    assert m["token_accuracy"] == pytest.approx(17 / 26)
    expected = {"LOC": (0.6, 0.6, 0.6), "MISC": (1.0, 0.5, 2 / 3), "ORG": (1 / 3, 0.5, 0.4),
                "PER": (0.5, 0.5, 0.5)}
    assert list(m["per_type"]) == list(expected)
    for kind, scores in expected.items():
        s = m["per_type"][kind]
        assert (s["precision"], s["recall"], s["f1"]) == pytest.approx(scores), kind
    # Confusion over types: British (MISC → ORG), and spans found by one side only.
    types = m["confusion_types"]
    matrix = dict(((g, p), n) for g, row in zip(types, m["confusion_matrix"])
                  for p, n in zip(types, row) if n)
    assert matrix[("MISC", "ORG")] == 1 and matrix[("LOC", "LOC")] == 3
    assert sum(m["confusion_matrix"][-1]) == 11 - 6 - 1  # predicted spans with no gold span


def test_chunks_read_iob_leniently_as_conlleval_does():
    assert chunks(["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]) == {
        ("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5), ("ORG", 5, 6)}


def test_schemes_are_detected_checked_and_converted_to_iob2():
    def sentence(*tags):
        return Sentence(["w"] * len(tags), list(tags), list(range(1, len(tags) + 1)))

    iob1 = [sentence("I-PER", "I-PER", "B-PER", "O", "I-LOC")]
    assert to_iob2(iob1) == ([sentence("B-PER", "I-PER", "B-PER", "O", "B-LOC")], "IOB1")
    iobes = [sentence("S-PER", "B-ORG", "E-ORG", "O", "B-LOC", "I-LOC", "E-LOC")]
    assert to_iob2(iobes)[0][0].tags == ["B-PER", "B-ORG", "I-ORG", "O", "B-LOC", "I-LOC",
                                         "I-LOC"]
    with pytest.raises(DataError, match=r"f, line 3: tag 'E-ORG' after 'O': an E- tag must "
                                        r"follow B- or I- of its type \(IOBES"):
        to_iob2([sentence("S-PER", "O", "E-ORG")], path="f")
    with pytest.raises(DataError, match=r"line 2: .* a B- tag must be followed by I- or E-"):
        to_iob2([sentence("O", "B-ORG", "O", "S-PER")])
    with pytest.raises(DataError, match=r"line 2: tag 'I-PER' after 'O': an I- tag must follow"):
        to_iob2([sentence("O", "I-PER")], "IOB2")
    with pytest.raises(DataError, match=r"line 4: .*in IOB1 a B- tag only separates"):
        to_iob2([sentence("I-PER", "O", "O", "B-LOC")])
    with pytest.raises(DataError, match=r"line 1: tag 'PER' is not O or B-/I-/E-/S-"):
        to_iob2([sentence("PER")])


def test_files_in_conll_and_json_lines_and_their_errors(tmp_path):
    conll = tmp_path / "a.txt"
    conll.write_text("-DOCSTART- -X- O\n\nEU NNP B-ORG I-NP\nrejects VBZ O I-VP\n\n"
                     "Peter NNP B-PER I-NP\n")
    data = load_tagged_data(TaggingDataConfig(train_file=str(conll), validation_file=str(conll),
                                              tag_column=2))
    assert data.tag_names == ["O", "B-ORG", "B-PER"] and data.scheme == "IOB2"
    assert [s.words for s in data.sentences["train"]] == [["EU", "rejects"], ["Peter"]]
    assert data.sentences["train"][1].lines == [6]
    # Without a validation file, every 10th sentence from the first is held out: 0 and 10 of 11.
    many = tmp_path / "many.txt"
    many.write_text("\n\n".join(f"w{i} B-PER" for i in range(11)) + "\n")
    data = load_tagged_data(TaggingDataConfig(train_file=str(many), tag_column=1))
    assert [s.words for s in data.sentences["validation"]] == [["w0"], ["w10"]]
    assert len(data.sentences["train"]) == 9
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"tokens": ["EU", "rejects"], "tags": ["S-ORG", "O"]}\n\n'
                     '{"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "E-PER"]}\n')
    data = load_tagged_data(TaggingDataConfig(train_file=str(jsonl), validation_file=str(jsonl)))
    assert data.scheme == "IOBES" and data.sentences["train"][1].tags == ["B-PER", "I-PER"]
    with pytest.raises(DataError, match=r"a.txt, line 3: no tag in column 5"):
        load_tagged_data(TaggingDataConfig(train_file=str(conll), tag_column=5))
    (tmp_path / "empty.txt").write_text("\n-DOCSTART- -X- O\n\n")
    with pytest.raises(DataError, match=r"empty.txt has no sentences"):
        load_tagged_data(TaggingDataConfig(train_file=str(tmp_path / "empty.txt")))
    unseen = tmp_path / "dev.txt"
    unseen.write_text("EU NNP B-ORG\n\nParis NNP B-LOC\n")
    with pytest.raises(DataError, match=r"dev.txt, line 3: tag 'B-LOC' is not in the training"):
        load_tagged_data(TaggingDataConfig(train_file=str(conll), validation_file=str(unseen),
                                           tag_column=2))
    (tmp_path / "bad.jsonl").write_text('{"tokens": ["EU"], "tags": []}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 1: 1 words and 0 tags"):
        load_tagged_data(TaggingDataConfig(train_file=str(tmp_path / "bad.jsonl")))


def test_long_sentences_are_cut_into_windows_and_every_word_keeps_its_label(toy_bert):
    pre = tf.saved_model.load(toy_bert[1])
    # "\x01" has no word piece (control characters are dropped): it is read as [UNK].
    words = ["the", "goalkeeper", "\x01", "film", *["good"] * 20]
    tags = ["O", "B-PER", "O", "B-ORG", *["O"] * 20]
    sentences = [Sentence(words, tags, list(range(len(words)))), Sentence(["bad"], ["O"], [0])]
    examples = list(make_tagging_examples(sentences, ["O", "B-ORG", "B-PER"], pre, 8))
    assert len(examples) == 6  # 30 pieces in windows of 6, then the one-word sentence
    for inputs, labels in examples:
        ids = inputs["input_word_ids"].numpy()
        assert ids[0] == 2 and ids[-1] == 3 and len(ids) <= 8  # [CLS] ... [SEP]
    labels = np.concatenate([y.numpy() for _, y in examples])
    labelled = labels[labels[:, 0] >= 0]
    assert labelled[:, 1].tolist() == list(range(25))  # every word once, in order
    assert labelled[:, 0].tolist()[:4] == [0, 2, 0, 1] and labelled[-1].tolist() == [0, 24, 1]
    windows = word_windows(tf.ragged.constant([words]), pre, 8)
    first = windows.first_piece.numpy()
    ids = windows.inputs["input_word_ids"].numpy()
    assert ids[first[2][0], first[2][1]] == 1  # [UNK]
    # goalkeeper is 7 pieces (goal ##k ##e ##e ##p ##e ##r) and crosses the first window's edge
    assert first[1].tolist() == [0, 2] and first[2].tolist() == [1, 3]
    assert first[3].tolist() == [1, 4]


def test_how_words_are_written_reaches_every_piece_of_the_word(toy_bert):
    pre = tf.saved_model.load(toy_bert[1])
    windows = word_windows(tf.ragged.constant([["The", "GOALKEEPER", "film", "1996"]]), pre, 32,
                           cases=True)
    ids = windows.inputs["input_word_ids"].numpy()[0]
    cases = windows.inputs["input_case_ids"].numpy()[0]
    length = int(windows.inputs["input_mask"].numpy().sum())
    # [CLS] The GOAL ##K ##E ##E ##P ##E ##R film 1 ##9 ##9 ##6 [SEP]: Title, UPPER x7, lower,
    # no letter for the pieces of 1996 (here [UNK]: the toy vocabulary has no digits).
    assert cases[:length].tolist() == [0, 2, *[3] * 7, 1, 4, 0][:length]
    assert cases[length:].tolist() == [0] * (32 - length) and ids[length - 1] == 3


def test_case_segments_feed_capitalised_words_to_the_encoder_as_segment_one(toy_bert):
    from tfpretrain.hub import HubLayer
    from tfpretrain.models import build_token_classifier

    encoder = HubLayer(toy_bert[0], name="encoder")
    with_cases = build_token_classifier(encoder, 5, dropout=0.0, seed=1, case_segments=True)
    plain = build_token_classifier(encoder, 5, dropout=0.0, seed=1)
    ids = tf.constant([[2, 9, 10, 11, 12, 3]])
    inputs = {"input_word_ids": ids, "input_mask": tf.ones_like(ids),
              "input_type_ids": tf.zeros_like(ids)}
    cases = tf.constant([[0, 2, 1, 3, 4, 0]])  # [CLS] Title lower UPPER no-letter [SEP]
    expected = plain({**inputs, "input_type_ids": tf.constant([[0, 1, 0, 1, 0, 0]])})
    got = with_cases({**inputs, "input_case_ids": cases})
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6)
    assert np.abs(got.numpy() - plain(inputs).numpy()).max() > 1e-4


def test_raw_text_is_split_into_words_with_character_offsets():
    text = "  Zürich (Reuters) - U.S. official's visit."
    words, starts, ends = split_words(tf.constant([text, ""]))
    got = [w.decode() for w in words.to_list()[0]]
    assert got == ["Zürich", "(", "Reuters", ")", "-", "U.S", ".", "official's", "visit", "."]
    assert [text[s:e] for s, e in zip(starts.to_list()[0], ends.to_list()[0])] == got
    assert words.to_list()[1] == []


def test_entities_in_the_graph_are_the_chunks_of_the_tags():
    names = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    task, rng = TokenClassification(names), np.random.default_rng(0)
    lengths = [0, 1, 7, 12, 3]
    ids = rng.integers(0, len(names), sum(lengths))
    probabilities = tf.RaggedTensor.from_row_lengths(
        tf.one_hot(ids, len(names)) * 0.5 + 0.1, lengths)
    words = [[f"w{i}" for i in range(n)] for n in lengths]
    texts = [" ".join(w) for w in words]
    starts = tf.ragged.constant([[len(" ".join(w[:i])) + (i > 0) for i in range(len(w))]
                                 for w in words], tf.int64, row_splits_dtype=tf.int64)
    ends = starts + tf.ragged.constant([[len(x) for x in w] for w in words], tf.int64,
                                       row_splits_dtype=tf.int64)
    out = task.entities(tf.constant(texts), starts, ends, probabilities)
    split = np.split(ids, np.cumsum(lengths)[:-1])
    for row, (text, tag_ids) in enumerate(zip(texts, split)):
        expected = sorted(chunks([names[i] for i in tag_ids]), key=lambda c: c[1])
        count = int(out["entity_count"][row])
        assert count == len(expected)
        for k, (kind, first, last) in enumerate(expected):
            start, end = int(out["entity_start"][row, k]), int(out["entity_end"][row, k])
            assert out["entity_type"][row, k].numpy().decode() == kind
            assert text[start:end] == " ".join(words[row][first:last])
            assert out["entity_text"][row, k].numpy().decode() == text[start:end]
            assert float(out["entity_score"][row, k]) == pytest.approx(0.6)


def _args(workdir, toy_bert, files, *extra):
    return ["-m", "recipes.bert_token_classifier", f"--workdir={workdir}",
            f"--model.encoder={toy_bert[0]}", f"--model.preprocessor={toy_bert[1]}",
            f"--data.train_file={files['train']}", f"--data.validation_file={files['validation']}",
            f"--data.test_file={files['test']}", "--model.seq_length=16", "--train.epochs=6",
            "--train.global_batch_size=16", "--train.learning_rate=5e-3", *extra]


@pytest.mark.slow  # a recipe run: the default suite stays under 15 minutes
def test_token_classifier_end_to_end_entities_from_raw_text(toy_bert, tagged_files, tmp_path):
    workdir = tmp_path / "run"
    result = run_python(_args(workdir, toy_bert, tagged_files))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tags: IOB2 in the data, trained as IOB2" in result.stdout
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["task"] == "tagging" and metrics["test"]["sentences"] == 40
    assert metrics["test"]["f1"] > 0.6, metrics["test"]
    check = [line for line in result.stdout.splitlines() if line.startswith("export check")]
    assert check and float(check[0].split("max abs diff ")[1].split()[0]) <= 1e-5
    report = (workdir / "report.md").read_text()
    assert "### Per entity type (test)" in report and (workdir / "confusion_matrix.png").exists()
    serving = saved_model_cli_serving(workdir / "export")
    assert "serving_default_text:0" in serving and "outputs['entity_start']" in serving
    export = tf.saved_model.load(str(workdir / "export"))
    text = "The bank, and the Minister ACTOR!"
    out = export.signatures["serving_default"](text=tf.constant([text, ""]))
    count = int(out["entity_count"][0])
    assert int(out["entity_count"][1]) == 0 and count >= 1
    for k in range(count):
        start, end = int(out["entity_start"][0, k]), int(out["entity_end"][0, k])
        assert text[start:end] == out["entity_text"][0, k].numpy().decode()
    tagged = export.signatures["tag_words"](tokens=tf.constant([["the", "bank", ""],
                                                               ["star", "market", "vote"]]))
    assert tagged["tags"].numpy()[0, 2] == b"" and tagged["tag_probabilities"].shape[1:] == (3, 8)
    table = run_python(["-m", "tfpretrain.predict", "--model", str(workdir / "export"), text,
                        "--json"], timeout=120)
    assert table.returncode == 0, table.stderr[-2000:]
    entities = json.loads(table.stdout.splitlines()[0])["entities"]
    assert [e["text"] for e in entities] == [v.decode() for v in
                                             out["entity_text"].numpy()[0, :count]]


def test_an_inconsistent_tag_sequence_is_one_line_naming_it_and_nothing_is_written(
        toy_bert, tagged_files, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("the X O\nbank X I-ORG\nfilm X B-ORG\n\nstar X B-PER\n")
    result = run_python(_args(tmp_path / "run", toy_bert, tagged_files,
                              f"--data.train_file={bad}", "--data.tag_scheme=IOB2"), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "bad.txt, line 2: tag 'I-ORG' after 'O'" in lines[0], lines
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow  # about 80 s: two toy runs and a killed one
def test_kill_9_mid_training_of_a_tagger_then_rerun_resumes(toy_bert, tagged_files, tmp_path):
    def args(workdir):
        return _args(workdir, toy_bert, tagged_files, "--train.epochs=4",
                     "--train.checkpoint_every=5", "--export.enabled=false")

    workdir = tmp_path / "run"
    kill_9_once_checkpointed(args(workdir), workdir)
    assert not (workdir / "metrics.json").exists()
    resumed = run_python(args(workdir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [line for line in resumed.stdout.splitlines()
            if line.startswith("Resuming from") and "step 0" not in line]
    fresh = run_python(args(tmp_path / "fresh"))
    assert fresh.returncode == 0
    assert ((workdir / "metrics.json").read_text()
            == (tmp_path / "fresh" / "metrics.json").read_text())


TAGGER_ON_TWO_CPUS = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from recipes import bert_token_classifier as recipe
from tfpretrain import cli
sys.exit(cli.run(recipe.main, recipe.TokenClassifierConfig(), argv=sys.argv[1:]))
"""


@pytest.mark.slow  # two toy runs, one on 2 logical CPUs
def test_tagger_mirrored_on_two_cpus_matches_one_device(tagged_files, tmp_path):
    from tests.test_distribute import _checkpoint, _max_difference
    from tfpretrain.encoders.toy import export_toy_bert

    toy = export_toy_bert(str(tmp_path / "toy"), dropout=0.0)
    one, two = tmp_path / "one", tmp_path / "two"
    flags = ["--model.dropout=0", "--export.enabled=false", "--train.max_steps=6",
             "--train.checkpoint_every=2"]
    result = run_python([*_args(one, toy, tagged_files, *flags), "--runtime.strategy=one_device"])
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_python(["-c", TAGGER_ON_TWO_CPUS, *_args(two, toy, tagged_files, *flags)[2:],
                         "--runtime.strategy=mirrored"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2 |" in result.stdout
    assert _max_difference(_checkpoint(str(one)), _checkpoint(str(two))) <= 1e-5


@pytest.mark.network  # downloads CoNLL-2003 from the TFDS hosts
def test_tfds_conll2003_loads_as_tagged_sentences():
    data = load_tagged_data(TaggingDataConfig(train_split="train[:200]",
                                              validation_split="validation[:50]",
                                              test_split="test[:50]"))
    assert data.scheme == "IOB2" and data.tag_names[0] == "O"
    assert {"PER", "ORG", "LOC", "MISC"} >= set(data.entity_types)
    assert len(data.sentences["train"]) == 200


def test_read_conll_keeps_word_lines():
    sentences = read_conll("a X O\n\nb X B-PER\nc X I-PER\n")
    assert [s.lines for s in sentences] == [[1], [3, 4]]
