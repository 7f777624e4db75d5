"""Importing the package: TensorFlow's oneDNN kernels on by default, the user's choice kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = ("import os, ofrnn_tf, tensorflow as tf; tf.constant(1.0) + 1; "
          "print('ENV', os.environ['TF_ENABLE_ONEDNN_OPTS'])")


def _import_with(setting: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # TensorFlow says at INFO level whether oneDNN is on
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    return subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                          text=True, timeout=300, check=True)


@pytest.mark.parametrize("setting, on", [(None, True), ("0", False), ("1", True)])
def test_import_turns_onednn_on_unless_the_environment_says_otherwise(setting, on):
    done = _import_with(setting)
    assert f"ENV {'1' if on else '0'}" in done.stdout
    assert ("oneDNN custom operations are on" in done.stderr) == on, done.stderr[-2000:]
