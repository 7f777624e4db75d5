"""NUS-WIDE, 81 concepts, over ResNet-152 features (the data of paper Table 1).

The main job's model (spatial M_map and residual decoder) over ResNet-152's last block
(``conv5``); the paper's model read the fourth block (``--features.layer=conv4``, with
the ``paper`` preset's model settings).

Data: ``--data.data_dir`` is the NUS-WIDE release (image list files, the 81-concept
label files and ``Concepts81.txt`` at its root or in ``ConceptsList/``). NUS-WIDE has
train and test only: a hash-based 5 % of train is held out as the validation split.

Command (needs internet once for the ResNet-152 ImageNet weights):
    ofrnn-train --config=nuswide --data.data_dir=/data/nuswide --workdir=runs/nuswide

Run time on 2 CPU cores: not measured here (no NUS-WIDE copy on these machines);
about 270k images through ResNet-152 at about 8 images/s (estimated before its batch
norms were folded, which made it 2.3× as fast in one run: `coco`) is 9–10 hours of
extraction on 2 cores, roughly half of that folded.

Expected test result: the paper reports C-F1 54.7, O-F1 70.2 for its full model and
47.1 / 64.7 for M_map alone; not reproduced here.
"""

from ofrnn_tf.config.experiment import ExperimentConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig().replace(
        data={"dataset": "nuswide"},
        features={"backbone": "resnet152", "layer": "conv5"})
