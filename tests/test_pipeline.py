"""`pipeline.run` around a trained run: a rerun checked before any data work, eval mode
at another beam width, unfinished runs, and corrupt feature shards named by file.

The runs train on a small hand-written feature cache (no images, no backbone), through
`pipeline.make_trainer` as ``ofrnn-train`` does; `load_data` and `prepare_features` are
replaced where a test goes through `pipeline.run` in train mode.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import ROOT, run_checked
from ofrnn_tf import pipeline
from ofrnn_tf.data import run_data
from ofrnn_tf.cli import InputFileError, refusal
from ofrnn_tf.config.experiment import ExperimentConfig
from ofrnn_tf.data.example import Example
from ofrnn_tf.data.splits import SplitTooSmallError, check_split_sizes
from ofrnn_tf.features import cache, run_cache, shard_checks, shard_meta, tfrecords
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.checkpoint_files import DamagedCheckpointError
from ofrnn_tf.run_dir import IncompatibleRunError, RunDir, RunFacts
from ofrnn_tf.training import run_state

NAMES = ("circle", "square", "stripe", "dot")
SHAPE = (2, 2, 6)
SIZES = {"train": 64, "val": 32, "test": 16}
FEATURES_NAME, FINGERPRINT = "synthetic-features", "c" * 64


def write_features(cache_dir: str) -> str:
    """A feature cache of SIZES examples (2 shards a split) whose features carry their labels."""
    directory = cache.features_dir(cache_dir, FEATURES_NAME)
    os.makedirs(directory)
    LabelMap(NAMES).save(directory)
    rng = np.random.default_rng(0)
    class_vectors = 2.0 * rng.normal(size=(len(NAMES), SHAPE[-1]))
    for split, count in SIZES.items():
        labels = rng.random((count, len(NAMES))) < 0.4
        labels[labels.sum(1) == 0, 0] = True
        features = (rng.normal(size=(count, SHAPE[0] * SHAPE[1], SHAPE[2]))
                    + (labels @ class_vectors)[:, None, :])
        for shard in range(2):
            rows = range(shard * count // 2, (shard + 1) * count // 2)
            path = os.path.join(directory, shard_meta.shard_filename(split, shard, 2))
            with tf.io.TFRecordWriter(path) as writer:
                for i in rows:
                    writer.write(tfrecords.serialize_example(
                        f"{split}{i}", features[i], np.flatnonzero(labels[i]).tolist()))
            shard_meta.write_shard_stats(directory, split, shard, 2, len(rows), [])
    shard_meta.write_meta(directory, {"backbone": "synthetic", "feature_layer": "maps",
                                     "image_size": 32, "feature_shape": list(SHAPE),
                                     cache.FINGERPRINT_KEY: FINGERPRINT})
    return directory


FACTS = RunFacts(label_names=NAMES, max_steps=3, label_order=None, small_area=None,
                 features_name=FEATURES_NAME, features_fingerprint=FINGERPRINT,
                 feature_shape=SHAPE, image_size=32, feature_layer="maps")


def tiny_config(cache_dir: str, **sections) -> ExperimentConfig:
    return ExperimentConfig().replace(
        model={"lstm_units": 8, "attention_units": 8, "fc_units": 8, "head": "mean_linear",
               "decoder": "paper", "standardize_features": False},
        stage1={"learning_rate": 1e-2, "epochs": 1}, stage2={"learning_rate": 1e-2, "epochs": 1},
        train={"batch_size": 16}, decoding={"beam_size": 2},
        runtime={"cache_dir": cache_dir, "log_every": 1}, **sections)


def train(config: ExperimentConfig, workdir: str, features_dir: str) -> None:
    """What train mode does once the features are there, less the example pictures."""
    run_dir = RunDir(workdir)
    run_dir.save(config, FACTS)
    model = pipeline.make_trainer(config, FACTS, run_dir, features_dir).train()
    pipeline.calibrate_and_evaluate(model, config, FACTS, run_dir, features_dir)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`(config, workdir, features_dir)` of a finished tiny run."""
    base = tmp_path_factory.mktemp("pipeline")
    features_dir = write_features(str(base / "cache"))
    config = tiny_config(str(base / "cache"))
    train(config, str(base / "run"), features_dir)
    return config, str(base / "run"), features_dir


def copy_run(trained, tmp_path, name: str = "run") -> str:
    workdir = str(tmp_path / name)
    shutil.copytree(trained[1], workdir)
    return workdir


def garble_payload(features_dir: str, split: str, shard: int = 1) -> str:
    """Overwrites bytes inside the second record's payload (headers stay sound)."""
    path = os.path.join(features_dir, shard_meta.shard_filename(split, shard, 2))
    data = bytearray(Path(path).read_bytes())
    second = 12 + int.from_bytes(data[:8], "little") + 4
    data[second + 40:second + 50] = b"0123456789"
    with open(path, "wb") as f:
        f.write(bytes(data))
    shard_checks.check_shard(path)  # the default header walk passes it
    return path


# -- data ------------------------------------------------------------------------------
@pytest.mark.parametrize("data, message", [
    ({"manifest": "all.csv"}, r"--data.manifest=all.csv is read only with "
                              r"--data.dataset=manifest, not fashion_canvases: add "
                              r"--config=manifest"),
    ({"dataset": "coco", "manifest": "all.csv"}, r"--data.manifest=all.csv .* not coco"),
    ({"data_dir": "my_data"}, r"--data.data_dir=my_data is not read by the embedded benchmark "
                              r"\(--data.dataset=fashion_canvases, .*\): for your own data add "
                              r"--config=manifest, --config=coco or --config=nuswide"),
])
def test_data_paths_the_data_set_does_not_read_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig().replace(data=data)


