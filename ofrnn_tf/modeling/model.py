"""OrderFreeRNN: M_map + initial state + the confidence-ranked decoder, and its ablations."""

import dataclasses
from typing import Iterable, Optional, Sequence

import keras
import tensorflow as tf

from ofrnn_tf.config.experiment import (
    ATTENTION_PENALTIES, DECODERS, HEADS, LABEL_CONTEXT_TRAINING, STAGE2_LOSSES, TRAIN_STEPS,
    VARIANTS, ExperimentConfig, ModelConfig)
from ofrnn_tf.modeling.candidate_pool import CellState, advance, mask_chosen
from ofrnn_tf.modeling.layers.confidence_ranked_cell import ConfidenceRankedLSTMCell
from ofrnn_tf.modeling.layers.feature_standardizer import FeatureStandardizer
from ofrnn_tf.modeling.layers.label_context import LabelContext
from ofrnn_tf.modeling.layers.label_map_head import LabelMapHead
from ofrnn_tf.modeling.layers.residual_decoder_cell import ResidualDecoderCell
from ofrnn_tf.modeling.layers.spatial_label_head import SpatialLabelHead

_DEFAULTS = ModelConfig()
# M_map's layer for each name of `HEADS` (`--model.head`), and the `OrderFreeRNN` arguments
# it takes beyond `num_classes` and `head_dropout`: {the layer's argument: the model's}.
HEAD_LAYERS = {
    "mean_linear": (LabelMapHead, {}),
    "spatial": (SpatialLabelHead, {"units": "head_units", "kernel_size": "head_kernel_size"}),
}
# The `OrderFreeRNN` argument of a `ModelConfig` field named otherwise; every other field
# is passed under its own name (`model_arguments`).
_ARGUMENT_OF_FIELD = {"standardize_features": "standardize"}
# Finite stand-in for -inf inside the softmax losses: 0 · -inf would be NaN.
_LARGE_NEGATIVE = -1e9


def class_mean_bce(labels, logits):
    """`[B]`: binary cross-entropy of `logits` against the label vectors, mean over the
    C classes: Eq. 8 of p_t at every decoding step, divided by C (docs/model.md says why);
    stage 1 trains M_map (and a label context its `L'`) with it too."""
    return tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits), axis=-1)


