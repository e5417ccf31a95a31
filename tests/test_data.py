import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests.conftest import TOY_ROWS, write_csv
from tfpretrain.data import tfds as tp_tfds
from tfpretrain.data.pipeline import (
    TRUNCATIONS,
    make_batches,
    pack_texts,
    padding_efficiency,
    tokenize_texts,
)
from tfpretrain.data.text import TextDataConfig, make_text_datasets
from tfpretrain.encoders.bert import load_bert_encoder


def test_bbc_news_split_is_deterministic_stratified_and_complete():
    files = tp_tfds._bbc_files()
    assert sum(len(v) for v in files.values()) == 2225
    assert sorted(files) == list(tp_tfds.TOPICS)
    splits = tp_tfds.bbc_split(files)
    assert {k: len(v) for k, v in splits.items()} == {"train": 1558, "validation": 223, "test": 444}
    assert splits == tp_tfds.bbc_split({k: list(reversed(v)) for k, v in files.items()})
    seen = [p for items in splits.values() for _, p in items]
    assert len(set(seen)) == 2225


def test_bbc_news_through_tfds():
    datasets, names = make_text_datasets(TextDataConfig(name="bbc_news", train_split="train[:5%]",
                                                    validation_split="", test_split="test[:10]"))
    assert names == ["business", "entertainment", "politics", "sport", "tech"]
    text, label = next(iter(datasets["test"]))
    assert text.dtype == tf.string and len(text.numpy()) > 100 and 0 <= int(label) < 5
    assert sum(1 for _ in datasets["train"]) == 78


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl"])
def test_local_files_with_string_labels(tmp_path, suffix, capsys):
    path = tmp_path / f"train.{suffix}"
    if suffix == "jsonl":
        path.write_text("\n".join(json.dumps({"review": t, "label": label})
                                  for t, label in TOY_ROWS * 5))
    else:
        write_csv(path, TOY_ROWS * 5, header=("review", "label"),
                  delimiter="\t" if suffix == "tsv" else ",")
    datasets, names = make_text_datasets(TextDataConfig(train_file=str(path)))
    assert names == ["neg", "pos"]
    assert sum(1 for _ in datasets["train"]) == 27 and sum(1 for _ in datasets["validation"]) == 3
    assert set(datasets) == {"train", "validation"}
    # Without a validation file, rows 0, 10 and 20 are held out, and the log says so.
    held = [(t.decode(), names[y]) for t, y in datasets["validation"].as_numpy_iterator()]
    assert held == [TOY_ROWS[i % len(TOY_ROWS)] for i in (0, 10, 20)]
    assert f"every 10th row of {path} is held out for validation" in capsys.readouterr().err


def test_integer_labels_keep_their_ids(tmp_path):
    path = write_csv(tmp_path / "t.csv", [("x y", 2), ("z", 0), ("w", 1)] * 4)
    datasets, names = make_text_datasets(TextDataConfig(train_file=path))
    assert names == ["0", "1", "2"]
    assert sorted({int(y) for _, y in datasets["train"]}) == [0, 1, 2]


def test_bad_data_names_the_problem(tmp_path):
    good = write_csv(tmp_path / "good.csv", TOY_ROWS * 2)
    with pytest.raises(FileNotFoundError, match="missing.csv does not exist"):
        make_text_datasets(TextDataConfig(train_file=str(tmp_path / "missing.csv")))
    with pytest.raises(ValueError, match="no label column 'category'"):
        make_text_datasets(TextDataConfig(train_file=good, label_key="category"))
    with pytest.raises(ValueError, match="no text column/feature 'body'"):
        make_text_datasets(TextDataConfig(train_file=good, text_key="body"))
    odd = write_csv(tmp_path / "odd.csv", [("fine text", "maybe")])
    with pytest.raises(ValueError, match="row 2: label 'maybe' is not one of the training labels"):
        make_text_datasets(TextDataConfig(train_file=good, test_file=odd))
    single = write_csv(tmp_path / "single.csv", [("a", "x"), ("b", "x")])
    with pytest.raises(ValueError, match="single class"):
        make_text_datasets(TextDataConfig(train_file=single))
    empty = write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(ValueError, match="has no rows"):
        make_text_datasets(TextDataConfig(train_file=empty))
    with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_dataset'"):
        make_text_datasets(TextDataConfig(name="no_such_dataset"))
    with pytest.raises(ValueError, match="split 'dev'"):
        make_text_datasets(TextDataConfig(name="bbc_news", validation_split="dev"))