def test_data_paths_the_data_set_reads_are_taken():
    for data in ({"dataset": "manifest", "manifest": "all.csv"},
                 {"dataset": "manifest", "data_dir": "my_data"},
                 {"dataset": "coco", "data_dir": "coco2014"}):
        taken = ExperimentConfig().replace(data=data).data
        assert {field: getattr(taken, field) for field in data} == data


def images_data(folder, sizes: dict, broken: dict) -> run_data.Data:
    """`sizes[split]` small PNGs a split, the first `broken[split]` of them no image at all."""
    os.makedirs(folder)
    splits = {}
    for split, count in sizes.items():
        splits[split] = []
        for i in range(count):
            path = os.path.join(folder, f"{split}{i}.png")
            if i < broken.get(split, 0):
                Path(path).write_bytes(b"not an image")
            else:
                Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(path)
            splits[split].append(Example(f"{split}{i}", path, (i % len(NAMES),)))
    return run_data.Data(splits, LabelMap(NAMES))


@pytest.mark.parametrize("broken, message", [
    ({"val": 2}, r"the validation split has no example after feature extraction: 2 of its 2 "
                 r"image\(s\) were skipped, unreadable or in a format the served model "
                 r"refuses \(listed with the reason under 'skipped' in .*meta.json\); remove "
                 r"those images from the data, or replace them with readable files \(a new "
                 r"feature cache is then extracted beside .*/features/\S+, which can be "
                 r"deleted once no run uses it; a file of the same size as before needs that "
                 r"folder deleted first\)"),
    ({"test": 1}, r"the test split has no example after feature extraction: 1 of its 1 "),
    ({"train": 3}, r"the train split has 1 example\(s\) after feature extraction, fewer than "
                   r"one batch of 2: 3 of its 4 image\(s\) were skipped.*lower "
                   r"--train.batch_size \(to at most 1\)"),
    ({"train": 4}, r"the train split has no example after feature extraction: 4 of its 4 "
                   r"image\(s\) were skipped.*first\)$"),
], ids=["val", "test", "train", "no train"])
def test_splits_that_undecodable_images_empty_are_refused_before_training(
        tmp_path, monkeypatch, tiny_backbone, broken, message):
    monkeypatch.setattr(cache, "get_backbone", lambda *args, **kwargs: tiny_backbone)
    config = tiny_config(str(tmp_path / "cache")).replace(train={"batch_size": 2})
    data = images_data(str(tmp_path / "images"), {"train": 4, "val": 2, "test": 1}, broken)
    check_split_sizes(data.splits, config.train.batch_size)  # as listed, large enough
    with pytest.raises(SplitTooSmallError, match=message):
        pipeline.prepare_features(config, data)
    with pytest.raises(SplitTooSmallError, match=message) as refused:  # the same from the cache
        pipeline.prepare_features(config, data)
    # The remedy is in the data for an emptied split, and a command says so without the
    # pointer to --help; a train split left short (not empty) names a flag too.
    emptied = broken.get("train", 4) == 4
    assert isinstance(refusal(refused.value), InputFileError) == emptied


def test_splits_with_an_undecodable_image_left_large_enough_go_on(tmp_path, monkeypatch,
                                                                  tiny_backbone):
    monkeypatch.setattr(cache, "get_backbone", lambda *args, **kwargs: tiny_backbone)
    config = tiny_config(str(tmp_path / "cache")).replace(train={"batch_size": 2})
    data = images_data(str(tmp_path / "images"), {"train": 4, "val": 2, "test": 1},
                       {"train": 2, "val": 1})
    directory, facts = pipeline.prepare_features(config, data)
    assert [shard_meta.num_examples(directory, s) for s in ("train", "val", "test")] == [2, 1, 1]
    assert facts.feature_shape == (4, 4, 8)


# -- validation ------------------------------------------------------------------------
def train_hiding_the_validation_shards(tmp_path, monkeypatch, **train) -> list[dict]:
    """Trains two epochs a stage, moving the validation shards away once the first
    validation has read them; returns every validation's metrics."""
    features_dir = write_features(str(tmp_path / "cache"))
    config = tiny_config(str(tmp_path / "cache")).replace(
        stage1={"epochs": 2}, stage2={"epochs": 2}, train={"batch_size": 16, **train})
    validate, scored = pipeline.evaluation.validate, []
    shards = shard_meta.shard_files(features_dir, "val")

    def validate_then_hide_the_shards(*args, **kwargs):
        scored.append(validate(*args, **kwargs))
        for path in shards if len(scored) == 1 else ():
            os.replace(path, path + ".away")
        return scored[-1]

    monkeypatch.setattr(pipeline.evaluation, "validate", validate_then_hide_the_shards)
    run_dir = RunDir(str(tmp_path / "run"))
    run_dir.save(config, FACTS)
    pipeline.make_trainer(config, FACTS, run_dir, features_dir).train()
    return scored


@pytest.mark.slow
def test_the_validation_split_is_read_once_and_kept_for_every_epoch(tmp_path, monkeypatch):
    """Every epoch's validation scores the same records: read and parsed at the first
    validation, they are kept in memory where they fit beside what training keeps
    (`--train.cache_records_mib`), not read from the shards again each epoch."""
    scored = train_hiding_the_validation_shards(tmp_path, monkeypatch)
    assert len(scored) == 4


@pytest.mark.slow
def test_the_validation_split_is_read_each_epoch_where_memory_is_not_given(tmp_path,
                                                                         monkeypatch):
    with pytest.raises((tf.errors.NotFoundError, shard_checks.CorruptShardError)):
        train_hiding_the_validation_shards(tmp_path, monkeypatch, cache_records_mib=0)


