"""The checkpoints of a folder (``checkpoints/``, ``best/``): which are listed, which read
back whole, why one does not, and which variables of a model one holds no value for.
A checkpoint this user may not read is refused, never passed over nor called damaged; a
verdict is remembered while the checkpoint's files stay as they are."""

from __future__ import annotations

import collections
import glob
import os
from typing import Optional

import keras
import tensorflow as tf

from ofrnn_tf.tf_errors import op_error_text


class DamagedCheckpointError(ValueError):
    """A checkpoint the run folder names cannot be read back: a file of it is missing,
    cut short or damaged, or its path holds a '[' (`refuse_glob_pattern`)."""


class CheckpointNotReadableError(DamagedCheckpointError):
    """This user may not read a checkpoint's files (another user's, or a ``sudo`` run's):
    it is refused, never passed over for an older one nor called damaged."""


# What reading a checkpoint with a file missing, cut short or damaged raises:
# NotFoundError / OpError / DataLossError from TensorFlow, IndexError for a short read.
_CHECKPOINT_READ_ERRORS = (tf.errors.OpError, IndexError, RuntimeError, ValueError)


def refuse_glob_pattern(path: str) -> None:
    """Raises `DamagedCheckpointError` when `path` holds a '[': TensorFlow looks a
    checkpoint's files up by glob pattern, where '[' opens a character class, so it
    finds none of the checkpoints under such a folder."""
    if "[" in path:
        raise DamagedCheckpointError(
            f"{path} contains '[': TensorFlow reads checkpoint paths as glob patterns and "
            f"cannot find the checkpoints under it; rename the folder without '['")


def _unreadable_reason(prefix: str, error: BaseException) -> str:
    """What is wrong with the checkpoint `prefix`, in a few words, from its read error."""
    text = op_error_text(error)
    if "Failed to find any matching files" in text:
        return f"its files are missing (no {os.path.basename(prefix)}.index)"
    if isinstance(error, IndexError):
        return f"a file of it is cut short ({text})"
    return text


# `checkpoint_problem`'s verdicts, by checkpoint files (names, sizes, times): one
# command asks about the same checkpoint several times, and each check reads it whole.
_CHECKED: dict[tuple, Optional[str]] = {}


def _checkpoint_files(prefix: str) -> Optional[tuple]:
    """The files of the checkpoint `prefix` with their sizes and modification times, or
    None where they cannot be listed (then nothing is remembered)."""
    try:
        stats = [(name, os.stat(name)) for name in sorted(glob.glob(glob.escape(prefix) + ".*"))]
        return (os.path.abspath(prefix),) + tuple(
            (name, stat.st_size, stat.st_mtime_ns) for name, stat in stats)
    except OSError:
        return None


def checkpoint_problem(prefix: str) -> Optional[str]:
    """Why the checkpoint `prefix` cannot be restored, or None when every tensor it lists
    reads back (each read is checked against the checksum the checkpoint stores). The
    verdict is remembered while the checkpoint's files stay as they are."""
    files = _checkpoint_files(prefix)
    if files is not None and files in _CHECKED:
        return _CHECKED[files]
    _refuse_files_not_readable(prefix)
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
        problem = None
    except _CHECKPOINT_READ_ERRORS as error:
        problem = _unreadable_reason(prefix, error)
    if files is not None:
        _CHECKED[files] = problem
    return problem


def _refuse_files_not_readable(prefix: str) -> None:
    """Raises `CheckpointNotReadableError` when this user may not read a file of the
    checkpoint `prefix`. TensorFlow says so only as an UNKNOWN error, which would pass the
    checkpoint over (or call it damaged) like a file cut short: deleting it, or training
    over it, would lose it."""
    for name in sorted(glob.glob(glob.escape(prefix) + ".*")):
        try:
            with open(name, "rb"):
                pass
        except PermissionError as error:
            raise CheckpointNotReadableError(
                f"the checkpoint {prefix} cannot be read by this user ({name}: "
                f"{error.strerror}); its files are not damaged: give read access to them "
                f"(chown or chmod) and rerun") from None
        except OSError:
            pass  # gone since the listing: the read says it


