"""The paper's exact model (AAAI 2018 §Implementation), on the embedded benchmark.

M_map a linear layer on mean-pooled maps (Eq. 1–3), attention over the CNN maps
(Eq. 4–5), `p_t` straight from the prediction layer (Eq. 7), the loss of Eq. 8 on each
image's number of labels (our reading of Algorithm 1's `iter`, which the paper does not
fix), Adam at 3e-4 for the decoder, dropout keep 0.8
on the prediction layer and no other dropout, no feature standardisation. Stage 1
(M_map) is trained to convergence (Adam 1e-3, early stopping on validation mAP), as
every row of the comparison is. The paper's backbone, ResNet-152, needs its ImageNet
weights from the internet; this preset keeps the benchmark's offline EfficientNet-Lite0
stage-5 maps so that it runs anywhere (add ``--features.backbone=resnet152
--features.layer=conv4`` where the weights can be downloaded).

Command:
    ofrnn-train --config=paper --workdir=runs/paper

Run time on 2 CPU cores: see the `order_free` (paper) row of the paper table in
benchmarks/RESULTS.md (about 5 minutes of training once the benchmark's features are
cached).

Expected test result: the paper-faithful `order_free` row of the paper table in
benchmarks/RESULTS.md (mean over data seeds 0–2).
"""

from ofrnn_tf.config.experiment import ExperimentConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig().replace(
        model={"head": "mean_linear", "head_dropout": 0.0, "standardize_features": False,
               "decoder": "paper", "dropout": 0.2, "feature_dropout": 0.0},
        stage1={"learning_rate": 1e-3, "schedule": "constant", "epochs": 40, "patience": 5},
        stage2={"learning_rate": 3e-4, "schedule": "constant", "epochs": 20, "patience": 4},
        train={"train_steps": "gt_count", "loss": "bce"})
