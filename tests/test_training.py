"""Algorithm 1 under tf.distribute: stages, checkpoints, summaries, resuming, workers."""

import concurrent.futures
import dataclasses
import gc
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import ofrnn_tf
from ofrnn_tf.config.experiment import ExperimentConfig, RuntimeConfig
from ofrnn_tf.run_dir import IncompatibleRunError, RunDir, RunFacts
from ofrnn_tf.software import software_versions
from ofrnn_tf.training import run_state
from ofrnn_tf.training.checkpoints import describe_position
from ofrnn_tf.training.distribute import digest, settings_parts
from ofrnn_tf.training.step_log import LoggingWindow
from ofrnn_tf.training.trainer import NonFiniteLossError, Trainer
from ofrnn_tf.training.step_interrupts import StepInterrupts
from conftest import run_checked
from toy_run import TINY_TRAIN_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "_tiny_training_run.py")
SUBPROCESS_TIMEOUT_S = 240
N, M, K, C, BATCH = 64, 4, 6, 4, 16
STEPS_PER_EPOCH = N // BATCH
SCRIPTED_MAP = [0.40, 0.60]  # validation score after stage-1 epochs 1, 2
SCRIPTED_F1 = [0.30, 0.70, 0.50]  # validation score after stage-2 epochs 1, 2, 3


def synthetic_data(nan: bool = False) -> dict:
    rng = np.random.default_rng(0)
    labels = (rng.random((N, C)) < 0.4).astype("float32")
    labels[labels.sum(1) == 0, 0] = 1
    class_vectors = 2.0 * rng.normal(size=(C, K))
    features = rng.normal(size=(N, M, K)) + (labels @ class_vectors)[:, None, :]
    if nan:
        features[:] = np.nan
    return {"features": features.astype("float32"), "labels": labels}


def tiny_config(model=None, stage1=None, stage2=None, runtime=None) -> ExperimentConfig:
    # Algorithm 1's mechanics on the paper's model; the main job's has a test of its own.
    return ExperimentConfig().replace(
        model={"lstm_units": 8, "attention_units": 8, "fc_units": 8, "dropout": 0.0,
               "feature_dropout": 0.0, "head": "mean_linear", "decoder": "paper",
               "head_dropout": 0.0, "standardize_features": False, **(model or {})},
        stage1={"learning_rate": 1e-2, "epochs": len(SCRIPTED_MAP), **(stage1 or {})},
        stage2={"learning_rate": 1e-2, "epochs": len(SCRIPTED_F1), **(stage2 or {})},
        train={"batch_size": BATCH},
        runtime={"checkpoint_every": 100, "log_every": 1, **(runtime or {})})


def tiny_facts(**changes) -> RunFacts:
    facts = dict(label_names=tuple("abcd"), max_steps=3, label_order=None, small_area=None,
                 features_name="synthetic", features_fingerprint="f" * 64,
                 feature_shape=(2, 2, K), image_size=32, feature_layer="maps")
    facts.update(changes)
    return RunFacts(**facts)


def make_trainer(workdir: str, config: ExperimentConfig, data: dict, validate_fn=None,
                 validation_logits_fn=None, settings_before=None, records_mib=None) -> Trainer:
    def examples_fn(ctx):
        return tf.data.Dataset.from_tensor_slices(data).shard(
            ctx.num_input_pipelines, ctx.input_pipeline_id)

    run_dir = RunDir(workdir)
    run_dir.save(config, tiny_facts())
    return Trainer(config, tiny_facts(), run_dir, tf.distribute.get_strategy(), N, examples_fn,
                   validate_fn=validate_fn, progress=False, records_mib=records_mib,
                   validation_logits_fn=validation_logits_fn, settings_before=settings_before)


def test_every_epoch_reads_the_training_examples_in_another_order(tmp_path):
    """The shuffle seed takes the epoch: every epoch sees every example once, each in an
    order of its own, and a stage repeats it when resumed."""
    trainer = make_trainer(str(tmp_path), tiny_config(), synthetic_data())

    def order(stage, epoch):
        rows = [batch["features"].numpy()[:, 0, 0] for batch in
                trainer.inputs.epoch_dataset(stage, epoch, 0)]
        return np.concatenate(rows)

    first, second = order(1, 0), order(1, 1)
    assert len(first) == trainer.steps_per_epoch * BATCH
    assert not np.array_equal(first, second)
    assert len(set(first.tolist())) == len(first)  # no example twice in an epoch
    np.testing.assert_array_equal(order(1, 0), first)


def scripted_validation(validated: list):
    """A validate_fn returning the scripted scores, recording the weights it saw."""
    counts = {1: 0, 2: 0}

    def validate_fn(model, stage):
        validated.append((stage, weights(model.trainable_variables)))
        script = SCRIPTED_MAP if stage == 1 else SCRIPTED_F1
        value = script[counts[stage]]
        counts[stage] += 1
        return {"C-F1": value, "score": value}

    return validate_fn


def scripted_scores(stage2_scores: list, seen: list):
    """A validate_fn scoring stage 1 as `SCRIPTED_MAP` and stage 2 as `stage2_scores`,
    recording each stage and the weights it saw."""
    script = {1: iter(SCRIPTED_MAP), 2: iter(stage2_scores)}

    def validate_fn(model, stage):
        seen.append((stage, weights(model.trainable_variables)))
        return {"score": next(script[stage])}
    return validate_fn


def weights(variables) -> dict:
    """Values by path below the model (the model's own name differs between instances)."""
    return {v.path.split("/", 1)[1]: v.numpy().copy() for v in variables}


def changed(before: dict, after: dict) -> set:
    return {path for path in before if not np.array_equal(before[path], after[path])}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny run of both stages, with snapshots of the weights around every epoch."""
    workdir = str(tmp_path_factory.mktemp("run"))
    validated = []
    trainer = make_trainer(workdir, tiny_config(), synthetic_data(), scripted_validation(validated))
    epochs = []
    train_epoch = trainer._train_epoch

    def recording_train_epoch(stage):
        before = weights(trainer.model.weights)
        train_epoch(stage)
        epochs.append((stage, before, weights(trainer.model.weights)))

    trainer._train_epoch = recording_train_epoch
    model = trainer.train()
    return dict(workdir=workdir, trainer=trainer, model=model, epochs=epochs,
                validated=validated, final=weights(model.trainable_variables))


def scalars(workdir: str) -> dict:
    """{tag: [(step, value), ...]} from the run's TensorBoard event files."""
    found = {}
    for path in glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor))))
    return {tag: sorted(points) for tag, points in found.items()}


# -- Algorithm 1 ---------------------------------------------------------------------
def test_stage1_trains_only_m_map_and_stage2_leaves_it_frozen(run):
    model = run["model"]
    map_paths = set(weights(model.map_variables))
    decoder_paths = set(weights(model.decoder_variables))
    stages = [stage for stage, _, _ in run["epochs"]]
    assert stages == [1, 1, 2, 2, 2]
    for stage, before, after in run["epochs"]:
        moved = changed(before, after) & (map_paths | decoder_paths)
        if stage == 1:
            assert moved == map_paths
        else:
            assert moved == decoder_paths, decoder_paths - moved


def test_stage2_loss_decreases(run):
    losses = [value for _, value in scalars(run["workdir"])["loss/stage2"]]
    assert len(losses) == STEPS_PER_EPOCH * len(SCRIPTED_F1)
    first, last = np.mean(losses[:STEPS_PER_EPOCH]), np.mean(losses[-STEPS_PER_EPOCH:])
    assert np.all(np.isfinite(losses))
    assert last < 0.8 * first, (first, last)


def test_tensorboard_has_the_documented_tags(run):
    found = scalars(run["workdir"])
    expected = {"loss/stage1", "loss/stage2", "learning_rate/stage1", "learning_rate/stage2",
                "examples_per_second", "validation_stage1/score", "validation_stage2/score",
                "validation_stage2/C-F1"} | {f"loss_per_decoding_step/t{t}" for t in (1, 2, 3)}
    assert expected <= set(found), expected - set(found)
    assert len(found["loss/stage1"]) == 2 * STEPS_PER_EPOCH
    assert [v for _, v in found["validation_stage1/score"]] == pytest.approx(SCRIPTED_MAP)
    assert [v for _, v in found["validation_stage2/score"]] == pytest.approx(SCRIPTED_F1)
    # Stage 2 starts after stage 1's global steps; validation follows every epoch.
    assert found["loss/stage2"][0][0] == 2 * STEPS_PER_EPOCH + 1
    assert [s for s, _ in found["validation_stage2/score"]] == [
        (2 + e) * STEPS_PER_EPOCH for e in (1, 2, 3)]


def test_best_checkpoint_is_the_epoch_with_highest_validation_metric(run):
    best_epoch = int(np.argmax(SCRIPTED_F1)) + 1
    info = RunDir(run["workdir"]).load_best_info()
    assert info["stage"] == 2 and info["epoch"] == best_epoch
    assert info["global_step"] == (2 + best_epoch) * STEPS_PER_EPOCH
    assert info["validation"]["score"] == pytest.approx(max(SCRIPTED_F1))
    assert float(run["trainer"].best_metric) == pytest.approx(max(SCRIPTED_F1))
    stage2 = [w for stage, w in run["validated"] if stage == 2]
    saved = stage2[best_epoch - 1]
    assert changed(saved, stage2[-1])  # the last epoch is different ...
    assert not changed(saved, run["final"])  # ... and train() returns the best one
    loaded, config, _ = RunDir(run["workdir"]).load_model()
    assert config.replace(runtime=run["trainer"].config.to_dict()["runtime"]) == run["trainer"].config
    assert not changed(saved, weights(loaded.trainable_variables))


def test_stage2_starts_from_the_best_stage1_epoch(tmp_path):
    validated = []
    scores = iter([0.9, 0.1, 0.5, 0.6, 0.7])  # stage 1 is best after its first epoch

    def validate_fn(model, stage):
        validated.append((stage, weights(model.map_variables)))
        value = next(scores)
        return {"score": value}

    trainer = make_trainer(str(tmp_path), tiny_config(), synthetic_data(), validate_fn)
    model = trainer.train()
    stage1 = [w for stage, w in validated if stage == 1]
    assert changed(stage1[0], stage1[1])  # the second epoch moved M_map ...
    assert not changed(stage1[0], weights(model.map_variables))  # ... but the first is kept


@pytest.mark.slow
def test_a_stage_bar_says_what_its_numbers_are(tmp_path, capsys):
    """The loss, then the pace in images a second as the other bars write it (it was
    ``ex_s=…``: an abbreviation nothing explained, a dot where it was not measured)."""
    config = tiny_config(stage1={"epochs": 1}, stage2={"epochs": 1})
    trainer = make_trainer(str(tmp_path), config, synthetic_data())
    trainer.progress = True
    trainer.train()
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("stage ") and " 100% " in line]  # an epoch's end
    assert len(lines) == 2 and all(re.search(r", loss=\d+\.\d{4}(, \d+ img/s)?\]$", line)
                         for line in lines), lines
    assert any(line.endswith(" img/s]") for line in lines), lines


