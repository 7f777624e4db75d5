"""What a run folder refuses, in one line, before any work: a path TensorFlow cannot read
checkpoints under, a damaged ``best/``, weights without a layer of the model, an edited
label map, and a second command on a folder another one holds."""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app

from conftest import FAKE_BEAM, FAKE_MAX_STEPS, FAKE_NAMES, ROOT, run_checked
from ofrnn_tf.cli import (
    input_errors, refuse_glob_characters, refuse_missing_run_folder, trained_run)
from ofrnn_tf.inference.module import (
    InferenceModule, MinLabelsError, UncalibratedBeamSizeError)
from ofrnn_tf.modeling.layers.spatial_label_head import SpatialLabelHead
from ofrnn_tf.modeling.model import HEAD_LAYERS
from ofrnn_tf import checkpoint_files, run_dir as run_dir_module
from ofrnn_tf.checkpoint_files import DamagedCheckpointError
from ofrnn_tf.processes import owner_tag
from ofrnn_tf.run_dir import (
    DamagedRunFileError, IncompatibleRunError, RunDir, RunFolderNotWritableError,
    RunInUseError)
from ofrnn_tf.training.distribute import ClusterConfigError, cluster_config, is_chief_task


def with_best_weights(run: str) -> RunDir:
    """The fake run `run` with its checkpoint copied as the best epoch's weights."""
    run_dir = RunDir(str(run))
    shutil.copytree(run_dir.checkpoints_dir(), run_dir.best_dir())
    return run_dir


def best_data_file(run_dir: RunDir) -> str:
    (name,) = [n for n in os.listdir(run_dir.best_dir()) if ".data-" in n]
    return os.path.join(run_dir.best_dir(), name)


# -- a '[' in a path ---------------------------------------------------------------------
def test_a_run_under_a_bracket_is_not_said_to_need_training(make_fake_run, tmp_path):
    moved = tmp_path / "exp [lr=1e-3]" / "run"  # a finished run copied there
    shutil.copytree(make_fake_run(tmp_path / "run"), moved)
    run_dir = RunDir(str(moved))
    with pytest.raises(DamagedCheckpointError, match=r"contains '\[': TensorFlow reads "
                                                     r"checkpoint paths as glob patterns"):
        run_dir.weights_path()


@pytest.mark.slow  # starts several commands
def test_the_commands_refuse_a_bracket_in_a_path_before_any_work(make_fake_run, tmp_path):
    fake = make_fake_run(tmp_path / "run")
    held = tmp_path / "exp [v2]"
    commands = {
        "workdir": [str(ROOT / "train.py"), f"--workdir={held / 'run'}", "--mode=eval"],
        "export_dir": [str(ROOT / "export.py"), f"--workdir={fake}",
                       f"--export_dir={held / 'exports'}"],
        "model_base_path": ["-m", "ofrnn_tf.cli.serve",
                            f"--model_base_path={held / 'exports'}"],
    }
    for flag, args in commands.items():
        done = run_checked([sys.executable, *args], expect_failure=True)
        assert f"--{flag}={held}" in done.stderr and "contains '['" in done.stderr, done.stderr
        assert "rename the folder" in done.stderr and "Traceback" not in done.stderr
    assert not held.exists()  # nothing trained, exported or created


def test_a_relative_export_or_served_path_is_checked_as_serving_sees_it(tmp_path, monkeypatch):
    inside = tmp_path / "work [1]"
    inside.mkdir()
    monkeypatch.chdir(inside)
    refuse_glob_characters("workdir", "runs/a")  # TensorFlow reads the relative path
    with pytest.raises(app.UsageError, match=r"--export_dir=exports \(absolute path .*work "
                                             r"\[1\]/exports\) contains '\['"):
        refuse_glob_characters("export_dir", "exports", absolute=True)


# -- a damaged best/ -------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_damaged_best_weights_are_named_with_the_remedy(make_fake_run, tmp_path, how):
    run_dir = with_best_weights(make_fake_run(tmp_path / "run"))
    data = best_data_file(run_dir)
    if how == "deleted":
        os.remove(data)
    else:
        os.truncate(data, 100)
    with pytest.raises(DamagedCheckpointError,
                       match=rf"the best weights {run_dir.best_dir()}/ckpt-1 cannot be read .*"
                             rf"Delete the folder {run_dir.best_dir()} to use the last training "
                             r"checkpoint instead"):
        run_dir.weights_path()
    with pytest.raises(app.UsageError, match="the best weights"):  # predict's and export's check
        trained_run(run_dir.path)
    shutil.rmtree(run_dir.best_dir())  # the remedy
    assert run_dir.weights_path() == os.path.join(run_dir.checkpoints_dir(), "ckpt-1")


