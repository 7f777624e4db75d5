"""The main job: the order-free decoder on the embedded Fashion-MNIST canvas benchmark.

10,000 / 1,000 / 2,000 canvases of 1–4 real Fashion-MNIST items (data seed 0),
frozen EfficientNet-Lite0 stage-5 maps (14×14×112, offline weights), stage 1 (the
spatial M_map, 16 epochs) then stage 2 (the residual decoder, up to 6 epochs), τ
and the score mix chosen on validation, beam search K=3 (docs/model.md).

Command (from a fresh clone; sets up .venv, trains, evaluates, exports, calls gRPC):
    bash scripts/main.sh
or, on an installed package:
    ofrnn-train --workdir=runs/order_free

Run time on 2 CPU cores: about 5½ minutes from nothing (canvases 43 s, features
125 s, training 117 s, evaluation and pictures 7 s, export and gRPC about 30 s);
about 2½ minutes once the canvases and features are cached.

Expected test result: C-F1 81.5, O-F1 81.4, mAP 87.5, small-object AP 68.7 (one
run; across data seeds see the `order_free (main job)` row of the paper table in
benchmarks/RESULTS.md).
"""

from ofrnn_tf.config.experiment import ExperimentConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig()
