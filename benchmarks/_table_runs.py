"""What the scripts that read the paper table's runs share: their flags, a run under
`--root` loaded with its features under `--cache_dir`, a run's test (or validation) split
decoded as its test metrics were, and their mean ± std tables."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from typing import Callable, Mapping, Sequence

import numpy as np
from absl import app, flags

from benchmarks._results import (
    check_choices, check_int_list, difference, mean_std, one_decimal, publish)

from ofrnn_tf import pipeline
from ofrnn_tf.features import run_cache
from ofrnn_tf.cli import interrupts
from ofrnn_tf.config import flags as config_flags
from ofrnn_tf.config.experiment import ExperimentConfig, fields
from ofrnn_tf.decoding.calibration import decode_all_steps, predictions_at
from ofrnn_tf.features.cache import FeatureCacheMismatchError
from ofrnn_tf.metrics import format_table
from ofrnn_tf.modeling.model import OrderFreeRNN
from ofrnn_tf.run_dir import RunDir, RunFacts

FLAGS = flags.FLAGS


def define_flags() -> None:
    """`--root` (the paper table's runs, ROOT/<mode>/seed<k>/<row>), `--seeds`, `--modes`,
    `--append` and `--cache_dir`; once per process, however many of the scripts are
    imported."""
    if "root" not in FLAGS:
        flags.DEFINE_string("root", "runs/table",
                            "The paper table's runs: ROOT/<mode>/seed<k>/<row>.")
        flags.DEFINE_list("seeds", ["0", "1", "2"], "Data (and weight) seeds.")
        flags.DEFINE_list("modes", ["independent", "scenes"], "Benchmark modes.")
        flags.DEFINE_bool("append", True, "Append the table to benchmarks/RESULTS.md.")
        check_int_list("seeds", lower_bound=0)
        check_choices("modes", ("independent", "scenes"))
    define_cache_dir()


def define_cache_dir() -> None:
    """`--cache_dir`, the runs' canvases and feature cache, once per process (the scripts
    with a `--root` of their own define only this one)."""
    if "cache_dir" not in FLAGS:
        flags.DEFINE_string("cache_dir", "data",
                            "The canvases and feature cache the runs were trained with "
                            "(train.py's --runtime.cache_dir), where they are read from and "
                            "where the runs a script trains write theirs.")


def make_absolute(*names: str) -> None:
    """Turns the path flags `names` (those set) absolute against this process's working
    directory, which the `train.py` children a script starts from the repository root do
    not share."""
    for name in names:
        if FLAGS[name].value is not None:
            FLAGS[name].value = os.path.abspath(FLAGS[name].value)


def run_child(command: Sequence[str], cwd) -> None:
    """Runs `command` (a ``train.py`` the script starts), shown first; when it fails, ends
    the script in one line under the child's own message instead of a traceback.

    Stopped by Ctrl-C or SIGTERM, the script waits for the child to stop as it does on its
    own, at the end of its step with a checkpoint and its time recorded, then ends with 130
    or 143 (`subprocess.run` would kill it a quarter of a second after the Ctrl-C). A
    terminal's Ctrl-C reaches the child too; a SIGTERM sent to the script alone is passed
    on to it, and so is every further signal, which stops the child at once."""
    print("+", shlex.join(command), file=sys.stderr, flush=True)
    child = subprocess.Popen(command, cwd=cwd)
    try:
        status = interrupts.wait_for(child)
    except KeyboardInterrupt:
        if interrupts.received() == signal.SIGTERM:
            child.send_signal(signal.SIGTERM)
        while True:
            try:
                interrupts.wait_for(child)
                break
            except KeyboardInterrupt:
                child.send_signal(interrupts.received() or signal.SIGINT)
        raise SystemExit(interrupts.ended_by()[1]) from None
    if status:
        raise SystemExit(f"{os.path.basename(sys.argv[0])}: {os.path.basename(command[1])} "
                         f"exited with status {status} (its message is above)")


def train_config(args: Sequence[str]) -> ExperimentConfig:
    """The config ``train.py`` builds from its flags `args` (those that are no setting, such
    as ``--workdir``, left out); a usage error for settings that do not go together, or
    that the run would not read."""
    given = _settings_in(args)
    values = flags.FlagValues()
    config_flags.define_config_flags(values)
    try:
        values(["train.py", *given])
        return config_flags.config_from_flags(values)
    except (flags.Error, ValueError) as error:
        raise app.UsageError(f"train.py {shlex.join(given)}: {error}") from None


def _settings_in(args: Sequence[str]) -> list[str]:
    """The flags of `args` that are settings (``--config`` among them)."""
    names = {name for name, _, _ in fields(ExperimentConfig())} | {config_flags.CONFIG_FLAG}
    return [arg for arg in args if _setting(arg) in names]


def _setting(arg: str) -> str:
    """The setting a ``--section.field=value`` flag names (``--noflag`` names ``flag``)."""
    name = arg.lstrip("-").split("=", 1)[0]
    return name[2:] if name.startswith("no") and "." in name and "=" not in arg else name


def read_by(args: Sequence[str], extra: Sequence[str]) -> list[str]:
    """The flags of `extra` that a run of `args` reads: the others (``--stage2.*`` for a
    row of M_map alone) it would refuse, so that one `--extra` serves every row."""
    unread = train_config(args).unread_settings()
    return [arg for arg in extra if _setting(arg) not in unread]


def finished(run_dir: RunDir, args: Sequence[str], remedy: str,
             sections: Sequence[str] | None = None) -> bool:
    """Whether `run_dir` holds a finished run (its test metrics). The script ends in one
    line, saying `remedy`, where the run was trained with other settings than ``train.py``
    `args` give (in `sections` only, where given: a run reused for its budget, say), which
    its numbers would otherwise stand for."""
    if not os.path.exists(run_dir.metrics_file("test")):
        return False
    trained, wanted = run_dir.load()[0].to_dict(), train_config(args).to_dict()
    differ = [f"--{section}.{key}={trained[section][key]} in the run, {value} by this command"
              for section in (sections or wanted) if section != "runtime"  # no run keeps it
              for key, value in wanted[section].items() if trained[section][key] != value]
    if differ:
        raise SystemExit(f"{os.path.basename(sys.argv[0])}: {run_dir.path} was trained with "
                         f"other settings than this command gives ({'; '.join(differ)}): "
                         f"{remedy}")
    return True


def workdir_run() -> RunDir:
    """The run folder ``--workdir`` names (the benchmarks of one run take it); a usage error
    where it names none."""
    try:
        return RunDir(FLAGS.workdir).require()
    except FileNotFoundError as error:
        raise app.UsageError(str(error)) from None


def run_path(mode: str, seed: int, name: str) -> str:
    """The folder of the paper table's run `name` of `mode` and `seed` under `--root`."""
    return os.path.join(FLAGS.root, mode, f"seed{seed}", name)


