"""The flags of the scripts that read (and train) the paper table's runs: `--cache_dir`
reaches every reader's features, a missing run under `--root` is a usage error that says
how to train it, relative paths mean the same folders to `paper_table.py` and the
`train.py` it starts, `--runs` filters the table, and item_recognition's tables and help
are those of the other readers.

`paper_table.py` runs as a child process: its `--runs` and `label_context.py`'s are two
flags of one name, which one process cannot hold."""

from __future__ import annotations

import datetime
import inspect
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest
from absl import app, flags

from benchmarks import _table_runs as table_runs
from benchmarks import (count_oracle, decision_rules, item_oracle, item_reader,
                        item_recognition, label_context)
from benchmarks import _results
from benchmarks._results import mean_std
from conftest import ROOT, run_checked
from ofrnn_tf import pipeline
from ofrnn_tf.data import run_data
from ofrnn_tf.features import cache, run_cache, shard_meta
from ofrnn_tf.run_dir import RunDir

FLAGS = flags.FLAGS


def write_finished_run(path, args=None) -> None:
    """A finished-looking paper-table run at `path` (run.json, test metrics, training
    time): what paper_table.py reads of a run, trained as ``train.py`` `args` would
    train it (by default: the main job at tiny sizes). Self-contained: `_DRIVER` holds its
    source too."""
    from benchmarks._table_runs import train_config
    from ofrnn_tf.config.experiment import ExperimentConfig
    from ofrnn_tf.run_dir import RunDir, RunFacts

    facts = RunFacts(label_names=("a", "b", "c"), max_steps=2, label_order=None,
                     small_area=None, features_name="fake_features",
                     features_fingerprint="f" * 64, feature_shape=(4, 4, 8), image_size=32,
                     feature_layer="maps")
    run_dir = RunDir(str(path))
    config = ExperimentConfig().replace(data={"num_train": 64, "num_val": 32, "num_test": 16})
    run_dir.save(config if args is None else train_config(args), facts)
    run_dir.save_metrics("test", {**dict.fromkeys(("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1",
                                                   "mAP", "AP-small", "AP-large"), 50.0),
                                  "tau": 0.35, "score_mix": 1.0})
    run_dir.save_timing("train", {"training": 1.0})


# Runs paper_table.py as `__main__` with `train.py` replaced by a fake that writes a
# finished run where the real one would: at --workdir taken against the child's cwd.
_DRIVER = inspect.getsource(write_finished_run) + textwrap.dedent('''
    import os, runpy, subprocess, sys

    class FakeTrain:
        def __init__(self, command, **kwargs):
            flags = dict(a[2:].split("=", 1) for a in command[2:] if "=" in a)
            for name in ("workdir", "runtime.cache_dir"):
                if not os.path.isabs(flags[name]):  # the real train.py would miss the folder
                    sys.exit(f"train.py got a relative --{name}={flags[name]} "
                             f"(cwd {kwargs['cwd']})")
            write_finished_run(os.path.join(kwargs["cwd"], flags["workdir"]), command[2:])
            print("trained", flags["workdir"], "cache", flags["runtime.cache_dir"], "with",
                  " ".join(command[3:]), file=sys.stderr)

        def wait(self, timeout=None):
            return 0

    def fake_train(command, *args, popen=subprocess.Popen, **kwargs):
        if command[1:2] != ["train.py"]:
            return popen(command, *args, **kwargs)
        return FakeTrain(command, **kwargs)

    subprocess.Popen = fake_train
    sys.argv = [sys.argv[1]] + sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
''')


@pytest.fixture
def parse():
    """`parse(*args)` parses the benchmark flags from `args`; all back to their defaults
    (and unparsed) after the test."""

    def parse_args(*args: str) -> None:
        FLAGS.unparse_flags()
        FLAGS(["benchmark", *args])

    yield parse_args
    FLAGS.unparse_flags()


def fake_feature_cache(cache_dir: Path, run_dir: RunDir) -> Path:
    """The feature cache `run_dir` was trained on, under `cache_dir`: its meta.json only."""
    _, facts = run_dir.load()
    directory = Path(cache.features_dir(str(cache_dir), facts.features_name))
    directory.mkdir(parents=True)
    shard_meta.write_meta(str(directory), {cache.FINGERPRINT_KEY: facts.features_fingerprint})
    return directory


# Tiny sizes for every row of a paper table.
TINY_EXTRA = "--extra=--data.num_train=64,--data.num_val=32,--data.num_test=16"


