"""The run folder: every file a run writes, named in this one module.

A run folder holds everything needed to evaluate, export or resume a run, and needs no
absolute path (data flags and image ids are kept as given), so it can be moved or
copied to another machine:

==========================  =========================================================
``run.json``                the `ExperimentConfig` (without its runtime section) and the
                            `RunFacts` the data decided
                            (class names, T_max, label order, the feature cache's
                            content fingerprint and shape)
``label_map.json``          class names (beside every artefact, see `ofrnn_tf.labels`)
``checkpoints/``            the latest training checkpoints (resume)
``best/``, ``best.json``    the best epoch's weights and its validation scores
``calibration.json``        τ chosen on validation, per beam width K
``metrics_<split>.json``    metrics of an evaluation at the run's beam width K;
                            ``metrics_<split>_k<K>.json`` at another K (``--mode=eval``)
``timing_<mode>.json``      time of each part of a run (training: summed over reruns)
``tensorboard/``            training curves
``attention/``              attention pictures of test images (paper Fig. 3), and
                            ``captions.md``: what each shows, in words
``examples/``               those test images (export warm-up, demos)
``examples.json``           which test image (image id) and labels each copy is
``.lock``                   who holds the folder while a training or evaluation runs
                            (`RunDir.exclusive`)
``tmp_worker/<id>/``        a non-chief worker's own ``checkpoints/`` and ``best/``
                            (``--runtime.strategy=multi_worker``)
==========================  =========================================================

The feature cache is not part of the folder: it is found again by its content
fingerprint under any ``--runtime.cache_dir`` (see `ofrnn_tf.features.cache`). Which of
the folder's checkpoints read back whole is `ofrnn_tf.checkpoint_files`'s to say.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import shlex
import time
from typing import Callable, Iterator, Optional, TypeVar

import keras
import tensorflow as tf

import ofrnn_tf
from ofrnn_tf.checkpoint_files import (
    best_checkpoint, resumable_checkpoint, variables_not_in_checkpoint)
from ofrnn_tf.config.experiment import (
    ExperimentConfig, UnknownSettingsError, identity_differences)
from ofrnn_tf.jsonio import read_json, write_json
from ofrnn_tf.labels import LABEL_MAP_FILENAME, LabelMap
from ofrnn_tf.dtype_policy import global_dtype_policy
from ofrnn_tf.modeling.model import OrderFreeRNN, build_model
from ofrnn_tf.processes import describe_owner, owner_tag
from ofrnn_tf.software import software_versions

T = TypeVar("T")

RUN_FILENAME = "run.json"
CALIBRATION_FILENAME = "calibration.json"
BEST_INFO_FILENAME = "best.json"
LOCK_FILENAME = ".lock"


class IncompatibleRunError(ValueError):
    """A rerun's settings describe another model or data than the run folder holds, or
    the code's model has variables the run's weights do not (`RunDir.load_model`)."""


class DamagedRunFileError(ValueError):
    """A file the run folder keeps (``run.json``, ``calibration.json``, ``label_map.json``)
    is not valid JSON or not laid out as the run writes it; the message says the remedy."""


class RunInUseError(RuntimeError):
    """Another command holds the run folder (`RunDir.exclusive`)."""


class RunFolderNotWritableError(RuntimeError):
    """A command that writes into the run folder (training, eval mode) cannot."""


class RunFolderNotReadableError(RuntimeError):
    """This user may not read the run folder or its ``run.json`` (another user's run,
    written under ``umask 077``)."""


def _is_number(value) -> bool:
    """A JSON number (true and false are ints to Python, not numbers of the file)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _calibration_entry_problem(entry: dict) -> Optional[str]:
    """What makes a calibration.json entry's values unusable (``"tau=2.0, not a
    probability in [0, 1]"``), or None: τ and the score mix are probabilities (NaN
    fails the comparison), the fewest labels a whole number ≥ 0; ``score_mix`` and
    ``min_labels`` may be absent."""
    for name in ("tau", "score_mix"):
        value = entry.get(name, 0.0)
        if not (_is_number(value) and 0.0 <= value <= 1.0):
            return f"{name}={value!r}, not a probability in [0, 1]"
    value = entry.get("min_labels", 0)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return f"min_labels={value!r}, not a whole number ≥ 0"
    return None


