"""Per-channel standardisation of the frozen CNN's feature maps."""

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="ofrnn_tf")
class FeatureStandardizer(keras.layers.Layer):
    """`(v_i − mean) / std` for every channel, with the training set's statistics.

    Frozen-CNN channels differ widely in scale (EfficientNet-Lite0 stage-5 maps have
    per-channel means of ±7 and a spread of about 4.5), which slows the training of
    the layers that read them; fixed statistics fix that without a trainable norm.
    `adapt` sets them once, before training; they are weights, so checkpoints and
    exports carry them.

    Args:
        depth: k, the number of channels.

    Call args:
        features: `[B, m, k]`.

    Example:
    >>> layer = FeatureStandardizer(depth=3)
    >>> layer.adapt([tf.constant([[[1.0, 2.0, 3.0], [3.0, 2.0, 5.0]]])])
    >>> layer(tf.constant([[[2.0, 2.0, 4.0]]])).numpy().tolist()
    [[[0.0, 0.0, 0.0]]]
    """

    def __init__(self, depth: int, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.depth = depth
        self.epsilon = epsilon
        self.mean = self.add_weight(shape=(depth,), initializer="zeros", trainable=False,
                                    name="mean")
        self.std = self.add_weight(shape=(depth,), initializer="ones", trainable=False, name="std")
        self.adapted = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                       name="adapted")

    @property
    def is_adapted(self) -> bool:
        return bool(self.adapted.numpy())

    def adapt(self, batches) -> None:
        """Sets mean and std from an iterable of `[B, m, k]` feature batches (one pass).

        A batch that holds a NaN or an Inf is refused: it would make its channel's
        statistics NaN, and with them every image's standardised features."""
        total = np.zeros(self.depth, np.float64)
        squares = np.zeros(self.depth, np.float64)
        count = 0
        for index, batch in enumerate(batches):
            values = self._channels_of(batch, index)
            batch_squares = np.square(values).sum(0)  # NaN or inf where a value is not finite
            if not np.isfinite(batch_squares).all():
                channel = int(np.flatnonzero(~np.isfinite(batch_squares))[0])
                raise ValueError(f"batch {index} holds NaN or Inf (channel {channel}), which "
                                 f"would make the statistics NaN: leave out the features that "
                                 f"hold it")
            total += values.sum(0)
            squares += batch_squares
            count += values.shape[0]
        if not count:
            raise ValueError("no features to compute the statistics from")
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0)) + self.epsilon
        self.mean.assign(mean.astype(np.float32))
        self.std.assign(std.astype(np.float32))
        self.adapted.assign(1.0)

    def _channels_of(self, batch, index: int) -> np.ndarray:
        """`batch` as `[values, k]`, refused when it is not a batch of features of k channels
        (a `(features, labels)` pair, as `model.fit` takes, or maps of another backbone)."""
        if isinstance(batch, (tuple, dict)):
            # The project's own batches are dicts; `model.fit`'s are pairs.
            keep = ('lambda batch: batch["features"]' if isinstance(batch, dict)
                    else "lambda features, labels: features")
            raise TypeError(f"adapt takes batches of features only; batch {index} is a "
                            f"{type(batch).__name__} (features and labels?): pass "
                            f"ds.map({keep})")
        values = np.asarray(batch, np.float64)
        if values.ndim == 0 or values.shape[-1] != self.depth:
            channels = values.shape[-1] if values.ndim else "no"
            raise ValueError(f"batch {index} has {channels} channels (shape {values.shape}), "
                             f"the layer {self.depth}: adapt it with features of the maps "
                             f"it reads")
        return values.reshape(-1, self.depth)

    def call(self, features):
        dtype = features.dtype
        return (features - tf.cast(self.mean, dtype)) / tf.cast(self.std, dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"depth": self.depth, "epsilon": self.epsilon})
        return config