def paper_table(cwd: Path, *args: str, fail: bool = False):
    """benchmarks/paper_table.py run from `cwd` with `args` (never appending), its
    `train.py` the fake of `_DRIVER`."""
    driver = cwd / "paper_table_driver.py"
    driver.write_text(_DRIVER)
    return run_checked([sys.executable, str(driver), str(ROOT / "benchmarks" / "paper_table.py"),
                        *args, "--noappend"], cwd=cwd, timeout=300, expect_failure=fail)


# -- a missing run under --root ----------------------------------------------------------
@pytest.mark.parametrize("rows_of", [decision_rules.rows_of, count_oracle.rows_of,
                                     item_oracle.rows_of, label_context.rows_of,
                                     item_reader.rows_of, item_recognition.rows_of],
                         ids=lambda f: f.__module__.split(".")[-1])
def test_a_reader_on_a_missing_root_says_which_run_to_train(parse, tmp_path, rows_of):
    root = tmp_path / "nowhere"
    parse(f"--root={root}")
    with pytest.raises(app.UsageError) as error:
        rows_of("independent", 0)
    message = str(error.value)
    assert f"--root={root}" in message
    assert str(root / "independent" / "seed0" / "spatial_head") in message
    assert "paper_table.py" in message and "--runs=spatial_head" in message


def test_an_unfinished_run_names_the_run_that_runs_must_include(parse, tmp_path):
    # decision_rules reads spatial_head_context, which `--runs=spatial_head,main_job` skips.
    folder = tmp_path / "independent" / "seed1" / "spatial_head_context"
    write_finished_run(folder)
    Path(RunDir(str(folder)).metrics_file("test")).unlink()  # trained, never tested
    parse(f"--root={tmp_path}")
    with pytest.raises(app.UsageError, match="not finished") as error:
        table_runs.table_run("independent", 1, "spatial_head_context")
    assert str(folder) in str(error.value)
    assert "--runs=spatial_head_context" in str(error.value)


# -- --cache_dir -------------------------------------------------------------------------
def test_a_loaded_run_reads_its_features_under_cache_dir(parse, tmp_path, make_fake_run):
    run_dir = RunDir(str(make_fake_run(tmp_path / "run")))
    features = fake_feature_cache(tmp_path / "elsewhere", run_dir)
    config, facts = run_dir.load()
    assert config.runtime.cache_dir == "data"  # run.json keeps no runtime settings

    parse(f"--cache_dir={tmp_path / 'elsewhere'}")
    config, _ = table_runs.run_config(run_dir)
    assert config.runtime.cache_dir == str(tmp_path / "elsewhere")
    assert run_cache.locate_features(config, facts) == str(features)
    model, config, _ = table_runs.load_run(run_dir)
    assert config.runtime.cache_dir == str(tmp_path / "elsewhere")
    assert model.uses_decoder


def test_a_wrong_cache_dir_is_a_usage_error_naming_the_flag(parse, tmp_path, make_fake_run,
                                                             monkeypatch):
    run_dir = RunDir(str(make_fake_run(tmp_path / "run")))
    monkeypatch.chdir(tmp_path)  # no ./data here
    parse()
    with pytest.raises(app.UsageError, match=r"--cache_dir=data: no feature cache"):
        table_runs.run_config(run_dir)


class _Reached(Exception):
    """Raised by the stand-ins of the pipeline's readers, with the folder they got."""


@pytest.mark.parametrize("read", [
    lambda run_dir: table_runs.decoded_split(run_dir),
    lambda run_dir: label_context.map_logits(run_dir),
    lambda run_dir: item_reader.head_run("independent", 0)],
    ids=["decoded_split", "label_context", "item_reader"])
def test_every_reader_takes_the_runs_data_from_cache_dir(parse, tmp_path, monkeypatch, read):
    root, cache_dir = tmp_path / "root", tmp_path / "cache"
    run_dir = RunDir(str(root / "independent" / "seed0" / "spatial_head"))
    write_finished_run(run_dir.path)
    fake_feature_cache(cache_dir, run_dir)
    monkeypatch.chdir(tmp_path)  # no ./data here

    def reached(*args, **kwargs):
        raise _Reached(args[0] if isinstance(args[0], str) else args[0].runtime.cache_dir)

    monkeypatch.setattr(RunDir, "load_model", lambda self: (None, *self.load()))
    monkeypatch.setattr(pipeline, "eval_dataset", reached)
    monkeypatch.setattr(run_data, "load_data", reached)
    parse(f"--root={root}", f"--cache_dir={cache_dir}")
    with pytest.raises(_Reached) as found:
        read(run_dir)
    assert str(found.value).startswith(str(cache_dir))


