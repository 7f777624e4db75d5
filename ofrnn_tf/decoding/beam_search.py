"""Batched beam search over the confidence-ranked decoder (paper Eq. 11; docs/model.md).

The K beams of every image of a batch advance together (step 1, where an image has a
single beam, runs on one row per image). A path's probability is the product of its
step probabilities (Eq. 11), kept as a sum of logs. A successor is admissible only
while its path probability is at least τ (the first `min_labels` steps are admissible
whatever τ); decoding returns, per image, the best beam of the last step that had an
admissible one, after at most `max_steps` steps.

That rule is computed from one search at τ = 0 that records the best beam of every
step: path probabilities only fall along a path, so a beam below τ has no admissible
descendant, and taking the top K before or after dropping the candidates below τ
keeps the same admissible beams. The best beams of steps 1..T therefore have
decreasing probabilities, and the answer for τ is the last of them still ≥ τ
(`select_for_threshold` does the same in numpy; τ calibration relies on it). It also
makes the per-class ranking scores independent of τ: they come from the full-length
best path (docs/model.md, Decoding).
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

import numpy as np
import tensorflow as tf

from ofrnn_tf.config.experiment import MAX_BEAM_SIZE, DecodingConfig
from ofrnn_tf.status import progress_bar

NEG_INF = float("-inf")
# Keys of the per-step recording that `all_steps=True` adds.
STEP_KEYS = ("step_labels", "step_log_prob", "path_scores")
BASELINE_THRESHOLD = 0.5


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold τ is a path probability and must be in [0, 1]; got {threshold}")
    return threshold


def check_score_mix(score_mix):
    """`score_mix` (`mix_scores`' weight of M_map's v_prob) refused outside [0, 1], NaN too
    (every score would be NaN); a tensor (a SavedModel's variable) is read at run time and
    passes unchecked."""
    if isinstance(score_mix, (tf.Tensor, tf.Variable)):
        return score_mix
    if not 0.0 <= float(score_mix) <= 1.0:
        raise ValueError(f"score_mix is the weight of M_map's scores and must be in [0, 1]; "
                         f"got {score_mix}")
    return score_mix


def log_threshold(threshold: float) -> np.float32:
    """`log τ` as the float32 both the graph and `select_for_threshold` compare against:
    the float32 τ's log taken in float64 and rounded once, as `_log_threshold_tensor`
    takes it (float32 logs of NumPy and TensorFlow differ in the last bit for some τ, which
    would decide a path of probability exactly τ differently in the two)."""
    threshold = _check_threshold(threshold)
    with np.errstate(divide="ignore"):
        return np.float32(np.log(np.float64(np.float32(threshold))))


def _log_threshold_tensor(threshold) -> tf.Tensor:
    """`log τ` for a τ given as a Python number (checked now) or a tensor (read at run time,
    e.g. a variable of the SavedModel or a request's input), rounded as `log_threshold`."""
    if isinstance(threshold, (tf.Tensor, tf.Variable)):
        tau = tf.cast(tf.cast(threshold, tf.float32), tf.float64)
        return tf.cast(tf.math.log(tau), tf.float32)
    return tf.constant(log_threshold(0.0 if threshold is None else threshold))


def widest_useful_beam(num_classes: int, max_steps: int) -> int:
    """The widest beam that can change a prediction of `max_steps` (T_max) steps over
    `num_classes` (C) labels: a path holds each label once, so there are
    C·(C−1)·…·(C−T_max+1) distinct paths, and the beams past them stay empty. Never below
    the default width (which runs on any data, one or two classes too) nor above
    `MAX_BEAM_SIZE`."""
    paths = math.perm(num_classes, max_steps)
    return min(max(paths, DecodingConfig().beam_size), MAX_BEAM_SIZE)


def beam_size_problem(beam_size: int, num_classes: int, max_steps: int) -> Optional[str]:
    """Why beam width `beam_size` (K) cannot help a decoder of `num_classes` classes and
    `max_steps` steps, as the end of a sentence that names K ("is wider than …"), or None."""
    widest = widest_useful_beam(num_classes, max_steps)
    if beam_size <= widest:
        return None
    if widest == MAX_BEAM_SIZE:
        return (f"is above {MAX_BEAM_SIZE}, the widest beam decoded (every image decodes its "
                f"K beams at once)")
    paths = math.perm(num_classes, max_steps)
    floor = (f" (the default {DecodingConfig().beam_size} is taken on any data)"
             if widest > paths else "")
    return (f"is wider than the {paths} distinct label paths of T_max = {max_steps} labels "
            f"from C = {num_classes} classes (C·(C−1)·…), and the beams past them stay "
            f"empty; use at most {widest}{floor}")


class BeamSizeError(ValueError):
    """A beam wider than any that can change a prediction (`beam_size_problem`); `given`:
    whether the width is the caller's (a flag), not the run's own setting."""

    def __init__(self, message: str, given: bool = True):
        super().__init__(message)
        self.given = given


def check_beam_size(model, beam_size: int, max_steps: int) -> None:
    """`BeamSizeError` when a beam of `beam_size` is wider than any that can change the
    model's predictions of `max_steps` labels (`beam_size_problem`); M_map alone (no
    decoder) has no beam."""
    too_wide = model.uses_decoder and beam_size_problem(beam_size, model.num_classes, max_steps)
    if too_wide:
        raise BeamSizeError(f"beam_size={beam_size} {too_wide}")


def _check_args(model, beam_size: int, max_steps: int, min_labels: int
                ) -> tuple[int, int, int]:
    """The three sizes checked, as Python ints (a NumPy int64 would make int64 step
    tensors that do not compare with the loop's int32 counter)."""
    for name, value, low in (("beam_size", beam_size, 1), ("max_steps", max_steps, 1),
                             ("min_labels", min_labels, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}; got {value!r}")
    if model.uses_decoder and max_steps > model.num_classes:
        raise ValueError(f"max_steps={max_steps} exceeds num_classes={model.num_classes}: a "
                         f"path holds each label at most once")
    check_beam_size(model, beam_size, max_steps)
    if model.uses_decoder and min_labels > max_steps:
        raise ValueError(f"min_labels={min_labels} cannot hold: a path has at most "
                         f"max_steps={max_steps} labels")
    if not model.uses_decoder and min_labels > model.num_classes:
        raise ValueError(f"min_labels={min_labels} exceeds num_classes={model.num_classes}")
    return int(beam_size), int(max_steps), int(min_labels)


def _check_features(features) -> tf.Tensor:
    features = tf.convert_to_tensor(features)
    if features.shape.rank is not None and features.shape.rank != 3:
        raise ValueError(f"features must be [batch, m, k] feature maps; got shape {features.shape}")
    return tf.cast(features, tf.float32)


def baseline_decode(model, features: tf.Tensor, *, max_steps: int,
                    threshold: Optional[float] = None, min_labels: int = 1) -> Dict[str, tf.Tensor]:
    """Decoding of the `baseline` variant (M_map alone, paper Tables 1–2 "ResNet-baseline").

    The labels are the classes with `v_prob ≥ threshold` (0.5 by default) in
    decreasing `v_prob` order, at least the `min_labels` most probable ones (pass 0
    for the plain thresholded baseline). `labels` is `[B, C]` (-1 padded): M_map has
    no step limit. `scores = v_prob`; `log_prob` is the sum of `log v_prob` over the
    chosen labels; `attention` is zeros `[B, max_steps, m]` (no attention).
    """
    if threshold is None:
        threshold = BASELINE_THRESHOLD
    elif not isinstance(threshold, (tf.Tensor, tf.Variable)):
        threshold = _check_threshold(threshold)
    features = _check_features(features)
    logits = tf.cast(model(features, training=False), tf.float32)
    v_prob = tf.sigmoid(logits)
    num_classes = model.num_classes
    order = tf.argsort(v_prob, axis=-1, direction="DESCENDING", stable=True)
    sorted_prob = tf.gather(v_prob, order, batch_dims=1)
    keep = (sorted_prob >= threshold) | (tf.range(num_classes)[None, :] < min_labels)
    labels = tf.where(keep, tf.cast(order, tf.int32), -1)
    # log_sigmoid, not log(v_prob): a v_prob that rounds to 0 (τ = 0 keeps it) is finite.
    sorted_log_prob = tf.gather(tf.math.log_sigmoid(logits), order, batch_dims=1)
    log_prob = tf.reduce_sum(tf.where(keep, sorted_log_prob, 0.0), axis=-1)
    batch, m = tf.shape(features)[0], tf.shape(features)[1]
    return {
        "labels": labels,
        "num_labels": tf.reduce_sum(tf.cast(keep, tf.int32), axis=-1),
        "log_prob": log_prob,
        "scores": v_prob,
        "attention": tf.zeros(tf.stack([batch, max_steps, m]), tf.float32),
        "v_prob": v_prob,
    }


def mix_scores(v_prob, path_scores, score_mix):
    """Per-class ranking scores: ``score_mix · v_prob + (1 − score_mix) · path_scores``.

    `path_scores` are the decoder's (the largest step probability of each class along
    the full-length best path); `score_mix` is chosen on validation (0 keeps the
    decoder's, 1 M_map's), so the ranking is never worse there than M_map's.
    """
    return score_mix * v_prob + (1.0 - score_mix) * path_scores


def beam_search(model, features: tf.Tensor, *, beam_size: int = 3, max_steps: int,
                threshold: Optional[float] = None, min_labels: int = 1, score_mix=0.0,
                all_steps: bool = False, unroll: bool = False,
                step_probabilities: bool = False) -> Dict[str, tf.Tensor]:
    """Beam search (paper Eq. 11, docs/model.md) for a batch of images.

    Args:
        model: an `OrderFreeRNN` (built). Mode `baseline` goes to `baseline_decode`.
        features: `[B, m, k]` feature maps, any B.
        beam_size: K; 1 is greedy decoding.
        max_steps: T_max, the most labels a path may hold (at most C).
        threshold: τ on the path probability (Eq. 11), compared in log space: a
            number, or a scalar tensor read at run time; default 0.0 (only T_max and
            the candidate pool stop a path). For the `baseline` variant it is the
            threshold on `v_prob` (default 0.5).
        min_labels: steps 1..min_labels are admissible whatever τ.
        score_mix: weight of M_map's v_prob in the ranking scores (`mix_scores`), in
            [0, 1]; a number or a scalar tensor.
        all_steps: also return the recording τ is read from: `step_labels [B, T, T]`
            (the best path of every step, -1 padded), `step_log_prob [B, T]` (its
            log-probability, -inf where no path reached the step) and `path_scores
            [B, C]` (the decoder's scores before mixing).
        unroll: write the steps out instead of a `tf.while_loop` (same results; fewer
            ops, as served models want).
        step_probabilities: also return `step_probabilities` `[B, T]`: each returned
            label's probability at the step that chose it (Eq. 11's factors; 0 past
            the path's end), carried with the beams rather than replayed
            (`path_step_probabilities`).

    Returns:
        dict: `labels` int32 `[B, T]` (decoding order, -1 padded), `num_labels` int32
        `[B]`, `log_prob` `[B]` (path log-probability; 0 for an empty path), `scores`
        `[B, C]` (τ-independent ranking scores, see `mix_scores`; the step
        probability is `sigmoid(p_t)`, or the softmax over the labels left and "stop"
        for the fixed-order and PLA-trained models), `attention` `[B, T, m]` (α_t of each step
        of the returned path, zeros past its end), `v_prob` `[B, C]`. For the
        `baseline` variant see `baseline_decode` (`labels` is `[B, C]`).

    Features must be finite (the served signatures check them): an image with NaN
    features gets an empty path and NaN scores. A row's results do not depend on the
    other rows but for float32 round-off (about 1e-7, which TensorFlow's vectorised
    kernels give a value by its place in a tensor), so two labels of exactly equal
    probability may be ordered either way.
    """
    beam_size, max_steps, min_labels = _check_args(model, beam_size, max_steps, min_labels)
    check_score_mix(score_mix)
    if not model.uses_decoder:
        out = baseline_decode(model, features, max_steps=max_steps, threshold=threshold,
                              min_labels=min_labels)
        if step_probabilities:
            out["step_probabilities"] = _probabilities_of(out["v_prob"], out["labels"])
        return out
    log_tau = _log_threshold_tensor(threshold)
    features = _check_features(features)
    K, T, C = beam_size, max_steps, model.num_classes

    # Beams are rows: image b's are b*K .. b*K+K-1, each carrying its state, path
    # log-probability and the running maximum of every class's step probability. A
    # path's labels, attention and step probabilities are not carried: each step
    # records its beams' newest ones and the row of the beam each came from, and the
    # paths wanted are read back through those rows at the end (`_backtrack`), so that
    # a step costs the same whatever T_max.
    context, state = model.start(features, training=False)
    v_prob = tf.cast(state.v_pred, tf.float32)
    batch = tf.shape(features)[0]
    image_rows = tf.range(batch * K) // K
    beam_offsets = (tf.range(batch) * K)[:, None]
    steps = tf.range(T)
    record = lambda dtype: tf.TensorArray(dtype, size=T)

    def step(v, first: bool):
        t, state = v["t"], v["state"]
        # At step 1 every beam of an image starts from the same state: the model runs
        # on one row per image.
        logits, alpha, h, c = model.step(context, state, training=False,
                                         beam_size=1 if first else K)
        logits = tf.cast(logits, tf.float32)
        step_log_prob = model.step_log_probs(logits, state, h)
        step_prob = tf.exp(step_log_prob) if model.softmax_steps else tf.sigmoid(logits)
        if first:
            candidates = tf.concat(
                [step_log_prob, tf.fill(tf.stack([batch, (K - 1) * C]), NEG_INF)], axis=1)
        else:
            candidates = tf.reshape(v["log_prob"][:, :, None] + tf.reshape(step_log_prob, [-1, K, C]),
                                    [-1, K * C])
        new_log_prob, index = tf.math.top_k(candidates, k=K)
        label = tf.reshape(index % C, [-1])
        source = image_rows if first else tf.reshape(index // C + beam_offsets, [-1])
        pick = lambda x: tf.gather(x, source)

        new_state = model.advance(state._replace(y_tilde=pick(state.y_tilde)), pick(h), pick(c),
                                  pick(logits), label)
        new_scores = pick(step_prob)
        carried = {
            "t": t + 1, "log_prob": new_log_prob, "state": new_state,
            "scores": new_scores if first else tf.maximum(pick(v["scores"]), new_scores),
            "step_log_prob": tf.where(tf.equal(steps, t)[None, :], new_log_prob[:, :1],
                                      v["step_log_prob"]),
            "labels_at": v["labels_at"].write(t, label),
            "sources_at": v["sources_at"].write(t, source),
            "alpha_at": v["alpha_at"].write(t, tf.cast(pick(alpha), tf.float32)),
        }
        if step_probabilities:  # each beam's own step log-probability of its newest label
            own = candidates if first else tf.reshape(step_log_prob, [-1, K * C])
            chosen = tf.reshape(tf.gather(own, index, batch_dims=1), [-1])
            carried["factors_at"] = v["factors_at"].write(t, chosen)
        return carried

    recording = {
        "t": tf.constant(0),
        "state": state,
        "step_log_prob": tf.fill(tf.stack([batch, T]), NEG_INF),
        "labels_at": record(tf.int32),
        "sources_at": record(tf.int32),
        "alpha_at": record(tf.float32),
    }
    if step_probabilities:
        recording["factors_at"] = record(tf.float32)
    final = step(recording, first=True)
    if unroll:
        # T_max is static: the steps written out one after the other, no loop ops.
        for _ in range(T - 1):
            final = step(final, first=False)
    elif T > 1:
        (final,) = tf.while_loop(lambda v: v["t"] < T, lambda v: (step(v, first=False),),
                                 (final,), maximum_iterations=T - 1)
    sources_at = final["sources_at"].stack()  # [T, B·K]
    labels_at = final["labels_at"].stack()

    # The answer for τ: the last step whose best path is admissible (a prefix of steps).
    step_log_prob = final["step_log_prob"]
    admissible = tf.math.is_finite(step_log_prob) & (
        (steps[None, :] < min_labels) | (step_log_prob >= log_tau))
    num_labels = tf.reduce_sum(tf.cast(admissible, tf.int32), axis=1)
    last = tf.maximum(num_labels - 1, 0)
    found = num_labels > 0
    path_scores = tf.gather(final["scores"], beam_offsets[:, 0])  # every image's best beam
    # The best path of the step chosen, position by position: [B, 1, T] (the path, m).
    chosen = _backtrack(sources_at, beam_offsets, last[:, None], T,
                        {"labels": (labels_at, -1),
                         "attention": (final["alpha_at"].stack(), 0.0),
                         **({"factors": (final["factors_at"].stack(), NEG_INF)}
                            if step_probabilities else {})})
    result = {
        "labels": tf.where(found[:, None], chosen["labels"][:, 0], -1),
        "num_labels": num_labels,
        "log_prob": tf.where(found, tf.gather(step_log_prob, last, batch_dims=1), 0.0),
        "scores": mix_scores(v_prob, path_scores, tf.cast(score_mix, tf.float32)),
        "attention": tf.where(found[:, None, None], chosen["attention"][:, 0], 0.0),
        "v_prob": v_prob,
    }
    if step_probabilities:
        result["step_probabilities"] = tf.where(steps[None, :] < num_labels[:, None],
                                                tf.exp(chosen["factors"][:, 0]), 0.0)
    if all_steps:
        every_step = tf.tile(steps[None, :], tf.stack([batch, 1]))
        paths = _backtrack(sources_at, beam_offsets, every_step, T,
                           {"labels": (labels_at, -1)})
        result.update({"step_labels": paths["labels"], "step_log_prob": step_log_prob,
                       "path_scores": path_scores})
    return result


def _backtrack(sources_at: tf.Tensor, beam_offsets: tf.Tensor, ends: tf.Tensor, steps: int,
               records: Mapping[str, tuple]) -> Dict[str, tf.Tensor]:
    """The paths of every image's best beam at the steps `ends` `[B, N]`, read back from
    what each step recorded of its beams: `records` maps a name to `(values [T, B·K, …],
    fill)`, and `sources_at [T, B·K]` holds the row each step's beam came from. Returns
    each name's values along the paths, `[B, N, T, …]`, `fill` past a path's end."""
    rows = tf.broadcast_to(beam_offsets, tf.shape(ends))  # beam 0 of the step each path ends at
    read = {name: [None] * steps for name in records}
    for s in reversed(range(steps)):
        on_path = s <= ends
        for name, (values, fill) in records.items():
            value = tf.gather(values[s], rows)
            mask = on_path[(...,) + (None,) * (value.shape.rank - 2)]  # over its own axes
            read[name][s] = tf.where(mask, value, tf.cast(fill, value.dtype))
        if s > 0:  # step 1's beams came from the images' first rows, not from a beam
            rows = tf.where(on_path, tf.gather(sources_at[s], rows), rows)
    return {name: tf.stack(values, axis=2) for name, values in read.items()}


def greedy_decode(model, features: tf.Tensor, *, max_steps: int,
                  threshold: Optional[float] = None, min_labels: int = 1, score_mix=0.0,
                  all_steps: bool = False) -> Dict[str, tf.Tensor]:
    """Greedy decoding (Eq. 9 at test time): `beam_search` with K = 1."""
    return beam_search(model, features, beam_size=1, max_steps=max_steps, threshold=threshold,
                       min_labels=min_labels, score_mix=score_mix, all_steps=all_steps)


def make_decoder(model, *, beam_size: int = 3, max_steps: int, threshold: Optional[float] = None,
                 min_labels: int = 1, score_mix: float = 0.0, all_steps: bool = False,
                 jit_compile: bool = False, feature_shape: Optional[tuple] = None,
                 attention: bool = True) -> tf.types.experimental.GenericFunction:
    """`beam_search` with its settings baked in, as one `tf.function` over `features`.

    The input signature is `float32 [None, m, k]` (`feature_shape = (m, k)`, or
    unknown when None), so the function traces once for every batch size.
    `jit_compile=True` compiles it with XLA. `attention=False` leaves out the
    `attention` output, which no metric reads: kept for a whole split it would take
    images × T_max × positions floats.

    Example:
    >>> from ofrnn_tf.modeling.model import OrderFreeRNN
    >>> model = OrderFreeRNN(num_classes=5, lstm_units=8, attention_units=8, fc_units=8)
    >>> model.build((None, 49, 16))
    >>> decode = make_decoder(model, beam_size=3, max_steps=4, threshold=0.2)
    >>> out = decode(tf.random.normal([2, 49, 16]))
    >>> out["labels"].shape, out["scores"].shape
    (TensorShape([2, 4]), TensorShape([2, 5]))
    """
    beam_size, max_steps, min_labels = _check_args(model, beam_size, max_steps, min_labels)
    if threshold is not None:
        _check_threshold(threshold)
    check_score_mix(score_mix)
    if not model.built:
        raise ValueError("the model is not built: call model.build((None, m, k)) or restore "
                         "its weights before making a decoder")
    m, k = (None, None) if feature_shape is None else feature_shape

    @tf.function(input_signature=[tf.TensorSpec([None, m, k], tf.float32, name="features")],
                 jit_compile=jit_compile, autograph=False)
    def decode(features):
        outputs = beam_search(model, features, beam_size=beam_size, max_steps=max_steps,
                              threshold=threshold, min_labels=min_labels, score_mix=score_mix,
                              all_steps=all_steps)
        if not attention:
            del outputs["attention"]
        return outputs

    return decode


def path_step_probabilities(model, features: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Probability of each label of a given path at the step it was chosen (Eq. 11's factors).

    Replays the decoder (`start` / `step` / `step_log_probs` / `advance`) feeding
    `labels` in order, so `sum_t log(result[:, t])` is the path log-probability that
    beam search reports for that path.

    Args:
        model: a built `OrderFreeRNN`.
        features: `[B, m, k]` feature maps.
        labels: int32 `[B, T]` label ids in decoding order, -1 padded.

    Returns:
        float32 `[B, T]`, 0 at the padding. For the `baseline` variant (no decoder) it
        is `v_prob` of each label.
    """
    labels = tf.convert_to_tensor(labels, tf.int32)
    valid = labels >= 0
    safe = tf.maximum(labels, 0)
    if not model.uses_decoder:
        v_prob = tf.sigmoid(tf.cast(model(features, training=False), tf.float32))
        return _probabilities_of(v_prob, labels)
    context, state = model.start(features, training=False)
    probabilities = []
    for t in range(labels.shape[1]):
        logits, _, h, c = model.step(context, state, training=False)
        step_log_prob = model.step_log_probs(tf.cast(logits, tf.float32), state, h)
        chosen = tf.gather(step_log_prob, safe[:, t], batch_dims=1)
        probabilities.append(tf.where(valid[:, t], tf.exp(chosen), 0.0))
        state = model.advance(state, h, c, logits, safe[:, t])
    if not probabilities:
        return tf.zeros(tf.shape(labels), tf.float32)
    return tf.stack(probabilities, axis=1)


def _probabilities_of(probabilities: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Each label's entry of `probabilities` `[B, C]`, for int32 `labels` `[B, L]`
    (-1 padded); 0 at the padding."""
    return tf.where(labels >= 0, tf.gather(probabilities, tf.maximum(labels, 0),
                                           batch_dims=1), 0.0)


def labels_to_multi_hot(labels, num_classes: int, dtype=np.int64) -> np.ndarray:
    """`[N, L]` label ids padded with -1 → multi-hot `[N, C]` (int64, or `dtype`)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [N, L] (-1 padded); got shape {labels.shape}")
    bad = (labels < -1) | (labels >= num_classes)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"labels[{i}, {j}] = {labels[i, j]} is not a class id in "
                         f"[0, {num_classes}) nor the padding -1")
    out = np.zeros((labels.shape[0], num_classes + 1), dtype)
    np.put_along_axis(out, np.where(labels < 0, num_classes, labels), 1, axis=1)
    return out[:, :num_classes]


def select_for_threshold(step_outputs: Mapping[str, np.ndarray], threshold: float,
                         min_labels: int = 1, score_mix: float = 0.0, *,
                         scores: bool = True) -> Dict[str, np.ndarray]:
    """What `beam_search` returns for τ = `threshold`, from an `all_steps` recording.

    Per image, picks the last step t whose best path is admissible (t ≤ min_labels,
    or path probability ≥ τ); an image with none gets the empty path. Exact (see the
    module docstring), so τ can be grid-searched without decoding again.

    Args:
        step_outputs: numpy (or tensor) outputs of a run with `all_steps=True`
            (needs `step_labels`, `step_log_prob`, `path_scores`, `v_prob`).
        threshold: τ in [0, 1].
        min_labels: as in `beam_search`.
        score_mix: as in `beam_search`.
        scores: whether to return the ranking scores too (a τ search reads only the
            labels, and τ does not change the scores).

    Returns:
        dict of numpy arrays `labels`, `num_labels`, `log_prob`, `scores` (where asked),
        as `beam_search`.
    """
    missing = [key for key in STEP_KEYS + ("v_prob",) if key not in step_outputs]
    if missing:
        raise ValueError(f"step_outputs lacks {missing}: decode with all_steps=True")
    step_labels = np.asarray(step_outputs["step_labels"])
    step_log_prob = np.asarray(step_outputs["step_log_prob"], np.float32)
    n, num_steps = step_log_prob.shape
    t = np.arange(1, num_steps + 1)[None, :]
    ok = np.isfinite(step_log_prob) & ((t <= min_labels) | (step_log_prob >= log_threshold(threshold)))
    # Best-path probabilities never increase with t, so `ok` is a prefix: its length is the count.
    num = ok.sum(axis=1).astype(np.int32)
    last = np.maximum(num - 1, 0)
    rows = np.arange(n)
    empty = num == 0
    labels = np.where(empty[:, None], -1, step_labels[rows, last]).astype(np.int32)
    selected = {
        "labels": labels,
        "num_labels": num,
        "log_prob": np.where(empty, np.float32(0.0), step_log_prob[rows, last]).astype(np.float32),
    }
    if scores:
        selected["scores"] = mix_scores(
            np.asarray(step_outputs["v_prob"], np.float32),
            np.asarray(step_outputs["path_scores"], np.float32),
            np.float32(score_mix)).astype(np.float32)
    return selected


def select_baseline(v_prob, threshold: float, min_labels: int = 1) -> np.ndarray:
    """Multi-hot `[N, C]` of `baseline_decode` at `threshold`, from its `v_prob`."""
    v_prob = np.asarray(v_prob, np.float32)
    threshold = np.float32(_check_threshold(threshold))
    return ((v_prob >= threshold) | top_classes(v_prob, min_labels)).astype(np.int64)


def top_classes(v_prob, min_labels: int) -> np.ndarray:
    """Boolean `[N, C]`: each image's `min_labels` classes of highest `v_prob` (ties to the
    lower class index), which `baseline_decode` labels whatever the threshold."""
    v_prob = np.asarray(v_prob, np.float32)
    order = np.argsort(-v_prob, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(v_prob.shape[1])[None, :].repeat(len(v_prob), 0), 1)
    return ranks < min_labels


def decode_dataset(decoder, dataset, progress: bool = True) -> Dict[str, np.ndarray]:
    """Runs `decoder` over a `tf.data` dataset of batches and concatenates the results.

    Args:
        decoder: from `make_decoder` (features `[B, m, k]` → dict of tensors).
        dataset: yields dicts with `features` and, when present, `labels` (multi-hot
            `[B, C]`), `label_areas` and `image_id`.
        progress: show a progress bar on stderr.

    Returns:
        the decoder's outputs as numpy arrays, plus `y_true`, `label_areas` and
        `image_ids` where the dataset has them.
    """
    passthrough = {"labels": "y_true", "label_areas": "label_areas", "image_id": "image_ids"}
    collected: Dict[str, list] = {}
    total = None
    cardinality = getattr(dataset, "cardinality", None)
    if cardinality is not None:
        total = int(cardinality())
        total = total if total >= 0 else None
    with progress_bar(dataset, total=total, desc="decoding", unit="batch",
                      enabled=progress) as bar:
        for i, batch in enumerate(bar):
            if not isinstance(batch, Mapping) or "features" not in batch:
                keys = f" with keys {sorted(batch)}" if isinstance(batch, Mapping) else ""
                raise ValueError(f"batch {i} of the dataset must be a dict with a 'features' "
                                 f"entry; got {type(batch).__name__}{keys}")
            outputs = decoder(tf.cast(batch["features"], tf.float32))
            for key, value in outputs.items():
                collected.setdefault(key, []).append(np.asarray(value))
            for key, name in passthrough.items():
                if key in batch:
                    collected.setdefault(name, []).append(np.asarray(batch[key]))
    if not collected:
        raise ValueError("the dataset yielded no batch")
    return {key: np.concatenate(parts, axis=0) for key, parts in collected.items()}
