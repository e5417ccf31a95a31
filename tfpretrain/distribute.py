"""Strategy selection and batch arithmetic, in one place.

``auto`` picks: TPU (when a resolver finds one) > multi-worker (when ``TF_CONFIG`` names a
cluster of two or more tasks) > mirrored (two or more GPUs) > one device.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from tfpretrain.config import PRECISIONS, STRATEGIES


def _tf_config_tasks():
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(v) for v in cluster.values())


def _tpu_strategy(address):
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def resolve_strategy_name(name: str = "auto", tpu: str = "") -> str:
    """The strategy ``build_strategy`` builds for ``name``: ``auto`` resolved from the TPU
    address or ``TPU_NAME``, ``TF_CONFIG`` and the visible GPUs (see the module docstring)."""
    if name not in STRATEGIES:
        raise ValueError(f"runtime.strategy must be one of {STRATEGIES}, got {name!r}")
    if name != "auto":
        return name
    if tpu or os.environ.get("TPU_NAME"):
        return "tpu"
    if _tf_config_tasks() >= 2:
        return "multi_worker"
    if len(tf.config.list_logical_devices("GPU")) >= 2:
        return "mirrored"
    return "one_device"


def build_strategy(name: str = "auto", tpu: str = "") -> tf.distribute.Strategy:
    """Returns a ``tf.distribute.Strategy`` for ``name`` (see module docstring for ``auto``).

    Example:
        >>> strategy = build_strategy("one_device")
        >>> strategy.num_replicas_in_sync
        1
    """
    name = resolve_strategy_name(name, tpu)
    if name == "tpu":
        return _tpu_strategy(tpu or os.environ.get("TPU_NAME", ""))
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        # All GPUs; on a CPU-only host split into logical devices (tests, debugging), all CPUs.
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy(
            [d.name for d in gpus or tf.config.list_logical_devices("CPU")])
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def per_replica_batch_size(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """The batch each replica computes; the global batch must split evenly."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(
            f"train.global_batch_size={global_batch_size} does not split evenly over {replicas} "
            "replicas; use a multiple of the replica count"
        )
    return global_batch_size // replicas


def distribute_batches(strategy: tf.distribute.Strategy,
                       batches: tf.data.Dataset) -> tf.distribute.DistributedDataset:
    """``strategy.experimental_distribute_dataset(batches)`` for one training epoch, set up so its
    iterator is freed at once when the epoch ends.

    With tf.data's autotuning on and the batches fetched through the strategy's device prefetch,
    deleting an exhausted distributed iterator on TensorFlow 2.21's CPU runtime blocks for a time
    that grows with how long the epoch ran (19–44 s after 50 steps of 2 s; a plain iterator of the
    same batches: none). When every device of the strategy is a CPU there is nothing to fetch to
    and a training pipeline has nothing left to tune (it reads cached, tokenised examples), so
    both are turned off there; GPU and TPU runs keep the device prefetch. Outside any strategy's
    scope (``tf.distribute.get_strategy()``) the batches are iterated as they are.
    """
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy (no scope): iterating it iterates the batches
        return strategy.experimental_distribute_dataset(batches)
    if not all("CPU" in device.upper() for device in devices):
        return strategy.experimental_distribute_dataset(batches)
    options = tf.data.Options()
    options.autotune.enabled = False
    return strategy.experimental_distribute_dataset(
        batches.with_options(options),
        tf.distribute.InputOptions(experimental_fetch_to_device=False))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints and exports (TensorFlow's convention)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def set_precision(policy: str) -> None:
    """Sets Keras's global dtype policy before a model is built: ``float32``, ``mixed_bfloat16``
    (TPUs, Ampere+ GPUs, CPUs with AVX512-BF16/AMX) or ``mixed_float16`` (GPUs; the optimizer
    from ``build_optimizer`` then scales the loss).

    Example:
        >>> set_precision("float32")
    """
    if policy not in PRECISIONS:
        raise ValueError(f"runtime.precision must be one of {PRECISIONS}, got {policy!r}")
    keras.mixed_precision.set_global_policy(policy)


@contextlib.contextmanager
def float32_compute(model: keras.layers.Layer) -> Iterator[None]:
    """Within the block, every layer of ``model`` computes in float32 (a model trained under
    ``mixed_bfloat16``/``mixed_float16`` keeps float32 variables, so this only changes the
    compute dtype): exports serve in float32 unless asked otherwise.

    Example:
        >>> with float32_compute(model):  # doctest: +SKIP
        ...     export_text_classifier(model, ...)
    """
    changed = [(layer, layer.dtype_policy) for layer in model._flatten_layers()
               if layer.dtype_policy.compute_dtype != "float32"
               and layer.dtype_policy.variable_dtype == "float32"]
    for layer, _ in changed:
        layer.dtype_policy = "float32"
    try:
        yield
    finally:
        for layer, policy in changed:
            layer.dtype_policy = policy


def describe_precision(model: keras.Model) -> str:
    """One line saying which layers compute in which dtype (a restored SavedModel layer keeps
    the dtype its graph was traced with, whatever the global policy)."""
    by_dtype = {}
    for layer in model.layers:
        if layer.weights:
            by_dtype.setdefault(layer.compute_dtype, []).append(layer.name)
            for inner in layer._flatten_layers(include_self=False):  # e.g. float32 logits
                if inner.compute_dtype != layer.compute_dtype and (
                        inner._trainable_variables or inner._non_trainable_variables):
                    by_dtype.setdefault(inner.compute_dtype, []).append(
                        f"{layer.name}/{inner.name}")
    parts = [f"{dtype}: {', '.join(names)}" for dtype, names in sorted(by_dtype.items())]
    return (f"precision {keras.mixed_precision.global_policy().name} | compute dtypes: "
            + "; ".join(parts))


def report_worker_weights(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Multi-worker runs print a digest of the final weights on each worker: equal digests mean
    the workers stayed in sync bit for bit."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.asarray(variable.numpy()).tobytes())
    print(f"worker {resolver.task_type}:{resolver.task_id}: final weights sha256 "
          f"{digest.hexdigest()[:16]}", flush=True)