def test_main_job_model_standardises_its_features_then_trains(tmp_path):
    """The spatial head and residual decoder: feature statistics set once before stage 1
    (kept in the checkpoint), the cosine schedule decays, and both stages learn."""
    config = tiny_config(model={"head": "spatial", "decoder": "residual", "head_units": 8,
                                "standardize_features": True},
                         stage1={"schedule": "cosine", "epochs": 3},
                         stage2={"epochs": 3})
    data = synthetic_data()
    trainer = make_trainer(str(tmp_path), config, data)
    assert trainer.model.needs_adapting
    model = trainer.train()
    assert not model.needs_adapting
    flat = data["features"].reshape(-1, K)
    np.testing.assert_allclose(model.standardizer.mean.numpy(), flat.mean(0), rtol=1e-4, atol=1e-4)
    found = scalars(str(tmp_path))
    rates = [v for _, v in found["learning_rate/stage1"]]
    assert rates[0] > rates[-1] >= 0 and rates == sorted(rates, reverse=True)
    for stage in (1, 2):
        losses = [v for _, v in found[f"loss/stage{stage}"]]
        assert np.mean(losses[-STEPS_PER_EPOCH:]) < np.mean(losses[:STEPS_PER_EPOCH]), stage
    again = make_trainer(str(tmp_path), config, data)
    again.restore()
    assert not again.model.needs_adapting  # the statistics came back with the checkpoint


def test_cosine_schedule_decays_to_zero_over_the_stages_steps(tmp_path):
    """`--stageN.schedule=cosine`: Keras `CosineDecay` from the stage's rate to 0 over its
    epochs × steps per epoch, counted from the stage's first step."""
    config = tiny_config(stage1={"schedule": "cosine", "epochs": 3},
                         stage2={"schedule": "cosine", "epochs": 2, "learning_rate": 5e-3})
    make_trainer(str(tmp_path), config, synthetic_data()).train()
    found = scalars(str(tmp_path))
    start = 0
    for stage, stage_config in ((1, config.stage1), (2, config.stage2)):
        decay_steps = stage_config.epochs * STEPS_PER_EPOCH
        points = found[f"learning_rate/stage{stage}"]
        assert [step for step, _ in points] == list(range(start + 1, start + decay_steps + 1))
        # The rate each logged step trained at: the schedule at the stage's steps before
        # it (Keras' own `learning_rate` is the next step's, 0 at the stage's last point).
        initial = stage_config.learning_rate
        want = [initial * 0.5 * (1 + np.cos(np.pi * (step - 1 - start) / decay_steps))
                for step, _ in points]
        assert points[-1][1] > 0
        np.testing.assert_allclose([rate for _, rate in points], want, rtol=1e-5, atol=1e-9,
                                   err_msg=f"stage {stage}")
        start += decay_steps


@pytest.mark.slow
def test_a_cosine_stage_given_more_epochs_says_the_rate_it_goes_on_at(tmp_path, capsys):
    """The schedule decays over the stage's new epochs from its first step: a finished
    stage given more starts again from a rate above 0, which the log says."""
    config = lambda epochs: tiny_config(stage2={"schedule": "cosine", "epochs": epochs})
    make_trainer(str(tmp_path), config(2), synthetic_data()).train()
    capsys.readouterr()
    make_trainer(str(tmp_path), config(3), synthetic_data(), settings_before=config(2)).train()
    steps = 2 * STEPS_PER_EPOCH  # stage 2's, done; the schedule spans 3 epochs of them now
    rate = 1e-2 * 0.5 * (1 + np.cos(np.pi * steps / (3 * STEPS_PER_EPOCH)))
    assert (f"[train] stage 2's cosine schedule now decays over 3 epochs, not 2: from here it "
            f"trains at learning rate {rate:.3g}, where the 2-epoch schedule was at 0 (the "
            f"steps so far followed that one)") in capsys.readouterr().err
    first = len(SCRIPTED_MAP) * STEPS_PER_EPOCH + steps + 1  # the extension's first step
    assert dict(scalars(str(tmp_path))["learning_rate/stage2"])[first] == pytest.approx(rate)


