"""Trains a tiny model on synthetic features; used by the resume and multi-worker tests.

Usage: python tests/_tiny_training_run.py WORKDIR [--strategy=default|multi_worker]
Prints `FINAL <checksum>` of the final weights.
"""

import sys

import numpy as np
import tensorflow as tf

from ofrnn_tf.training.distribute import make_strategy
from ofrnn_tf.training.run_config import RunConfig, save_or_check
from ofrnn_tf.training.trainer import Trainer

N, M, K, C = 192, 9, 16, 5


def synthetic_examples():
    rng = np.random.default_rng(0)
    labels = (rng.random((N, C)) < 0.35).astype("float32")
    labels[labels.sum(1) == 0, 0] = 1
    class_vectors = rng.normal(size=(C, K)).astype("float32")
    features = rng.normal(size=(N, M, K)).astype("float32") + (labels @ class_vectors)[:, None, :]
    return {"features": features.astype("float32"), "labels": labels}


def main(workdir: str, strategy_name: str = "default", epochs: int = 3):
    tf.config.experimental.enable_op_determinism()
    data = synthetic_examples()
    config = RunConfig(label_names=tuple("abcde"), lstm_units=16, attention_units=16,
                       fc_units=16, batch_size=32, epochs_stage1=epochs, epochs_stage2=epochs,
                       dropout=float(__import__("os").environ.get("DROP", 0.3)), feature_dropout=float(__import__("os").environ.get("DROP", 0.3)), max_steps=3, checkpoint_every=2, log_every=1, strategy=strategy_name)
    strategy = make_strategy(strategy_name)
    save_or_check(config, workdir)

    def examples_fn(ctx):
        ds = tf.data.Dataset.from_tensor_slices(data)
        return ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)

    trainer = Trainer(config, workdir, strategy, (M, K), N // max(1, _workers(strategy)),
                      examples_fn, progress=False)
    model = trainer.train()
    checksum = sum(float(np.sum(np.abs(v.numpy()))) for v in model.trainable_variables)
    print(f"FINAL {checksum:.10f}", flush=True)


def _workers(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 1
    return sum(len(v) for v in resolver.cluster_spec().as_dict().values())


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    main(args[0], flags.get("strategy", "default"), int(flags.get("epochs", 3)))
