"""A run's feature cache, and the data a rerun reads checked against the run's folder
before any feature extraction: the same class names, images and labels the run was
trained on (`check_resumed_data`, `check_evaluated_data`), and its cache found under this
``--runtime.cache_dir`` (`locate_features`)."""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from typing import Optional

from ofrnn_tf.config.experiment import ExperimentConfig
from ofrnn_tf.data import ImagesNotFoundError
from ofrnn_tf.data.run_data import Data, load_data
from ofrnn_tf.features import cache, shard_meta
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.run_dir import IncompatibleRunError, RunDir, RunFacts
from ofrnn_tf.status import log


class RunDataChangedError(IncompatibleRunError):
    """A rerun on an existing run folder reads other data (images, labels, class names)
    than the run was trained on."""


@dataclasses.dataclass
class CacheKey:
    """What a feature cache is known by: its folder name, content fingerprint and what the
    fingerprint was made of (`cache.describe_inputs`; None for a format-1 cache a run
    resumes with)."""

    name: str
    fingerprint: str
    inputs: Optional[dict]


def feature_cache_key(config: ExperimentConfig, data: Data) -> CacheKey:
    """The `CacheKey` of the feature cache of `config` on `data` (no image is read).

    The user's data are known by their files' sizes as well (cache format 2);
    the embedded benchmark, whose images its build settings determine, by image ids and
    labels only (see `ofrnn_tf.features.cache`)."""
    features = config.features
    inputs = cache.describe_inputs(data.splits, data.label_map,
                                   file_stats=config.data.dataset != "fashion_canvases")
    fingerprint = cache.fingerprint_of(inputs, features.backbone, features.layer)
    name = cache.cache_name_in_use(config.runtime.cache_dir, config.data.dataset,
                                   features.backbone, features.layer, fingerprint)
    return CacheKey(name, fingerprint, inputs)


def _label_change(before: tuple, now: tuple) -> str:
    added = [n for n in now if n not in before]
    removed = [n for n in before if n not in now]
    parts = [f"{len(before)} classes in the run, {len(now)} now"]
    if added:
        parts.append(f"added {added[:10]}{' ...' if len(added) > 10 else ''}")
    if removed:
        parts.append(f"removed {removed[:10]}{' ...' if len(removed) > 10 else ''}")
    if not added and not removed:
        parts.append("the same names in another order")
    nfc = {unicodedata.normalize("NFC", n) for n in removed}
    if added and nfc == set(added):
        parts.append(f"the names read now are the run's in Unicode NFC form, in another order "
                     f"({', '.join(ascii(n) for n in removed[:5])} in the run): train a new run "
                     f"on these data")
    return f"class names: {', '.join(parts)}"


def _split_changes(inputs: dict, meta: Optional[dict]) -> dict[str, str]:
    """How each split of `inputs` differs from what the cache of `meta` was built from,
    by split."""
    then_inputs = (meta or {}).get(cache.INPUTS_KEY)
    changes = {}
    for split, now in inputs["splits"].items():
        count = now["examples"]
        if then_inputs and split in then_inputs.get("splits", {}):
            then = then_inputs["splits"][split]
            if then["examples"] != count:
                changes[split] = f"{count} images now, {then['examples']} then"
            elif then["ids_labels"] != now["ids_labels"]:
                changes[split] = f"other image ids or labels (as many images, {count})"
            elif then.get("files") != now["files"]:
                changes[split] = (f"the same {count} image ids and labels, but image files "
                                  f"that differ in size (edited, re-encoded or replaced since)")
        elif meta and split in meta.get("splits", {}):
            info = meta["splits"][split]
            then_count = int(info["num_examples"]) + len(info.get("skipped", []))
            if then_count != count:
                changes[split] = f"{count} images now, {then_count} then"
    return changes


def in_run_spelling(data: Data, run_dir: RunDir) -> Data:
    """`data` with its class names spelt as the run spells them, where the two differ in
    Unicode form only: names are read in NFC form, and a run trained before that kept
    the form of its files (NFD from macOS file names, say). Anything else is left to
    `check_resumed_data`."""
    names = tuple(run_dir.load()[1].label_names)
    if names != tuple(data.label_map.names) and tuple(
            unicodedata.normalize("NFC", n) for n in names) == tuple(data.label_map.names):
        return dataclasses.replace(data, label_map=LabelMap(names, data.label_map.source))
    return data