def test_any_tfds_text_dataset_by_name_with_feature_keys():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        datasets, names = make_text_datasets(TextDataConfig(
            name="imdb_reviews", train_split="train[:50%]", validation_split="test", test_split=""))
    assert names == ["neg", "pos"]
    text, label = next(iter(datasets["train"]))
    assert text.dtype == tf.string and label.dtype == tf.int32
    assert set(datasets) == {"train", "validation"}


def test_batches_are_padded_to_their_own_length(toy_bert):
    loaded = load_bert_encoder(*toy_bert)
    texts = ["good"] * 40 + [" ".join(["fun film"] * 10)] * 40
    ds = tf.data.Dataset.from_tensor_slices((texts, [0] * 80))
    examples = tokenize_texts(ds, loaded.preprocessor, 32).cache()
    widths = sorted({int(x["input_word_ids"].shape[1]) for x, _ in make_batches(examples, 8, 32)})
    assert widths == [3, 22]  # [CLS] good [SEP] and 20 word pieces + 2, not always 32
    first = [x["input_word_ids"].numpy().tolist()
             for x, _ in make_batches(examples, 8, 32, shuffle_seed=1)]
    again = [x["input_word_ids"].numpy().tolist()
             for x, _ in make_batches(examples, 8, 32, shuffle_seed=1)]
    other = [x["input_word_ids"].numpy().tolist()
             for x, _ in make_batches(examples, 8, 32, shuffle_seed=2)]
    assert first == again and first != other
    skipped = [x["input_word_ids"].numpy().tolist()
               for x, _ in make_batches(examples, 8, 32, shuffle_seed=1, skip_batches=3)]
    assert skipped == first[3:]
    assert (sum(int(np.sum(x["input_mask"])) for x, _ in make_batches(examples, 8, 32))
            == 40 * 3 + 40 * 22)


def test_length_buckets_waste_little_padding_and_keep_every_example_once():
    # SST-2-like lengths: mostly 4-30 tokens, a few long ones; the label is the example's index.
    lengths = np.clip(np.random.RandomState(0).lognormal(2.5, 0.6, 3000).astype(int) + 3, 3, 128)
    ids = tf.ragged.range(lengths) + 5
    examples = tf.data.Dataset.from_tensor_slices((ids, np.arange(len(lengths)))).map(
        lambda x, i: ({"input_word_ids": x, "input_mask": tf.ones_like(x),
                       "input_type_ids": tf.zeros_like(x)}, i))
    batches = make_batches(examples, 32, 128, shuffle_seed=0)
    assert padding_efficiency(batches) >= 0.9  # powers-of-two buckets (17, 33, ...): 0.70
    seen = np.concatenate([label.numpy() for _, label in batches])
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    sizes = [int(label.shape[0]) for _, label in batches]
    assert len([s for s in sizes if s < 32]) <= 45  # at most one partial batch per length bucket
    # The count does not depend on order.
    assert sum(1 for _ in make_batches(examples, 32, 128)) == len(sizes)
    # For XLA: the same batches, padded to multiples of 16 tokens: few widths.
    fixed = list(make_batches(examples, 32, 128, shuffle_seed=0, fixed_shapes=True))
    assert {int(x["input_word_ids"].shape[1]) for x, _ in fixed} <= set(range(16, 129, 16))
    for (x, label), (y, same) in zip(batches, fixed):
        assert label.numpy().tolist() == same.numpy().tolist()
        width = int(x["input_word_ids"].shape[1])
        assert (y["input_word_ids"].numpy()[:, :width] == x["input_word_ids"].numpy()).all()
        assert not y["input_mask"].numpy()[:, width:].any()


def test_head_tail_truncation_keeps_a_quarter_from_the_start_and_the_rest_from_the_end(toy_bert):
    loaded = load_bert_encoder(*toy_bert)
    good, bad, fun = loaded.preprocessor.tokenize(tf.constant(["good bad fun"])).flat_values.numpy()
    cls, sep = 2, 3  # the toy vocabulary's [CLS] and [SEP]
    texts = tf.constant([" ".join(["good"] * 10 + ["bad"] * 10 + ["fun"] * 10), "good film"])
    head = pack_texts(loaded.preprocessor, texts, 18)["input_word_ids"].numpy()
    both = tf.function(lambda t: pack_texts(loaded.preprocessor, t, 18, "head_tail"))(texts)
    ids = both["input_word_ids"].numpy()
    # 16 tokens of room: 4 from the start, 12 from the end.
    assert ids[0].tolist() == [cls] + [good] * 4 + [bad] * 2 + [fun] * 10 + [sep]
    assert head[0].tolist() == [cls] + [good] * 10 + [bad] * 6 + [sep]
    assert ids[1].tolist() == head[1].tolist()  # short texts are untouched
    with pytest.raises(ValueError, match="truncation"):
        pack_texts(loaded.preprocessor, texts, 18, "middle")


