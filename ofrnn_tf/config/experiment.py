"""The experiment configuration: every setting of a run and its default, in one tree.

`ExperimentConfig` is a tree of dataclasses, one per part of the run (data, features,
model, the two training stages of Algorithm 1, decoding, runtime). Its defaults are
the main job's (the embedded benchmark); the presets in `ofrnn_tf.configs` change a
few of them, and the command-line flags of every entry point are derived from these
fields (`ofrnn_tf.config.flags`), never restated.

Each field's metadata holds its help text and, for the fields that may change between
two invocations on the same run folder (paths, epochs and patience of a stage not yet
finished, the feature cache's sharding, shuffling, decoding, runtime),
``resumable=True``. Every other field is part of the run's identity: a rerun that
changes one is refused, naming it.

Example:
>>> config = ExperimentConfig()
>>> config.model.variant, config.features.layer
('order_free', 'stage5')
>>> ExperimentConfig.from_dict(config.to_dict()) == config
True
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any, Iterator, Optional

DATASETS = ("fashion_canvases", "coco", "nuswide", "manifest")
VARIANTS = ("order_free", "baseline", "no_attention", "frequency_first", "rare_first")
TRAIN_STEPS = ("gt_count", "gt_count_plus_one", "max")
HEADS = ("mean_linear", "spatial")
DECODERS = ("paper", "residual")
LABEL_CONTEXT_TRAINING = ("after_stage1", "joint")
STAGE2_LOSSES = ("bce", "pla")
ATTENTION_PENALTIES = ("doubly_stochastic", "overlap")
SCHEDULES = ("constant", "cosine")
OBJECTIVES = ("mean_f1", "c_f1", "o_f1")
STRATEGIES = ("default", "mirrored", "multi_worker")
SCENES = ("none", "outfits")  # ofrnn_tf.data.canvas_config.SCENE_TABLES
COCO_RELEASES = ("auto", "2014", "2017")  # ofrnn_tf.data.registry.COCO_RELEASES
# The widest beam decoding takes: every image decodes its K beams at once, so memory and
# time grow with K (`ofrnn_tf.decoding.beam_search.beam_size_problem` bounds it by the data).
MAX_BEAM_SIZE = 1000


class UnknownSettingsError(ValueError):
    """A config names sections or settings this version does not have (one written by a
    newer version, or edited)."""


def setting(default, help: str, *, choices: Optional[tuple] = None, resumable: bool = False):
    """A config field: its default, help text, allowed values and whether it may change
    on a rerun in the same run folder."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "resumable": resumable})


def section(cls):
    """A sub-config field whose default is `cls()`."""
    return dataclasses.field(default_factory=cls)


def _check_choices(obj) -> None:
    for field in dataclasses.fields(obj):
        choices = field.metadata.get("choices")
        value = getattr(obj, field.name)
        if choices and value not in choices:
            raise ValueError(f"{type(obj).__name__}.{field.name} must be one of {list(choices)}; "
                             f"got {value!r}")


