"""The main job: the order-free decoder on the embedded Fashion-MNIST canvas benchmark.

10,000 / 1,000 / 2,000 canvases of 1–4 real Fashion-MNIST items (data seed 0),
frozen EfficientNet-Lite0 stage-5 maps (14×14×112, offline weights), stage 1 (the
spatial M_map, 16 epochs) then stage 2 (the residual decoder, 12 epochs), τ
and the score mix chosen on validation, beam search K=3 (docs/model.md).

Command (from a fresh clone; sets up .venv, trains, evaluates, exports, calls gRPC):
    bash scripts/main.sh
or, on an installed package:
    ofrnn-train --workdir=runs/order_free

Run time on 2 CPU cores: about 6¼ minutes from nothing (building .venv about 40 s,
canvases 33 s, features 102 s, training 173 s, evaluation and pictures 5 s, export and
gRPC about 20 s); about 3½ minutes once the canvases and features are cached.

Expected test result: C-F1 81.8, O-F1 81.7, mAP 87.9, small-object AP 69.5 (one
run; across data seeds see the `order_free (main job)` row of the paper table in
benchmarks/RESULTS.md).
"""

from ofrnn_tf.config.experiment import ExperimentConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig()
