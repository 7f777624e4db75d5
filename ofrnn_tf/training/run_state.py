"""Where a run's training stands, read from its run folder: finished, stopped (and
where), or not trained far enough to evaluate; and which settings a rerun may still
change (`check_finished_stages`). Eval mode, prediction and the export ask here before
they read a run's best weights."""

from __future__ import annotations

import os
from typing import Optional

from ofrnn_tf.config.experiment import ExperimentConfig
from ofrnn_tf.checkpoint_files import listed_checkpoints, resumable_checkpoint
from ofrnn_tf.run_dir import IncompatibleRunError, RunDir, train_command
from ofrnn_tf.training.checkpoints import POSITION, checkpoint_position, describe_position


class UnfinishedRunError(ValueError):
    """``--mode=eval`` on a run whose best weights are not trained through its last stage."""


def latest_position(run_dir: RunDir,
                    counters: tuple[str, ...] = POSITION) -> Optional[dict[str, int]]:
    """Where the checkpoint the run resumes from stands (`checkpoint_position`, with
    `counters`), or None: the newest that reads back, as `Trainer.restore` picks it
    (`resumable_checkpoint`, which raises `DamagedCheckpointError` when none does)."""
    latest, _ = resumable_checkpoint(run_dir.checkpoints_dir())
    return checkpoint_position(latest, counters) if latest else None


def check_checkpoints_kept(run_dir: RunDir) -> None:
    """Refuses (`IncompatibleRunError`) to train a run folder that holds trained best
    weights but no checkpoint to resume from (a run copied without its checkpoints):
    training would start over from stage 1 and replace them at its first validated
    epoch. A run that never validated an epoch starts over as before."""
    if latest_position(run_dir) is not None:
        return
    best_info = os.path.exists(run_dir.best_info_file)
    kept = ([run_dir.best_dir()] if listed_checkpoints(run_dir.best_dir()) else []) + (
        [run_dir.best_info_file] if best_info else [])
    if not kept:
        return
    best = run_dir.load_best_info() if best_info else {}
    which = (f" (stage {best['stage']} epoch {best['epoch']})"
             if "stage" in best and "epoch" in best else "")
    curves = (f" (and {run_dir.tensorboard_dir}, whose curves would hide the new ones)"
              if os.path.isdir(run_dir.tensorboard_dir) else "")
    raise IncompatibleRunError(
        f"{run_dir.path} holds trained best weights{which} but no checkpoint to resume from "
        f"in {run_dir.checkpoints_dir()}: training would start over from stage 1 and replace "
        f"them at its first epoch. Evaluate it with --mode=eval, train in a new --workdir, or "
        f"delete {' and '.join(kept)}{curves} to train this run again from its start.")


