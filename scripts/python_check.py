"""Whether the Python running this can install ofrnn_tf, asked by setup_env.sh before it
makes or uses .venv: a version within setup.cfg's ``python_requires`` (macOS's own
``/usr/bin/python3`` is 3.9, a current Homebrew's may be newer than TensorFlow's wheels
reach), and on macOS an arm64 one (TensorFlow publishes no wheel for Intel Macs, nor for
an x86_64 Python that Rosetta runs on Apple silicon). Installing with either fails only
after a minute, in the words of pip or uv.

    python3 scripts/python_check.py [--venv]

Exits 1 saying why, and what to run instead, on stderr (``--venv``: the Python is the one
.venv was made from, and a ``PYTHON=`` of another version is refused too: .venv is kept,
not made again from it); 0, saying nothing, otherwise. Runs on any Python that may be met
(Python 2 is `python` on older hosts), so it uses nothing newer than 2.7 and 3.6 have.
"""

import os
import platform
import re
import subprocess
import sys

try:
    from configparser import RawConfigParser
except ImportError:  # Python 2 (`python` on older hosts): refused in the same words
    from ConfigParser import RawConfigParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def requirements(setup_cfg):
    """``(python_requires, tensorflow's requirement)`` as setup.cfg spells them ("" for one
    it lacks)."""
    parser = RawConfigParser()
    parser.read(setup_cfg)

    def option(name):
        return parser.get("options", name) if parser.has_option("options", name) else ""

    requires = option("python_requires").strip()
    tensorflow = ""
    for line in option("install_requires").splitlines():
        if re.match(r"tensorflow\s*[=<>~!]", line.strip()):
            tensorflow = line.strip()
    return requires, tensorflow


def _version(text):
    return tuple(int(part) for part in text.split("."))


def version_allowed(version, requires):
    """Whether `version` (``(3, 12)``, a ``sys.version_info``) meets `requires`
    (``>=3.10,<3.14``: the comparisons of major and minor numbers setup.cfg uses)."""
    version = tuple(version[:2])
    for clause in filter(None, (c.strip() for c in requires.split(","))):
        match = re.match(r"(>=|<=|==|!=|>|<)\s*([0-9]+(?:\.[0-9]+)?)(?:\.\*)?\Z", clause)
        if match is None:
            continue
        operator, bound = match.group(1), _version(match.group(2))
        compared = version[:len(bound)]
        if not {">=": compared >= bound, "<=": compared <= bound, "==": compared == bound,
                "!=": compared != bound, ">": compared > bound, "<": compared < bound
                }[operator]:
            return False
    return True


def allowed_range(requires):
    """`requires` in words, ``>=3.10,<3.14`` as "3.10 to 3.13", and the highest version it
    allows (``python3.13``); the newest is None where `requires` gives no such range."""
    low = re.search(r">=\s*3\.([0-9]+)", requires)
    high = re.search(r"<\s*3\.([0-9]+)", requires)
    if low and high:
        newest = "3.%d" % (int(high.group(1)) - 1)
        return "3.%s to %s" % (low.group(1), newest), "python" + newest
    return requires, None


def problem(version, system, machine, requires, tensorflow, made_venv=False):
    """Why a Python of `version` on `system` (``platform.system()``) and `machine`
    (``platform.machine()``) cannot install this package, with the remedy; None where
    it can. `made_venv`: it is the Python .venv was made from."""
    tensorflow = tensorflow or "tensorflow"
    if made_venv:
        which, remedy = ".venv was made from", "make it again from one (rm -rf .venv && %s)"
    else:
        which = "%s is" % os.environ.get("PYTHON", "python3")
        remedy = "name one with PYTHON= (%s)"
    if not version_allowed(version, requires):
        allowed, newest = allowed_range(requires)
        return ("%s Python %s; ofrnn_tf installs on Python %s, those %s has wheels for: %s"
                % (which, ".".join(str(part) for part in version[:3]), allowed, tensorflow,
                   remedy % ("PYTHON=%s bash scripts/setup_env.sh" % (newest or "python3"))))
    if system == "Darwin" and machine != "arm64":
        return ("%s a Python for %s Macs; %s has macOS wheels for Apple silicon only (arm64, "
                "macOS 12 or later), so an Intel Mac cannot install ofrnn_tf (Linux can). "
                "On Apple silicon, use an arm64 Python, not one Rosetta runs (in it, "
                "platform.machine() is arm64): %s"
                % (which, machine, tensorflow,
                   remedy % "PYTHON=/opt/homebrew/bin/python3 bash scripts/setup_env.sh"))
    return None


def other_python(venv_version, python, version):
    """Why .venv, made from a Python of `venv_version`, is not what ``PYTHON=python``, a
    Python of `version`, asks for, with the remedy; None where the two are the same
    minor version. setup_env.sh keeps an existing .venv: it would go on without a word
    with the Python the user asked to leave (a test run on 3.13 that ran on 3.11)."""
    if tuple(venv_version[:2]) == tuple(version[:2]):
        return None
    return ("PYTHON=%s is Python %s but .venv was made from Python %s, and is kept: make it "
            "again from that Python (rm -rf .venv && PYTHON=%s bash scripts/setup_env.sh), "
            "or leave PYTHON unset to go on with .venv"
            % (python, ".".join(str(part) for part in version[:3]),
               ".".join(str(part) for part in venv_version[:3]), python))


def python_version(python):
    """The version of the Python the command `python` runs, as a tuple (None where it
    does not run)."""
    try:
        said = subprocess.run([python, "-c", "import sys; print(tuple(sys.version_info[:3]))"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              universal_newlines=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"\((\d+), (\d+), (\d+)\)\s*\Z", said.stdout)
    if said.returncode != 0 or match is None:
        return None
    return tuple(int(part) for part in match.groups())


def main(argv):
    requires, tensorflow = requirements(os.path.join(ROOT, "setup.cfg"))
    made_venv = "--venv" in argv[1:]
    said = problem(sys.version_info, platform.system(), platform.machine(), requires,
                   tensorflow, made_venv=made_venv)
    if said is None and made_venv and os.environ.get("PYTHON"):
        version = python_version(os.environ["PYTHON"])
        if version is not None:
            said = other_python(sys.version_info, os.environ["PYTHON"], version)
    if said is None:
        return 0
    sys.stderr.write("[setup] %s\n" % said)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
