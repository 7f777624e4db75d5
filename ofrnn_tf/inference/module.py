"""`InferenceModule`: a finished run as one `tf.Module`, in process and in the SavedModel.

It holds the run's frozen backbone, its trained `OrderFreeRNN` (best weights) and the
decoding settings calibrated after training (τ for the beam width K, T_max,
``min_labels``, label names), and exposes one `tf.function` per input type:

- `serve_images`: encoded image bytes ``string [N]`` → decode, resize, backbone (its
  maps rounded to float16, as the feature cache that training and evaluation read holds
  them), beam search (the export's ``serving_default``);
- `serve_images_with_threshold`: the same with a threshold τ per image, ``float32
  [N]``, instead of the calibrated one (``predict_with_threshold``), to trade
  precision for recall. One value per image, not one per request, because TF
  Serving's batching merges requests along dimension 0 of every input;
- `serve_features`: feature maps ``float32 [N, H, W, k]`` → beam search
  (``predict_features``);
- `predict_pixels`: decoded ``uint8 [N, S, S, 3]`` images → the same outputs plus
  each chosen label's step probability (`Predictor`, in process);
- `in_process.image_features`: encoded images → the backbone's maps (what
  `serve_images` costs without the decoder; the serving benchmark's baseline).

The last two run in process only and are not written into the SavedModel.

`predict.py`, `export.py`, the serving benchmark and the tests all build it with
`InferenceModule.from_run`, so they decode with the same model, backbone and settings.
What the SavedModel records is what its graph uses: τ, the weight of M_map's scores
in the ranking scores, the label names and the image-size limit are variables the
graph reads; K, T_max and ``min_labels`` shape the graph and are returned, as the
constants built into it, by `decoding_settings`.

The module tracks the underlying ``tf.Variable`` of every Keras weight itself, not
the Keras objects: TensorFlow Serving loads a SavedModel through the session-based
loader, which restores only variables tracked that way (docs/serving.md).
"""

from __future__ import annotations

import functools
from typing import Optional

import tensorflow as tf

from ofrnn_tf.decoding.beam_search import (
    BeamSizeError, beam_search, check_beam_size, check_score_mix)
from ofrnn_tf.features.image_guards import DEFAULT_MAX_IMAGE_PIXELS, decode_images
from ofrnn_tf.features.backbones import Backbone, get_backbone
from ofrnn_tf.features.shard_meta import FEATURE_DTYPE
from ofrnn_tf.features.tfrecords import as_stored
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.run_dir import RunDir, train_command
from ofrnn_tf.training.run_state import UnfinishedRunError, training_state


class UncalibratedBeamSizeError(ValueError):
    """τ was not chosen on validation for the requested beam width."""


class MinLabelsError(ValueError):
    """More labels asked of every image than a prediction can hold."""


class _KerasParts:
    """Holds the Keras objects out of `tf.Module` tracking (see the module docstring)."""

    def __init__(self, model, backbone: Backbone):
        self.model = model
        self.backbone = backbone


class _InProcessFunctions:
    """The module's graph functions that serve no signature, out of `tf.Module` tracking:
    `tf.saved_model.save` traces and writes every tracked function that has an input
    signature, which for these cost a fifth of an export's time for nothing a served or
    loaded SavedModel is called with."""

    def __init__(self, predict_pixels, image_features):
        self.predict_pixels = predict_pixels
        self.image_features = image_features


def _check_model_reads_maps_of(model, backbone: Backbone) -> None:
    """Refuses a (built) model over other `(m, k)` maps than the backbone's `H·W, k`, which
    would otherwise fail at its first image, deep in the standardizer or the head."""
    built = (model.get_build_config() or {}).get("input_shape")
    if built is None:
        return
    built = tuple(built)[-2:]
    height, width, depth = backbone.feature_shape
    wanted = (height * width, depth)
    if any(size is not None and size != want for size, want in zip(built, wanted)):
        raise ValueError(f"the model is built over (m, k) = {built} maps but backbone "
                         f"{backbone.name!r} gives {height}x{width}x{depth} maps, (m, k) = "
                         f"{wanted}: pass the backbone its features were extracted with")