def check_finished_stages(run_dir: RunDir, config: ExperimentConfig, mode: str) -> None:
    """Refuses (`IncompatibleRunError`) what a rerun on an existing run folder would
    accept and ignore: the epochs or patience of a stage its checkpoints show finished
    (the last stage may go on, unless its patience would end it at once), and in eval
    mode any decoding setting but the beam width and any stage's epochs or patience
    (eval mode trains nothing and writes none of the run's settings)."""
    saved, _ = run_dir.load()
    diffs = []
    if mode == "eval":
        for name in ("min_labels", "calibration_objective"):
            before, now = getattr(saved.decoding, name), getattr(config.decoding, name)
            if before != now:
                diffs.append(f"decoding.{name}: {before!r} in the run folder vs {now!r} now "
                             "(eval mode evaluates the run's own decoding; ofrnn-train without "
                             "--mode=eval recalibrates with the new setting)")
        diffs += _changed_schedules(saved, config, dict.fromkeys(
            ("stage1", "label_context", "stage2"),
            "eval mode trains nothing; ofrnn-train without --mode=eval trains on with it"))
        if diffs:
            raise IncompatibleRunError(f"{run_dir.run_file}: {'; '.join(diffs)}")
    position = latest_position(run_dir, (*POSITION, "epochs_since_best"))
    finished = []
    if position is not None and position["stage"] >= 2:  # stage 1, and the context after it
        if config.model.variant != "baseline":  # the last stage may go on
            finished.append("stage1")
        if (config.model.label_context_units
                and config.model.label_context_training == "after_stage1"):
            finished.append("label_context")
    diffs += _changed_schedules(saved, config, {s: f"{s} is finished" for s in finished})
    if position is not None:
        # The stage training is in (or the last, once finished) may be given more epochs,
        # not fewer than it has done: those would end it at once, its record saying less.
        stage = min(position["stage"], 2 if config.model.variant != "baseline" else 1)
        section = f"stage{stage}"
        before, now = getattr(saved, section).epochs, getattr(config, section).epochs
        if now < position["epoch"] and now != before:
            diffs.append(f"{section}.epochs: {before} in the run folder vs {now} now "
                         f"({position['epoch']} epochs of stage {stage} are trained: give "
                         f"{position['epoch']} or more)")
        # Nor more epochs that the stage's patience ends at once.
        since, patience = position["epochs_since_best"], getattr(config, section).patience
        if now > position["epoch"] and now != before and 0 < patience <= since:
            diffs.append(f"{section}.epochs: {before} in the run folder vs {now} now (no "
                         f"epoch of stage {stage} beat its best in the last {since}, which "
                         f"--{section}.patience={patience} stops it at: more epochs train "
                         f"nothing unless the patience is raised, or 0)")
    if diffs:
        raise IncompatibleRunError(f"{run_dir.run_file}: {'; '.join(diffs)}. Use a new "
                                   f"--workdir to train with that schedule, or the saved "
                                   f"settings.")


def _changed_schedules(saved: ExperimentConfig, config: ExperimentConfig,
                       stages: dict[str, str]) -> list[str]:
    """The epochs and patience of `stages` (section → why a change is not read) that
    `config` changes from the run's `saved` settings, each said with its reason."""
    changed = []
    for section, why in stages.items():
        for name in ("epochs", "patience"):
            before = getattr(getattr(saved, section), name)
            now = getattr(getattr(config, section), name)
            if before != now:
                changed.append(f"{section}.{name}: {before} in the run folder vs {now} now "
                               f"({why})")
    return changed


def training_state(run_dir: RunDir, config: ExperimentConfig) -> Optional[str]:
    """None for a finished run; else where its training stopped (``"stage 2 epoch 3/12,
    step 5"``), when its best weights went through every stage. A run folder copied
    without its checkpoints (only a resume reads them) says nothing of where training
    stopped: None too, when its best weights are of the last stage.

    Raises `UnfinishedRunError` when no epoch of the last stage was validated yet: the
    best weights would then hold an untrained decoder (or no trained weights at all).
    """
    position = latest_position(run_dir)
    uses_decoder = config.model.variant != "baseline"
    last_stage = 2 if uses_decoder else 1
    if position is not None and position["stage"] > last_stage:
        return None
    best = run_dir.load_best_info() if os.path.exists(run_dir.best_info_file) else {}
    where = "its start, before any checkpoint"
    if position is not None:
        stage_config = config.stage1 if position["stage"] == 1 else config.stage2
        where = describe_position(position["stage"], position["epoch"],
                                  position["step_in_epoch"], stage_config.epochs)
    if position is None and best.get("stage") == last_stage:
        return None
    if best.get("stage") != last_stage:
        part = "decoder (stage 2)" if uses_decoder else "M_map (stage 1)"
        raise UnfinishedRunError(
            f"{run_dir.path} is not trained: it stopped at {where}, before any validated epoch "
            f"of stage {last_stage}, so its {part} is untrained. Finish training first: "
            f"{train_command(run_dir.path)} (without --mode=eval).")
    return where
