"""The versions of this package and of what it runs on, as a run folder (``run.json``)
and an export (``assets.extra/software.json``) record them: which release wrote a file
is then read from the file, not guessed."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import ofrnn_tf

# Where a module is not imported yet, its version is read from the installed package,
# under any of the names it is published as.
_DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos",
                                 "tf-nightly"),
                  "keras": ("keras", "keras-nightly")}


def software_versions() -> dict:
    """``{"ofrnn_tf", "tensorflow", "keras", "python"}``: version strings of this process
    ("not installed" for a missing one)."""
    versions = {"ofrnn_tf": ofrnn_tf.__version__}
    for module_name, distributions in _DISTRIBUTIONS.items():
        version = getattr(sys.modules.get(module_name), "__version__", None)
        for distribution in distributions:
            if version:
                break
            try:
                version = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                pass
        versions[module_name] = version or "not installed"
    versions["python"] = platform.python_version()
    return versions
