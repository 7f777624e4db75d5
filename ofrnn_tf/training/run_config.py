"""The configuration of a training run, saved in its work directory.

Rerunning in the same work directory resumes; it must describe the same model and
data. Fields in `RESUMABLE_FIELDS` may change between runs (another logging
interval, more epochs for a run that has not finished that stage yet); any other
difference is refused with an error naming it. A finished stage is not reopened.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

RUN_CONFIG_FILENAME = "run_config.json"
RESUMABLE_FIELDS = frozenset({
    "epochs_stage1", "epochs_stage2", "checkpoint_every", "log_every", "strategy",
    "beam_size", "calibration_objective", "min_labels", "jit_compile",
})


class IncompatibleRunError(ValueError):
    """A rerun's flags describe another model or data than the work directory holds."""


@dataclasses.dataclass
class RunConfig:
    """Everything that defines a run (flags, data, backbone, model, training)."""

    dataset: str = "benchmark"
    features_dir: str = ""
    backbone: str = "efficientnet_lite0"
    feature_layer: str = ""
    label_names: tuple = ()
    variant: str = "order_free"
    lstm_units: int = 256
    attention_units: int = 256
    fc_units: int = 512
    dropout: float = 0.3
    feature_dropout: float = 0.3
    train_steps: str = "gt_count"
    max_steps: int = 4
    label_order: Optional[tuple] = None
    batch_size: int = 64
    shuffle_buffer: int = 4096
    learning_rate: float = 3e-4
    epochs_stage1: int = 8
    epochs_stage2: int = 8
    seed: int = 0
    mixed_precision: bool = False
    jit_compile: bool = False
    strategy: str = "default"
    checkpoint_every: int = 200
    log_every: int = 20
    beam_size: int = 3
    min_labels: int = 1
    calibration_objective: str = "mean_f1"
    small_area: Optional[float] = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown run config fields: {unknown}")
        data = dict(data)
        for key in ("label_names", "label_order"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def load(cls, workdir: str) -> "RunConfig":
        path = os.path.join(workdir, RUN_CONFIG_FILENAME)
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def save(self, workdir: str) -> None:
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, RUN_CONFIG_FILENAME)
        tmp = f"{path}.tmp{os.getpid()}"  # workers sharing a workdir must not share it
        with open(tmp, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    def differences(self, other: "RunConfig") -> list[str]:
        """Fields outside `RESUMABLE_FIELDS` whose values differ."""
        a, b = dataclasses.asdict(self), dataclasses.asdict(other)
        return [f"{k}: {a[k]!r} in the work directory vs {b[k]!r} now"
                for k in sorted(a) if k not in RESUMABLE_FIELDS and a[k] != b[k]]


def save_or_check(config: RunConfig, workdir: str) -> RunConfig:
    """Writes the config into a new work directory, or checks it against the saved one."""
    path = os.path.join(workdir, RUN_CONFIG_FILENAME)
    if os.path.exists(path):
        saved = RunConfig.load(workdir)
        diffs = saved.differences(config)
        if diffs:
            raise IncompatibleRunError(
                f"{path} describes another run; refusing to resume with different "
                f"settings ({'; '.join(diffs)}). Use a new --workdir or the saved flags.")
    config.save(workdir)
    return config
