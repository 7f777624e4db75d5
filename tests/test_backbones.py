"""Frozen backbones: EfficientNet-Lite0 weights, feature layers, saving, offline errors."""

import dataclasses
import os
import re
import socket
import sys
import time

import keras
import matplotlib
import numpy as np
import pytest
import tensorflow as tf

from ofrnn_tf.config.experiment import FeaturesConfig
from ofrnn_tf.downloads import keras_cache_dir
from ofrnn_tf.features.backbones import (Backbone, BackboneWeightsUnavailableError,
                                         UnknownBackboneError, available_backbones,
                                         check_backbone, efficientnet_lite, get_backbone,
                                         keras_applications)
from ofrnn_tf.features.images import decode_and_resize

MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's photo of Grace Hopper


def _grace_hopper() -> tf.Tensor:
    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    return decode_and_resize(tf.io.read_file(path), efficientnet_lite.IMAGE_SIZE)


def test_efficientnet_lite0_classifies_a_real_photo():
    model = efficientnet_lite.build_efficientnet_lite0_classifier()
    logits = model(efficientnet_lite.preprocess(_grace_hopper()[None]), training=False)
    probs = tf.nn.softmax(logits).numpy()[0]
    assert int(np.argmax(probs)) == MILITARY_UNIFORM
    assert probs[MILITARY_UNIFORM] > 0.2  # confident, not a lucky argmax over noise


def test_efficientnet_lite0_default_features_match_the_classifier_trunk():
    backbone = get_backbone("efficientnet_lite0")
    assert backbone.feature_shape == (7, 7, 1280)
    assert backbone.feature_layer == "top_activation"
    assert backbone.image_size == 224
    image = _grace_hopper()[None]
    features = backbone(image)
    assert features.dtype == tf.float32 and features.shape == (1, 7, 7, 1280)
    # ReLU6 head: features in [0, 6]; the pooled features through the head give 652.
    assert float(tf.reduce_min(features)) >= 0.0 and float(tf.reduce_max(features)) <= 6.0
    classifier = efficientnet_lite.build_efficientnet_lite0_classifier()
    head = classifier.get_layer("predictions")
    logits = head(tf.reduce_mean(features, axis=[1, 2]))
    assert int(tf.argmax(logits[0])) == MILITARY_UNIFORM


@pytest.mark.parametrize("layer,shape", [("stage6", (7, 7, 192)), ("stage5", (14, 14, 112)),
                                         ("block3b_out", (28, 28, 40))])
def test_efficientnet_lite0_feature_layers(layer, shape):
    backbone = get_backbone("efficientnet_lite0", layer, weights=None)
    assert backbone.feature_shape == shape
    out = backbone(tf.zeros([2, 224, 224, 3], tf.uint8))
    assert out.shape == (2, *shape)


def test_unknown_layer_and_backbone_are_named():
    with pytest.raises(ValueError, match="no layer 'conv9'.*stage6"):
        get_backbone("efficientnet_lite0", "conv9", weights=None)
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'.*resnet152"):
        get_backbone("resnet9")


def test_a_layer_named_by_keras_count_is_refused_and_not_suggested():
    """Keras names a layer built without a name by a count per process (``activation_17``
    in one build, ``activation_35`` in the next): a run recording it could not find its
    layer in the export or a second build, so it is refused, and not offered."""
    from ofrnn_tf.features.backbones import _resolve_layer

    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Conv2D(4, 1, name="block1_conv")(inputs)
    unnamed = keras.layers.Activation("relu")(hidden)
    top = keras.layers.ReLU()(keras.layers.Conv2D(4, 1, name="block2_conv")(unnamed))
    model = keras.Model(inputs, top)
    numbered = [model.layers[2].name, model.layers[4].name]  # activation…, re_lu…
    assert _resolve_layer(model, "toy", "block2_conv", "block2_conv", {}) == "block2_conv"
    for name in numbered:
        with pytest.raises(UnknownBackboneError, match=rf"'{name}' is a name Keras numbers "
                                                       r"per process") as refused:
            _resolve_layer(model, "toy", name, "block2_conv", {})
        assert not any(n in str(refused.value).split("such as")[1] for n in numbered)


