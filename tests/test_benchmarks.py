"""The benchmark scripts' own logic: which examples a learning-curve point trains on, for how
many steps, and what the table reports."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import common, label_curves, step_profile

LABELS = [0] * 30 + [1] * 30 + [2] * 3


def test_sample_per_class_draws_each_class_equally_and_repeatably():
    chosen = label_curves.sample_per_class(LABELS, 5, seed=0)
    counts = np.bincount(np.asarray(LABELS)[chosen])
    assert counts.tolist() == [5, 5, 3]  # class 2 has only 3: all of them
    assert chosen == label_curves.sample_per_class(LABELS, 5, seed=0)
    assert chosen != label_curves.sample_per_class(LABELS, 5, seed=1)


def test_a_larger_count_keeps_the_smaller_counts_examples():
    for seed in range(3):
        small = set(label_curves.sample_per_class(LABELS, 2, seed))
        assert small <= set(label_curves.sample_per_class(LABELS, 10, seed))


@pytest.mark.parametrize("examples, expected", [(5, (5, 100)), (250, (32, 100)),
                                                (1000, (32, 320))])
def test_training_steps_has_a_floor_of_steps_and_of_epochs(examples, expected):
    assert label_curves.training_steps(examples, 32, min_steps=100, min_epochs=10) == expected


def test_finished_runs_are_reused_only_under_the_settings_they_ran_with(tmp_path, capsys):
    record = {"curve": "export", "per_class": 10, "seed": 0, "accuracy": 0.5,
              "learning_rate": 1e-3, "head_fraction": 0.0}  # written before layer_decay was
    (tmp_path / "runs.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(SystemExit) as stopped:
        label_curves.main(["--workdir", str(tmp_path), "--curve", "export=runs/mlm/export",
                           "--labels", "10", "--layer-decay", "0.5"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "'layer_decay': 1.0" in err and "'layer_decay': 0.5" in err and "--workdir" in err


def test_long_texts_join_whole_sentences_up_to_the_length():
    texts = [f"sentence {i} has five words" if i % 2 else f"short {i}" for i in range(40)]
    labels = [i % 2 for i in range(40)]
    joined, joined_labels = common.long_texts(texts, labels, 6, 12, seed=0)
    assert len(joined) == len(joined_labels) == 6
    assert all(len(t.split()) >= 12 for t in joined)
    for text, label in zip(joined, joined_labels):
        first = next(t for t in texts if text.startswith(t + " "))
        assert label == labels[texts.index(first)]
    assert (joined, joined_labels) == common.long_texts(texts, labels, 6, 12, seed=0)
    with pytest.raises(SystemExit, match="cannot make"):
        common.long_texts(texts[:4], labels[:4], 50, 12)


def test_data_fields_are_typed_and_checked_as_the_recipes_flags_are():
    from tfpretrain.data.images import ImageDataConfig
    from tfpretrain.data.text import TextDataConfig

    text = label_curves.data_config(TextDataConfig(), ["swap_pairs=false", "label_key=category"])
    assert text.swap_pairs is False and text.label_key == "category"
    assert label_curves.data_config(TextDataConfig(), ["swap_pairs=yes"]).swap_pairs is True
    image = label_curves.data_config(ImageDataConfig(train_per_class=0), ["train_per_class=20"])
    assert image.train_per_class == 20
    for bad, message in [("train_per_class=many", "expects int"), ("colour=red", "unknown"),
                         ("train_per_class", "KEY=VALUE")]:
        with pytest.raises(SystemExit, match=message):
            label_curves.data_config(ImageDataConfig(), [bad])


def test_parse_curve():
    assert label_curves.parse_curve("a b=runs/x/export:frozen@1e-2", 1e-3) == {
        "name": "a b", "encoder": "runs/x/export", "mode": "frozen", "frozen": True,
        "learning_rate": 1e-2}
    assert label_curves.parse_curve("c=minilm_l6", 1e-3) == {
        "name": "c", "encoder": "minilm_l6", "mode": "fine-tuned", "frozen": False,
        "learning_rate": 1e-3}
    assert label_curves.parse_curve("d=digits_resnet:scratch", 1e-3)["mode"] == "scratch"
    # a colon that is not a mode stays part of the encoder
    assert label_curves.parse_curve("e=hf://org/model", 1e-3)["encoder"] == "hf://org/model"
    with pytest.raises(Exception, match="NAME=ENCODER"):
        label_curves.parse_curve("no-encoder", 1e-3)


def test_summary_is_mean_and_sample_spread_per_point():
    runs = [{"curve": "a", "per_class": 1, "accuracy": x} for x in (0.5, 0.7)]
    runs.append({"curve": "a", "per_class": 2, "accuracy": 0.9})
    table = label_curves.summarise(runs, [{"name": "a"}], [1, 2, 5])
    assert table["a", 1] == pytest.approx((0.6, np.std([0.5, 0.7], ddof=1), 2))
    assert table["a", 2] == (0.9, 0.0, 1)
    assert ("a", 5) not in table


@pytest.mark.slow
def test_label_curves_end_to_end_on_the_toy_bert(toy_bert, toy_csv, tmp_path):
    root = os.path.dirname(toy_bert[0])
    workdir = tmp_path / "curves"
    command = [sys.executable, "-m", "benchmarks.label_curves", f"--workdir={workdir}",
               "--labels=1,4", "--seeds=2", "--min-steps=3", "--min-epochs=1",
               "--seq-length=16", f"--data=train_file={toy_csv['train']}",
               f"--data=test_file={toy_csv['test']}", f"--curve=tuned={root}",
               f"--curve=frozen={root}:frozen@1e-2"]
    cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "runs.jsonl") as f:
        runs = [json.loads(line) for line in f]
    assert len(runs) == 2 * 2 * 2
    assert {(r["curve"], r["per_class"], r["examples"]) for r in runs} == {
        (c, k, 2 * k) for c in ("tuned", "frozen") for k in (1, 4)}
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["steps"] >= 3 for r in runs)
    assert "| labels per class | tuned" in result.stdout
    assert (workdir / "curves.png").stat().st_size > 10_000
    # A finished run is read, not repeated.
    again = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "[curves]" not in again.stdout


def test_text_curves_refuse_scratch(tmp_path):
    with pytest.raises(SystemExit):
        label_curves.main([f"--workdir={tmp_path}", "--curve=s=minilm_l6:scratch"])



def test_self_time_subtracts_the_events_nested_in_an_event():
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    line = xplane_pb2.XLine()
    for metadata_id, offset, duration in [(1, 0, 100), (2, 10, 30), (3, 15, 5), (4, 50, 20),
                                          (5, 200, 40)]:
        line.events.add(metadata_id=metadata_id, offset_ps=offset, duration_ps=duration)
    # 1 holds 2 (which holds 3) and 4; 5 follows on its own.
    assert sorted(step_profile._self_times(line)) == [(1, 50), (2, 25), (3, 5), (4, 20), (5, 40)]


def test_step_profile_reads_op_types_and_scopes_from_a_real_trace(tmp_path):
    import tensorflow as tf

    w = tf.Variable(tf.random.stateless_normal((64, 64), seed=(1, 2)))
    x = tf.random.stateless_normal((256, 64), seed=(3, 4))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            with tf.name_scope("dropout"):
                h = tf.nn.dropout(tf.matmul(x, w), 0.1, seed=1)
            loss = tf.reduce_sum(tf.square(h))
        w.assign_sub(1e-6 * tape.gradient(loss, w))

    step()
    tf.profiler.experimental.start(str(tmp_path))
    for _ in range(3):
        step()
    tf.profiler.experimental.stop()

    times = step_profile.op_times(str(tmp_path))
    assert any(kind.endswith("MatMul") for _, kind in times)
    types, groups, total = step_profile.summarize(times, steps=3)
    assert total > 0
    assert sum(share for _, _, share in types) == pytest.approx(1.0)
    shares = {label: share for label, _, share in groups}
    assert 0 < shares["matrix products"] < 1
    assert 0 < shares["dropout"] < 1
    assert 0 < shares["backward pass"] < 1
    assert shares["GELU"] == 0


def test_count_model_reads_the_visible_neighbours_and_falls_back_to_frequency():
    from benchmarks.mlm_handover import count_model_accuracy

    # 5 = "a" is always followed by 6 = "b", then 7 = "c"; 8 is the most frequent piece.
    train = [np.array([5, 6, 7, 8, 8, 8] * 20)]
    inputs = {"input_word_ids": np.array([[2, 5, 4, 7, 8, 4, 4, 4, 8, 3]]),
              "masked_lm_positions": np.array([[2, 6]])}
    labels = {"masked_lm_ids": np.array([[6, 6]]), "masked_lm_weights": np.array([[1.0, 0.0]])}
    assert count_model_accuracy(train, [(inputs, labels)], 10, (-1, 1)) == 1.0
    # Three masked in a row: the outer two read the visible 8 beside them (8 follows and precedes
    # 8 most often); the middle one has no visible neighbour, so only the frequency (8) is left.
    inputs["masked_lm_positions"] = np.array([[5, 6, 7]])
    labels = {"masked_lm_ids": np.array([[8, 6, 8]]), "masked_lm_weights": np.ones((1, 3))}
    assert count_model_accuracy(train, [(inputs, labels)], 10, (-1, 1)) == 2 / 3
