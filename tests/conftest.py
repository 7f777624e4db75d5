"""Shared fixtures and helpers of the test suite.

- `tiny_backbone`: a random two-layer CNN `Backbone` (4x4x8 maps of 32x32 images).
- `make_fake_run`: writes a finished-looking run folder by hand (config, facts, a freshly
  initialised checkpoint, a calibration with τ and a score_mix of 0.3) — fast, no training.
- `assert_config_holds_every_argument`: a layer's `get_config` names all its arguments.
- `sample_images`: three real JPEGs of different sizes and one truncated file.
- `save_examples_unpictured`: `save_examples` without a model, with the true
  labels each attention picture would show.
- `tiny_export_run`: the embedded benchmark trained at toy size with `train.py` and
  exported with `export.py` (child processes, as a user runs them), once per session
  (about a minute); `tiny_module` is its `InferenceModule` in this process.

Helpers: `run_checked` runs a command as a child and fails the test with its output
unless it exits as expected; `ctrl_c_as_in_a_terminal` lets a child take a SIGINT the
test sends; `to_png` re-encodes a JPEG's decoded pixels; `label_names` reads the decoded
names out of a signature's outputs.

A module's own fixtures of the same name stand for different things: `server` is a
stand-in model served in `test_serving.py` and the tiny run's export in
`test_end_to_end.py`.
"""

from __future__ import annotations

import glob
import inspect
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Before TensorFlow: ofrnn_tf sets its oneDNN default, read when TensorFlow loads.
import ofrnn_tf  # noqa: F401
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ofrnn_tf.config.experiment import ExperimentConfig
from ofrnn_tf.features.backbones import Backbone
from ofrnn_tf.host_limits import usable_cpus, visible_cpus
from ofrnn_tf.inference.module import InferenceModule
from ofrnn_tf.modeling.model import build_model
from ofrnn_tf.run_dir import RunDir, RunFacts
from toy_run import TINY_TRAIN_FLAGS

ROOT = Path(__file__).resolve().parents[1]

def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (scripts/test.sh): a worker per core the suite may use, fewer under a CPU
    quota, which xdist's own count (the cores it may run on) does not read."""
    return usable_cpus()


# Under a CPU quota below the cores seen, a command sizes TensorFlow's thread pools to it
# and says so on stderr: the suite sets them as a command would (for this process too,
# whose pools start at its first op), so the commands it starts say no more than elsewhere.
if usable_cpus() < visible_cpus():
    for _name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(_name, str(usable_cpus()))


# The hand-made runs of `make_fake_run`.
FAKE_NAMES = ("circle", "square", "stripe", "dot", "ring")
FAKE_BACKBONE = "tiny_test_cnn"
FAKE_TAU, FAKE_BEAM, FAKE_MAX_STEPS = 0.05, 2, 3
# A weight of M_map's v_prob in the ranking scores that is neither end of [0, 1]: served
# scores that ignored it would be the decoder's path scores (0) or v_prob (1).
FAKE_SCORE_MIX = 0.3


def assert_config_holds_every_argument(cls, config: dict, given: dict) -> None:
    """`get_config` names every argument of `cls.__init__`, with the values given: a
    clone-against-original comparison cannot see an argument missing on both sides."""
    arguments = [name for name, p in inspect.signature(cls.__init__).parameters.items()
                 if name != "self" and p.kind is not p.VAR_KEYWORD]
    assert not [name for name in arguments if name not in config], cls.__name__
    for name, value in given.items():
        assert config[name] == value, (cls.__name__, name, config[name], value)


# The program a child runs first (`ctrl_c_as_in_a_terminal`): it resets SIGINT, then
# becomes the command (exec keeps the pid and a default disposition).
_SIGINT_DEFAULT_THEN_EXEC = ("import os, signal, sys; signal.signal(signal.SIGINT, "
                             "signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])")


