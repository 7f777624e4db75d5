"""The examples a run reads, loaded and checked before any other work: the embedded
benchmark built from the run's settings or the user's data read from their files, each
split large enough, and the decoding settings (``min_labels``, ``beam_size``) within what
the data's T_max allows."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from ofrnn_tf.config.experiment import ExperimentConfig
from ofrnn_tf.data import fashion_canvases
from ofrnn_tf.data.canvas_config import CanvasConfig
from ofrnn_tf.data.example import Example
from ofrnn_tf.data.splits import check_split_sizes, label_statistics, load_examples
from ofrnn_tf.decoding.beam_search import beam_size_problem
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.run_dir import IncompatibleRunError
from ofrnn_tf.status import log


@dataclasses.dataclass
class Data:
    """The examples of a run and what was learned loading them."""

    splits: dict[str, list[Example]]
    label_map: LabelMap
    small_area: Optional[float] = None


def canvas_config(config: ExperimentConfig) -> CanvasConfig:
    """The embedded benchmark's canvases that `config`'s data settings name."""
    data = config.data
    return CanvasConfig(num_train=data.num_train, num_val=data.num_val,
                        num_test=data.num_test, seed=data.seed, scenes=data.scenes)


def benchmark_dir(config: ExperimentConfig) -> str:
    """Where the embedded benchmark of `config` is built: one folder per configuration."""
    key = fashion_canvases.fingerprint(canvas_config(config).to_dict())[:12]
    return os.path.join(config.runtime.cache_dir, "fashion_canvases", key)


def load_data(config: ExperimentConfig, check_files: bool = True) -> Data:
    """The train / val / test examples (building the benchmark first if it is the data),
    checked to be large enough for the run, and to hold its ``decoding.min_labels``,
    before any other work. Without `check_files`, listed images are kept whether or not
    their files are there."""
    data = config.data
    paths = {"data_dir": data.data_dir or None, "check_files": check_files}
    if data.manifest:
        paths["manifest"] = data.manifest
    if data.dataset == "coco":
        paths["coco_release"] = data.coco_release
    small_area = None
    if data.dataset == "fashion_canvases":
        built = fashion_canvases.build_fashion_canvases(benchmark_dir(config),
                                                        canvas_config(config))
        paths = {"data_dir": built["out_dir"], "check_files": check_files}
        small_area = float(built["small_area_fraction"])
    splits, label_map = load_examples(data.dataset, paths, data.val_fraction)
    check_split_sizes(splits, config.train.batch_size)
    loaded = Data(splits, label_map, small_area)
    max_steps = data_t_max(loaded)
    check_min_labels(config, label_map.num_classes, max_steps)
    check_beam_size(config, label_map.num_classes, max_steps)
    return loaded


def t_max(longest: int, label_map: LabelMap) -> int:
    """T_max, the decoder's steps: the largest label count of a training image
    (`longest`), at most the number of classes."""
    return min(longest, label_map.num_classes)


def say_max_steps(splits: dict[str, list[Example]], max_steps: int, variant: str) -> None:
    """Says T_max and the training images that set it (one image with many labels sets it
    for the whole run, and decoding runs that many steps), and warns where validation or
    test images carry more labels than any prediction can hold; nothing for the
    ``baseline`` variant, M_map alone, which labels every class above τ."""
    if variant == "baseline":
        return
    train = splits["train"]
    sizes = sorted(len(e.label_ids) for e in train)
    setters = [e.image_id for e in train if len(e.label_ids) == max_steps]
    log(f"T_max = {max_steps}, the largest label count of a training image, which bounds the "
        f"labels of a prediction: {len(setters)} of {len(train)} carry {max_steps}, the first "
        f"image {setters[0]!r}; 99 % carry at most {sizes[int(0.99 * (len(sizes) - 1))]}")
    for split in ("val", "test"):
        examples = splits.get(split, [])
        beyond = sum(max(len(e.label_ids) - max_steps, 0) for e in examples)
        if beyond:
            total = sum(len(e.label_ids) for e in examples)
            longer = sum(len(e.label_ids) > max_steps for e in examples)
            log(f"WARNING: {split}: {longer} of {len(examples)} images carry more than "
                f"T_max = {max_steps} labels: {beyond} of the split's {total} labels "
                f"({100 * beyond / total:.0f} %) are beyond any prediction, so its recall "
                f"(O-R) is at most {100 * (1 - beyond / total):.1f} %")


def data_t_max(data: Data) -> int:
    """T_max of a run on `data` (`t_max` of its training split)."""
    _, longest = label_statistics(data.splits["train"], data.label_map.num_classes)
    return t_max(longest, data.label_map)


def check_min_labels(config: ExperimentConfig, num_classes: int, max_steps: int) -> None:
    """Refuses (`IncompatibleRunError`) a ``decoding.min_labels`` above what a prediction
    holds, before any work: `max_steps` (T_max) labels from the beam search (which could
    not keep more, and would say so only after stage 1), all `num_classes` from M_map alone
    (``baseline``)."""
    if config.model.variant == "baseline":
        most, what = num_classes, f"C = {num_classes} labels (the number of classes)"
    else:
        most = max_steps
        what = (f"T_max = {most} labels (the largest label count of a training image, at "
                f"most the number of classes)")
    if config.decoding.min_labels > most:
        raise IncompatibleRunError(
            f"--decoding.min_labels={config.decoding.min_labels} cannot hold: a prediction has "
            f"at most {what}; use at most {most}")


def check_beam_size(config: ExperimentConfig, num_classes: int, max_steps: int) -> None:
    """Refuses (`IncompatibleRunError`) a ``decoding.beam_size`` wider than any beam that
    can change a prediction of `max_steps` (T_max) labels from `num_classes` classes
    (`beam_size_problem`), before any work; the ``baseline`` variant has no beam."""
    beam_size = config.decoding.beam_size
    too_wide = config.model.variant != "baseline" and beam_size_problem(
        beam_size, num_classes, max_steps)
    if too_wide:
        raise IncompatibleRunError(f"--decoding.beam_size={beam_size} {too_wide}")
