"""Shared fixtures: one tiny finished run + export, and in-process decoding of it.

`tiny_export_run` trains the embedded benchmark at toy size with `train.py` and
exports it with `export.py` (both as child processes, as a user runs them), once
per test session (about a minute), so every test that needs a real export shares it.
`in_process_decoder` decodes images of that run without the export: the best
checkpoint, the run's backbone and `make_decoder` with the calibrated τ, K and T_max,
which is what the export must reproduce.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY_TRAIN_FLAGS = ("--num_train=64", "--num_val=32", "--num_test=16", "--epochs_stage1=1",
                    "--epochs_stage2=1", "--batch_size=32", "--lstm_units=32",
                    "--attention_units=32", "--fc_units=32")


def run_checked(args: list[str], timeout: float = 600.0, **kwargs) -> subprocess.CompletedProcess:
    """Runs a child process from the repository root; fails the test with its output's tail."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited with {done.returncode}:\n"
                    f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


@dataclass(frozen=True)
class TinyRun:
    """Paths and settings of the shared tiny run."""

    workdir: Path
    cache_dir: Path
    export_base: Path
    export_dir: Path  # version 1
    test_images: tuple[Path, ...]  # JPEG canvases of the test split
    calibration: dict
    run_config: dict

    def jpeg_bytes(self, n: int) -> list[bytes]:
        return [p.read_bytes() for p in self.test_images[:n]]


def to_png(jpeg: bytes) -> bytes:
    """The same pixels as TensorFlow decodes them from `jpeg`, as PNG."""
    import tensorflow as tf

    return tf.io.encode_png(tf.io.decode_jpeg(jpeg, channels=3)).numpy()


@pytest.fixture(scope="session")
def tiny_export_run(tmp_path_factory) -> TinyRun:
    base = tmp_path_factory.mktemp("tiny_run")
    workdir, cache, export_base = base / "run", base / "cache", base / "export"
    run_checked([sys.executable, "train.py", f"--workdir={workdir}", f"--cache_dir={cache}",
                 *TINY_TRAIN_FLAGS])
    images_glob = str(cache / "fashion_canvases" / "images" / "test" / "*.jpg")
    done = run_checked([sys.executable, "export.py", f"--workdir={workdir}",
                        f"--export_dir={export_base}", f"--warmup_images={images_glob}"])
    export_dir = Path(done.stdout.strip().splitlines()[-1])
    assert export_dir == export_base / "1", done.stdout
    with open(workdir / "calibration.json") as f:
        calibration = json.load(f)
    with open(workdir / "run_config.json") as f:
        run_config = json.load(f)
    images = tuple(Path(p) for p in sorted(glob.glob(images_glob)))
    assert len(images) >= 8, f"expected test canvases under {images_glob}"
    return TinyRun(workdir, cache, export_base, export_dir, images, calibration, run_config)


class InProcessDecoder:
    """The run decoded without its export: best weights + backbone + `make_decoder`."""

    def __init__(self, run: TinyRun):
        from ofrnn_tf.decoding.beam_search import make_decoder
        from ofrnn_tf.features.backbones import get_backbone
        from ofrnn_tf.training.trainer import load_best_model

        config = run.run_config
        self.backbone = get_backbone(config["backbone"], config["feature_layer"] or None)
        height, width, depth = self.backbone.feature_shape
        self.model, _ = load_best_model(str(run.workdir), (height * width, depth))
        self.label_names = list(config["label_names"])
        self.decoder = make_decoder(
            self.model, beam_size=run.calibration["beam_size"], max_steps=config["max_steps"],
            threshold=run.calibration["tau"], min_labels=run.calibration["min_labels"])

    def features(self, images: list[bytes]) -> np.ndarray:
        """float32 `[N, H, W, k]` backbone maps of encoded images."""
        import tensorflow as tf

        from ofrnn_tf.features.images import decode_and_resize

        pixels = tf.stack([decode_and_resize(tf.constant(b), self.backbone.image_size)
                           for b in images])
        return self.backbone(pixels).numpy()

    def decode_features(self, features: np.ndarray) -> dict[str, np.ndarray]:
        n, height, width, depth = features.shape
        out = self.decoder(features.reshape(n, height * width, depth))
        return {k: v.numpy() for k, v in out.items()}

    def decode_images(self, images: list[bytes]) -> dict[str, np.ndarray]:
        return self.decode_features(self.features(images))

    def names(self, out: dict[str, np.ndarray]) -> list[list[str]]:
        """Per image, the decoded label names in decoding order."""
        return [[self.label_names[c] for c in row[:n]]
                for row, n in zip(out["labels"], out["num_labels"])]


@pytest.fixture(scope="session")
def in_process_decoder(tiny_export_run) -> InProcessDecoder:
    return InProcessDecoder(tiny_export_run)
