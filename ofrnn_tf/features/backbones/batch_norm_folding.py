"""Folding a frozen backbone's batch norms into the convolutions before them.

At inference a batch norm is a per-channel affine map,
``y = γ (x − μ)/√(σ² + ε) + β``. When ``x`` is a convolution's output used by nothing
else, the map can be moved into the convolution: its kernel times ``s = γ/√(σ² + ε)``
along the output channel, its bias ``(b − μ) s + β``. Keras 3 runs each batch norm as
separate multiply and add ops over the whole activation, which keeps grappler from
fusing the convolution with its bias and activation into one oneDNN kernel. Folded,
EfficientNet-Lite0 runs 1.7× (to stage 5) to 2.4× (to the top) and ResNet-152 2.3× as
fast on the CPU, with the same outputs up to float32 round-off
(`benchmarks/bench_extraction.py`).

`fold_batch_norms` rewrites any functional Keras model that way (the
``keras.applications`` backbones); EfficientNet-Lite0 is built folded from its
checkpoint by the same `folded_weights`. Batch norms it cannot fold (after a pooling or a
concatenation, as in DenseNet, or on a convolution whose output is also used elsewhere)
stay as they are.

Example:
>>> model = keras.applications.MobileNetV2(include_top=False, weights=None)
>>> folded = fold_batch_norms(model)
>>> [l for l in folded.layers if isinstance(l, keras.layers.BatchNormalization)]
[]
"""

from __future__ import annotations

import keras
import numpy as np

__all__ = ["fold_batch_norms", "foldable_batch_norms", "folded_conv_weights", "folded_weights"]

_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _consumers(model: keras.Model, tensor) -> int:
    """How many calls of the model's layers take `tensor` as an input, plus one if it is
    an output of the model."""
    count = sum(any(t is tensor for t in node.input_tensors)
                for layer in model.layers for node in layer._inbound_nodes)
    return count + sum(t is tensor for t in model.outputs)


def foldable_batch_norms(model: keras.Model) -> dict[str, keras.layers.BatchNormalization]:
    """``{conv layer name: its batch norm}`` for each batch norm of `model` that can be
    folded: over the channel axis, right after a linear channels-last ``Conv2D`` or
    ``DepthwiseConv2D`` called once, whose output nothing else reads."""
    pairs = {}
    for bn in model.layers:
        if not isinstance(bn, keras.layers.BatchNormalization) or len(bn._inbound_nodes) != 1:
            continue
        if bn.axis not in (-1, len(bn.input.shape) - 1):
            continue
        parents = bn._inbound_nodes[0].parent_nodes
        conv = parents[0].operation if len(parents) == 1 else None
        if (isinstance(conv, _CONVS) and len(conv._inbound_nodes) == 1
                and conv.data_format == "channels_last"
                and conv.activation is keras.activations.linear
                and _consumers(model, conv.output) == 1):
            pairs[conv.name] = bn
    return pairs


def folded_conv_weights(conv: keras.layers.Layer, bn: keras.layers.BatchNormalization
                        ) -> list[np.ndarray]:
    """``[kernel · s, (b − μ) s + β]`` for a convolution followed by `bn`
    (`folded_weights`)."""
    def values(variable, default: float) -> np.ndarray:
        if variable is None:
            return np.full(bn.moving_mean.shape, default)
        return np.asarray(variable, np.float64)

    return folded_weights(
        np.asarray(conv.kernel, np.float64),
        np.asarray(conv.bias, np.float64) if conv.use_bias else None,
        values(bn.gamma, 1.0), values(bn.beta, 0.0), values(bn.moving_mean, 0.0),
        values(bn.moving_variance, 1.0), bn.epsilon,
        depthwise=isinstance(conv, keras.layers.DepthwiseConv2D))


def folded_weights(kernel: np.ndarray, bias: np.ndarray | None, gamma: np.ndarray,
                   beta: np.ndarray, mean: np.ndarray, variance: np.ndarray, epsilon: float,
                   depthwise: bool = False) -> list[np.ndarray]:
    """``[kernel · s, (b − μ) s + β]`` as float32, computed in float64, with
    ``s = γ/√(σ² + ε)`` per output channel: the last axis of a Conv2D kernel; of a
    depthwise kernel ``[h, w, C, m]``, channel ``c·m + j``. `bias` None: no bias."""
    scale = gamma / np.sqrt(variance + epsilon)
    folded_bias = beta - mean * scale
    if bias is not None:
        folded_bias = folded_bias + bias * scale
    if depthwise:
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    return [kernel.astype(np.float32), folded_bias.astype(np.float32)]


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """A copy of the functional `model` with every foldable batch norm folded.

    Each folded convolution gets a bias (`folded_conv_weights`) and its batch norm is
    gone from the graph; every other layer keeps its name, configuration and weights.
    The copy is for inference: training it would no longer normalise by batch
    statistics. A model with nothing to fold comes back unchanged (not copied).
    """
    pairs = foldable_batch_norms(model)
    if not pairs:
        return model
    folded_norms = {bn.name for bn in pairs.values()}

    def clone(layer):
        if layer.name in folded_norms:
            return lambda x, *args, **kwargs: x
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer.name in folded_norms:
            continue
        target = copy.get_layer(layer.name)
        if layer.name in pairs:
            target.set_weights(folded_conv_weights(layer, pairs[layer.name]))
        elif layer.weights:
            target.set_weights(layer.get_weights())
    return copy