def ctrl_c_as_in_a_terminal(command: list[str]) -> list[str]:
    """`command`, started so that it takes SIGINT as a terminal's foreground process
    would, even where the suite itself runs as a shell's background job (`bash .ci/run
    &`), whose children inherit SIGINT ignored. Not by a `preexec_fn`: that forks the test's
    process with Python in the child, and where the test has gRPC calls in flight (the
    `serve` fixture), gRPC's poller, restarted in the fork, can abort the child before it
    runs the command (SIGABRT, "epoll_wait error: Bad file descriptor"; 1 to 3 forks in
    300 with two threads calling a server, none of 300 through this launcher)."""
    return [sys.executable, "-S", "-c", _SIGINT_DEFAULT_THEN_EXEC, *command]


def run_checked(args: list[str], timeout: float = 600.0, cwd=ROOT,
                expect_failure: bool = False, quiet_tf: bool = True) -> subprocess.CompletedProcess:
    """Runs a child process (from the repository root by default); fails the test with
    its output's tail unless it exits 0 (or, with `expect_failure`, unless it fails).
    `quiet_tf=False` leaves TensorFlow's log level to the command, as a user's shell does."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if not quiet_tf:
        del env["TF_CPP_MIN_LOG_LEVEL"]
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if (done.returncode != 0) != expect_failure:
        pytest.fail(f"{' '.join(args)} exited with {done.returncode}:\n"
                    f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


def to_png(jpeg: bytes) -> bytes:
    """The same pixels as TensorFlow decodes them from `jpeg`, as PNG."""
    return tf.io.encode_png(tf.io.decode_jpeg(jpeg, channels=3)).numpy()


def make_tiny_backbone(image_size: int = 32) -> Backbone:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu", name="maps")(x)
    return Backbone(FAKE_BACKBONE, "maps", keras.Model(inputs, x),
                    lambda images: tf.cast(images, tf.float32) / 127.5 - 1.0, image_size)


@pytest.fixture(scope="session")
def tiny_backbone() -> Backbone:
    """A random two-layer CNN giving 4x4x8 maps from 32x32 images."""
    return make_tiny_backbone()


@pytest.fixture
def save_examples_unpictured(monkeypatch):
    """`save(run_dir, data) -> (copies, drawn)`: `save_examples` of the test split of
    `data` (`run_data.Data`) without a model; `drawn` maps each copy to the true labels its
    attention picture would show."""
    from ofrnn_tf.visualization import example_images
    drawn = {}
    monkeypatch.setattr(example_images.Predictor, "from_run",
                        staticmethod(lambda run_dir: None))
    monkeypatch.setattr(example_images, "render_examples",
                        lambda predictor, copies, out_dir, ground_truth, max_images:
                        drawn.update(ground_truth))
    return lambda run_dir, data: (example_images.save_examples(
        run_dir, data.splits["test"], data.label_map), drawn)


@pytest.fixture(scope="session")
def make_fake_run():
    """`make(path, backbone=..., feature_shape=..., variant=..., tau=..., score_mix=...,
    calibrate=..., label_context_units=...)` writes a finished-looking run folder with
    freshly initialised weights."""

    def make(path: Path, *, backbone: str = FAKE_BACKBONE, feature_shape=(4, 4, 8),
             variant: str = "order_free", tau: float = FAKE_TAU,
             score_mix: float = FAKE_SCORE_MIX, calibrate: bool = True,
             image_size: int = 32, feature_layer: str = "maps",
             label_context_units: int = 0) -> Path:
        config = ExperimentConfig().replace(
            features={"backbone": backbone},
            model={"variant": variant, "lstm_units": 16, "attention_units": 16, "fc_units": 16,
                   "head_units": 16, "label_context_units": label_context_units},
            decoding={"beam_size": FAKE_BEAM})
        facts = RunFacts(label_names=FAKE_NAMES, max_steps=FAKE_MAX_STEPS, label_order=None,
                         small_area=None, features_name="unused", features_fingerprint="0" * 64,
                         feature_shape=tuple(feature_shape), image_size=image_size,
                         feature_layer=feature_layer)
        run_dir = RunDir(str(path))
        run_dir.save(config, facts)
        keras.utils.set_random_seed(0)
        model = build_model(config.model, facts.num_classes, facts.positions_and_depth)
        if model.uses_decoder:
            # A fresh residual decoder only repeats M_map (its last layer starts at zero), and
            # repeated logits tie paths exactly: give it a correction of its own.
            kernel = model.cell.fc2.kernel
            kernel.assign(np.random.default_rng(0).normal(0, 0.5, kernel.shape).astype("float32"))
        if model.label_context is not None:  # likewise: a fitted context corrects M_map
            kernel = model.label_context._correction.kernel
            kernel.assign(np.random.default_rng(1).normal(0, 1.0, kernel.shape).astype("float32"))
        tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                   run_dir.checkpoints_dir(), max_to_keep=1).save()
        if calibrate:
            run_dir.save_calibration({"tau": tau, "score_mix": score_mix, "beam_size": FAKE_BEAM,
                                      "min_labels": 1, "max_steps": FAKE_MAX_STEPS,
                                      "objective": "mean_f1"})
        return path

    return make


def write_sample_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (size, mode) in enumerate([((64, 48), "RGB"), ((40, 40), "L"), ((90, 30), "RGB")]):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3 if mode == "RGB" else 1),
                              dtype=np.uint8)
        path = folder / f"img{i}.jpg"
        Image.fromarray(pixels.squeeze()).convert(mode).save(path, quality=90)
        paths.append(path)
    corrupt = folder / "broken.jpg"
    corrupt.write_bytes(paths[0].read_bytes()[:300])  # a JPEG cut short
    return paths[:1] + [corrupt] + paths[1:]


@pytest.fixture(scope="module")
def sample_images(tmp_path_factory) -> list[Path]:
    """Three real JPEGs of different sizes (one grayscale), the second entry a JPEG cut
    short after 300 bytes."""
    return write_sample_images(tmp_path_factory.mktemp("images"))


@dataclass(frozen=True)
class TinyRun:
    """Paths of the shared tiny trained run and its export."""

    workdir: Path
    cache_dir: Path
    export_base: Path
    export_dir: Path  # version 1
    test_images: tuple[Path, ...]  # JPEG canvases of the test split
    train_log: str  # stderr of train.py and of export.py
    export_log: str

    def jpeg_bytes(self, n: int) -> list[bytes]:
        return [p.read_bytes() for p in self.test_images[:n]]


@pytest.fixture(scope="session")
def tiny_export_run(tmp_path_factory) -> TinyRun:
    """The shared tiny run, trained and exported once per session (`TinyRun`)."""
    base = tmp_path_factory.mktemp("tiny_run")
    workdir, cache, export_base = base / "run", base / "cache", base / "export"
    trained = run_checked([sys.executable, "train.py", f"--workdir={workdir}",
                           f"--runtime.cache_dir={cache}", *TINY_TRAIN_FLAGS], quiet_tf=False)
    done = run_checked([sys.executable, "export.py", f"--workdir={workdir}",
                        f"--export_dir={export_base}"], quiet_tf=False)
    export_dir = Path(done.stdout.strip().splitlines()[-1])
    assert export_dir == export_base / "1", done.stdout
    images = tuple(Path(p) for p in sorted(glob.glob(
        str(cache / "fashion_canvases" / "*" / "images" / "test" / "*.jpg"))))
    assert len(images) >= 8, f"expected test canvases under {cache}"
    return TinyRun(workdir, cache, export_base, export_dir, images, trained.stderr, done.stderr)


@pytest.fixture(scope="session")
def tiny_module(tiny_export_run) -> InferenceModule:
    """The tiny run's `InferenceModule`, in this process (what the export must reproduce)."""
    return InferenceModule.from_run(str(tiny_export_run.workdir))


def label_names(outputs: dict) -> list[list[str]]:
    """Per image, the decoded label names in decoding order (`label_names` output)."""
    return [[n.decode() if isinstance(n, bytes) else str(n) for n in row[:k]]
            for row, k in zip(np.asarray(outputs["label_names"]), np.asarray(outputs["num_labels"]))]