def check_resumed_data(config: ExperimentConfig, data: Data, key: CacheKey,
                       run_dir: RunDir, *, evaluating: bool = False) -> CacheKey:
    """The cache key of a rerun on the existing run `run_dir`, checked before any feature
    extraction: the data must be those the run was trained on, and its feature cache
    under this ``--runtime.cache_dir``. `evaluating` (eval mode, which reads only the
    validation and test splits) notes a training split changed since instead.

    Raises:
        RunDataChangedError: other class names, or other images or labels in a split
            (each named, with its counts now and when the run's features were extracted).
        FeatureCacheNotFoundError: the run's cache is not under ``--runtime.cache_dir``
            (the check of eval mode, `locate_features`): it is not extracted elsewhere.
    """
    _, facts = run_dir.load()
    source = config.data.manifest or config.data.data_dir
    refuse = (f"{run_dir.run_file}: the data{f' at {source}' if source else ''} differ from "
              f"those the run was trained on, refused before any feature extraction")
    remedy = (f"{'Evaluate' if evaluating else 'Resume'} on the data the run was trained "
              f"with, or start a new run (another --workdir) on these.")
    if tuple(data.label_map.names) != tuple(facts.label_names):
        raise RunDataChangedError(
            f"{refuse}: {_label_change(tuple(facts.label_names), data.label_map.names)}. "
            f"{remedy}")
    if key.fingerprint != facts.features_fingerprint:
        features = config.features
        old = cache.fingerprint_of(key.inputs, features.backbone, features.layer, cache_format=1)
        if old != facts.features_fingerprint:
            directory = cache.features_dir(config.runtime.cache_dir, facts.features_name)
            try:
                meta = shard_meta.read_meta(directory)
            except (FileNotFoundError, ValueError):
                meta = None
            changed = _split_changes(key.inputs, meta)
            if evaluating and set(changed) == {"train"} and meta.get(cache.INPUTS_KEY):
                locate_features(config, facts, run_dir.path)
                log(f"{source}: train: {changed['train']}, since the run was trained; "
                    f"--mode=eval reads the validation and test splits of the run's feature "
                    f"cache, which are the same")
                return CacheKey(facts.features_name, facts.features_fingerprint, None)
            changes = [f"{split}: {change}" for split, change in changed.items()]
            if not changes and meta is None:
                changes = [f"the images or labels of a split (the run's feature cache "
                           f"{directory}, not under this --runtime.cache_dir, would say which)"]
            elif not changes:
                changes = ["other image ids or labels in a split (as many images in each; "
                           "the run's cache predates the records that would say which)"]
            raise RunDataChangedError(f"{refuse}: {'; '.join(changes)}. {remedy}")
        # Trained on a format-1 cache (an earlier version): the same ids and labels.
        locate_features(config, facts, run_dir.path)
        log(f"{run_dir.path}: its feature cache was built before the cache fingerprint "
            f"covered the image files, so a change to an image file since then goes unseen "
            f"for this run")
        return CacheKey(facts.features_name, facts.features_fingerprint, None)
    locate_features(config, facts, run_dir.path)
    return key


def check_evaluated_data(config: ExperimentConfig, run_dir: RunDir) -> None:
    """Eval mode scores the test split held in the run's feature cache; it reads no image.
    So the data the flags name must be the run's: own data found here are checked as a
    rerun checks them (`check_resumed_data`: class names, images, labels), listed images
    that are missing dropped as training dropped them; data not found here must be named
    as the run names them (a run moved without its data), and lists found without any of
    their images are not compared (a run moved without its images: the cache is scored,
    saying so). A training split changed since is noted, not refused: eval mode reads
    only the validation and test splits. The embedded benchmark is made from the run's
    settings, checked with its config."""
    if config.data.dataset == "fashion_canvases":
        return
    saved = run_dir.load()[0].data
    source = config.data.manifest or config.data.data_dir
    if not os.path.exists(source):
        trained_on = saved.manifest or saved.data_dir
        if source != trained_on:
            raise RunDataChangedError(
                f"{source or '(no data path)'} not found. --mode=eval scores the test split of "
                f"the run's feature cache, extracted from {trained_on}: leave the data flags out, "
                f"or name the data the run was trained on; to score other data, train a run on "
                f"them")
        log(f"{source} is not found here: scoring the test split of the run's feature cache")
        return
    try:
        # Listed images that are missing (a NUS-WIDE copy, say) dropped, as training did.
        data = in_run_spelling(load_data(config), run_dir)
    except ImagesNotFoundError as error:  # a split none of whose images is here
        lists = load_data(config, check_files=False)
        if any(isinstance(e.image, str) and os.path.exists(e.image)
               for examples in lists.splits.values() for e in examples):
            raise  # images of other splits are here: the data differ from the run's
        log(f"{error}, nor any other image it lists (a run moved without its images): "
            f"scoring the validation and test splits of the run's feature cache, with the "
            f"labels the run was trained with")
        return
    check_resumed_data(config, data, feature_cache_key(config, data), run_dir, evaluating=True)


def locate_features(config: ExperimentConfig, facts: RunFacts,
                    workdir: str | None = None) -> str:
    """The feature cache a run was trained on, under this run's ``runtime.cache_dir``; the
    run's folder `workdir`, when given, goes into the commands that would extract it again."""
    directory = cache.features_dir(config.runtime.cache_dir, facts.features_name)
    extract_again = (cache.extract_again_for(workdir, config.runtime.cache_dir,
                                             _data_location_flags(config)) if workdir
                     else cache.EXTRACT_AGAIN)
    cache.check_fingerprint(directory, facts.features_fingerprint, extract_again=extract_again)
    return directory


def _data_location_flags(config: ExperimentConfig) -> dict[str, str]:
    """The flags that say where this command reads the data from (those set), which a
    rerun may change (moved data) and the run's record then does not hold."""
    data = config.data
    where = {"data.data_dir": data.data_dir, "data.manifest": data.manifest}
    if data.dataset == "coco":
        where["data.coco_release"] = data.coco_release
    return {name: value for name, value in where.items() if value}