@keras.saving.register_keras_serializable(package="ofrnn_tf")
class OrderFreeRNN(keras.Model):
    """The paper's network (Fig. 2) over precomputed frozen-CNN feature maps.

    Parts: M_map gives v_prob — the paper's `LabelMapHead` (Eq. 1–3) or the stronger
    `SpatialLabelHead`, optionally followed by a `LabelContext` that corrects its logits
    from all of its class probabilities (fitted after stage 1, or trained with M_map);
    the initial LSTM state is `h_0, c_0 = tanh(Dense(mean_i ·))` (Xu et al.) over what
    the decoder attends to (the CNN maps, or the spatial head's features); the decoder
    cell runs the steps — the paper's `ConfidenceRankedLSTMCell` (Eq. 4–10), or
    `ResidualDecoderCell`, which attends over the spatial head's per-position features
    and refines M_map's logits (docs/model.md). `call` returns the M_map logits; the
    decoder runs through `start`, `step`, `step_choices` (the candidate pool, Eq. 9–10,
    and "stop") and `advance`, which stage 2's losses, greedy decoding and beam search
    (`step_log_probs`) all share.

    Args:
        num_classes: C.
        variant: one of `VARIANTS` (`--model.variant`) — `order_free` (the full model),
            `baseline` (M_map alone), `no_attention` (`z_t = mean_i v_i`),
            `frequency_first` / `rare_first` (teacher-forced fixed label order, softmax
            over the remaining labels).
        head: `mean_linear` (the paper's M_map) or `spatial`: a name of `HEADS`, built
            as `HEAD_LAYERS` says.
        head_units, head_kernel_size, head_dropout: the spatial head's width and reach
            over the grid (`SpatialLabelHead`), and the dropout on M_map's input while
            training it.
        label_context_units, label_context_dropout: the `LabelContext` after M_map's
            logits (0 units: none) and its dropout while training it.
        label_context_training: `after_stage1` (fitted over stage 1's best M_map) or
            `joint` (trained with M_map in stage 1: `map_loss`, `map_variables`).
        standardize: standardise the feature channels (`FeatureStandardizer`) before
            M_map and the decoder; its statistics are set by `adapt`.
        decoder: `paper` or `residual` (needs `head="spatial"`); the baseline builds none.
        lstm_units, attention_units, fc_units, dropout: see the cells.
        feature_dropout: dropout on the maps the decoder reads while training it.
        stage2_loss: `bce` (Eq. 8) or `pla`; a PLA-trained decoder scores a step with a
            softmax over the labels left, as the fixed-order variants do.
        label_order: for the fixed-order variants, every class id once, in the order the
            labels are fed (most frequent first for `frequency_first`, the reverse
            for `rare_first`). Ignored by the other variants.
    The defaults of these are `ModelConfig`'s: the main job's model, but for the spatial
    head's kernel and width (1 and 256 here; the main job's `ExperimentConfig` sets 3 and
    128, which `build_model` passes on).

    Example:
    >>> model = OrderFreeRNN(num_classes=5, lstm_units=8, attention_units=8, fc_units=8,
    ...                      head_units=8)
    >>> v = tf.random.normal([2, 49, 16])
    >>> model(v).shape
    TensorShape([2, 5])
    """

    def __init__(self, num_classes: int, variant: str = _DEFAULTS.variant,
                 head: str = _DEFAULTS.head, head_units: int = _DEFAULTS.head_units,
                 head_kernel_size: int = _DEFAULTS.head_kernel_size,
                 head_dropout: float = _DEFAULTS.head_dropout,
                 label_context_units: int = _DEFAULTS.label_context_units,
                 label_context_dropout: float = _DEFAULTS.label_context_dropout,
                 label_context_training: str = _DEFAULTS.label_context_training,
                 standardize: bool = _DEFAULTS.standardize_features,
                 decoder: str = _DEFAULTS.decoder,
                 lstm_units: int = _DEFAULTS.lstm_units,
                 attention_units: int = _DEFAULTS.attention_units,
                 fc_units: int = _DEFAULTS.fc_units, dropout: float = _DEFAULTS.dropout,
                 feature_dropout: float = _DEFAULTS.feature_dropout,
                 stage2_loss: str = "bce",
                 label_order: Optional[Sequence[int]] = None, **kwargs):
        super().__init__(**kwargs)
        for name, value, choices in (("variant", variant, VARIANTS), ("head", head, HEADS),
                                     ("decoder", decoder, DECODERS),
                                     ("label_context_training", label_context_training,
                                      LABEL_CONTEXT_TRAINING),
                                     ("stage2_loss", stage2_loss, STAGE2_LOSSES)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if head not in HEAD_LAYERS:
            raise ValueError(f"head {head!r} is in HEADS (ofrnn_tf/config/experiment.py) but "
                             "has no layer: add its entry to HEAD_LAYERS "
                             "(ofrnn_tf/modeling/model.py)")
        if variant in ("frequency_first", "rare_first"):
            if label_order is None or sorted(label_order) != list(range(num_classes)):
                raise ValueError(
                    f"variant {variant!r} needs label_order, a permutation of "
                    f"0..{num_classes - 1}; got {label_order!r}")
        if decoder == "residual" and head != "spatial" and variant != "baseline":
            raise ValueError("decoder='residual' reads the spatial head: it needs head='spatial'")
        if decoder == "residual" and variant == "no_attention":
            raise ValueError("the no_attention ablation is of the paper's decoder: use "
                             "decoder='paper'")
        self.num_classes = num_classes
        self.variant = variant
        self.head = head
        self.head_units = head_units
        self.head_kernel_size = head_kernel_size
        self.head_dropout = head_dropout
        self.label_context_units = label_context_units
        self.label_context_dropout = label_context_dropout
        self.label_context_training = label_context_training
        self.standardize = standardize
        self.decoder = decoder
        self.lstm_units = lstm_units
        self.attention_units = attention_units
        self.fc_units = fc_units
        self.dropout = dropout
        self.feature_dropout = feature_dropout
        self.stage2_loss = stage2_loss
        self.label_order = None if label_order is None else [int(c) for c in label_order]

        self.standardizer = None  # made in build, when the depth k is known
        # The parts compute in the model's own policy (a `.keras` file's, or `dtype=`), not
        # in whatever global policy the session has when they are made; the float32 parts
        # (the label context, the layers that give logits) keep theirs.
        policy = self.dtype_policy
        layer, arguments = HEAD_LAYERS[head]
        self.label_map_head = layer(
            num_classes, dropout=head_dropout, dtype=policy, name="label_map_head",
            **{argument: getattr(self, attribute) for argument, attribute in arguments.items()})
        self.label_context = None
        if label_context_units:
            self.label_context = LabelContext(num_classes, units=label_context_units,
                                              dropout=label_context_dropout, name="label_context")
        if self.uses_decoder:
            self.features_dropout = keras.layers.Dropout(feature_dropout, dtype=policy,
                                                         name="features_dropout")
            self.init_h = keras.layers.Dense(lstm_units, activation="tanh", dtype=policy,
                                             name="init_h")
            self.init_c = keras.layers.Dense(lstm_units, activation="tanh", dtype=policy,
                                             name="init_c")
            if self.softmax_steps:
                # The "stop" entry of a step's softmax (CNN-RNN's and Orderless RNN's
                # end token), read from h_t: without it the labels left share all of
                # the step's probability and nothing teaches a path to end.
                self.stop_logit = keras.layers.Dense(1, dtype=policy, name="stop_logit")
            if self.residual:
                self.cell = ResidualDecoderCell(num_classes, units=lstm_units, fc_units=fc_units,
                                                dropout=dropout, dtype=policy, name="cell")
            else:
                self.cell = ConfidenceRankedLSTMCell(
                    num_classes, units=lstm_units, attention_units=attention_units,
                    fc_units=fc_units, dropout=dropout, use_attention=(variant != "no_attention"),
                    dtype=policy, name="cell")

    @property
    def uses_decoder(self) -> bool:
        return self.variant != "baseline"

    @property
    def residual(self) -> bool:
        return self.uses_decoder and self.decoder == "residual"

    @property
    def teacher_forced(self) -> bool:
        return self.variant in ("frequency_first", "rare_first")

    @property
    def softmax_steps(self) -> bool:
        """Whether a step's probabilities are a softmax over the labels left (the
        fixed-order variants and PLA training) rather than `sigmoid(p_t)`."""
        return self.teacher_forced or self.stage2_loss == "pla"

    def build(self, features_shape):
        depth = features_shape[-1]
        if self.standardize:
            self.standardizer = FeatureStandardizer(depth, dtype=self.dtype_policy,
                                                    name="standardizer")
            self.standardizer.build(features_shape)
        self.label_map_head.build(features_shape)
        if self.label_context is not None:
            self.label_context.build((None, self.num_classes))
        if self.uses_decoder:
            read = self.head_units if self.residual else depth
            self.init_h.build((None, read))
            self.init_c.build((None, read))
            self.cell.build(tuple(features_shape[:-1]) + (read,))
            if self.softmax_steps:
                self.stop_logit.build((None, self.lstm_units))
        self.built = True

    @property
    def needs_adapting(self) -> bool:
        """Whether the feature statistics still have to be set (`adapt`) before training."""
        return self.standardizer is not None and not self.standardizer.is_adapted

    def adapt(self, feature_batches) -> None:
        """Sets the feature standardisation from `[B, m, k]` training batches."""
        if self.standardizer is not None:
            self.standardizer.adapt(feature_batches)

    @property
    def map_variables(self):
        """Stage 1 trains these (M_map, and a jointly trained label context); stage 2 keeps
        them frozen (Alg. 1)."""
        if self.context_trained_jointly:
            return (self.label_map_head.trainable_variables
                    + self.label_context.trainable_variables)
        return self.label_map_head.trainable_variables

    @property
    def context_variables(self):
        """Trained between the stages, over stage 1's best M_map, which stays frozen (none
        when the label context is trained with M_map)."""
        if self.label_context is None or self.context_trained_jointly:
            return []
        return self.label_context.trainable_variables

    @property
    def context_trained_jointly(self) -> bool:
        """A label context that stage 1 trains along with M_map."""
        return self.label_context is not None and self.label_context_training == "joint"

    @property
    def decoder_variables(self):
        """Stage 2 trains these: attention, LSTM, prediction layers, initial state."""
        if not self.uses_decoder:
            return []
        stop = self.stop_logit.trainable_variables if self.softmax_steps else []
        return (self.init_h.trainable_variables + self.init_c.trainable_variables
                + self.cell.trainable_variables + stop)

    def _standardized(self, features):
        """`features` checked (`[B, m, k]`, the backbone's maps flattened over their
        positions) and standardized."""
        rank = tf.TensorShape(features.shape).rank
        if rank is not None and rank != 3:
            raise ValueError(f"features must be [batch, m, k]: the backbone's [batch, H, W, k] "
                             f"maps reshaped to m = H·W positions; got shape "
                             f"{tuple(features.shape)}")
        if not self.built:
            # Decoding a model never called (say, just restored from a checkpoint) must
            # not skip the standardizer, which only `build` makes.
            self.build(features.shape)
        return features if self.standardizer is None else self.standardizer(features)

    def map_logits(self, features, training=False):
        """M_map's own logits `[B, C]`, before any label context: what stage 1 trains."""
        return self.label_map_head(self._standardized(features), training=training)

    def pooled_map_logits(self, scores):
        """M_map's logits `[B, C]` from the spatial head's per-position scores `S [B, m, C]`
        (`head_outputs`), before any label context."""
        return self.label_map_head.pool(scores)

    def with_context(self, logits, training=False):
        """`L'` from M_map's logits `L` (`LabelContext`); `L` itself when there is none."""
        if self.label_context is None:
            return logits
        return self.label_context(logits, training=training)

    def call(self, features, training=False):
        """M_map logits `[B, C]` (v_prob = sigmoid of them), label context included."""
        return self.with_context(self.map_logits(features, training=training))

    # -- the decoder interface shared by training, greedy and beam search ----------
    def head_outputs(self, features):
        """`(A [B, m, units], S [B, m, C])`: what the residual decoder reads of M_map.

        The spatial head's per-position features and class scores, frozen (Alg. 1: no
        gradient flows back into M_map in stage 2). They depend on M_map alone, so
        stage 2 may compute them once per run and pass them to `start`.
        """
        if not self.residual:
            raise ValueError("only the residual decoder reads the head's per-position outputs")
        head_features, scores = self.label_map_head.per_position(
            self._standardized(features), training=False)
        return tf.stop_gradient(head_features), tf.stop_gradient(scores)

    def start(self, features, training=False, head_outputs=None):
        """Per-image context and the state before step 1 (`ỹ_0 = 0`, `v_pred = v_prob`).

        `head_outputs`: `self.head_outputs(features)` computed beforehand (residual
        decoder); `features` is then not read and may be None.
        """
        if self.residual:
            if head_outputs is None:
                head_outputs = self.head_outputs(features)
            head_features, scores = head_outputs
            logits = tf.stop_gradient(self.with_context(self.pooled_map_logits(scores)))
            read = self.features_dropout(head_features, training=training)
            context = self.cell.prepare(read, scores, logits)
        else:
            if head_outputs is not None:
                raise ValueError("the paper's decoder reads the feature maps, not head outputs")
            features = self._standardized(features)
            logits = tf.stop_gradient(self.with_context(self.label_map_head(features)))
            read = self.features_dropout(features, training=training)
            context = self.cell.prepare(read)
        v_prob = tf.sigmoid(tf.cast(logits, tf.float32))
        pooled = tf.reduce_mean(read, axis=1)
        state = CellState(self.init_h(pooled), self.init_c(pooled), tf.zeros_like(v_prob), v_prob)
        return context, state

    def step(self, context, state: CellState, training=False, beam_size: Optional[int] = None):
        """Eq. 4–7 for one step: `(logits [B, C], attention [B, m], h, c)`.

        `beam_size=K`: the state holds K beams per image of `context` (see the cells'
        `predict`); the outputs have B·K rows.
        """
        return self.cell.predict(context, state, training=training, beam_size=beam_size)

    def step_choices(self, logits, state: CellState, h=None, fill: float = float("-inf")):
        """What a step chooses among: its logits `p_t` with the labels already chosen
        set to `fill` (the candidate pool, Eq. 9–10), `[B, C]`; a softmax-step model
        (fixed order, PLA) adds "stop" as entry C, read from the step's `h_t`
        (CNN-RNN's and Orderless RNN's end token), `[B, C + 1]`."""
        masked = mask_chosen(logits, state.y_tilde, fill)
        if not self.softmax_steps:
            return masked
        if h is None:
            raise ValueError("a softmax-step model needs the step's h_t for its stop logit")
        stop = tf.cast(self.stop_logit(h), masked.dtype)
        return tf.concat([masked, stop], axis=-1)

    def step_log_probs(self, logits, state: CellState, h=None):
        """Log-probability of choosing each label at this step; chosen ones are -inf.

        `log sigmoid(p_t)` for the order-free variants trained with BCE (Eq. 11 multiplies
        them); a model trained with a softmax (fixed order, PLA) has as its step
        probability that softmax over the labels left and "stop" (`step_choices`).
        Where "stop" takes the mass, every label's probability falls and τ ends the path.
        """
        choices = self.step_choices(logits, state, h)
        if self.softmax_steps:
            return tf.nn.log_softmax(choices, axis=-1)[:, :-1]
        return tf.math.log_sigmoid(choices)

    def advance(self, state: CellState, h, c, logits, chosen) -> CellState:
        """Eq. 9–10: puts `chosen [B]` into ỹ and carries `sigmoid(p_t)` as v_pred."""
        return advance(state, h, c, logits, chosen)

    # -- losses of Algorithm 1 ------------------------------------------------------
    def map_loss(self, features, labels, training=True):
        """Stage 1: per-example binary cross-entropy of M_map, `[B]`.

        With a jointly trained label context, the cross-entropy of its corrected logits
        `L'` is added to that of `L`: `L` stays M_map's own estimate (what the context
        and the decoder read), and M_map learns features the context can use."""
        logits = tf.cast(self.map_logits(features, training=training), tf.float32)
        labels = tf.cast(labels, tf.float32)
        if not self.context_trained_jointly:
            return class_mean_bce(labels, logits)
        return class_mean_bce(labels, logits) + self.context_loss(logits, labels, training)

    def context_loss(self, map_logits, labels, training=True):
        """The label context's loss, `[B]`: binary cross-entropy of its `L'` from M_map's
        logits `L` (trained with M_map in `map_loss`, or fitted after stage 1)."""
        return class_mean_bce(tf.cast(labels, tf.float32),
                              self.label_context(map_logits, training=training))

    def sequence_loss(self, features, labels, max_steps: int, train_steps: str = "gt_count",
                      training=True, head_outputs=None, attention_penalty: float = 0.0,
                      attention_penalty_form: str = "doubly_stochastic"):
        """Stage 2 loss (Eq. 8, Alg. 1) unrolled in a graph loop over `max_steps` steps.

        Order-free variants with BCE: at each step the full label vector is the target and
        the model feeds back its own choice `l_t` (Eq. 9–10) — no teacher forcing.
        With PLA (Orderless RNN's predicted-label alignment), each step is a softmax over
        the labels not yet chosen whose target is the model's own choice when that is a
        true label, else the true label left with the highest score, and that target is
        fed back. The fixed-order variants feed the t-th true label in `label_order` and
        score it with a softmax over the labels not yet fed (and "stop").

        Steps per image: its label count T_i (`gt_count`, the paper preset's reading of
        Algorithm 1's `iter` and this method's default; `--train.train_steps` defaults to
        the next), T_i + 1 (`gt_count_plus_one`:
        the step after the last label learns to score every label left low, which is
        what stops a path) or all `max_steps` (`max`); never more than `max_steps`. The
        softmax losses take T_i + 1 steps whatever `train_steps` says: the last one's
        target is "stop" (`step_choices`).

        `head_outputs` is passed to `start` (stage 2 over M_map's outputs computed once).

        `attention_penalty` λ > 0 adds, per image, λ times a penalty on its attention
        coverage `a_i = Σ_t α_{t,i}` over the steps it takes (before the mean over
        steps): Show, Attend and Tell's doubly stochastic `Σ_i (1 − a_i)²`
        (`doubly_stochastic`: every position attended about once in all), or only its
        upper side `Σ_i max(0, a_i − 1)²` (`overlap`: attention does not come back to a
        position it has already spent itself on).

        Returns:
            `(per_example [B], per_step [max_steps])`: the mean over each image's steps
            and the mean loss of each step over the images that take it (NaN for a step
            no image takes).
        """
        if not self.uses_decoder:
            raise ValueError("the baseline variant has no decoder: train it with map_loss")
        if train_steps not in TRAIN_STEPS:
            raise ValueError(f"train_steps must be one of {TRAIN_STEPS}, got {train_steps!r}")
        if attention_penalty_form not in ATTENTION_PENALTIES:
            raise ValueError(f"attention_penalty_form must be one of {ATTENTION_PENALTIES}, "
                             f"got {attention_penalty_form!r}")
        if attention_penalty and self.variant == "no_attention":
            raise ValueError("the no_attention ablation has no attention to penalise")
        labels = tf.cast(labels, tf.float32)
        truth = tf.reduce_sum(labels, axis=-1)
        counts = truth
        if self.softmax_steps or train_steps == "gt_count_plus_one":
            counts = truth + 1.0
        elif train_steps == "max":
            counts = tf.fill(tf.shape(truth), float(max_steps))
        counts = tf.minimum(counts, float(max_steps))
        if self.teacher_forced:
            rank = tf.argsort(tf.constant(self.label_order, tf.int32))  # position of each class
            key = tf.where(labels > 0, rank[None, :], rank[None, :] + self.num_classes)
            ordered_labels = tf.argsort(key, axis=-1, stable=True)

        context, state = self.start(features, training=training, head_outputs=head_outputs)
        batch = tf.shape(labels)[0]
        positions = tf.shape(features if head_outputs is None else head_outputs[0])[1]

        def body(t, state, total, per_step, coverage):
            logits, alpha, h, c = self.step(context, state, training=training)
            active = tf.cast(tf.cast(t, tf.float32) < counts, tf.float32)
            if attention_penalty:
                coverage = coverage + alpha * active[:, None]
            choices = self.step_choices(logits, state, h, fill=_LARGE_NEGATIVE)
            if not self.softmax_steps:
                step_loss = class_mean_bce(labels, logits)  # Eq. 8
                chosen = tf.argmax(choices, -1, output_type=tf.int32)  # Eq. 9: l_t fed back
            else:
                if self.teacher_forced:
                    target = ordered_labels[:, t]
                else:
                    target = _aligned_target(choices[:, :-1], labels, state.y_tilde)
                # Once every true label is in, the step's target is "stop" (index C).
                done = tf.cast(t, tf.float32) >= truth
                step_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=tf.where(done, self.num_classes, target), logits=choices)
                chosen = target
            step_loss = step_loss * active
            taken = tf.reduce_sum(active)
            # NaN, not 0, when no image takes step t: a zero would plot as a perfect step.
            per_step = per_step.write(t, tf.where(
                taken > 0, tf.math.divide_no_nan(tf.reduce_sum(step_loss), taken), float("nan")))
            return (t + 1, self.advance(state, h, c, logits, chosen), total + step_loss, per_step,
                    coverage)

        _, _, total, per_step, coverage = tf.while_loop(
            lambda t, *_: t < max_steps, body,
            (tf.constant(0), state, tf.zeros([batch]), tf.TensorArray(tf.float32, size=max_steps),
             tf.zeros(tf.stack([batch, positions]))),
            maximum_iterations=max_steps)  # a fixed bound lets XLA compile the loop
        if attention_penalty:
            excess = 1.0 - coverage if attention_penalty_form == "doubly_stochastic" else \
                tf.nn.relu(coverage - 1.0)
            total = total + attention_penalty * tf.reduce_sum(tf.square(excess), axis=-1)
        per_example = total / tf.maximum(counts, 1.0)
        return per_example, per_step.stack()

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes, "variant": self.variant, "head": self.head,
            "head_units": self.head_units, "head_kernel_size": self.head_kernel_size,
            "head_dropout": self.head_dropout,
            "label_context_units": self.label_context_units,
            "label_context_dropout": self.label_context_dropout,
            "label_context_training": self.label_context_training,
            "standardize": self.standardize, "decoder": self.decoder,
            "lstm_units": self.lstm_units, "attention_units": self.attention_units,
            "fc_units": self.fc_units, "dropout": self.dropout,
            "feature_dropout": self.feature_dropout, "stage2_loss": self.stage2_loss,
            "label_order": self.label_order,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "mode" in config:  # the name `.keras` files saved earlier give the argument
            config["variant"] = config.pop("mode")
        return cls(**config)


