import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import run_python, toy_recipe_args
from tfpretrain import hub
from tfpretrain.encoders.bert import load_bert_encoder
from tfpretrain.models import build_bert_classifier


def _inputs(loaded, texts=("good movie", "bad plot the worst", "the team win")):
    return loaded.preprocessor(tf.constant(list(texts)))


def _fit(model, x, y, epochs=3):
    model.compile(optimizer=keras.optimizers.AdamW(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, np.array(y), epochs=epochs, batch_size=3, verbose=0)


def test_adamw_fine_tuning_changes_the_saved_models_own_variables(toy_bert):
    loaded = load_bert_encoder(*toy_bert, trainable=True)
    model = build_bert_classifier(loaded.layer, 2)
    restored = loaded.layer.saved_model.trainable_variables
    before = [v.numpy().copy() for v in restored]
    _fit(model, _inputs(loaded), [0, 1, 0])  # plain model.fit, as in users' own code
    changed = sum(not np.allclose(b, v.numpy()) for b, v in zip(before, restored))
    assert changed > len(restored) // 2
    # The Keras weights are the SavedModel's variables, not copies.
    keras_values = {w.path: w.numpy() for w in loaded.layer.trainable_weights}
    assert any(np.array_equal(restored[0].numpy(), v) for v in keras_values.values())


def test_frozen_encoder_does_not_change(toy_bert):
    loaded = load_bert_encoder(*toy_bert, trainable=False)
    model = build_bert_classifier(loaded.layer, 2)
    assert loaded.layer.trainable_weights == []
    before = [v.numpy().copy() for v in loaded.layer.saved_model.variables]
    head_before = [w.numpy().copy() for w in model.trainable_weights]
    _fit(model, _inputs(loaded), [0, 1, 0])
    assert all(np.array_equal(b, v.numpy())
               for b, v in zip(before, loaded.layer.saved_model.variables))
    assert any(not np.array_equal(b, w.numpy())
               for b, w in zip(head_before, model.trainable_weights))


def test_dropout_runs_only_in_training(toy_bert):
    loaded = load_bert_encoder(*toy_bert, trainable=True)
    x = _inputs(loaded)
    infer = [loaded.layer(x, training=False)["sequence_output"].numpy() for _ in range(2)]
    train = [loaded.layer(x, training=True)["sequence_output"].numpy() for _ in range(2)]
    np.testing.assert_array_equal(infer[0], infer[1])
    assert np.abs(train[0] - train[1]).max() > 1e-4
    assert np.abs(train[0] - infer[0]).max() > 1e-4
    frozen = load_bert_encoder(*toy_bert, trainable=False).layer
    np.testing.assert_allclose(frozen(x, training=True)["sequence_output"], infer[0], atol=1e-6)


def test_stays_float32_under_mixed_precision(toy_bert):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        loaded = load_bert_encoder(*toy_bert, trainable=True)
        model = build_bert_classifier(loaded.layer, 2)
        out = loaded.layer(_inputs(loaded))
        assert out["pooled_output"].dtype == tf.float32
        assert all(w.dtype == "float32" for w in loaded.layer.weights if "float" in str(w.dtype))
        # The head follows the policy, but for its logits (float32 for the loss's range).
        assert model.get_layer("classifier").compute_dtype == "float16"
        assert model(_inputs(loaded)).dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_variable_names_are_valid_optimizer_scopes(toy_bert):
    layer = load_bert_encoder(*toy_bert).layer
    assert all(":" not in w.name and "/" not in w.name for w in layer.weights)


def test_training_argument_read_from_signatures(toy_bert, tmp_path):
    obj = hub.load_saved_model(toy_bert[0])
    assert hub.takes_training_argument(obj.__call__)

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return 2 * x

    tf.saved_model.save(Plain(), str(tmp_path / "plain"))
    plain = hub.load_saved_model(str(tmp_path / "plain"))
    assert not hub.takes_training_argument(plain.__call__)
    layer = hub.HubLayer(str(tmp_path / "plain"))
    np.testing.assert_allclose(layer(tf.constant([1.0, 2.0]), training=True), [2.0, 4.0])


def test_signature_models_with_named_inputs(tmp_path):
    class Embedder(tf.Module):
        def __init__(self):
            self.w = tf.Variable([[1.0, 2.0]])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentences")])
        def embed(self, sentences):
            lengths = tf.cast(tf.strings.length(sentences), tf.float32)[:, None]
            return {"embedding": lengths * self.w}

    module = Embedder()
    tf.saved_model.save(module, str(tmp_path / "emb"), signatures={"serving_default": module.embed})
    layer = hub.HubLayer(str(tmp_path / "emb"), signature="serving_default", output_key="embedding")
    np.testing.assert_allclose(layer(tf.constant(["ab", "abc"])), [[2, 4], [3, 6]])
    with pytest.raises(ValueError, match="no signature 'nope'"):
        hub.HubLayer(str(tmp_path / "emb"), signature="nope")


def test_bad_handles_name_the_problem(tmp_path):
    with pytest.raises(hub.HandleError, match="not a preset, an existing directory"):
        hub.resolve_handle(str(tmp_path / "missing"))
    with pytest.raises(hub.HandleError, match="holds no SavedModel"):
        hub.resolve_handle(str(tmp_path))


def test_imports_tensorflow_hub_without_pkg_resources(toy_bert):
    # setuptools >= 82 removed pkg_resources; tensorflow_hub 0.16.1 imports it at import time.
    code = (
        "import sys; sys.modules['pkg_resources'] = None\n"  # makes `import pkg_resources` fail
        "import tfpretrain\n"
        "from tfpretrain import hub\n"
        "tfhub = hub._import_tensorflow_hub()\n"
        f"print(tfhub.resolve({toy_bert[0]!r}))\n"
    )
    result = run_python(["-c", code])
    assert result.returncode == 0, result.stderr[-2000:]
    assert toy_bert[0] in result.stdout


@pytest.mark.slow  # 21 s in the default suite, which must stay under 15 min
def test_mirrored_strategy_on_two_logical_cpus(toy_bert):
    code = f"""
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfpretrain.encoders.bert import load_bert_encoder
from tfpretrain.models import build_bert_classifier
from tfpretrain.optimizers import build_optimizer
from tfpretrain.tasks.classification import classification_loss
from tfpretrain.step import make_train_step
from tfpretrain.config import TrainConfig
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    loaded = load_bert_encoder({toy_bert[0]!r}, {toy_bert[1]!r}, trainable=True)
    model = build_bert_classifier(loaded.layer, 2)
    optimizer = build_optimizer(TrainConfig(learning_rate=1e-2, warmup_fraction=0), 10)
x = loaded.preprocessor(tf.constant(["good movie", "bad plot", "fun film", "awful actor"]))
ds = tf.data.Dataset.from_tensors((x, tf.constant([0, 1, 0, 1])))
before = loaded.layer.saved_model.trainable_variables[0].numpy().copy()
step = make_train_step(model, optimizer, strategy, clip_norm=1.0, loss_fn=classification_loss)
losses = step(iter(strategy.experimental_distribute_dataset(ds.repeat(2))), tf.constant(3))
assert len(losses) == 2  # the call stops when the input runs out
print("replicas", strategy.num_replicas_in_sync, "changed",
      not np.allclose(before, loaded.layer.saved_model.trainable_variables[0].numpy()))
"""
    result = run_python(["-c", code], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2 changed True" in result.stdout


@pytest.mark.network
def test_tfhub_url_resolves_through_tensorflow_hub_cache():
    path = hub.resolve_handle("https://tfhub.dev/google/nnlm-en-dim50/2")
    layer = hub.HubLayer(path)
    assert layer(tf.constant(["hello world"])).shape == (1, 50)


def test_mismatched_encoder_and_preprocessor_are_named(toy_bert, tmp_path):
    from tfpretrain.encoders.bert import EncoderError
    from tfpretrain.encoders.toy import TOY_WORDS, export_toy_bert

    _, big_preprocessor = export_toy_bert(str(tmp_path / "big"),
                                          words=TOY_WORDS + [f"w{i}" for i in range(50)])
    with pytest.raises(EncoderError, match="vocabulary but encoder .* embeds at most"):
        load_bert_encoder(toy_bert[0], big_preprocessor)
    with pytest.raises(EncoderError,
                       match=r"seq_length=100 is longer than encoder .* \(64 positions\)"):
        load_bert_encoder(*toy_bert, seq_length=100)
    with pytest.raises(EncoderError, match="model.preprocessor is required"):
        load_bert_encoder(toy_bert[0])


@pytest.mark.slow  # a recipe run: the default suite stays under 15 minutes
def test_unseeded_dropout_in_a_saved_model_trains_on_default_flags(toy_bert, toy_csv, tmp_path):
    from tfpretrain.encoders.toy import export_unseeded_dropout_encoder
    from tfpretrain.hub import unseeded_random_ops

    unseeded = export_unseeded_dropout_encoder(toy_bert[0], str(tmp_path / "unseeded"))
    seeded = build_bert_classifier(load_bert_encoder(*toy_bert).layer, 2)
    model = build_bert_classifier(load_bert_encoder(unseeded, toy_bert[1]).layer, 2)
    assert unseeded_random_ops(seeded) == [] and unseeded_random_ops(model) == [
        "encoder/RandomUniform"]
    # The recipe on default flags (op determinism on): it trains, and says what it gave up.
    args = toy_recipe_args((unseeded, toy_bert[1]), toy_csv, tmp_path / "run", "--train.epochs=1",
                           "--export.enabled=false")
    result = run_python(args)
    assert result.returncode == 0, result.stderr[-3000:]
    note = [line for line in result.stdout.splitlines() if line.startswith("note: encoder/")]
    assert note and "this run trains with it off" in note[0]
