"""Named experiment presets: one module per preset, each with `get_config()`.

Each preset's docstring says the command that runs it, how long it takes on 2 CPU
cores and the result it should reach. Select one with ``--config=NAME`` on
``ofrnn-train`` (``train.py``) or ``ofrnn-extract``; ``--section.field=value`` flags then
override single settings. The other commands read a run's own settings.
"""

from __future__ import annotations

import importlib

from ofrnn_tf.config.experiment import ExperimentConfig

PRESETS = ("benchmark", "benchmark_scenes", "paper", "coco", "nuswide", "manifest")
DEFAULT_PRESET = "benchmark"


def get_config(name: str = DEFAULT_PRESET) -> ExperimentConfig:
    """The `ExperimentConfig` of preset `name` (see `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {list(PRESETS)}")
    return importlib.import_module(f"ofrnn_tf.configs.{name}").get_config()
