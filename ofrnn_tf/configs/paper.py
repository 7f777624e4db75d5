"""The paper's exact settings (AAAI 2018 §Implementation), on the embedded benchmark.

Adam at 3e-4 for both stages, dropout keep 0.8 on the prediction layer f_pred and
no other dropout, the LSTM trained for each image's number of labels (Alg. 1), M_map
a linear layer on mean-pooled maps (Eq. 1–3). The paper's backbone, ResNet-152, needs
its ImageNet weights from the internet; this preset keeps the benchmark's offline
EfficientNet-Lite0 stage-5 maps so that it runs anywhere (add
``--features.backbone=resnet152 --features.layer=conv4`` where the weights can be
downloaded).

Command:
    ofrnn-train --config=paper --workdir=runs/paper

Run time on 2 CPU cores: about 2 minutes of training once the benchmark's features
are cached (6 minutes from nothing).

Expected test result: C-F1 ≈ 70, O-F1 ≈ 69 (the `order_free` row of the paper table
in benchmarks/RESULTS.md).
"""

from ofrnn_tf.config.experiment import ExperimentConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig().replace(
        model={"dropout": 0.2, "feature_dropout": 0.0},
        stage1={"learning_rate": 3e-4}, stage2={"learning_rate": 3e-4},
        train={"train_steps": "gt_count"})
