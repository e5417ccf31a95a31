import numpy as np
import pytest
import tensorflow as tf

from tfpretrain.checkpoints import TrainingError
from tfpretrain.config import TrainConfig
from tfpretrain.distribute import build_strategy, per_replica_batch_size
from tfpretrain.encoders.bert import load_bert_encoder
from tfpretrain.models import build_bert_classifier
from tfpretrain.optimizers import WarmupLinearDecay, build_optimizer, peak_learning_rate
from tfpretrain.train import fit


def _setup(toy_bert, learning_rate=1e-2):
    strategy = build_strategy("one_device")
    with strategy.scope():
        loaded = load_bert_encoder(*toy_bert, trainable=True)
        model = build_bert_classifier(loaded.layer, 2)
        optimizer = build_optimizer(TrainConfig(learning_rate=learning_rate), total_steps=8)
    x = loaded.preprocessor(tf.constant(["good fun", "bad awful", "love best", "hate worst"]))
    data = tf.data.Dataset.from_tensors((x, tf.constant([0, 1, 0, 1])))
    return strategy, model, optimizer, data


def _loss(model, data):
    x, y = next(iter(data))
    logits = model(x, training=False)
    return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)))


def test_schedule_warms_up_then_decays_linearly():
    schedule = WarmupLinearDecay(1.0, total_steps=10, warmup_steps=2)
    assert [round(float(schedule(s)), 3) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]


def test_fit_learns_and_checkpoints(toy_bert, tmp_path):
    strategy, model, optimizer, data = _setup(toy_bert)
    before = _loss(model, data)
    config = TrainConfig(epochs=8, checkpoint_every=4)
    scores = iter(range(100))  # improves every time: the best weights are the last ones
    state = fit(model, optimizer, lambda epoch, skip: data.skip(skip), 1, config, strategy,
                str(tmp_path), evaluate=lambda m: {"accuracy": float(next(scores))})
    assert state.step == 8 and len(state.history) == 8
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-8")
    assert _loss(model, data) < before


def test_nan_loss_stops_with_the_step_and_last_checkpoint(toy_bert, tmp_path):
    strategy, model, optimizer, data = _setup(toy_bert, learning_rate=1e30)
    config = TrainConfig(epochs=50, checkpoint_every=1, clip_norm=0, warmup_fraction=0)
    with pytest.raises(TrainingError,
                       match=r"loss became (nan|inf) at step \d+; stopped\. "
                             r"The last good checkpoint is .*ckpt-\d+"):
        fit(model, optimizer, lambda epoch, skip: data, 1, config, strategy, str(tmp_path))


def test_global_batch_must_split_over_replicas():
    assert per_replica_batch_size(32, build_strategy("one_device")) == 32
    with pytest.raises(ValueError, match="runtime.strategy"):
        build_strategy("bogus")


def test_early_stopping_and_best_weights(toy_bert, tmp_path):
    strategy, model, optimizer, data = _setup(toy_bert)
    scores = iter([0.5, 0.9, 0.4, 0.3, 0.2, 0.1])
    snapshots = []

    def evaluate(m):
        snapshots.append([w.numpy().copy() for w in m.trainable_weights])
        return {"accuracy": next(scores)}

    config = TrainConfig(epochs=6, early_stopping_patience=2)
    state = fit(model, optimizer, lambda epoch, skip: data, 1, config, strategy, str(tmp_path),
                evaluate)
    assert state.stopped_early and state.stopped_by == "patience" and state.step == 4
    assert state.best["accuracy"] == 0.9 and state.best["step"] == 2
    # The model ends with the weights of the best evaluation, not the last.
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(snapshots[1], model.trainable_weights))
    # Run again on the same workdir: the stop is part of the checkpoint, nothing more trains.
    again = fit(model, optimizer, lambda epoch, skip: data, 1, config, strategy, str(tmp_path),
                evaluate)
    assert again.step == 4 and again.stopped_by == "patience" and len(snapshots) == 4


