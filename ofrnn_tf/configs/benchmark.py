"""The main job: the order-free decoder on the embedded Fashion-MNIST canvas benchmark.

10,000 / 1,000 / 2,000 canvases of 1–4 real Fashion-MNIST items (data seed 0),
frozen EfficientNet-Lite0 stage-5 maps (14×14×112, offline weights), stage 1 (the
spatial M_map with a 3×3 kernel, 16 epochs) then stage 2 (the residual decoder, 12
epochs), τ and the score mix chosen on validation, beam search K=3 (docs/model.md).

Command (from a fresh clone; sets up .venv, trains, evaluates, exports, calls gRPC):
    bash scripts/main.sh
or, on an installed package:
    ofrnn-train --workdir=runs/order_free

Run time on 2 CPU cores: about 12 minutes from nothing (building .venv about a minute,
canvases 46 s, features 173 s, training 402 s, evaluation and pictures 8 s, export and
gRPC about 35 s); training alone about 5½ minutes once the canvases and features are
cached. With `--model.head_kernel_size=1` training takes half as long.

Expected test result: C-F1 83.6, O-F1 83.7, mAP 90.2, small-object AP 73.5 (one
run; across data seeds see the `order_free (main job)` row of the paper table in
benchmarks/RESULTS.md).
"""

from ofrnn_tf.config.experiment import ExperimentConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig()
