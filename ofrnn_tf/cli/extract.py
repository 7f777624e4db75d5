"""ofrnn-extract: builds a run's feature cache without training.

Takes the same ``--config`` and ``--section.field`` flags as ofrnn-train (so one command
line serves both; of them only ``--config``, ``--data.*``, ``--features.*`` and
``--runtime.cache_dir`` change what it does, and a training split smaller than
``--train.batch_size`` is refused as training would refuse it) and writes the feature
shards exactly where training will look for them, so extraction can run ahead, or on
several machines at once (``--shard_index``):

    ofrnn-extract --config=coco --data.data_dir=/data/coco2014 --shard_index=0   # machine 1
    ofrnn-extract --config=coco --data.data_dir=/data/coco2014 --shard_index=1   # machine 2
    ofrnn-extract --config=coco --data.data_dir=/data/coco2014                   # the rest

Each split is cut into ``--features.num_shards`` shards; finished shards are skipped.
Without ``--shard_index`` a split whose image files an older cache beside it holds is
copied from it, relabelled (`ofrnn_tf.features.shard_copy`); ``--shard_index`` always
runs the backbone on its shard.
"""

from absl import app, flags

from ofrnn_tf.cli import input_errors, refusal, refusing_cache_writes, runner, usable_config
from ofrnn_tf.config.flags import config_from_flags, define_config_flags
from ofrnn_tf.status import log

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when it runs, so importing this module defines none)."""
    flags.DEFINE_integer("shard_index", None, "Extract only this shard of every split "
                         "(default: every shard, then record the cache as complete).")
    define_config_flags()


def checked_config():
    """The flags' config, with a setting the command cannot use refused as a usage error
    before any data or backbone is loaded."""
    config = usable_config(config_from_flags)
    num_shards = config.features.num_shards
    if FLAGS.shard_index is not None and not 0 <= FLAGS.shard_index < num_shards:
        raise app.UsageError(f"--shard_index={FLAGS.shard_index} is not a shard of "
                             f"--features.num_shards={num_shards}: give 0 to {num_shards - 1}")
    return config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = checked_config()
    # TensorFlow takes seconds to import (in `_extract`); --help does without it.
    try:
        with refusing_cache_writes(config.runtime.cache_dir):
            return _extract(config)
    except input_errors() as error:
        raise refusal(error) from None  # the input, not the code, is at fault


def _extract(config) -> int:
    from ofrnn_tf import pipeline
    from ofrnn_tf.data import run_data
    from ofrnn_tf.features import cache, run_cache
    from ofrnn_tf.features.backbones import check_backbone, get_backbone
    from ofrnn_tf.features.extract import extract_split

    check_backbone(config.features.backbone, config.features.layer)
    data = run_data.load_data(config)
    if FLAGS.shard_index is None:
        directory, _ = pipeline.prepare_features(config, data)
        print(directory)
        return 0
    features = config.features
    directory = cache.features_dir(config.runtime.cache_dir,
                                   run_cache.feature_cache_key(config, data).name)
    backbone = get_backbone(features.backbone, features.layer)
    for split, examples in data.splits.items():
        summary = extract_split(examples, data.label_map, backbone, directory, split,
                                batch_size=features.extract_batch_size,
                                num_shards=features.num_shards, shard_index=FLAGS.shard_index)
        log(f"features {summary}")  # as a whole cache's extraction says it
    print(directory)
    return 0


run = runner(define_flags, main,
             on_interrupt="rerun the same command to go on; finished shards are kept")

if __name__ == "__main__":
    run()
