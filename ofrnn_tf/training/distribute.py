"""The tf.distribute strategy a run uses, chosen by name, and what its replicas and
workers must agree on: the batch split, the settings and data of a multi-worker run, and a
step skipped on every replica where one overflowed."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import TYPE_CHECKING

import tensorflow as tf
from ofrnn_tf.status import log

if TYPE_CHECKING:
    from ofrnn_tf.config.experiment import ExperimentConfig
    from ofrnn_tf.run_dir import RunFacts

STRATEGIES = ("default", "mirrored", "multi_worker")


class ClusterConfigError(ValueError):
    """``--runtime.strategy=multi_worker`` without a usable TF_CONFIG."""


class BatchSplitError(ValueError):
    """A global batch the strategy's replicas cannot share equally."""


def check_batch_split(strategy: tf.distribute.Strategy, batch_size: int) -> None:
    """Refuses a global batch that the replicas in sync do not divide (each takes an
    equal share of every batch)."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise BatchSplitError(
            f"--train.batch_size={batch_size} is not divisible by the {replicas} replicas "
            f"of this strategy (each takes an equal share of a batch): use a multiple of "
            f"{replicas}, or, for a run resumed (it keeps its batch size), a number of "
            f"replicas that divides {batch_size}")


def cluster_config() -> dict:
    """TF_CONFIG, read as ``--runtime.strategy=multi_worker`` needs it: a JSON object with
    the cluster (a chief or workers) and this process's task (its type and index);
    `ClusterConfigError` naming what is missing otherwise."""
    def refuse(problem: str):
        return ClusterConfigError(
            f"--runtime.strategy=multi_worker reads the cluster from the TF_CONFIG environment "
            f"variable: {problem} (e.g. TF_CONFIG='{{\"cluster\": {{\"worker\": "
            f"[\"host1:2222\", \"host2:2222\"]}}, \"task\": {{\"type\": \"worker\", "
            f"\"index\": 0}}}}')")

    if not os.environ.get("TF_CONFIG", "").strip():
        raise refuse("it is not set")
    try:
        tf_config = json.loads(os.environ["TF_CONFIG"])
    except (json.JSONDecodeError, RecursionError) as e:  # Recursion: nested too deep
        raise refuse(f"it is not valid JSON ({e})") from None
    if not isinstance(tf_config, dict):
        raise refuse(f"it is {type(tf_config).__name__}, not a JSON object")
    cluster, task = tf_config.get("cluster"), tf_config.get("task")
    if not isinstance(cluster, dict) or not any(cluster.get(job) for job in ("chief", "worker")):
        raise refuse("it has no \"cluster\" with a chief or workers")
    if (not isinstance(task, dict) or not task.get("type")
            or not isinstance(task.get("index", 0), int)):
        raise refuse("it has no \"task\" with this process's type and index")
    if len(cluster.get(task["type"]) or []) <= task.get("index", 0):
        raise refuse(f"its task {task['type']} {task.get('index', 0)} is not in its cluster")
    return tf_config


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """`default` (one device), `mirrored` (all local GPUs) or `multi_worker` (TF_CONFIG).

    Keras 3 `fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so
    every strategy is driven by the custom loop in `ofrnn_tf.training.trainer`.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return _mirrored_strategy()
    if name == "multi_worker":
        tf_config = cluster_config()
        # TensorFlow waits for every task of the cluster without a word, and its
        # coordination service takes SIGTERM from then on.
        log(f"multi_worker: waiting for every task of the cluster "
            f"{json.dumps(tf_config['cluster'])} to start (one that stopped before, see "
            f"its log, leaves this one waiting); from now on only SIGKILL stops this "
            f"process (a rerun resumes it)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


@functools.cache
def _mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """One MirroredStrategy per process: each new one numbers its all-reduces from the
    same start, and the collective executor remembers the tensor shapes of the numbers
    an earlier run used, so a second run in one process (a sweep in a notebook) whose
    model has other shapes failed at its first step ("Shape mismatch in the collective
    instance 100"). Its devices, all local GPUs, cannot change once TensorFlow started."""
    return tf.distribute.MirroredStrategy()


def _chief(task_type, task_id, cluster: dict) -> bool:
    """TensorFlow's rule: the ``chief`` task is the chief; in a cluster without one,
    worker 0 is."""
    if not task_type:
        return True
    if task_type == "chief":
        return True
    return task_type == "worker" and int(task_id or 0) == 0 and not cluster.get("chief")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes summaries, the best checkpoint and result files."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return _chief(resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict())


def is_chief_task(strategy: str) -> bool:
    """Whether this process is the chief of a run under the named `strategy`: always,
    but for the workers of a ``multi_worker`` run, read from TF_CONFIG (as `is_chief`
    decides) before any strategy is made; True without a task there."""
    if strategy != "multi_worker":  # a TF_CONFIG left in the environment is not read
        return True
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task = tf_config.get("task") or {}
        return _chief(task.get("type"), task.get("index"), tf_config.get("cluster") or {})
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return True  # `make_strategy` refuses it


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Machines taking part (1 unless MultiWorkerMirroredStrategy spans several)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(job, [])) for job in ("chief", "worker")))


# Settings that may differ between the workers of one run: where each keeps its cache
# and finds its data (the data themselves are compared by the feature cache's fingerprint).
_PER_WORKER = {"data": ("data_dir", "manifest"), "runtime": ("cache_dir",)}


def settings_parts(config: ExperimentConfig, facts: RunFacts, num_train: int) -> dict:
    """What the workers of a multi-worker run must agree on, by the name a message gives
    it: each flag section (``--stage2.*`` ...) and the data the run trains on."""
    record = {**config.to_record(), "runtime": config.to_dict()["runtime"]}
    parts = {}
    for section, values in record.items():
        parts[f"--{section}.*"] = {key: value for key, value in values.items()
                                   if key not in _PER_WORKER.get(section, ())}
    parts["data (feature cache, labels or T_max)"] = {
        "features": facts.features_fingerprint, "labels": list(facts.label_names),
        "max_steps": facts.max_steps, "label_order": facts.label_order,
        "train_examples": num_train}
    return parts


def digest(part: dict) -> list[int]:
    """Three 16-bit numbers from a hash of `part`: summed with their squares over every
    replica in float64, they are exact for up to a thousand replicas."""
    digest = hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).digest()
    return [int.from_bytes(digest[i:i + 2], "big") for i in range(0, 6, 2)]


def poisoned_if_any_replica_overflowed(grads):
    """A replica's gradients, made NaN where any replica's are not finite.

    Keras' `LossScaleOptimizer` decides to skip a step (and halve the scale) from the
    first local replica's gradients alone, before they are summed across replicas: an
    overflow on another replica would be applied (NaN weights under MirroredStrategy),
    and workers that decide apart wait for each other for ever (multi-worker). Every
    replica now sees the overflow, so every one skips, as one device would."""
    values = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads if g is not None]
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in values])
    overflowed = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
    factor = tf.where(overflowed > 0, float("nan"), 1.0)

    def poisoned(g):
        if g is None:
            return None
        if isinstance(g, tf.IndexedSlices):
            return tf.IndexedSlices(g.values * tf.cast(factor, g.values.dtype), g.indices,
                                    g.dense_shape)
        return g * tf.cast(factor, g.dtype)

    return [poisoned(g) for g in grads]