# -- relative paths ----------------------------------------------------------------------
def test_make_absolute_resolves_against_the_working_directory(parse, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parse("--root=runs/t", "--cache_dir=../cache")
    table_runs.make_absolute("root", "cache_dir")
    assert FLAGS.root == str(tmp_path / "runs" / "t")
    assert FLAGS.cache_dir == str(tmp_path.parent / "cache")


@pytest.mark.slow
def test_paper_table_trains_and_reads_the_same_folders_from_relative_paths(tmp_path):
    # A finished run --runs leaves out: neither trained nor tabulated.
    write_finished_run(tmp_path / "rel" / "independent" / "seed0" / "no_attention")
    done = paper_table(tmp_path, "--root=rel", "--cache_dir=cache", "--seeds=0",
                       "--modes=independent", "--runs=spatial_head,main_job", TINY_EXTRA)
    for name in ("spatial_head", "main_job"):
        assert f"trained {tmp_path / 'rel' / 'independent' / 'seed0' / name}" in done.stderr
    assert f"cache {tmp_path / 'cache'}" in done.stderr
    assert "| spatial head (1 seeds) |" in done.stdout
    assert "| order_free (main job) (1 seeds) |" in done.stdout
    # Each seed's table shows what the run chose on validation.
    assert "| AP-large | train s | τ | v_prob weight |" in done.stdout
    assert "| 50.0 | 1 | 0.35 | 1.00 |" in done.stdout, done.stdout
    assert "no_attention" not in done.stdout
    # What the runs' run.json say, not the full-size benchmark's sizes.
    assert "(64 / 32 / 16 canvases; efficientnet_lite0 stage5 maps, layer maps, 4×4×8)" \
        in done.stdout
    assert "10,000" not in done.stdout


@pytest.mark.slow
def test_paper_tables_extra_goes_to_the_rows_that_read_it_and_a_run_trained_otherwise_is_refused(
        tmp_path):
    # Stage-2 flags for a trial of the whole table: the rows of M_map alone read none.
    done = paper_table(tmp_path, f"--root={tmp_path}", "--seeds=0", "--modes=independent",
                       "--runs=spatial_head,main_job", TINY_EXTRA + ",--stage2.epochs=1")
    trained = {line.split()[1].rsplit("/", 1)[1]: line for line in done.stderr.splitlines()
               if line.startswith("trained ")}
    assert "--stage2.epochs=1" in trained["main_job"], trained
    assert "--stage2.epochs" not in trained["spatial_head"] and "--data.num_train=64" in \
        trained["spatial_head"], trained
    # A finished run of another budget than the command gives does not stand for it.
    done = paper_table(tmp_path, f"--root={tmp_path}", "--seeds=0", "--modes=independent",
                       "--runs=main_job", TINY_EXTRA + ",--stage2.epochs=3", fail=True)
    assert (f"paper_table.py: {tmp_path / 'independent' / 'seed0' / 'main_job'} was trained "
            f"with other settings than this command gives (--stage2.epochs=1 in the run, 3 by "
            f"this command)") in done.stderr, done.stderr[-2000:]
    assert f"\ntrained {tmp_path}" not in done.stderr and "Traceback" not in done.stderr
    # A row command train.py would refuse is refused before any row trains.
    done = paper_table(tmp_path, f"--root={tmp_path / 'new'}", "--seeds=0",
                       "--modes=independent", "--extra=--stage2.epochs=0", fail=True)
    assert "--stage2.epochs" in done.stderr and f"\ntrained {tmp_path}" not in done.stderr


def test_a_finished_run_is_compared_with_what_its_command_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["decoder_ablations.py"])
    spatial = ["--model.variant=baseline", "--model.head_kernel_size=3", "--model.head_units=256",
               "--stage1.epochs=20", "--stage1.patience=0", "--data.seed=0", "--train.seed=0"]
    write_finished_run(tmp_path / "spatial_head", spatial)
    run_dir = table_runs.RunDir(str(tmp_path / "spatial_head"))
    assert table_runs.finished(run_dir, ["--workdir=x", "--runtime.cache_dir=/elsewhere",
                                         *spatial], "unused")
    assert not table_runs.finished(table_runs.RunDir(str(tmp_path / "none")), spatial, "r")
    # The ablations' variant: the main job's head (128 units) on the same budget. Whole,
    # it is another run; reused for its budget and data, the paper table's head stands.
    variant = ["--data.seed=0", "--train.seed=0", "--stage1.epochs=20", "--stage1.patience=0",
               "--model.variant=baseline"]
    with pytest.raises(SystemExit, match=r"decoder_ablations.py: .*spatial_head was trained with "
                                         r"other settings than this command gives "
                                         r"\(--model.head_units=256 in the run, 128 by this "
                                         r"command\): the remedy"):
        table_runs.finished(run_dir, variant, "the remedy")
    budget = ("data", "stage1", "stage2", "label_context", "train", "decoding")
    assert table_runs.finished(run_dir, variant, "r", sections=budget)
    # A setting the command leaves at its default counts too: the budget --extra omits.
    with pytest.raises(SystemExit, match=r"--stage1.epochs=20 in the run, \d+ by this command"):
        table_runs.finished(run_dir, variant[:2] + variant[4:], "r", sections=budget)
    # So does a preset: the paper's decoder is not the main job's.
    with pytest.raises(SystemExit, match=r"--model.head=spatial in the run, mean_linear"):
        table_runs.finished(run_dir, ["--config=paper", "--model.variant=baseline"], "r")