@pytest.mark.slow
def test_stage2_trains_on_head_outputs_computed_once_as_it_would_on_the_features(tmp_path):
    """The residual decoder's stage 2 reads M_map's frozen outputs, computed once when they
    fit in --train.cache_records_mib; the run is the one it would be without them, up to
    their float16 storage."""
    data = synthetic_data()
    losses, finals = {}, {}
    for budget in (2048, 0):
        config = tiny_config(model={"head": "spatial", "decoder": "residual", "head_units": 8,
                                    "standardize_features": True},
                             stage1={"epochs": 1}, stage2={"epochs": 2}).replace(
            train={"batch_size": BATCH, "cache_records_mib": budget})
        workdir = str(tmp_path / str(budget))
        trainer = make_trainer(workdir, config, data)
        assert trainer.inputs.cache_head_outputs == (budget > 0)
        model = trainer.train()
        losses[budget] = [v for _, v in scalars(workdir)["loss/stage2"]]
        finals[budget] = weights(model.decoder_variables)
        if budget:
            cached = trainer.inputs.head_outputs
            head_features, scores = model.head_outputs(tf.constant(data["features"]))
            assert cached["head_features"].dtype == tf.float16
            np.testing.assert_allclose(cached["head_features"].numpy(), head_features.numpy(),
                                       rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(cached["scores"].numpy(), scores.numpy(), rtol=1e-5)
            np.testing.assert_array_equal(cached["labels"].numpy(), data["labels"])
        else:
            assert not trainer.inputs.head_outputs
    assert len(losses[0]) == 2 * STEPS_PER_EPOCH
    np.testing.assert_allclose(losses[2048], losses[0], rtol=1e-2)
    for path, value in finals[0].items():
        np.testing.assert_allclose(finals[2048][path], value, rtol=1e-2, atol=1e-3)


def test_head_outputs_are_written_batch_by_batch_and_a_changed_split_is_named():
    from ofrnn_tf.training.head_outputs import write_rows

    kept = {}
    first = {"head_features": tf.ones([2, 3], tf.float16), "labels": tf.constant([[1], [2]])}
    second = {"head_features": tf.zeros([2, 3], tf.float16), "labels": tf.constant([[3], [4]])}
    assert write_rows(kept, first, 0, 4) == 2
    assert kept["head_features"].shape == (4, 3) and kept["head_features"].dtype == tf.float16
    assert write_rows(kept, second, 2, 4) == 4
    np.testing.assert_array_equal(kept["labels"].numpy(), [[1], [2], [3], [4]])
    np.testing.assert_array_equal(kept["head_features"].numpy()[:, 0], [1, 1, 0, 0])
    with pytest.raises(ValueError, match="gave 6 examples where 4 were counted: were the "
                                         "feature shards changed during the run"):
        write_rows(kept, first, 4, 4)


RESIDUAL_MODEL = {"head": "spatial", "decoder": "residual", "head_units": 8,
                  "standardize_features": True}


def residual_trainer(path, data, mixed_precision=False) -> Trainer:
    config = tiny_config(model=RESIDUAL_MODEL, stage1={"epochs": 1}, stage2={"epochs": 1},
                         runtime={"mixed_precision": mixed_precision})
    return make_trainer(str(path), config, data)


@pytest.mark.parametrize("mixed_precision", [False, True])
def test_an_input_pipeline_of_several_keeps_the_head_outputs_of_its_share(tmp_path,
                                                                           mixed_precision):
    data = synthetic_data()
    trainer = residual_trainer(tmp_path, data, mixed_precision)
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
    assert trainer.inputs.keep_head_outputs(ctx) == N // 2
    np.testing.assert_array_equal(trainer.inputs.head_outputs["labels"].numpy(),
                                  data["labels"][1::2])
    head_features, _ = trainer.model.head_outputs(tf.constant(data["features"][1::2]))
    np.testing.assert_allclose(trainer.inputs.head_outputs["head_features"].numpy(),
                               tf.cast(head_features, tf.float16).numpy(), rtol=1e-2, atol=1e-2)


def test_head_outputs_of_fewer_records_than_counted_or_of_none_are_named(tmp_path):
    short = {key: value[:N - 3] for key, value in synthetic_data().items()}
    with pytest.raises(ValueError, match=f"gave {N - 3} examples where {N} were counted"):
        residual_trainer(tmp_path / "short", short).inputs.keep_head_outputs(
            tf.distribute.InputContext())
    trainer = residual_trainer(tmp_path / "empty", synthetic_data())
    with pytest.raises(ValueError, match=f"input pipeline {N + 1} of {N + 1} holds no "
                                         f"training example: train with fewer workers"):
        trainer.inputs.keep_head_outputs(tf.distribute.InputContext(num_input_pipelines=N + 1,
                                                              input_pipeline_id=N))


# M_map's outputs of the tiny residual run: N × (positions × (2 × head_units + 4C) + 4C) bytes.
TINY_HEAD_OUTPUTS_MIB = N * (4 * (2 * 8 + 4 * C) + 4 * C) / 2 ** 20


@pytest.mark.parametrize("records_mib, reads", [(0.5, 1), (1 - TINY_HEAD_OUTPUTS_MIB / 2, 2)],
                         ids=["both_fit", "one_at_a_time"])
def test_the_records_and_m_maps_outputs_are_kept_within_one_budget(tmp_path, records_mib,
                                                                    reads):
    """--train.cache_records_mib bounds what training keeps at once: records and M_map's
    outputs that each fit but not together are never held together. The records kept in
    stage 1 are let go before the outputs are computed, from the shards read once more."""
    config = tiny_config(model=RESIDUAL_MODEL, stage1={"epochs": 1}, stage2={"epochs": 1}
                         ).replace(train={"batch_size": BATCH, "cache_records_mib": 1})
    trainer = make_trainer(str(tmp_path), config, synthetic_data(), records_mib=records_mib)
    assert trainer.inputs.cache_examples and trainer.inputs.cache_head_outputs
    assert trainer.inputs.head_outputs_mib == pytest.approx(TINY_HEAD_OUTPUTS_MIB)
    calls, examples_fn = [], trainer.inputs.examples_fn
    trainer.inputs.examples_fn = lambda ctx: calls.append(ctx) or examples_fn(ctx)
    records_alive, head_outputs = [], trainer.model.head_outputs

    def traced_head_outputs(features):  # traced once, at the pass's first batch
        gc.collect()
        records_alive.append(kept_records() is not None)
        return head_outputs(features)

    trainer.model.head_outputs = traced_head_outputs
    trainer._adapt()
    kept_records = weakref.ref(trainer.inputs._cached_examples[1, 0])
    trainer.train()
    assert records_alive == [reads == 1] and len(calls) == reads
    assert not trainer.inputs._cached_examples and kept_records() is None  # let go after the pass


def test_the_memory_budget_is_capped_at_a_third_of_the_memory_the_process_may_use(tmp_path):
    from ofrnn_tf.host_limits import memory_limit_mib
    from ofrnn_tf.training.memory import memory_budget_mib

    def write(path, text):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    cgroups, proc = tmp_path / "cgroup", tmp_path / "proc"
    write(proc / "meminfo", "MemTotal:       8000000 kB\nMemAvailable:    3145728 kB\n")
    write(proc / "self" / "cgroup", "0::/jobs/train\n")
    write(cgroups / "jobs" / "train" / "memory.max", "max\n")  # no limit: MemAvailable
    assert memory_limit_mib(str(cgroups), str(proc)) == (3072, "MemAvailable in /proc/meminfo")
    write(cgroups / "jobs" / "memory.max", f"{1300 * 2 ** 20}\n")  # its parent's limit
    limit = memory_limit_mib(str(cgroups), str(proc))
    assert limit == (1300, f"the limit of its cgroup, {cgroups / 'jobs' / 'memory.max'}")
    budget, capped_by = memory_budget_mib(2048, limit)
    assert budget == pytest.approx(1300 / 3)
    assert capped_by == (f"a third of the 1300 MiB this process may use (the limit of its "
                         f"cgroup, {cgroups / 'jobs' / 'memory.max'})")
    assert memory_budget_mib(256, limit) == (256, None) and memory_budget_mib(0, limit) == (0, None)
    # cgroup v1: the memory controller's hierarchy, "no limit" written as a huge number.
    write(proc / "self" / "cgroup", "4:memory:/docker/abc\n1:cpu:/docker/abc\n")
    write(cgroups / "memory" / "memory.limit_in_bytes", f"{4 * 2 ** 30}\n")
    write(cgroups / "memory" / "docker" / "abc" / "memory.limit_in_bytes", f"{2 ** 63 - 4096}\n")
    assert memory_limit_mib(str(cgroups), str(proc))[0] == 4096
    # Neither readable (macOS): the flag's value stands.
    assert memory_limit_mib(str(tmp_path / "none"), str(tmp_path / "none")) is None
    assert memory_budget_mib(2048, None) == (2048, None)


def test_a_capped_budget_says_what_it_leaves_out_of_memory(tmp_path, monkeypatch, capsys):
    from ofrnn_tf.training import inputs
    monkeypatch.setattr(inputs, "memory_limit_mib", lambda: (1536, "MemAvailable"))
    config = tiny_config(model=RESIDUAL_MODEL, stage1={"epochs": 1}, stage2={"epochs": 1})
    trainer = make_trainer(str(tmp_path), config, synthetic_data(), records_mib=1000)
    assert trainer.inputs.memory_budget_mib == 512
    assert not trainer.inputs.cache_examples and trainer.inputs.cache_head_outputs
    assert ("[train] --train.cache_records_mib=2048 is capped at 512 MiB, a third of the 1536 "
            "MiB this process may use (MemAvailable): the training records (1000 MiB) are not "
            "kept in memory (set --train.cache_records_mib to at most 512 to decide what is)"
            ) in capsys.readouterr().err
    make_trainer(str(tmp_path / "small"), config, synthetic_data(), records_mib=256)
    assert "capped" not in capsys.readouterr().err  # nothing left out: no line


def test_the_label_context_reads_the_kept_head_outputs_as_it_reads_the_features(tmp_path):
    trainer = residual_trainer(tmp_path, synthetic_data())
    logits, labels = trainer.inputs.training_map_logits()
    trainer.inputs.cache_head_outputs = False
    from_features, same_labels = trainer.inputs.training_map_logits()
    np.testing.assert_allclose(logits.numpy(), from_features.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(labels.numpy(), same_labels.numpy())


@pytest.mark.parametrize("decoder, budget", [("paper", 0), ("residual", 0), ("residual", 2048)])
def test_stage2_loss_takes_the_configured_attention_penalty(tmp_path, monkeypatch, decoder,
                                                             budget):
    from ofrnn_tf.modeling.model import OrderFreeRNN
    seen = []
    sequence_loss = OrderFreeRNN.sequence_loss

    def recording(self, *args, **kwargs):
        seen.append((kwargs.get("attention_penalty"), kwargs.get("attention_penalty_form")))
        return sequence_loss(self, *args, **kwargs)

    monkeypatch.setattr(OrderFreeRNN, "sequence_loss", recording)
    model = ({"head": "spatial", "decoder": "residual", "head_units": 8} if decoder == "residual"
             else {})
    config = tiny_config(model=model, stage1={"epochs": 1}, stage2={"epochs": 1}).replace(
        train={"batch_size": BATCH, "cache_records_mib": budget, "attention_penalty": 0.5,
               "attention_penalty_form": "overlap"})
    trainer = make_trainer(str(tmp_path), config, synthetic_data())
    assert trainer.inputs.cache_head_outputs == (decoder == "residual" and budget > 0)  # both paths
    trainer.train()
    assert seen and set(seen) == {(0.5, "overlap")}


def context_config(epochs: int = 3, patience: int = 0) -> ExperimentConfig:
    return tiny_config(model={"head": "spatial", "decoder": "residual", "head_units": 8,
                              "standardize_features": True, "label_context_units": 8},
                       stage1={"epochs": 2}, stage2={"epochs": 1}).replace(
        label_context={"learning_rate": 1e-2, "epochs": epochs, "patience": patience})


def test_label_context_is_fitted_between_the_stages_and_its_best_epoch_kept(tmp_path):
    """After stage 1 the label context is fitted over the frozen best M_map and chosen by
    the stage-1 validation score; stage 2 then starts from both."""
    validated = []
    scores = iter([0.4, 0.6,  # stage 1
                   0.6, 0.5, 0.9, 0.7,  # M_map alone, then label-context epochs 1-3
                   0.5])  # stage 2

    def validate_fn(model, stage):
        validated.append((stage, weights(model.map_variables), weights(model.context_variables)))
        return {"score": next(scores)}

    trainer = make_trainer(str(tmp_path), context_config(), synthetic_data(), validate_fn)
    model = trainer.train()
    assert [stage for stage, _, _ in validated] == [1] * 6 + [2]
    _, map_after_stage1, untrained = validated[2]
    for _, map_weights, _ in validated[2:]:  # M_map stays frozen from here on
        assert not changed(map_after_stage1, map_weights)
    assert not changed(map_after_stage1, weights(model.map_variables))
    fitted = [context for _, _, context in validated[3:6]]
    assert changed(untrained, fitted[0]) and changed(fitted[1], fitted[2])
    assert not changed(fitted[1], weights(model.context_variables))  # epoch 2 scored best
    assert not changed(fitted[1], validated[6][2])  # ... and stage 2 read that context
    assert len(scalars(str(tmp_path))["label_context_by_epoch/validation_score"]) == 3
    reloaded = make_trainer(str(tmp_path), context_config(), synthetic_data())
    reloaded.best_manager.checkpoint.restore(reloaded.best_manager.latest_checkpoint)
    assert not changed(fitted[1], weights(reloaded.model.context_variables))


@pytest.mark.slow
@pytest.mark.slow
def test_the_label_context_bar_says_what_its_numbers_are(tmp_path, capsys):
    """Its last line gives the epoch's loss and validation score in words (it was
    ``val=``, an abbreviation nothing explained)."""
    scores = iter([0.4, 0.6, 0.6, 0.5, 0.9, 0.7, 0.5])
    trainer = make_trainer(str(tmp_path), context_config(), synthetic_data(),
                           lambda model, stage: {"score": next(scores)})
    trainer.progress = True
    trainer.train()
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("label context")]
    assert lines and re.search(r"3/3 .*, loss=\d+\.\d{4}, validation score=0\.70\]$",
                               lines[-1]), lines


def test_the_label_context_fit_is_scored_on_m_maps_validation_logits_computed_once(tmp_path):
    """M_map is frozen while the context is fitted: scoring the context on its validation
    logits, computed once, gives the scores (and so the epoch) that running the whole
    model every epoch gives."""
    from ofrnn_tf.metrics import mean_average_precision

    val = synthetic_data()
    x, y = tf.constant(val["features"][:64]), val["labels"][:64]
    calls = []

    def validate_fn(model, stage):
        calls.append(stage)
        return {"score": mean_average_precision(y, tf.sigmoid(model(x)).numpy())}

    def validation_logits_fn(model):
        calls.append("logits")
        return model.map_logits(x).numpy(), y

    config = context_config(epochs=4)
    runs = {}
    for name, logits_fn in (("whole model", None), ("logits once", validation_logits_fn)):
        calls.clear()
        model = make_trainer(str(tmp_path / name.replace(" ", "_")), config, synthetic_data(),
                             validate_fn, logits_fn).train()
        runs[name] = (list(calls), weights(model.context_variables), [
            v for _, v in scalars(str(tmp_path / name.replace(" ", "_")))[
                "label_context_by_epoch/validation_score"]])
    assert runs["whole model"][0] == [1, 1] + [1] * 5 + [2]  # stage 1, M_map, 4 epochs
    assert runs["logits once"][0] == [1, 1, "logits", 2]
    np.testing.assert_allclose(runs["logits once"][2], runs["whole model"][2], atol=1e-4)
    assert not changed(runs["logits once"][1], runs["whole model"][1])


def test_a_jointly_trained_label_context_learns_in_stage_1_without_a_separate_fit(tmp_path):
    validated = []

    def validate_fn(model, stage):
        validated.append((stage, weights(model.label_context.trainable_variables)))
        return {"score": float(len(validated))}  # every epoch scores best

    config = context_config().replace(model={"label_context_training": "joint"})
    trainer = make_trainer(str(tmp_path), config, synthetic_data(), validate_fn)
    untrained = weights(trainer.model.label_context.trainable_variables)
    trainer.train()
    assert [stage for stage, _ in validated] == [1, 1, 2]  # no label-context epochs
    assert changed(untrained, validated[0][1]) and changed(validated[0][1], validated[1][1])
    assert not changed(validated[1][1], validated[2][1])  # frozen in stage 2
    assert "label_context_by_epoch/validation_score" not in scalars(str(tmp_path))


@pytest.mark.parametrize("cache_mib", [2048, 0], ids=["kept_head_outputs", "features"])
def test_label_context_is_fitted_on_m_maps_logits_of_the_whole_training_split(tmp_path, cache_mib):
    data = synthetic_data()
    trainer = make_trainer(str(tmp_path), context_config().replace(
        train={"batch_size": BATCH, "cache_records_mib": cache_mib}), data)
    assert trainer.inputs.cache_head_outputs == bool(cache_mib)
    trainer._adapt()
    logits, labels = trainer.inputs.training_map_logits()
    want = trainer.model.map_logits(tf.constant(data["features"])).numpy()
    np.testing.assert_allclose(logits.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels.numpy(), data["labels"])


@pytest.mark.parametrize("context_scores", [[0.5, 0.55, 0.3], [0.6, 0.6, 0.6]],
                         ids=["below", "ties"])
def test_label_context_that_never_beats_m_map_on_validation_is_left_unchanged(
        tmp_path, context_scores):
    # It must beat M_map alone (the third score, 0.6) to be kept.
    scores = iter([0.4, 0.6, 0.6, *context_scores, 0.5])

    trainer = make_trainer(str(tmp_path), context_config(), synthetic_data(),
                           lambda model, stage: {"score": next(scores)})
    model = trainer.train()
    x = tf.constant(synthetic_data()["features"])
    np.testing.assert_array_equal(model(x).numpy(), model.map_logits(x).numpy())


@pytest.mark.slow
def test_a_run_stopped_during_the_label_context_fit_refits_it_the_same(tmp_path):
    data = synthetic_data()

    def validate_fn(model, stage):  # a real score: the mAP of v_prob on the training data
        from ofrnn_tf.metrics import mean_average_precision
        return {"score": mean_average_precision(
            data["labels"], tf.sigmoid(model(tf.constant(data["features"]))).numpy())}

    whole = make_trainer(str(tmp_path / "whole"), context_config(), data, validate_fn).train()
    calls = []

    def stopping_validate_fn(model, stage):
        calls.append(stage)
        if len(calls) == 5:  # stage 1's two epochs, M_map alone, context epoch 1, then stop
            raise KeyboardInterrupt
        return validate_fn(model, stage)

    stopped = make_trainer(str(tmp_path / "stopped"), context_config(), data, stopping_validate_fn)
    with pytest.raises(KeyboardInterrupt):
        stopped.train()
    resumed = make_trainer(str(tmp_path / "stopped"), context_config(), data, validate_fn)
    assert resumed.restore() and int(resumed.stage) == 1
    model = resumed.train()
    want = weights(whole.trainable_variables)
    for path, value in weights(model.trainable_variables).items():
        np.testing.assert_allclose(value, want[path], rtol=1e-5, atol=1e-6, err_msg=path)


@pytest.mark.slow
def test_a_run_stopped_after_the_label_context_fit_refits_it_from_the_same_start(
        tmp_path, monkeypatch):
    """Stopped after the fit saved its context in best/ but before the checkpoint ending
    stage 1: the rerun restores best/ and must not start its refit from that context."""
    data = synthetic_data()
    scores = [0.4, 0.6, 0.6, 0.5, 0.9, 0.7]  # stage 1, M_map alone, context epochs 1-3

    def scripted(values, seen):
        values = iter(values)

        def validate_fn(model, stage):
            seen.append(weights(model.context_variables))
            return {"score": next(values)}
        return validate_fn

    whole = make_trainer(str(tmp_path / "whole"), context_config(), data,
                         scripted(scores + [0.5], [])).train()
    fit = Trainer._train_label_context

    def stopping_fit(self):
        fit(self)
        raise KeyboardInterrupt  # after the fit, before the checkpoint

    monkeypatch.setattr(Trainer, "_train_label_context", stopping_fit)
    stopped = make_trainer(str(tmp_path / "stopped"), context_config(), data, scripted(scores, []))
    untrained = weights(stopped.model.context_variables)
    with pytest.raises(KeyboardInterrupt):
        stopped.train()
    monkeypatch.setattr(Trainer, "_train_label_context", fit)
    seen = []
    resumed = make_trainer(str(tmp_path / "stopped"), context_config(), data,
                           scripted(scores[2:] + [0.5], seen))
    model = resumed.train()
    assert not changed(untrained, seen[0])  # M_map alone, before the refit's first epoch
    want = weights(whole.trainable_variables)
    for path, value in weights(model.trainable_variables).items():
        np.testing.assert_allclose(value, want[path], rtol=1e-5, atol=1e-6, err_msg=path)


@pytest.mark.slow
def test_a_failed_validation_loses_no_training_and_the_rerun_redoes_only_it(tmp_path):
    data = synthetic_data()
    whole = make_trainer(str(tmp_path / "whole"), tiny_config(), data, scripted_validation([]))
    whole_model = whole.train()
    validate = scripted_validation([])
    calls = []

    def failing(model, stage):
        calls.append(stage)
        if len(calls) == 4:  # after stage-2 epoch 2
            raise RuntimeError("validation failed")
        return validate(model, stage)

    workdir = str(tmp_path / "stopped")
    with pytest.raises(RuntimeError, match="validation failed"):
        make_trainer(workdir, tiny_config(), data, failing).train()
    # The epoch's training is checkpointed, all its steps done (default checkpoint_every
    # is larger than an epoch).
    stopped_at = RunDir(workdir).checkpoints_dir()
    assert tf.train.latest_checkpoint(stopped_at).endswith(f"ckpt-{4 * STEPS_PER_EPOCH}")
    rest = iter(SCRIPTED_F1[1:])

    def resumed_validate_fn(model, stage):
        calls.append(stage)
        value = next(rest)
        return {"C-F1": value, "score": value}

    resumed = make_trainer(workdir, tiny_config(), data, resumed_validate_fn)
    assert resumed.restore()
    assert resumed.position() == (f"stage 2 epoch 2/3, step {STEPS_PER_EPOCH}/{STEPS_PER_EPOCH} "
                                  f"(trained, not yet validated)")
    model = resumed.train()
    assert calls[3:] == [2, 2, 2]  # stage-2 epoch 2 again, then epoch 3
    losses = scalars(workdir)["loss/stage2"]  # every step trained once, over both processes
    assert [step for step, _ in losses] == list(range(2 * STEPS_PER_EPOCH + 1,
                                                      5 * STEPS_PER_EPOCH + 1))
    want = weights(whole_model.trainable_variables)
    for path, value in weights(model.trainable_variables).items():
        np.testing.assert_allclose(value, want[path], rtol=1e-5, atol=1e-6, err_msg=path)
    assert RunDir(workdir).load_best_info() == RunDir(str(tmp_path / "whole")).load_best_info()


def _signalling_steps(trainer: Trainer, signum: int, after: int) -> None:
    """Makes the trainer's steps send `signum` to this process once `after` steps ran
    (from inside the step, as a Ctrl-C or SIGTERM landing while it runs)."""
    make, calls = trainer._make_train_step, []

    def make_signalling(stage):
        step = make(stage)

        def signalling(iterator):
            result = step(iterator)
            calls.append(stage)
            if len(calls) == after:
                os.kill(os.getpid(), signum)
            return result

        return signalling

    trainer._make_train_step = make_signalling


def _train_until_stopped_by(trainer: Trainer, signum: int) -> list:
    """Trains with `signum` handled as a command's handler does (`ofrnn_tf.cli.runner`:
    it raises KeyboardInterrupt; installed here, as a test worker may ignore SIGINT) until
    the signal stops the training; returns the signals the handler was handed, and checks
    the hold put the handler back."""
    handed_on = []

    def command_handler(number, frame):
        handed_on.append(number)
        raise KeyboardInterrupt

    previous = signal.signal(signum, command_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
        assert signal.getsignal(signum) is command_handler  # put back
    finally:
        signal.signal(signum, previous)
    return handed_on


@pytest.mark.slow
@pytest.mark.parametrize("signum, after", [
    (signal.SIGINT, 3), (signal.SIGTERM, 2 * STEPS_PER_EPOCH + 2)],
    ids=["sigint-stage1", "sigterm-stage2"])
def test_ctrl_c_or_sigterm_mid_epoch_saves_the_step_it_lands_in(tmp_path, run, capsys,
                                                                signum, after):
    # checkpoint_every (100) is longer than the run: only the signal can save mid-epoch.
    data, workdir = synthetic_data(), str(tmp_path / "stopped")
    trainer = make_trainer(workdir, tiny_config(), data, scripted_validation([]))
    _signalling_steps(trainer, signum, after)
    assert _train_until_stopped_by(trainer, signum) == [signum]
    assert tf.train.latest_checkpoint(RunDir(workdir).checkpoints_dir()).endswith(f"ckpt-{after}")
    said = "SIGTERM" if signum == signal.SIGTERM else "SIGINT (Ctrl-C)"
    assert f"[train] {said}: stopped after global step {after}, saved as ckpt-{after}" in (
        capsys.readouterr().err)

    resumed = make_trainer(workdir, tiny_config(), data, scripted_validation([]))
    assert resumed.restore()
    stage, step = (1, after) if after <= 2 * STEPS_PER_EPOCH else (2, after - 2 * STEPS_PER_EPOCH)
    assert resumed.position().startswith(
        f"stage {stage} epoch 1/{3 if stage == 2 else 2}, step {step}/{STEPS_PER_EPOCH}")
    model = resumed.train()
    for path, value in weights(model.trainable_variables).items():
        np.testing.assert_allclose(value, run["final"][path], rtol=1e-5, atol=1e-6,
                                   err_msg=path)


@pytest.mark.parametrize("validated", [True, False], ids=["validated", "not validated"])
def test_a_sigterm_during_the_checkpoint_ending_an_epoch_waits_for_it(tmp_path, capsys,
                                                                      validated):
    # Between the epoch's last step and its checkpoint the signal ended the run at once:
    # no checkpoint of the epoch (its steps trained again), or half a one (a `_temp` folder).
    workdir = str(tmp_path)
    validate_fn = scripted_validation([]) if validated else None
    trainer = make_trainer(workdir, tiny_config(), synthetic_data(), validate_fn)
    save = trainer.manager.save

    def save_signalled(checkpoint_number=None):
        if checkpoint_number == STEPS_PER_EPOCH:  # the first epoch's end
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        return save(checkpoint_number=checkpoint_number)

    trainer.manager.save = save_signalled
    assert _train_until_stopped_by(trainer, signal.SIGTERM) == [signal.SIGTERM]
    checkpoints = RunDir(workdir).checkpoints_dir()
    assert tf.train.latest_checkpoint(checkpoints).endswith(f"ckpt-{STEPS_PER_EPOCH}")
    assert not glob.glob(os.path.join(checkpoints, "*_temp*"))
    assert (f"[train] SIGTERM: stopped after global step {STEPS_PER_EPOCH}, saved as "
            f"ckpt-{STEPS_PER_EPOCH}") in capsys.readouterr().err
    resumed = make_trainer(workdir, tiny_config(), synthetic_data(), validate_fn)
    assert resumed.restore()
    # Validated, the rerun validates the epoch its checkpoint holds whole; else goes on.
    assert resumed.position().startswith(
        f"stage 1 epoch 1/2, step {STEPS_PER_EPOCH}/{STEPS_PER_EPOCH}" if validated else
        "stage 1 after epoch 1/2")


def test_a_signal_while_stage_2_builds_its_input_stops_there(tmp_path):
    # Held from the epoch's start, it waited for M_map's pass over the whole training split,
    # a step and a checkpoint: seconds to minutes of a container's grace.
    config = tiny_config(model={"decoder": "residual", "head": "spatial"})
    trainer = make_trainer(str(tmp_path), config, synthetic_data(), scripted_validation([]))
    assert trainer.inputs.cache_head_outputs
    keep, steps = trainer.inputs.keep_head_outputs, []

    def keep_interrupted(context):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        return keep(context)

    trainer.inputs.keep_head_outputs = keep_interrupted
    make = trainer._make_train_step

    def counted(stage):
        step = make(stage)
        return lambda iterator: (steps.append(stage), step(iterator))[1]

    trainer._make_train_step = counted
    assert _train_until_stopped_by(trainer, signal.SIGINT) == [signal.SIGINT]
    assert 2 not in steps  # not one stage-2 step after the Ctrl-C


def test_a_second_signal_stops_at_once_and_an_ignored_one_stays_ignored():
    stops = []

    def command_handler(number, frame):
        stops.append(number)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, command_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with StepInterrupts() as held:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
                assert held.pending == signal.SIGTERM and stops == []
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
        assert stops == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is command_handler
        with pytest.raises(KeyboardInterrupt):  # off: at once, as without it
            with StepInterrupts(enabled=False):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with StepInterrupts() as held:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        assert held.pending is None and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_stop_whose_save_fails_puts_the_handlers_back():
    def failing_save(signum):
        raise OSError(28, "No space left on device")

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(OSError, match="No space left"):
        with StepInterrupts(on_stop=failing_save):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_held_sigterm_under_the_default_action_ends_the_process_as_the_signal_does():
    script = ("import os, signal\n"
              "from ofrnn_tf.training.step_interrupts import StepInterrupts\n"
              "with StepInterrupts() as held:\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    print('step done', held.pending == signal.SIGTERM, flush=True)\n"
              "print('not reached', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGTERM, done.stderr[-2000:]
    assert done.stdout == "step done True\n"


@pytest.mark.slow
def test_a_finished_stage_given_more_epochs_goes_on_from_its_last_epoch(tmp_path, capsys):
    """The stage-end checkpoint holds the last epoch's weights and Adam state, not the
    best epoch's: raising --stage2.epochs trains on as a longer run would have."""
    data = synthetic_data()
    scores = [0.70, 0.30, 0.50]  # stage 2's best epoch is its first
    config = lambda epochs: tiny_config(stage2={"epochs": epochs, "schedule": "constant"})

    straight = []
    make_trainer(str(tmp_path / "straight"), config(3), data,
                 scripted_scores(scores, straight)).train()
    short, workdir = [], str(tmp_path / "extended")
    model = make_trainer(workdir, config(2), data, scripted_scores(scores[:2], short)).train()
    assert not changed(short[2][1], weights(model.trainable_variables))  # returns the best ...
    again = make_trainer(workdir, config(2), data)
    assert again.restore()  # ... and checkpoints the last
    assert not changed(short[3][1], weights(again.model.trainable_variables))
    assert again.position() == "training finished (stage 2 after epoch 2)"
    assert "stage 3" not in capsys.readouterr().err

    extended = []
    make_trainer(workdir, config(3), data, scripted_scores(scores[2:], extended)).train()
    assert [stage for stage, _ in extended] == [2]  # one more epoch, validated
    for path, value in extended[0][1].items():
        np.testing.assert_allclose(value, straight[-1][1][path], rtol=1e-5, atol=1e-6,
                                   err_msg=path)
    assert RunDir(workdir).load_best_info() == RunDir(str(tmp_path / "straight")).load_best_info()


@pytest.mark.slow
def test_a_rerun_at_other_decoding_settings_scores_the_best_epoch_again_first(tmp_path, capsys):
    """A stage-2 score is made at the run's decoding settings: a rerun that changes them
    scores the best epoch so far (best/) again at the new ones, and that is what a new
    epoch must beat; training goes on from the last epoch's weights as it would have."""
    data = synthetic_data()
    config = lambda epochs, objective: tiny_config(
        stage2={"epochs": epochs, "schedule": "constant"}).replace(
        decoding={"calibration_objective": objective})

    straight = []
    make_trainer(str(tmp_path / "straight"), config(3, "o_f1"), data,
                 scripted_scores([0.2, 0.1, 0.5], straight)).train()
    short, workdir = [], str(tmp_path / "changed")
    make_trainer(workdir, config(2, "mean_f1"), data, scripted_scores([0.7, 0.3], short)).train()
    capsys.readouterr()
    again = []  # the best epoch at o_f1 (0.2), then epoch 3, better than it, not than 0.7
    make_trainer(workdir, config(3, "o_f1"), data, scripted_scores([0.2, 0.5], again)).train()
    assert [stage for stage, _ in again] == [2, 2]
    assert not changed(short[2][1], again[0][1])  # stage 2's epoch 1, from best/
    for path, value in again[1][1].items():  # epoch 3, trained on from epoch 2
        np.testing.assert_allclose(value, straight[-1][1][path], rtol=1e-5, atol=1e-6,
                                   err_msg=path)
    best = RunDir(workdir).load_best_info()
    assert (best["stage"], best["epoch"], best["validation"]) == (2, 3, {"score": 0.5})
    assert ("[train] the best stage-2 epoch so far (epoch 1) scored 0.70 on validation at K=3, "
            "min_labels 1, objective mean_f1; scored again at the run's K=3, min_labels 1, "
            "objective o_f1: 0.20, the score the epochs from here must beat"
            ) in capsys.readouterr().err


def test_patience_stops_a_stage_early(tmp_path, capsys):
    calls = []

    def validate_fn(model, stage):
        calls.append(stage)
        return {"score": 1.0 if len(calls) == 1 else 0.5}  # never better after the first

    config = tiny_config(stage1={"epochs": 5, "patience": 2}, stage2={"epochs": 4, "patience": 1})
    make_trainer(str(tmp_path), config, synthetic_data(), validate_fn).train()
    assert calls == [1, 1, 1, 2, 2]
    said = capsys.readouterr().err
    assert ("[train] stage 1: stopped after epoch 3 of 5, no better validation score in 2 "
            "epochs (--stage1.patience); its best epoch, 1, is kept") in said, said
    assert ("[train] stage 2: stopped after epoch 2 of 4, no better validation score in 1 "
            "epoch (--stage2.patience); its best epoch, 1, is kept") in said, said


def test_more_epochs_for_a_stage_its_patience_ended_are_refused_unless_it_is_raised(tmp_path):
    script = {1: iter(SCRIPTED_MAP), 2: iter([0.7, 0.3])}
    config = lambda epochs, patience: tiny_config(stage2={"epochs": epochs,
                                                          "patience": patience})
    workdir = str(tmp_path)
    make_trainer(workdir, config(3, 1), synthetic_data(),
                 lambda model, stage: {"score": next(script[stage])}).train()  # 2 epochs of 3
    # Its patience would end it at once: the rerun would record 6 epochs and train none.
    with pytest.raises(IncompatibleRunError, match=(
            r"stage2.epochs: 3 in the run folder vs 6 now \(no epoch of stage 2 beat its best "
            r"in the last 1, which --stage2.patience=1 stops it at: more epochs train nothing "
            r"unless the patience is raised, or 0\)")):
        run_state.check_finished_stages(RunDir(workdir), config(6, 1), "train")
    for patience in (2, 0):
        run_state.check_finished_stages(RunDir(workdir), config(6, patience), "train")
    run_state.check_finished_stages(RunDir(workdir), config(3, 1), "train")  # as it was


def test_patience_counts_the_epochs_since_the_latest_best_one(tmp_path):
    # Scores 0.5, 0.4, 0.6, 0.55: two epochs without a better score, but the second
    # follows a new best, so with patience 2 stage 1 goes on to its fifth epoch.
    script = {1: iter([0.5, 0.4, 0.6, 0.55, 0.7]), 2: iter([0.5])}
    calls = []

    def validate_fn(model, stage):
        calls.append(stage)
        return {"score": next(script[stage])}

    config = tiny_config(stage1={"epochs": 5, "patience": 2}, stage2={"epochs": 1})
    trainer = make_trainer(str(tmp_path), config, synthetic_data(), validate_fn)
    trainer.train()
    assert calls == [1, 1, 1, 1, 1, 2]
    assert RunDir(str(tmp_path)).load_best_info()["stage"] == 2


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    config = tiny_config(stage1={"epochs": 1}, stage2={"epochs": 1})
    trainer = make_trainer(str(tmp_path), config, synthetic_data(nan=True))
    with pytest.raises(NonFiniteLossError,
                       match=r"non-finite loss nan at stage 1, epoch 1, step 1 \(global step 1\); "
                             r"no checkpoint was saved yet\. Train in a new --workdir with a "
                             r"lower --stage1.learning_rate"):
        trainer.train()
    assert trainer.manager.latest_checkpoint is None  # nothing was saved after the NaN


def test_non_finite_loss_names_the_checkpoint_a_rerun_would_resume_from(tmp_path):
    config = tiny_config(stage1={"epochs": 2}, stage2={"epochs": 1})

    def stop(model, stage):  # after epoch 1's checkpoint, as a Ctrl-C in its validation
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_trainer(str(tmp_path), config, synthetic_data(), validate_fn=stop).train()
    trainer = make_trainer(str(tmp_path), config, synthetic_data(nan=True))
    with pytest.raises(NonFiniteLossError,
                       match=rf"at stage 1, epoch 2, step 1 \(global step "
                             rf"{STEPS_PER_EPOCH + 1}\); the checkpoint of global step "
                             rf"{STEPS_PER_EPOCH} is kept\."):
        trainer.train()


def test_non_finite_loss_in_stage2_stops_the_run(tmp_path):
    config = tiny_config(stage1={"epochs": 1}, stage2={"epochs": 1})
    trainer = make_trainer(str(tmp_path), config, synthetic_data(nan=True))
    trainer.stage.assign(2)  # as a run resumed after stage 1
    # Graph-mode fused MatMul+BiasAdd+Relu (FC1) maps NaN to 0, so the first stage-2
    # loss can still be finite; the NaN gradients it applies make the next one NaN.
    with pytest.raises(NonFiniteLossError,
                       match=r"non-finite loss nan at stage 2, epoch 1, step ([12]) "
                             r"\(global step \1\).*--stage2.learning_rate"):
        trainer.train()


def test_non_finite_weights_under_a_finite_loss_are_never_checkpointed(tmp_path):
    config = tiny_config(stage1={"epochs": 1}, stage2={"epochs": 1})
    trainer = make_trainer(str(tmp_path), config, synthetic_data())
    finite = trainer.model.map_loss
    kernel = trainer.model.map_variables[0]

    @tf.custom_gradient
    def nan_gradient(x):
        return tf.zeros([]), lambda upstream: upstream * float("nan")

    def as_fused_onednn(*args, **kwargs):  # a finite loss over NaN gradients, as oneDNN's
        per_example = finite(*args, **kwargs)
        return (tf.where(tf.math.is_finite(per_example), per_example, 0.0)
                + nan_gradient(tf.reduce_sum(kernel)))

    trainer.model.map_loss = as_fused_onednn
    with pytest.raises(NonFiniteLossError,
                       match=rf"^non-finite weights \(.*label_map_head.*\) at stage 1 after "
                             rf"epoch 1/1 \(global step {STEPS_PER_EPOCH}\); no checkpoint "
                             rf"was saved yet\. Train in a new --workdir with a lower "
                             rf"--stage1.learning_rate"):
        trainer.train()
    assert trainer.manager.latest_checkpoint is None  # a rerun starts afresh, not from NaN


def test_a_non_finite_loss_at_stage_2s_first_step_names_stage_1s_rate_too(tmp_path):
    config = tiny_config(stage1={"epochs": 1}, stage2={"epochs": 1})
    trainer = make_trainer(str(tmp_path), config, synthetic_data())
    trainer.stage.assign(2)  # as a run resumed after stage 1
    finite = trainer.model.sequence_loss
    trainer.model.sequence_loss = lambda *args, **kwargs: tuple(
        value + float("inf") for value in finite(*args, **kwargs))
    with pytest.raises(NonFiniteLossError,
                       match=r"non-finite loss inf at stage 2, epoch 1, step 1 \(global step 1\); "
                             r".* a lower --stage2.learning_rate, or --stage1.learning_rate "
                             r"\(M_map's outputs after stage 1, which stage 2's first step "
                             r"reads, may be the cause\)"):
        trainer.train()


@pytest.mark.parametrize("budget", [2048, 0])  # M_map's outputs kept in float16, or not
def test_m_maps_outputs_beyond_float16_stop_stage_2_naming_stage_1s_rate(tmp_path, budget):
    config = tiny_config(model=RESIDUAL_MODEL, stage1={"epochs": 1}, stage2={"epochs": 1}).replace(
        train={"batch_size": BATCH, "cache_records_mib": budget})
    trainer = make_trainer(str(tmp_path), config, synthetic_data())
    assert trainer.inputs.cache_head_outputs == (budget > 0)
    trainer.stage.assign(2)  # as a run whose stage 1 diverged, resumed after it
    head_outputs = trainer.model.head_outputs

    def diverged(features):  # finite in float32, ±inf as float16
        head_features, scores = head_outputs(features)
        return head_features * 1e6 + 1e5, scores

    trainer.model.head_outputs = diverged
    with pytest.raises(NonFiniteLossError,
                       match=r"^M_map's outputs exceed float16's range \(±65504\), in which "
                             r"stage 2 keeps them \(stage 1 diverged\); no checkpoint was "
                             r"saved yet\. Train in a new --workdir with a lower "
                             r"--stage1.learning_rate"):
        trainer.train()
    assert trainer.manager.latest_checkpoint is None


# -- the run folder's configuration ---------------------------------------------------------
def test_run_folder_refuses_incompatible_rerun_and_accepts_resumable_change(tmp_path):
    run_dir = RunDir(str(tmp_path))
    config = tiny_config(runtime={"log_every": 20, "checkpoint_every": 200})  # the defaults
    run_dir.save(config, tiny_facts())
    assert run_dir.load() == (config, tiny_facts())
    run_dir.save(tiny_config(), tiny_facts())  # the same settings again
    with pytest.raises(IncompatibleRunError,
                       match=r"model.lstm_units: 8 in the run folder vs 16 now"):
        run_dir.save(tiny_config(model={"lstm_units": 16}), tiny_facts())
    with pytest.raises(IncompatibleRunError, match="label_names"):
        run_dir.save(config, tiny_facts(label_names=tuple("abce")))
    with pytest.raises(IncompatibleRunError, match="features_fingerprint"):
        run_dir.save(config, tiny_facts(features_fingerprint="e" * 64))
    assert run_dir.load() == (config, tiny_facts())  # a refused rerun leaves the file alone
    more = tiny_config(stage2={"epochs": 10}, runtime={"log_every": 5, "cache_dir": "/elsewhere"})
    run_dir.save(more, tiny_facts())
    assert run_dir.load()[0] == more.replace(runtime=dataclasses.asdict(RuntimeConfig()))
    # Runtime settings are not the run's:
    assert "/elsewhere" not in Path(run_dir.run_file).read_text()


def test_run_file_names_unknown_fields(tmp_path):
    run_dir = RunDir(str(tmp_path))
    run_dir.save(tiny_config(), tiny_facts())
    data = json.loads(Path(run_dir.run_file).read_text())
    data["config"]["model"]["lstm_unit"] = 3
    with open(run_dir.run_file, "w") as f:
        json.dump(data, f)
    assert data["software"] == software_versions()  # the versions of the writer
    this = re.escape(ofrnn_tf.__version__)
    with pytest.raises(ValueError, match=rf"run.json: settings this version of ofrnn_tf "
                                         rf"\({this}\) does not know \(unknown fields "
                                         rf"\['lstm_unit'\] in config section 'model'\): a "
                                         rf"newer build of ofrnn_tf {this} wrote it \(use that "
                                         rf"build\), or it was edited \(undo the edit\)$"):
        run_dir.load()
    del data["software"]  # written before versions were recorded
    with open(run_dir.run_file, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=r"\): a newer version wrote it \(use that version\), "
                                         r"or it was edited"):
        run_dir.load()
    data["software"] = software_versions()
    del data["config"]["model"]["lstm_unit"]
    data["facts"]["new_fact"] = 1
    data["software"]["ofrnn_tf"] = "9.1.0"
    Path(run_dir.run_file).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"does not know \(unknown run facts \['new_fact'\]\): "
                                         r"ofrnn_tf 9.1.0 wrote it \(use that version\)"):
        run_dir.load()


def test_run_file_leaves_out_defaults_of_settings_the_run_never_reads(tmp_path):
    # A version that predates such a setting reads the run still; loading gives it back.
    run_dir = RunDir(str(tmp_path))
    config = tiny_config(model={"variant": "baseline"})
    run_dir.save(config, tiny_facts())
    saved = json.loads(Path(run_dir.run_file).read_text())["config"]
    assert "coco_release" not in saved["data"] and "val_fraction" not in saved["data"]
    assert "beam_size" not in saved["decoding"] and "train_steps" not in saved["train"]
    assert saved["data"]["num_train"] == config.data.num_train  # read: kept
    assert saved["model"]["lstm_units"] == 8  # unread, but not at its default: kept
    assert run_dir.load()[0] == config.replace(runtime=dataclasses.asdict(RuntimeConfig()))
    # Set away from its default, an unread setting is kept, as given.
    odd = config.replace(data={"val_fraction": 0.2})
    run_dir.save(odd, tiny_facts())
    assert json.loads(Path(run_dir.run_file).read_text())["config"]["data"]["val_fraction"] == 0.2


# -- separate processes: SIGKILL and resume, two workers -----------------------------------
def _env(**extra) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), REPO) if p)
    return env