@pytest.mark.slow
def test_predict_names_damaged_best_weights_in_one_line(make_fake_run, tmp_path):
    run_dir = with_best_weights(make_fake_run(tmp_path / "run"))
    os.truncate(best_data_file(run_dir), 100)
    done = run_checked([sys.executable, str(ROOT / "predict.py"), f"--workdir={run_dir.path}",
                        str(tmp_path / "any.jpg")], expect_failure=True)
    assert "the best weights" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "--help" not in done.stderr  # the remedy is in the run folder, not in a flag


@pytest.mark.slow
def test_print_config_names_a_run_whose_checkpoints_do_not_read_in_one_line(make_fake_run,
                                                                            tmp_path):
    run_dir = RunDir(str(make_fake_run(tmp_path / "run")))
    for path in glob.glob(os.path.join(run_dir.checkpoints_dir(), "ckpt-*.data-*")):
        os.truncate(path, 10)
    done = run_checked([sys.executable, str(ROOT / "train.py"), f"--workdir={run_dir.path}",
                        "--print_config"], expect_failure=True)
    assert "Traceback" not in done.stderr, done.stderr
    assert (f"train.py: no checkpoint in {run_dir.checkpoints_dir()} can be read" in done.stderr
            and "--help" not in done.stderr), done.stderr


# -- weights of another model --------------------------------------------------------------
def test_weights_without_a_layer_of_the_model_are_refused_naming_its_variables(make_fake_run,
                                                                                tmp_path):
    """A layer renamed or added since training would keep its initial weights in
    predictions, exports and evaluations."""
    trained = RunDir(str(make_fake_run(tmp_path / "trained")))
    grown = RunDir(str(make_fake_run(tmp_path / "grown", label_context_units=4)))
    model = trained.load_model()[0]  # the model its own weights were written from loads
    assert model.label_context is None
    shutil.rmtree(grown.checkpoints_dir())
    shutil.copytree(trained.checkpoints_dir(), grown.checkpoints_dir())
    expected = (f"{grown.checkpoints_dir()}/ckpt-1 holds no weights for variables of the "
                f"model {grown.run_file} describes (label_context/hidden_1/kernel, "
                f"label_context/hidden_1/bias, label_context/hidden_2/kernel and 3 more): this "
                f"code's model does not match the run's weights (a layer renamed or added "
                f"since training)")
    with pytest.raises(IncompatibleRunError, match=re.escape(expected)) as refused:
        grown.load_model()
    assert isinstance(refused.value, input_errors())  # the commands say it in one line


class ScoresRenamed(SpatialLabelHead):
    """The spatial head with its class-score layer held as `_class_scores`: the variables'
    paths stay `label_map_head/scores/...`, the checkpoint's names for them do not."""

    def __setattr__(self, name, value):
        super().__setattr__("_class_scores" if name == "_scores" else name, value)

    _scores = property(lambda self: self._class_scores)


def test_weights_of_a_layer_held_under_another_name_are_refused(make_fake_run, tmp_path,
                                                                 monkeypatch):
    run_dir = RunDir(str(make_fake_run(tmp_path / "run")))
    monkeypatch.setitem(HEAD_LAYERS, "spatial", (ScoresRenamed, HEAD_LAYERS["spatial"][1]))
    with pytest.raises(IncompatibleRunError, match=re.escape(
            "holds no weights for variables of the model") + ".*" + re.escape(
            "(label_map_head/scores/kernel, label_map_head/scores/bias)")):
        run_dir.load_model()


# -- a remedy's command ------------------------------------------------------------------
def suggested_command(message: str, after: str, until: str = "") -> list[str]:
    """The command `message` names between `after` and `until` (its end if empty), split
    as a shell splits it pasted."""
    command = message.split(after, 1)[1]
    return shlex.split(command.split(until, 1)[0] if until else command)


