"""What a training checkpoint records beside the weights: where training stands (stage,
epochs done, step in the epoch), whether its optimizers scale the loss, and the decoding
settings its best stage-2 score was made at. `Trainer` writes them; `run_state` reads
them to tell a finished run from a stopped one."""

from __future__ import annotations

import json
import sys
from typing import Optional

import tensorflow as tf

from ofrnn_tf.config.experiment import ExperimentConfig


def describe_position(stage: int, epochs_done: int, step: int, stage_epochs: Optional[int] = None,
                      steps_per_epoch: Optional[int] = None) -> str:
    """Where a run's training stands, epochs counted from 1 as the progress bar counts
    them: ``stage 2 epoch 3/12, step 5/40``, ``stage 1 after epoch 4/12``, ``the start
    of stage 2`` (the totals when given). An epoch begun beyond `stage_epochs` (a rerun
    given fewer epochs than the stopped run had begun) says the stage ends there."""
    of = lambda total: f"/{total}" if total else ""
    if step:
        if stage_epochs and epochs_done >= stage_epochs:
            return (f"stage {stage} epoch {epochs_done + 1}, step {step}{of(steps_per_epoch)}, "
                    f"beyond the stage's {stage_epochs} epochs: the stage ends without "
                    f"finishing it")
        where = (f"stage {stage} epoch {epochs_done + 1}{of(stage_epochs)}, "
                 f"step {step}{of(steps_per_epoch)}")
        return where + (" (trained, not yet validated)" if step == steps_per_epoch else "")
    if epochs_done:
        return f"stage {stage} after epoch {epochs_done}{of(stage_epochs)}"
    return f"the start of stage {stage}"


POSITION = ("stage", "epoch", "step_in_epoch")


def checkpoint_position(path: str, counters: tuple[str, ...] = POSITION) -> dict[str, int]:
    """``{"stage", "epoch", "step_in_epoch"}`` of a `Trainer` checkpoint: epochs done in
    the stage, steps done in the current epoch; ``stage`` is one past the last stage
    once training finished. Other `counters` of the `Trainer` may be read as well
    (``epochs_since_best``)."""
    reader = tf.train.load_checkpoint(path)
    return {name: int(reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE"))
            for name in counters}


def checkpoints_scale_loss(latest: Optional[str], mixed_precision: bool) -> bool:
    """Whether the optimizers scale the loss: as the run's checkpoint `latest` (the one
    it resumes from) was written, when there is one, else with `mixed_precision`.

    A loss-scaling optimizer saves another checkpoint layout than plain Adam, and
    `--runtime.mixed_precision` may change between reruns (a run moved off its GPUs):
    the run keeps the layout it started with. Loss scaling in float32 only multiplies
    the loss and divides the gradients back; without it float16 gradients can be too
    small for float16, so a run without it goes on in float32 (`Trainer`), and says so.
    """
    if latest is None:
        return mixed_precision
    scaled = any(name.startswith("optimizer_stage1/dynamic_scale/")
                 for name, _ in tf.train.list_variables(latest))
    if mixed_precision and not scaled:
        print("[train] this run's checkpoints were written without "
              "--runtime.mixed_precision, so its optimizers do not scale the loss, which "
              "float16 needs: it goes on in float32 (a new run trains in float16)",
              file=sys.stderr)
    return scaled


def scoring_settings(config: ExperimentConfig) -> str:
    """The decoding settings a stage-2 validation score depends on, as the checkpoint
    records them beside the best score (`Trainer.best_scored_at`)."""
    decoding = config.decoding
    return json.dumps({"beam_size": decoding.beam_size, "min_labels": decoding.min_labels,
                       "calibration_objective": decoding.calibration_objective},
                      sort_keys=True)


def said_settings(settings: str) -> str:
    """`scoring_settings` as a log line says them: ``K=3, min_labels 1, objective o_f1``."""
    values = json.loads(settings)
    return (f"K={values['beam_size']}, min_labels {values['min_labels']}, objective "
            f"{values['calibration_objective']}")
