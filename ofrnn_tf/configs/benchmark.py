"""The main job: the order-free decoder on the embedded Fashion-MNIST canvas benchmark.

10,000 / 1,000 / 2,000 canvases of 1–4 real Fashion-MNIST items (data seed 0),
frozen EfficientNet-Lite0 stage-5 maps (14×14×112, offline weights), stage 1 (the
spatial M_map with a 3×3 kernel and 128 units, 12 epochs) then stage 2 (the residual
decoder, 12 epochs, over M_map's outputs computed once), τ and the score mix chosen on
validation, beam search K=3 (docs/model.md).

Command (from a fresh clone; sets up .venv, trains, evaluates, exports, calls gRPC):
    bash scripts/main.sh
or, on an installed package:
    ofrnn-train --workdir=runs/order_free

Run time on 2 CPU cores: about 8 minutes from nothing on a shared Xeon (building .venv
21–25 s with uv, canvases 39–43 s, features 163–188 s at about 80 images/s, training
191–198 s, evaluation and pictures 7–8 s, export and gRPC about 30 s); training alone
about 3½ minutes once the canvases and features are cached.

Expected test result: C-F1 83.9, O-F1 83.8, mAP 90.4, small-object AP 73.9 (one
run; across data seeds see the `order_free (main job)` row of the paper table in
benchmarks/RESULTS.md: 83.6 / 83.5 / 89.8 / 73.2 with its stage 1 run to the end of a
20-epoch cosine decay).
"""

from ofrnn_tf.config.experiment import ExperimentConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig()
