"""Trains (and evaluates) Order-Free RNN with Visual Attention.

With no data-set flag it runs the embedded benchmark end to end: build the
Fashion-MNIST canvases, extract EfficientNet-Lite0 features, stage 1 (M_map),
stage 2 (attention + LSTM), τ calibration on validation, test metrics:

    python train.py --workdir=runs/order_free

Other data sets by flag, with the paper's ResNet-152 as their default backbone:

    python train.py --workdir=runs/coco --dataset=coco --data_dir=/data/coco2014

Rerunning the same command resumes from the last checkpoint; `--mode=eval`
recomputes the test metrics of a finished run.
"""

import os

from absl import app, flags

FLAGS = flags.FLAGS
# The benchmark's EfficientNet-Lite0 layer: its 14x14x112 maps localise the small items
# (the attention lands on them) and make the decoder far cheaper than the 7x7x1280 top,
# at the same accuracy (benchmarks/RESULTS.md).
BENCHMARK_FEATURE_LAYER = "stage5"
flags.DEFINE_string("workdir", None, "Run directory: config, checkpoints, TensorBoard, metrics.")
flags.DEFINE_enum("mode", "train", ["train", "eval"],
                  "train: train (or resume), calibrate τ, evaluate; eval: calibrate and evaluate only.")
# data
flags.DEFINE_enum("dataset", "fashion_canvases", ["fashion_canvases", "coco", "nuswide", "manifest"],
                  "Data set; the default is the embedded Fashion-MNIST canvas benchmark.")
flags.DEFINE_string("data_dir", None, "Data set root (coco, nuswide, manifest folder).")
flags.DEFINE_string("manifest", None, "A CSV/JSONL manifest (dataset=manifest).")
flags.DEFINE_string("cache_dir", "data", "Where canvases and feature shards are cached.")
flags.DEFINE_integer("num_train", 10000, "Benchmark: training canvases.")
flags.DEFINE_integer("num_val", 1000, "Benchmark: validation canvases.")
flags.DEFINE_integer("num_test", 2000, "Benchmark: test canvases.")
flags.DEFINE_integer("data_seed", 0, "Benchmark: seed of the canvases.")
flags.DEFINE_float("val_fraction", 0.05, "Share of train held out for τ where a data set has no val split.")
# features
flags.DEFINE_string("backbone", None, "Frozen CNN (default: efficientnet_lite0 for the benchmark, "
                    "resnet152 otherwise).")
flags.DEFINE_string("feature_layer", None, "Backbone layer giving the [H, W, k] maps (default: "
                    f"{BENCHMARK_FEATURE_LAYER} for the benchmark's efficientnet_lite0, else the "
                    "backbone's own).")
flags.DEFINE_integer("extract_batch_size", 32, "Images per backbone call during extraction.")
# model
flags.DEFINE_enum("variant", "order_free",
                  ["order_free", "baseline", "no_attention", "frequency_first", "rare_first"],
                  "The full model or one of the ablations of the paper's Tables 1-2.")
flags.DEFINE_integer("lstm_units", 256, "LSTM width.")
flags.DEFINE_integer("attention_units", 256, "Attention MLP width.")
flags.DEFINE_integer("fc_units", 512, "FC1 width.")
flags.DEFINE_float("dropout", 0.3, "Dropout on FC1.")
flags.DEFINE_float("feature_dropout", 0.3, "Dropout on the feature maps.")
# training
flags.DEFINE_enum("train_steps", "gt_count", ["gt_count", "max"],
                  "Decoding steps per image in stage 2: its label count, or T_max.")
flags.DEFINE_integer("batch_size", 64, "Global batch size.")
flags.DEFINE_float("learning_rate", 3e-4, "Adam learning rate (paper: 3e-4).")
flags.DEFINE_integer("epochs_stage1", 8, "Epochs of stage 1 (M_map).")
flags.DEFINE_integer("epochs_stage2", 8, "Epochs of stage 2 (decoder).")
flags.DEFINE_integer("seed", 0, "Seed of initial weights, data order and dropout.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy (multi_worker reads TF_CONFIG).")
flags.DEFINE_bool("mixed_precision", False, "mixed_float16 compute (GPUs).")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the training step.")
flags.DEFINE_integer("checkpoint_every", 200, "Steps between checkpoints (also saved every epoch).")
flags.DEFINE_integer("log_every", 20, "Steps between TensorBoard summaries.")
# decoding
flags.DEFINE_integer("beam_size", 3, "Beam width K at test time (1 = greedy).")
flags.DEFINE_integer("min_labels", 1, "Labels every image gets at least.")
flags.DEFINE_enum("calibration_objective", "mean_f1", ["mean_f1", "c_f1", "o_f1"],
                  "What τ maximises on validation.")