def _start(workdir, *flags, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SCRIPT, str(workdir), *flags], cwd=REPO,
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc: subprocess.Popen, timeout: float = SUBPROCESS_TIMEOUT_S) -> tuple:
    """Waits for a run; returns its `FINAL ...` line and its stderr."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{err[-3000:]}"
    finals = [line for line in out.splitlines() if line.startswith("FINAL ")]
    assert len(finals) == 1, out
    return finals[0], err


def _kill(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.communicate(timeout=30)
        except Exception:  # already reaped or pipes closed
            pass


@pytest.mark.slow
def test_a_float16_overflow_on_one_replica_is_skipped_on_every_replica(tmp_path):
    """Keras' loss scaling looks at the first replica's gradients only: a step that
    overflows on the second of two replicas, or of two workers, must be skipped (and the
    scale halved) as one device does, not applied (NaN weights) nor, across workers,
    waited on for ever."""
    def start_workers(cluster):
        workers.clear()
        for index in range(2):
            config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            workers.append(_start(tmp_path / "workers", "--epochs=2", "--overflow",
                                  "--strategy=multi_worker", DROP="0",
                                  TF_CONFIG=json.dumps(config)))
        return workers

    procs, workers = [], []
    try:
        procs = [_start(tmp_path / "one", "--epochs=2", "--overflow", DROP="0"),
                 _start(tmp_path / "two", "--epochs=2", "--overflow", "--cpus=2",
                        "--strategy=mirrored", DROP="0")]
        ends = _run_workers(start_workers, SUBPROCESS_TIMEOUT_S)
        ends = [proc.communicate(timeout=SUBPROCESS_TIMEOUT_S) for proc in procs] + ends
        scales = []
        for proc, (out, err) in zip(procs + workers, ends):
            assert proc.returncode == 0, err[-3000:]
            scales.append([line for line in out.splitlines() if line.startswith("SCALE ")])
    finally:
        _kill(procs)
    assert scales[0] == scales[1] and scales[0][-1] != "SCALE 2 32768", scales  # skipped
    assert scales[2] == scales[3] and scales[2][-1] != "SCALE 2 32768", scales


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_ends_with_identical_weights(tmp_path):
    # 6 global steps an epoch, 2 epochs a stage, a checkpoint every 2 steps. Pausing
    # before checkpoint 16 kills the run in stage-2 epoch 1 with steps 15-16 done but
    # never saved; the rerun resumes from checkpoint 14 and must redo them exactly.
    workdir_a, workdir_b = tmp_path / "a", tmp_path / "b"
    temp = tmp_path / "temp"  # the killed run's: it runs no exit handler
    temp.mkdir()
    procs = []
    try:
        procs.append(_start(workdir_a, "--epochs=2"))
        procs.append(_start(workdir_b, "--epochs=2", PAUSE_BEFORE_CHECKPOINT="16",
                            TMPDIR=str(temp)))
        marker = workdir_b / "paused_before_ckpt-16"
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while not marker.exists():
            assert procs[1].poll() is None, procs[1].communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint 16 in time"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        out, _ = procs[1].communicate(timeout=30)
        assert procs[1].returncode == -signal.SIGKILL and "FINAL" not in out
        assert tf.train.latest_checkpoint(str(workdir_b / "checkpoints")).endswith("ckpt-14")
        # No AutoGraph sources, which TensorFlow removes at exit only, are left behind.
        assert list(temp.iterdir()) == []

        procs.append(_start(workdir_b, "--epochs=2"))
        final_b, err = _finish(procs[2])
        assert "ckpt-14: stage 2 epoch 1/2, step 2/6" in err  # counted as the progress bar counts
        final_a, _ = _finish(procs[0])
        assert final_b == final_a
    finally:
        _kill(procs)


def _free_ports(n: int) -> list:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# What TensorFlow says of a worker whose port another process took (it sets no SO_REUSEPORT).
PORT_TAKEN = "Could not start gRPC server"


def _run_workers(start, timeout: float, attempts: int = 3) -> list:
    """The ``(stdout, stderr)`` of each process `start(cluster)` returns, run to their end,
    for a cluster of two workers on loopback ports that were free a moment before. Another
    process can take a port in that moment: where a worker could not listen on its own,
    the others (waiting for it) are stopped and all are started again on other ports."""
    for attempt in range(1, attempts + 1):
        procs = start({"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]})
        with concurrent.futures.ThreadPoolExecutor(len(procs)) as pool:
            try:
                ends = [pool.submit(proc.communicate, timeout=timeout) for proc in procs]
                for end in concurrent.futures.as_completed(ends):
                    if PORT_TAKEN in end.result()[1] and attempt < attempts:
                        break
                else:
                    return [end.result() for end in ends]
            finally:
                for proc in procs:  # no-op for those that ended; their readers then end
                    proc.kill()


# A stand-in worker: listens on its port of the cluster (argv: its index, then the
# addresses), or fails in TensorFlow's words; then waits until it has reached the other
# worker and been reached by it.
STAND_IN_WORKER = f"""
import socket, sys, time
index, ports = int(sys.argv[1]), [int(a.rsplit(":", 1)[1]) for a in sys.argv[2:]]
own = socket.socket()
try:
    own.bind(("127.0.0.1", ports[index]))
