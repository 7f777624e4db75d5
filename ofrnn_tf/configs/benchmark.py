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
about 30 s with uv, canvases 60 s, features 116 s at about 110 images/s, training
224 s, evaluation and pictures 7 s, export and gRPC about 30 s); training alone about
4 minutes once the canvases and features are cached.

Expected test result: C-F1 83.4, O-F1 82.9, mAP 89.7, small-object AP 72.7 (one
run; the same job on features extracted before the backbone's batch norms were folded
gave 83.9 / 83.8 / 90.4 / 73.9, about the run-to-run spread; across
data seeds see the `order_free (main job)` row of the paper table in
benchmarks/RESULTS.md, summary: 83.6 / 83.3 / 89.5 / 73.3 with its stage 1 run to the
end of a 20-epoch cosine decay).
"""

from ofrnn_tf.config.experiment import ExperimentConfig


def get_config() -> ExperimentConfig:
    return ExperimentConfig()