def table_run(mode: str, seed: int, name: str) -> RunDir:
    """The finished run `name` of `mode` and `seed` under `--root`; a usage error saying
    how to train it when it is missing or unfinished."""
    run_dir = RunDir(run_path(mode, seed, name))
    if not os.path.exists(run_dir.metrics_file("test")):
        state = "is not finished (no test metrics)" if run_dir.exists() else "does not exist"
        raise app.UsageError(
            f"--root={FLAGS.root}: the run folder {run_dir.path} {state}. Train the `{name}` "
            f"run with python benchmarks/paper_table.py --root={FLAGS.root} --modes={mode} "
            f"--seeds={seed} --cache_dir={FLAGS.cache_dir} --runs={name} (with --runs, the "
            f"paper table trains only the runs it names), or point --root at the paper "
            f"table's runs.")
    return run_dir


def run_config(run_dir: RunDir) -> tuple[ExperimentConfig, RunFacts]:
    """A run's config, its `runtime.cache_dir` the `--cache_dir` flag's (run.json keeps
    no runtime settings, so a loaded config has the default, not the cache the run was
    trained with), and its facts; a usage error naming `--cache_dir` when the run's
    feature cache is not there (before anything reads or builds its data)."""
    config, facts = run_dir.load()
    config = config.replace(runtime={"cache_dir": FLAGS.cache_dir})
    try:
        run_cache.locate_features(config, facts)
    except FileNotFoundError:
        raise app.UsageError(
            f"--cache_dir={FLAGS.cache_dir}: no feature cache {facts.features_name} of the run "
            f"{run_dir.path} there; pass the cache it was trained with (train.py's "
            f"--runtime.cache_dir)") from None
    except FeatureCacheMismatchError as error:
        raise app.UsageError(f"--cache_dir={FLAGS.cache_dir}: not the cache the run "
                             f"{run_dir.path} was trained with ({error})") from None
    return config, facts