def test_case_segments_mark_the_pieces_of_capitalised_words_and_keep_the_tokens(toy_bert):
    pre = load_bert_encoder(*toy_bert).preprocessor
    texts = tf.constant([" ".join(["Good"] * 10 + ["bad"] * 10 + ["FUN"] * 10), "good Film 42",
                         ""])
    for truncation in TRUNCATIONS:
        plain = pack_texts(pre, texts, 18, truncation)
        cased = tf.function(lambda t: pack_texts(pre, t, 18, truncation, cases=True))(texts)
        assert (cased["input_word_ids"].numpy() == plain["input_word_ids"].numpy()).all()
        assert (cased["input_mask"].numpy() == plain["input_mask"].numpy()).all()
        types = cased["input_type_ids"].numpy()
        good, bad = (4, 2) if truncation == "head_tail" else (10, 6)  # kept of the first text
        assert types[0].tolist() == [0] + [1] * good + [0] * bad + [1] * (16 - good - bad) + [0]
        assert types[1].tolist()[:5] == [0, 0, 1, 0, 0] and not types[2].any()
    with pytest.raises(ValueError, match="segment ids"):
        pack_texts(pre, (texts, texts), 18, cases=True)


class _ToyText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A tiny TFDS text dataset: ``SPLITS`` maps each split to ``(examples, labelled)`` with
    ``labelled`` one of "all", "none" (label -1, as glue/* test splits) or "half"."""

    VERSION = tfds.core.Version("1.0.0")
    SPLITS: dict = {}

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "sentence": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["neg", "pos"])}))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(*spec) for split, spec in self.SPLITS.items()}

    def _generate_examples(self, count, labelled):
        for i in range(count):
            text, name = TOY_ROWS[i % len(TOY_ROWS)]
            missing = labelled == "none" or (labelled == "half" and i % 2)
            yield i, {"sentence": f"{text} {i}",
                      "label": -1 if missing else ["neg", "pos"].index(name)}


class UnlabelledTestToy(_ToyText):
    SPLITS = {"train": (6, "all"), "validation": (6, "all"), "test": (6, "none"),
              "mixed": (6, "half")}


class NoValidationToy(_ToyText):  # train and test only, as imdb_reviews and ag_news_subset have
    SPLITS = {"train": (40, "all"), "test": (6, "all")}


def test_an_unlabelled_tfds_split_is_left_out_not_scored(tmp_path, capsys):
    datasets, _ = make_text_datasets(TextDataConfig(name="unlabelled_test_toy",
                                                    data_dir=str(tmp_path)))
    assert sorted(datasets) == ["train", "validation"]
    note = "test split of TFDS unlabelled_test_toy ('test') has no labels"
    assert note in capsys.readouterr().err
    with pytest.raises(tp_tfds.DataError, match="3 of 6 examples without a label"):
        make_text_datasets(TextDataConfig(name="unlabelled_test_toy", data_dir=str(tmp_path),
                                          test_split="mixed"))


def test_a_score_is_never_computed_on_unlabelled_examples():
    import keras

    from tfpretrain.tasks.classification import evaluate_classifier

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    batches = tf.data.Dataset.from_tensor_slices((np.zeros((4, 3), np.float32),
                                                  np.array([0, 1, -1, -1]))).batch(2)
    with pytest.raises(ValueError, match="2 of 4 examples have no label"):
        evaluate_classifier(model, batches, ["a", "b"])


def test_a_tfds_dataset_without_validation_holds_out_every_10th_training_example(tmp_path,
                                                                                 capsys):
    config = TextDataConfig(name="no_validation_toy", data_dir=str(tmp_path))
    datasets, _ = make_text_datasets(config)
    assert "has no 'validation' split: every 10th example" in capsys.readouterr().err
    texts = {split: [t.numpy() for t, _ in d] for split, d in datasets.items()}
    assert (len(texts["train"]), len(texts["validation"]), len(texts["test"])) == (36, 4, 6)
    assert not set(texts["train"]) & set(texts["validation"])
    again, _ = make_text_datasets(config)
    assert [t.numpy() for t, _ in again["validation"]] == texts["validation"]  # same every run


@pytest.mark.network  # downloads the datasets from the TFDS hosts
@pytest.mark.parametrize("name", ["glue/sst2", "imdb_reviews", "ag_news_subset",
                                  "yelp_polarity_reviews"])
def test_tfds_text_datasets_the_readme_names_load_on_default_flags(name):
    datasets, names = make_text_datasets(TextDataConfig(name=name))
    assert {"train", "validation"} <= set(datasets) and len(names) >= 2
    assert "test" not in datasets if name.startswith("glue/") else "test" in datasets