def test_a_remedys_command_runs_on_a_run_folder_whose_name_holds_a_space(
        make_fake_run, tmp_path, tiny_backbone):
    run_dir = with_best_weights(make_fake_run(tmp_path / "my run"))
    calibrate = ["ofrnn-train", f"--workdir={run_dir.path}", "--mode=eval"]
    with pytest.raises(UncalibratedBeamSizeError) as uncalibrated:
        InferenceModule.from_run(run_dir, beam_size=1, backbone=tiny_backbone)
    assert (suggested_command(str(uncalibrated.value), "on validation with `", "`")
            == [*calibrate, "--decoding.beam_size=1"])
    with open(run_dir.calibration_file, "w") as f:
        f.write("{")
    with pytest.raises(DamagedRunFileError) as damaged:
        run_dir.calibration(FAKE_BEAM)
    assert suggested_command(str(damaged.value), "calibrate τ again: ") == calibrate
    os.truncate(best_data_file(run_dir), 100)
    with pytest.raises(DamagedCheckpointError) as best:
        run_dir.weights_path()
    assert suggested_command(str(best.value), "calibrate τ for them: ") == calibrate


# -- an edited label map -----------------------------------------------------------------
@pytest.mark.slow
def test_predict_and_export_refuse_a_permuted_label_map_in_one_line(make_fake_run, tmp_path):
    run = make_fake_run(tmp_path / "run")
    label_map = run / "label_map.json"
    data = json.loads(label_map.read_text())
    data["names"] = data["names"][::-1]
    label_map.write_text(json.dumps(data))
    with pytest.raises(app.UsageError, match="label map mismatch"):
        trained_run(str(run))
    done = run_checked([sys.executable, str(ROOT / "predict.py"), f"--workdir={run}",
                        str(tmp_path / "any.jpg")], expect_failure=True)
    assert "label map mismatch" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "--help" not in done.stderr


# -- a damaged JSON file of the run folder ----------------------------------------------
DAMAGED_REMEDIES = {
    "run.json": "restore it from a copy of the run folder, or train again in a new --workdir",
    "label_map.json": "delete it: run.json holds the same class names",
    "calibration.json": "delete it and calibrate τ again: ofrnn-train --workdir=",
}


@pytest.mark.parametrize("name", sorted(DAMAGED_REMEDIES))
@pytest.mark.parametrize("text, fault", [('{"config": {', "not (a )?valid"),
                                         ('{"by_beam_size": [], "names": 3}', "(not a|expected)")])
def test_a_damaged_run_file_is_named_with_its_remedy(make_fake_run, tmp_path, name, text, fault):
    run_dir = RunDir(str(make_fake_run(tmp_path / "run")))
    with open(run_dir.file(name), "w") as f:
        f.write(text)
    with pytest.raises(DamagedRunFileError, match=rf"^{run_dir.file(name)}: {fault}.*; .*"
                                                  + re.escape(DAMAGED_REMEDIES[name])):
        run_dir.calibration(FAKE_BEAM) if name == "calibration.json" else run_dir.label_map()
    if name != "calibration.json":  # what export and predict check first
        with pytest.raises(app.UsageError, match=re.escape(DAMAGED_REMEDIES[name])):
            trained_run(run_dir.path)
    if name != "run.json":  # the remedy: nothing else of the run is lost
        os.remove(run_dir.file(name))
        assert run_dir.label_map().names == FAKE_NAMES
        assert run_dir.calibration(FAKE_BEAM) is None or name != "calibration.json"


@pytest.mark.parametrize("field, value, said", [
    ("tau", float("nan"), "tau=nan, not a probability in [0, 1]"),
    ("tau", 2.0, "tau=2.0, not a probability in [0, 1]"),
    ("score_mix", -1, "score_mix=-1, not a probability in [0, 1]"),
    ("score_mix", float("inf"), "score_mix=inf, not a probability in [0, 1]"),
    ("min_labels", -1, "min_labels=-1, not a whole number ≥ 0"),
    ("min_labels", 1.5, "min_labels=1.5, not a whole number ≥ 0"),
])
def test_a_calibration_value_out_of_range_is_named_with_the_remedy(make_fake_run, tmp_path,
                                                                   field, value, said):
    # A NaN or out-of-range τ or score mix passed the file's check, then raised a
    # traceback where the model was built.
    run_dir = RunDir(str(make_fake_run(tmp_path / "run")))
    data = json.loads(open(run_dir.calibration_file).read())
    data["by_beam_size"][str(FAKE_BEAM)][field] = value
    with open(run_dir.calibration_file, "w") as f:
        json.dump(data, f)
    with pytest.raises(DamagedRunFileError, match=rf"^{re.escape(run_dir.calibration_file)}: "
                       rf"the entry for K={FAKE_BEAM} holds {re.escape(said)}; "
                       + re.escape(DAMAGED_REMEDIES["calibration.json"])):
        run_dir.calibration(FAKE_BEAM)


