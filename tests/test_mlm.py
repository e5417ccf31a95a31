"""Masked-LM pieces: corpora, windows, masking statistics, the tied head, the loss, exact resume."""

import os
import random

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpretrain import hub
from tfpretrain.config import TrainConfig
from tfpretrain.data.corpus import MlmDataConfig, make_corpus
from tfpretrain.data.tfds import DataError
from tfpretrain.pretrain import mlm

SENTENCES = ["the team won the match with a great goal", "the bank and the market made a profit",
             "the minister won the vote of the party", "a good movie with the best actor"]


@pytest.fixture(scope="module")
def toy(toy_bert):
    import tensorflow_text  # noqa: F401

    preprocessor = tf.saved_model.load(toy_bert[1])
    vocab = os.path.join(os.path.dirname(toy_bert[0]), "vocab.txt")
    return preprocessor, vocab


def _documents(count=200, words_per_document=60, seed=0):
    rng = np.random.default_rng(seed)
    words = " ".join(SENTENCES).split() + ["zebra", "quixotic"]  # two words of several pieces
    return tf.data.Dataset.from_tensor_slices([" ".join(rng.choice(words, words_per_document))
                                               for _ in range(count)])


def test_corpus_from_lines_and_files_holds_out_the_same_documents(tmp_path):
    lines = tmp_path / "corpus.txt"
    lines.write_text("\n".join(f"document number {i} about sport" for i in range(200)) + "\n\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(200):
        (folder / f"{i:03d}.txt").write_text(f"document number {i} about sport\nsecond line")
    by_line = make_corpus(MlmDataConfig(path=str(lines), heldout_fraction=0.2))
    by_file = make_corpus(MlmDataConfig(path=str(folder), heldout_fraction=0.2))
    train = [t.decode() for t in by_line["train"].as_numpy_iterator()]
    heldout = [t.decode() for t in by_line["heldout"].as_numpy_iterator()]
    assert len(train) + len(heldout) == 200 and not set(train) & set(heldout)  # blank lines dropped
    assert 20 <= len(heldout) <= 60
    assert next(by_file["train"].as_numpy_iterator()).decode().endswith("about sport\nsecond line")
    assert len(list(by_file["train"])) + len(list(by_file["heldout"])) == 200
    again = make_corpus(MlmDataConfig(path=str(lines), heldout_fraction=0.2))
    assert [t.decode() for t in again["heldout"].as_numpy_iterator()] == heldout


def test_corpus_from_a_tfds_dataset_by_split_and_feature():
    corpus = make_corpus(MlmDataConfig(name="bbc_news", split="train[:10%]", heldout_fraction=0.1))
    texts = (list(corpus["train"].take(3).as_numpy_iterator())
             + list(corpus["heldout"].take(1).as_numpy_iterator()))
    assert len(texts) == 4 and all(len(t.split()) > 50 for t in texts)  # whole articles
    with pytest.raises(DataError, match="no feature 'body'"):
        make_corpus(MlmDataConfig(name="bbc_news", split="train[:1%]", feature="body"))


def test_corpus_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="holds no .txt files"):
        make_corpus(MlmDataConfig(path=str(tmp_path)))
    (tmp_path / "a.txt").write_text("one line")
    with pytest.raises(DataError, match="data.document must be one of"):
        make_corpus(MlmDataConfig(path=str(tmp_path), document="paragraph"))
    with pytest.raises(DataError, match="no heldout documents"):
        make_corpus(MlmDataConfig(path=str(tmp_path / "a.txt")))


def test_windows_cover_each_document_in_order(toy):
    preprocessor, _ = toy
    text = " ".join(SENTENCES * 5)
    windows = list(mlm.make_windows(tf.data.Dataset.from_tensors(text), preprocessor, 16))
    pieces = preprocessor.tokenize(tf.constant([text])).flat_values.numpy()
    assert [len(t) for t, _ in windows][:-1] == [14] * (len(windows) - 1)
    np.testing.assert_array_equal(np.concatenate([t.numpy() for t, _ in windows]), pieces)


def _batches(toy, whole_word=False, seed=1, count=200, max_predictions=40, **kwargs):
    preprocessor, vocab = toy
    masking = mlm.Masking.from_vocabulary(vocab, seq_length=64, max_predictions=max_predictions,
                                          whole_word=whole_word)
    windows = mlm.make_windows(_documents(count), preprocessor, 64).cache()
    return masking, windows, list(mlm.make_mlm_batches(windows, masking, 16, seed=seed, **kwargs))