# Where a module's τ comes from (`InferenceModule.tau_source`).
TAU_CALIBRATED = "chosen on validation"
TAU_GIVEN = "given, not the one chosen on validation"


class InferenceModule(tf.Module):
    """Backbone + decoder + calibrated settings (see the module docstring).

    Args:
        model: a trained, built `OrderFreeRNN` over `[H·W, k]` maps of `backbone`.
        backbone: the frozen `Backbone` the run's features were extracted with.
        label_map: a `LabelMap`, or the class names in label-id order (only their number
            can be checked against the model, which does not hold names: `from_run`
            reads the run's).
        tau: the threshold τ on the path probability (on v_prob for `baseline`).
        score_mix: the weight of M_map's v_prob in the ranking scores (chosen on
            validation with τ; `ofrnn_tf.decoding.beam_search.mix_scores`).
        beam_size: K (1 = greedy).
        max_steps: T_max.
        min_labels: labels every image gets at least.
        max_image_pixels: width × height above which an image is refused unread.
        jit_compile: XLA-compile the decoder (TF Serving runs XLA only with an
            experimental flag: docs/serving.md).
        unroll: write the T_max decoding steps out rather than loop over them
            (`beam_search`); the same results, less graph overhead per request.
    """

    # Where `tau` comes from: `from_run` sets TAU_CALIBRATED where calibration.json gave it.
    tau_source = TAU_GIVEN

    def __init__(self, model, backbone: Backbone, label_map: LabelMap, *, tau: float,
                 beam_size: int, max_steps: int, min_labels: int = 1, score_mix: float = 0.0,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, jit_compile: bool = False,
                 unroll: bool = True):
        super().__init__(name="ofrnn")
        if int(max_image_pixels) < 1:
            raise ValueError(f"max_image_pixels must be at least 1, got {max_image_pixels}")
        if isinstance(label_map, str):
            raise TypeError(f"label_map must be a LabelMap or a list of class names; got the "
                            f"single str {label_map!r}")
        if not isinstance(label_map, LabelMap):
            label_map = LabelMap(label_map)
        if label_map.num_classes != model.num_classes:
            raise ValueError(f"label map has {label_map.num_classes} classes but the model "
                             f"{model.num_classes}")
        if not model.built:  # its standardizer and weights would be made while tracing
            raise ValueError("the model is not built: call it on a batch of features, or "
                             "`model.build((None, H·W, k))`, before restoring its weights")
        _check_model_reads_maps_of(model, backbone)
        self._keras = _KerasParts(model, backbone)
        self.weights = [v.value for v in backbone.feature_model.weights + model.weights]
        self.label_map = label_map
        if not 0.0 <= float(tau) <= 1.0:  # NaN too: the graph would compare log τ = NaN
            raise ValueError(f"tau is a path probability and must be in [0, 1]; got {tau}")
        self.tau = tf.Variable(float(tau), trainable=False, name="tau")
        self.score_mix = tf.Variable(check_score_mix(float(score_mix)), trainable=False,
                                     name="score_mix")
        self.label_names = tf.Variable(list(label_map.names), trainable=False, name="label_names")
        self.max_image_pixels = tf.Variable(int(max_image_pixels), dtype=tf.int64,
                                            trainable=False, name="max_image_pixels")
        most = int(max_steps) if model.uses_decoder else label_map.num_classes
        if not 0 <= int(min_labels) <= most:
            raise MinLabelsError(
                f"min_labels={min_labels} cannot hold: a prediction holds 0 to {most} labels ("
                + ("T_max, the largest label count of a training image)" if model.uses_decoder
                   else "the classes)"))
        check_beam_size(model, int(beam_size), int(max_steps))
        self.beam_size, self.max_steps, self.min_labels = int(beam_size), int(max_steps), int(min_labels)
        self.unroll = bool(unroll)
        self.feature_shape = tuple(int(d) for d in backbone.feature_shape)
        self.image_size = int(backbone.image_size)
        self.has_attention = model.variant not in ("baseline", "no_attention")
        height, width, depth = self.feature_shape
        size = self.image_size
        images = tf.TensorSpec([None], tf.string, name="images")
        # No autograph: the graph code has no Python control flow over tensors, and
        # converting its source took a quarter of an export's time.
        function = functools.partial(tf.function, autograph=False)
        self._decode = function(self._decode_features, jit_compile=jit_compile)
        self.serve_images = function(self._serve_images, input_signature=[images])
        self.serve_images_with_threshold = function(
            self._serve_images_with_threshold,
            input_signature=[images, tf.TensorSpec([None], tf.float32, name="threshold")])
        self.serve_features = function(
            self._serve_features,
            input_signature=[tf.TensorSpec([None, height, width, depth], tf.float32, name="features")])
        self.decoding_settings = function(self._decoding_settings, input_signature=[])
        self.in_process = _InProcessFunctions(
            predict_pixels=function(
                self._predict_pixels,
                input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="pixels")]),
            image_features=function(self._image_features, input_signature=[images]))

    @property
    def model(self):
        return self._keras.model

    @property
    def backbone(self) -> Backbone:
        return self._keras.backbone

    # -- construction from a run ------------------------------------------------------
    @classmethod
    def from_run(cls, run_dir: RunDir | str, *, beam_size: Optional[int] = None,
                 tau: Optional[float] = None, min_labels: Optional[int] = None,
                 score_mix: Optional[float] = None, backbone: Optional[Backbone] = None,
                 **kwargs) -> "InferenceModule":
        """The module of a finished run (best weights, its backbone, calibrated τ).

        τ, the score mix and the fewest labels are the ones calibrated on validation for
        the beam width K (the run's own K by default); a K that was never calibrated is
        refused unless `tau` is given. A `baseline` run has no beam: its K is its own
        whatever `beam_size` says. T_max is the run's. `backbone` may pass an already
        built backbone of the run. Other keyword arguments (`max_image_pixels`,
        `jit_compile`, `unroll`) go to the constructor. A run folder that a training or
        evaluation holds is refused (`RunInUseError`).
        """
        run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        run_dir.check_not_in_use()  # a training rewrites the weights and τ read here
        model, config, facts = run_dir.load_model()
        own_width = beam_size is None or not model.uses_decoder
        if own_width:  # M_map alone: no beam to widen
            beam_size = config.decoding.beam_size
        beam_size = int(beam_size)
        try:
            check_beam_size(model, beam_size, facts.max_steps)  # before asking for its τ
        except BeamSizeError as error:
            if not own_width:
                raise
            raise BeamSizeError(f"{error} (the run's own decoding.beam_size, in "
                                f"{run_dir.run_file}: give a narrower one)",
                                given=False) from None
        calibration = run_dir.calibration(beam_size)
        calibrated = tau is None
        if tau is None:
            if calibration is None:
                known = run_dir.calibrated_beam_sizes()
                if not known:  # perhaps never trained through: eval would refuse it too
                    try:
                        training_state(run_dir, config)
                    except UnfinishedRunError as error:
                        raise UncalibratedBeamSizeError(str(error)) from None
                    except (tf.errors.OpError, OSError, ValueError, KeyError):
                        pass  # checkpoints that say nothing of it: the remedy below
                calibrate = train_command(run_dir.path, "--mode=eval",
                                          f"--decoding.beam_size={beam_size}")
                raise UncalibratedBeamSizeError(
                    f"{run_dir.calibration_file} has no τ for beam width K={beam_size} "
                    f"(calibrated: {known or 'none'}). Calibrate it on validation with "
                    f"`{calibrate}`.")
            tau = float(calibration["tau"])
        from_file = min_labels is None and calibration is not None and "min_labels" in calibration
        if min_labels is None:
            min_labels = calibration["min_labels"] if from_file else config.decoding.min_labels
        if score_mix is None:
            score_mix = float(calibration.get("score_mix", 0.0)) if calibration else 0.0
        if backbone is None:
            backbone = get_backbone(config.features.backbone, facts.feature_layer,
                                    image_size=facts.image_size)
        if tuple(backbone.feature_shape) != tuple(facts.feature_shape):
            raise ValueError(f"backbone {backbone!r} gives {backbone.feature_shape} maps but the "
                             f"run {run_dir.path} was trained on {facts.feature_shape} "
                             f"({config.features.backbone} at {facts.feature_layer})")
        try:
            module = cls(model, backbone, run_dir.label_map(), tau=tau, beam_size=beam_size,
                         max_steps=facts.max_steps, min_labels=min_labels,
                         score_mix=score_mix, **kwargs)
        except MinLabelsError as error:
            if not from_file:
                raise
            # Calibration records the run's own --decoding.min_labels, which training
            # checks against T_max: a count that cannot hold was edited into the file.
            raise run_dir.damaged_calibration(f"K={beam_size}'s {error}") from None
        if calibrated:
            module.tau_source = TAU_CALIBRATED
        return module

    def decision_rule(self) -> str:
        """How the labels of an image are chosen, in a few words: the rule, τ and where τ
        comes from (`tau_source`), as `ofrnn-predict` and `ofrnn-export` say it."""
        tau = f"τ={float(self.tau.numpy()):.4g} ({self.tau_source})"
        at_least = f", and at least {self.min_labels} whatever τ" if self.min_labels else ""
        if not self.model.uses_decoder:
            return f"M_map alone: the classes of score at least {tau} are the labels{at_least}"
        return (f"beam search of width K={self.beam_size}: labels are added while the path's "
                f"probability stays at least {tau}{at_least}")

    def maps_of(self, pixels) -> tf.Tensor:
        """The maps `serve_images` computes from decoded uint8 `[N, S, S, 3]` `pixels`, as
        ``predict_features`` takes them (run eagerly: the export's warm-up wants them once,
        and tracing a function for it would cost more than the run)."""
        return self._maps(tf.convert_to_tensor(pixels, tf.uint8))

    def predict_pixels(self, pixels) -> dict:
        """Decoded uint8 `[N, S, S, 3]` images → the outputs of `serve_images` plus each
        chosen label's step probability (in process; not in the SavedModel)."""
        return self.in_process.predict_pixels(pixels)

    # -- graph functions --------------------------------------------------------------
    def _decode_features(self, flat_features, threshold, step_probabilities=False):
        return beam_search(self.model, flat_features, beam_size=self.beam_size,
                           max_steps=self.max_steps, threshold=threshold,
                           min_labels=self.min_labels, score_mix=self.score_mix.read_value(),
                           unroll=self.unroll, step_probabilities=step_probabilities)

    def _outputs(self, features, threshold, step_probabilities: bool = False) -> dict:
        height, width, depth = self.feature_shape
        flat = tf.reshape(features, [-1, height * width, depth])
        out = self._decode(flat, threshold, step_probabilities)
        labels = out["labels"]
        names = tf.where(labels >= 0, tf.gather(self.label_names, tf.maximum(labels, 0)), "")
        attention = tf.reshape(out["attention"], [-1, self.max_steps, height, width])
        outputs = {"labels": labels, "label_names": names, "num_labels": out["num_labels"],
                   "scores": out["scores"], "log_prob": out["log_prob"], "attention": attention}
        if step_probabilities:
            outputs["step_probabilities"] = out["step_probabilities"]
        return outputs

    def _pixels(self, images):
        """The guards of `ofrnn_tf.features.image_guards`, then the pixels extraction saw."""
        return decode_images(images, self.image_size, self.max_image_pixels)

    def _maps(self, pixels):
        """The backbone's maps of `pixels` as the feature cache holds them, rounded to
        float16: the model is trained and evaluated on those, and a served image gets the
        labels its evaluation counted (in float32 a score can fall on the other side of
        τ)."""
        return as_stored(self.backbone(pixels))

    def _image_features(self, images):
        """The backbone's maps of encoded images (the first half of `serve_images`)."""
        return {"features": self._maps(self._pixels(images))}

    # TF Serving feeds a request's tensors as they come, whatever shape the signature
    # declares: each signature checks the shapes of its inputs first (`_shaped`).
    def _serve_images(self, images):
        images = _shaped(images, [None])
        return self._outputs(self._maps(self._pixels(images)), self.tau.read_value())

    def _serve_images_with_threshold(self, images, threshold):
        images = _shaped(images, [None])
        threshold = _shaped(threshold, [None])
        threshold = _checked_thresholds(threshold, tf.size(images))
        # [N, 1]: each image's τ against its steps' path probabilities.
        return self._outputs(self._maps(self._pixels(images)), threshold[:, None])

    def _serve_features(self, features):
        features = _shaped(features, [None, *self.feature_shape])
        return self._outputs(_checked_features(features), self.tau.read_value())

    def _predict_pixels(self, pixels):
        return self._outputs(self._maps(pixels), self.tau.read_value(),
                             step_probabilities=True)

    def _decoding_settings(self):
        return {"tau": self.tau.read_value(), "score_mix": self.score_mix.read_value(),
                "beam_size": tf.constant(self.beam_size),
                "max_steps": tf.constant(self.max_steps),
                "min_labels": tf.constant(self.min_labels),
                "max_image_pixels": self.max_image_pixels.read_value(),
                "label_names": self.label_names.read_value()}