def test_check_backbone_refuses_in_the_flags_words_and_takes_any_real_layer():
    check_backbone("efficientnet_lite0", "stage5")  # a named layer: nothing is built
    check_backbone("efficientnet_lite0", "block3b_out")  # a Keras name: found in the model
    with pytest.raises(UnknownBackboneError, match=r"^--features.backbone=efficientnet_lite0, "
                                                   r"--features.layer=stage_5: .*no layer "
                                                   r"'stage_5'. Named choices: .*stage5"):
        check_backbone("efficientnet_lite0", "stage_5")
    with pytest.raises(UnknownBackboneError, match=r"--features.backbone=xception.*unknown "
                                                   r"backbone 'xception'; available: "):
        check_backbone("xception", "conv5")


def test_the_backbones_the_flag_help_and_the_module_name_are_those_there_are():
    import ofrnn_tf.features.backbones as backbones

    help_text = next(f for f in dataclasses.fields(FeaturesConfig)
                     if f.name == "backbone").metadata["help"]
    for name in available_backbones():
        assert name in help_text, name
        assert f"``{name}``" in backbones.__doc__, name


@pytest.mark.slow
def test_efficientnet_lite0_folded_batch_norm_computes_the_checkpoints_network():
    folded = efficientnet_lite.build_efficientnet_lite0_classifier()
    kept = efficientnet_lite.build_efficientnet_lite0_classifier(fold_batch_norm=False)
    names = {layer.name for layer in folded.layers}
    assert not any(name.endswith("_bn") for name in names)
    assert {"stem_bn", "block5c_project_bn", "top_bn"} <= {layer.name for layer in kept.layers}
    assert folded.get_layer("block5c_dwconv").use_bias
    photo = efficientnet_lite.preprocess(_grace_hopper()[None])
    noise = efficientnet_lite.preprocess(tf.constant(
        np.random.RandomState(2).randint(0, 256, (1, 224, 224, 3)), tf.uint8))
    images = tf.concat([photo, noise], axis=0)
    for layer in ("block5c_out", "top_activation", "predictions"):
        want = keras.Model(kept.input, kept.get_layer(layer).output)(images, training=False)
        got = keras.Model(folded.input, folded.get_layer(layer).output)(images, training=False)
        scale = float(tf.reduce_max(tf.abs(want)))
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=2e-5 * scale,
                                   err_msg=layer)


@pytest.mark.slow
def test_efficientnet_lite0_built_folded_is_the_checkpoint_layout_folded_afterwards():
    """Built without its batch norms, the model is what `fold_batch_norms` makes of the
    checkpoint's layout: the same layers and configurations, the same weights bit for
    bit; the feature layers cut from it where a cut keeps no convolution's raw output."""
    from ofrnn_tf.features.backbones.batch_norm_folding import fold_batch_norms

    built = efficientnet_lite.build_efficientnet_lite0()
    afterwards = fold_batch_norms(efficientnet_lite.build_efficientnet_lite0(
        fold_batch_norm=False))
    assert [layer.name for layer in built.layers] == [layer.name for layer in afterwards.layers]
    for ours, theirs in zip(built.layers, afterwards.layers):
        assert ours.get_config() == theirs.get_config(), ours.name
        assert len(ours.weights) == len(theirs.weights), ours.name
        for a, b in zip(ours.get_weights(), theirs.get_weights()):
            np.testing.assert_array_equal(a, b, err_msg=ours.name)
    assert [efficientnet_lite.folds_when_built(name) for name in (
        "top_activation", "block5c_out", "block5c_project_conv", "block5c_dwconv",
        "block5c_project_bn")] == [True, True, False, False, False]
    # Cut at a convolution, its own batch norm stays out; the ones before it are folded.
    cut = get_backbone("efficientnet_lite0", "block5c_project_conv").feature_model
    assert not cut.get_layer("block5c_project_conv").use_bias
    assert cut.get_layer("block5c_expand_conv").use_bias
    assert not [layer for layer in cut.layers
                if isinstance(layer, keras.layers.BatchNormalization)]