def load_run(run_dir: RunDir) -> tuple[OrderFreeRNN, ExperimentConfig, RunFacts]:
    """`(model, config, facts)` of a finished run, config and facts as `run_config`
    gives them."""
    config, facts = run_config(run_dir)
    model, _, _ = run_dir.load_model()
    return model, config, facts


def decoded_split(run_dir: RunDir, split: str = "test"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """`(y_true, y_pred at the run's τ, per-class scores, facts)` on the test split (or
    `split`), decoded and selected as the run's test metrics were (M_map's v_prob for the
    head alone, the decoder's mixed scores otherwise)."""
    model, config, facts = load_run(run_dir)
    dataset = pipeline.eval_dataset(run_cache.locate_features(config, facts), facts, split)
    decoding = config.decoding
    calibration = run_dir.calibration(decoding.beam_size)
    outputs = decode_all_steps(model, dataset, beam_size=decoding.beam_size,
                               max_steps=facts.max_steps, min_labels=decoding.min_labels,
                               progress=False)
    y_pred, scores = predictions_at(outputs, calibration["tau"], decoding.min_labels,
                                    calibration.get("score_mix", 0.0))
    return np.asarray(outputs["y_true"], np.int32), y_pred, scores, facts


def run_validation(run_dir: RunDir) -> float:
    """The validation objective of a finished run at its own τ (what chose its τ)."""
    config, _ = run_dir.load()
    calibration = run_dir.calibration(config.decoding.beam_size)
    return dict(map(tuple, calibration["grid"]))[calibration["tau"]]


def mean_std_rows(per_seed: Sequence[Mapping[str, Mapping[str, float]]],
                  columns: Sequence[str]) -> dict[str, dict[str, str]]:
    """One table from each seed's `{row: {column: value}}`: every row of the first seed's,
    in its order, with each of `columns` it has as "mean ± std" over the seeds."""
    return {row: {column: mean_std([table[row][column] for table in per_seed])
                  for column in columns if column in values}
            for row, values in per_seed[0].items()}


def mode_tables(per_seed: Mapping[int, Mapping[str, Mapping[str, float]]],
                columns: Sequence[str], over: str | None = None,
                over_columns: Sequence[str] = ("C-F1", "O-F1")) -> list[str]:
    """Markdown lines for one mode: the mean ± std table of `per_seed` (`{seed: {row:
    {column: value}}}`); with `over`, every other row's lead over that row (mean ± std
    of the per-seed differences in `over_columns`); then, for more than one seed, each
    seed's own table."""
    seeds = list(per_seed)
    tables = [per_seed[s] for s in seeds]
    lines = [format_table(mean_std_rows(tables, columns), columns=list(columns),
                          name_header="row"), ""]
    if over is not None and len(seeds) > 1:
        leads = {row: {column: mean_std([difference(t[row][column], t[over][column])
                                         for t in tables])
                       for column in over_columns}
                 for row in tables[0] if row != over}
        lines += [f"Lead over `{over}`, mean ± std of the per-seed differences:", "",
                  format_table(leads, columns=list(over_columns), name_header="row"), ""]
    for seed in seeds if len(seeds) > 1 else ():
        seed_table = {row: {column: one_decimal(values[column]) for column in columns}
                      for row, values in per_seed[seed].items()}
        lines += [f"Seed {seed}:", "", format_table(seed_table, columns=list(columns),
                                                    name_header="row"), ""]
    return lines


def publish_mode_tables(title: str, note: str,
                        rows_of: Callable[[str, int], Mapping[str, Mapping[str, float]]],
                        columns: Sequence[str]) -> None:
    """One mean ± std table of `rows_of(mode, seed)` over `--seeds` for each of `--modes`,
    after `note`, published under `title`."""
    seeds = [int(s) for s in FLAGS.seeds]
    lines = [f"{note} Mean ± std over seeds {', '.join(map(str, seeds))}.", ""]
    for mode in FLAGS.modes:
        table = mean_std_rows([rows_of(mode, seed) for seed in seeds], columns)
        lines += [f"Mode `{mode}`:", "", format_table(table, columns=list(columns),
                                                      name_header="row"), ""]
    publish(title, "\n".join(lines), FLAGS.append)