def _check_positive(obj, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = "≥ 0" if allow_zero else "> 0"
            raise ValueError(f"{type(obj).__name__}.{name} must be {bound}; got {value!r}")


@dataclasses.dataclass
class DataConfig:
    """Which images and labels (paper §Experiments; the benchmark is this project's)."""

    dataset: str = setting("fashion_canvases", "Data set: the embedded Fashion-MNIST canvas "
                           "benchmark, MS-COCO (2014, or 2017), NUS-WIDE or a CSV/JSON/JSONL "
                           "manifest.",
                           choices=DATASETS)
    data_dir: str = setting("", "Root of coco/nuswide, or a folder of <split>.csv (or .jsonl, "
                            ".json) manifests; the benchmark is built under "
                            "--runtime.cache_dir.", resumable=True)
    manifest: str = setting("", "One CSV, JSON Lines or JSON manifest file (dataset=manifest).",
                            resumable=True)
    coco_release: str = setting("auto", "MS-COCO: the release read from --data.data_dir, "
                                "2014 (the paper's) or 2017; auto reads 2014 where the folder "
                                "holds its annotations, else 2017.", choices=COCO_RELEASES,
                                resumable=True)  # other data are refused by their content
    val_fraction: float = setting(0.05, "Share of train held out (by image-id hash) for τ and "
                                  "epoch selection where a data set has no validation split "
                                  "(one --data.manifest file: as much again is held out for "
                                  "test).")
    num_train: int = setting(10000, "Benchmark: training canvases.")
    num_val: int = setting(1000, "Benchmark: validation canvases.")
    num_test: int = setting(2000, "Benchmark: test canvases.")
    seed: int = setting(0, "Benchmark: seed of the canvases (the data seed).")
    scenes: str = setting("none", "Benchmark: none (items drawn independently) or outfits "
                          "(each canvas draws a scene, each scene its own classes and item "
                          "count: labels co-occur).", choices=SCENES)

    def __post_init__(self):
        _check_choices(self)
        _check_positive(self, "num_train", "num_val", "num_test")
        if self.seed < 0:  # NumPy's generators take any other integer
            raise ValueError(f"DataConfig.seed must be ≥ 0; got {self.seed!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"DataConfig.val_fraction must be in (0, 1); got {self.val_fraction}")
        # A path the chosen data set does not read would otherwise be ignored without a word.
        if self.manifest and self.dataset != "manifest":
            raise ValueError(f"--data.manifest={self.manifest} is read only with "
                             f"--data.dataset=manifest, not {self.dataset}: add --config=manifest")
        if self.manifest and self.data_dir:
            raise ValueError(f"--data.manifest={self.manifest} and --data.data_dir="
                             f"{self.data_dir} both name the data, and a manifest file is read "
                             f"alone (data_dir would be ignored): give one of them (clear the "
                             f"other with --data.data_dir= or --data.manifest=)")
        if self.data_dir and self.dataset == "fashion_canvases":
            raise ValueError(f"--data.data_dir={self.data_dir} is not read by the embedded "
                             f"benchmark (--data.dataset=fashion_canvases, built under "
                             f"--runtime.cache_dir): for your own data add --config=manifest, "
                             f"--config=coco or --config=nuswide")


@dataclasses.dataclass
class FeaturesConfig:
    """The frozen CNN whose maps `V_feat = [v_1..v_m]` the model reads (Eq. 2)."""

    backbone: str = setting("efficientnet_lite0", "Frozen CNN: efficientnet_lite0 (offline "
                            "ImageNet weights) or, from keras.applications (weights downloaded "
                            "once), densenet121, efficientnetb0, mobilenet_v2, resnet101, "
                            "resnet152, resnet50 or vgg16.")
    layer: str = setting("stage5", "Feature layer: a named layer of the backbone (efficientnet_"
                         "lite0: stage5 14x14x112, stage6, top 7x7x1280; resnet*: conv4, conv5) "
                         "or any Keras layer name.")
    extract_batch_size: int = setting(32, "Images per backbone call during extraction.",
                                      resumable=True)
    num_shards: int = setting(8, "TFRecord shards per split in the feature cache.",
                              resumable=True)

    def __post_init__(self):
        _check_positive(self, "extract_batch_size", "num_shards")
        if not self.backbone or not self.layer:
            raise ValueError("FeaturesConfig.backbone and FeaturesConfig.layer must each name "
                             f"one; got {self.backbone!r} and {self.layer!r}")


@dataclasses.dataclass
class ModelConfig:
    """The network of paper Fig. 2, its ablations (Tables 1–2) and this project's decoder.

    The defaults are the main job's model (docs/model.md, "The main job's model"): the
    spatial M_map and the residual decoder, except the head's kernel and width, which
    `ExperimentConfig` sets to 3 and 128. ``--config=paper`` sets the paper's: ``head=mean_linear``,
    ``decoder=paper``.
    """

    variant: str = setting("order_free", "order_free (the full model) or an ablation of the "
                           "paper's Tables 1-2: baseline (M_map alone), no_attention, "
                           "frequency_first, rare_first.", choices=VARIANTS)
    head: str = setting("spatial", "M_map: mean_linear (the paper's Eq. 1-3: a linear layer on "
                        "mean-pooled maps) or spatial (a per-position MLP, class scores pooled "
                        "over positions by log-sum-exp).", choices=HEADS)
    head_units: int = setting(256, "Width of the spatial head's per-position hidden layer.")
    head_kernel_size: int = setting(1, "Reach of the spatial head's hidden layer over the grid of "
                                    "positions: 1 (each position alone) or an odd k (a k x k "
                                    "convolution; square maps only).")
    head_dropout: float = setting(0.3, "Dropout on M_map's input features while training it.")
    label_context_units: int = setting(
        0, "Width of the label-context MLP that corrects M_map's logits from all of its class "
        "probabilities (0: none; when it trains: --model.label_context_training). Helps where "
        "labels co-occur.")
    label_context_dropout: float = setting(0.2, "Dropout in the label-context MLP while "
                                           "training it.")
    label_context_training: str = setting(
        "after_stage1", "When the label context learns: after_stage1 (fitted over stage 1's "
        "best M_map, frozen) or joint (trained with M_map in stage 1, the loss the BCE of both "
        "M_map's logits and the corrected ones).", choices=LABEL_CONTEXT_TRAINING)
    standardize_features: bool = setting(
        True, "Standardise every feature channel (mean and std of the training set) before M_map "
        "and the decoder.")
    decoder: str = setting("residual", "paper (Eq. 4-7: attention over the CNN maps, p_t from "
                           "FC2) or residual (attention over the spatial head's per-position "
                           "features and class scores; p_t = M_map's logits + a correction).",
                           choices=DECODERS)
    lstm_units: int = setting(256, "LSTM width (Eq. 6).")
    attention_units: int = setting(256, "Width of the attention MLP (Eq. 4; decoder=paper).")
    fc_units: int = setting(512, "Width of FC1 in the prediction layer (Eq. 7).")
    dropout: float = setting(0.2, "Dropout on FC1 while training (the paper keeps 0.8, i.e. 0.2).")
    feature_dropout: float = setting(0.0, "Dropout on the feature maps the decoder reads while "
                                     "training it.")

    def __post_init__(self):
        _check_choices(self)
        _check_positive(self, "lstm_units", "attention_units", "fc_units", "head_units")
        _check_positive(self, "label_context_units", allow_zero=True)
        if self.head_kernel_size < 1 or self.head_kernel_size % 2 == 0:
            raise ValueError("ModelConfig.head_kernel_size must be a positive odd number; got "
                             f"{self.head_kernel_size}")
        for name in ("dropout", "feature_dropout", "head_dropout", "label_context_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ModelConfig.{name} must be in [0, 1); got {getattr(self, name)}")
        # The baseline builds no decoder: which one would go with its head is not asked.
        if self.decoder == "residual" and self.head != "spatial" and self.variant != "baseline":
            raise ValueError("ModelConfig.decoder=residual reads the spatial head's per-position "
                             "features: it needs head=spatial")
        if self.decoder == "residual" and self.variant == "no_attention":
            raise ValueError("ModelConfig.variant=no_attention is an ablation of the paper's "
                             "decoder: it needs decoder=paper (--model.decoder=paper, or "
                             "--config=paper for the paper's whole model)")


@dataclasses.dataclass
class StageConfig:
    """Optimiser and schedule of one training stage of Algorithm 1 (stage 1: M_map, selected
    by validation mAP; stage 2: the decoder, selected by the decoding used at test time),
    or of the label context fitted between them (selected by validation mAP)."""

    learning_rate: float = setting(1e-3, "Adam learning rate (a preset may set its own: "
                                  "ofrnn-train --config=NAME --workdir=DIR --print_config "
                                  "shows them).")
    schedule: str = setting("constant", "Learning rate over the stage: constant, or cosine "
                            "(decaying to 0 at the stage's last epoch).", choices=SCHEDULES)
    epochs: int = setting(6, "Most epochs of this stage.", resumable=True)
    patience: int = setting(2, "Stop after this many epochs without a better validation "
                            "score (0: run every epoch); the best epoch is kept.",
                            resumable=True)

    def __post_init__(self):
        _check_choices(self)
        _check_positive(self, "learning_rate", "epochs")
        _check_positive(self, "patience", allow_zero=True)


@dataclasses.dataclass
class TrainConfig:
    """What both stages share."""

    batch_size: int = setting(64, "Global batch size.")
    shuffle_buffer: int = setting(4096, "Serialized records in the shuffle buffer (when they "
                                  "are read from files each epoch).", resumable=True)
    cache_records_mib: int = setting(2048, "MiB that training may keep in memory at once "
                                     "(0: nothing, for a small machine), capped at a third of "
                                     "the memory the process may use (its cgroup's limit, "
                                     "else MemAvailable): the training split's records when "
                                     "its shards fit (later epochs then read no file and "
                                     "shuffle over the whole split), and the residual "
                                     "decoder's stage-2 M_map outputs when they fit (the "
                                     "records are let go first where both do not), and the "
                                     "validation split, parsed, where it fits beside both.",
                                     resumable=True)
    seed: int = setting(0, "Seed of initial weights, data order and dropout.")
    train_steps: str = setting("gt_count_plus_one", "Decoding steps per image in stage 2: its "
                               "label count (the paper preset's reading of Algorithm 1), one "
                               "more (so the step after the last label learns to stop), or "
                               "T_max.", choices=TRAIN_STEPS)
    loss: str = setting("bce", "Stage-2 loss: bce (Eq. 8, every step against the full label "
                        "vector) or pla (Orderless RNN's predicted-label alignment: a softmax "
                        "over the labels left and stop, the target aligned to the model's own "
                        "choice, stop after the last true label).",
                        choices=STAGE2_LOSSES)
    attention_penalty: float = setting(0.0, "Weight of a stage-2 penalty on each image's "
                                       "attention summed over its steps, added before the "
                                       "mean over the image's steps (0: none).")
    attention_penalty_form: str = setting(
        "doubly_stochastic", "The penalty on a position's summed attention a: (1 - a)^2 "
        "(Show, Attend and Tell's doubly stochastic attention) or max(0, a - 1)^2 (overlap: "
        "attending a position again).", choices=ATTENTION_PENALTIES)

    def __post_init__(self):
        _check_choices(self)
        _check_positive(self, "batch_size", "shuffle_buffer")
        _check_positive(self, "attention_penalty", allow_zero=True)
        _check_positive(self, "cache_records_mib", allow_zero=True)
        if not 0 <= self.seed < 2**32:  # keras.utils.set_random_seed seeds NumPy's legacy one
            raise ValueError(f"TrainConfig.seed must be in 0..{2**32 - 1}; got {self.seed!r}")


@dataclasses.dataclass
class DecodingConfig:
    """Test-time decoding (paper Eq. 11): beam search with a threshold τ chosen on validation."""

    beam_size: int = setting(3, f"Beam width K at test time (1 = greedy; at most "
                             f"{MAX_BEAM_SIZE}, and no wider than the data's distinct label "
                             f"paths: docs/model.md).", resumable=True)
    min_labels: int = setting(1, "Labels every image gets at least.", resumable=True)
    calibration_objective: str = setting(
        "mean_f1", "What τ maximises on validation: (C-F1 + O-F1) / 2, C-F1 or O-F1.",
        choices=OBJECTIVES, resumable=True)

    def __post_init__(self):
        _check_choices(self)
        _check_positive(self, "beam_size")
        _check_positive(self, "min_labels", allow_zero=True)
        if self.beam_size > MAX_BEAM_SIZE:
            raise ValueError(f"DecodingConfig.beam_size must be at most {MAX_BEAM_SIZE} (every "
                             f"image decodes its K beams at once); got {self.beam_size}")


@dataclasses.dataclass
class RuntimeConfig:
    """Where and how a run executes; never part of its identity."""

    cache_dir: str = setting("data", "Cache of built benchmarks and feature shards.",
                             resumable=True)
    strategy: str = setting("default", "tf.distribute strategy: one device, all local GPUs "
                            "(mirrored) or several machines (multi_worker, reads TF_CONFIG).",
                            choices=STRATEGIES, resumable=True)
    mixed_precision: bool = setting(False, "mixed_float16 compute (GPUs).", resumable=True)
    jit_compile: bool = setting(False, "XLA-compile each training step's forward and backward "
                                "pass (with dropout, XLA draws other masks).", resumable=True)
    checkpoint_every: int = setting(200, "Steps between checkpoints (also every epoch).",
                                    resumable=True)
    log_every: int = setting(20, "Steps between TensorBoard summaries.", resumable=True)

    def __post_init__(self):
        _check_choices(self)
        _check_positive(self, "checkpoint_every", "log_every")
        if not self.cache_dir.strip():
            raise ValueError("RuntimeConfig.cache_dir is empty: give the folder of the "
                             "benchmark and feature cache (the default is data)")


@dataclasses.dataclass
class ExperimentConfig:
    """Every setting of a run. The defaults are the main job (embedded benchmark)."""

    data: DataConfig = section(DataConfig)
    features: FeaturesConfig = section(FeaturesConfig)
    # The main job's head reads a 3x3 neighbourhood with 128 units, 12 epochs: on validation
    # over data seeds 0-2 as good as 256 units for 16 epochs, in half the training time
    # (docs/experiments.md). The field's own kernel default, 1, is what configs and checkpoints
    # written before the option existed were trained with.
    model: ModelConfig = dataclasses.field(
        default_factory=lambda: ModelConfig(head_kernel_size=3, head_units=128))
    stage1: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(
        learning_rate=3e-3, schedule="cosine", epochs=12, patience=5))
    # Cosine over 12 epochs: with the earlier constant rate and at most 6 epochs, the best
    # validation epoch was the last in 5 of the paper table's 6 main-job runs.
    stage2: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(
        learning_rate=1e-3, schedule="cosine", epochs=12, patience=0))
    # Fits the label context (--model.label_context_units > 0) over stage 1's best M_map.
    label_context: StageConfig = dataclasses.field(default_factory=lambda: StageConfig(
        learning_rate=1e-3, schedule="constant", epochs=40, patience=10))
    train: TrainConfig = section(TrainConfig)
    decoding: DecodingConfig = section(DecodingConfig)
    runtime: RuntimeConfig = section(RuntimeConfig)

    def __post_init__(self):
        if self.train.attention_penalty and self.model.variant == "no_attention":
            raise ValueError("--train.attention_penalty needs attention to penalise; "
                             "--model.variant=no_attention has none")
        # The benchmark's split sizes are settings: a batch larger than its training split
        # is refused here, before its canvases are built (other data sets: `check_split_sizes`).
        if self.data.dataset == "fashion_canvases" and self.train.batch_size > self.data.num_train:
            raise ValueError(
                f"the train split has {self.data.num_train} image(s), fewer than one batch of "
                f"{self.train.batch_size}: lower --train.batch_size (to at most "
                f"{self.data.num_train}) or raise --data.num_train")

    def unread_settings(self) -> dict[str, str]:
        """The settings this run never reads, each with the reason (``{"stage2.epochs":
        "--model.variant=baseline is M_map alone: ..."}``): a command line that sets one
        is refused (`ofrnn_tf.config.flags`) rather than ignored."""
        unread: dict[str, str] = {}

        def mark(names, reason: str) -> None:
            for name in names:
                unread.setdefault(name, reason)

        model, train, data = self.model, self.train, self.data
        context_stage = [f"label_context.{f.name}" for f in dataclasses.fields(StageConfig)]
        if model.variant == "baseline":
            mark([*(f"stage2.{f.name}" for f in dataclasses.fields(StageConfig)),
                  "train.train_steps", "train.loss", "train.attention_penalty",
                  "train.attention_penalty_form", "model.decoder", "model.lstm_units",
                  "model.attention_units", "model.fc_units", "model.dropout",
                  "model.feature_dropout", "decoding.beam_size"],
                 "--model.variant=baseline is M_map alone: no decoder, no stage 2, its labels "
                 "the classes above τ")
        elif model.variant in ("frequency_first", "rare_first"):
            mark(["train.loss", "train.train_steps"],
                 f"--model.variant={model.variant} learns each step as a softmax over the labels "
                 f"left and stop, against the next label of its fixed order, for T_i + 1 steps")
        elif train.loss == "pla":
            mark(["train.train_steps"], "--train.loss=pla trains T_i + 1 steps, the last one's "
                 "target stop")
        if model.variant == "no_attention":
            mark(["model.attention_units"], "--model.variant=no_attention has no attention MLP")
        elif model.decoder == "residual":
            mark(["model.attention_units"], "--model.decoder=residual attends with the spatial "
                 "head's own features and scores, not with the paper's attention MLP (Eq. 4)")
        if not train.attention_penalty:
            mark(["train.attention_penalty_form"], "--train.attention_penalty is 0: no penalty")
        if model.head == "mean_linear":
            mark(["model.head_units", "model.head_kernel_size"], "--model.head=mean_linear is "
                 "one linear layer on mean-pooled maps (Eq. 1-3)")
        if not model.label_context_units:
            mark([*context_stage, "model.label_context_dropout", "model.label_context_training"],
                 "--model.label_context_units is 0: no label context")
        elif model.label_context_training == "joint":
            mark(context_stage, "--model.label_context_training=joint trains the label context "
                 "in stage 1, with --stage1's settings")
        if data.dataset != "coco":
            mark(["data.coco_release"], f"--data.dataset={data.dataset} is not MS-COCO")
        if data.dataset != "fashion_canvases":
            mark(["data.num_train", "data.num_val", "data.num_test", "data.seed", "data.scenes"],
                 f"--data.dataset={data.dataset} is not the embedded benchmark these settings "
                 f"build")
        else:
            mark(["data.val_fraction"], "the embedded benchmark draws its own validation "
                 "canvases (--data.num_val)")
        val_file = _validation_manifest(data)
        if val_file:
            mark(["data.val_fraction"], f"{val_file} is the validation split (without that "
                 f"file, that share of train is held out instead)")
        return unread

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_record(self) -> dict[str, dict[str, Any]]:
        """`to_dict` as a run folder keeps it: without the runtime section (where and how
        a command runs is not the run's), nor the settings the run never reads that are
        at their defaults (`from_dict` gives those back), so that a version of this
        package that predates one of them still reads the run."""
        unread = self.unread_settings()
        record = self.to_dict()
        del record["runtime"]
        for name, field, value in fields(self):
            section, key = name.split(".")
            if name in unread and section in record and value == field.default:
                del record[section][key]
        return record

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentConfig":
        """The config a `to_dict` result describes; unknown sections or fields are refused."""
        sections = typing.get_type_hints(cls)
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise UnknownSettingsError(f"unknown config sections {unknown}; known: "
                                       f"{sorted(sections)}")
        parts = {}
        for name, values in data.items():
            section_cls = sections[name]
            known = {f.name for f in dataclasses.fields(section_cls)}
            extra = sorted(set(values) - known)
            if extra:
                raise UnknownSettingsError(f"unknown fields {extra} in config section {name!r}")
            try:
                parts[name] = section_cls(**values)
            except ValueError as error:
                # A section's checks name its class (StageConfig serves three sections):
                # named here by the flag, e.g. --stage2.epochs.
                raise ValueError(str(error).replace(f"{section_cls.__name__}.", f"--{name}.")
                                 ) from None
        return cls(**parts)

    def replace(self, **sections: dict) -> "ExperimentConfig":
        """A copy with some fields changed: ``config.replace(model={"variant": "baseline"})``."""
        data = self.to_dict()
        for name, values in sections.items():
            if name not in data:
                raise ValueError(f"unknown config section {name!r}")
            data[name] = {**data[name], **values}
        return ExperimentConfig.from_dict(data)