def test_efficientnet_lite0_preprocessing():
    x = tf.constant([[[[0, 127, 255]]]], tf.uint8)
    np.testing.assert_allclose(efficientnet_lite.preprocess(x).numpy().ravel(),
                               [-127 / 128, 0.0, 1.0])


def test_caffe_preprocessing_matches_keras():
    images = np.random.RandomState(0).randint(0, 256, (2, 8, 8, 3)).astype(np.float32)
    expected = keras.applications.resnet.preprocess_input(images.copy())
    got = keras_applications.SPECS["resnet152"].preprocess(tf.constant(images.astype(np.uint8)))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name, reference", [
    ("densenet121", keras.applications.densenet.preprocess_input),  # "torch" mode
    ("mobilenet_v2", keras.applications.mobilenet_v2.preprocess_input)],  # "tf" mode
    ids=["densenet121_torch_mode", "mobilenet_v2_tf_mode"])
def test_torch_and_tf_mode_preprocessing_match_keras(name, reference):
    images = np.random.RandomState(0).randint(0, 256, (2, 8, 8, 3)).astype(np.float32)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the range
    expected = reference(images.copy())
    got = keras_applications.SPECS[name].preprocess(tf.constant(images.astype(np.uint8)))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_backbone_inside_a_saved_module_reloads_with_the_same_features(tmp_path):
    backbone = get_backbone("efficientnet_lite0", "stage5", image_size=96)

    class Holder(tf.Module):
        def __init__(self, backbone: Backbone):
            super().__init__()
            self.backbone = backbone

        @tf.function(input_signature=[tf.TensorSpec([None, 96, 96, 3], tf.uint8)])
        def features(self, images):
            return self.backbone(images)

    images = tf.constant(np.random.RandomState(1).randint(0, 256, (2, 96, 96, 3)), tf.uint8)
    holder = Holder(backbone)
    before = holder.features(images).numpy()
    tf.saved_model.save(holder, str(tmp_path / "saved"))
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(reloaded.features(images).numpy(), before, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_mobilenet_v2_feature_layers_without_weights():
    backbone = get_backbone("mobilenet_v2", weights=None)
    assert backbone.feature_shape == (7, 7, 1280)
    assert get_backbone("mobilenet_v2", "stage14", weights=None).feature_shape == (14, 14, 576)


@pytest.mark.slow
def test_resnet152_feature_layers_without_weights():
    backbone = get_backbone("resnet152", weights=None)
    assert backbone.feature_layer == "conv5_block3_out"
    assert backbone.feature_shape == (7, 7, 2048)
    assert get_backbone("resnet152", "conv4", weights=None).feature_shape == (14, 14, 1024)


def _online(host: str = "storage.googleapis.com") -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def test_keras_applications_offline_fails_fast_and_clearly():
    cache = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "models")
    if os.path.isdir(cache) and any(f.startswith("mobilenet_v2") for f in os.listdir(cache)):
        pytest.skip("mobilenet_v2 ImageNet weights are cached here")
    if _online():
        pytest.skip("the weights host resolves: this machine is online")
    start = time.monotonic()
    with pytest.raises(BackboneWeightsUnavailableError) as info:
        get_backbone("mobilenet_v2")
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "mobilenet_v2" in message
    assert f"keras caches them in {keras_cache_dir('models')}, or copy there" in message
    assert "efficientnet_lite0" in message


def test_offline_the_error_names_the_flag_of_the_offline_backbone(monkeypatch):
    def fails_to_download(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.applications, "MobileNetV2", fails_to_download)
    with pytest.raises(BackboneWeightsUnavailableError,
                       match="use --features.backbone=efficientnet_lite0,"):
        get_backbone("mobilenet_v2")


