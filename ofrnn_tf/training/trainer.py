"""The custom training loop of Algorithm 1, under any tf.distribute strategy.

Stage 1 trains M_map with binary cross-entropy; stage 2 freezes it and trains the
attention, LSTM and prediction layers with the per-step loss of Eq. 8. The loop is
a `tf.function` around `strategy.run`, so the same code runs on one CPU, on several
GPUs (MirroredStrategy) and on several machines (MultiWorkerMirroredStrategy, where
Keras 3 `fit` fails). Its graph functions and input maps are traced without autograph:
the model has no Python control flow over tensors, converting its source cost every
training process about 6 s, and the sources AutoGraph writes to the temporary folder are
removed at exit only, never by a process that is killed.

What the steps read, the records kept in memory and stage 2's M_map outputs computed
once among it, is `TrainingInputs`'s. M_map's outputs beyond float16's range (a stage 1
that diverged) are refused either way, kept or computed at each step, so that
`--train.cache_records_mib` never decides whether stage 2 trains.

Non-finite training stops with `NonFiniteLossError`, before any checkpoint holds it: a
loss at the step it turns NaN or infinite, and weights before every checkpoint (a fused
oneDNN step can keep the loss finite while the weights are not).

With a label context (`--model.label_context_units`), it is fitted after stage 1 and
before stage 2 over the best M_map's logits of the training split, computed once
(`_train_label_context`); M_map stays frozen. The fit is short and not checkpointed
part-way: a run stopped during it, or after it but before the checkpoint that ends
stage 1, refits it whole from the same starting point (the context's initial
weights). With `--model.label_context_training=joint` it is instead trained in stage 1
with M_map (`OrderFreeRNN.map_loss`), and there is no separate fit.

Resuming: the checkpoint holds the weights, both optimizers, the dropout RNG states and
the position (stage, epoch, step in epoch); `--runtime.mixed_precision` may change
between reruns (`checkpoints_scale_loss`). The data order of every epoch is a function
of the seed (and, under ``multi_worker``, of the worker count: each worker reads its own
shards), so a run killed at any point and restarted ends with the same weights as one
that was never interrupted. Ctrl-C or SIGTERM during an epoch's steps saves a checkpoint
at the end of the step it lands in (`StepInterrupts`; in one process: a multi-worker run
stops where it is), so its rerun repeats none of them. Every epoch is checkpointed once
trained (its step count complete) and again once validated, so a validation that fails
loses no training: the rerun redoes only the validation. The last stage's final
checkpoint keeps its last epoch's weights and optimizer state (the best epoch's weights
are in ``best/``), so a finished run given more epochs goes on from there. The checkpoint
also records the decoding settings its best stage-2 score was made at: a rerun that
changes them scores the best epoch again at the new ones before stage 2 trains on
(`Trainer._rescore_best_if_scored_otherwise`), so that epochs are compared by one
score. A checkpoint whose files were deleted or damaged since is passed over with a
note: the run goes on from the newest one that reads back whole.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import time
from typing import Callable, Optional

import keras
import tensorflow as tf

from ofrnn_tf.config.experiment import ExperimentConfig, StageConfig
from ofrnn_tf.dtype_policy import global_dtype_policy
from ofrnn_tf.metrics import mean_average_precision
from ofrnn_tf.modeling.model import OrderFreeRNN, build_model
from ofrnn_tf.checkpoint_files import best_checkpoint, checkpoint_list_lost
from ofrnn_tf.run_dir import RunDir, RunFacts
from ofrnn_tf.status import progress_bar
from ofrnn_tf.training.checkpoints import (
    checkpoints_scale_loss, describe_position, said_settings, scoring_settings)
from ofrnn_tf.training.distribute import (
    check_batch_split, is_chief, num_workers, poisoned_if_any_replica_overflowed)
from ofrnn_tf.training.event_files import date_event_files_before, last_logged_steps
from ofrnn_tf.training.head_outputs import beyond_float16
from ofrnn_tf.training.inputs import ExamplesFn, TrainingInputs
from ofrnn_tf.training.label_context_fit import fit_label_context
from ofrnn_tf.training.resume import (
    check_workers_agree, checkpoint_folders, remove_cut_saves, restore_checkpoint,
    resume_point, take_chiefs_best)
from ofrnn_tf.training.step_log import (
    LoggingWindow, last_step_learning_rate, stage_bar_postfix, variable_value)
from ofrnn_tf.training.step_interrupts import StepInterrupts

# Validation values that are probabilities or weights, not percentages: printed at three
# significant digits (a τ of 0.0924 is not "0.09").
PROBABILITIES = ("tau", "score_mix")

# (model, stage) -> validation metrics; "score" (higher is better) picks the best epoch.
ValidateFn = Callable[[OrderFreeRNN, int], dict]
# model -> (M_map's own logits [N, C], labels [N, C]) of the validation split.
ValidationLogitsFn = Callable[[OrderFreeRNN], tuple]


class NonFiniteLossError(FloatingPointError):
    """Training diverged: the loss or the weights became NaN or infinite, or M_map's
    outputs grew beyond the float16 range stage 2 keeps them in."""


class Trainer:
    """Runs Algorithm 1 in a run folder, resuming from its last checkpoint.

    Each stage trains for at most its ``epochs`` (`StageConfig`), is validated after
    every epoch when `validate_fn` is given, keeps its best epoch (higher ``score``) in
    the run folder's ``best/`` and stops early after ``patience`` epochs without a better
    one. Stage 2 starts from stage 1's best M_map, which it keeps frozen.

    Args:
        config: the run's `ExperimentConfig`.
        facts: what the data decided (`RunFacts`: classes, T_max, label order, shape).
        run_dir: where checkpoints, summaries and the best weights go.
        strategy: a `tf.distribute.Strategy` (see `make_strategy`).
        num_train: training examples per epoch, over all workers.
        train_examples_fn: the training examples, unbatched, in a fixed order.
        validate_fn: scores the model after each epoch (see `ValidateFn`).
        validation_logits_fn: M_map's logits over the validation split: a label
            context fitted over the frozen M_map is then scored on them, computed once,
            rather than by `validate_fn` running M_map again every epoch.
        parse_batch_fn: parses a batch of the records `train_examples_fn` yields, if
            they come serialized (`TrainingInputs`).
        records_mib: MiB the training split's records take (their shards), or None: when
            they fit in the memory budget, each input pipeline keeps its training
            examples in memory after their first full pass (`TrainingInputs`).
        progress: show a progress bar per epoch (`ofrnn_tf.status.progress_bar`).
        settings_before: the run's settings as its folder held them before this command
            (None for a new run): a change of a stage's epochs is said where it changes
            the stage's learning rate (`_say_if_schedule_changed`).

    Attributes:
        inputs: what the steps read (`TrainingInputs`): each epoch's batches, the records
            and M_map's stage-2 outputs it keeps in memory, within one budget.
        loss_scaling: whether the stages' optimizers scale the loss, as the run's
            checkpoints were written (`checkpoints_scale_loss`).
        mixed_precision: whether the model computes in float16: as asked
            (``--runtime.mixed_precision``), unless the optimizers do not scale the loss.
    """

    def __init__(self, config: ExperimentConfig, facts: RunFacts, run_dir: RunDir,
                 strategy: tf.distribute.Strategy, num_train: int,
                 train_examples_fn: ExamplesFn, validate_fn: Optional[ValidateFn] = None,
                 parse_batch_fn: Optional[Callable[[tf.Tensor], dict]] = None,
                 records_mib: Optional[float] = None, progress: bool = True,
                 validation_logits_fn: Optional[ValidationLogitsFn] = None,
                 settings_before: Optional[ExperimentConfig] = None):
        self.config = config
        self.settings_before = settings_before
        self.facts = facts
        self.run_dir = run_dir
        self.strategy = strategy
        self.num_train = num_train
        self.validate_fn = validate_fn
        self.validation_logits_fn = validation_logits_fn
        self.progress = progress
        self.chief = is_chief(strategy)
        self._saved_step: Optional[int] = None  # the newest training checkpoint's step
        self.global_batch = config.train.batch_size
        check_batch_split(strategy, self.global_batch)
        self.steps_per_epoch = num_train // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"{num_train} training examples give no full batch of "
                             f"{self.global_batch}: lower --train.batch_size")

        runtime = config.runtime
        # Every worker must take part in a save; only the chief's copy is kept.
        worker = None if self.chief else strategy.cluster_resolver.task_id
        self._resume_dirs = checkpoint_folders(run_dir, worker)
        resume_from = resume_point(self._resume_dirs).latest
        # Before anything is built from the checkpoint (the loss-scaling layout, say).
        check_workers_agree(strategy, resume_from, config, facts, num_train, run_dir)
        self.loss_scaling = checkpoints_scale_loss(resume_from, runtime.mixed_precision)
        self.mixed_precision = runtime.mixed_precision and self.loss_scaling
        if self.mixed_precision and not tf.config.list_logical_devices("GPU"):
            print("[train] --runtime.mixed_precision is meant for GPUs, and none is visible: "
                  "float16 runs on the CPU here, slower than float32", file=sys.stderr)
        keras.utils.set_random_seed(config.train.seed)  # same initial weights on every worker and rerun
        # The run's precision, whatever policy the caller's session has (its own comes back).
        with global_dtype_policy("mixed_float16" if self.mixed_precision else "float32"), \
                strategy.scope():
            self.model = build_model(config.model, facts.num_classes,
                                     facts.positions_and_depth, facts.label_order,
                                     stage2_loss=config.train.loss)
            self.optimizers = {1: self._optimizer(config.stage1), 2: self._optimizer(config.stage2)}
            self.optimizers[1].build(self.model.map_variables)
            if self.model.uses_decoder:
                self.optimizers[2].build(self.model.decoder_variables)
        # Where every label-context fit starts (`_train_label_context`).
        self._initial_context = [v.numpy() for v in self.model.context_variables]
        self.inputs = TrainingInputs(
            config, facts, strategy, self.model, num_train, self.steps_per_epoch,
            train_examples_fn, self._head_outputs_overflow, parse_batch_fn=parse_batch_fn,
            records_mib=records_mib, progress=progress)
        # Host-side counters live outside the scope: under MultiWorkerMirroredStrategy a
        # MirroredVariable does not convert with int().
        counter = lambda name, value=0, dtype=tf.int64: tf.Variable(
            value, dtype=dtype, trainable=False, name=name)
        self.stage = counter("stage", 1)
        self.epoch = counter("epoch")
        self.step_in_epoch = counter("step_in_epoch")
        self.global_step = counter("global_step")
        self.best_metric = counter("best_metric", -1.0, tf.float64)
        self.epochs_since_best = counter("epochs_since_best")
        # The decoding settings a stage-2 `best_metric` was scored at (`scoring_settings`;
        # empty in a checkpoint written before it was recorded).
        self.best_scored_at = counter("best_scored_at", "", tf.string)
        # Keras keeps dropout RNG state outside the checkpointable graph; add it so a
        # resumed run draws the same dropout masks as an uninterrupted one.
        rng = {f"rng_{i}": v.value for i, v in enumerate(self.model.non_trainable_variables)
               if "seed_generator" in v.path}
        self._checkpointed = dict(
            model=self.model, optimizer_stage1=self.optimizers[1],
            optimizer_stage2=self.optimizers[2], stage=self.stage, epoch=self.epoch,
            step_in_epoch=self.step_in_epoch, global_step=self.global_step,
            best_metric=self.best_metric, epochs_since_best=self.epochs_since_best,
            best_scored_at=self.best_scored_at, dropout_rng=tf.train.Checkpoint(**rng))
        self.checkpoint = tf.train.Checkpoint(**self._checkpointed)
        for directory in (run_dir.checkpoints_dir(worker), run_dir.best_dir(worker)):
            if os.path.isdir(directory) and checkpoint_list_lost(directory):
                print(f"[train] {os.path.join(directory, 'checkpoint')}, TensorFlow's list of "
                      f"the checkpoints there, is missing or unreadable: the checkpoints are "
                      f"read from the folder instead", file=sys.stderr)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, run_dir.checkpoints_dir(worker), max_to_keep=3)
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model), run_dir.best_dir(worker), max_to_keep=1)
        self._train_steps = {}
        # The last step of each tag in the run's TensorBoard files, set by `restore`: a
        # run stopped between checkpoints logged steps that its rerun trains again.
        self._logged: dict[str, int] = {}

    def _learning_rate(self, stage: StageConfig):
        """The stage's learning rate: a number, or a cosine schedule over its epochs."""
        if stage.schedule == "cosine":
            return keras.optimizers.schedules.CosineDecay(
                stage.learning_rate, decay_steps=stage.epochs * self.steps_per_epoch)
        return stage.learning_rate

    def _optimizer(self, stage: StageConfig, loss_scaling: bool = True):
        optimizer = keras.optimizers.Adam(self._learning_rate(stage))
        if loss_scaling and self.loss_scaling:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    def stage_config(self, stage: int) -> StageConfig:
        return self.config.stage1 if stage == 1 else self.config.stage2

    # -- one step ---------------------------------------------------------------
    def _make_train_step(self, stage: int):
        model, max_steps = self.model, self.facts.max_steps
        train_steps = self.config.train.train_steps
        penalty = {"attention_penalty": self.config.train.attention_penalty,
                   "attention_penalty_form": self.config.train.attention_penalty_form}
        optimizer = self.optimizers[stage]
        loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        variables = model.map_variables if stage == 1 else model.decoder_variables
        per_step_len = 1 if stage == 1 else max_steps

        def losses(inputs, labels):
            if stage == 1:
                per_example = model.map_loss(inputs, labels, training=True)
                return per_example, tf.reduce_mean(per_example)[None]
            if isinstance(inputs, tuple):
                return model.sequence_loss(None, labels, max_steps, train_steps, training=True,
                                           head_outputs=inputs, **penalty)
            return model.sequence_loss(inputs, labels, max_steps, train_steps, training=True,
                                       **penalty)

        @tf.function(jit_compile=self.config.runtime.jit_compile, autograph=False)
        def gradients(inputs, labels):
            beyond = tf.zeros([])
            if stage == 2 and model.residual and not isinstance(inputs, tuple):
                # M_map's outputs, as `start` would compute them, refused beyond float16's
                # range as the copy `TrainingInputs.keep_head_outputs` keeps is.
                inputs = model.head_outputs(inputs)
                beyond = beyond_float16(inputs[0])
            with tf.GradientTape() as tape:
                per_example, per_step = losses(inputs, labels)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)
                scaled = optimizer.scale_loss(loss) if loss_scaling else loss
            return loss, per_step, tape.gradient(scaled, variables), beyond

        def replica_step(batch):
            # Inputs may come as stored (float16): cast here, in the step's
            # multi-threaded graph, rather than in the input pipeline.
            if "index" in batch:  # rows of M_map's outputs computed once (`keep_head_outputs`)
                rows = {name: tf.gather(values, batch["index"])
                        for name, values in self.inputs.head_outputs.items()}
                inputs = (tf.cast(rows["head_features"], model.compute_dtype), rows["scores"])
                labels = rows["labels"]
            else:
                inputs, labels = tf.cast(batch["features"], tf.float32), batch["labels"]
            loss, per_step, grads, beyond = gradients(inputs, labels)
            if loss_scaling and self.strategy.num_replicas_in_sync > 1:
                grads = poisoned_if_any_replica_overflowed(grads)
            optimizer.apply_gradients(zip(grads, variables))
            # Summed over the replicas some image took each step on (NaN on the others).
            untaken = tf.math.is_nan(per_step)
            return (loss, tf.where(untaken, 0.0, per_step), 1.0 - tf.cast(untaken, tf.float32),
                    beyond)

        @tf.function(autograph=False)
        def train_step(iterator):
            """`(loss, per-decoding-step losses, M_map's outputs beyond float16's range)`."""
            outputs = self.strategy.run(replica_step, args=(next(iterator),))
            loss, total, count, beyond = (
                self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                for value in outputs)
            per_step = tf.where(count > 0, total / tf.maximum(count, 1.0), float("nan"))
            return loss, tf.reshape(per_step, [per_step_len]), beyond

        return train_step

    def _head_outputs_overflow(self) -> NonFiniteLossError:
        """The error for M_map's outputs beyond float16's range at stage 2: the weights
        stage 1 left, not stage 2's, are the cause."""
        return NonFiniteLossError(
            f"M_map's outputs exceed float16's range (±65504), in which stage 2 keeps them "
            f"(stage 1 diverged); {self._checkpoint_kept()}. Train in a new --workdir with a "
            f"lower --stage1.learning_rate (a run keeps its learning rates).")

    def _checkpoint_kept(self) -> str:
        """Which training checkpoint a run stopped now resumes from, as its stop says."""
        if self._saved_step:
            return f"the checkpoint of global step {self._saved_step} is kept"
        return "no checkpoint was saved yet"

    # -- the run ----------------------------------------------------------------
    def restore(self) -> bool:
        """Restores the newest checkpoint that reads back whole; returns whether there
        was one. Newer ones that cannot be read (deleted or damaged files) are passed
        over, each named with a note (`resume_point`); the leftovers of a save cut short
        are removed (`remove_cut_saves`)."""
        remove_cut_saves([self.manager.directory, self.best_manager.directory])
        latest, unreadable, directory = resume_point(self._resume_dirs)
        for prefix, problem in unreadable:
            print(f"[train] skipped checkpoint {prefix}: {problem}; resuming from the older "
                  f"{latest} (the files {prefix}.* can be deleted)", file=sys.stderr)
        if self.chief:
            self._logged = last_logged_steps(self.run_dir.tensorboard_dir)
        # The checkpoint this run stands at (its number is the global step), on every worker.
        self._saved_step = int(latest.rsplit("-", 1)[1]) if latest else None
        if latest:
            if not self.chief and directory == self.run_dir.checkpoints_dir():
                self.best_manager = take_chiefs_best(self.run_dir, self.best_manager)
            restore_checkpoint(latest, self.checkpoint, self._checkpointed)
            print(f"[train] resuming from {latest}: {self.position()}", file=sys.stderr)
        return bool(latest)

    def position(self) -> str:
        """Where training stands (`describe_position`), or that it finished."""
        stage, last = int(self.stage), self.stages()[-1]
        if stage > last:
            return f"training finished ({describe_position(last, int(self.epoch), 0)})"
        return describe_position(stage, int(self.epoch), int(self.step_in_epoch),
                                 self.stage_config(stage).epochs, self.steps_per_epoch)

    def stages(self) -> list[int]:
        return [1, 2] if self.model.uses_decoder else [1]

    def _stage_done(self, stage: int) -> bool:
        stage_config = self.stage_config(stage)
        if int(self.epoch) >= stage_config.epochs:
            return True
        return (self.validate_fn is not None and stage_config.patience > 0
                and int(self.epochs_since_best) >= stage_config.patience)

    def train(self) -> OrderFreeRNN:
        """Runs (or resumes) both stages; returns the model with the best weights.

        A finished run given more epochs for its last stage (and not stopped there by
        its patience) goes on training that stage from its last epoch's weights and
        optimizer state, as a run given those epochs from the start would (with a
        constant learning rate; a cosine schedule decays over the stage's epochs, from
        its first step: `_say_if_schedule_changed`).
        """
        self.restore()
        if self.model.needs_adapting:
            self._adapt()
        last = self.stages()[-1]
        if int(self.stage) == last + 1 and not self._stage_done(last):
            self.stage.assign(last)
        if self.model.uses_decoder and int(self.stage) == 2 and not self._stage_done(2):
            self._rescore_best_if_scored_otherwise()
        self._say_if_schedule_changed()
        for stage in self.stages():
            if int(self.stage) > stage:
                continue
            while not self._stage_done(stage):
                self._train_epoch(stage)
            self._say_if_stopped_early(stage)
            self._end_stage(stage)
        self._flush_points()
        self._restore_best()
        return self.model

    def _rescore_best_if_scored_otherwise(self) -> None:
        """Scores the best stage-2 epoch so far (``best/``) on validation again where its
        score was made at other decoding settings than the run's now (beam width, fewest
        labels, calibration objective; or at settings not recorded, by an earlier
        version), and makes that the score the epochs to come must beat; the training
        weights are put back. Patience still counts the epochs since that best one.

        Every worker of a multi-worker run decides alike, from the checkpoint it resumed
        from, and scores the same best weights (the chief's, which it takes on resuming
        from the chief's checkpoints; else its own copy of them)."""
        now = scoring_settings(self.config)
        scored_at = self.best_scored_at.numpy().decode()
        if self.validate_fn is None or float(self.best_metric) < 0 or scored_at == now:
            return
        trained = [v.numpy() for v in self._checkpointed_weights()]
        if not self._restore_best():
            return  # no best weights to score: the next validated epoch is kept anyway
        metrics = self.validate_fn(self.model, 2)
        for variable, value in zip(self._checkpointed_weights(), trained):
            variable.assign(value)
        before = float(self.best_metric)
        self.best_metric.assign(metrics["score"])
        self.best_scored_at.assign(now)
        epoch = ""
        if self.chief and os.path.exists(self.run_dir.best_info_file):
            info = self.run_dir.load_best_info()
            info["validation"] = metrics
            self.run_dir.save_best_info(info)
            epoch = f" (epoch {info['epoch']})"
        then = (f"at {said_settings(scored_at)}" if scored_at
                else "at settings its checkpoint does not record")
        print(f"[train] the best stage-2 epoch so far{epoch} scored {before:.2f} on validation "
              f"{then}; scored again at the run's {said_settings(now)}: {metrics['score']:.2f}, "
              f"the score the epochs from here must beat", file=sys.stderr)

    def _say_if_schedule_changed(self) -> None:
        """One line where the stage training goes on in has a cosine schedule and other
        epochs than before this command: the schedule decays over the new epochs from the
        stage's first step, so the rate it goes on at differs from the one the stage
        followed so far (higher for more epochs, a restart for a finished stage)."""
        stage = int(self.stage)
        if self.settings_before is None or stage > self.stages()[-1]:
            return
        now = self.stage_config(stage)
        before = self.settings_before.stage1 if stage == 1 else self.settings_before.stage2
        optimizer = getattr(self.optimizers[stage], "inner_optimizer", self.optimizers[stage])
        steps = int(variable_value(optimizer.iterations))
        if now.schedule != "cosine" or now.epochs == before.epochs or not steps:
            return
        rate, was = (float(self._learning_rate(given)(steps)) for given in (now, before))
        print(f"[train] stage {stage}'s cosine schedule now decays over {now.epochs} epochs, "
              f"not {before.epochs}: from here it trains at learning rate {rate:.3g}, where "
              f"the {before.epochs}-epoch schedule was at {was:.3g} (the steps so far followed "
              f"that one)", file=sys.stderr)

    def _say_if_stopped_early(self, stage: int) -> None:
        """One line where the stage's patience ended it before its epochs: which epoch it
        stopped after and which it keeps."""
        epoch, epochs = int(self.epoch), self.stage_config(stage).epochs
        if epoch < epochs:
            since = int(self.epochs_since_best)
            print(f"[train] stage {stage}: stopped after epoch {epoch} of {epochs}, no better "
                  f"validation score in {since} epoch{'s' * (since != 1)} "
                  f"(--stage{stage}.patience); its best "
                  f"epoch, {epoch - since}, is kept", file=sys.stderr)

    def _end_stage(self, stage: int) -> None:
        """Checkpoints the end of `stage`. Before the last stage the model takes this
        stage's best epoch (stage 2 starts from stage 1's best M_map, and the label
        context is fitted over it); the last stage's checkpoint keeps its last epoch's
        weights instead, beside its optimizer state and counters (`train` then returns
        the best ones)."""
        last = stage == self.stages()[-1]
        trained = [v.numpy() for v in self._checkpointed_weights()] if last else None
        self._restore_best()
        if stage == 1 and self.model.context_variables:
            self._train_label_context()
        self.stage.assign(stage + 1)
        if last:
            for variable, value in zip(self._checkpointed_weights(), trained):
                variable.assign(value)
        else:
            self.epoch.assign(0)
            self.best_metric.assign(-1.0)
            self.epochs_since_best.assign(0)
        self._save(int(self.global_step))

    def _checkpointed_weights(self) -> list:
        """The model's variables that ``best/`` holds (all but the dropout RNG states,
        which go on from where training left them)."""
        return [v for v in self.model.weights if "seed_generator" not in v.path]

    def _adapt(self) -> None:
        """Sets the feature standardisation from one pass over all training examples."""
        batches = (tf.cast(batch["features"], tf.float32)
                   for batch in self.inputs.whole_split_batches())
        print("[train] feature statistics from the training split", file=sys.stderr)
        self.model.adapt(batches)

    def _context_score_fn(self) -> Optional[Callable[[], float]]:
        """The stage-1 validation score (mAP of `sigmoid(L')`) of the label context being
        fitted, or None without validation. M_map is frozen during the fit: its
        validation logits are computed once and only the context runs each epoch."""
        if self.validate_fn is None:
            return None
        if self.validation_logits_fn is None:
            return lambda: self.validate_fn(self.model, 1)["score"]
        logits, labels = self.validation_logits_fn(self.model)
        logits = tf.constant(logits, tf.float32)
        return lambda: mean_average_precision(
            labels, tf.sigmoid(self.model.label_context(logits, training=False)).numpy())

    def _train_label_context(self) -> None:
        """Fits the `LabelContext` over the frozen best M_map (`fit_label_context`): on the
        training split's logits, Adam (`--label_context.*`), its best epoch by the
        stage-1 validation score (mAP of `sigmoid(L')`), then kept in ``best/``."""
        logits, labels = self.inputs.training_map_logits()
        # A run stopped after a fit but before the checkpoint ending stage 1 has just
        # restored the fitted context from best/: start from the initial weights again.
        for variable, value in zip(self.model.context_variables, self._initial_context):
            variable.assign(value)
        with self.strategy.scope():
            # Fresh on every fit (float32 layer: no loss scaling), so a refit after a
            # resume starts where the interrupted one did.
            optimizer = self._optimizer(self.config.label_context, loss_scaling=False)
            optimizer.build(self.model.context_variables)
        fit = fit_label_context(
            self.model, self.strategy, optimizer, logits, labels, self.config.label_context,
            batch_size=self.global_batch, seed=self.config.train.seed,
            score_fn=self._context_score_fn(), log_scalar=self._scalar,
            progress=self.progress and self.chief)
        if self.validate_fn is None:
            return
        if fit.best_epoch:
            said = (f"best epoch {fit.best_epoch} of {fit.epochs}, validation "
                    f"{fit.best_score:.2f} (M_map alone {fit.map_score:.2f})")
        else:
            said = (f"no epoch of {fit.epochs} beat M_map alone on validation "
                    f"({fit.map_score:.2f}): the context is left out (it passes M_map's "
                    f"logits on unchanged)")
        print(f"[train] label context: {said}", file=sys.stderr)
        self.best_manager.save(checkpoint_number=int(self.global_step))
        if self.chief and os.path.exists(self.run_dir.best_info_file):
            info = self.run_dir.load_best_info()  # stage 1's best epoch, and now its context
            info["label_context"] = {"epoch": fit.best_epoch, "score": fit.best_score}
            info["validation"].update(score=fit.best_score, mAP=fit.best_score)  # by val. mAP
            self.run_dir.save_best_info(info)

    def _restore_best(self) -> bool:
        """Gives the model the best weights of ``best/``; returns whether there were any."""
        if self.validate_fn is None:
            return False
        # Read from the folder, not from the manager's list: a lost state file still
        # leaves the best epoch's files, and a damaged one is named, not passed over.
        best = best_checkpoint(self.best_manager.directory,
                               "rerun the command (training goes on from there)")
        if best:  # all of the model's variables, or `IncompatibleRunError` naming them
            self.run_dir.restore_weights(self.model, best)
        return bool(best)

    def _train_epoch(self, stage: int):
        """Trains the rest of the current epoch and checkpoints it, then validates it and
        checkpoints again: a validation that fails loses no training, and the rerun
        resumes from the first checkpoint (its steps all done) to redo the validation."""
        steps_left = int(self.step_in_epoch) < self.steps_per_epoch
        # Built before the hold: building data (stage 2's pass of M_map over the training
        # split) stops where a signal lands.
        batches = self._epoch_batches(stage) if steps_left else None
        # Held over the steps and the checkpoint that ends them (one process only: a
        # multi-worker save needs every worker): a signal there is delivered once saved.
        held = StepInterrupts(enabled=num_workers(self.strategy) == 1,
                              on_stop=self._save_for_stop)
        with held:
            if steps_left:
                self._run_steps(stage, *batches, held)
            if held.pending is not None:
                return  # `on_stop` saves, then the signal is handed on
            step = int(self.global_step)
            if self.validate_fn is None:
                self._end_epoch()
                self._save(step)
                return
            # Unless `checkpoint_every` just did, or the run resumed from it: decided alike
            # on every worker, as every worker takes part in a save.
            if self._saved_step != step:
                self._save(step)
        self._end_epoch()
        self._validate(stage)
        self._save(step)

    def _end_epoch(self) -> None:
        self.epoch.assign_add(1)
        self.step_in_epoch.assign(0)

    def _save_for_stop(self, signum: int) -> None:
        """Checkpoints the last step done before a held Ctrl-C or SIGTERM is handed on."""
        step = int(self.global_step)
        if self._saved_step != step:
            self._save(step)
        said = "SIGTERM" if signum == signal.SIGTERM else "SIGINT (Ctrl-C)"
        print(f"[train] {said}: stopped after global step {step}, saved as "
              f"{os.path.basename(self.manager.latest_checkpoint)}", file=sys.stderr)

    @functools.cached_property
    def writer(self) -> tf.summary.SummaryWriter:
        """The run's TensorBoard writer, made at its first point: a rerun of a finished run
        logs none, and leaves no empty event file. Its file is named to sort after the
        earlier commands' files (`date_event_files_before`)."""
        if not self.chief:
            return tf.summary.create_noop_writer()
        directory = self.run_dir.tensorboard_dir
        ahead = date_event_files_before(directory, int(time.time()))
        if ahead is not None:
            print(f"[train] the TensorBoard event files in {directory} were dated up to "
                  f"{ahead} s ahead of this clock: renamed them to earlier dates, in the same "
                  "order, so that TensorBoard reads this command's curves after theirs",
                  file=sys.stderr)
        return tf.summary.create_file_writer(directory)

    def _flush_points(self) -> None:
        if "writer" in self.__dict__:  # made: points may wait in its buffer
            self.writer.flush()

    def _save(self, step: int) -> None:
        """A training checkpoint numbered by the global step; never of weights that are
        not finite (`_check_weights_finite`), which every rerun would resume into."""
        self._check_weights_finite()
        # The points logged up to this step go to disk first: a rerun from this checkpoint
        # logs only the steps after it, so points still buffered at a kill would be lost.
        self._flush_points()
        self.manager.save(checkpoint_number=step)
        self._saved_step = step

    def _check_weights_finite(self) -> None:
        """`NonFiniteLossError` naming the model's weights that hold a NaN or an Inf. The
        fused oneDNN training step can keep the loss finite while its gradients are not,
        so the loss's check alone does not keep them out of a checkpoint. Decided alike on
        every worker (the weights are mirrored)."""
        bad = [v.path for v in self._checkpointed_weights() if tf.as_dtype(v.dtype).is_floating
               and not bool(tf.reduce_all(tf.math.is_finite(v)))]
        if not bad:
            return
        stage = min(int(self.stage), self.stages()[-1])
        named = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteLossError(
            f"non-finite weights ({named}) at {self.position()} (global step "
            f"{int(self.global_step)}); {self._checkpoint_kept()}. "
            f"{self._lower_rate_remedy(stage)}")

    def _lower_rate_remedy(self, stage: int) -> str:
        """What to do about training that turned non-finite at `stage`. At stage 2's first
        step, stage 1 may be the cause: that step reads M_map's outputs as stage 1 left
        them."""
        first_of_stage_2 = stage == 2 and not int(self.epoch) and not int(self.step_in_epoch)
        rate = ("a lower --stage2.learning_rate, or --stage1.learning_rate (M_map's outputs "
                "after stage 1, which stage 2's first step reads, may be the cause)"
                if first_of_stage_2 else f"a lower --stage{stage}.learning_rate")
        return (f"Train in a new --workdir with {rate} (a run keeps its learning rates), or "
                f"check the features.")

    def _epoch_batches(self, stage: int):
        """`(train_step, iterator)` for the rest of the current epoch."""
        if stage not in self._train_steps:
            self._train_steps[stage] = self._make_train_step(stage)
        return self._train_steps[stage], iter(self.inputs.epoch_dataset(
            stage, int(self.epoch), int(self.step_in_epoch)))

    def _run_steps(self, stage: int, train_step, iterator, held: StepInterrupts):
        """The current epoch's remaining training steps (checkpointed every
        ``checkpoint_every`` global steps), up to the end of the step in which `held` notes
        a signal."""
        epoch, start_step = int(self.epoch), int(self.step_in_epoch)
        stage_config = self.stage_config(stage)
        runtime = self.config.runtime
        window = LoggingWindow()
        bar = progress_bar(total=self.steps_per_epoch, initial=start_step, unit="step",
                           desc=f"stage {stage} epoch {epoch + 1}/{stage_config.epochs}",
                           enabled=self.progress and self.chief)
        with bar:
            for _ in range(start_step, self.steps_per_epoch):
                loss, per_step, beyond_float16 = train_step(iterator)
                loss = float(loss)
                if float(beyond_float16):
                    raise self._head_outputs_overflow()
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"non-finite loss {loss} at stage {stage}, epoch {epoch + 1}, step "
                        f"{int(self.step_in_epoch) + 1} (global step {int(self.global_step) + 1}); "
                        f"{self._checkpoint_kept()}. {self._lower_rate_remedy(stage)}")
                self.step_in_epoch.assign_add(1)
                self.global_step.assign_add(1)
                step = int(self.global_step)
                window.add(per_step.numpy() if stage == 2 else None)
                # Every log_every steps and at an epoch's end (an epoch may be shorter).
                if step % runtime.log_every == 0 or _ == self.steps_per_epoch - 1:
                    self._scalar(f"loss/stage{stage}", loss, step)
                    for t, value in enumerate(window.step_losses()):
                        if value is not None:  # no image of the window took step t
                            self._scalar(f"loss_per_decoding_step/t{t + 1}", value, step)
                    self._scalar(f"learning_rate/stage{stage}",
                                 last_step_learning_rate(self.optimizers[stage]), step)
                    rate = window.examples_per_second(self.global_batch)
                    if rate is not None:
                        self._scalar("examples_per_second", rate, step)
                    window.restart()
                rate = window.bar_rate(self.global_batch)
                # Not refreshed here: `update` redraws at the bar's own pace, not every step.
                bar.set_postfix_str(stage_bar_postfix(loss, rate), refresh=False)
                bar.update(1)
                if step % runtime.checkpoint_every == 0:
                    self._save(step)
                if held.pending is not None:
                    break

    def _scalar(self, tag: str, value, step: int) -> None:
        """A TensorBoard point, unless a stopped run already logged this tag at `step`
        or later (its rerun replays the steps after its last checkpoint)."""
        if step > self._logged.get(tag, 0):
            # The writer is made here, at a point: a rerun that logs none leaves no file.
            with self.writer.as_default():
                tf.summary.scalar(tag, value, step=step)

    def _validate(self, stage: int):
        metrics = self.validate_fn(self.model, stage)
        step = int(self.global_step)
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                self._scalar(f"validation_stage{stage}/{name}", value, step)
        print(f"[train] validation after stage {stage} epoch {int(self.epoch)}: "
              + ", ".join(f"{k} {v:.3g}" if k in PROBABILITIES else f"{k} {v:.2f}"
                          for k, v in metrics.items() if isinstance(v, float)),
              file=sys.stderr)
        if metrics["score"] > float(self.best_metric):
            self.best_metric.assign(metrics["score"])
            self.best_scored_at.assign(scoring_settings(self.config) if stage == 2 else "")
            self.epochs_since_best.assign(0)
            self.best_manager.save(checkpoint_number=step)
            if self.chief:
                self.run_dir.save_best_info({"stage": stage, "epoch": int(self.epoch),
                                             "global_step": step, "validation": metrics})
        else:
            self.epochs_since_best.assign_add(1)