# -- eval mode -------------------------------------------------------------------------
@pytest.mark.slow
def test_tau_and_score_mix_are_calibrated_on_the_validation_split(trained):
    """calibration.json holds the calibration of the validation split, never of the test
    split whose metrics it then scores."""
    config, workdir, features_dir = trained
    run_dir = RunDir(workdir)
    model = run_dir.load_model()[0]
    stored = run_dir.calibration(config.decoding.beam_size)
    on = {split: pipeline.evaluation.calibrate(
              model, pipeline.eval_dataset(features_dir, FACTS, split), config.decoding,
              FACTS.max_steps)
          for split in ("val", "test")}
    assert on["val"]["grid"] != on["test"]["grid"]  # the splits tell apart
    assert (stored["tau"], stored["score_mix"]) == (pytest.approx(on["val"]["tau"]),
                                                    pytest.approx(on["val"]["score_mix"]))
    for key in ("grid", "score_mix_grid"):
        np.testing.assert_allclose(stored[key], on["val"][key], rtol=1e-6, err_msg=key)


def test_eval_at_another_beam_width_keeps_the_runs_width_and_metrics(trained, tmp_path):
    config, _, _ = trained
    run_dir = RunDir(copy_run(trained, tmp_path))
    run_json = Path(run_dir.run_file).read_text()
    own_metrics = run_dir.load_metrics("test")
    assert own_metrics["beam_size"] == 2

    greedy = pipeline.run(config.replace(decoding={"beam_size": 1}), run_dir.path, "eval")
    assert Path(run_dir.run_file).read_text() == run_json  # the run's K is still 2
    assert run_dir.load_metrics("test") == own_metrics
    assert os.path.basename(run_dir.metrics_file("test", 1)) == "metrics_test_k1.json"
    assert run_dir.load_metrics("test", 1) == greedy and greedy["beam_size"] == 1
    assert run_dir.calibrated_beam_sizes() == [1, 2]

    again = pipeline.run(config, run_dir.path, "eval")  # at the run's own width
    assert again["beam_size"] == 2 and run_dir.load_metrics("test") == again
    assert "unfinished_run" not in again


def test_the_closing_lines_give_a_command_to_paste_and_say_whose_time_they_show(
        trained, tmp_path, capsys):
    config, _, _ = trained
    workdir = str(tmp_path / "my runs" / "run")
    shutil.copytree(trained[1], workdir)
    pipeline.run(config, workdir, "eval")
    said = capsys.readouterr().err
    assert f"curves: tensorboard --logdir '{workdir}/tensorboard'" in said, said[-1000:]
    assert re.search(r"\[ofrnn_tf\] time of this command: .*total \d+s [^;]*; written to "
                     rf"{re.escape(workdir)}/timing_eval.json\n", said), said[-500:]


def stop_at_validation(config, workdir, features_dir, number: int) -> None:
    """Trains until the `number`-th validation, which fails."""
    calls = []
    evaluate = pipeline.evaluation.validate

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline.evaluation, "validate", failing)
        with pytest.raises(KeyboardInterrupt):
            train(config, workdir, features_dir)


def test_the_classes_the_test_split_lacks_are_named_in_the_log_and_metrics(
        trained, tmp_path, monkeypatch, capsys):
    config, _, features_dir = trained
    workdir = copy_run(trained, tmp_path)
    monkeypatch.setattr(pipeline.evaluation, "evaluate", lambda *a, **k: {
        "C-P": 75.0, pipeline.evaluation.ABSENT_CLASSES_KEY: [2]})
    model = RunDir(workdir).load_model()[0]
    pipeline.calibrate_and_evaluate(model, config, FACTS, RunDir(workdir), features_dir)
    assert ("test: no test image carries 1 of the 4 classes ('stripe'): C-R leaves them out, "
            "C-P counts each as precision 0 (docs/model.md, Metrics), so C-P is at most 75.0"
            ) in capsys.readouterr().err
    saved = json.load(open(RunDir(workdir).metrics_file("test")))
    assert saved[pipeline.evaluation.ABSENT_CLASSES_KEY] == ["stripe"]