except OSError:
    sys.exit({PORT_TAKEN!r})
own.listen()
while True:
    try:
        socket.create_connection(("127.0.0.1", ports[1 - index]), timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)
own.accept()
print("joined")
"""


def test_workers_are_started_again_on_other_ports_where_one_was_taken():
    clusters, taken = [], socket.socket()

    def start(cluster):
        clusters.append(cluster["worker"])
        if len(clusters) == 1:  # another process takes the second worker's port
            taken.bind(("127.0.0.1", int(cluster["worker"][1].rsplit(":", 1)[1])))
            taken.listen()
        return [subprocess.Popen([sys.executable, "-c", STAND_IN_WORKER, str(index),
                                  *cluster["worker"]], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for index in range(2)]

    try:
        # The first worker, waiting for the second, would wait until the timeout.
        assert _run_workers(start, timeout=120) == [("joined\n", "")] * 2
    finally:
        taken.close()
    assert len(clusters) == 2 and clusters[1][1] != clusters[0][1], clusters


@pytest.mark.slow
def test_two_workers_of_the_command_train_in_sync(tmp_path):
    """`train.py --runtime.strategy=multi_worker` as two processes of one cluster: one run
    folder and feature cache, the chief evaluates, the workers' weights agree."""
    workdir, cache_dir = tmp_path / "run", tmp_path / "cache"
    procs = []

    def run_both(*flags, workdirs=(workdir, workdir), second_flags=(), succeed=True):
        def start(cluster):
            procs[:] = []
            for index, folder in enumerate(workdirs):
                own_flags = second_flags if index else ()
                env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}))
                procs.append(subprocess.Popen(
                    [sys.executable, "train.py", f"--workdir={folder}",
                     f"--runtime.cache_dir={cache_dir}", "--runtime.strategy=multi_worker",
                     *TINY_TRAIN_FLAGS, *flags, *own_flags], cwd=REPO, env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True))
            return procs

        outputs = _run_workers(start, 2 * SUBPROCESS_TIMEOUT_S)
        for proc, (_, err) in zip(procs, outputs):
            assert (proc.returncode == 0) == succeed, err[-3000:]
        return outputs

    def assert_same_weights(folder="checkpoints"):
        chief = tf.train.latest_checkpoint(str(workdir / folder))
        other = tf.train.latest_checkpoint(str(workdir / "tmp_worker" / "1" / folder))
        assert os.path.basename(chief) == os.path.basename(other)
        readers = [tf.train.load_checkpoint(path) for path in (chief, other)]
        names = [n for n in readers[0].get_variable_to_shape_map() if n.startswith("model/")]
        assert names
        for name in names:
            np.testing.assert_array_equal(readers[0].get_tensor(name), readers[1].get_tensor(name))

    try:
        outputs = run_both()
        assert "the chief worker evaluates" in outputs[1][1]
        assert RunDir(str(workdir)).load_metrics("test")["beam_size"] >= 1
        assert_same_weights()
        # A worker without checkpoints of its own (a run moved to more machines, or one
        # whose save a kill cut short) resumes from the chief's, as the chief does.
        shutil.rmtree(workdir / "tmp_worker")
        outputs = run_both("--stage2.epochs=2")
        assert "resuming from" in outputs[1][1] and str(workdir / "checkpoints") in outputs[1][1]
        assert_same_weights()
        assert_same_weights("best")  # the chief's best weights, taken with its checkpoints
        # A worker that sees neither the chief's folder nor a copy starts elsewhere:
        # refused on both, before they train different weights together.
        outputs = run_both("--stage2.epochs=3", workdirs=(workdir, tmp_path / "elsewhere"),
                           succeed=False)
        for _, err in outputs:
            assert "the workers of this multi-worker run resumed from different points" in err
            assert "Traceback" not in err, err[-3000:]
        # Workers given different settings would train two models (another learning
        # rate) or wait on each other's steps (another batch size): refused on both.
        fresh = tmp_path / "fresh"
        outputs = run_both(workdirs=(fresh, fresh), second_flags=["--stage2.learning_rate=0.01"],
                           succeed=False)
        for _, err in outputs:
            assert "were started with different --stage2.*: start every worker" in err, \
                err[-3000:]
            assert "Traceback" not in err, err[-3000:]
    finally:
        _kill(procs)