def test_a_results_file_is_refused_before_the_work_unless_a_file_in_a_folder(parse, tmp_path):
    for bad in ("", str(tmp_path), str(tmp_path / "no" / "x.md"), f"{tmp_path / 'new'}/"):
        with pytest.raises(flags.IllegalFlagValueError, match="give a file"):
            parse(f"--results_file={bad}")
    parse(f"--results_file={tmp_path / 'x.md'}")


def test_a_checkout_that_is_not_a_tree_of_the_project_is_refused(tmp_path):
    done = run_checked([sys.executable, str(ROOT / "benchmarks" / "bench_decoding_steps.py"),
                        f"--checkouts=.,{tmp_path}", "--noappend"], cwd=ROOT,
                       expect_failure=True)
    assert f"{tmp_path} holds no ofrnn_tf/__init__.py: not a tree of this project" in done.stderr


def test_the_calibration_benchmark_times_both_searches_and_refuses_a_bad_size():
    script = str(ROOT / "benchmarks" / "bench_calibration.py")
    done = run_checked([sys.executable, script, "--sizes=300x6x3", "--repeats=1",
                        "--noappend"], cwd=ROOT)
    # Printed as measured, then in the table.
    row, again = [line for line in done.stdout.splitlines() if line.startswith("| 300 × 6 × 3 |")]
    assert row == again
    cells = [cell.strip() for cell in row.split("|")]
    tau, mix, total = (float(cell) for cell in cells[3:6])
    assert min(tau, mix) >= 0 and total == pytest.approx(tau + mix, abs=0.011)
    assert re.fullmatch(r"[0-9a-f]{10}, [0-9a-f]{10}", cells[6])
    refused = run_checked([sys.executable, script, "--sizes=300x6x7", "--noappend"],
                          cwd=ROOT, expect_failure=True)
    assert "--sizes takes comma-separated NxCxT (whole numbers, T at most C)" in refused.stderr


def test_a_ctrl_c_under_a_child_run_ends_the_script_without_a_traceback(monkeypatch):
    class Interrupted:  # the Ctrl-C lands in the first wait; the child then stops
        waits = 0

        def __init__(self, command, **kwargs):
            pass

        def wait(self, timeout=None):
            Interrupted.waits += 1
            if Interrupted.waits == 1:
                raise KeyboardInterrupt
            return 130

    monkeypatch.setattr(table_runs.subprocess, "Popen", Interrupted)
    with pytest.raises(SystemExit) as stopped:
        table_runs.run_child(["python", "train.py"], cwd=".")
    assert stopped.value.code == 130
    assert Interrupted.waits == 2  # waited for the child to stop


# -- paper_table.py without finished runs ------------------------------------------------
@pytest.mark.slow
def test_paper_table_publishes_no_mode_when_one_has_no_finished_runs(tmp_path):
    write_finished_run(tmp_path / "independent" / "seed0" / "spatial_head", [
        "--model.variant=baseline", "--model.head_kernel_size=3", "--model.head_units=256",
        "--stage1.epochs=20", "--stage1.patience=0", "--data.seed=0", "--train.seed=0",
        "--data.scenes=none"])
    done = paper_table(tmp_path, f"--root={tmp_path}", "--seeds=0",
                       "--modes=independent,scenes", "--notrain", fail=True)
    assert f"--root={tmp_path}: no finished runs under {tmp_path / 'scenes' / 'seed0'}" \
        in done.stderr
    assert "Traceback" not in done.stderr
    assert "Benchmark mode" not in done.stdout  # the independent mode's section neither


