"""Trains a tiny model on synthetic features; used by the resume and multi-worker tests.

Usage: python tests/_tiny_training_run.py WORKDIR [--strategy=default|mirrored|multi_worker]
    [--epochs=3] [--cpus=N] [--overflow]
Prints `FINAL <checksum>` of the final weights. `--cpus=N` splits the CPU into N logical
devices (`mirrored` then has N replicas). `--overflow` trains the paper's model in
mixed float16 on unstandardised features, a few of them (on odd rows, so on the second
replica) scaled up until their float16 gradients overflow, and also prints each
stage's `SCALE <stage> <loss scale>`.

Environment: DROP sets both dropout rates (default 0.3). PAUSE_BEFORE_CHECKPOINT=<n>
creates WORKDIR/paused_before_ckpt-<n> and sleeps just before checkpoint n is saved,
so a test can kill the run at a known point, with the steps since the previous
checkpoint done but not saved (it changes timing only, never the result).
"""

import os
import sys
import time

import numpy as np
import tensorflow as tf

from ofrnn_tf.config.experiment import ExperimentConfig
from ofrnn_tf.run_dir import RunDir, RunFacts
from ofrnn_tf.training.distribute import is_chief, make_strategy
from ofrnn_tf.training.trainer import Trainer

N, M, K, C = 192, 9, 16, 5


def synthetic_examples(overflow: bool = False):
    rng = np.random.default_rng(0)
    labels = (rng.random((N, C)) < 0.35).astype("float32")
    labels[labels.sum(1) == 0, 0] = 1
    class_vectors = rng.normal(size=(C, K)).astype("float32")
    features = rng.normal(size=(N, M, K)).astype("float32") + (labels @ class_vectors)[:, None, :]
    if overflow:
        features[1:60:10] *= 300.0  # odd rows: under two workers, the second one's
    return {"features": features.astype("float32"), "labels": labels}


def main(workdir: str, strategy_name: str = "default", epochs: int = 3, cpus: int = 1,
         overflow: bool = False):
    if cpus > 1:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration() for _ in range(cpus)])
    tf.config.experimental.enable_op_determinism()
    data = synthetic_examples(overflow)
    drop = float(os.environ.get("DROP", 0.3))
    model = {"lstm_units": 16, "attention_units": 16, "fc_units": 16, "dropout": drop,
             "feature_dropout": drop}
    if overflow:
        model.update(head="mean_linear", decoder="paper", standardize_features=False)
    config = ExperimentConfig().replace(
        model=model, stage1={"epochs": epochs}, stage2={"epochs": epochs},
        train={"batch_size": 32},
        runtime={"checkpoint_every": 2, "log_every": 1, "strategy": strategy_name,
                 "mixed_precision": overflow})
    facts = RunFacts(label_names=tuple("abcde"), max_steps=3, label_order=None, small_area=None,
                     features_name="synthetic", features_fingerprint="f" * 64,
                     feature_shape=(3, 3, K), image_size=32, feature_layer="maps")
    strategy = make_strategy(strategy_name)
    run_dir = RunDir(workdir)
    if is_chief(strategy):  # workers sharing a run folder must not race on its config
        run_dir.save(config, facts)

    def examples_fn(ctx):
        ds = tf.data.Dataset.from_tensor_slices(data)
        return ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)

    # num_train counts the examples of all workers: one epoch is N // batch_size global
    # steps, each worker taking batch_size / workers examples of its shard per step.
    trainer = Trainer(config, facts, run_dir, strategy, N, examples_fn, progress=False)
    pause_at = int(os.environ.get("PAUSE_BEFORE_CHECKPOINT", 0))
    if pause_at:
        save = trainer.manager.save

        def pause_then_save(checkpoint_number=None, **kwargs):
            if checkpoint_number == pause_at:
                with open(os.path.join(workdir, f"paused_before_ckpt-{pause_at}"), "w"):
                    pass
                time.sleep(120)
            return save(checkpoint_number=checkpoint_number, **kwargs)

        trainer.manager.save = pause_then_save
    model = trainer.train()
    if overflow:
        for stage, optimizer in sorted(trainer.optimizers.items()):
            print(f"SCALE {stage} {float(optimizer.dynamic_scale.numpy()):g}", flush=True)
    checksum = sum(float(np.sum(np.abs(v.numpy()))) for v in model.trainable_variables)
    print(f"FINAL {checksum:.10f}", flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = dict((a[2:].split("=", 1) + [""])[:2] for a in sys.argv[1:] if a.startswith("--"))
    main(args[0], flags.get("strategy", "default"), int(flags.get("epochs", 3)),
         int(flags.get("cpus", 1)), "overflow" in flags)