def test_masking_selects_15_percent_and_replaces_80_10_10(toy):
    masking, windows, batches = _batches(toy)
    originals = [t.numpy() for t, _ in windows]
    selected = masked = kept = tokens = 0
    row = 0
    for inputs, labels in batches:
        for ids, positions, targets, weights in zip(inputs["input_word_ids"].numpy(),
                                                    inputs["masked_lm_positions"].numpy(),
                                                    labels["masked_lm_ids"].numpy(),
                                                    labels["masked_lm_weights"].numpy()):
            original = np.concatenate([[masking.cls_id], originals[row], [masking.sep_id]])
            row += 1
            real = positions[weights > 0]
            # Labels: the true pieces.
            np.testing.assert_array_equal(targets[weights > 0], original[real])
            assert masking.cls_id not in original[real] and masking.sep_id not in original[real]
            tokens += len(original) - 2
            selected += len(real)
            masked += int(np.sum(ids[real] == masking.mask_id))
            kept += int(np.sum(ids[real] == original[real]))
            unselected = np.setdiff1d(np.arange(len(original)), real)
            np.testing.assert_array_equal(ids[unselected], original[unselected])
    assert 0.13 <= selected / tokens <= 0.17
    assert 0.76 <= masked / selected <= 0.84
    assert 0.07 <= kept / selected <= 0.14  # 10% kept, plus random draws that hit the same piece
    assert 0.06 <= 1 - (masked + kept) / selected <= 0.13


def test_whole_word_masking_masks_every_piece_of_a_word(toy):
    masking, windows, batches = _batches(toy, whole_word=True, max_predictions=60)
    words = [w.numpy() for _, w in windows]
    split_words = 0
    for row, positions in enumerate(p for inputs, labels in batches
                                    for p in np.where(labels["masked_lm_weights"].numpy() > 0,
                                                      inputs["masked_lm_positions"].numpy(), -1)):
        chosen = positions[positions > 0] - 1  # [CLS] shifts positions by one
        owner = words[row]
        for word in np.unique(owner[chosen]):
            assert set(np.where(owner == word)[0]) <= set(chosen)
            split_words += int(np.sum(owner == word) > 1)
    assert split_words > 10  # the test saw words of several pieces


@pytest.mark.slow  # 15 s in the default suite, which must stay under 15 min
def test_masks_depend_only_on_the_seed_and_skip_replays_them(toy):
    _, _, first = _batches(toy, count=40)
    _, _, again = _batches(toy, count=40)
    _, _, other = _batches(toy, count=40, seed=2)
    _, _, skipped = _batches(toy, count=40, skip_batches=1)
    ids = [b[0]["input_word_ids"].numpy() for b in first]
    assert all(np.array_equal(a, b[0]["input_word_ids"].numpy()) for a, b in zip(ids, again))
    assert not all(np.array_equal(a, b[0]["input_word_ids"].numpy()) for a, b in zip(ids, other))
    assert all(np.array_equal(a, b[0]["input_word_ids"].numpy()) for a, b in zip(ids[1:], skipped))


