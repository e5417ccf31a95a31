"""Every strategy, precision and loop option of the training loop, on this CPU machine.

Runs go through the bert_text_classifier recipe on a toy BERT without dropout (so replicas and
workers see the same randomness as one device) and compare the checkpoints they write.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, python_env, run_python, toy_recipe_args

# The recipe, on 2 logical CPU devices (set before TensorFlow starts).
RECIPE_ON_TWO_CPUS = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from recipes import bert_text_classifier
from tfpretrain import cli
sys.exit(cli.run(bert_text_classifier.main, bert_text_classifier.TextClassifierConfig(),
                 argv=sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def toy_bert_no_dropout(tmp_path_factory):
    from tfpretrain.encoders.toy import export_toy_bert

    return export_toy_bert(str(tmp_path_factory.mktemp("toy_bert_no_dropout")), dropout=0.0)


def _args(toy_bert, toy_csv, workdir, *extra):
    args = toy_recipe_args(toy_bert, toy_csv, workdir, "--model.dropout=0",
                           "--export.enabled=false", "--train.max_steps=6",
                           "--train.checkpoint_every=2", *extra)
    return args[2:]  # without "-m recipes.bert_text_classifier"


def _recipe(args):
    return ["-m", "recipes.bert_text_classifier", *args]


def _checkpoint(workdir):
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    tensors = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    # Weights, optimizer slots and the best validation score; not the step counters, not the
    # training seconds (wall time, kept for train.max_minutes).
    return {name: t for name, t in tensors.items()
            if getattr(t, "dtype", None) is not None and t.dtype.kind == "f"
            and not name.startswith("seconds/")}


def _max_difference(a, b):
    assert a.keys() == b.keys() and len(a) > 10
    # Equal infinities (an unset best score) count as equal; a NaN anywhere fails.
    with np.errstate(invalid="ignore"):
        return max(float(np.max(np.abs(np.where(a[k] == b[k], 0.0, a[k] - b[k])))) for k in a)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_worker(index, ports, args, log, recipe="recipes.bert_text_classifier"):
    tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                 "task": {"type": "worker", "index": index}}
    env = python_env(TF_CONFIG=json.dumps(tf_config), CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(
        [sys.executable, "-m", recipe, *args, "--runtime.strategy=multi_worker"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _run_cluster(args, logdir, timeout=300, name="cluster"):
    ports = _free_ports(2)
    logs = [open(os.path.join(logdir, f"{name}-worker{i}.log"), "w") for i in range(2)]
    workers = [_start_worker(i, ports, args, logs[i]) for i in range(2)]
    codes = [w.wait(timeout=timeout) for w in workers]
    return codes, [open(log.name).read() for log in logs]


def _digest(log):
    return [line.split("sha256 ")[1] for line in log.splitlines() if "final weights sha256" in line]


@pytest.mark.slow  # two recipe runs, one on 2 logical CPUs
@pytest.mark.parametrize("task, implementation", [("single_label", "saved_model"),
                                                  ("pair_regression", "saved_model"),
                                                  ("single_label", "keras")])
def test_mirrored_on_two_cpus_matches_one_device(toy_bert_no_dropout, toy_csv, pair_files,
                                                 tmp_path, task, implementation):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    files, extra = ((toy_csv, []) if task == "single_label" else
                    (pair_files, ["--data.text_key=sentence1,sentence2", "--data.label_key=score"]))
    extra.append(f"--model.implementation={implementation}")
    result = run_python(_recipe(_args(toy_bert_no_dropout, files, one, *extra,
                                      "--runtime.strategy=one_device")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 1 |" in result.stdout
    result = run_python(["-c", RECIPE_ON_TWO_CPUS, *_args(toy_bert_no_dropout, files, two, *extra,
                                                          "--runtime.strategy=mirrored")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2 |" in result.stdout
    assert _max_difference(_checkpoint(one), _checkpoint(two)) <= 1e-5


@pytest.mark.slow  # about a minute: separate processes, a cluster, XLA compiles
@pytest.mark.parametrize("implementation", ["saved_model", "keras"])
def test_multi_worker_cluster_matches_single_process(toy_bert_no_dropout, toy_csv, tmp_path,
                                                     implementation):
    single, cluster = str(tmp_path / "single"), str(tmp_path / "cluster")
    chosen = f"--model.implementation={implementation}"
    result = run_python(_recipe(_args(toy_bert_no_dropout, toy_csv, single, chosen,
                                      "--runtime.strategy=one_device")))
    assert result.returncode == 0, result.stderr[-3000:]
    codes, logs = _run_cluster(_args(toy_bert_no_dropout, toy_csv, cluster, chosen),
                               str(tmp_path))
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "replicas 2 |" in logs[0]
    digests = [_digest(log) for log in logs]
    assert len(digests[0]) == 1 and digests[0] == digests[1]  # identical weights on both workers
    assert _max_difference(_checkpoint(single), _checkpoint(cluster)) <= 1e-5
    # Only the chief wrote: one config, one metrics file, no worker directories left behind.
    assert sorted(os.listdir(cluster)) == sorted(os.listdir(single))


@pytest.mark.slow  # about a minute: separate processes, a cluster, XLA compiles
def test_killed_worker_stops_the_cluster_with_an_error_and_rerun_resumes(
    toy_bert_no_dropout, toy_csv, tmp_path
):
    workdir = str(tmp_path / "cluster")
    args = _args(toy_bert_no_dropout, toy_csv, workdir, "--train.max_steps=80",
                 "--train.checkpoint_every=5")
    ports = _free_ports(2)
    logs = [open(os.path.join(str(tmp_path), f"worker{i}.log"), "w") for i in range(2)]
    workers = [_start_worker(i, ports, args, logs[i]) for i in range(2)]
    checkpoints = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 240
    while not (tf.io.gfile.exists(checkpoints) and tf.train.latest_checkpoint(checkpoints)):
        assert time.time() < deadline and workers[0].poll() is None, (
            open(logs[0].name).read()[-3000:])
        time.sleep(0.5)
    workers[1].kill()
    killed = time.time()
    try:
        code = workers[0].wait(timeout=60)
    except subprocess.TimeoutExpired:
        workers[0].kill()
        pytest.fail("the surviving worker hung for 60 s after its peer was killed")
    log = open(logs[0].name).read()
    assert code != 0 and time.time() - killed < 60
    assert "lost another worker" in log and "Restart every worker with the same command" in log
    assert "Traceback" not in log
    print(f"survivor exited {time.time() - killed:.1f} s after the kill: "
          + log.split("error: ")[-1][:400])
    saved = int(tf.train.latest_checkpoint(checkpoints).rsplit("-", 1)[1])

    codes, logs = _run_cluster(args, str(tmp_path), name="rerun")
    assert codes == [0, 0], logs[0][-3000:]
    assert f"Resuming from {os.path.join(checkpoints, 'ckpt')}" in logs[0]
    resumed_at = int(logs[0].split("Resuming from ")[1].split("(step ")[1].split(",")[0])
    assert resumed_at >= saved > 0
    assert _digest(logs[0]) == _digest(logs[1])


def test_auto_picks_tpu_then_cluster_then_gpus_then_one_device(monkeypatch):
    from tfpretrain.distribute import resolve_strategy_name

    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert resolve_strategy_name("auto") == "one_device"  # this machine has no GPU
    cluster = {"cluster": {"worker": ["localhost:1", "localhost:2"]},
               "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    assert resolve_strategy_name("auto") == "multi_worker"
    assert resolve_strategy_name("auto", tpu="grpc://10.0.0.2:8470") == "tpu"
    monkeypatch.setenv("TPU_NAME", "my-tpu")
    assert resolve_strategy_name("auto") == "tpu"
    assert resolve_strategy_name("one_device") == "one_device"  # explicit names are kept
    with pytest.raises(ValueError, match="runtime.strategy must be one of"):
        resolve_strategy_name("horovod")


def test_global_batch_splits_evenly_over_replicas():
    from tfpretrain.distribute import per_replica_batch_size

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    assert per_replica_batch_size(32, strategy) == 32

    class TwoReplicas:
        num_replicas_in_sync = 2

    assert per_replica_batch_size(32, TwoReplicas()) == 16
    with pytest.raises(ValueError, match="does not split evenly over 2 replicas"):
        per_replica_batch_size(33, TwoReplicas())


def test_an_epochs_batches_distribute_under_any_strategy_and_outside_one():
    from tfpretrain.distribute import distribute_batches

    batches = tf.data.Dataset.range(6).batch(2)
    for strategy in (tf.distribute.get_strategy(),  # what fit gets called outside any scope
                     tf.distribute.OneDeviceStrategy("/cpu:0")):
        got = [strategy.experimental_local_results(b)[0].numpy().tolist()
               for b in distribute_batches(strategy, batches)]
        assert got == [[0, 1], [2, 3], [4, 5]]


@pytest.mark.slow  # a 2-process cluster
def test_recipes_without_chief_only_writes_refuse_a_cluster(tmp_path):
    ports = _free_ports(2)
    logs = [open(os.path.join(str(tmp_path), f"worker{i}.log"), "w") for i in range(2)]
    workers = [_start_worker(i, ports, [f"--workdir={tmp_path / 'run'}"], logs[i],
                             "recipes.use_text_classifier")
               for i in range(2)]
    assert [w.wait(timeout=120) for w in workers] == [2, 2]
    log = open(logs[0].name).read()
    assert "error: this recipe does not support multi-worker training yet (2 workers" in log
    assert not os.path.exists(tmp_path / "run" / "config.json")


def _train_log(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_steps_per_execution_gives_the_same_run(toy_bert_no_dropout, toy_csv, tmp_path):
    one, three = str(tmp_path / "one"), str(tmp_path / "three")
    extra = ("--runtime.strategy=one_device", "--train.max_steps=9", "--train.eval_every=4",
             "--train.checkpoint_every=4")
    _train_log(run_python(_recipe(_args(toy_bert_no_dropout, toy_csv, one, *extra))))
    _train_log(run_python(_recipe(_args(toy_bert_no_dropout, toy_csv, three, *extra,
                                        "--runtime.steps_per_execution=3"))))
    assert _max_difference(_checkpoint(one), _checkpoint(three)) == 0.0
    # Evaluations and checkpoints keep their steps although calls run 3 steps at a time.
    history = [json.loads(line)["step"]
               for line in open(os.path.join(three, "logs", "eval_history.jsonl"))]
    assert history == [4, 8, 9]
    assert sorted(os.listdir(os.path.join(three, "checkpoints")))[-1] == "ckpt-9.index"


@pytest.mark.slow  # about a minute: separate processes, a cluster, XLA compiles
@pytest.mark.parametrize("implementation", ["saved_model", "keras"])
def test_jit_compile_trains_like_the_graph_step(toy_bert_no_dropout, toy_csv, tmp_path,
                                                implementation):
    plain, jit = str(tmp_path / "plain"), str(tmp_path / "jit")
    chosen = f"--model.implementation={implementation}"
    _train_log(run_python(_recipe(_args(toy_bert_no_dropout, toy_csv, plain, chosen,
                                        "--runtime.strategy=one_device"))))
    _train_log(run_python(_recipe(_args(toy_bert_no_dropout, toy_csv, jit, chosen,
                                        "--runtime.strategy=one_device",
                                        "--runtime.jit_compile=true"))))
    difference = _max_difference(_checkpoint(plain), _checkpoint(jit))
    assert 0.0 < difference <= 1e-3  # XLA fuses differently: close, not bit-equal


@pytest.mark.slow  # a recipe run per policy
@pytest.mark.parametrize("policy, implementation", [("mixed_bfloat16", "saved_model"),
                                                    ("mixed_float16", "saved_model"),
                                                    ("mixed_bfloat16", "keras")])
def test_mixed_precision_trains_and_says_what_runs_in_which_dtype(policy, implementation, toy_bert,
                                                                  toy_csv, tmp_path):
    workdir = str(tmp_path / policy)
    log = _train_log(run_python(toy_recipe_args(toy_bert, toy_csv, workdir,
                                                f"--runtime.precision={policy}",
                                                f"--model.implementation={implementation}")))
    compute = policy.split("_")[1]
    line = next(line for line in log.splitlines() if line.startswith("precision "))
    assert line.startswith(f"precision {policy} | compute dtypes: ")
    dtypes = dict(part.split(": ") for part in line.split("compute dtypes: ")[1].split("; "))
    assert "classifier/logits" in dtypes["float32"]  # logits and loss in float32 always
    # The restored SavedModel encoder keeps its float32 graph; the Keras-native one computes
    # under the policy.
    encoder_dtype = "float32" if implementation == "saved_model" else compute
    assert "encoder" in dtypes[encoder_dtype].split(", ")
    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    # The toy task, learnt under the policy, export checked.
    assert metrics["test"]["accuracy"] >= 0.9
    names = tf.train.list_variables(os.path.join(workdir, "checkpoints"))
    has_loss_scale = any("dynamic_scale" in name for name, _ in names)
    assert has_loss_scale == (policy == "mixed_float16")


def test_unknown_precision_is_a_one_line_error(toy_bert, toy_csv, tmp_path):
    result = run_python(toy_recipe_args(toy_bert, toy_csv, str(tmp_path),
                                        "--runtime.precision=fp8"))
    assert result.returncode == 2
    assert "runtime.precision must be one of" in result.stderr and "Traceback" not in result.stderr
