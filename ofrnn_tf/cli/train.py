"""ofrnn-train: trains (or resumes) and evaluates Order-Free RNN with Visual Attention.

With only ``--workdir`` (required) it runs the main job, the embedded benchmark end to
end: canvases, EfficientNet-Lite0 features, stage 1 (M_map), stage 2 (attention +
LSTM), τ on validation, test metrics, attention pictures:

    ofrnn-train --workdir=runs/order_free

``--config=NAME`` picks a preset of ofrnn_tf/configs (``paper``, ``coco``, ...);
``--section.field=value`` flags change single settings (``--helpfull`` lists them all
with the main job's defaults; ``--print_config`` shows what a command would run).
Rerunning on an existing run folder resumes it with its saved settings; flags may
change only the resumable ones (paths, epochs and patience, the feature cache's sharding,
shuffling, decoding, the ``--runtime.*`` settings), and any other is refused before any
work, as are epochs of a stage the run has finished (its last stage
may go on). ``--mode=eval`` recalibrates τ and recomputes the test metrics of a finished
run, changing none of its settings: at another ``--decoding.beam_size=K`` it adds τ for
K to calibration.json and writes ``metrics_test_kK.json``, leaving the run's beam width
and ``metrics_test.json`` as they were; other decoding settings are refused there.
"""

import os

from absl import app, flags, logging

from ofrnn_tf.cli import (input_errors, refusal, refuse_glob_characters,
                          refuse_missing_run_folder, refusing_cache_writes, runner,
                          usable_config)
from ofrnn_tf.config.experiment import ExperimentConfig, identity_differences
from ofrnn_tf.config.flags import (
    CONFIG_FLAG, config_from_flags, define_config_flags, describe, with_flags)

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when it runs, so importing this module defines none)."""
    flags.DEFINE_string("workdir", None,
                        "Run folder (required): config, checkpoints, TensorBoard, metrics.")
    flags.DEFINE_enum("mode", "train", ["train", "eval"], "train: train (or resume), calibrate τ, "
                      "evaluate; eval: recalibrate τ and evaluate a finished run.")
    flags.DEFINE_bool("print_config", False, "Print the settings this command would use and exit.")
    define_config_flags()


def resolve_config(workdir: str) -> ExperimentConfig:
    """The flags' config for a new run folder; for an existing one its saved config with
    the flags given on the command line (a changed ``--config`` must agree with it)."""
    from ofrnn_tf.run_dir import RunDir

    run_dir = RunDir(workdir)
    if not run_dir.exists():
        return usable_config(config_from_flags)
    saved, _ = run_dir.load()
    if FLAGS[CONFIG_FLAG].present:
        diffs = identity_differences(saved, usable_config(config_from_flags))
        if diffs:
            raise app.UsageError(f"{workdir} was trained with other settings than "
                                 f"--config={FLAGS[CONFIG_FLAG].value} and the flags given: "
                                 f"{'; '.join(diffs)}. Leave out --config to go on with the "
                                 f"run's own settings, or use a new --workdir")
    return usable_config(lambda: with_flags(saved))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    refuse_glob_characters("workdir", FLAGS.workdir)
    if FLAGS.mode == "eval":  # with --print_config too: it shows what the command would do
        refuse_missing_run_folder(FLAGS.workdir)
    elif _new_folder(FLAGS.workdir):  # a new run: its flags are its settings,
        usable_config(config_from_flags)  # checked before TensorFlow loads
    if not FLAGS["verbosity"].present:  # one given (absl's flag) is the user's
        logging.set_verbosity(logging.WARNING)  # TF's INFO line at each checkpoint: not here
    from ofrnn_tf.run_dir import (  # TensorFlow is imported here, not for --help
        IncompatibleRunError, RunDir, RunFolderNotWritableError, RunInUseError)
    try:
        config = resolve_config(FLAGS.workdir)
    except input_errors() as error:  # a run.json damaged, or that this user may not read
        raise refusal(error) from None

    if FLAGS.print_config:
        run_dir = RunDir(FLAGS.workdir)
        if FLAGS.mode == "eval":  # an existing folder that holds no run, as eval says
            try:
                run_dir.require()
            except (FileNotFoundError, *input_errors()) as error:
                raise refusal(error) from None
        if run_dir.exists():  # settings the run would refuse are refused here
            from ofrnn_tf.training.run_state import check_finished_stages
            try:
                run_dir.check_config(config)
                check_finished_stages(run_dir, config, FLAGS.mode)
            except (IncompatibleRunError, *input_errors()) as error:  # checkpoints too
                raise refusal(error) from None
        try:
            _check_buildable(config)
        except input_errors() as error:
            raise refusal(error) from None
        print(describe(config))
        return 0
    from ofrnn_tf import pipeline
    from ofrnn_tf.training.run_state import UnfinishedRunError
    from ofrnn_tf.training.trainer import NonFiniteLossError

    refused = input_errors() + (IncompatibleRunError, UnfinishedRunError, RunInUseError,
                                RunFolderNotWritableError, NonFiniteLossError)
    if FLAGS.mode == "eval":
        refused += (FileNotFoundError,)  # not a run folder
    try:
        _check_buildable(config)  # before the run folder is made or taken
        with refusing_cache_writes(config.runtime.cache_dir):
            pipeline.run(config, FLAGS.workdir, FLAGS.mode)  # holds the run folder
    except refused as error:
        raise refusal(error) from None  # the command, not the code, is at fault
    return 0


def _new_folder(path: str) -> bool:
    """Whether `path` is not there, or an empty folder (``mkdir -p`` first): a new run.
    A folder this user may not look into is not taken for one (`RunDir` says so)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        return os.path.isdir(path) and not os.listdir(path)
    except OSError:
        return False


def _check_buildable(config: ExperimentConfig) -> None:
    """Refuses in train mode what the run could not build: a new run's backbone or
    layer (`check_backbone`), a multi-worker cluster without a usable TF_CONFIG (which
    also says which worker holds the run folder)."""
    from ofrnn_tf.run_dir import RunDir

    if FLAGS.mode != "train":
        return
    if not RunDir(FLAGS.workdir).exists():
        from ofrnn_tf.features.backbones import check_backbone
        check_backbone(config.features.backbone, config.features.layer)
    if config.runtime.strategy == "multi_worker":
        from ofrnn_tf.training.distribute import cluster_config
        cluster_config()


run = runner(define_flags, main,
             on_interrupt="rerun the same command: it keeps what is finished (the data "
                          "built, the features extracted, the last checkpoint) and goes on "
                          "from there")

if __name__ == "__main__":
    run()