def test_a_metric_a_seed_leaves_undefined_is_left_out_of_the_tables_not_a_crash():
    # AP-small of a test split without a small object is None (it was 0.0).
    assert mean_std([None, 20.0, 30.0]) == "25.0 ± 7.1" and mean_std([None]) == "n/a"
    row = {"C-F1": 50.0, "O-F1": 50.0, "mAP": 50.0, "AP-small": None}
    per_seed = {0: {"a": dict(row), "b": dict(row, **{"C-F1": 40.0})},
                1: {"a": dict(row), "b": dict(row, **{"C-F1": 45.0})}}
    lines = "\n".join(table_runs.mode_tables(per_seed, ("C-F1", "AP-small"), over="b",
                                             over_columns=("C-F1", "AP-small")))
    assert "n/a" in lines and "7.5 ± 3.5" in lines


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "UTC+14"])  # POSIX: 14 h behind UTC
def test_a_results_section_is_dated_in_utc_whatever_the_machines_zone(tmp_path, monkeypatch,
                                                                      zone):
    utc = datetime.timezone.utc
    monkeypatch.setattr(_results, "machine_info", lambda: "a machine")
    try:
        with monkeypatch.context() as patched:
            patched.setenv("TZ", zone)
            time.tzset()
            before = datetime.datetime.now(utc).replace(second=0, microsecond=0)
            path = _results.append_result("Trial", "python benchmarks/x.py", ["| a |"],
                                          path=tmp_path / "results.md")
            after = datetime.datetime.now(utc)
    finally:
        time.tzset()  # the zone of the environment restored
    stamp = path.read_text().split("## Trial\n\n", 1)[1].split(" — ", 1)[0]
    dated = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M UTC").replace(tzinfo=utc)
    assert before <= dated <= after, stamp


@pytest.mark.parametrize("usable, visible, quota, said", [
    (2, 2, None, "2 cores"),
    (1, 1, None, "1 core"),
    (2, 2, 3.0, "2 cores, CPU quota 3"),
    (1, 64, 0.5, "1 core usable of 64 visible, CPU quota 0.5")])
def test_a_results_section_counts_the_cores_the_benchmark_could_use(monkeypatch, usable,
                                                                    visible, quota, said):
    # A throughput measured on half a CPU's time must not read as one of the host's cores.
    monkeypatch.setattr(_results, "usable_cpus", lambda: usable)
    monkeypatch.setattr(_results, "visible_cpus", lambda: visible)
    monkeypatch.setattr(_results, "cpu_quota", lambda: quota)
    assert _results.machine_info().startswith(f"CPU {_results.cpu_model()}, {said}; ")
    monkeypatch.setattr(_results.os, "cpu_count", lambda: 1)
    assert _results.host_load(4.3, 5) == (
        "load average (1 min, the whole host's) 4.3 before, 5.0 after, over its 1 core")


# -- item_recognition --------------------------------------------------------------------
def test_item_recognition_tables_use_the_sample_std(monkeypatch):
    scores = [{reader: (accuracy, {"Coat": accuracy + 1.0})
               for reader in item_recognition.READERS} for accuracy in (10.0, 20.0, 30.0)]
    monkeypatch.setitem(item_recognition.ITEM_SCORES, "independent", scores)
    row = item_recognition.item_lines("independent", [0, 1, 2])[4]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == mean_std([10.0, 20.0, 30.0]) == "20.0 ± 10.0"  # not 8.2 (ddof 0)
    assert cells[item_recognition.LOOK_ALIKES.index("Coat") + 2] == "21.0 ± 10.0"
    assert cells[2] == "n/a"  # no seed had a T-shirt/top among its test items

    monkeypatch.setitem(item_recognition.ITEM_SCORES, "independent", scores[:1])
    row = item_recognition.item_lines("independent", [0])[4]
    assert "| 10.0 |" in row and "±" not in row  # one seed: no spread


def test_item_recognition_help_lists_its_flags():
    names = {flag.name for flag in FLAGS.get_key_flags_for_module(item_recognition)}
    assert {"root", "seeds", "modes", "append", "cache_dir", "margin",
            "item_epochs"} <= names