def test_test_images_the_extraction_skipped_are_counted_beside_the_metrics(
        trained, tmp_path, capsys):
    config, _, features_dir = trained
    workdir = copy_run(trained, tmp_path)
    copied = str(tmp_path / "features")
    shutil.copytree(features_dir, copied)
    skipped = {"path": "img/broken.jpg", "image_id": "broken", "reason": "not an image"}
    shard_meta.write_shard_stats(copied, "test", 1, 2, SIZES["test"] // 2, [skipped])
    model = RunDir(workdir).load_model()[0]
    metrics = pipeline.calibrate_and_evaluate(model, config, FACTS, RunDir(workdir), copied)
    assert metrics["images"] == SIZES["test"] and metrics["images_skipped"] == 1
    assert (f"test: the metrics are over the {SIZES['test']} image(s) of the feature cache; 1 "
            f"listed test image(s) were skipped when it was extracted and are left out "
            f"(first: img/broken.jpg: not an image;") in capsys.readouterr().err
    assert json.load(open(RunDir(workdir).metrics_file("test")))["images_skipped"] == 1
    # Nothing skipped: nothing said, no key.
    metrics = pipeline.calibrate_and_evaluate(model, config, FACTS, RunDir(workdir),
                                              features_dir)
    assert "images_skipped" not in metrics and "skipped" not in capsys.readouterr().err


def test_eval_refuses_a_run_whose_decoder_was_never_validated(trained, tmp_path):
    config, _, features_dir = trained
    workdir = str(tmp_path / "my run")  # the command to go on is quoted for a shell
    stop_at_validation(config, workdir, features_dir, number=2)  # stage 2's first one
    with pytest.raises(run_state.UnfinishedRunError,
                       match=r"stopped at stage 2 epoch 1/1, step 4, before any validated "
                             r"epoch of stage 2, so its decoder \(stage 2\) is untrained.*"
                             r"without --mode=eval") as refused:
        pipeline.run(config, workdir, "eval")
    command = re.search(r"Finish training first: (.*) \(without", str(refused.value))[1]
    assert shlex.split(command) == ["ofrnn-train", f"--workdir={workdir}"]
    assert not os.path.exists(RunDir(workdir).metrics_file("test"))
    # Export and predict say the same, not "calibrate it with --mode=eval".
    from ofrnn_tf.inference import InferenceModule, UncalibratedBeamSizeError

    with pytest.raises(UncalibratedBeamSizeError, match=r"is not trained: .*Finish training "
                                                        r"first: ofrnn-train --workdir='"):
        InferenceModule.from_run(workdir)


def test_eval_of_an_unfinished_run_warns_and_records_where_it_stopped(trained, tmp_path, capsys):
    config, _, features_dir = trained
    longer = config.replace(stage2={"epochs": 2})
    workdir = str(tmp_path / "run")
    stop_at_validation(longer, workdir, features_dir, number=3)  # stage 2's second one
    metrics = pipeline.run(longer, workdir, "eval")
    assert metrics["unfinished_run"] == "stopped at stage 2 epoch 2/2, step 4"
    assert RunDir(workdir).load_metrics("test")["unfinished_run"] == metrics["unfinished_run"]
    printed = capsys.readouterr()
    assert "WARNING" in printed.err
    # τ is a probability: printed at three digits, not at the percentages' one decimal
    row = next(line for line in printed.out.splitlines() if line.startswith("| order_free"))
    assert row.endswith(f" {metrics['tau']:.3g} |"), printed.out
    # Export and predict, which read it through `trained_run`, say so too.
    from ofrnn_tf.cli import trained_run

    trained_run(workdir)
    said = capsys.readouterr().err
    assert (f"WARNING: {workdir} is not finished (stopped at stage 2 epoch 2/2, step 4): its "
            f"best epoch so far is used") in said
    assert "holds no checkpoint" not in said
    # With best/ gone (deleted as docs/run_folder.md says of a damaged one), the command
    # says which weights it reads instead.
    shutil.rmtree(RunDir(workdir).best_dir())
    trained_run(workdir)
    newest = os.path.basename(RunDir(workdir).weights_path())
    assert (f"{RunDir(workdir).best_dir()} holds no checkpoint: the newest training "
            f"checkpoint, {newest}, is used") in capsys.readouterr().err


# -- a rerun with other settings ---------------------------------------------------------
def forbid_data_work(monkeypatch, before: str) -> None:
    """Fails the test if `pipeline.run` builds or loads data, or extracts features."""
    def no_data(*args, **kwargs):
        raise AssertionError(f"data work before {before}")

    monkeypatch.setattr(pipeline, "load_data", no_data)
    monkeypatch.setattr(run_cache, "load_data", no_data)  # eval mode's check of own data
    monkeypatch.setattr(pipeline, "prepare_features", no_data)


def test_a_rerun_with_another_setting_is_refused_before_any_data_work(trained, tmp_path,
                                                                      monkeypatch):
    config, _, _ = trained
    workdir = copy_run(trained, tmp_path)
    forbid_data_work(monkeypatch, "the run folder was checked")
    for mode in ("train", "eval"):
        with pytest.raises(IncompatibleRunError, match=r"data.num_train: \d+ in the run "
                                                       r"folder vs 96 now"):
            pipeline.run(config.replace(data={"num_train": 96}), workdir, mode)


def test_a_benchmark_rerun_without_its_feature_cache_is_refused_before_any_data_work(
        trained, tmp_path, monkeypatch):
    """As in eval mode: no canvases built under a --runtime.cache_dir that lacks the run's
    features (say, a rerun from another folder with the default ./data)."""
    config, _, _ = trained
    workdir = copy_run(trained, tmp_path)
    forbid_data_work(monkeypatch, "the run's feature cache was looked up")
    elsewhere = config.replace(runtime={"cache_dir": str(tmp_path / "data")})
    with pytest.raises(cache.FeatureCacheNotFoundError):
        pipeline.run(elsewhere, workdir, "train")
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_the_command_reports_a_refused_rerun_as_a_usage_error(make_fake_run, tmp_path):
    workdir = make_fake_run(tmp_path / "run")
    cache_dir = tmp_path / "cache"
    done = run_checked([sys.executable, str(ROOT / "train.py"), f"--workdir={workdir}",
                        f"--runtime.cache_dir={cache_dir}", "--data.num_train=96"],
                       expect_failure=True)
    assert "describes another run" in done.stderr and "data.num_train" in done.stderr
    assert "Traceback" not in done.stderr
    assert not cache_dir.exists()  # no canvas built, no feature extracted


# -- corrupt shards --------------------------------------------------------------------
@pytest.fixture
def corrupt_copy(trained, tmp_path, monkeypatch):
    """`(config, features_dir)`: a copy of the feature cache, which train mode finds."""
    config, _, features_dir = trained
    cache_dir = tmp_path / "cache"
    shutil.copytree(features_dir, cache.features_dir(str(cache_dir), FEATURES_NAME))
    config = config.replace(runtime={"cache_dir": str(cache_dir)})
    copy_dir = cache.features_dir(str(cache_dir), FEATURES_NAME)
    monkeypatch.setattr(pipeline, "load_data", lambda config: None)
    monkeypatch.setattr(pipeline, "prepare_features",
                        lambda config, data, resumed=None: (copy_dir, FACTS))
    return config, copy_dir


@pytest.mark.parametrize("split", ["train", "val"])
def test_training_names_a_shard_with_a_garbled_record(corrupt_copy, tmp_path, split):
    config, features_dir = corrupt_copy
    path = garble_payload(features_dir, split)
    with pytest.raises(shard_checks.CorruptShardError) as error:
        pipeline.run(config, str(tmp_path / "run"), "train")
    assert error.value.path == path
    assert f"corrupt feature shard {path}" in str(error.value)
    assert f"delete {path} and rerun: the next run re-extracts only that shard" in str(error.value)


def test_a_miscounted_training_shard_is_named_before_the_trainer_is_built(corrupt_copy,
                                                                          tmp_path):
    config, features_dir = corrupt_copy
    stats = os.path.join(features_dir, shard_meta.shard_stats_filename("train", 1, 2))
    record = json.loads(Path(stats).read_text())
    record["examples"] -= 1
    with open(stats, "w") as f:
        json.dump(record, f)
    run_dir = RunDir(str(tmp_path / "run"))
    run_dir.save(config, FACTS)
    with pytest.raises(shard_checks.CorruptShardError, match=r"records, but its .json records"):
        pipeline.make_trainer(config, FACTS, run_dir, features_dir)


def test_a_resumed_run_says_its_training_split_changed(trained, tmp_path, monkeypatch, capsys):
    config, _, features_dir = trained
    run_dir = RunDir(copy_run(trained, tmp_path))
    saved = json.loads(Path(run_dir.run_file).read_text())
    saved["facts"]["train_examples"] = 95
    with open(run_dir.run_file, "w") as f:
        json.dump(saved, f)
    monkeypatch.setattr(pipeline, "load_data", lambda config: None)
    grown = dataclasses.replace(FACTS, train_examples=96)
    monkeypatch.setattr(pipeline, "prepare_features",
                        lambda config, data, resumed=None: (features_dir, grown))
    pipeline.run(config, run_dir.path, "train")
    assert f"train: 96 examples now, 95 when {run_dir.path} was last trained" in (
        capsys.readouterr().err)
    assert run_dir.load()[1].train_examples == 96  # said once


def test_evaluation_names_a_shard_with_a_garbled_record(trained, corrupt_copy, tmp_path):
    config, features_dir = corrupt_copy
    workdir = copy_run(trained, tmp_path)
    path = garble_payload(features_dir, "test", shard=0)
    with pytest.raises(shard_checks.CorruptShardError, match=f"delete {path} and rerun"):
        pipeline.run(config, workdir, "eval")
    assert json.loads(Path(RunDir(workdir).metrics_file("test")).read_text())  # left as it was


def test_the_command_reports_a_split_too_small_without_a_traceback(tmp_path):
    done = run_checked([sys.executable, str(ROOT / "train.py"), f"--workdir={tmp_path / 'run'}",
                        f"--runtime.cache_dir={tmp_path / 'cache'}", "--data.num_train=2",
                        "--data.num_val=2", "--data.num_test=2", "--train.batch_size=8"],
                       expect_failure=True)
    assert ("train.py: the train split has 2 image(s), fewer than one batch of 8: lower "
            "--train.batch_size (to at most 2)") in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "cache").exists()  # refused before the canvases are built