def _aligned_target(masked_logits, labels, y_tilde):
    """PLA's target of a step (Orderless RNN's predicted-label alignment): the label the
    model chooses (`argmax` over the pool) when it is true, else the true label left with
    the highest logit."""
    choice = tf.argmax(masked_logits, -1, output_type=tf.int32)
    correct = tf.gather(labels, choice, batch_dims=1) > 0
    left = (labels > 0) & (y_tilde <= 0)
    best_true = tf.argmax(tf.where(left, masked_logits, _LARGE_NEGATIVE * 2.0), -1,
                          output_type=tf.int32)
    return tf.where(correct, choice, best_true)


def build_model(config: ModelConfig, num_classes: int, feature_shape: Sequence[int],
                label_order: Optional[Sequence[int]] = None,
                stage2_loss: str = "bce") -> OrderFreeRNN:
    """The built model a `ModelConfig` describes, over `(m, k)` feature maps: the backbone's
    `(H, W, k)` maps flattened to m = H·W positions (a run's `positions_and_depth`)."""
    if not isinstance(config, ModelConfig):
        remedy = ": pass its .model" if isinstance(config, ExperimentConfig) else ""
        raise TypeError(f"config must be a ModelConfig (an ExperimentConfig's .model); got "
                        f"{type(config).__name__}{remedy}")
    shape = tuple(feature_shape) if isinstance(feature_shape, Iterable) else (feature_shape,)
    if len(shape) != 2:
        raise ValueError(f"feature_shape must be (m, k) = (H·W, k), the backbone's maps "
                         f"flattened over their positions; got {shape}: pass the run facts' "
                         f"positions_and_depth")
    model = OrderFreeRNN(num_classes=num_classes, stage2_loss=stage2_loss,
                         label_order=label_order, **model_arguments(config))
    model.build((None,) + shape)
    return model


def model_arguments(config: ModelConfig) -> dict:
    """`OrderFreeRNN`'s arguments from every field of `config`, under the argument's name: a
    field the model does not take is refused when the model is built ("Unrecognized
    keyword arguments"), rather than recorded in run.json and ignored."""
    return {_ARGUMENT_OF_FIELD.get(field.name, field.name): getattr(config, field.name)
            for field in dataclasses.fields(config)}


def fixed_label_order(label_counts: Sequence[int], variant: str) -> Optional[list]:
    """The label order of the fixed-order ablations from training-set label counts.

    `frequency_first`: most frequent first (ties by class id); `rare_first`: its reverse.
    Other variants need no order and get None.
    """
    if variant not in ("frequency_first", "rare_first"):
        return None
    order = sorted(range(len(label_counts)), key=lambda c: (-label_counts[c], c))
    return order if variant == "frequency_first" else order[::-1]