def test_the_settings_workers_compare_leave_out_only_where_each_keeps_its_files():
    def digests(config, facts=None, num_train=64):
        parts = settings_parts(config, facts or tiny_facts(), num_train)
        return {name: digest(part) for name, part in parts.items()}

    config = tiny_config()
    same = digests(config)
    own = config.replace(data={"dataset": "manifest", "manifest": "/a/data.csv"})
    # Each worker may keep its cache and find its data elsewhere.
    assert digests(config.replace(runtime={"cache_dir": "/elsewhere"})) == same
    assert digests(own.replace(data={"manifest": "/mnt/b/data.csv"})) == digests(own)
    for changed, part in [(config.replace(stage2={"learning_rate": 0.5}), "--stage2.*"),
                          (config.replace(train={"batch_size": 5}), "--train.*"),
                          (config.replace(runtime={"checkpoint_every": 7}), "--runtime.*")]:
        assert [name for name, value in digests(changed).items() if value != same[name]] == [part]
    data = "data (feature cache, labels or T_max)"
    for other in [digests(config, tiny_facts(features_fingerprint="e" * 64)),
                  digests(config, tiny_facts(max_steps=2)), digests(config, num_train=32)]:
        assert [name for name, value in other.items() if value != same[name]] == [data]
    assert all(0 <= n < 2 ** 16 for value in same.values() for n in value)


