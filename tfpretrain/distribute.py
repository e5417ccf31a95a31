"""Strategy selection and batch arithmetic, in one place.

``auto`` picks: TPU (when a resolver finds one) > multi-worker (when ``TF_CONFIG`` names a
cluster of two or more tasks) > mirrored (two or more GPUs) > one device.
"""

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def _tf_config_tasks():
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(v) for v in cluster.values())


def _tpu_strategy(address):
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def build_strategy(name="auto", tpu=""):
    """Returns a ``tf.distribute.Strategy`` for ``name`` (see module docstring for ``auto``).

    Example:
        >>> strategy = build_strategy("one_device")
        >>> strategy.num_replicas_in_sync
        1
    """
    if name not in STRATEGIES:
        raise ValueError(f"runtime.strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "auto":
        if tpu or os.environ.get("TPU_NAME"):
            name = "tpu"
        elif _tf_config_tasks() >= 2:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) >= 2:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "tpu":
        return _tpu_strategy(tpu or os.environ.get("TPU_NAME", ""))
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def per_replica_batch_size(global_batch_size, strategy):
    """The batch each replica computes; the global batch must split evenly."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(
            f"train.global_batch_size={global_batch_size} does not split evenly over {replicas} "
            "replicas; use a multiple of the replica count"
        )
    return global_batch_size // replicas


def is_chief(strategy):
    """True on the worker that writes checkpoints and exports (TensorFlow's convention)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )
