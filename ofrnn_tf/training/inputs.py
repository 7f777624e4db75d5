"""What training reads: each epoch's shuffled batches under a tf.distribute strategy, the
training records kept in memory, and stage 2's copy of M_map's outputs computed once.

The training records are kept in memory after their first full pass where they fit in
`--train.cache_records_mib` (`memory_budget_mib`); each epoch then shuffles over all of
them, and later epochs read no file.

Stage 2 of the residual decoder reads only M_map's per-position outputs, and M_map is
frozen then: when they fit in the same budget, they are computed once at the start of
stage 2 and kept in memory (in float16), the training records kept in memory let go
first where both do not fit at once; the input pipeline then yields batches of example
indices, and each step gathers its rows (`head_outputs`) instead of running M_map again.
Outputs beyond float16's range (a stage 1 that diverged) are refused.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, Optional

import tensorflow as tf

from ofrnn_tf.config.experiment import ExperimentConfig
from ofrnn_tf.features.shard_checks import count_elements
from ofrnn_tf.features.tfrecords import INPUT_THREADS, without_autotuning
from ofrnn_tf.host_limits import memory_limit_mib
from ofrnn_tf.modeling.model import OrderFreeRNN
from ofrnn_tf.run_dir import RunFacts
from ofrnn_tf.status import progress_bar
from ofrnn_tf.training.distribute import is_chief, num_workers
from ofrnn_tf.training.head_outputs import (
    beyond_float16, index_batch, records_changed, write_rows)
from ofrnn_tf.training.memory import give_back_freed_memory, memory_budget_mib

# input_context -> unbatched dataset of {"features", "labels", ...} in a fixed order.
ExamplesFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]
# Batch size of the whole-split passes that are not training steps (statistics, M_map's outputs).
PASS_BATCH = 256


class TrainingInputs:
    """The training split as the stages read it (see the module docstring).

    Args:
        config: the run's `ExperimentConfig` (``train``: batch size, seed, shuffle
            buffer, memory budget).
        facts: what the data decided (`RunFacts`: classes and feature shape).
        strategy: the `tf.distribute.Strategy` the steps run under.
        model: the run's model, whose frozen M_map computes stage 2's kept outputs.
        num_train: training examples per epoch, over all workers.
        steps_per_epoch: the training steps of each epoch.
        examples_fn: the training examples, unbatched, in a fixed order.
        overflow_error: makes the error raised for M_map's outputs beyond float16's range
            (the trainer's, which names the checkpoint a rerun resumes from).
        parse_batch_fn: when given, `examples_fn` yields serialized records and this
            parses a batch of them into `{"features", "labels"}`: the shuffle buffer then
            holds the compact records, and parsing runs on whole batches, in parallel with
            training, instead of while the buffer fills.
        records_mib: MiB the training split's records take (their shards), or None.
        progress: show a progress bar over the pass that computes M_map's outputs.

    Attributes:
        memory_budget_mib: what training keeps in memory at once, the records and M_map's
            outputs together: `--train.cache_records_mib`, capped at a third of the
            memory this process may use (`memory_budget_mib`, said in one line where
            the cap leaves out what the flag would keep).
        cache_examples: whether the training records are kept in memory (`records_mib`
            within `memory_budget_mib`).
        cache_head_outputs: whether stage 2 trains on M_map's outputs computed once
            (`head_outputs_mib` within `memory_budget_mib`, residual decoder). The records
            are let go before that pass where both do not fit at once.
        head_outputs: once computed (`keep_head_outputs`), M_map's outputs for this
            input pipeline's examples, `{"head_features": A (float16), "scores": S,
            "labels"}` as variables, in the order of the examples; empty before.
    """

    def __init__(self, config: ExperimentConfig, facts: RunFacts,
                 strategy: tf.distribute.Strategy, model: OrderFreeRNN, num_train: int,
                 steps_per_epoch: int, examples_fn: ExamplesFn,
                 overflow_error: Callable[[], Exception],
                 parse_batch_fn: Optional[Callable[[tf.Tensor], dict]] = None,
                 records_mib: Optional[float] = None, progress: bool = True):
        self.config = config
        self.facts = facts
        self.strategy = strategy
        self.model = model
        self.num_train = num_train
        self.steps_per_epoch = steps_per_epoch
        self.examples_fn = examples_fn
        self.parse_batch_fn = parse_batch_fn
        self.records_mib = records_mib
        self.overflow_error = overflow_error
        self.progress = progress
        self.chief = is_chief(strategy)
        self.memory_budget_mib, capped_by = memory_budget_mib(config.train.cache_records_mib,
                                                              memory_limit_mib())
        self.cache_examples = records_mib is not None and records_mib <= self.memory_budget_mib
        self.cache_head_outputs = (self._decoder_reads_head_outputs
                                   and self.head_outputs_mib <= self.memory_budget_mib)
        self.head_outputs: dict[str, tf.Variable] = {}
        self._head_outputs_key: Optional[tuple] = None
        self._cached_examples: dict[tuple, tf.data.Dataset] = {}
        if capped_by and self.chief:
            self._say_budget_capped(capped_by)

    @property
    def _decoder_reads_head_outputs(self) -> bool:
        return self.model.residual  # False for the baseline, which builds no decoder

    def fits_beside_training(self, mib: float) -> bool:
        """Whether `mib` more fit in `memory_budget_mib` beside everything training may keep
        (its records and stage 2's M_map outputs, counted as if both were kept at once)."""
        kept = ((self.records_mib if self.cache_examples else 0.0)
                + (self.head_outputs_mib if self.cache_head_outputs else 0.0))
        return kept + mib <= self.memory_budget_mib

    def _say_budget_capped(self, capped_by: str) -> None:
        """One line where the memory cap (`memory_budget_mib`) leaves out of memory what
        `--train.cache_records_mib` alone would keep: what, and the flag that decides."""
        flag, budget = self.config.train.cache_records_mib, self.memory_budget_mib
        sizes = {"the training records": self.records_mib,
                 "M_map's stage-2 outputs": (self.head_outputs_mib
                                             if self._decoder_reads_head_outputs else None)}
        left_out = [f"{name} ({mib:.0f} MiB)" for name, mib in sizes.items()
                    if mib is not None and budget < mib <= flag]
        if left_out:
            print(f"[train] --train.cache_records_mib={flag} is capped at {int(budget)} MiB, "
                  f"{capped_by}: {' and '.join(left_out)} are not kept in memory (set "
                  f"--train.cache_records_mib to at most {int(budget)} to decide what is)",
                  file=sys.stderr)

    def examples(self, ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        """This input pipeline's training examples, kept in memory after their first full
        pass where `cache_examples`."""
        if not self.cache_examples:
            return self.examples_fn(ctx)
        key = (ctx.num_input_pipelines, ctx.input_pipeline_id)
        if key not in self._cached_examples:
            self._cached_examples[key] = self.examples_fn(ctx).cache()
        return self._cached_examples[key]

    def parsed_batches(self, examples: tf.data.Dataset) -> tf.data.Dataset:
        """One pass over `examples` in batches of `{"features", "labels", ...}`, in order."""
        dataset = examples.batch(PASS_BATCH)
        if self.parse_batch_fn is not None:
            dataset = dataset.map(self.parse_batch_fn, num_parallel_calls=INPUT_THREADS)
        return dataset.prefetch(INPUT_THREADS).with_options(without_autotuning())

    def whole_split_batches(self) -> tf.data.Dataset:
        """One pass over all training examples, in batches, on every worker (each reads
        them all, so every replica computes the same from them)."""
        # One worker trains on this same whole-split pass, so it fills the cache; with
        # several, each keeps only its share, and the whole split is not cached here.
        examples = self.examples if num_workers(self.strategy) == 1 else self.examples_fn
        return self.parsed_batches(examples(tf.distribute.InputContext()))

    @property
    def head_outputs_mib(self) -> float:
        """MiB that M_map's stage-2 outputs for the training split take in memory."""
        positions, _ = self.facts.positions_and_depth
        classes = self.facts.num_classes
        per_example = positions * (2 * self.config.model.head_units + 4 * classes) + 4 * classes
        return self.num_train * per_example / 2 ** 20

    def keep_head_outputs(self, ctx: tf.distribute.InputContext) -> int:
        """Computes M_map's frozen outputs for this input pipeline's training examples once,
        as `head_outputs`; returns how many examples that is. Outputs float16 cannot hold
        are refused (`overflow_error`): cast, they would be ±inf, and stage 2 NaN."""
        key = (ctx.num_input_pipelines, ctx.input_pipeline_id)
        if self._head_outputs_key not in (None, key):
            raise NotImplementedError("M_map's outputs are kept for one input pipeline per "
                                      "process; set --train.cache_records_mib=0")
        if self.head_outputs:
            return int(self.head_outputs["labels"].shape[0])
        head = tf.function(lambda features: self.model.head_outputs(tf.cast(features, tf.float32)),
                           autograph=False)
        examples = self._head_outputs_source(key, ctx)
        # Each batch is written into variables of the final size (`write_rows`): the
        # outputs are never held twice (batches and their concatenation). TensorFlow's CPU
        # allocator keeps the peak of this pass for the rest of the process.
        count = (self.num_train if ctx.num_input_pipelines == 1
                 else count_elements(examples))
        if count == 0:
            raise ValueError(f"input pipeline {ctx.input_pipeline_id + 1} of "
                             f"{ctx.num_input_pipelines} holds no training example: train "
                             f"with fewer workers")
        kept, done = {}, 0
        total = math.ceil(self.num_train / ctx.num_input_pipelines / PASS_BATCH)
        with progress_bar(self.parsed_batches(examples), total=total, unit="batch",
                          desc="M_map outputs (once)",
                          enabled=self.progress and self.chief) as bar:
            for batch in bar:
                head_features, scores = head(batch["features"])
                if float(beyond_float16(head_features)):
                    raise self.overflow_error()
                # float16 halves the memory; the features were stored in float16 anyway.
                rows = {"head_features": tf.cast(head_features, tf.float16),
                        "scores": tf.cast(scores, tf.float32), "labels": batch["labels"]}
                done = write_rows(kept, rows, done, count)
        if done != count:
            raise records_changed(done, count)
        self.head_outputs = kept
        self._head_outputs_key = key
        return int(self.head_outputs["labels"].shape[0])

    def _head_outputs_source(self, key: tuple, ctx: tf.distribute.InputContext
                             ) -> tf.data.Dataset:
        """The training examples the pass of `keep_head_outputs` reads: the records kept in
        memory where they and M_map's outputs fit in `memory_budget_mib` together, else
        the shards, the records let go first. Either way they are let go once the pass
        is done: stage 2 reads no record again."""
        kept = self._cached_examples.pop(key, None)
        if kept is not None and (self.records_mib + self.head_outputs_mib
                                 <= self.memory_budget_mib):
            return kept
        if kept is not None:
            del kept
            give_back_freed_memory()
        return self.examples_fn(ctx)

    def training_map_logits(self) -> tuple[tf.Tensor, tf.Tensor]:
        """M_map's logits (before the label context) and the labels of the whole training
        split, `[N, C]` each, in the examples' order."""
        if self.cache_head_outputs and num_workers(self.strategy) == 1:
            # Stage 2 reads the same per-position scores: compute them once for both.
            self.keep_head_outputs(tf.distribute.InputContext())
            scores = self.head_outputs["scores"]
            count = int(scores.shape[0])
            # Gathered, not sliced: a variable written in place copies itself whole on a read.
            logits = tf.concat([self.model.pooled_map_logits(
                tf.gather(scores, tf.range(i, min(i + PASS_BATCH, count))))
                for i in range(0, count, PASS_BATCH)], axis=0)
            return logits, tf.cast(self.head_outputs["labels"], tf.float32)
        logits_of = tf.function(
            lambda features: self.model.map_logits(tf.cast(features, tf.float32)), autograph=False)
        logits, labels = [], []
        for batch in self.whole_split_batches():
            logits.append(tf.cast(logits_of(batch["features"]), tf.float32))
            labels.append(tf.cast(batch["labels"], tf.float32))
        return tf.concat(logits, axis=0), tf.concat(labels, axis=0)

    @property
    def shuffle_buffer(self) -> int:
        """Examples in each epoch's shuffle buffer."""
        # From memory a buffer of the whole epoch fills in moments, and it reads the
        # first pass to its end, which is what completes the cache.
        if self.cache_examples:
            return self.num_train
        return min(self.num_train, self.config.train.shuffle_buffer)

    def epoch_dataset(self, stage: int, epoch: int, skip_steps: int
                      ) -> tf.distribute.DistributedDataset:
        """The batches of `epoch` of `stage`, in an order of the seed, the stage and the
        epoch, after its first `skip_steps` steps (a resumed epoch). Stage 2 of the
        residual decoder gets batches of row indices into `head_outputs` where
        `cache_head_outputs`, else the examples' features and labels."""
        seed = self.config.train.seed * 1000 + stage * 100 + epoch
        shuffle_buffer = self.shuffle_buffer
        global_batch = self.config.train.batch_size

        def dataset_fn(ctx: tf.distribute.InputContext):
            indices = stage == 2 and self.cache_head_outputs
            if indices:  # the step gathers the rows of M_map's outputs
                examples = self.keep_head_outputs(ctx)
                ds = tf.data.Dataset.range(examples).shuffle(
                    examples, seed=seed, reshuffle_each_iteration=False)
            else:
                ds = self.examples(ctx).shuffle(shuffle_buffer, seed=seed,
                                                reshuffle_each_iteration=False)
            # Workers' shards may differ by a few examples; repeating lets every worker
            # take exactly `steps_per_epoch` steps, so none waits on the others forever.
            ds = ds.repeat().batch(ctx.get_per_replica_batch_size(global_batch),
                                   drop_remainder=True)
            local_replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines
            # `take` ends the input where the epoch ends; without it the prefetch starts
            # refilling the shuffle buffer for a pass no step reads.
            ds = ds.take(self.steps_per_epoch * local_replicas).skip(skip_steps * local_replicas)
            if indices:
                ds = ds.map(index_batch)
            elif self.parse_batch_fn is not None:
                ds = ds.map(self.parse_batch_fn, num_parallel_calls=INPUT_THREADS)
            # No autotuner, whose thread held each epoch's end; each op single-threaded.
            return ds.prefetch(INPUT_THREADS).with_options(
                without_autotuning(single_threaded_ops=True))

        return self.strategy.distribute_datasets_from_function(dataset_fn)