# -- what a rerun would accept and ignore ----------------------------------------------
@pytest.fixture
def cached_features(trained, monkeypatch):
    """Train mode through `pipeline.run` on the hand-written cache (no data work)."""
    features_dir = trained[2]
    monkeypatch.setattr(pipeline, "load_data", lambda config: None)
    monkeypatch.setattr(pipeline, "prepare_features",
                        lambda config, data, resumed=None: (features_dir, FACTS))


def test_tau_of_another_width_goes_once_training_changes_the_best_weights(
        trained, tmp_path, cached_features):
    config = trained[0]
    run_dir = RunDir(copy_run(trained, tmp_path))
    pipeline.run(config.replace(decoding={"beam_size": 1}), run_dir.path, "eval")
    pipeline.run(config, run_dir.path, "train")  # finished: the best weights stay
    assert run_dir.calibrated_beam_sizes() == [1, 2]
    model, _, _ = run_dir.load_model()  # as if going on had found a better epoch
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), run_dir.best_dir(),
                               max_to_keep=1).save(checkpoint_number=10_000)
    assert run_dir.calibrated_beam_sizes() == []  # neither τ is for these weights
    pipeline.run(config, run_dir.path, "train")
    assert run_dir.calibrated_beam_sizes() == [2]  # the run's own, made again
    assert not os.path.exists(run_dir.metrics_file("test", 1))


def test_a_run_gives_the_callers_python_and_numpy_random_state_back(trained, tmp_path,
                                                                     cached_features):
    # Training seeds them with train.seed; a notebook's own draws must not replay seed 0's.
    import random

    random.seed(123), np.random.seed(123)
    expected = random.random(), np.random.rand()
    random.seed(123), np.random.seed(123)
    pipeline.run(trained[0], str(tmp_path / "run"), "train")
    assert (random.random(), np.random.rand()) == expected


def test_tau_of_another_width_goes_once_a_rerun_changes_the_decoding_it_was_made_with(
        trained, tmp_path, cached_features, capsys):
    config = trained[0]
    run_dir = RunDir(copy_run(trained, tmp_path, "my run"))
    pipeline.run(config.replace(decoding={"beam_size": 1}), run_dir.path, "eval")
    assert run_dir.calibrated_beam_sizes() == [1, 2]
    capsys.readouterr()
    changed = config.replace(decoding={"min_labels": 2})
    pipeline.run(changed, run_dir.path, "train")  # the same weights: a finished run
    said = capsys.readouterr().err
    assert ("τ and test metrics for beam width 1 were calibrated with decoding.min_labels 1, "
            "not 2: removed") in said
    again = re.search(r"not 2: removed \((.*) makes them again\)", said)[1]
    assert shlex.split(again) == ["ofrnn-train", f"--workdir={run_dir.path}", "--mode=eval",
                                  "--decoding.beam_size=1"]
    assert run_dir.calibrated_beam_sizes() == [2]
    assert run_dir.calibration(2)["min_labels"] == 2
    assert not os.path.exists(run_dir.metrics_file("test", 1))
    pipeline.run(changed, run_dir.path, "train")  # nothing more to drop
    assert run_dir.calibrated_beam_sizes() == [2]