def test_fewest_labels_a_calibration_cannot_hold_are_named_as_the_files(make_fake_run, tmp_path,
                                                                       tiny_backbone):
    # Said as `--min_labels=99 cannot hold` by ofrnn-predict, a flag never given.
    run_dir = RunDir(str(make_fake_run(tmp_path / "run")))
    data = json.loads(open(run_dir.calibration_file).read())
    data["by_beam_size"][str(FAKE_BEAM)]["min_labels"] = 99
    with open(run_dir.calibration_file, "w") as f:
        json.dump(data, f)
    with pytest.raises(DamagedRunFileError, match=rf"^{re.escape(run_dir.calibration_file)}: "
                       rf"K={FAKE_BEAM}'s min_labels=99 cannot hold: a prediction holds 0 to "
                       rf"{FAKE_MAX_STEPS} labels .*; "
                       + re.escape(DAMAGED_REMEDIES["calibration.json"])):
        InferenceModule.from_run(run_dir, backbone=tiny_backbone)
    with pytest.raises(MinLabelsError, match="^min_labels=99 cannot hold"):  # a given count
        InferenceModule.from_run(run_dir, min_labels=99, backbone=tiny_backbone)


@pytest.mark.parametrize("denied", ["inside", "on_its_way"])
def test_a_run_folder_this_user_may_not_read_is_not_called_no_run_folder(make_fake_run,
                                                                        tmp_path, monkeypatch,
                                                                        denied):
    run_dir = RunDir(str(make_fake_run(tmp_path / "run")))
    real_stat = os.stat
    # Another user's run folder of mode 700, or one inside their folder of mode 700.
    locked = run_dir.path + os.sep if denied == "inside" else str(tmp_path) + os.sep

    def stat(path, *args, **kwargs):
        if os.fspath(path).startswith(locked):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(app.UsageError, match=rf"^{run_dir.path} cannot be looked into by this "
                                             r"user \(Permission denied\): ask the owner of "
                                             r"the folders on its path for access"):
        trained_run(run_dir.path)
    monkeypatch.setattr(os, "stat", real_stat)
    assert RunDir(str(tmp_path / "none")).exists() is False
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        RunDir(str(tmp_path / "none")).require()


def test_a_run_folder_that_is_a_dangling_link_is_said_so(tmp_path):
    (tmp_path / "run").symlink_to(tmp_path / "moved")
    with pytest.raises(app.UsageError, match=r"run is not a run folder \(a symbolic link to "
                                             r"a path that does not exist\)"):
        refuse_missing_run_folder(str(tmp_path / "run"))
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(app.UsageError, match=r"loop is not a run folder \(Too many levels of "
                                             r"symbolic links\)"):
        refuse_missing_run_folder(str(tmp_path / "loop"))