def fields(config: ExperimentConfig) -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """Every leaf setting as ``("section.name", field, value)``, in definition order."""
    for part in dataclasses.fields(config):
        sub = getattr(config, part.name)
        for field in dataclasses.fields(sub):
            yield f"{part.name}.{field.name}", field, getattr(sub, field.name)


def _validation_manifest(data: DataConfig) -> Optional[str]:
    """The validation manifest of a manifest folder (``val.csv`` …), which makes
    ``data.val_fraction`` unread; None where there is none (or two, which loading
    refuses)."""
    if data.dataset != "manifest" or not data.data_dir or data.manifest:
        return None
    from ofrnn_tf.data import DataFileError  # the folder is looked at, not read
    from ofrnn_tf.data.registry import manifest_file
    try:
        return manifest_file(data.data_dir, "val")
    except DataFileError:
        return None


def identity_differences(saved: ExperimentConfig, now: ExperimentConfig) -> list[str]:
    """The settings, outside the resumable ones and those neither config reads
    (`ExperimentConfig.unread_settings`), in which two configs differ."""
    current = {name: value for name, _, value in fields(now)}
    unread = set(saved.unread_settings()) & set(now.unread_settings())
    return [f"{name}: {value!r} in the run folder vs {current[name]!r} now"
            for name, field, value in fields(saved)
            if not field.metadata["resumable"] and name not in unread
            and value != current[name]]