def test_on_macos_a_certificate_failure_names_pythons_certificates_command(monkeypatch):
    # python.org's Python for macOS verifies no certificate until its command has run.
    def unverified(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")

    monkeypatch.setattr(keras.applications, "MobileNetV2", unverified)
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(BackboneWeightsUnavailableError) as info:
        get_backbone("mobilenet_v2")
    assert ("certificate verify failed; a Python installed from python.org verifies no "
            "certificate until its \"Install Certificates.command\" (in its folder under "
            "/Applications) has run)." in str(info.value))


def test_a_corrupt_cached_weights_file_is_named_with_its_remedy(tmp_path, monkeypatch):
    from keras.src.backend import config as keras_config

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))  # read at import
    weights = (tmp_path / "models" /
               "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
    weights.parent.mkdir()
    weights.write_bytes(b"<html>an interrupted download</html>")
    with pytest.raises(BackboneWeightsUnavailableError) as info:
        get_backbone("mobilenet_v2")
    message = str(info.value)
    assert f"could not read its cached ImageNet weights {weights} (" in message
    assert message.endswith("delete that file and rerun, and keras downloads it again")


def _private_keras_home(tmp_path, monkeypatch, file_name: str):
    """A damaged weights file under a `KERAS_HOME` of this test's own."""
    from keras.src.backend import config as keras_config

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))  # read at import
    weights = tmp_path / "models" / file_name
    weights.parent.mkdir()
    weights.write_bytes(b"\x89HDF\r\n\x1a\n a copy of another release")
    return weights


def test_a_cached_file_keras_rejects_and_removes_offline_is_said(tmp_path, monkeypatch):
    # keras checks the hash of the ResNet, VGG, DenseNet and EfficientNetB0 files: where a
    # file copied by hand differs, it downloads again and, offline, deletes the file.
    weights = _private_keras_home(tmp_path, monkeypatch,
                                  "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")

    def rejects_then_fails_to_download(**kwargs):
        weights.unlink()
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.applications, "ResNet50", rejects_then_fails_to_download)
    with pytest.raises(BackboneWeightsUnavailableError) as info:
        get_backbone("resnet50")
    message = str(info.value)
    assert (f"keras found {weights}, whose content is not the release it expects (its hash "
            f"differs), and removed it when the download failed.") in message, message
    assert "the very file keras downloads (the same name and bytes)" in message
    # The remedy is in the network or a file, not in the command's flags: no --help pointer.
    from ofrnn_tf.cli import InputFileError, refusal
    assert isinstance(refusal(info.value), InputFileError)


def test_offline_with_a_read_only_home_the_folder_keras_reads_is_named(tmp_path, monkeypatch):
    # keras caches in /tmp/.keras where the home folder is not writable, and never looks at a
    # copy put in ~/.keras/models.
    from ofrnn_tf import downloads

    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(downloads, "_tmp_keras_home", lambda: str(tmp_path / "tmp" / ".keras"))
    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        not os.fspath(path).startswith(str(tmp_path / "home")) and writable(path, mode, **kw)))
    copy = tmp_path / "home" / ".keras" / "models" / (
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"\x89HDF\r\n\x1a\n the release")

    def fails_to_download(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.applications, "ResNet50", fails_to_download)
    with pytest.raises(BackboneWeightsUnavailableError) as info:
        get_backbone("resnet50")
    used = tmp_path / "tmp" / ".keras" / "models"
    message = str(info.value)
    assert f" keras reads its cache only in {used}, where it may write, not {copy}. " in message
    assert f"keras caches them in {used}, or copy there by hand the very file" in message


def test_keras_removes_a_rejected_cached_file_offline_and_it_is_said(tmp_path, monkeypatch):
    if _online():
        pytest.skip("the weights host resolves: this machine is online")
    weights = _private_keras_home(tmp_path, monkeypatch,
                                  "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    with pytest.raises(BackboneWeightsUnavailableError,
                       match=f"keras found {re.escape(str(weights))}, whose content"):
        get_backbone("resnet50")
    assert not weights.exists()


def test_a_backbone_extracts_float32_under_a_sessions_mixed_policy():
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        backbone = get_backbone("efficientnet_lite0", "stage5", image_size=64, weights=None)
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert backbone.feature_model.compute_dtype == "float32"
    assert backbone(tf.zeros((1, 64, 64, 3), tf.uint8)).dtype == tf.float32
