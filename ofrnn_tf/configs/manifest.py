"""Your own images: a CSV, JSON Lines or JSON manifest of ``path,labels`` rows.

Either one manifest file (``--data.manifest=FILE``; by image-id hash,
``--data.val_fraction`` of it, 5 %, is held out for testing and as much again for
validation, and the rest trains) or a folder with ``train.csv``, ``test.csv`` and
optionally ``val.csv``, or the same as ``.jsonl`` / ``.json`` (``--data.data_dir=DIR``).
Labels are class names separated by ``;`` or ``|`` (a list in JSON); relative image paths
are relative to the manifest. EfficientNet-Lite0 (offline weights) at its
stage-5 maps, the benchmark's model.

Command:
    ofrnn-train --config=manifest --data.data_dir=my_data/ --workdir=runs/mine

Run time on 2 CPU cores: 3,000 / 400 / 400 images of 224×224 pixels took 79 s on an AMD
EPYC host (docs/walkthrough.md): feature extraction at about 180 images/s, a stage-1
epoch at about 1,500 examples/s and a stage-2 epoch at about 2,000; larger photos take
longer to decode.

Expected result: depends on the data; the run writes its test metrics to
``metrics_test.json`` and prints them.
"""

from ofrnn_tf.config.experiment import ExperimentConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig().replace(data={"dataset": "manifest"})