def train_command(workdir: str, *flags: str) -> str:
    """The ``ofrnn-train`` command line for the run at `workdir` with `flags`, as messages
    suggest it: quoted for a shell, so that pasted it runs on that folder whatever its
    name holds (a space, a quote)."""
    return " ".join(["ofrnn-train", f"--workdir={shlex.quote(workdir)}",
                     *map(shlex.quote, flags)])


# The run folders (real paths) this process holds (`RunDir.exclusive`): a run reads its
# own weights back (its example pictures) while it holds its folder.
_HELD_HERE: set[str] = set()
# How long a hold of `.lock` that names no holder may last before it refuses (`_take`).
_UNTAGGED_WAIT_SECONDS = 0.25


@dataclasses.dataclass
class RunFacts:
    """What the data decided for a run (saved beside its config).

    Attributes:
        label_names: class names in label-id order (C of them).
        max_steps: T_max, the largest label count of a training image (≤ C).
        label_order: the fixed label order of `frequency_first` / `rare_first`, else None.
        small_area: image-area fraction under which an object counts as small (the
            benchmark's size split of AP), else None.
        features_name: the feature cache's folder name under ``<cache_dir>/features``.
        features_fingerprint: the feature cache's content fingerprint.
        feature_shape: ``(H, W, k)`` of the maps.
        image_size: the side the backbone saw images at.
        feature_layer: the backbone's Keras layer the maps come from.
        train_examples: the training examples the feature cache holds (None in runs
            saved before it was recorded).
    """

    label_names: tuple
    max_steps: int
    label_order: Optional[tuple]
    small_area: Optional[float]
    features_name: str
    features_fingerprint: str
    feature_shape: tuple
    image_size: int
    feature_layer: str
    train_examples: Optional[int] = None

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def positions_and_depth(self) -> tuple[int, int]:
        """`(m, k)`: m = H·W positions of k channels, as the model reads them."""
        height, width, depth = self.feature_shape
        return height * width, depth

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunFacts":
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise UnknownSettingsError(f"unknown run facts {extra}")
        data = dict(data)
        for key in ("label_names", "label_order", "feature_shape"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


class RunDir:
    """A run folder (see the module docstring) and the files in it.

    Args:
        path: the folder (need not exist yet).
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # -- names ---------------------------------------------------------------------
    @property
    def run_file(self) -> str:
        return self.file(RUN_FILENAME)

    @property
    def label_map_file(self) -> str:
        return self.file(LABEL_MAP_FILENAME)

    @property
    def calibration_file(self) -> str:
        return self.file(CALIBRATION_FILENAME)

    @property
    def best_info_file(self) -> str:
        return self.file(BEST_INFO_FILENAME)

    @property
    def tensorboard_dir(self) -> str:
        return self.file("tensorboard")

    @property
    def attention_dir(self) -> str:
        return self.file("attention")

    @property
    def examples_dir(self) -> str:
        """A few test images of the run's data (export warm-up requests, demos)."""
        return self.file("examples")

    @property
    def examples_index_file(self) -> str:
        """Which test image each copy in `examples_dir` is: its image id and labels."""
        return self.file("examples.json")

    def example_images(self) -> list[str]:
        """The run's copies of test images that ``examples.json`` lists and that are still
        there (in a folder written before it existed, every file of ``examples/``); other
        files a user keeps there are not the run's. Only files directly in ``examples/``
        count: an entry naming another place (an absolute path, ``..``), and every file of
        an ``examples/`` that is a symbolic link, are not the run's, so that a run folder
        from elsewhere cannot make training delete files outside it. A copy that is a link
        (a run folder kept by git-annex or DVC) counts: removing it removes the link; what
        it points to is read only where that is inside the run folder (`holds`)."""
        if os.path.islink(self.examples_dir) or not os.path.isdir(self.examples_dir):
            return []
        if os.path.exists(self.examples_index_file):
            with contextlib.suppress(ValueError, KeyError, TypeError):  # damaged: as before it
                listed = [self._own_example(entry["file"])
                          for entry in read_json(self.examples_index_file)]
                return sorted(path for path in listed if path is not None)
        listed = [self._own_example(os.path.join(os.path.basename(self.examples_dir), name))
                  for name in os.listdir(self.examples_dir)]
        return sorted(path for path in listed if path is not None)

    def holds(self, path: str) -> bool:
        """Whether `path`, its links followed, is inside the run folder."""
        return os.path.realpath(path).startswith(os.path.join(os.path.realpath(self.path), ""))

    def _own_example(self, relative: str) -> Optional[str]:
        """The path of `relative` (as ``examples.json`` says it) where it names a file
        directly in ``examples/``, else None."""
        folder, name = os.path.split(relative)
        if folder != os.path.basename(self.examples_dir) or name in ("", ".", ".."):
            return None
        path = os.path.join(self.examples_dir, name)
        return path if os.path.isfile(path) else None

    def checkpoints_dir(self, worker: Optional[int] = None) -> str:
        """Training checkpoints; a non-chief worker writes its own copy elsewhere."""
        return self._own(worker, "checkpoints")

    def best_dir(self, worker: Optional[int] = None) -> str:
        return self._own(worker, "best")

    def _own(self, worker: Optional[int], name: str) -> str:
        if worker is None:
            return self.file(name)
        return os.path.join(self.path, "tmp_worker", str(worker), name)

    def metrics_file(self, split: str, beam_size: Optional[int] = None) -> str:
        """``metrics_<split>.json`` at the run's own beam width (or `beam_size` None),
        ``metrics_<split>_k<K>.json`` at another width K."""
        if beam_size is None or int(beam_size) == self.load()[0].decoding.beam_size:
            return self.file(f"metrics_{split}.json")
        return self.file(f"metrics_{split}_k{int(beam_size)}.json")

    def timing_file(self, mode: str) -> str:
        return self.file(f"timing_{mode}.json")

    # -- config and facts ----------------------------------------------------------
    def exists(self) -> bool:
        """Whether this is a run folder (it holds ``run.json``); `RunFolderNotReadableError`
        where this user may not look into it, rather than take it for a new one."""
        try:
            os.stat(self.run_file)
        except PermissionError as error:
            raise RunFolderNotReadableError(
                f"{self.path} cannot be looked into by this user ({error.strerror}): ask the "
                f"owner of the folders on its path for access, or give another --workdir"
            ) from None
        except OSError:
            return False
        return True

    def require(self) -> "RunDir":
        """Raises FileNotFoundError unless this is a run folder (`exists`)."""
        if not self.exists():
            raise FileNotFoundError(f"{self.path} is not a run folder ({RUN_FILENAME} missing): "
                                    f"pass the --workdir of a training run")
        return self

    @staticmethod
    def _read_file(read: Callable[[str], T], path: str, remedy: str) -> T:
        """`read(path)` of a file the run folder keeps, where a file this user may not read
        raises `RunFolderNotReadableError` and one that does not parse (a ValueError)
        `DamagedRunFileError` saying `remedy`; a missing file's error passes."""
        try:
            return read(path)
        except PermissionError as error:
            raise RunFolderNotReadableError(
                f"{error.filename} cannot be read by this user ({error.strerror}): ask the "
                f"run folder's owner for read access, or for a copy of it") from None
        except ValueError as error:
            raise DamagedRunFileError(f"{error}; {remedy}") from None

    def load(self) -> tuple[ExperimentConfig, RunFacts]:
        """The run's config (runtime settings at their defaults) and facts."""
        remedy = ("it holds the run's settings, which nothing else keeps: restore it from a "
                  "copy of the run folder, or train again in a new --workdir")
        data = self._read_file(read_json, self.require().run_file, remedy)
        try:
            return ExperimentConfig.from_dict(data["config"]), RunFacts.from_dict(data["facts"])
        except UnknownSettingsError as error:
            software = data.get("software") if isinstance(data, dict) else None
            writer = software.get("ofrnn_tf") if isinstance(software, dict) else None
            if writer == ofrnn_tf.__version__:
                wrote = f"a newer build of ofrnn_tf {writer} wrote it (use that build)"
            elif writer:
                wrote = f"ofrnn_tf {writer} wrote it (use that version)"
            else:
                wrote = "a newer version wrote it (use that version)"
            raise DamagedRunFileError(
                f"{self.run_file}: settings this version of ofrnn_tf ({ofrnn_tf.__version__}) "
                f"does not know ({error}): {wrote}, or it was edited (undo the edit)") from None
        except (KeyError, TypeError, ValueError) as error:
            raise DamagedRunFileError(
                f"{self.run_file}: not a run description ({error}); {remedy}") from None

    def check_config(self, config: ExperimentConfig) -> None:
        """Refuses (`IncompatibleRunError`) a config that differs from this existing run's
        outside the resumable settings; needs no data, so a rerun checks it first."""
        self._refuse(identity_differences(self.load()[0], config))

    def _refuse(self, diffs: list[str]) -> None:
        if diffs:
            raise IncompatibleRunError(
                f"{self.run_file} describes another run; refusing to resume with different "
                f"settings ({'; '.join(diffs)}). Use a new --workdir or the saved settings.")

    def save(self, config: ExperimentConfig, facts: RunFacts) -> None:
        """Writes the run's config and facts, or checks them against the saved ones.

        A rerun may change the resumable settings (paths, epochs, logging, decoding);
        any other difference, or other data, is refused with `IncompatibleRunError`.
        """
        if self.exists():
            saved_config, saved_facts = self.load()
            diffs = identity_differences(saved_config, config)
            for name in ("label_names", "max_steps", "label_order", "features_fingerprint",
                         "feature_shape", "feature_layer"):
                before, now = getattr(saved_facts, name), getattr(facts, name)
                if before != now:
                    diffs.append(f"{name}: {before!r} in the run folder vs {now!r} now")
            self._refuse(diffs)
        # Where and how this invocation runs (cache folder, strategy, logging) is not the
        # run's: a moved run takes them from the command that uses it.
        write_json(self.run_file, {"config": config.to_record(), "facts": facts.to_dict(),
                                   "software": software_versions()})
        LabelMap(facts.label_names).save(self.path)

    def label_map(self) -> LabelMap:
        """The run's label map, checked against the copy in ``run.json``."""
        _, facts = self.load()
        expected = LabelMap(facts.label_names, source=self.run_file)
        if os.path.exists(self.label_map_file):
            remedy = (f"delete it: {RUN_FILENAME} holds the same class names, and a training "
                      f"rerun writes it again")
            expected.check_same(self._read_file(LabelMap.load, self.label_map_file, remedy))
        return expected

    # -- weights -------------------------------------------------------------------
    def weights_path(self) -> str:
        """The best epoch's checkpoint, else the newest training checkpoint that reads
        back (`resumable_checkpoint`).

        Raises:
            FileNotFoundError: the run has no checkpoint (it was never trained).
            DamagedCheckpointError: ``best/`` names a checkpoint that cannot be read, or
                no checkpoint of ``checkpoints/`` can be, or the path holds a '['.
        """
        best = best_checkpoint(self.best_dir(), "calibrate τ for them: "
                                                + train_command(self.path, "--mode=eval"))
        if best:
            return best
        path, _ = resumable_checkpoint(self.checkpoints_dir())
        if not path:
            raise FileNotFoundError(f"no checkpoint in {self.path}: train first")
        return path

    def load_model(self) -> tuple[OrderFreeRNN, ExperimentConfig, RunFacts]:
        """The trained model (best weights, else the latest), its config and facts.

        Raises:
            IncompatibleRunError: the weights leave a variable of the model unset
                (`restore_weights`).
        """
        config, facts = self.load()
        with global_dtype_policy("float32"):  # what evaluation and the export compute
            model = build_model(config.model, facts.num_classes, facts.positions_and_depth,
                                facts.label_order, stage2_loss=config.train.loss)
        self.restore_weights(model, self.weights_path())
        return model, config, facts

    def restore_weights(self, model: keras.Model, path: str) -> None:
        """Restores `model` from the checkpoint `path`, refusing (`IncompatibleRunError`)
        one that holds no value for some variable of the model: that variable would keep
        its initial value, and predictions, exports and evaluations would use it without
        a word. The checkpoint's other values (the optimizer's) are left unread."""
        status = tf.train.Checkpoint(model=model).restore(path).expect_partial()
        try:
            status.assert_existing_objects_matched()
        except AssertionError as error:
            missing = variables_not_in_checkpoint(model, path)
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            named = ", ".join(missing[:3]) + more if missing else str(error).splitlines()[0]
            raise IncompatibleRunError(
                f"{path} holds no weights for variables of the model {self.run_file} "
                f"describes ({named}): this code's model does not match the run's weights (a "
                f"layer renamed or added since training). Use the ofrnn_tf version that "
                f"trained the run ({RUN_FILENAME} names it under software), or train it again "
                f"in a new --workdir") from None

    # -- one command at a time ------------------------------------------------------
    @property
    def lock_file(self) -> str:
        return self.file(LOCK_FILENAME)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Holds the run folder (creating it) for one command: two commands training or
        evaluating one run at once would write the same checkpoints and results.

        The hold is an exclusive `fcntl.flock` on ``.lock``, which names its holder
        (`owner_tag`). The kernel drops it when the process ends, killed or not, so a
        ``.lock`` left behind never blocks the next command.

        A folder this command made and that holds nothing but ``.lock`` when it fails (a
        data set not found, a setting refused once the data are read) is removed, so that
        what failed leaves no run folder that is none.

        Raises:
            RunInUseError: another process holds the folder (named by pid and host).
            RunFolderNotWritableError: the folder cannot be created or written.
        """
        created = not os.path.isdir(self.path)
        # The folders makedirs is to create, the run folder last (`runs/new/run`: two).
        made = [self.path]
        parent = os.path.dirname(os.path.normpath(self.path))
        while parent and not os.path.lexists(parent):
            made.append(parent)
            parent = os.path.dirname(parent)
        if os.path.islink(self.path) and not os.path.exists(self.path):
            raise RunFolderNotWritableError(
                f"{self.path} is a symbolic link to {os.readlink(self.path)}, which does not "
                f"exist: make that folder, or give another --workdir")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunFolderNotWritableError(f"{self.path} is a file, not a folder: give "
                                            f"another --workdir")
        try:
            os.makedirs(self.path, exist_ok=True)
            # Not through a symbolic link: writing the holder's tag would empty its target.
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise RunFolderNotWritableError(
                    f"{self.lock_file} is a symbolic link, not the run's lock file (which "
                    f"commands write into): remove the link and rerun") from None
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # said as a full disk: free space, the folder is fine where it is
            if created:  # a new run: nothing to copy
                raise RunFolderNotWritableError(
                    f"{self.path} cannot be created ({error.strerror}): give a --workdir in a "
                    f"writable place (scripts/main.sh: set WORKDIR, and EXPORT_DIR and "
                    f"CACHE_DIR, which it writes too)") from None
            raise RunFolderNotWritableError(
                f"{self.path} cannot be written ({error.strerror}): training and --mode=eval "
                f"write their checkpoints, τ and metrics into the run folder; copy it to a "
                f"writable place (export and predict read it where it is)") from None
        try:
            self._take(fd, fcntl.LOCK_EX, "another command trains or evaluates this run "
                                          "folder. Wait for it to end, or use another --workdir.")
            with contextlib.suppress(OSError):  # the lock holds; the tag only informs
                os.ftruncate(fd, 0)
                os.pwrite(fd, owner_tag().encode(), 0)
            held = os.path.realpath(self.path)
            _HELD_HERE.add(held)
            try:
                yield
            except BaseException:
                if created:
                    with contextlib.suppress(OSError):  # still held: no other command is in it
                        if os.listdir(self.path) == [os.path.basename(self.lock_file)]:
                            os.unlink(self.lock_file)
                            for folder in made:  # the parents it made, while they are empty
                                os.rmdir(folder)
                raise
            finally:
                _HELD_HERE.discard(held)
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)  # names no holder once released
        finally:
            os.close(fd)  # releases the lock (and so does the end of the process)

    def check_not_in_use(self) -> None:
        """Refuses (`RunInUseError`) to read a run folder that a command holds (`exclusive`):
        a training or evaluation replaces its best weights and τ while they are read. The
        check takes a shared `fcntl.flock` on ``.lock`` and lets it go at once; a folder
        this process holds passes (a run reading its own weights back)."""
        if os.path.realpath(self.path) in _HELD_HERE:
            return
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except OSError:
            return  # no .lock: no command ever held the folder
        try:
            self._take(fd, fcntl.LOCK_SH, "a command trains or evaluates this run folder, "
                                          "rewriting its best weights or τ as it goes. Read "
                                          "it once that command has ended.")
        finally:
            os.close(fd)  # and with it the shared hold

    def _take(self, lock_fd: int, operation: int, why: str) -> None:
        """`fcntl.flock(lock_fd, operation)` without waiting; `RunInUseError` naming the
        holder (the owner tag `exclusive` wrote into ``.lock``), then `why`, when another
        process holds the folder. A hold without a tag is a reader's check
        (`check_not_in_use`, a moment long) or a holder about to write its tag: tried
        again for `_UNTAGGED_WAIT_SECONDS` before it is refused."""
        deadline = time.monotonic() + _UNTAGGED_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(lock_fd, operation | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                tag = os.pread(lock_fd, 256, 0).decode(errors="replace")
                if tag or time.monotonic() >= deadline:
                    raise RunInUseError(
                        f"{self.path} is in use by {describe_owner(tag)}: {why}") from None
                time.sleep(0.01)

    # -- calibration, metrics, timing ----------------------------------------------
    def calibration(self, beam_size: int) -> Optional[dict]:
        """What τ calibration stored for beam width K for the current weights, or None."""
        return self._calibrations().get(str(int(beam_size)))

    def calibrated_beam_sizes(self) -> list[int]:
        return sorted(int(k) for k in self._calibrations())

    def _calibrations(self, data: Optional[dict] = None) -> dict[str, dict]:
        """The entries by K of calibration.json (or of its contents `data`) made for the
        weights `weights_path` names now (entries that do not say are taken as such)."""
        if data is None:
            data = self._calibration_data()
        weights = self._weights_name()
        return {k: e for k, e in data.get("by_beam_size", {}).items()
                if e.get("weights", weights) == weights}

    def _calibration_data(self) -> dict:
        """The contents of calibration.json ({} when there is none), refused
        (`DamagedRunFileError`) unless each entry by K is a dict with a number ``tau``,
        its ``tau`` and ``score_mix`` probabilities and its ``min_labels`` a count: a
        NaN or out-of-range value would otherwise surface as a traceback of whichever
        command reads it."""
        if not os.path.exists(self.calibration_file):
            return {}
        data = self._read_file(read_json, self.calibration_file, self._calibration_remedy())
        entries = data.get("by_beam_size", {}) if isinstance(data, dict) else None
        if not isinstance(entries, dict) or not all(
                isinstance(e, dict) and _is_number(e.get("tau")) for e in entries.values()):
            raise self.damaged_calibration("not a calibration file (an entry with a number "
                                           "'tau' by beam width)")
        for key, entry in entries.items():
            problem = _calibration_entry_problem(entry)
            if problem:
                raise self.damaged_calibration(f"the entry for K={key} holds {problem}")
        return data

    def damaged_calibration(self, problem: str) -> DamagedRunFileError:
        """The error that names calibration.json, what is wrong in it, and the remedy."""
        return DamagedRunFileError(f"{self.calibration_file}: {problem}; "
                                   f"{self._calibration_remedy()}")

    def _calibration_remedy(self) -> str:
        return "delete it and calibrate τ again: " + train_command(self.path, "--mode=eval")

    def _weights_name(self) -> Optional[str]:
        try:
            return os.path.basename(self.weights_path())
        except FileNotFoundError:
            return None

    def save_calibration(self, entry: dict) -> None:
        """Stores a calibration (a dict with ``tau`` and ``beam_size``) for its K, with the
        name of the weights it was made for."""
        data = self._calibration_data()
        entry = {**entry, "weights": self._weights_name()}
        data.setdefault("by_beam_size", {})[str(int(entry["beam_size"]))] = entry
        write_json(self.calibration_file, data)

    def drop_stale_calibrations(self) -> dict[int, str]:
        """Removes the τ (and ``metrics_test_k<K>.json``) of every beam width calibrated
        for other weights than the current best ones, or with another fewest labels or
        objective than the run's decoding settings now; returns those widths but the
        run's own (which a finished training calibrates again), each with why."""
        data = self._calibration_data()
        current = self._calibrations(data)
        decoding = self.load()[0].decoding
        now = {"min_labels": ("decoding.min_labels", decoding.min_labels),
               "objective": ("decoding.calibration_objective", decoding.calibration_objective)}
        stale = {}
        for key, entry in sorted(data.get("by_beam_size", {}).items(), key=lambda e: int(e[0])):
            changed = [(flag, entry[name], value) for name, (flag, value) in now.items()
                       if name in entry and entry[name] != value]
            if key not in current:
                stale[int(key)] = "for earlier weights"
            elif changed:
                stale[int(key)] = "calibrated with " + " and ".join(
                    f"{flag} {then!r}, not {value!r}" for flag, then, value in changed)
        if not stale:
            return {}
        data["by_beam_size"] = {k: e for k, e in data["by_beam_size"].items()
                                if int(k) not in stale}
        write_json(self.calibration_file, data)
        others = {k: why for k, why in stale.items() if k != decoding.beam_size}
        for beam_size in others:
            if os.path.exists(self.metrics_file("test", beam_size)):
                os.remove(self.metrics_file("test", beam_size))
        return others

    def save_metrics(self, split: str, metrics: dict, beam_size: Optional[int] = None) -> str:
        """Writes the metrics of `split` at beam width `beam_size` (see `metrics_file`)."""
        return write_json(self.metrics_file(split, beam_size), metrics)

    def load_metrics(self, split: str, beam_size: Optional[int] = None) -> dict:
        return read_json(self.metrics_file(split, beam_size))

    def save_timing(self, mode: str, parts: dict, trained_with: Optional[dict] = None) -> str:
        """Writes how long each part of this command took. Training's parts add to those
        of the earlier commands in the folder (a run resumed, or given more epochs, took
        all of their training time), and each training command is listed under
        ``commands`` with its parts, when it ended and `trained_with` (the runtime settings
        it trained with, which may change from one command of a run to the next); an
        evaluation's replace the last one's."""
        if mode != "train":
            return write_json(self.timing_file(mode), parts)
        earlier = read_json(self.timing_file(mode)) if os.path.exists(
            self.timing_file(mode)) else {}
        commands = earlier.pop("commands", [])
        command = {"ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "seconds": parts, **({"trained_with": trained_with} if trained_with else {})}
        totals = {part: round(earlier.get(part, 0.0) + seconds, 1)
                  for part, seconds in parts.items()}
        return write_json(self.timing_file(mode),
                          {**earlier, **totals, "commands": [*commands, command]})

    def save_best_info(self, info: dict) -> str:
        return write_json(self.best_info_file, info)

    def load_best_info(self) -> dict:
        """The chosen epoch of the last trained stage and its validation scores."""
        return read_json(self.best_info_file)
