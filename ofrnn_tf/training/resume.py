"""Where a run resumes: the newest training checkpoint that reads back whole, the same
point on every worker of a multi-worker run, and the leftovers of a save cut short.

`Trainer.restore` calls these; the checkpoint's contents (weights, optimizers, position)
are the trainer's (`training/checkpoints.py` reads its position).
"""

from __future__ import annotations

import glob
import os
import shutil
from typing import NamedTuple, Optional, Sequence

import tensorflow as tf

from ofrnn_tf.checkpoint_files import resumable_checkpoint
from ofrnn_tf.config.experiment import ExperimentConfig
from ofrnn_tf.run_dir import IncompatibleRunError, RunDir, RunFacts
from ofrnn_tf.training.checkpoints import checkpoint_position
from ofrnn_tf.training.distribute import digest, num_workers, settings_parts


class ResumePoint(NamedTuple):
    """The checkpoint a run resumes from (None: none), the newer ones passed over as
    ``(prefix, problem)``, and the folder it was read from."""
    latest: Optional[str]
    unreadable: list
    directory: str


def checkpoint_folders(run_dir: RunDir, worker: Optional[int]) -> list[str]:
    """The folders a run resumes from, first found first: the chief's checkpoints, then a
    worker's own copy (`worker` is None on the chief, which has no other)."""
    return [run_dir.checkpoints_dir()] + (
        [] if worker is None else [run_dir.checkpoints_dir(worker)])


def resume_point(folders: Sequence[str]) -> ResumePoint:
    """`resumable_checkpoint` of the first of `folders` that holds one, else of the last.

    Every worker resumes from the chief's checkpoints when it sees the run folder the
    chief writes (a shared folder: the workers then start from one point even if one of
    them saved less before a kill, or none trained here before); a worker that does not
    see them resumes from its own copy."""
    for directory in folders:
        latest, unreadable = resumable_checkpoint(directory)
        if latest:
            return ResumePoint(latest, unreadable, directory)
    return ResumePoint(*resumable_checkpoint(folders[-1]), folders[-1])


def remove_cut_saves(folders: Sequence[str]) -> None:
    """Removes the ``<prefix>_temp`` folders a save cut short leaves (the process killed
    while TensorFlow wrote its shards): no later save reuses them."""
    for directory in folders:
        for leftover in glob.glob(os.path.join(glob.escape(directory), "*_temp")):
            shutil.rmtree(leftover, ignore_errors=True)


def restore_checkpoint(path: str, checkpoint: tf.train.Checkpoint, parts: dict) -> None:
    """Restores the training checkpoint `path` into `checkpoint`, made of `parts` (name
    → trackable); one written before the decoding settings of its best score were
    recorded leaves ``best_scored_at`` as it is."""
    recorded = any(name.startswith("best_scored_at/")
                   for name, _ in tf.train.list_variables(path))
    if not recorded:
        checkpoint = tf.train.Checkpoint(**{
            name: part for name, part in parts.items() if name != "best_scored_at"})
    checkpoint.restore(path).assert_existing_objects_matched()


def take_chiefs_best(run_dir: RunDir,
                     manager: tf.train.CheckpointManager) -> tf.train.CheckpointManager:
    """A worker resuming from the chief's checkpoints takes the chief's best weights too
    (its own copy may be older, or missing), so that the stages after this one start
    from them on every worker alike; returns the manager of its refreshed copy."""
    own = manager.directory
    shutil.rmtree(own, ignore_errors=True)
    if os.path.isdir(run_dir.best_dir()):
        shutil.copytree(run_dir.best_dir(), own)
    else:
        os.makedirs(own, exist_ok=True)
    return tf.train.CheckpointManager(manager.checkpoint, own, max_to_keep=1)


def check_workers_agree(strategy: tf.distribute.Strategy, latest: Optional[str],
                        config: ExperimentConfig, facts: RunFacts, num_train: int,
                        run_dir: RunDir) -> None:
    """Refuses, on every worker alike, a multi-worker run whose workers would resume
    from different points (`latest`), or were started with different settings or data
    (`settings_parts`): their replicas would train different weights together, or wait
    on each other's saves and steps until killed."""
    if num_workers(strategy) == 1:
        return
    position = checkpoint_position(latest) if latest else {
        "stage": 1, "epoch": 0, "step_in_epoch": 0}
    parts = settings_parts(config, facts, num_train)
    here = tf.constant([position["stage"], position["epoch"], position["step_in_epoch"]]
                       + [number for part in parts.values() for number in digest(part)],
                       tf.float64)

    def sums():
        context = tf.distribute.get_replica_context()
        return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack([here, here * here]))

    total = strategy.experimental_local_results(
        tf.function(lambda: strategy.run(sums), autograph=False)())[0].numpy()
    replicas = strategy.num_replicas_in_sync
    differs = replicas * total[1] != total[0] ** 2  # equal only where all agree
    if differs[:3].any():
        raise IncompatibleRunError(
            f"the workers of this multi-worker run resumed from different points (this "
            f"one from {latest or 'no checkpoint'}): each resumes from the chief's "
            f"{run_dir.checkpoints_dir()} when it sees that folder, else from its own "
            f"copy under {os.path.join(run_dir.path, 'tmp_worker', '<task id>')}. Give "
            f"every worker the run folder the chief writes, then rerun")
    per_part = differs[3:].reshape(len(parts), -1).any(axis=1)
    if per_part.any():
        named = [name for name, differ in zip(parts, per_part) if differ]
        raise IncompatibleRunError(
            f"the workers of this multi-worker run were started with different "
            f"{', '.join(named)}: start every worker with the same flags (and the same "
            f"data), then rerun")