def test_a_training_rerun_names_damaged_best_weights_and_keeps_the_results(
        trained, tmp_path, cached_features):
    config = trained[0]
    run_dir = RunDir(copy_run(trained, tmp_path))
    metrics = Path(run_dir.metrics_file("test")).read_text()
    data_file = glob.glob(os.path.join(run_dir.best_dir(), "ckpt-*.data-*"))[0]
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) // 2)
    with pytest.raises(DamagedCheckpointError, match=rf"the best weights .* cannot be read .*"
                                                     rf"Delete the folder {run_dir.best_dir()} "
                                                     rf"to use the last training checkpoint"):
        pipeline.run(config, run_dir.path, "train")
    assert Path(run_dir.metrics_file("test")).read_text() == metrics


def test_lost_checkpoint_lists_are_read_from_the_folders(trained, tmp_path, cached_features,
                                                          capsys):
    config = trained[0]
    run_dir = RunDir(copy_run(trained, tmp_path))
    best = run_dir.weights_path()
    assert best.startswith(run_dir.best_dir())
    metrics = json.loads(Path(run_dir.metrics_file("test")).read_text())
    os.remove(os.path.join(run_dir.best_dir(), "checkpoint"))
    assert run_dir.weights_path() == best  # not the last training checkpoint instead
    with open(os.path.join(run_dir.checkpoints_dir(), "checkpoint"), "w"):
        pass  # emptied: TensorFlow's manager refuses to start from it
    again = pipeline.run(config, run_dir.path, "train")
    assert "is missing or unreadable: the checkpoints are read from the folder" in (
        capsys.readouterr().err)
    for name in ("C-F1", "O-F1", "mAP", "tau"):
        assert again[name] == metrics[name], name


def test_a_training_command_stopped_after_training_keeps_its_time(
        trained, tmp_path, cached_features, monkeypatch):
    config = trained[0]
    run_dir = RunDir(copy_run(trained, tmp_path))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "calibrate_and_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(config, run_dir.path, "train")
    timing = json.loads(Path(run_dir.timing_file("train")).read_text())
    assert {"data", "features", "training"} <= set(timing)
    assert timing["commands"][-1]["trained_with"] == {
        "strategy": config.runtime.strategy, "replicas": 1,
        "jit_compile": config.runtime.jit_compile, "mixed_precision": False}


def test_eval_mode_refuses_decoding_settings_it_would_not_keep(trained, tmp_path):
    config = trained[0]
    workdir = copy_run(trained, tmp_path)
    for decoding, name in (({"min_labels": 0}, "min_labels"),
                           ({"calibration_objective": "o_f1"}, "calibration_objective")):
        with pytest.raises(IncompatibleRunError, match=rf"decoding.{name}: .* \(eval mode "
                                                       r"evaluates the run's own decoding"):
            pipeline.run(config.replace(decoding=decoding), workdir, "eval")
    # Nor does it train: a stage's schedule given to it would do nothing.
    with pytest.raises(IncompatibleRunError, match=r"stage2.epochs: 1 in the run folder vs 3 "
                                                   r"now \(eval mode trains nothing"):
        pipeline.run(config.replace(stage2={"epochs": 3}), workdir, "eval")


def test_a_rerun_refuses_epochs_of_a_finished_stage_and_lets_the_last_go_on(
        trained, tmp_path, cached_features):
    config = trained[0]
    workdir = copy_run(trained, tmp_path)
    run_json = Path(RunDir(workdir).run_file).read_text()
    with pytest.raises(IncompatibleRunError, match=r"stage1.epochs: 1 in the run folder vs 3 "
                                                   r"now \(stage1 is finished\)"):
        pipeline.run(config.replace(stage1={"epochs": 3}), workdir, "train")
    assert Path(RunDir(workdir).run_file).read_text() == run_json
    pipeline.run(config.replace(stage2={"epochs": 2}), workdir, "train")
    assert RunDir(workdir).load()[0].stage2.epochs == 2
    # Not fewer epochs than it trained: its record would say 1 of a stage trained 2.
    with pytest.raises(IncompatibleRunError, match=r"stage2.epochs: 2 in the run folder vs 1 "
                                                   r"now \(2 epochs of stage 2 are trained: "
                                                   r"give 2 or more\)\. Use a new --workdir"):
        pipeline.run(config.replace(stage2={"epochs": 1}), workdir, "train")
    assert RunDir(workdir).load()[0].stage2.epochs == 2


def test_a_rerun_at_another_beam_width_says_what_it_changes(trained, tmp_path, cached_features,
                                                            capsys):
    config = trained[0]
    workdir = copy_run(trained, tmp_path)
    other = 1 if config.decoding.beam_size != 1 else 2
    metrics = pipeline.run(config.replace(decoding={"beam_size": other}), workdir, "train")
    assert (f"the run's beam width changes from K={config.decoding.beam_size} to K={other}: "
            f"stage-2 epochs validated from here on are scored at K={other}"
            ) in capsys.readouterr().err
    assert metrics["beam_size"] == RunDir(workdir).load()[0].decoding.beam_size == other