def test_max_minutes_stops_then_a_rerun_trains_no_further_unless_the_cap_grows(
        toy_bert, tmp_path, capsys):
    strategy, model, optimizer, data = _setup(toy_bert)
    evaluate = lambda m: {"accuracy": 0.5}  # noqa: E731
    capped = TrainConfig(epochs=50, max_minutes=1e-9, checkpoint_every=100)
    state = fit(model, optimizer, lambda epoch, skip: data, 1, capped, strategy, str(tmp_path),
                evaluate)
    assert state.stopped_by == "time" and state.step == 1
    assert "stopping: train.max_minutes=1e-09 reached at step 1 of 50" in capsys.readouterr().out
    assert state.history[-1]["step"] == 1  # evaluated where it stopped
    assert fit(model, optimizer, lambda epoch, skip: data, 1, capped, strategy, str(tmp_path),
               evaluate).step == 1
    longer = TrainConfig(epochs=3, max_minutes=60, checkpoint_every=100)
    assert fit(model, optimizer, lambda epoch, skip: data, 1, longer, strategy, str(tmp_path),
               evaluate).step == 3


def test_epochs_auto_is_refused_by_fit_alone(toy_bert, tmp_path):
    strategy, model, optimizer, data = _setup(toy_bert)
    with pytest.raises(ValueError, match="nothing to train: set train.epochs"):
        fit(model, optimizer, lambda epoch, skip: data, 1, TrainConfig(), strategy, str(tmp_path))


def test_fused_adamw_takes_the_same_steps_as_keras_adamw():
    import keras

    from tfpretrain.optimizers import FusedAdamW

    rng = np.random.default_rng(0)
    start = rng.normal(size=(5, 3)).astype("float32")
    gradients = [tf.constant(rng.normal(size=(5, 3)).astype("float32") * (step + 1))
                 for step in range(5)]
    results = []
    for optimizer in (keras.optimizers.AdamW(1e-2, weight_decay=0.01),
                      FusedAdamW(1e-2, weight_decay=0.01)):
        variable = keras.Variable(start)
        for gradient in gradients:
            optimizer.apply_gradients([(gradient, variable)])
        results.append(variable.numpy())
    assert np.abs(results[0] - results[1]).max() < 1e-6
    assert np.abs(results[0] - start).max() > 1e-2  # it did move


def test_fit_calls_keras_callbacks_and_honours_early_stopping(toy_bert, tmp_path):
    import keras

    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.calls = []

        def on_train_begin(self, logs=None):
            self.calls.append(("begin",))

        def on_train_batch_end(self, batch, logs=None):
            self.calls.append(("batch", batch, sorted(logs)))

        def on_epoch_end(self, epoch, logs=None):
            self.calls.append(("epoch", epoch, sorted(logs)))

        def on_train_end(self, logs=None):
            self.calls.append(("end",))

    strategy, model, optimizer, data = _setup(toy_bert)
    two_batches = data.concatenate(data)
    recorder = Recorder()
    state = fit(model, optimizer, lambda epoch, skip: two_batches.skip(skip), 2,
                TrainConfig(epochs=3), strategy, str(tmp_path), lambda m: {"accuracy": 0.5},
                callbacks=[recorder])
    assert state.step == 6
    assert recorder.calls[0] == ("begin",) and recorder.calls[-1] == ("end",)
    assert [c[1] for c in recorder.calls if c[0] == "batch"] == [0, 1, 0, 1, 0, 1]
    assert [c for c in recorder.calls if c[0] == "epoch"] == [
        ("epoch", e, ["loss", "val_accuracy"]) for e in range(3)]
    # Keras's EarlyStopping sets model.stop_training: the loop stops after that epoch.
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=0)
    state = fit(model, optimizer, lambda epoch, skip: two_batches.skip(skip), 2,
                TrainConfig(epochs=5), strategy, str(tmp_path / "stop"),
                lambda m: {"accuracy": 0.5}, callbacks=[stop])
    assert state.step == 4 and state.stopped_early


def test_a_loss_as_best_metric_keeps_the_lowest(toy_bert, tmp_path):
    strategy, model, optimizer, data = _setup(toy_bert)
    losses = iter([0.5, 0.2, 0.9])
    state = fit(model, optimizer, lambda epoch, skip: data.skip(skip), 1,
                TrainConfig(epochs=3, best_metric="loss"), strategy, str(tmp_path),
                lambda m: {"loss": next(losses)}, higher_is_better=False)
    assert state.best["step"] == 2 and state.best["loss"] == 0.2