flags.DEFINE_bool("calibrate_baseline", False, "Choose the baseline's v_prob threshold on "
                  "validation too (default: the paper's fixed 0.5).")
flags.mark_flag_as_required("workdir")


def run_config():
    from ofrnn_tf.training.run_config import RunConfig
    return RunConfig(
        dataset=FLAGS.dataset, backbone=FLAGS.backbone or "", feature_layer=FLAGS.feature_layer or "",
        variant=FLAGS.variant, lstm_units=FLAGS.lstm_units, attention_units=FLAGS.attention_units,
        fc_units=FLAGS.fc_units, dropout=FLAGS.dropout, feature_dropout=FLAGS.feature_dropout,
        train_steps=FLAGS.train_steps, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, epochs_stage1=FLAGS.epochs_stage1,
        epochs_stage2=FLAGS.epochs_stage2, seed=FLAGS.seed, mixed_precision=FLAGS.mixed_precision,
        jit_compile=FLAGS.jit_compile, strategy=FLAGS.strategy,
        checkpoint_every=FLAGS.checkpoint_every, log_every=FLAGS.log_every,
        beam_size=FLAGS.beam_size, min_labels=FLAGS.min_labels,
        calibration_objective=FLAGS.calibration_objective)


def main(argv):
    del argv
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # keep TF's per-checkpoint INFO lines out of the progress
    from ofrnn_tf import pipeline
    from ofrnn_tf.evaluation.metrics import format_table
    from ofrnn_tf.training.distribute import make_strategy
    from ofrnn_tf.training.run_config import save_or_check
    from ofrnn_tf.training.trainer import load_best_model

    timer = pipeline.Timer()
    config = run_config()
    if not config.backbone:
        config.backbone = "efficientnet_lite0" if FLAGS.dataset == "fashion_canvases" else "resnet152"
    if (not config.feature_layer and FLAGS.dataset == "fashion_canvases"
            and config.backbone == "efficientnet_lite0"):
        config.feature_layer = BENCHMARK_FEATURE_LAYER
    paths = {"data_dir": FLAGS.data_dir}
    if FLAGS.manifest:
        paths["manifest"] = FLAGS.manifest
    dataset_key = FLAGS.dataset
    if FLAGS.dataset == "fashion_canvases":
        from ofrnn_tf.data.fashion_canvases import build_fashion_canvases
        with timer("canvases"):
            built = build_fashion_canvases(
                os.path.join(FLAGS.cache_dir, "fashion_canvases"), num_train=FLAGS.num_train,
                num_val=FLAGS.num_val, num_test=FLAGS.num_test, seed=FLAGS.data_seed)
        paths["data_dir"] = built["out_dir"]
        dataset_key = f"fashion_canvases-{built['fingerprint'][:10]}"
        config.small_area = float(built["small_area_fraction"])

    with timer("data"):
        splits, label_map = pipeline.load_examples(FLAGS.dataset, paths, FLAGS.val_fraction)
    layer = config.feature_layer or "default"
    config.features_dir = os.path.abspath(os.path.join(
        FLAGS.cache_dir, "features", f"{dataset_key}-{config.backbone}-{layer}"))
    with timer("features"):
        pipeline.ensure_features(splits, label_map, config.features_dir, config.backbone,
                                 config.feature_layer, batch_size=FLAGS.extract_batch_size)
    config = pipeline.make_run_config(config, splits["train"], label_map)
    save_or_check(config, FLAGS.workdir)
    label_map.save(FLAGS.workdir)

    if FLAGS.mode == "train":
        with timer("training"):
            model = pipeline.train(config, FLAGS.workdir, make_strategy(config.strategy))
    else:
        model, _ = load_best_model(FLAGS.workdir, pipeline.feature_shape(config.features_dir))
    with timer("evaluation"):
        metrics = pipeline.calibrate_and_evaluate(model, config, FLAGS.workdir, "test",
                                                  recalibrate=FLAGS.mode == "train",
                                                  calibrate_baseline=FLAGS.calibrate_baseline)
    if FLAGS.mode == "train":
        from ofrnn_tf.evaluation.attention_maps import render_test_examples
        with timer("attention pictures"):
            render_test_examples(FLAGS.workdir, FLAGS.dataset, paths, num=6)
    columns = ["C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1", "mAP", "AP-small", "AP-large", "tau"]
    print(format_table({config.variant: metrics}, columns=[c for c in columns if c in metrics]))
    timer.save(os.path.join(FLAGS.workdir, f"timing_{FLAGS.mode}.json"))
    pipeline.log(f"test metrics written to {FLAGS.workdir}; time: {timer.summary()}")


if __name__ == "__main__":
    app.run(main)