def test_loss_ignores_padded_positions():
    labels = {"masked_lm_ids": tf.constant([[1, 2, 0]]),
              "masked_lm_weights": tf.constant([[1.0, 1.0, 0.0]])}
    logits = tf.constant([[[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [9.0, -9.0, -9.0]]])
    losses, weights = mlm.masked_lm_loss(labels, logits)
    expected = -np.log(np.exp(5) / (np.exp(5) + 2))
    np.testing.assert_allclose(np.sum(losses * weights) / np.sum(weights), expected, rtol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_head_scores_against_the_word_embeddings_or_its_own_table(toy_bert, toy, tmp_path, tied):
    _, vocab = toy
    layer = hub.HubLayer(toy_bert[0], trainable=True)
    vocab_size = sum(1 for _ in open(vocab))
    model, head = mlm.build_mlm_model(layer, vocab_size, tied=tied)
    table = mlm.word_embeddings(layer, vocab_size)
    assert sum(v is table for v in model.trainable_variables) == 1  # trained once, not twice
    own = [w.path.split("/")[-1] for w in head.trainable_weights].count("output_embeddings")
    assert own == (0 if tied else 1)
    assert (len(model.trainable_variables)
            == len(layer.trainable_weights) + len(head.trainable_weights))
    inputs = {"input_word_ids": tf.constant([[2, 7, 4, 3]]),
              "input_mask": tf.ones([1, 4], tf.int32),
              "input_type_ids": tf.zeros([1, 4], tf.int32),
              "masked_lm_positions": tf.constant([[2]])}
    with tf.GradientTape() as tape:
        logits = model(inputs)
        loss = tf.reduce_mean(mlm.masked_lm_loss({"masked_lm_ids": tf.constant([[9]]),
                                                  "masked_lm_weights": tf.ones([1, 1])}, logits)[0])
    gradient = tf.convert_to_tensor(tape.gradient(loss, table)).numpy()
    assert logits.shape == (1, 1, vocab_size)
    moved = set(np.flatnonzero(np.abs(gradient).sum(axis=1)))
    # Tied, the softmax moves every row; untied, only the input side reaches the table: the
    # rows of the four input tokens.
    assert moved == (set(range(vocab_size)) if tied else {2, 3, 4, 7})
    mlm.export_encoder_with_mlm(layer, head, str(tmp_path / "encoder"))
    saved = tf.saved_model.load(str(tmp_path / "encoder"))
    np.testing.assert_allclose(saved.mlm(inputs)["mlm_logits"].numpy(), logits.numpy(),
                               atol=1e-6)


@pytest.mark.slow  # 31 s in the default suite, which must stay under 15 min
def test_fit_resumes_masked_lm_training_exactly(toy_bert, toy, tmp_path):
    from tfpretrain.optimizers import build_optimizer
    from tfpretrain.train import fit

    preprocessor, vocab = toy
    masking = mlm.Masking.from_vocabulary(vocab, seq_length=32, max_predictions=6)
    windows = mlm.make_windows(_documents(40, 30), preprocessor, 32).cache()
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")

    def train(workdir, max_steps):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model, _ = mlm.build_mlm_model(hub.HubLayer(toy_bert[0], trainable=True),
                                           masking.vocab_size)
            optimizer = build_optimizer(TrainConfig(learning_rate=1e-3), total_steps=6)
        config = TrainConfig(max_steps=max_steps, checkpoint_every=1, seed=0)
        fit(model, optimizer,
            lambda epoch, skip: mlm.make_mlm_batches(windows, masking, 8, seed=epoch,
                                                     shuffle_seed=epoch, skip_batches=skip),
            4, config, strategy, str(workdir), loss_fn=mlm.masked_lm_loss)
        return [v.numpy() for v in model.trainable_variables]

    straight = train(tmp_path / "straight", 6)
    train(tmp_path / "resumed", 3)
    resumed = train(tmp_path / "resumed", 6)
    assert max(np.abs(a - b).max() for a, b in zip(straight, resumed)) == 0.0


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_keras_native_encoder_trains_and_exports_its_mlm(toy_bert, toy, tmp_path, precision):
    from tfpretrain.distribute import float32_compute
    from tfpretrain.encoders.bert import KerasBertEncoder, load_bert_encoder

    _, vocab = toy
    vocab_size = sum(1 for _ in open(vocab))
    inputs = {"input_word_ids": tf.constant([[2, 7, 4, 3, 0], [2, 9, 4, 8, 3]]),
              "input_mask": tf.constant([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
              "input_type_ids": tf.zeros([2, 5], tf.int32),
              "masked_lm_positions": tf.constant([[2, 1], [2, 3]])}
    labels = {"masked_lm_ids": tf.constant([[9, 7], [7, 9]]), "masked_lm_weights": tf.ones([2, 2])}
    keras.mixed_precision.set_global_policy(precision)
    try:
        loaded = load_bert_encoder(toy_bert[0], toy_bert[1], trainable=True, seq_length=16,
                                   implementation="keras")
        assert isinstance(loaded.layer, KerasBertEncoder)
        model, head = mlm.build_mlm_model(loaded.layer, vocab_size)
        assert mlm.word_embeddings(loaded.layer, vocab_size).dtype == "float32"
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)
            loss = tf.reduce_mean(mlm.masked_lm_loss(labels, logits)[0])
        assert logits.dtype == ("bfloat16" if precision == "mixed_bfloat16" else "float32")
        gradients = tape.gradient(loss, model.trainable_variables)
        untouched = {v.path for v, g in zip(model.trainable_variables, gradients) if g is None}
        assert untouched and all("pooled_dense" in path for path in untouched)  # no NSP task
        with float32_compute(model):
            expected = model(inputs).numpy()
            mlm.export_pretrained(loaded, head, str(tmp_path / "export"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    saved = tf.saved_model.load(str(tmp_path / "export" / "encoder"))
    exported = saved.mlm(inputs)
    np.testing.assert_allclose(exported["mlm_logits"].numpy(), expected, atol=1e-5)
    assert len(saved.mlm.variables) == len(model.weights)  # not the dropout seed states
    # The encoder's own TF Hub contract is unchanged: it loads again, on either path.
    for implementation in ("keras", "saved_model"):
        again = load_bert_encoder(str(tmp_path / "export" / "encoder"),
                                  str(tmp_path / "export" / "preprocessor"), seq_length=16,
                                  implementation=implementation)
        np.testing.assert_allclose(
            again.layer({k: inputs[k] for k in ("input_word_ids", "input_mask",
                                                 "input_type_ids")})["sequence_output"].numpy(),
            exported["sequence_output"].numpy(), atol=1e-5)


def test_a_new_bert_is_written_in_float32_under_a_mixed_policy(tmp_path):
    from types import SimpleNamespace

    from tfpretrain.encoders.bert import load_bert_encoder
    from tfpretrain.pretrain.scratch import build_new_bert

    config = SimpleNamespace(vocab_size=60, lower_case=True, seq_length=16, num_layers=1,
                             num_heads=2, hidden_dim=8, intermediate_dim=16, dropout=0.0,
                             init="random")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        encoder, preprocessor = build_new_bert(config, _documents(40, 20),
                                               str(tmp_path / "initial"), seed=42)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    saved = tf.saved_model.load(encoder)
    inputs = {"input_word_ids": tf.constant([[2, 7, 4, 3]]),
              "input_mask": tf.ones([1, 4], tf.int32),
              "input_type_ids": tf.zeros([1, 4], tf.int32)}
    assert saved(inputs)["sequence_output"].dtype == tf.float32
    # ... so the Keras-native copy matches it (the parity check at load time passes).
    assert load_bert_encoder(encoder, preprocessor, implementation="keras").layer is not None


@pytest.mark.slow  # 20 s: two new BERTs and a TFDS dataset
def test_a_new_bert_is_drawn_from_its_seed_alone(tmp_path):
    """A TFDS dataset prepared on first use draws random numbers before the encoder is built;
    the initial weights (the random-init baseline) must not depend on it."""
    from types import SimpleNamespace

    from tfpretrain.pretrain.scratch import build_new_bert

    config = SimpleNamespace(vocab_size=60, lower_case=True, seq_length=16, num_layers=1,
                             num_heads=2, hidden_dim=8, intermediate_dim=16, dropout=0.0,
                             init="random")

    def weights(name, draws, seed=42):
        keras.utils.set_random_seed(0)
        for _ in range(draws):  # Keras initializers draw their seeds from Python's generator
            random.random(), keras.random.uniform([1])
        encoder, _ = build_new_bert(config, _documents(40, 20), str(tmp_path / name), seed=seed)
        return [v.numpy() for v in tf.saved_model.load(encoder).variables]

    first, second, other = weights("a", 1), weights("b", 5), weights("c", 1, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(np.array_equal(a, c) for a, c in zip(first, other, strict=True))


def test_local_init_makes_each_head_of_layer_0_attend_to_its_offset():
    import keras_hub

    from tfpretrain.pretrain.scratch import init_local_attention, neighbour_offsets

    assert neighbour_offsets(5) == [1, -1, 2, -2, 3]
    backbone = keras_hub.models.BertBackbone(vocabulary_size=500, num_layers=1, num_heads=4,
                                             hidden_dim=256, intermediate_dim=32,
                                             max_sequence_length=64)
    ids = np.random.default_rng(0).integers(5, 500, (1, 64)).astype("int32")

    def attention():
        embedded = backbone.embeddings_layer_norm(backbone.embeddings_add([
            backbone.token_embedding(ids), backbone.position_embedding(
                backbone.token_embedding(ids)), backbone.segment_embedding(np.zeros_like(ids))]))
        _, scores = backbone.transformer_layers[0]._self_attention_layer(
            embedded, embedded, return_attention_scores=True)
        return np.asarray(scores)[0]  # [heads, query, key]

    def share_on_offset(scores):
        inner = range(4, 60)
        return [np.mean([scores[h, i, i + offset] for i in inner])
                for h, offset in enumerate(neighbour_offsets(4))]

    assert max(share_on_offset(attention())) < 0.1  # BERT's random weights: spread out
    init_local_attention(backbone, seed=0)
    assert min(share_on_offset(attention())) > 0.7
