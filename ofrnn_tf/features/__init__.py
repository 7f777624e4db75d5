"""Frozen CNN feature maps: image decoding, backbones, extraction into a TFRecord cache."""