def listed_checkpoints(directory: str) -> list[str]:
    """The checkpoints TensorFlow's state file (``checkpoint``) in `directory` lists,
    newest first, whether or not their files are there; where that file is missing,
    empty or garbled, the ``ckpt-<N>`` checkpoints whose index file is there, highest
    N (the global step) first. A folder this user may not enter is refused
    (`CheckpointNotReadableError`): it would read as one that holds none."""
    try:
        os.listdir(directory)
    except PermissionError as error:
        if os.access(directory, os.X_OK):
            pass  # entered, not listed (mode 711): its state file names its checkpoints
        else:
            raise CheckpointNotReadableError(
                f"{directory} cannot be read by this user ({error.strerror}); its "
                f"checkpoints are not damaged: give read access to it (chown or chmod) and "
                f"rerun") from None
    except OSError:
        pass  # not made yet: it holds none
    state = _checkpoint_state(directory)
    if state is not None and state.model_checkpoint_path:
        latest = state.model_checkpoint_path
        return [latest] + [p for p in reversed(state.all_model_checkpoint_paths) if p != latest]
    steps = []
    for index in glob.glob(os.path.join(glob.escape(directory), "ckpt-*.index")):
        number = os.path.basename(index)[len("ckpt-"):-len(".index")]
        if number.isdigit():
            steps.append(int(number))
    return [os.path.join(directory, f"ckpt-{step}") for step in sorted(steps, reverse=True)]


def _checkpoint_state(directory: str, remove_empty: bool = False):
    """TensorFlow's checkpoint state of `directory`, or None where its state file is
    missing, empty or garbled; with `remove_empty`, an empty one is removed."""
    try:
        return tf.train.get_checkpoint_state(directory)
    except ValueError:  # an empty state file
        if remove_empty:
            os.remove(os.path.join(directory, "checkpoint"))
        return None


def checkpoint_list_lost(directory: str) -> bool:
    """Whether `directory` holds checkpoints its state file (``checkpoint``) does not
    list: the file is missing, empty or garbled (`listed_checkpoints` then reads the
    folder). An empty one, which `tf.train.CheckpointManager` cannot start from, is
    removed; the manager writes a new one at its next save."""
    return (_checkpoint_state(directory, remove_empty=True) is None
            and bool(listed_checkpoints(directory)))


def best_checkpoint(directory: str, then: str) -> Optional[str]:
    """The checkpoint of a ``best/`` folder (None if it holds none).

    Raises:
        DamagedCheckpointError: it cannot be read; the message says to delete the folder
            to use the last training checkpoint instead, and `then` what to do next.
    """
    best = listed_checkpoints(directory)
    if not best:
        return None
    refuse_glob_pattern(directory)
    problem = checkpoint_problem(best[0])
    if problem is not None:
        raise DamagedCheckpointError(
            f"the best weights {best[0]} cannot be read ({problem}). Delete the folder "
            f"{directory} to use the last training checkpoint instead (the last epoch's "
            f"weights), then {then}")
    return best[0]


def resumable_checkpoint(directory: str) -> tuple[Optional[str], list[tuple[str, str]]]:
    """The newest checkpoint of `directory` that reads back whole (None if it lists none),
    and the newer ones passed over, each with its reason.

    Training resumes from it and the checks of a rerun read its position, so both go on
    from the same checkpoint when the newest one was deleted or damaged.

    Raises:
        DamagedCheckpointError: every checkpoint listed is unreadable.
    """
    listed = listed_checkpoints(directory)
    if listed:
        refuse_glob_pattern(directory)
    unreadable = []
    for prefix in listed:
        problem = checkpoint_problem(prefix)
        if problem is None:
            return prefix, unreadable
        unreadable.append((prefix, problem))
    if unreadable:
        named = "; ".join(f"{prefix}: {problem}" for prefix, problem in unreadable)
        raise DamagedCheckpointError(
            f"no checkpoint in {directory} can be read ({named}). Delete the folder "
            f"{directory} to train the run again from its start.")
    return None, []


def variables_not_in_checkpoint(model: keras.Model, path: str) -> list[str]:
    """The paths in `model` of its variables (``label_map_head/logits/kernel``) for which
    the checkpoint `path` of ``tf.train.Checkpoint(model=...)`` holds no value.

    A checkpoint names a value by the attributes that lead to it from its root, the
    shortest way first (``model/label_map_head/_dense/kernel``), not by the variable's
    path: a layer held by a renamed attribute has no value, though its variables keep
    their paths."""
    held = {name.split("/.ATTRIBUTES/")[0] for name, _ in tf.train.list_variables(path)}
    root = tf.train.Checkpoint(model=model)
    names = {id(root): (root, "")}  # keeps each object, so that no id is reused
    queue, missing = collections.deque([root]), []
    while queue:
        parent = queue.popleft()
        for attribute, child in tf.train.TrackableView.children(parent).items():
            if id(child) in names:
                continue
            name = f"{names[id(parent)][1]}/{attribute}".lstrip("/")
            names[id(child)] = (child, name)
            queue.append(child)
            if isinstance(child, keras.Variable) and name not in held:
                missing.append(child.path.removeprefix(f"{model.name}/"))
    return missing