def _shaped(tensor: tf.Tensor, shape: list) -> tf.Tensor:
    """`tensor` once its runtime shape fits `shape` (None: any size); else
    InvalidArgumentError ("Shape of tensor <input> [...] is not compatible with expected
    shape [...]"): features in another layout, say NCHW, would otherwise be reshaped
    into wrong labels. On the data path, so nothing downstream runs first."""
    return tf.ensure_shape(tensor, shape)


def _first(mask: tf.Tensor) -> tf.Tensor:
    """The index of the first true entry of a bool vector, or its length if none is."""
    return tf.argmax(tf.concat([tf.cast(mask, tf.int32), [1]], 0), output_type=tf.int32)


def _checked_features(features: tf.Tensor) -> tf.Tensor:
    """`features` once every value is one the feature cache could hold (finite, within
    float16's ±65504: `predict_features` reads the cache's maps); else
    InvalidArgumentError naming the first image that holds another as ``features[i]``.
    The beam search would decode a NaN or Inf to no labels at all, silently, and a finite
    value near float32's limit overflows to the same."""
    largest = float(tf.as_dtype(FEATURE_DTYPE).max)
    flat = tf.reshape(features, [tf.shape(features)[0], -1])
    held = tf.reduce_all(tf.abs(flat) <= largest, axis=1)  # NaN compares false
    # Worded without an apostrophe: Assert prints its string data escaped, one as \'.
    check = tf.debugging.Assert(tf.reduce_all(held), [tf.strings.format(
        f"features[{{}}] contains NaN or Inf, or a value beyond ±{largest:g}, the range of "
        f"the float16 feature cache", _first(tf.logical_not(held)))])
    with tf.control_dependencies([check]):
        return tf.identity(features)


def _checked_thresholds(threshold: tf.Tensor, batch_size: tf.Tensor) -> tf.Tensor:
    """`threshold` once it holds one probability per image; else InvalidArgumentError
    naming the first bad entry as ``threshold[i]``."""
    count = tf.size(threshold)
    same_size = tf.debugging.Assert(tf.equal(count, batch_size), [tf.strings.format(
        "threshold has {} values for {} images: give one τ per image", (count, batch_size))])
    bad = tf.logical_not((threshold >= 0.0) & (threshold <= 1.0))  # NaN is bad too
    first = _first(bad)
    in_range = tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [tf.strings.format(
        "threshold[{}] must be a probability in [0, 1]; got {}",
        (first, tf.gather(tf.concat([threshold, [0.0]], 0), first)))])
    with tf.control_dependencies([same_size, in_range]):
        return tf.identity(threshold)