def test_a_finished_run_copied_without_its_checkpoints_is_not_called_unfinished(
        trained, tmp_path, capsys):
    config = trained[0]
    workdir = copy_run(trained, tmp_path)
    shutil.rmtree(RunDir(workdir).checkpoints_dir())  # only a resume reads them
    assert run_state.training_state(RunDir(workdir), config) is None
    from ofrnn_tf.cli import trained_run

    trained_run(workdir)
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.slow
def test_training_a_run_copied_without_its_checkpoints_is_refused_naming_the_remedies(
        trained, tmp_path, cached_features):
    config = trained[0]
    run_dir = RunDir(copy_run(trained, tmp_path))
    shutil.rmtree(run_dir.checkpoints_dir())
    best = Path(run_dir.best_info_file).read_text()
    # Training would start over and replace the best weights at its first epoch.
    with pytest.raises(IncompatibleRunError, match=(
            rf"holds trained best weights \(stage 2 epoch 1\) but no checkpoint to resume "
            rf"from in {re.escape(run_dir.checkpoints_dir())}: training would start over .* "
            rf"Evaluate it with --mode=eval, train in a new --workdir, or delete "
            rf"{re.escape(run_dir.best_dir())} and {re.escape(run_dir.best_info_file)} \(and "
            rf"{re.escape(run_dir.tensorboard_dir)}, whose curves")):
        pipeline.run(config, run_dir.path, "train")
    assert Path(run_dir.best_info_file).read_text() == best
    assert not os.path.exists(run_dir.checkpoints_dir())
    pipeline.run(config, run_dir.path, "eval")
    for path in (run_dir.best_dir(), run_dir.tensorboard_dir):
        shutil.rmtree(path)
    os.remove(run_dir.best_info_file)
    pipeline.run(config, run_dir.path, "train")  # as a run that never validated: from its start
    assert run_state.latest_position(run_dir)["stage"] == 3


def test_a_rerun_of_a_finished_run_adds_no_empty_tensorboard_file(trained, tmp_path):
    config, _, features_dir = trained
    workdir = copy_run(trained, tmp_path)
    events = lambda: sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.*")))
    before = events()
    train(config, workdir, features_dir)  # trains nothing: every stage is finished
    assert events() == before


def test_eval_mode_of_a_folder_without_weights_is_refused(trained, tmp_path):
    config = trained[0]
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        pipeline.run(config, str(tmp_path / "nothing"), "eval")
    RunDir(str(tmp_path / "new")).save(config, FACTS)
    with pytest.raises(run_state.UnfinishedRunError, match="stopped at its start, before any "
                                                         "checkpoint"):
        pipeline.run(config, str(tmp_path / "new"), "eval")


def test_best_json_after_a_label_context_fit_holds_its_scores(trained, tmp_path, monkeypatch,
                                                              capsys):
    config = trained[0].replace(model={"variant": "baseline", "label_context_units": 4},
                                label_context={"epochs": 2})
    calls = []

    def rising(*args, **kwargs):  # every validation better than the last: the context wins
        calls.append(1)
        return {"mAP": float(len(calls)), "score": float(len(calls))}

    monkeypatch.setattr(pipeline.evaluation, "validate", rising)
    train(config, str(tmp_path / "run"), trained[2])
    info = RunDir(str(tmp_path / "run")).load_best_info()
    assert info["validation"]["mAP"] == info["validation"]["score"] == info["label_context"]["score"]
    said = capsys.readouterr().err  # M_map alone: a threshold, no beam to name
    assert "calibrating τ on the validation split (objective mean_f1)" in said
    assert "beam" not in said


@pytest.mark.slow
def test_a_mixed_precision_run_reports_what_eval_mode_and_the_export_compute(
        trained, tmp_path, cached_features, capsys):
    import keras

    config = trained[0].replace(runtime={"mixed_precision": True})
    workdir = str(tmp_path / "run")
    try:
        trained_metrics = pipeline.run(config, workdir, "train")
        if not tf.config.list_logical_devices("GPU"):
            assert ("[train] --runtime.mixed_precision is meant for GPUs, and none is visible: "
                    "float16 runs on the CPU here, slower than float32") in capsys.readouterr().err
        assert keras.mixed_precision.global_policy().name == "float32"
        evaluated = pipeline.run(config, workdir, "eval")
        assert ("eval mode decodes in float32 on one device, without XLA: "
                "--runtime.mixed_precision=True is not read") in capsys.readouterr().err
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for name in ("C-F1", "O-F1", "mAP", "tau"):
        assert trained_metrics[name] == evaluated[name], name


@pytest.mark.slow
def test_the_command_reports_eval_of_a_missing_run_without_a_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder, why in (("no", "no such folder"), ("empty", "run.json missing")):
        done = run_checked([sys.executable, str(ROOT / "train.py"),
                            f"--workdir={tmp_path / folder}", "--mode=eval"],
                           expect_failure=True)
        assert f"is not a run folder ({why})" in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr


# -- damaged checkpoints ----------------------------------------------------------------
def damage(prefix: str, how: str) -> None:
    """Damages the checkpoint `prefix` as a lost or cut-short copy leaves it."""
    data = f"{prefix}.data-00000-of-00001"
    if how == "deleted":
        for path in (data, f"{prefix}.index"):
            os.remove(path)
    elif how == "data_deleted":
        os.remove(data)
    else:  # truncated
        os.truncate(data, 100)


@pytest.mark.parametrize("how", ["deleted", "data_deleted", "truncated"])
def test_a_damaged_last_checkpoint_is_skipped_by_training_and_the_rerun_checks_alike(
        trained, tmp_path, capsys, how):
    config = trained[0]
    run_dir = RunDir(copy_run(trained, tmp_path))
    newest, older = (os.path.join(run_dir.checkpoints_dir(), f"ckpt-{n}") for n in (8, 4))
    damage(newest, how)
    # The checks of a rerun read the checkpoint training goes on from: the start of stage 2.
    assert run_state.latest_position(run_dir) == {"stage": 2, "epoch": 0, "step_in_epoch": 0}
    with pytest.raises(IncompatibleRunError, match=r"stage1.epochs: .* \(stage1 is finished\)\. "
                                                   r"Use a new --workdir to train with that "
                                                   r"schedule, or the saved settings"):
        run_state.check_finished_stages(run_dir, config.replace(stage1={"epochs": 2}), "train")
    train(config, run_dir.path, trained[2])
    err = capsys.readouterr().err
    assert f"skipped checkpoint {newest}: " in err
    assert f"resuming from the older {older}" in err
    assert run_state.latest_position(run_dir)["stage"] == 3  # stage 2 trained again, saved whole


