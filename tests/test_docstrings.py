"""The examples in the package's docstrings run and print what they show."""

import doctest
import importlib

import numpy as np
import pytest
import tensorflow as tf

MODULES = [
    "ofrnn_tf.config.experiment", "ofrnn_tf.config.flags", "ofrnn_tf.metrics",
    "ofrnn_tf.decoding.beam_search", "ofrnn_tf.features.backbones",
    "ofrnn_tf.features.backbones.batch_norm_folding",
    "ofrnn_tf.modeling.model", "ofrnn_tf.modeling.layers.label_map_head",
    "ofrnn_tf.modeling.layers.label_context",
    "ofrnn_tf.modeling.layers.visual_attention",
    "ofrnn_tf.modeling.layers.confidence_ranked_cell",
    "ofrnn_tf.modeling.layers.feature_standardizer", "ofrnn_tf.modeling.layers.spatial_label_head",
    "ofrnn_tf.modeling.layers.residual_decoder_cell",
]


def test_every_module_with_an_example_is_listed():
    import pkgutil

    import ofrnn_tf

    with_examples = set()
    for info in pkgutil.walk_packages(ofrnn_tf.__path__, "ofrnn_tf."):
        if info.name.startswith("ofrnn_tf.cli."):
            continue  # command modules: usage text only
        module = importlib.import_module(info.name)
        finder = doctest.DocTestFinder()
        if any(test.examples for test in finder.find(module)):
            with_examples.add(info.name)
    assert with_examples == set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs={"tf": tf, "np": np}, verbose=False,
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} failing example(s) in {name}"