@pytest.mark.slow
@pytest.mark.parametrize("parts", [{}, {"head": "spatial", "decoder": "residual", "head_units": 8,
                                         "label_context_units": 8}],
                         ids=["paper", "residual_with_label_context"])
def test_mixed_precision_computes_in_float16_and_trains(tmp_path, parts):
    import keras

    config = tiny_config(model=parts, stage1={"epochs": 1}, stage2={"epochs": 2},
                         runtime={"mixed_precision": True})
    try:
        trainer = make_trainer(str(tmp_path), config, synthetic_data())
        model = trainer.train()
        assert isinstance(trainer.optimizers[2], keras.optimizers.LossScaleOptimizer)
        assert trainer.inputs.cache_head_outputs == (parts.get("decoder") == "residual")
        logits, alpha, h, _ = model.step(*model.start(tf.constant(synthetic_data()["features"][:2])))
        assert h.dtype == tf.float16  # the LSTM really runs in half precision ...
        assert logits.dtype == tf.float32 and np.isfinite(logits.numpy()).all()  # ... its logits not
        if model.label_context is not None:
            assert model.label_context.compute_dtype == "float32"
            assert changed(weights(model.context_variables), {  # fitted, from its zero start
                path: np.zeros_like(value) if "/correction/" in path else value
                for path, value in weights(model.context_variables).items()})
        losses = [value for _, value in scalars(str(tmp_path))["loss/stage2"]]
        assert np.all(np.isfinite(losses))
        assert np.mean(losses[-STEPS_PER_EPOCH:]) < np.mean(losses[:STEPS_PER_EPOCH])
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
@pytest.mark.parametrize("first", [True, False], ids=["float16_then_float32", "float32_then_float16"])
def test_a_run_resumes_with_mixed_precision_switched(tmp_path, first):
    """`--runtime.mixed_precision` may change between reruns (a run moved off its GPUs):
    the optimizers keep the checkpoint layout the run started with, and a run without
    loss scaling goes on in float32, never in float16 without it."""
    import keras

    def trainer_with(mixed_precision, stage2_epochs):
        config = tiny_config(stage1={"epochs": 1}, stage2={"epochs": stage2_epochs},
                             runtime={"mixed_precision": mixed_precision})
        return make_trainer(str(tmp_path), config, synthetic_data())

    try:
        trainer_with(first, 1).train()
        resumed = trainer_with(not first, 2)
        assert resumed.loss_scaling == first
        assert isinstance(resumed.optimizers[2], keras.optimizers.LossScaleOptimizer) == first
        assert resumed.mixed_precision is False  # float32 asked, or no loss scaling
        assert resumed.model.compute_dtype == "float32"
        assert resumed.restore() and int(resumed.stage) == 3
        before = weights(resumed.model.decoder_variables)
        resumed.train()
        assert int(resumed.epoch) == 2 and changed(before, weights(resumed.model.decoder_variables))
        losses = [value for _, value in scalars(str(tmp_path))["loss/stage2"]]
        assert len(losses) == 2 * STEPS_PER_EPOCH and np.all(np.isfinite(losses))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_restore_removes_the_shards_of_a_save_cut_short(tmp_path):
    config = tiny_config(stage1={"epochs": 1}, stage2={"epochs": 1})
    make_trainer(str(tmp_path), config, synthetic_data()).train()
    run_dir = RunDir(str(tmp_path))
    leftovers = [os.path.join(run_dir.checkpoints_dir(), "ckpt-9_temp"),
                 os.path.join(run_dir.best_dir(), "ckpt-5_temp")]
    for folder in leftovers:  # as a process killed inside `Checkpoint.save` leaves them
        os.makedirs(folder)
        with open(os.path.join(folder, "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
            f.write(b"\0" * 64)
    resumed = make_trainer(str(tmp_path), config, synthetic_data())
    assert resumed.restore() and int(resumed.stage) == 3
    assert not any(os.path.exists(folder) for folder in leftovers)
    assert os.listdir(run_dir.checkpoints_dir())  # the finished checkpoints stay


def test_decoding_step_losses_are_window_means_and_left_out_where_no_image_took_the_step():
    window = LoggingWindow()
    nan = float("nan")
    window.add(np.array([1.0, 2.0, nan]))  # the first step: it traces, no pace of its own
    assert window.examples_per_second(8) is None and window.bar_rate(8) is None
    window.add(np.array([3.0, nan, nan]))
    assert window.step_losses() == [2.0, 2.0, None]
    assert window.examples_per_second(8) > 0 and window.bar_rate(8) > 0
    window.restart()
    assert window.step_losses() == [] and window.examples_per_second(8) is None
    window.add(np.array([5.0, 4.0, 3.0]))
    assert window.step_losses() == [5.0, 4.0, 3.0] and window.examples_per_second(8) > 0


def test_a_decoding_step_no_image_of_a_logged_window_took_gets_no_point(tmp_path):
    # One label an image, two steps (T_i + 1, the default), max_steps 3: no image ever
    # takes step 3, whose curve was a line of zeros.
    data = synthetic_data()
    data["labels"][:] = np.eye(C, dtype="float32")[np.arange(N) % C]
    make_trainer(str(tmp_path), tiny_config(), data).train()
    found = scalars(str(tmp_path))
    assert "loss_per_decoding_step/t3" not in found
    assert all(value > 0 for t in (1, 2) for _, value in found[f"loss_per_decoding_step/t{t}"])
    # The pace of each window, the trace of each epoch's first step left out.
    assert len(found["examples_per_second"]) == len(found["loss/stage1"]) + len(
        found["loss/stage2"]) - len(SCRIPTED_MAP) - len(SCRIPTED_F1)


def test_a_resumed_run_logs_each_step_once_and_every_epoch_end(tmp_path):
    # log_every larger than an epoch: the epoch's last step is logged all the same. The
    # run stops inside the save of stage 2's first epoch-end step, after logging it, as a
    # kill would; its rerun trains that step again.
    config = tiny_config(stage1={"epochs": 1}, stage2={"epochs": 2},
                         runtime={"checkpoint_every": 1, "log_every": 100})
    scored = lambda model, stage: {"score": 1.0}
    stopped = make_trainer(str(tmp_path), config, synthetic_data(), scored)
    save = stopped.manager.save

    def save_or_stop(checkpoint_number=None):
        if checkpoint_number == 2 * STEPS_PER_EPOCH:
            raise KeyboardInterrupt
        return save(checkpoint_number=checkpoint_number)

    stopped.manager.save = save_or_stop
    with pytest.raises(KeyboardInterrupt):
        stopped.train()
    resumed = make_trainer(str(tmp_path), config, synthetic_data(), scored)
    assert resumed.restore()
    resumed.train()
    logged = scalars(str(tmp_path))
    assert [step for step, _ in logged["loss/stage1"]] == [STEPS_PER_EPOCH]
    assert [step for step, _ in logged["loss/stage2"]] == [2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH]
    assert [step for step, _ in logged["validation_stage2/score"]] == [2 * STEPS_PER_EPOCH,
                                                                      3 * STEPS_PER_EPOCH]


def test_a_rerun_stopped_before_its_first_point_leaves_no_empty_event_file(tmp_path):
    # Points only at epoch ends; each run stops in the save after step SPE + 2.
    config = tiny_config(runtime={"checkpoint_every": 1, "log_every": 100})
    scored = lambda model, stage: {"score": 1.0}
    for _ in range(2):
        trainer = make_trainer(str(tmp_path), config, synthetic_data(), scored)
        trainer.restore()
        save = trainer.manager.save

        def save_or_stop(checkpoint_number=None, save=save):
            if checkpoint_number == STEPS_PER_EPOCH + 2:
                raise KeyboardInterrupt
            return save(checkpoint_number=checkpoint_number)

        trainer.manager.save = save_or_stop
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
    assert len(os.listdir(RunDir(str(tmp_path)).tensorboard_dir)) == 1


def test_the_last_logged_step_is_the_largest_in_any_event_file_in_any_order(tmp_path,
                                                                           monkeypatch):
    """A resumed run logs only past each curve's last step: the largest of every file,
    whichever the folder lists first (a restart's file holds the lower steps of a rerun
    that went back to its checkpoint)."""
    from ofrnn_tf.training import event_files

    for name, steps in (("a", (5, 6, 7)), ("b", (1, 2))):
        writer = tf.summary.create_file_writer(str(tmp_path / name))
        with writer.as_default():
            for step in steps:
                tf.summary.scalar("loss", 0.5, step=step)
                if name == "b":
                    tf.summary.scalar("val/mAP", 80.0, step=step)
        writer.close()
        for path in (tmp_path / name).iterdir():
            path.rename(tmp_path / f"{path.name}.{name}")
    listed = sorted(glob.glob(str(tmp_path / "events.out.tfevents.*")))
    assert len(listed) == 2
    for order in (listed, listed[::-1]):
        monkeypatch.setattr(event_files.glob, "glob", lambda pattern, order=order: order)
        assert event_files.last_logged_steps(str(tmp_path)) == {"loss": 7, "val/mAP": 2}


def test_event_files_dated_ahead_of_the_clock_are_renamed_below_it_in_their_order(tmp_path):
    from ofrnn_tf.training.event_files import date_event_files_before

    now = 1_800_000_000
    names = ["events.out.tfevents.1800000100.vm.20.0.v2",  # a clock 100 s ahead
             "events.out.tfevents.1800000100.vm.10.0.v2",
             "events.out.tfevents.0000000050.vm.5.0.v2",  # a clock that started at 0
             "events.out.tfevents.1799999000.vm.7.0.v2", "notes.txt"]
    for name in names:
        (tmp_path / name).write_text(name)
    assert date_event_files_before(str(tmp_path), now) == 100
    renamed = sorted(os.listdir(tmp_path))
    assert renamed == ["events.out.tfevents.0000000000.vm.5.0.v2",
                       "events.out.tfevents.1799998899.vm.7.0.v2",
                       "events.out.tfevents.1799999999.vm.10.0.v2",
                       "events.out.tfevents.1799999999.vm.20.0.v2", "notes.txt"]
    # Each keeps its content: the names were the files' only change.
    assert [(tmp_path / name).read_text().split(".")[-3] for name in renamed[:4]] == [
        "5", "7", "10", "20"]
    assert date_event_files_before(str(tmp_path), now) is None  # all below now: left alone
    assert date_event_files_before(str(tmp_path / "none"), now) is None


def test_a_resumed_runs_event_file_sorts_after_those_dated_by_a_clock_ahead(tmp_path, capfd):
    """TensorBoard reads a run's event files in name order, whose stamp is the second each
    was made: a resume on a clock behind the earlier command's names its file to be read
    last, else the earlier file's steps would hide the new ones."""
    trainer = make_trainer(str(tmp_path), tiny_config(), synthetic_data())
    trainer.restore()
    directory = RunDir(str(tmp_path)).tensorboard_dir
    os.makedirs(directory)
    now = int(time.time())
    for stamp, host in ((now - 1000, "first"), (now + 2 * 86400, "second")):
        open(os.path.join(directory, f"events.out.tfevents.{stamp}.{host}.1.0.v2"), "wb").close()
    trainer._scalar("loss/stage2", 1.0, step=1)
    trainer.writer.flush()
    names = sorted(os.listdir(directory))
    assert [name.split(".")[4] for name in names[:2]] == ["first", "second"]
    assert len(names) == 3 and f".{os.getpid()}." in names[2]
    assert "renamed them to earlier dates" in capfd.readouterr().err


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_resumes_on_the_epochs_remaining_batches(tmp_path):
    # Stopped twice part-way through an epoch (stage 1 epoch 2 after 1 of 4 steps, stage 2
    # epoch 1 after 2 of 4), each rerun trains only the batches its epoch had left, in
    # their order: the weights end as an uninterrupted run's (dropout 0, one seed).
    config = tiny_config(stage1={"epochs": 2}, stage2={"epochs": 2},
                         runtime={"checkpoint_every": 1})
    data = synthetic_data()
    whole = make_trainer(str(tmp_path / "whole"), config, data).train()
    workdir = str(tmp_path / "stopped")
    positions = []
    for stop_at in (STEPS_PER_EPOCH + 2, 2 * STEPS_PER_EPOCH + 3, None):
        trainer = make_trainer(workdir, config, data)
        if trainer.restore():
            positions.append(trainer.position())
        save = trainer.manager.save

        def save_or_stop(checkpoint_number=None, save=save, stop_at=stop_at):
            if checkpoint_number == stop_at:  # the step is trained, not saved: a kill
                raise KeyboardInterrupt
            return save(checkpoint_number=checkpoint_number)

        trainer.manager.save = save_or_stop
        if stop_at is None:
            model = trainer.train()
        else:
            with pytest.raises(KeyboardInterrupt):
                trainer.train()
    assert positions == [f"stage 1 epoch 2/2, step 1/{STEPS_PER_EPOCH}",
                         f"stage 2 epoch 1/2, step 2/{STEPS_PER_EPOCH}"]
    want = weights(whole.trainable_variables)
    for path, value in weights(model.trainable_variables).items():
        np.testing.assert_allclose(value, want[path], rtol=1e-5, atol=1e-6, err_msg=path)


def test_a_sessions_global_dtype_policy_neither_leaks_in_nor_is_lost(tmp_path):
    # A notebook that set mixed_float16 for its own models: a float32 run trains and is
    # reloaded in float32, a mixed-precision one in float16, and the notebook keeps its policy.
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        plain = make_trainer(str(tmp_path / "plain"), tiny_config(stage1={"epochs": 1},
                                                                  stage2={"epochs": 1}),
                             synthetic_data())
        assert plain.model.compute_dtype == "float32" and not plain.loss_scaling
        plain.train()
        mixed = make_trainer(str(tmp_path / "mixed"), tiny_config(
            runtime={"mixed_precision": True}), synthetic_data())
        assert mixed.model.compute_dtype == "float16"
        reloaded, _, _ = RunDir(str(tmp_path / "plain")).load_model()
        assert reloaded.compute_dtype == "float32"
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        keras.mixed_precision.set_global_policy("float32")
        mixed = make_trainer(str(tmp_path / "mixed2"), tiny_config(
            runtime={"mixed_precision": True}), synthetic_data())
        assert mixed.model.compute_dtype == "float16"
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_a_batch_the_replicas_cannot_share_is_refused_as_an_input_error():
    from types import SimpleNamespace

    from ofrnn_tf.cli import input_errors
    from ofrnn_tf.training.distribute import BatchSplitError, check_batch_split

    check_batch_split(SimpleNamespace(num_replicas_in_sync=2), 64)
    with pytest.raises(BatchSplitError, match=r"--train.batch_size=32 is not divisible by the "
                                              r"3 replicas .* use a multiple of 3"):
        check_batch_split(SimpleNamespace(num_replicas_in_sync=3), 32)
    assert BatchSplitError in input_errors()  # said in one line, before data or run.json


_TWO_MIRRORED_RUNS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from ofrnn_tf.training.distribute import make_strategy
for size in (3, 5):  # two runs whose variables (here: all-reduced tensors) differ in shape
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    step = tf.function(lambda: strategy.run(
        lambda: tf.distribute.get_replica_context().all_reduce("sum", tf.ones([size]))))
    print(strategy.experimental_local_results(step())[0].numpy().tolist())
"""


@pytest.mark.slow
def test_a_second_mirrored_run_in_one_process_may_have_other_shapes():
    """Each new MirroredStrategy numbered its all-reduces from the same start, and the
    second run of a sweep in one process, with other shapes, failed at its first step
    ("Shape mismatch in the collective instance 100"): one strategy serves the process."""
    done = run_checked([sys.executable, "-c", _TWO_MIRRORED_RUNS], timeout=300)
    assert done.stdout.split("\n")[:2] == ["[2.0, 2.0, 2.0]", "[2.0, 2.0, 2.0, 2.0, 2.0]"]


def test_the_training_input_runs_without_the_autotuner(tmp_path, monkeypatch):
    """An iterator's destructor waits for tf.data's autotuner thread, which held each
    epoch's end for seconds: every dataset training reads has it off."""
    trainer = make_trainer(str(tmp_path), tiny_config(), synthetic_data())
    built = []
    monkeypatch.setattr(trainer.strategy, "distribute_datasets_from_function",
                        lambda fn: built.append(fn(tf.distribute.InputContext())))
    trainer.inputs.epoch_dataset(1, 0, 0)
    whole = trainer.inputs.examples(tf.distribute.InputContext())
    datasets = built + [trainer.inputs.parsed_batches(whole)]
    assert [ds.options().autotune.enabled for ds in datasets] == [False, False]
    assert built[0].options().threading.max_intra_op_parallelism == 1


@pytest.mark.parametrize("args, said", [
    ((2, 2, 5, 12, 40), "stage 2 epoch 3/12, step 5/40"),
    ((2, 2, 40, 12, 40), "stage 2 epoch 3/12, step 40/40 (trained, not yet validated)"),
    ((1, 4, 0, 12), "stage 1 after epoch 4/12"),
    ((2, 0, 0), "the start of stage 2"),
    # A rerun given fewer epochs than the stopped run had begun: no "epoch 3/2".
    ((2, 2, 52, 2, 80), "stage 2 epoch 3, step 52/80, beyond the stage's 2 epochs: the stage "
                        "ends without finishing it"),
])
def test_a_position_is_said_as_the_progress_bar_counts(args, said):
    assert describe_position(*args) == said


def test_an_infinite_loss_stops_the_run_naming_the_step(tmp_path, monkeypatch):
    config = tiny_config(stage1={"epochs": 1}, stage2={"epochs": 1})
    trainer = make_trainer(str(tmp_path), config, synthetic_data())
    finite = trainer.model.map_loss
    monkeypatch.setattr(trainer.model, "map_loss",
                        lambda *a, **k: finite(*a, **k) + float("inf"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss inf at stage 1, epoch 1, step 1"):
        trainer.train()


def test_the_label_context_fit_stops_after_its_patience(tmp_path, capsys):
    validated = []
    scores = iter([0.4, 0.6,  # stage 1
                   0.6, 0.7, 0.65, 0.6, 0.6, 0.6,  # M_map alone, then the context's epochs
                   0.5])  # stage 2

    def validate_fn(model, stage):
        validated.append(stage)
        return {"score": next(scores)}

    make_trainer(str(tmp_path), context_config(epochs=5, patience=1), synthetic_data(),
                 validate_fn).train()
    # Epoch 2 is the first that does not beat epoch 1: with patience 1 the fit ends there.
    assert validated == [1] * 5 + [2]
    assert "label context: best epoch 1 of 2" in capsys.readouterr().err


def test_a_label_context_no_epoch_of_which_beats_m_map_is_said_to_be_left_out(tmp_path, capsys):
    scores = iter([0.4, 0.6,  # stage 1
                   0.6, 0.5, 0.55,  # M_map alone, then the context's epochs
                   0.5])  # stage 2
    make_trainer(str(tmp_path), context_config(epochs=2, patience=0), synthetic_data(),
                 lambda model, stage: {"score": next(scores)}).train()
    assert ("[train] label context: no epoch of 2 beat M_map alone on validation (0.60): the "
            "context is left out (it passes M_map's logits on unchanged)"
            ) in capsys.readouterr().err
