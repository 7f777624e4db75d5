"""A run folder has one owner (`RunDir`) and can be moved: a copied run evaluates,
exports and resumes from another place, finding its feature cache by fingerprint."""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest

from conftest import ROOT, run_checked
from ofrnn_tf.run_dir import RunDir

pytestmark = pytest.mark.slow  # uses the session's tiny trained run


def test_run_files_are_named_by_run_dir_only():
    """No other module spells a run file's name."""
    names = ('"run.json"', '"calibration.json"', '"best.json"', 'f"metrics_', 'f"timing_',
             '"checkpoints"', '"tensorboard"')
    for path in (ROOT / "ofrnn_tf").rglob("*.py"):
        if path.name == "run_dir.py":
            continue
        text = path.read_text()
        assert not [n for n in names if n in text], path


def test_moved_run_evaluates_exports_and_resumes(tiny_export_run, tmp_path):
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(tiny_export_run.workdir, moved)
    cache = tmp_path / "other_cache"
    shutil.copytree(tiny_export_run.cache_dir / "features", cache / "features")
    assert str(tiny_export_run.workdir) not in (moved / "run.json").read_text()
    assert str(tiny_export_run.cache_dir) not in (moved / "run.json").read_text()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    train, export = str(ROOT / "train.py"), str(ROOT / "export.py")

    # A cache folder that does not hold the run's features is named in the error.
    done = run_checked([sys.executable, train, f"--workdir={moved}", "--mode=eval",
                        f"--runtime.cache_dir={tmp_path / 'empty'}"], cwd=elsewhere,
                       expect_failure=True)
    assert "no feature cache at" in done.stderr and "--runtime.cache_dir" in done.stderr

    run_checked([sys.executable, train, f"--workdir={moved}", "--mode=eval",
                 f"--runtime.cache_dir={cache}"], cwd=elsewhere)
    before = json.loads((tiny_export_run.workdir / "metrics_test.json").read_text())
    after = RunDir(str(moved)).load_metrics("test")
    for key in ("C-F1", "O-F1", "mAP"):
        assert after[key] == pytest.approx(before[key], abs=1e-6)

    done = run_checked([sys.executable, export, f"--workdir={moved}",
                        f"--export_dir={tmp_path / 'export'}"], cwd=elsewhere)
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "export" / "1")

    # One more stage-2 epoch: resumes from the copied checkpoint; the benchmark's images
    # are rebuilt in the new cache and must give the same content fingerprint.
    done = run_checked([sys.executable, train, f"--workdir={moved}", "--stage2.epochs=2",
                        f"--runtime.cache_dir={cache}"], cwd=elsewhere)
    assert "resuming from" in done.stderr and "stage 2 epoch 2/2" in done.stderr
    assert "stage 1 epoch" not in done.stderr.split("resuming from")[1]


def test_training_time_adds_up_over_reruns_and_evaluation_time_is_the_last(tmp_path):
    # A resumed run took the training time of all its commands (paper_table's "train s").
    run_dir = RunDir(str(tmp_path))
    run_dir.save_timing("train", {"data": 2.0, "training": 100.0}, {"jit_compile": True})
    run_dir.save_timing("train", {"data": 0.5, "training": 40.2, "evaluation": 3.0})
    with open(run_dir.timing_file("train")) as f:
        timing = json.load(f)
    commands = timing.pop("commands")
    assert timing == {"data": 2.5, "training": 140.2, "evaluation": 3.0}
    # Each command is listed with its own parts and what it trained with.
    assert [c["seconds"] for c in commands] == [{"data": 2.0, "training": 100.0},
                                                {"data": 0.5, "training": 40.2, "evaluation": 3.0}]
    assert [c.get("trained_with") for c in commands] == [{"jit_compile": True}, None]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", c["ended"]) for c in commands)
    run_dir.save_timing("eval", {"evaluation": 5.0})
    run_dir.save_timing("eval", {"evaluation": 4.0})
    with open(run_dir.timing_file("eval")) as f:
        assert json.load(f) == {"evaluation": 4.0}