def test_no_readable_checkpoint_is_refused_naming_each_and_the_folder_to_delete(
        trained, tmp_path):
    config = trained[0]
    run_dir = RunDir(copy_run(trained, tmp_path))
    for number in (4, 8):
        damage(os.path.join(run_dir.checkpoints_dir(), f"ckpt-{number}"), "truncated")
    refused = (r"no checkpoint in .*checkpoints can be read \(.*ckpt-8: a file of it is cut "
               r"short .*ckpt-4: .*\)\. Delete the folder .*checkpoints to train the run "
               r"again from its start")
    with pytest.raises(DamagedCheckpointError, match=refused):  # before any data work
        run_state.check_finished_stages(run_dir, config, "train")
    with pytest.raises(DamagedCheckpointError, match=refused):
        pipeline.make_trainer(config, FACTS, run_dir, trained[2]).train()


def test_a_failed_timing_write_hides_neither_the_error_nor_the_results(tmp_path, monkeypatch,
                                                                       capsys):
    # On a full disk the handler's own write of timing_train.json fails too: the error
    # that ended the run is the one raised, and a finished run keeps its metrics.
    def no_space(self, mode, parts):
        raise OSError(errno.ENOSPC, "No space left on device", self.timing_file(mode))

    monkeypatch.setattr(RunDir, "save_timing", no_space)

    def checkpoint_fails(config, run_dir, mode, timer):
        with timer("training"):
            raise tf.errors.ResourceExhaustedError(None, None, "ckpt-10_temp; No space left")

    monkeypatch.setattr(pipeline, "_run", checkpoint_fails)
    with pytest.raises(tf.errors.ResourceExhaustedError, match="ckpt-10_temp"):
        pipeline.run(ExperimentConfig(), str(tmp_path / "run"))
    assert "time not recorded in" in capsys.readouterr().err
    # The same write at the end of a run whose metrics are written: said, not raised.
    pipeline._record_timing(RunDir(str(tmp_path / "run")), "eval", pipeline.Timer())
    assert f"time not recorded in {tmp_path / 'run' / 'timing_eval.json'}" in (
        capsys.readouterr().err)


def test_the_results_table_names_the_beam_width_and_the_baselines_fixed_threshold():
    metrics = {"C-F1": 80.04, "O-F1": 79.96, "mAP": 88.0, "tau": 0.0924, "beam_size": 5}
    table = pipeline.results_table(ExperimentConfig(), metrics).splitlines()
    assert table[0].startswith("| run | C-F1 | O-F1 | mAP | tau |")
    assert table[2] == "| order_free (K=5) | 80.0 | 80.0 | 88.0 | 0.0924 |"
    baseline = ExperimentConfig().replace(model={"variant": "baseline"})
    table = pipeline.results_table(baseline, {
        "C-F1": 60.0, "mAP": 70.0, "tau": 0.31,
        "at_fixed_0.5": {"C-F1": 55.0, "mAP": 70.0, "tau": 0.5}}).splitlines()
    assert table[2:4] == ["| baseline | 60.0 | 70.0 | 0.31 |",
                          "| baseline at 0.5 | 55.0 | 70.0 | 0.5 |"]


def test_the_results_table_says_what_its_numbers_are():
    """Percentages and a probability side by side: the line under the table tells them
    apart (and what τ is a threshold on for each variant)."""
    metrics = {"C-F1": 80.04, "O-F1": 79.96, "mAP": 88.0, "tau": 0.0924, "beam_size": 5}
    table = pipeline.results_table(ExperimentConfig(), metrics).splitlines()
    assert table[3:] == ["", "C-/O-: per class / over all labels; metrics in percent; tau: the "
                         "threshold τ on the path probability, chosen on validation."]
    baseline = ExperimentConfig().replace(model={"variant": "baseline"})
    table = pipeline.results_table(baseline, {"C-F1": 60.0, "tau": 0.31}).splitlines()
    assert table[-1].endswith("tau: the threshold τ on each class's score, chosen on "
                              "validation.")


def test_t_max_is_said_with_the_images_that_set_it_and_labels_beyond_it_are_warned_of(capsys):
    """One image with many labels sets T_max for the run; test images with more labels
    than any training image cannot be predicted whole, which the metrics alone hide."""
    example = lambda i, n: Example(f"img{i}", f"img{i}.png", tuple(range(n)))
    splits = {"train": [example(i, 2) for i in range(199)] + [example(199, 6)],
              "val": [example(i, 2) for i in range(5)],
              "test": [example(0, 8), example(1, 7), example(2, 3)]}
    run_data.say_max_steps(splits, 6, "baseline")  # M_map alone: any number of labels
    assert capsys.readouterr().err == ""
    run_data.say_max_steps(splits, 6, "order_free")
    said = capsys.readouterr().err
    assert ("T_max = 6, the largest label count of a training image, which bounds the labels "
            "of a prediction: 1 of 200 carry 6, the first image 'img199'; 99 % carry at most "
            "2") in said
    assert ("WARNING: test: 2 of 3 images carry more than T_max = 6 labels: 3 of the split's "
            "18 labels (17 %) are beyond any prediction, so its recall (O-R) is at most "
            "83.3 %") in said
    assert "val:" not in said
