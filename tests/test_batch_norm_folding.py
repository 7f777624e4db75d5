"""Folding batch norms into convolutions: same function, fewer layers, only where valid."""

import keras
import numpy as np
import pytest

from ofrnn_tf.features.backbones import get_backbone
from ofrnn_tf.features.backbones.batch_norm_folding import (fold_batch_norms,
                                                            foldable_batch_norms)


def _batch_norms(model: keras.Model) -> list[str]:
    return [l.name for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]


def _randomise_batch_norms(model: keras.Model, seed: int = 0) -> None:
    """Statistics far from the initial (0, 1) and non-zero conv biases, so a fold that
    ignores one of them fails."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            layer.bias.assign(rng.uniform(-0.5, 0.5, layer.bias.shape).astype(np.float32))
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        for variable, (low, high) in ((layer.gamma, (0.5, 1.5)), (layer.beta, (-0.5, 0.5)),
                                      (layer.moving_mean, (-0.5, 0.5)),
                                      (layer.moving_variance, (0.3, 3.0))):
            if variable is not None:
                variable.assign(rng.uniform(low, high, variable.shape).astype(np.float32))


def _assert_same_function(a: keras.Model, b: keras.Model, size: int, seed: int = 1) -> None:
    x = np.random.default_rng(seed).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    want = np.asarray(a(x, training=False))
    got = np.asarray(b(x, training=False))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


def _small_net() -> keras.Model:
    """Every case in one graph: conv with and without bias, depthwise with a depth
    multiplier, BN without scale or centre, and three BNs that must stay (after a
    pooling, after a conv with its own activation, after a conv read twice)."""
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=True, name="biased")(inputs)
    x = keras.layers.BatchNormalization(name="biased_bn")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False,
                                     name="depthwise")(x)
    x = keras.layers.BatchNormalization(scale=False, name="depthwise_bn")(x)
    x = keras.layers.Conv2D(6, 1, use_bias=False, name="plain")(x)
    x = keras.layers.BatchNormalization(center=False, name="plain_bn")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.BatchNormalization(name="pool_bn")(x)
    x = keras.layers.Conv2D(6, 1, activation="relu", name="activated")(x)
    x = keras.layers.BatchNormalization(name="activated_bn")(x)
    shared = keras.layers.Conv2D(6, 1, name="shared")(x)
    y = keras.layers.BatchNormalization(name="shared_bn")(shared)
    x = keras.layers.Add(name="add")([y, shared])
    return keras.Model(inputs, x)


def test_fold_keeps_the_function_and_folds_only_what_it_may():
    model = _small_net()
    _randomise_batch_norms(model)
    assert sorted(foldable_batch_norms(model)) == ["biased", "depthwise", "plain"]
    folded = fold_batch_norms(model)
    assert _batch_norms(folded) == ["pool_bn", "activated_bn", "shared_bn"]
    assert folded.get_layer("plain").use_bias and folded.get_layer("depthwise").use_bias
    _assert_same_function(model, folded, 16)
    # the original is untouched
    assert "plain_bn" in _batch_norms(model) and not model.get_layer("plain").use_bias


def test_a_model_with_nothing_to_fold_comes_back_as_is():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    assert fold_batch_norms(model) is model


@pytest.mark.parametrize("cut_at,bias", [("plain", False), ("plain_bn", True)])
def test_a_cut_model_folds_within_the_cut(cut_at, bias):
    model = _small_net()
    _randomise_batch_norms(model)
    cut = keras.Model(model.input, model.get_layer(cut_at).output)
    folded = fold_batch_norms(cut)
    # cut at the convolution, its batch norm is not in the model; cut at the batch
    # norm, the folded convolution gives the model's output
    assert folded.get_layer("plain").use_bias is bias
    assert "plain_bn" not in _batch_norms(folded)
    _assert_same_function(cut, folded, 16)


@pytest.mark.slow
@pytest.mark.parametrize("constructor,left", [("MobileNetV2", 0), ("ResNet50", 0),
                                              ("EfficientNetB0", 0), ("DenseNet121", 62)])
def test_keras_applications_fold_to_the_same_features(constructor, left):
    model = getattr(keras.applications, constructor)(include_top=False, weights=None,
                                                     input_shape=(64, 64, 3))
    _randomise_batch_norms(model)
    folded = fold_batch_norms(model)
    # DenseNet normalises before each convolution (after pooling and concatenation),
    # so only the batch norms that follow a convolution fold
    assert len(_batch_norms(folded)) == left
    _assert_same_function(model, folded, 64)


def test_get_backbone_folds_keras_applications_backbones():
    backbone = get_backbone("mobilenet_v2", "top", image_size=96, weights=None)
    assert _batch_norms(backbone.feature_model) == []
    assert backbone.feature_shape == (3, 3, 1280)
