"""The label context's fit between the stages (not the paper's): `L' = L + g(L)` trained
by binary cross-entropy over the frozen best M_map's logits `L` of the training split,
computed once, with its best epoch chosen by a validation score.

The fit is short and not checkpointed part-way: `Trainer` starts every fit from the same
weights (the context's initial ones), so a run stopped during it refits it whole.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import keras
import tensorflow as tf

from ofrnn_tf.config.experiment import StageConfig
from ofrnn_tf.modeling.model import OrderFreeRNN
from ofrnn_tf.status import progress_bar


@dataclasses.dataclass(frozen=True)
class LabelContextFit:
    """What a fit did: its best epoch (0: the untrained context, which passes M_map's
    logits on unchanged, was never beaten), the best epoch's validation score and M_map's
    alone (both None without a score), and the epochs it trained."""
    best_epoch: int
    best_score: Optional[float]
    map_score: Optional[float]
    epochs: int


def fit_label_context(model: OrderFreeRNN, strategy: tf.distribute.Strategy,
                      optimizer: keras.optimizers.Optimizer, logits: tf.Tensor,
                      labels: tf.Tensor, stage: StageConfig, *, batch_size: int, seed: int,
                      score_fn: Optional[Callable[[], float]],
                      log_scalar: Callable[[str, float, int], None],
                      progress: bool = True) -> LabelContextFit:
    """Trains `model.context_variables` with `optimizer` (built over them, under
    `strategy`'s scope) on `(logits, labels)` (`[N, C]` each) for at most
    ``stage.epochs``, each epoch in an order of `seed` and the epoch, batches of
    `batch_size` over the replicas of `strategy`. With `score_fn` (the validation score of
    the model as it stands, higher is better) the fit stops after ``stage.patience``
    epochs without a better score and leaves the best epoch's weights, M_map alone (the
    context's weights on entry, which return its logits unchanged) included; without it,
    the last epoch's. `log_scalar(tag, value, epoch)` receives the loss and score of each
    scored epoch."""
    variables = model.context_variables

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            per_example = model.context_loss(x, y, training=True)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=batch_size)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function(autograph=False)
    def train_step(x, y):
        loss = strategy.run(replica_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)

    count = int(logits.shape[0])
    # Epoch 0 is the context as it came, which returns M_map's logits unchanged: a
    # context that never scores better on validation than M_map alone is left so.
    best_epoch, best_weights, since_best, trained = 0, [v.numpy() for v in variables], 0, 0
    best = baseline = score_fn() if score_fn else None
    with progress_bar(range(stage.epochs), unit="epoch", desc="label context",
                      enabled=progress) as bar:
        for epoch in bar:
            batches = tf.data.Dataset.from_tensor_slices((logits, labels)).shuffle(
                count, seed=seed * 1000 + 150 + epoch).batch(batch_size, drop_remainder=True)
            for x, y in strategy.experimental_distribute_dataset(batches):
                loss = float(train_step(x, y))
            trained = epoch + 1
            if score_fn is None:
                continue
            score = score_fn()
            # By epoch: it has no steps of the stages'.
            log_scalar("label_context_by_epoch/validation_score", score, epoch + 1)
            log_scalar("label_context_by_epoch/loss", loss, epoch + 1)
            bar.set_postfix_str(f"loss={loss:.4f}, validation score={score:.2f}",
                                refresh=False)
            if score > best:
                best, best_epoch, since_best = score, epoch + 1, 0
                best_weights = [v.numpy() for v in variables]
            else:
                since_best += 1
                if stage.patience and since_best >= stage.patience:
                    break
    if score_fn is not None:
        for variable, value in zip(variables, best_weights):
            variable.assign(value)
    return LabelContextFit(best_epoch, best, baseline, trained)
