"""One experiment config: flags derived from it, presets, what a rerun may change."""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys

import pytest
from absl import app, flags

from conftest import ROOT, ctrl_c_as_in_a_terminal
from toy_run import TINY_TRAIN_FLAGS
from ofrnn_tf import configs
from ofrnn_tf.config.experiment import (
    SCENES, ExperimentConfig, fields, identity_differences)
from ofrnn_tf.config.flags import (
    config_from_flags, define_config_flags, describe, overrides_from_flags)
from ofrnn_tf.data.canvas_config import SCENE_TABLES


def parse(*argv: str) -> flags.FlagValues:
    values = flags.FlagValues()
    define_config_flags(values)
    values(["prog", *argv])
    return values


def test_every_setting_has_one_flag_with_its_default_and_help():
    values = parse()
    for name, field, default in fields(ExperimentConfig()):
        assert values[name].default == default, name
        assert field.metadata["help"] and values[name].help.endswith(field.metadata["help"]), name
    assert config_from_flags(values) == ExperimentConfig() == configs.get_config("benchmark")


def test_helpfull_shows_the_main_job_defaults():
    done = subprocess.run([sys.executable, "train.py", "--helpfull"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert "--model.lstm_units" in done.stdout, done.stderr
    assert done.returncode == 0  # absl's own status after help is 1
    shown = {}
    for block in re.split(r"\n(?=  --)", done.stdout):
        match = re.match(r"\s*--(?:\[no\])?([\w.]+):.*\(default: '([^']*)'\)", block, re.S)
        if match:
            shown[match[1]] = match[2]
    for name, _, default in fields(ExperimentConfig()):
        want = str(default).lower() if isinstance(default, bool) else str(default)
        assert shown.get(name) == want, (name, shown.get(name), want)


def test_a_flag_named_in_a_settings_help_is_a_setting_or_named_with_its_command():
    """Every command that takes the settings shows their help (ofrnn-extract too, which
    has no --workdir nor --print_config): another flag is named with the command it is of."""
    values = parse()
    for name, field, _ in fields(ExperimentConfig()):
        said = field.metadata["help"]
        for flag in re.findall(r"--(\w+(?:\.\w+)*)", said):
            assert flag in values or re.search(rf"ofrnn-\w+ [^()]*--{flag}\b", said), (name, flag)


@pytest.mark.parametrize("argv", [
    ["train.py", "--help"],
    # What a console-script wrapper runs: a __main__ without a docstring.
    ["-c", "import sys; from ofrnn_tf.cli.train import run; sys.argv[0] = 'ofrnn-train'; run()",
     "--help"],
])
def test_help_lists_the_commands_own_flags_under_its_description(argv):
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    # The command's description, under the shim too (whose own docstring is one line).
    assert "ofrnn-train: trains (or resumes)" in done.stdout, done.stdout[:500]
    assert "--print_config" in done.stdout, done.stdout[:1500]
    for name in ("--workdir", "--mode", "--model.lstm_units", "--stage2.epochs"):
        assert name in done.stdout, (name, done.stdout[-1500:])


# The wrapper a console script is, with a note on stderr of whether TensorFlow was imported.
_COMMAND = ("import atexit, sys; atexit.register(lambda: sys.stderr.write("
            "'\\nTENSORFLOW IMPORTED' if 'tensorflow' in sys.modules else '')); "
            "from ofrnn_tf.cli.{0} import run; sys.argv[0] = 'ofrnn-{0}'; run()")


@pytest.mark.parametrize("command, argv, refusal", [
    ("train", [], "--workdir is required"),
    ("train", ["--workdir=no/such/run", "--train.seed=-1"], "--train.seed must be in 0.."),
    ("train", ["--workdir=no/such/run", "--model.variant=no_attention"],
     "--model.variant=no_attention is an ablation of the paper's decoder"),
    ("extract", ["surplus"], "unexpected arguments: ['surplus']"),
    ("predict", [], "--workdir is required"),
    ("predict", ["--workdir=run", "--tau=2", "a.jpg"], "--tau must be a probability"),
    # A mistyped run folder, which the command reads
    ("predict", ["--workdir=no/such/run", "a.jpg"],
     "no/such/run is not a run folder (no such folder): pass the --workdir of a training run"),
    ("train", ["--workdir=no/such/run", "--mode=eval"],
     "no/such/run is not a run folder (no such folder)"),
    ("export", ["--workdir=README.md", "--export_dir=no/such/exports"],
     "README.md is not a run folder (not a folder)"),
    ("export", ["--workdir=README.md/run", "--export_dir=no/such/exports"],
     "README.md/run is not a run folder (not a folder)"),
    ("train", ["--workdir=no/such/run", "--mode=eval", "--print_config"],
     "no/such/run is not a run folder (no such folder)"),
    ("export", [], "--workdir and --export_dir are required"),
    ("serve", [], "--model_base_path is required"),
    ("client", [], "give at least one image file or folder"),
])
def test_every_command_shows_help_and_refuses_flags_before_tensorflow_loads(
        command, argv, refusal):
    """TensorFlow takes seconds to import and prints lines of its own whatever the log
    level: --help, and a mistake in the flags, are said without it."""
    run = [sys.executable, "-c", _COMMAND.format(command)]
    helped = subprocess.run([*run, "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert helped.stdout.startswith(f"ofrnn-{command}: "), helped.stdout[:300]
    assert helped.returncode == 0
    assert "TENSORFLOW IMPORTED" not in helped.stderr
    refused = subprocess.run([*run, *argv], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1
    assert f"ofrnn-{command}: {refusal}" in refused.stderr, refused.stderr[-2000:]
    assert "TENSORFLOW IMPORTED" not in refused.stderr


@pytest.mark.slow
def test_train_keeps_the_absl_verbosity_the_user_gave(tmp_path):
    """Training lowers absl's verbosity to WARNING (TensorFlow's INFO line for every
    checkpoint), unless ``--verbosity`` is given."""
    script = ("import sys\n"
              "from absl import logging\n"
              "logging.set_verbosity = lambda level: print('set', level)\n"
              "from ofrnn_tf.cli import train\n"
              "sys.argv = ['train', *sys.argv[1:]]\n"
              "train.run()\n")
    for given, expected in (([], "set -1"), (["--verbosity=1"], None)):  # -1: WARNING
        done = subprocess.run([sys.executable, "-c", script, f"--workdir={tmp_path / 'run'}",
                               "--print_config", *given], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-800:]
        shown = [line for line in done.stdout.splitlines() if line.startswith("set ")]
        assert shown == ([expected] if expected else []), (given, shown)


@pytest.mark.slow
def test_print_config_of_eval_refuses_a_folder_that_holds_no_run(tmp_path):
    done = subprocess.run([sys.executable, "train.py", f"--workdir={tmp_path}", "--mode=eval",
                           "--print_config"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and not done.stdout, done.stdout[-500:]
    assert f"train.py: {tmp_path} is not a run folder (run.json missing)" in done.stderr


@pytest.mark.slow
def test_train_checks_the_flags_of_an_empty_run_folder_before_tensorflow_loads(tmp_path):
    # `mkdir -p runs/x` first is a new run too; a folder holding anything is left to RunDir.
    run = [sys.executable, "-c", _COMMAND.format("train"), "--train.seed=-1"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("")
    for folder, loads in (("empty", False), ("used", True)):
        refused = subprocess.run([*run, f"--workdir={tmp_path / folder}"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=120)
        assert "ofrnn-train: --train.seed must be in 0.." in refused.stderr, refused.stderr
        assert ("TENSORFLOW IMPORTED" in refused.stderr) == loads, folder
    assert not os.listdir(tmp_path / "empty")


@pytest.mark.parametrize("command", ["predict", "train"])
def test_a_command_whose_stdout_reader_is_gone_ends_quietly_as_sigpipe_would(command):
    """`ofrnn-predict … | head -1`: the lines past the reader's are not wanted."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line
    try:
        done = subprocess.run([sys.executable, "-c", _COMMAND.format(command), "--help"],
                              cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    finally:
        os.close(write_end)
    assert done.returncode == 128 + signal.SIGPIPE, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr


def test_flags_override_only_what_they_name():
    values = parse("--config=paper", "--stage2.epochs=3", "--data.seed=2")
    config = config_from_flags(values)
    paper = configs.get_config("paper")
    assert overrides_from_flags(values) == {"stage2": {"epochs": 3}, "data": {"seed": 2}}
    assert config == paper.replace(stage2={"epochs": 3}, data={"seed": 2})
    assert config.model.decoder == paper.model.decoder != ExperimentConfig().model.decoder


def test_invalid_values_are_refused_naming_the_setting():
    with pytest.raises(flags.IllegalFlagValueError, match="model.variant"):
        parse("--model.variant=transformer")
    with pytest.raises(ValueError, match=r"--data.val_fraction must be in \(0, 1\); got 1.5"):
        config_from_flags(parse("--data.val_fraction=1.5"))
    with pytest.raises(ValueError, match=r"--model.head_kernel_size must be a positive odd "
                                         r"number; got 4"):
        config_from_flags(parse("--model.head_kernel_size=4"))
    with pytest.raises(ValueError, match=r"unknown fields \['lstm'\] in config section 'model'"):
        ExperimentConfig.from_dict({"model": {"lstm": 3}})
    with pytest.raises(ValueError, match=r"--model.variant=no_attention is an ablation of "
                                         r"the paper's decoder: it needs decoder=paper"):
        config_from_flags(parse("--model.variant=no_attention"))  # refused before any data work
    with pytest.raises(ValueError, match=r"--train.attention_penalty must be ≥ 0; got -1"):
        config_from_flags(parse("--train.attention_penalty=-1"))
    with pytest.raises(ValueError, match="attention_penalty needs attention to penalise; "
                                         "--model.variant=no_attention has none"):
        config_from_flags(parse("--train.attention_penalty=1", "--model.variant=no_attention",
                                "--model.decoder=paper", "--model.head=mean_linear"))


def test_seeds_numpy_cannot_take_and_an_empty_cache_folder_are_refused_before_any_work():
    # A train.seed of -1 failed once run.json was written, and a rerun kept failing.
    for value in (-1, 2**32):
        with pytest.raises(ValueError, match=rf"^--train.seed must be in 0..4294967295; "
                                             rf"got {value}$"):
            config_from_flags(parse(f"--train.seed={value}"))
    assert config_from_flags(parse(f"--train.seed={2**32 - 1}"))
    with pytest.raises(ValueError, match=r"^--data.seed must be ≥ 0; got -1$"):
        config_from_flags(parse("--data.seed=-1"))
    assert config_from_flags(parse(f"--data.seed={2**40}"))  # runs trained so are read still
    with pytest.raises(ValueError, match=r"^--runtime.cache_dir is empty: give the folder"):
        config_from_flags(parse("--runtime.cache_dir="))


def test_a_beam_wider_than_any_decoded_is_refused_before_any_work():
    # A 20-digit width overflowed the beam search's graph; 100000 could crash the process.
    for value in (1001, 10**20):
        with pytest.raises(ValueError, match=rf"^--decoding.beam_size must be at most 1000 "
                                             rf"\(every image decodes its K beams at once\); "
                                             rf"got {value}$"):
            config_from_flags(parse(f"--decoding.beam_size={value}"))
    assert config_from_flags(parse("--decoding.beam_size=1000")).decoding.beam_size == 1000


def test_a_range_error_names_the_flag_of_its_section():
    # One class serves three sections: the message says which.
    for section in ("stage1", "stage2", "label_context"):
        with pytest.raises(ValueError, match=rf"^--{section}.epochs must be > 0; got 0$"):
            config_from_flags(parse(f"--{section}.epochs=0"))
    for value in ("nan", "inf"):
        with pytest.raises(ValueError, match=rf"--stage1.learning_rate must be > 0; got {value}"):
            config_from_flags(parse(f"--stage1.learning_rate={value}"))
        with pytest.raises(ValueError,
                           match=rf"--train.attention_penalty must be ≥ 0; got {value}"):
            config_from_flags(parse(f"--train.attention_penalty={value}"))


@pytest.mark.parametrize("argv, refused, reason", [
    (["--model.variant=baseline", "--stage2.epochs=3", "--model.lstm_units=64"],
     ["--stage2.epochs", "--model.lstm_units"], "--model.variant=baseline is M_map alone"),
    (["--model.variant=baseline", "--decoding.beam_size=5"], ["--decoding.beam_size"],
     "--model.variant=baseline"),
    (["--config=paper", "--model.variant=rare_first", "--train.loss=pla"], ["--train.loss"],
     "--model.variant=rare_first learns each step as a softmax"),
    (["--train.loss=pla", "--train.train_steps=max"], ["--train.train_steps"],
     "--train.loss=pla trains T_i + 1 steps"),
    (["--model.attention_units=64"], ["--model.attention_units"], "--model.decoder=residual"),
    (["--train.attention_penalty_form=overlap"], ["--train.attention_penalty_form"],
     "--train.attention_penalty is 0"),
    (["--config=paper", "--model.head_units=64"], ["--model.head_units"],
     "--model.head=mean_linear"),
    (["--label_context.epochs=3"], ["--label_context.epochs"],
     "--model.label_context_units is 0"),
    (["--config=benchmark_scenes", "--label_context.epochs=3"], ["--label_context.epochs"],
     "--model.label_context_training=joint"),
    (["--config=coco", "--data.data_dir=/data/coco", "--data.num_train=5"], ["--data.num_train"],
     "--data.dataset=coco is not the embedded benchmark"),
    (["--data.val_fraction=0.1"], ["--data.val_fraction"], "draws its own validation"),
    (["--config=manifest", "--data.data_dir=mine", "--data.coco_release=2017"],
     ["--data.coco_release"], "--data.dataset=manifest is not MS-COCO"),
], ids=["baseline_stage2", "baseline_beam", "fixed_order_loss", "pla_steps", "residual_attention",
        "penalty_form", "mean_linear_head", "no_label_context", "joint_context", "coco_sizes",
        "benchmark_val_fraction", "manifest_coco_release"])
def test_a_flag_the_run_would_not_read_is_refused(argv, refused, reason):
    with pytest.raises(ValueError) as error:
        config_from_flags(parse(*argv))
    message = str(error.value)
    assert reason in message and "would be ignored" in message, message
    for name in refused:
        assert name in message, message


def test_a_hold_out_share_for_a_folder_with_its_own_validation_manifest_is_refused(tmp_path):
    # val.csv is the validation split: --data.val_fraction would be recorded, never read,
    # and a rerun without it refused as another run.
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "train.csv").write_text("path,labels\na.png,x\n")
    held_out = parse("--config=manifest", f"--data.data_dir={folder}", "--data.val_fraction=0.1")
    assert config_from_flags(held_out).data.val_fraction == 0.1  # no val.csv: it is read
    (folder / "val.jsonl").write_text('{"path": "b.png", "labels": ["x"]}\n')
    with pytest.raises(ValueError, match=rf"^--data.val_fraction would be ignored: "
                                         rf"{re.escape(str(folder / 'val.jsonl'))} is the "
                                         rf"validation split \(without that file"):
        config_from_flags(held_out)
    now = config_from_flags(parse("--config=manifest", f"--data.data_dir={folder}"))
    saved = now.replace(data={"val_fraction": 0.1})  # a run that took the flag before
    assert identity_differences(saved, now) == []
    assert "val_fraction" not in now.to_record()["data"]
    # One manifest file holds out validation and test by that share: read.
    single = parse("--config=manifest", f"--data.manifest={folder / 'train.csv'}",
                   "--data.val_fraction=0.2")
    assert config_from_flags(single).data.val_fraction == 0.2
    os.remove(folder / "val.jsonl")
    assert identity_differences(saved, now) == [
        "data.val_fraction: 0.1 in the run folder vs 0.05 now"]
    # Read now, unread where the run's data were (a folder with its own val.csv, the data
    # moved since: data_dir is resumable): a setting one of them reads is compared.
    moved_from = tmp_path / "with_val"
    moved_from.mkdir()
    (moved_from / "val.csv").write_text("path,labels\nb.png,x\n")
    saved = saved.replace(data={"data_dir": str(moved_from)})
    assert "data.val_fraction" in saved.unread_settings()
    assert identity_differences(saved, now) == [
        "data.val_fraction: 0.1 in the run folder vs 0.05 now"]


def test_every_preset_and_every_setting_it_reads_pass(tmp_path):
    for name in configs.PRESETS:
        preset = configs.get_config(name)
        assert config_from_flags(parse(f"--config={name}")) == preset
        # Its --print_config listing, every setting given, reads back as a flag file.
        listing = tmp_path / f"{name}.flags"
        listing.write_text(describe(preset) + "\n")
        assert config_from_flags(parse(f"--config={name}", f"--flagfile={listing}")) == preset
    # Given explicitly, settings the run reads are taken, even at the value they have.
    read = parse("--model.variant=baseline", "--stage1.epochs=3", "--model.head_units=64",
                 "--decoding.min_labels=2", "--data.num_train=500", "--model.head_dropout=0.1")
    assert config_from_flags(read).stage1.epochs == 3
    assert config_from_flags(parse("--config=paper", "--model.attention_units=64",
                                   "--train.attention_penalty=0.1",
                                   "--train.attention_penalty_form=overlap"))
    # The baseline builds no decoder: the paper's M_map alone is the default command with
    # its head, and a decoder named for it is refused as unread (the paper's preset names
    # its own, which the same flag then repeats).
    assert config_from_flags(parse("--model.variant=baseline",
                                   "--model.head=mean_linear")).model.head == "mean_linear"
    with pytest.raises(ValueError, match=r"--model.decoder would be ignored: "
                                         r"--model.variant=baseline is M_map alone"):
        config_from_flags(parse("--model.variant=baseline", "--model.head=mean_linear",
                                "--model.decoder=paper"))
    assert config_from_flags(parse("--config=paper", "--model.variant=baseline",
                                   "--model.decoder=paper")).model.decoder == "paper"


def test_settings_neither_run_reads_are_no_difference_between_them():
    # A paper run saved before the head's kernel existed (kernel 1), named by its preset
    # (kernel 3): its head is mean_linear, which has no kernel.
    paper = configs.get_config("paper")
    saved = paper.replace(model={"head_kernel_size": 1, "head_units": 256})
    assert identity_differences(saved, paper) == []
    spatial = ExperimentConfig()
    assert identity_differences(spatial.replace(model={"head_kernel_size": 1}), spatial) == [
        "model.head_kernel_size: 1 in the run folder vs 3 now"]


def test_settings_that_do_not_go_together_are_a_usage_error_of_train_py(tmp_path):
    done = subprocess.run([sys.executable, "train.py", f"--workdir={tmp_path / 'run'}",
                           "--model.variant=no_attention"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert ("train.py: --model.variant=no_attention is an ablation of the paper's decoder"
            in done.stderr), done.stderr[-2000:]
    assert done.stderr.rstrip().endswith("Try --help for the command's flags.")
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["train.py", "--config=coco", "--data.data_dir={tmp}/coco", "--workdir={tmp}/run"],
     "train.py: COCO annotation file not found: {tmp}/coco/annotations/instances_train2014.json"),
    (["predict.py", "--workdir={tmp}", "{tmp}/image.png"],
     "predict.py: {tmp} is not a run folder (run.json missing)"),
    (["export.py", "--workdir={tmp}", "--export_dir={tmp}/exports"],
     "export.py: {tmp} is not a run folder (run.json missing)"),
    (["export.py", "--workdir={tmp}", "--export_dir={tmp}/image.png"],
     "export.py: --export_dir={tmp}/image.png is a file, not a folder"),
    (["-c", "import sys; from ofrnn_tf.cli.extract import run; sys.argv[0] = 'ofrnn-extract'; "
            "run()", "--config=manifest", "--data.data_dir={tmp}/own"],
     "ofrnn-extract: no manifest for split 'train': none of ['{tmp}/own/train.csv'"),
    (["predict.py", "--workdir={tmp}", "--batch_size=0", "{tmp}/image.png"],
     "predict.py: --batch_size must be at least 1, got 0"),
    (["predict.py", "--workdir={tmp}", "--beam_size=0", "--tau=0.5", "{tmp}/image.png"],
     "predict.py: --beam_size must be at least 1 (1: greedy), got 0"),
    (["export.py", "--workdir={tmp}", "--export_dir={tmp}/exports",
      "--beam_size=99999999999999999999"],
     "export.py: --beam_size must be at most 1000 (every image decodes its K beams at once), "
     "got 99999999999999999999"),
    (["export.py", "--workdir={tmp}", "--export_dir={tmp}/exports", "--num_warmup_images=-1"],
     "export.py: --num_warmup_images must be 0 or more, got -1"),
    (["export.py", "--workdir={tmp}", "--export_dir={tmp}/exports", "--keep_versions=-2"],
     "export.py: --keep_versions must be 0 or more, got -2"),
    (["predict.py", "--workdir={tmp}", "--attention_dir={tmp}/image.png", "{tmp}/image.png"],
     "predict.py: --attention_dir={tmp}/image.png is a file, not a folder"),
    (["-c", "import sys; from ofrnn_tf.cli.client import run; sys.argv[0] = 'ofrnn-client'; "
            "run()", "--threshold=nan", "{tmp}/image.png"],
     "ofrnn-client: --threshold must be a probability in [0, 1], got nan"),
    # One τ, each command's name for it taken by the other (the value is the same flag's).
    (["-c", "import sys; from ofrnn_tf.cli.client import run; sys.argv[0] = 'ofrnn-client'; "
            "run()", "--tau=nan", "{tmp}/image.png"],
     "ofrnn-client: --tau must be a probability in [0, 1], got nan"),
    (["predict.py", "--workdir={tmp}", "--threshold=2", "{tmp}/image.png"],
     "predict.py: --threshold must be a probability in [0, 1], got 2.0"),
    (["-c", "import sys; from ofrnn_tf.cli.client import run; sys.argv[0] = 'ofrnn-client'; "
            "run()", "--timeout=0", "{tmp}/image.png"],
     "ofrnn-client: --timeout must be a number of seconds above 0, got 0.0"),
    (["-c", "import sys; from ofrnn_tf.cli.client import run; sys.argv[0] = 'ofrnn-client'; "
            "run()", "--timeout=1e10", "{tmp}/image.png"],
     "ofrnn-client: --timeout must be at most 1e+08 seconds, or inf for no limit; got "
     "10000000000.0"),
    (["-c", "import sys; from ofrnn_tf.cli.client import run; sys.argv[0] = 'ofrnn-client'; "
            "run()", "--server= ", "{tmp}/image.png"],
     "ofrnn-client: --server is empty: give the model server's host:port"),
    (["-c", "import sys; from ofrnn_tf.cli.client import run; sys.argv[0] = 'ofrnn-client'; "
            "run()", "--version=-1", "{tmp}/image.png"],
     "ofrnn-client: --version must be an integer from 0 to 9223372036854775807 (TF Serving "
     "loads only those folders), got -1"),
    (["-c", "import sys; from ofrnn_tf.cli.client import run; sys.argv[0] = 'ofrnn-client'; "
            "run()", "--version=9223372036854775808", "{tmp}/image.png"],
     "ofrnn-client: --version must be an integer from 0 to 9223372036854775807 (TF Serving "
     "loads only those folders), got 9223372036854775808"),
    (["train.py", "--workdir={tmp}/run", "{tmp}/image.png"],
     "train.py: unexpected arguments: ['{tmp}/image.png']"),
    (["export.py", "--workdir={tmp}", "--export_dir={tmp}/exports", "{tmp}/image.png"],
     "export.py: unexpected arguments: ['{tmp}/image.png']"),
    (["-c", "import sys; from ofrnn_tf.cli.client import run; sys.argv[0] = 'ofrnn-client'; "
            "run()", "--wait_for_server=-1", "{tmp}/image.png"],
     "ofrnn-client: --wait_for_server must be a number of seconds, 0 or more (0: stop at "
     "once; inf: no limit), got -1.0"),
    (["-c", "import sys; from ofrnn_tf.cli.client import run; sys.argv[0] = 'ofrnn-client'; "
            "run()", "--resume", "--output={tmp}", "{tmp}/image.png"],
     "ofrnn-client: --resume: --output={tmp} is not a file, which a stopped run would have "
     "written"),
    (["-c", "import sys; from ofrnn_tf.cli.client import run; sys.argv[0] = 'ofrnn-client'; "
            "run()", "--resume", "--output={tmp}/image.png.txt", "{tmp}/image.png"],
     "ofrnn-client: --resume: {tmp}/image.png.txt, line 1, is not a line of ofrnn-client's: "
     "give its report, or another --output"),
], ids=["train_without_its_data", "predict_from_no_run", "export_of_no_run",
        "export_into_a_file", "extract_without_its_data", "predict_batch_of_none",
        "predict_beam_of_none", "export_beam_overflowing", "export_negative_warmup_count",
        "export_negative_keep_count",
        "predict_pictures_into_a_file",
        "client_threshold_nan", "client_tau_nan", "predict_threshold_two",
        "client_timeout_zero", "client_timeout_overflowing",
        "client_server_empty", "client_version_negative", "client_version_beyond_int64",
        "train_given_an_argument", "export_given_an_argument", "client_wait_negative",
        "client_resume_into_a_folder", "client_resume_of_another_file"])
def test_a_missing_file_or_run_is_a_one_line_usage_error(tmp_path, argv, message):
    (tmp_path / "image.png").write_bytes(b"")
    (tmp_path / "image.png.txt").write_text("notes\n")
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert message.format(tmp=tmp_path) in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]


@pytest.mark.slow
def test_a_preset_other_than_the_runs_is_refused_naming_each_setting_it_changes(
        tmp_path, make_fake_run):
    """`--config` given again on an existing run folder must agree with what the run was
    trained with: another preset is refused before any work, each differing setting named
    with both values, and the run folder is left as it was."""
    run = make_fake_run(tmp_path / "run")
    before = (run / "run.json").read_bytes()
    done = subprocess.run([sys.executable, "train.py", f"--workdir={run}", "--config=paper",
                           "--mode=eval"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert (f"train.py: {run} was trained with other settings than --config=paper and the "
            f"flags given: " in done.stderr), done.stderr[-2000:]
    for setting in ("model.head: 'spatial' in the run folder vs 'mean_linear' now",
                    "model.lstm_units: 16 in the run folder vs 256 now"):
        assert setting in done.stderr, done.stderr[-2000:]
    assert ("now. Leave out --config to go on with the run's own settings, or use a new "
            "--workdir\n") in done.stderr, done.stderr[-500:]
    assert "Traceback" not in done.stderr and (run / "run.json").read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("flags, env, message", [
    (["--features.layer=stage_5"], {},
     "train.py: --features.backbone=efficientnet_lite0, --features.layer=stage_5: backbone "
     "efficientnet_lite0: no layer 'stage_5'. Named choices:"),
    (["--features.backbone=xception"], {},
     "train.py: --features.backbone=xception, --features.layer=stage5: unknown backbone "
     "'xception'; available: ['efficientnet_lite0', "),
    (["--runtime.strategy=multi_worker"], {"TF_CONFIG": ""},
     "train.py: --runtime.strategy=multi_worker reads the cluster from the TF_CONFIG "
     "environment variable: it is not set"),
    (["--runtime.strategy=multi_worker"], {"TF_CONFIG": "{"},
     "train.py: --runtime.strategy=multi_worker reads the cluster from the TF_CONFIG "
     "environment variable: it is not valid JSON"),
], ids=["layer_typo", "unknown_backbone", "no_tf_config", "tf_config_not_json"])
def test_train_refuses_what_it_cannot_build_before_any_work(tmp_path, flags, env, message):
    for shown in ([], ["--print_config"]):  # which refuses what the run would
        done = subprocess.run([sys.executable, "train.py", f"--workdir={tmp_path / 'run'}",
                               f"--runtime.cache_dir={tmp_path / 'cache'}", *flags, *shown],
                              cwd=ROOT, capture_output=True, text=True, timeout=180,
                              env=dict(os.environ, **env))
        assert done.returncode == 1, done.stderr[-2000:]
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def run_script(script: str) -> subprocess.CompletedProcess:
    """`python -c script` from the repository root, its output captured."""
    return subprocess.run(ctrl_c_as_in_a_terminal([sys.executable, "-c", script]), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_a_command_under_a_locale_that_is_not_utf8_runs_in_utf8_mode_and_escapes_for_stdout(
        tmp_path):
    # TensorFlow takes file names as UTF-8 whatever the locale; under an ASCII (or Latin-1)
    # one Python would not, and a non-ASCII path would name two files.
    script = tmp_path / "command.py"
    script.write_text("import sys\nfrom ofrnn_tf.cli import runner\n"
                      "def main(argv):\n"
                      "    print(sys.getfilesystemencoding(), sys.flags.utf8_mode, "
                      "'\\u03c4 = 0.3', argv[1:])\n"
                      "runner(lambda: None, main)()\n")
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONIOENCODING="ascii",
               PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script), "caf\u00e9.jpg".encode()], cwd=ROOT,
                          env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.decode("ascii").split() == [
        "utf-8", "1", "\\u03c4", "=", "0.3", "['caf\\xe9.jpg']"]
    # A flag's value in another encoding (a Latin-1 é) could not name a file to TensorFlow.
    done = subprocess.run([sys.executable, str(script), b"--workdir=runs/\xe9tude"], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          timeout=120)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().strip() == (
        "command.py: --workdir=runs/\\udce9tude: not UTF-8 (a name in another encoding, such "
        "as Latin-1): TensorFlow reads file names as UTF-8; give it in UTF-8")


def _latin1_locale() -> str | None:
    """A Latin-1 locale this machine has, or None."""
    try:
        listed = subprocess.run(["locale", "-a"], capture_output=True, text=True).stdout
    except OSError:
        return None
    return next((name for name in listed.split() if re.search(r"8859-?1$", name, re.I)), None)


@pytest.mark.parametrize("option", ["-I", "-E"])
def test_a_command_run_by_python_ignoring_the_environment_still_restarts_in_utf8_mode(
        tmp_path, option):
    # -I and -E make Python ignore PYTHONUTF8: the restart must ask for UTF-8 mode by a
    # command-line option, or it would go on in Latin-1 and a non-ASCII path would name
    # one file to Python, another to TensorFlow.
    locale = _latin1_locale()
    if locale is None:
        pytest.skip("no Latin-1 locale on this machine")
    script = tmp_path / "command.py"
    script.write_text("import sys\nfrom ofrnn_tf.cli import runner\n"
                      "def main(argv):\n"
                      "    print(sys.getfilesystemencoding(), sys.flags.utf8_mode)\n"
                      "runner(lambda: None, main)()\n")
    done = subprocess.run([sys.executable, option, str(script)], cwd=ROOT, capture_output=True,
                          env=dict(os.environ, LC_ALL=locale), text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["utf-8", "1"]


@pytest.mark.parametrize("signalled", [True, False])
def test_a_ctrl_c_that_surfaces_as_a_system_error_still_reads_as_one(signalled):
    # Landing while C++ code calls back into Python, KeyboardInterrupt can become a
    # SystemError; without a Ctrl-C a SystemError keeps its traceback.
    script = (
        "import os, signal, time\n"
        "from ofrnn_tf.cli import runner\n"
        "def main(argv):\n"
        "    try:\n"
        f"        if {signalled}:\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(2)\n"
        "    except KeyboardInterrupt:\n"
        "        pass\n"
        "    raise SystemError('bad argument to internal function')\n"
        "runner(lambda: None, main, on_interrupt='rerun it')()\n")
    done = run_script(script)
    if signalled:
        assert done.returncode == 130, done.stderr[-2000:]
        assert done.stderr.rstrip().endswith("interrupted; rerun it"), done.stderr[-500:]
    else:
        assert done.returncode == 1 and "SystemError: bad argument" in done.stderr


def test_a_flag_given_as_home_relative_is_expanded_as_a_shell_would(tmp_path):
    # `--workdir=~/runs`: the shell leaves `~` after `=` as it is.
    script = ("from absl import flags\n"
              "from ofrnn_tf.cli import runner\n"
              "define = lambda: flags.DEFINE_string('workdir', None, 'a folder')\n"
              "runner(define, lambda argv: print(flags.FLAGS.workdir))()\n")
    done = subprocess.run([sys.executable, "-c", script, "--workdir=~/runs/a"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, HOME=str(tmp_path)))
    assert done.stdout.strip() == str(tmp_path / "runs" / "a"), done.stderr[-2000:]


# matplotlib's own folder under a writable HOME: by XDG's rules on Linux, one on macOS.
@pytest.mark.parametrize("platform, own", [("linux", ".cache/matplotlib"),
                                           ("darwin", ".matplotlib")])
def test_a_command_whose_home_cannot_be_written_gives_matplotlib_a_folder_of_its_own(
        tmp_path, platform, own):
    # A service user's HOME that it may not write (played by a file on the way, which root
    # cannot write under either): Keras imports matplotlib, which would warn before the
    # command's first line and build its font cache again on every run. matplotlib, and
    # the command, read sys.platform when they pick the folder: macOS is played here.
    (tmp_path / "home").write_text("")
    (tmp_path / "tmp").mkdir()
    script = ("import os, sys\n"
              f"sys.platform = {platform!r}\n"
              "from ofrnn_tf.cli import runner\n"
              "def main(argv):\n"
              "    import matplotlib\n"
              "    print(os.environ.get('MPLCONFIGDIR'), matplotlib.get_cachedir())\n"
              "runner(lambda: None, main)()\n")
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("XDG_", "MPL"))}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = str(tmp_path / "tmp" / f"ofrnn_tf-matplotlib-{os.getuid()}")
    assert done.stdout.split() == [folder, folder]
    assert "matplotlib" not in done.stderr, done.stderr[-2000:]
    # A writable HOME is matplotlib's, as it would be without the command.
    env["HOME"] = str(tmp_path / "tmp")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.stdout.split() == ["None", str(tmp_path / "tmp" / own)]


def _command_under_cpu_quota(quota, visible: int, **given: str) -> tuple[list[str], str]:
    """What a command sees of TensorFlow's thread variables under a made-up CPU quota on
    `visible` cores, with `given` in its environment: the two variables and its stderr."""
    script = ("import os\n"
              "from ofrnn_tf import host_limits\n"
              f"host_limits.cpu_quota = lambda *args: {quota!r}\n"
              f"host_limits.visible_cpus = lambda: {visible}\n"
              "from ofrnn_tf.cli import runner\n"
              "def main(argv):\n"
              "    print(os.environ.get('TF_NUM_INTRAOP_THREADS'),\n"
              "          os.environ.get('TF_NUM_INTEROP_THREADS'))\n"
              "runner(lambda: None, main)()\n")
    env = {name: value for name, value in os.environ.items() if not name.startswith("TF_NUM_")}
    env.update(given)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split(), done.stderr


@pytest.mark.slow
def test_a_command_under_a_cpu_quota_sizes_tensorflows_thread_pools_to_it():
    # TensorFlow sizes its pools from the cores it sees: 64 threads on half a CPU's time
    # would halve a server's throughput.
    threads, said = _command_under_cpu_quota(0.5, 64)
    assert threads == ["1", "1"]
    assert said.strip() == (
        "-c: a CPU quota of 0.5 lets this process use 1 of the 64 cores it sees: TensorFlow's "
        "thread pools are sized to 1 (TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1; set "
        "them to choose)")
    threads, said = _command_under_cpu_quota(2.5, 64, TF_NUM_INTRAOP_THREADS="8")
    assert threads == ["8", "3"] and "(TF_NUM_INTEROP_THREADS=3; set them" in said
    # Both chosen, no quota, or a quota of all the cores seen: nothing changes or is said.
    assert _command_under_cpu_quota(0.5, 64, TF_NUM_INTRAOP_THREADS="4",
                                    TF_NUM_INTEROP_THREADS="2") == (["4", "2"], "")
    assert _command_under_cpu_quota(None, 64) == (["None", "None"], "")
    assert _command_under_cpu_quota(2, 2) == (["None", "None"], "")


@pytest.mark.parametrize("given, why", [
    ("~/runs/a", f"no HOME and no passwd entry for uid {os.getuid()}"),
    ("~no_such_user_here/runs", "no user named 'no_such_user_here'")])
def test_a_home_relative_flag_that_cannot_be_expanded_is_refused(tmp_path, given, why):
    # A container's arbitrary uid with no passwd entry and no HOME: Python leaves `~` as
    # it is, and a folder named `~` would be made in the working folder.
    script = ("import pwd\n"
              "from absl import flags\n"
              "from ofrnn_tf.cli import runner\n"
              "def no_entry(uid):\n"
              "    raise KeyError(uid)\n"
              "pwd.getpwuid = no_entry\n"
              "define = lambda: flags.DEFINE_string('workdir', None, 'a folder')\n"
              "runner(define, lambda argv: print(flags.FLAGS.workdir))()\n")
    env = {name: value for name, value in os.environ.items() if name != "HOME"}
    done = subprocess.run([sys.executable, "-c", script, f"--workdir={given}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines()[0] == (
        f"-c: --workdir={given}: '~' cannot be expanded ({why}): give the path in full")


@pytest.mark.parametrize("signum, said, code", [
    (signal.SIGINT, "interrupted", 130), (signal.SIGTERM, "terminated", 143)],
    ids=["sigint", "sigterm"])
def test_sigint_and_sigterm_leave_through_the_commands_clean_up(tmp_path, signum, said, code):
    # `timeout`, `kill` and `docker stop` send SIGTERM: the command's own `finally`
    # (a run's timing, a progress bar's last line) runs as on Ctrl-C.
    cleaned = tmp_path / "cleaned"
    script = (
        "import os, signal, time\n"
        "from ofrnn_tf.cli import runner\n"
        "def main(argv):\n"
        "    try:\n"
        f"        os.kill(os.getpid(), {int(signum)})\n"
        "        time.sleep(30)\n"
        "    finally:\n"
        f"        open({str(cleaned)!r}, 'w').close()\n"
        "runner(lambda: None, main, on_interrupt='rerun it')()\n")
    done = run_script(script)
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stderr.rstrip().endswith(f"{said}; rerun it"), done.stderr[-500:]
    assert "Traceback" not in done.stderr and cleaned.exists()


@pytest.mark.slow
@pytest.mark.parametrize("raised, said", [
    ("OSError(errno.ENOSPC, 'No space left on device', '/data/run/calibration.json')",
     "No space left on device writing /data/run/calibration.json"),
    ("OSError(errno.EDQUOT, 'Disk quota exceeded')", "Disk quota exceeded"),
    # A copy's error names its source first: the file written is its second.
    ("OSError(errno.ENOSPC, 'No space left on device', '/cache/a.jpg', None, "
     "'/data/run/examples/000_a.jpg')",
     "No space left on device writing /data/run/examples/000_a.jpg"),
    # TensorFlow's writers (checkpoints, shards, SavedModels) raise op errors.
    ("tf.errors.ResourceExhaustedError(None, None, '/data/run/checkpoints/ckpt-10_temp/"
     "part-0.index; No space left on device')",
     "/data/run/checkpoints/ckpt-10_temp/part-0.index; No space left on device"),
    # An error handler's own write on the full disk must not hide the write that failed.
    ("chained()", "No space left on device writing /data/run/metrics_test.json"),
], ids=["oserror", "quota", "copy", "tensorflow", "chained"])
def test_a_full_disk_is_said_in_one_line_that_names_the_write(raised, said):
    script = (
        "import errno\n"
        "import tensorflow as tf\n"
        "from ofrnn_tf.cli import runner\n"
        "def chained():\n"
        "    try:\n"
        "        raise OSError(errno.ENOSPC, 'No space left', '/data/run/metrics_test.json')\n"
        "    except OSError:\n"
        "        try:\n"
        "            raise OSError(errno.ENOSPC, 'No space left', '/data/run/timing.json')\n"
        "        except OSError:\n"
        "            raise RuntimeError('the handler failed too')\n"
        "def main(argv):\n"
        f"    raise {raised}\n"
        "runner(lambda: None, main)()\n")
    done = run_script(script)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.rstrip().splitlines()[-1] == (
        f"-c: {said}. Free space and rerun the same command: what it finished before is kept.")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="writes to /dev/full")
@pytest.mark.parametrize("buffered", [True, False])
@pytest.mark.parametrize("flushed", [True, False])
def test_a_full_disk_on_stdout_is_said_to_be_the_standard_output(buffered, flushed):
    # `> /dev/full`: the error of a write to an open file names no file. A line left in
    # stdout's buffer is written as the command ends, not at exit (status 120).
    script = ("from ofrnn_tf.cli import runner\n"
              "def main(argv):\n"
              f"    print('results', flush={flushed})\n"
              "runner(lambda: None, main)()\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    assert (done.returncode, done.stderr) == (1, (
        "-c: No space left on device writing the standard output. Free space and rerun the "
        "same command: what it finished before is kept.\n"))


def test_other_os_errors_keep_their_traceback():
    script = ("import errno\nfrom ofrnn_tf.cli import runner\n"
              "def main(argv):\n    raise OSError(errno.EIO, 'Input/output error', '/x')\n"
              "runner(lambda: None, main)()\n")
    done = run_script(script)
    assert done.returncode == 1 and "Traceback" in done.stderr, done.stderr[-2000:]
    assert "Free space" not in done.stderr


@pytest.mark.slow
def test_ctrl_c_ends_train_py_with_one_line_that_says_how_to_go_on(tmp_path):
    # SIGINT a few seconds in, while the run builds its data (a Ctrl-C in the terminal).
    script = ("import os, signal, sys, threading; from ofrnn_tf.cli.train import run; "
              "threading.Timer(4, os.kill, (os.getpid(), signal.SIGINT)).start(); run()")
    done = subprocess.run(ctrl_c_as_in_a_terminal(
                              [sys.executable, "-c", script, f"--workdir={tmp_path / 'run'}",
                               f"--runtime.cache_dir={tmp_path / 'cache'}", *TINY_TRAIN_FLAGS]),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.rstrip().endswith(
        "interrupted; rerun the same command: it keeps what is finished (the data built, the "
        "features extracted, the last checkpoint) and goes on from there"), done.stderr[-500:]


@pytest.mark.slow
def test_a_non_finite_loss_ends_train_py_in_one_line(tmp_path):
    # The trainer's own test makes the loss NaN; here only what the command says of it.
    script = ("from ofrnn_tf import pipeline; from ofrnn_tf.cli.train import run\n"
              "from ofrnn_tf.training.trainer import NonFiniteLossError\n"
              "def diverge(*args):\n"
              "    raise NonFiniteLossError('non-finite loss nan at stage 1; train in a new "
              "--workdir')\n"
              "pipeline.run = diverge\nrun()\n")
    done = subprocess.run([sys.executable, "-c", script, f"--workdir={tmp_path / 'run'}",
                           f"--runtime.cache_dir={tmp_path / 'cache'}", *TINY_TRAIN_FLAGS],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.rstrip().endswith(
        "non-finite loss nan at stage 1; train in a new --workdir"), done.stderr[-500:]


@pytest.mark.parametrize("name", configs.PRESETS)
def test_each_preset_says_how_to_run_it_how_long_and_what_it_reaches(name):
    module = importlib.import_module(f"ofrnn_tf.configs.{name}")
    doc = module.__doc__
    assert re.search(r"^Command", doc, re.M) and "ofrnn-train" in doc or "main.sh" in doc
    assert re.search(r"^Run time on 2 CPU cores:", doc, re.M), name
    assert re.search(r"^Expected", doc, re.M), name
    config = configs.get_config(name)
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    if name != "benchmark" and "--config=" in doc:
        assert f"--config={name}" in doc


def test_scene_choices_are_the_generators_tables():
    assert SCENES == ("none", *SCENE_TABLES)


def test_configs_written_before_head_kernel_size_load_with_the_kernel_they_had():
    assert ExperimentConfig().model.head_kernel_size == 3  # the main job's head
    saved = ExperimentConfig().to_dict()
    del saved["model"]["head_kernel_size"]
    assert ExperimentConfig.from_dict(saved).model.head_kernel_size == 1


def test_only_resumable_settings_may_change_in_a_run_folder():
    base = ExperimentConfig().replace(data={"dataset": "manifest", "data_dir": "/data"})
    resumable = base.replace(stage2={"epochs": 30}, runtime={"cache_dir": "/elsewhere"},
                             decoding={"beam_size": 5}, data={"data_dir": "/moved"})
    assert identity_differences(base, resumable) == []
    changed = base.replace(model={"lstm_units": 64}, data={"val_fraction": 0.1, "seed": 1})
    assert identity_differences(base, changed) == [  # a manifest has no benchmark seed
        "data.val_fraction: 0.05 in the run folder vs 0.1 now",
        "model.lstm_units: 256 in the run folder vs 64 now"]
    # A COCO run trained on auto may name the release it read: other data are refused by
    # their content (the feature fingerprint), not by the setting.
    coco = base.replace(data={"dataset": "coco"})
    assert identity_differences(coco, coco.replace(data={"coco_release": "2014"})) == []
    for name, field, _ in fields(base):
        section = name.split(".")[0]
        if section == "runtime":
            assert field.metadata["resumable"], name


@pytest.mark.slow
def test_print_config_shows_the_resolved_settings():
    done = subprocess.run([sys.executable, "train.py", "--config=benchmark_scenes",
                           "--workdir=/nonexistent/run", "--model.lstm_units=64",
                           "--print_config"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "--data.scenes=outfits" in lines and "--model.lstm_units=64" in lines
    assert "--model.label_context_units=256" in lines and "--label_context.epochs=40" in lines
    assert "--model.label_context_training=joint" in lines
    assert len([ln for ln in lines if ln.startswith("--")]) == len(list(fields(ExperimentConfig())))


@pytest.mark.slow  # starts several commands
def test_print_config_refuses_what_the_run_folder_would(tmp_path):
    from ofrnn_tf.run_dir import RunDir, RunFacts

    facts = RunFacts(label_names=("a", "b"), max_steps=2, label_order=None, small_area=None,
                     features_name="unused", features_fingerprint="0" * 64,
                     feature_shape=(4, 4, 8), image_size=32, feature_layer="maps")
    RunDir(str(tmp_path)).save(ExperimentConfig(), facts)
    command = [sys.executable, "train.py", f"--workdir={tmp_path}", "--print_config"]
    done = subprocess.run(command + ["--stage2.epochs=30"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--stage2.epochs=30" in done.stdout.splitlines(), done.stderr
    done = subprocess.run(command + ["--model.lstm_units=64"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "--model.lstm_units=64" not in done.stdout
    assert "refusing to resume with different settings (model.lstm_units: 256 in the run " \
           "folder vs 64 now)" in done.stderr, done.stderr[-2000:]
    done = subprocess.run(command + ["--mode=eval", "--decoding.min_labels=2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "decoding.min_labels: 1 in the run folder vs 2 now" in (
        done.stderr), done.stderr[-2000:]


def test_a_folder_flag_nothing_can_be_made_under_is_refused_naming_why(tmp_path):
    from ofrnn_tf.cli import refuse_unwritable_folder

    (tmp_path / "afile").write_text("")
    (tmp_path / "dead").symlink_to(tmp_path / "no" / "volume")
    with pytest.raises(app.UsageError, match=r"--export_dir=.*afile/exp: .*afile is a file, "
                                             r"not a folder"):
        refuse_unwritable_folder("export_dir", str(tmp_path / "afile" / "exp"))
    with pytest.raises(app.UsageError, match=r"dead is a symbolic link to .*no/volume, which "
                                             r"does not exist"):
        refuse_unwritable_folder("export_dir", str(tmp_path / "dead" / "exp"))
    refuse_unwritable_folder("export_dir", str(tmp_path / "new" / "exp"))  # made when written
    assert not (tmp_path / "new").exists()


def test_a_folder_flag_that_cannot_be_written_says_why(tmp_path, monkeypatch):
    # Played (root writes anywhere): a read-only mount, a folder of another user's, and a
    # home that does not exist, where the folder given is not the one refused.
    import ofrnn_tf.cli as cli

    base = tmp_path / "base"
    base.mkdir()
    monkeypatch.setattr(cli.os, "access", lambda path, mode: path != str(tmp_path))
    monkeypatch.setattr(cli.os, "statvfs", lambda path: os.statvfs_result(
        (0,) * 8 + (os.ST_RDONLY if path == str(tmp_path) else 0, 255)))
    with pytest.raises(app.UsageError) as refused:
        cli.refuse_unwritable_folder("export_dir", str(tmp_path))
    assert str(refused.value) == (f"--export_dir={tmp_path} cannot be written (Read-only "
                                  f"file system)")
    monkeypatch.setattr(cli.os, "statvfs", lambda path: os.statvfs_result((0,) * 10))
    with pytest.raises(app.UsageError) as refused:
        cli.refuse_unwritable_folder("export_dir", str(tmp_path / "home" / "exports" / "x"))
    assert str(refused.value) == (
        f"--export_dir={tmp_path / 'home' / 'exports' / 'x'}: {tmp_path} cannot be written "
        f"(Permission denied) to make {tmp_path / 'home'}, which does not exist")


def test_a_failed_write_under_the_cache_is_said_in_one_line_and_only_there(tmp_path):
    import errno

    from ofrnn_tf.cli import cache_write_refusal

    cache = tmp_path / "cache"
    under = OSError(errno.EROFS, "Read-only file system", str(cache / "features" / "x"))
    assert str(cache_write_refusal(under, str(cache))) == (
        f"--runtime.cache_dir={cache}: {cache / 'features' / 'x'} cannot be written "
        f"(Read-only file system); give a writable folder")
    elsewhere = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "cached"))
    full = OSError(errno.ENOSPC, "No space left on device", str(cache / "x"))  # runner's
    assert cache_write_refusal(elsewhere, str(cache)) is None
    assert cache_write_refusal(full, str(cache)) is None
