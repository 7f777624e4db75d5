"""Command-line flags derived from `ExperimentConfig`, so no default is written twice.

`define_config_flags` defines ``--config=PRESET`` and one flag per leaf setting,
named ``--section.field`` (``--model.variant``, ``--stage2.epochs``), typed after the
field, with the field's help text and default (the main job's). `config_from_flags`
starts from the chosen preset and applies only the flags given on the command line,
so a preset's own values are never overwritten by a flag's default; a flag that changes
a setting the run would not read (``--stage2.epochs=3`` for the baseline, which has no
stage 2) is refused.

Example (in a script run with absl.app):
>>> from absl import flags
>>> values = flags.FlagValues()
>>> define_config_flags(values)
>>> _ = values(["prog", "--config=paper", "--stage2.epochs=3"])
>>> config = config_from_flags(values)
>>> config.stage2.epochs, config.model.decoder
(3, 'paper')
"""

from __future__ import annotations

import typing

from absl import flags

from ofrnn_tf import configs
from ofrnn_tf.config.experiment import ExperimentConfig, fields

CONFIG_FLAG = "config"


def _flag_names(flag_values: flags.FlagValues) -> list[str]:
    return [name for name, _, _ in fields(ExperimentConfig()) if name in flag_values]


def define_config_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines ``--config`` and a ``--section.field`` flag for every setting."""
    flags.DEFINE_enum(CONFIG_FLAG, configs.DEFAULT_PRESET, list(configs.PRESETS),
                      "Named preset (ofrnn_tf/configs/<name>.py); flags below override it. "
                      "Their defaults are the main job's: the `benchmark` preset.",
                      flag_values=flag_values)
    hints = {}
    for name, field, default in fields(ExperimentConfig()):
        owner = type(getattr(ExperimentConfig(), name.split(".")[0]))
        if owner not in hints:
            hints[owner] = typing.get_type_hints(owner)
        kind = hints[owner][field.name]
        help_text = field.metadata["help"]
        choices = field.metadata.get("choices")
        if kind is bool:
            flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        elif choices:
            flags.DEFINE_enum(name, default, list(choices), help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)


def overrides_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, dict]:
    """The settings given on the command line, as ``{section: {field: value}}``."""
    given: dict[str, dict] = {}
    for name in _flag_names(flag_values):
        if flag_values[name].present:
            section, field = name.split(".")
            given.setdefault(section, {})[field] = flag_values[name].value
    return given


def with_flags(config: ExperimentConfig,
               flag_values: flags.FlagValues = flags.FLAGS) -> ExperimentConfig:
    """`config` with the settings given on the command line; ValueError for a given
    setting that changes one the resulting run never reads
    (`ExperimentConfig.unread_settings`), which would otherwise be ignored without a
    word. One given at the value it has anyway changes nothing and passes (so a
    ``--print_config`` listing reads back as a flag file, given with the same
    ``--config``)."""
    given = overrides_from_flags(flag_values)
    base = config.to_dict()
    config = config.replace(**given)
    unread = config.unread_settings()
    by_reason: dict[str, list[str]] = {}
    for section, values in given.items():
        for field, value in values.items():
            if f"{section}.{field}" in unread and value != base[section][field]:
                by_reason.setdefault(unread[f"{section}.{field}"], []).append(
                    f"--{section}.{field}")
    if by_reason:
        raise ValueError("; ".join(f"{', '.join(names)} would be ignored: {reason}"
                                   for reason, names in by_reason.items())
                         + ". Leave out what the run does not read")
    return config


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> ExperimentConfig:
    """The preset named by ``--config`` with the settings given on the command line."""
    return with_flags(configs.get_config(flag_values[CONFIG_FLAG].value), flag_values)


def describe(config: ExperimentConfig) -> str:
    """One ``--section.field=value`` line per setting (what ``--print_config`` shows)."""
    lines = []
    for name, _, value in fields(config):
        lines.append(f"--{name}={str(value).lower() if isinstance(value, bool) else value}")
    return "\n".join(lines)