@pytest.fixture
def as_another_user():
    """`(folder, run)`: a folder under /tmp that another user (nobody) can reach, and
    `run(*args)`, which runs Python with `args` as that user from the project's root."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("reads as another user: needs root and setpriv")
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)

        def run(*args):
            return subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                 *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                env={**os.environ, "HOME": folder, "PYTHONPATH": str(ROOT),
                     "TF_CPP_MIN_LOG_LEVEL": "2"})

        yield Path(folder), run


# Prints what each expression given gives, or the type and text of its error.
EACH_CALL = ("import sys\nfrom ofrnn_tf.checkpoint_files import resumable_checkpoint\n"
             "from ofrnn_tf.run_dir import RunDir\n"
             "for call in sys.argv[1:]:\n"
             "    try:\n        print(eval(call))\n"
             "    except Exception as error:\n        print(type(error).__name__, error)\n")


@pytest.mark.slow
def test_run_files_another_user_may_not_read_are_named_not_taken_for_no_run(make_fake_run,
                                                                           as_another_user):
    folder, run = as_another_user
    runs = {name: make_fake_run(folder / name) for name in ("label_map", "calibration", "folder")}
    os.chmod(runs["label_map"] / "label_map.json", 0o600)
    os.chmod(runs["calibration"] / "calibration.json", 0o600)
    os.chmod(runs["folder"], 0o700)  # as main.sh leaves it under umask 077
    done = run("-c", EACH_CALL, f"RunDir({str(runs['label_map'])!r}).label_map()",
               f"RunDir({str(runs['calibration'])!r}).calibration(2)",
               f"RunDir({str(runs['folder'])!r}).exists()")
    said = [f"RunFolderNotReadableError {runs[name] / f'{name}.json'} cannot be read by "
            f"this user (Permission denied): ask the run folder's owner for read access"
            for name in ("label_map", "calibration")]
    said.append(f"RunFolderNotReadableError {runs['folder']} cannot be looked into by this "
                f"user (Permission denied): ask the owner of the folders on its path")
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith(s) for line, s in zip(lines, said)), (
        done.stdout + done.stderr)
    # τ is read where the module is built, after the checks of trained_run.
    done = run(ROOT / "predict.py", f"--workdir={runs['calibration']}", "any.jpg")
    assert (f"predict.py: {runs['calibration'] / 'calibration.json'} cannot be read by "
            f"this user" in done.stderr and "Traceback" not in done.stderr), done.stderr


@pytest.mark.slow
def test_commands_name_a_damaged_run_file_in_one_line(make_fake_run, tmp_path):
    run = make_fake_run(tmp_path / "run")
    (run / "calibration.json").write_text('{"by_beam_size": {"2": {"tau": ')
    done = run_checked([sys.executable, str(ROOT / "predict.py"), f"--workdir={run}",
                        str(tmp_path / "any.jpg")], expect_failure=True)
    assert f"{run}/calibration.json: not valid JSON" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "--help" not in done.stderr, done.stderr
    (run / "run.json").write_text("")  # read before anything else by a rerun or an eval
    done = run_checked([sys.executable, str(ROOT / "train.py"), f"--workdir={run}",
                        "--mode=eval"], expect_failure=True)
    assert f"{run}/run.json: not valid JSON" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "--help" not in done.stderr, done.stderr


def test_a_beam_width_asked_of_a_baseline_run_is_refused(make_fake_run, tmp_path):
    # ofrnn-predict and ofrnn-export took --beam_size for one without a word, as
    # ofrnn-train refuses --decoding.beam_size for it.
    baseline = str(make_fake_run(tmp_path / "baseline", variant="baseline"))
    with pytest.raises(app.UsageError, match=rf"^--beam_size=2: {re.escape(baseline)} is a "
                                             rf"baseline run \(M_map alone\), which has no "
                                             rf"beam: its labels are the classes above τ$"):
        trained_run(baseline, beam_size=2)
    assert trained_run(baseline).path == baseline
    decoder = str(make_fake_run(tmp_path / "decoder"))
    assert trained_run(decoder, beam_size=2).path == decoder


# -- one command at a time ---------------------------------------------------------------
HOLD = ("import sys, time\n"
        "from ofrnn_tf.run_dir import RunDir\n"
        "with RunDir(sys.argv[1]).exclusive():\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n")


@pytest.mark.slow
def test_a_held_run_folder_is_refused_naming_its_holder_until_it_dies(tmp_path):
    run_dir = RunDir(str(tmp_path / "run"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, run_dir.path], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        assert holder.stdout.readline().strip() == "held"
        host = owner_tag().rpartition("-")[0]
        with pytest.raises(RunInUseError, match=rf"{run_dir.path} is in use by pid "
                                                rf"{holder.pid} on host {host}"):
            with run_dir.exclusive():
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # Left behind by the killed holder:
    assert str(holder.pid) in Path(run_dir.lock_file).read_text()
    with run_dir.exclusive():  # does not block: the kernel released the dead holder's lock
        assert f"-{os.getpid()}" in Path(run_dir.lock_file).read_text()


def test_a_readers_moment_on_the_lock_does_not_refuse_a_training(tmp_path):
    # export and predict check the folder with a shared hold a moment long, which names no
    # holder: a training that starts in that moment waits it out instead of being refused.
    import threading

    run_dir = RunDir(str(tmp_path / "run"))
    with run_dir.exclusive():
        pass
    reader = os.open(run_dir.lock_file, os.O_RDONLY)
    try:
        fcntl.flock(reader, fcntl.LOCK_SH)
        threading.Timer(0.05, fcntl.flock, (reader, fcntl.LOCK_UN)).start()
        with run_dir.exclusive():
            assert f"-{os.getpid()}" in Path(run_dir.lock_file).read_text()
        fcntl.flock(reader, fcntl.LOCK_SH)  # a hold that lasts, untagged: refused after all
        with pytest.raises(RunInUseError, match=rf"^{run_dir.path} is in use by "):
            with run_dir.exclusive():
                pass
    finally:
        os.close(reader)


@pytest.mark.slow
def test_the_python_api_refuses_a_run_folder_another_process_holds(make_fake_run, tmp_path,
                                                                   tiny_backbone):
    # The commands' library calls, from a notebook say, hold and check the folder too.
    from ofrnn_tf import pipeline
    from ofrnn_tf.export import export_run
    from ofrnn_tf.inference.module import InferenceModule
    from ofrnn_tf.inference.predictor import Predictor

    run_dir = RunDir(str(make_fake_run(tmp_path / "run")))
    config, _ = run_dir.load()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, run_dir.path], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    try:
        assert holder.stdout.readline().strip() == "held"
        in_use = rf"{run_dir.path} is in use by pid {holder.pid} "
        for mode in ("train", "eval"):
            with pytest.raises(RunInUseError, match=in_use + "on host .*: another command"):
                pipeline.run(config, run_dir.path, mode)
        for read in (lambda: InferenceModule.from_run(run_dir.path, backbone=tiny_backbone),
                     lambda: Predictor.from_run(run_dir.path, backbone=tiny_backbone),
                     lambda: export_run(run_dir.path, str(tmp_path / "exports"),
                                        backbone=tiny_backbone)):
            with pytest.raises(RunInUseError, match=in_use + "on host .*: a command trains"):
                read()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert not (tmp_path / "exports").exists()
    # A process reads the weights of a folder it holds itself (a run's example pictures).
    with run_dir.exclusive():
        InferenceModule.from_run(run_dir.path, backbone=tiny_backbone)
    with pytest.raises(RunInUseError, match=rf"is in use by pid {os.getpid()} "):
        with run_dir.exclusive(), run_dir.exclusive():
            pass


@pytest.mark.slow  # starts several commands
def test_commands_refuse_a_run_folder_another_command_holds(make_fake_run, tmp_path):
    # A training replaces the best weights and τ that export and predict would read.
    run_dir = RunDir(str(make_fake_run(tmp_path / "run")))
    image = tmp_path / "image.png"
    keras.utils.save_img(str(image), np.zeros((8, 8, 3), np.uint8))
    with run_dir.exclusive():
        for command in (["train.py", "--mode=eval"],
                        ["export.py", f"--export_dir={tmp_path / 'exports'}"],
                        ["predict.py", str(image)]):
            done = run_checked([sys.executable, str(ROOT / command[0]),
                                f"--workdir={run_dir.path}", *command[1:]], expect_failure=True)
            assert f"is in use by pid {os.getpid()} on host" in done.stderr, done.stderr
            # Its remedy is not in the flags.
            assert "Traceback" not in done.stderr and "--help" not in done.stderr, done.stderr
    assert not (tmp_path / "exports").exists()


def test_a_run_folder_that_cannot_be_written_is_refused_in_one_line(tmp_path):
    # A new run has nothing to copy elsewhere: another --workdir is the remedy.
    (tmp_path / "file").write_text("")  # read-only for root too: a folder under a file
    with pytest.raises(RunFolderNotWritableError,
                       match=r"file/run cannot be created \(Not a directory\): give a "
                             r"--workdir in a writable place \(scripts/main.sh: set WORKDIR"):
        with RunDir(str(tmp_path / "file" / "run")).exclusive():
            pass
    (tmp_path / "run" / ".lock").mkdir(parents=True)  # unwritable for root too
    with pytest.raises(RunFolderNotWritableError,
                       match=r"run cannot be written \(Is a directory\): training and "
                             r"--mode=eval write .* copy it to a writable place"):
        with RunDir(str(tmp_path / "run")).exclusive():
            pass


def test_a_run_folder_that_is_a_file_or_a_dangling_link_is_refused_saying_so(tmp_path):
    (tmp_path / "afile").write_text("")
    (tmp_path / "dead").symlink_to(tmp_path / "no" / "volume")
    with pytest.raises(RunFolderNotWritableError, match=r"afile is a file, not a folder"):
        with RunDir(str(tmp_path / "afile")).exclusive():
            pass
    with pytest.raises(RunFolderNotWritableError, match=r"dead is a symbolic link to "
                                                        r".*no/volume, which does not exist"):
        with RunDir(str(tmp_path / "dead")).exclusive():
            pass


def test_a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_kept(tmp_path):
    # Naming the holder empties .lock first: through a link it would empty another file.
    victim = tmp_path / "thesis.tex"
    victim.write_text("chapter one")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(victim)
    with pytest.raises(RunFolderNotWritableError,
                       match=r"run/\.lock is a symbolic link, not the run's lock file .*: "
                             r"remove the link and rerun"):
        with RunDir(str(tmp_path / "run")).exclusive():
            pass
    assert victim.read_text() == "chapter one"


@pytest.mark.slow
def test_a_full_disk_does_not_stop_a_command_taking_its_run_folder(tmp_path, monkeypatch):
    # Naming the holder in .lock writes a few bytes; the flock is what holds the folder,
    # so a disk with no space left fails later, at a write that names its file.
    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_dir_module.os, "pwrite", no_space)
    run_dir = RunDir(str(tmp_path / "run"))
    with run_dir.exclusive():
        done = subprocess.run([sys.executable, "-c", TRY_TO_HOLD, run_dir.path], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "in use by another process", done.stderr[-2000:]


TRY_TO_HOLD = ("import sys\n"
               "from ofrnn_tf.run_dir import RunDir, RunInUseError\n"
               "try:\n"
               "    with RunDir(sys.argv[1]).exclusive():\n"
               "        print('held')\n"
               "except RunInUseError as error:\n"
               "    print(str(error).split(': ')[0].partition(' is ')[2])\n")


def test_a_command_that_fails_before_writing_leaves_no_run_folder_it_made(tmp_path):
    """A data set not found (say) must not leave a folder that later commands take for a
    run; a folder that was there, or one that holds more, stays."""
    made, there = RunDir(str(tmp_path / "new")), RunDir(str(tmp_path / "there"))
    os.makedirs(there.path)
    for run_dir in (made, there):
        with pytest.raises(FileNotFoundError):
            with run_dir.exclusive():
                raise FileNotFoundError("annotation file not found")
    assert not os.path.exists(made.path) and os.listdir(there.path) == [".lock"]
    # The parents it made go too; one that holds something else stays.
    nested = RunDir(str(tmp_path / "a" / "b" / "run"))
    with pytest.raises(FileNotFoundError):
        with nested.exclusive():
            raise FileNotFoundError("annotation file not found")
    assert not os.path.exists(tmp_path / "a")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError):
        with nested.exclusive():
            raise FileNotFoundError("annotation file not found")
    assert os.listdir(tmp_path / "a") == ["notes.txt"]
    with pytest.raises(KeyboardInterrupt):
        with made.exclusive():
            open(made.run_file, "w").close()
            raise KeyboardInterrupt
    assert sorted(os.listdir(made.path)) == [".lock", os.path.basename(made.run_file)]
    with made.exclusive():  # a folder made by a command that succeeds stays, of course
        pass
    assert os.path.isdir(made.path)


def test_a_run_folder_on_a_full_disk_is_said_as_a_full_disk(tmp_path, monkeypatch):
    # Not "copy it to a writable place": the folder is fine once space is freed (the
    # commands then say it in one line, naming the path).
    def no_space(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(run_dir_module.os, "makedirs", no_space)
    with pytest.raises(OSError, match="No space left on device") as raised:
        with RunDir(str(tmp_path / "run")).exclusive():
            pass
    assert not isinstance(raised.value, RunFolderNotWritableError)


def test_a_checkpoint_is_read_whole_once_while_its_files_stay_the_same(tmp_path, monkeypatch):
    prefix = tf.train.Checkpoint(v=tf.Variable(tf.zeros([1000]))).write(str(tmp_path / "ckpt"))
    reads = []
    real = tf.train.load_checkpoint
    monkeypatch.setattr(tf.train, "load_checkpoint", lambda p: reads.append(p) or real(p))
    assert checkpoint_files.checkpoint_problem(prefix) is None
    assert checkpoint_files.checkpoint_problem(prefix) is None
    assert len(reads) == 1
    data = prefix + ".data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    assert "cut short" in checkpoint_files.checkpoint_problem(prefix)
    assert len(reads) == 2


def _two_checkpoints(folder) -> tuple[str, str]:
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)), str(folder),
                                         max_to_keep=None)
    return manager.save(checkpoint_number=2), manager.save(checkpoint_number=4)


def test_a_checkpoint_this_user_may_not_read_is_refused_not_passed_over(tmp_path, monkeypatch):
    # Another user's newest checkpoint (a run once resumed with sudo): resuming from the
    # older one would train over it, and deleting best/ would lose the best weights.
    folder = tmp_path / "checkpoints"
    older, newer = _two_checkpoints(folder)

    def read(name, *args, **kwargs):  # as for a file of mode 600 another user owns
        if name == f"{newer}.index":
            raise PermissionError(errno.EACCES, "Permission denied", name)
        return open(name, *args, **kwargs)

    monkeypatch.setattr(checkpoint_files, "open", read, raising=False)
    said = (rf"the checkpoint {newer} cannot be read by this user \({newer}.index: Permission "
            rf"denied\); its files are not damaged: give read access to them")
    with pytest.raises(checkpoint_files.CheckpointNotReadableError, match=said):
        checkpoint_files.resumable_checkpoint(str(folder))
    with pytest.raises(DamagedCheckpointError, match=said) as refused:  # what commands catch
        checkpoint_files.best_checkpoint(str(folder), "rerun")
    assert "Delete" not in str(refused.value)
    assert checkpoint_files.checkpoint_problem(older) is None


@pytest.mark.slow
def test_a_checkpoint_of_mode_600_is_refused_to_another_user_as_tensorflow_reads_it(
        as_another_user):
    folder, run = as_another_user
    _, newer = _two_checkpoints(folder / "checkpoints")
    os.chmod(f"{newer}.index", 0o600)
    best = folder / "best"  # a folder it may not enter reads as one of none
    _two_checkpoints(best)
    os.chmod(best, 0o700)
    listed = folder / "listed"  # one it may enter, not list: its state file names them
    _, newest = _two_checkpoints(listed)
    os.chmod(listed, 0o711)
    done = run("-c", EACH_CALL, f"resumable_checkpoint({os.path.dirname(newer)!r})",
               f"resumable_checkpoint({str(best)!r})", f"resumable_checkpoint({str(listed)!r})")
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout + done.stderr
    assert lines[2] == str((newest, [])), lines[2]
    assert lines[0].startswith(f"CheckpointNotReadableError the checkpoint {newer} cannot "
                               f"be read by this user"), lines[0]
    assert lines[1].startswith(f"CheckpointNotReadableError {best} cannot be read by this "
                               f"user (Permission denied); its checkpoints are not "
                               f"damaged"), lines[1]


_WORKERS = {"worker": ["a:1", "b:2"]}
_WITH_CHIEF = {"chief": ["c:3"], "worker": ["a:1", "b:2"]}


@pytest.mark.parametrize("cluster, task, chief", [
    (_WORKERS, None, True), (_WORKERS, {"type": "worker", "index": 0}, True),
    (_WORKERS, {"type": "worker", "index": 1}, False),
    # With a chief task, as TensorFlow's standard layout has it, worker 0 is no chief.
    (_WITH_CHIEF, {"type": "chief", "index": 0}, True),
    (_WITH_CHIEF, {"type": "worker", "index": 0}, False)])
def test_only_the_chief_of_a_multi_worker_run_holds_the_folder(monkeypatch, cluster, task,
                                                               chief):
    # The workers of one run share its folder: the others must not be refused.
    config = {"cluster": cluster, **({"task": task} if task else {})}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert is_chief_task("multi_worker") is chief
    assert is_chief_task("default")  # a TF_CONFIG left from another run is not read


@pytest.mark.parametrize("tf_config, problem", [
    ("[]", "it is list, not a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', 'no "cluster" with a chief or workers'),
    ('{"cluster": {"worker": ["a:1"]}}', 'no "task" with this process\'s type and index'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     "its task worker 1 is not in its cluster"),
])
def test_a_tf_config_multi_worker_cannot_use_is_named(monkeypatch, tf_config, problem):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ClusterConfigError, match="--runtime.strategy=multi_worker reads the "
                                                 "cluster from the TF_CONFIG"):
        cluster_config()
    with pytest.raises(ClusterConfigError) as error:
        cluster_config()
    assert problem in str(error.value)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": _WITH_CHIEF,
                                                "task": {"type": "worker", "index": 1}}))
    assert cluster_config()["task"]["index"] == 1