def test_weight_averages_follow_the_warmed_up_decay_and_swap_back():
    import keras

    from tfpretrain.optimizers import FusedAdamW

    variable = keras.Variable(np.zeros(3, "float32"))
    optimizer = FusedAdamW(0.1, weight_decay=0.0, average_decay=0.5)
    optimizer.build([variable])
    expected = np.zeros(3)
    for t in range(4):
        optimizer.apply_gradients([(tf.ones(3), variable)])
        decay = min(0.5, (1 + t) / (10 + t))  # tf.train.ExponentialMovingAverage's warm-up
        expected = decay * expected + (1 - decay) * variable.numpy()
    raw = variable.numpy().copy()
    np.testing.assert_allclose(optimizer.averages[0].numpy(), expected, rtol=1e-6)
    optimizer.swap_averages()
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)
    optimizer.swap_averages()
    np.testing.assert_array_equal(variable.numpy(), raw)


@pytest.mark.slow  # 16 s in the default suite, which must stay under 15 min
def test_averaged_weights_are_evaluated_kept_as_best_and_ended_on(toy_bert, tmp_path):
    import keras

    strategy, model, _, data = _setup(toy_bert)
    with strategy.scope():
        optimizer = build_optimizer(TrainConfig(learning_rate=1e-2, average_decay=0.9), 8)
    scores, evaluated, raw = iter([0.5, 0.9, 0.4, 0.3]), [], []

    def evaluate(m):
        evaluated.append([w.numpy().copy() for w in m.trainable_weights])
        raw.append([a.numpy().copy() for a in optimizer.averages])  # swapped: the raw weights
        return {"accuracy": next(scores)}

    fit(model, optimizer, lambda epoch, skip: data, 1, TrainConfig(epochs=4), strategy,
        str(tmp_path), evaluate)
    assert not np.allclose(evaluated[1][0], raw[1][0])  # averages differ from the raw weights
    # The model ends with the averaged weights of the best evaluation (step 2).
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(evaluated[1], model.trainable_weights))
    # Without evaluation the run ends on the averages of its last step.
    strategy, model, _, data = _setup(toy_bert)
    with strategy.scope():
        optimizer = build_optimizer(TrainConfig(learning_rate=1e-2, average_decay=0.9), 8)
    last = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: last.__setitem__(
        slice(None), [w.numpy().copy() for w in model.trainable_weights]))
    fit(model, optimizer, lambda epoch, skip: data, 1, TrainConfig(epochs=2), strategy,
        str(tmp_path / "no_eval"), callbacks=[record])
    # Swapped in at the end: the optimizer now holds the last raw weights, the model the averages.
    assert all(np.array_equal(r, a.numpy()) for r, a in zip(last, optimizer.averages))
    assert not np.allclose(last[0], model.trainable_weights[0].numpy())


def test_layer_decay_scales_each_layers_learning_rate():
    import keras

    from tfpretrain.optimizers import FusedAdamW

    names = ["word_embeddings", "transformer/layer_0/kernel", "transformer/layer_1/kernel",
             "classifier/kernel"]
    variables = [keras.Variable(np.zeros(2, "float32"), name=n.replace("/", "_")) for n in names]
    optimizer = FusedAdamW(0.1, weight_decay=0.0, layer_decay=0.5)
    optimizer.apply_gradients([(tf.ones(2), v) for v in variables])
    # Adam's first step moves each weight by its learning rate: 0.1 x 0.5 ** (layers above).
    np.testing.assert_allclose([-v.numpy()[0] for v in variables], [0.0125, 0.025, 0.05, 0.1],
                               rtol=1e-4)


@pytest.mark.parametrize("scaling, batch, peak", [("none", 128, 1e-4), ("sqrt", 128, 2e-4),
                                                  ("sqrt", 8, 5e-5), ("linear", 64, 2e-4),
                                                  ("sqrt", 32, 1e-4)])
def test_the_peak_learning_rate_follows_the_batch_as_lr_scaling_says(scaling, batch, peak):
    config = TrainConfig(learning_rate=1e-4, global_batch_size=batch, lr_scaling=scaling)
    assert peak_learning_rate(config)[0] == pytest.approx(peak)
    assert bool(peak_learning_rate(config)[1]) == (peak != 1e-4)  # said only when it changed
    optimizer = build_optimizer(config, total_steps=100)
    optimizer.iterations.assign(10)  # the end of warm-up: the peak
    assert float(optimizer.learning_rate) == pytest.approx(peak)
