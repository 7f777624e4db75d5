"""The package: TensorFlow's oneDNN kernels on by default, the user's choice kept; its source
distribution carries the test suite whole; none of the project's code forks with Python in
the child."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import ROOT
import ofrnn_tf

_PROBE = ("import os, ofrnn_tf, tensorflow as tf; tf.constant(1.0) + 1; "
          "print('ENV', os.environ['TF_ENABLE_ONEDNN_OPTS'])")


def _import_with(setting: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # TensorFlow says at INFO level whether oneDNN is on
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    return subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                          text=True, timeout=300, check=True)


@pytest.mark.slow
@pytest.mark.parametrize("setting, on", [(None, True), ("0", False), ("1", True)])
def test_import_turns_onednn_on_unless_the_environment_says_otherwise(setting, on):
    done = _import_with(setting)
    assert f"ENV {'1' if on else '0'}" in done.stdout
    assert ("oneDNN custom operations are on" in done.stderr) == on, done.stderr[-2000:]


def test_source_distribution_holds_what_the_tests_import(tmp_path):
    """Without MANIFEST.in, setuptools ships tests/test_*.py but not the modules they import."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    source = tmp_path / "source"
    for name in tracked.stdout.split():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "sdist",
                    "-d", str(tmp_path / "dist")], cwd=source, check=True, capture_output=True,
                   timeout=300)
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        shipped = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    wanted = {name for name in tracked.stdout.split()
              if name.split("/")[0] in ("tests", "benchmarks", "scripts")
              and name.endswith((".py", ".sh"))}
    assert wanted - shipped == set()
    # The licence text the metadata names ships, and the version is the package's own.
    assert "LICENSE" in shipped
    assert archive.name == f"ofrnn_tf-{ofrnn_tf.__version__}.tar.gz"


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a file to another user")
def test_setup_env_says_when_another_users_venv_cannot_be_run_by_this_one(tmp_path):
    # A root-made .venv whose python links into /root (a pyenv shim): a service user
    # cannot run it, nor make it again, and python3 -m venv would fail on its pyvenv.cfg.
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup_env.sh", tmp_path / "scripts")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to("/root/.pyenv/bin/python3-gone")
    config = tmp_path / ".venv" / "pyvenv.cfg"
    config.write_text("home = /root/.pyenv/versions/3.11.7/bin\n")
    os.chown(config, 12345, 12345)  # another user's
    done = subprocess.run(["bash", str(tmp_path / "scripts" / "setup_env.sh")],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHON="false"))
    assert done.returncode == 1
    assert done.stderr.startswith(
        "[setup] .venv exists but its interpreter (from /root/.pyenv/versions/3.11.7/bin) "
        "cannot be run by this user (root): its owner can make it again from a Python every "
        "user can run (rm -rf .venv && PYTHON=/usr/bin/python3 bash scripts/setup_env.sh)"), (
        done.stderr)


def _scripts_with_a_recording_python(tmp_path: Path, *scripts: str) -> Path:
    """A copy of `scripts` (from scripts/) in `tmp_path`, beside a .venv whose python and
    uv write their arguments to ``calls.log``, one call a line, say them on stdout, and do
    nothing else."""
    (tmp_path / "scripts").mkdir()
    for script in scripts:
        shutil.copy(ROOT / "scripts" / script, tmp_path / "scripts")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for tool in ("python", "uv"):
        fake = tmp_path / ".venv" / "bin" / tool
        fake.write_text(f'#!/bin/sh\nprintf \'%s\\n\' "$*" >> {tmp_path / "calls.log"}\n'
                        f'echo "{tool} $*"\n')
        fake.chmod(0o755)
    return tmp_path / "calls.log"


def test_main_sh_gives_the_demo_the_run_s_examples_folder_whatever_their_format(tmp_path):
    # A run of PNG data (--config=manifest) has examples/000_x.png: no *.jpg to glob.
    calls = _scripts_with_a_recording_python(tmp_path, "main.sh")
    (tmp_path / "scripts" / "setup_env.sh").write_text("")
    (tmp_path / "run" / "examples").mkdir(parents=True)
    (tmp_path / "run" / "examples" / "000_x.png").write_bytes(b"")
    done = subprocess.run(["bash", str(tmp_path / "scripts" / "main.sh")], capture_output=True,
                          text=True, timeout=60,
                          env=dict(os.environ, WORKDIR=str(tmp_path / "run"),
                                   EXPORT_DIR=str(tmp_path / "exports")))
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines()[-1] == (
        f"scripts/grpc_demo.py --export_dir={tmp_path / 'exports'} {tmp_path / 'run' / 'examples'}")


def _run_setup_env(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Runs the copy of setup_env.sh in `tmp_path` with an apt-get that installs nothing,
    wherever root runs this, and the variables `env` set."""
    tools = tmp_path / "tools"
    if not tools.exists():
        tools.mkdir()
        (tools / "apt-get").write_text("#!/bin/sh\necho apt-get $*\nexit 1\n")
        (tools / "apt-get").chmod(0o755)
    return subprocess.run(["bash", str(tmp_path / "scripts" / "setup_env.sh")],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **env,
                                   PATH=f"{tools}{os.pathsep}{os.environ['PATH']}"))


@pytest.mark.parametrize("uv_installs", [True, False])
def test_setup_env_writes_nothing_on_stdout(tmp_path, uv_installs):
    # stdout is the caller's: `bash scripts/main.sh > results.txt` holds the results only.
    calls = _scripts_with_a_recording_python(tmp_path, "setup_env.sh")
    (tmp_path / "setup.cfg").write_text("")
    (tmp_path / "pyproject.toml").write_text("")
    if not uv_installs:
        (tmp_path / ".venv" / "bin" / "uv").write_text("#!/bin/sh\necho uv failed\nexit 1\n")
    done = _run_setup_env(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "-m pip check" in calls.read_text()
    assert done.stdout == ""
    assert "python -m pip check" in done.stderr


def test_setup_env_installs_what_changed_whatever_the_files_dates(tmp_path):
    # A tree updated with rsync -a or tar x keeps each file's date: a changed setup.cfg may
    # be dated before the last install, an unchanged one after it.
    calls = _scripts_with_a_recording_python(tmp_path, "setup_env.sh")
    config, project = tmp_path / "setup.cfg", tmp_path / "pyproject.toml"
    config.write_text("[options]\ninstall_requires = numpy\n")
    project.write_text("[build-system]\n")

    def installs() -> int:
        assert _run_setup_env(tmp_path).returncode == 0
        return calls.read_text().count("-m pip check")

    assert installs() == 1
    assert installs() == 1  # nothing changed
    installed_at = (tmp_path / ".venv" / ".ofrnn_tf-installed").stat().st_mtime
    config.write_text("[options]\ninstall_requires = numpy\n    pillow\n")
    os.utime(config, (installed_at - 3600, installed_at - 3600))
    assert installs() == 2
    os.utime(config, (installed_at + 86400, installed_at + 86400))  # the same content
    assert installs() == 2
    project.write_text("[build-system]\nrequires = [\"setuptools\"]\n")
    os.utime(project, (installed_at - 3600, installed_at - 3600))
    assert installs() == 3


def _fake_python(tmp_path: Path, body: str) -> Path:
    """A .venv python that logs its arguments to ``calls.log`` and then runs the sh `body`
    (a ``case "$*"`` over them); returns the log."""
    log = tmp_path / "calls.log"
    python = tmp_path / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nprintf \'%s\\n\' "$*" >> {log}\ncd {tmp_path}\n'
                      f'case "$*" in\n{body}\nesac\n')
    python.chmod(0o755)
    return log


def test_setup_env_tries_apt_only_where_fashion_mnist_is_not_found_and_not_after_a_failure(
        tmp_path):
    _scripts_with_a_recording_python(tmp_path, "setup_env.sh")
    _fake_python(tmp_path, "*find_fashion_mnist*) [ -e found ];;\n*) exit 0;;")
    (tmp_path / "setup.cfg").write_text("")
    (tmp_path / "pyproject.toml").write_text("")
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "apt-get").write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path / 'apt.log'}\nexit 1\n")
    (tools / "id").write_text("#!/bin/sh\necho 0\n")  # as root
    for tool in ("apt-get", "id"):
        (tools / tool).chmod(0o755)
    apt_log, marker = tmp_path / "apt.log", tmp_path / ".venv" / ".fashion-mnist-apt-failed"

    (tmp_path / "found").write_text("")  # the loader finds the four files: no apt-get
    assert _run_setup_env(tmp_path).returncode == 0 and not apt_log.exists()

    (tmp_path / "found").unlink()
    done = _run_setup_env(tmp_path)
    assert done.returncode == 0, done.stderr
    assert ("[setup] installing Debian package dataset-fashion-mnist (this needs the network)"
            in done.stderr)
    calls = apt_log.read_text().splitlines()
    assert [c.split()[-1] for c in calls] == ["dataset-fashion-mnist", "update"]
    assert all("-o Acquire::Retries=0 -o Acquire::http::Timeout=10" in c for c in calls)
    assert marker.read_text().rstrip().endswith(
        "rm .venv/.fashion-mnist-apt-failed to try again")

    done = _run_setup_env(tmp_path)  # not again while the marker says apt-get failed
    assert done.returncode == 0 and len(apt_log.read_text().splitlines()) == 2
    assert "rm .venv/.fashion-mnist-apt-failed to try again" in done.stderr
    marker.unlink()
    assert _run_setup_env(tmp_path).returncode == 0
    assert len(apt_log.read_text().splitlines()) == 4


def test_setup_env_goes_on_offline_with_the_venv_it_has_after_an_update(tmp_path):
    # A pulled setup.cfg on a host without the package index: the .venv an earlier install
    # made (its stamp says one finished) runs. A .venv no install finished in, or whose
    # package only imports from the working folder, does not.
    _scripts_with_a_recording_python(tmp_path, "setup_env.sh")
    _fake_python(tmp_path, '"-m pip install -q uv") exit 0;;\n'  # uv is there
                           '"-m pip install"*) exit 1;;\n*) exit 0;;')  # the index is not
    (tmp_path / ".venv" / "bin" / "uv").write_text("#!/bin/sh\necho 'dns error' >&2\nexit 1\n")
    (tmp_path / "setup.cfg").write_text("[options]\ninstall_requires = numpy\n")
    (tmp_path / "pyproject.toml").write_text("")
    stamp = tmp_path / ".venv" / ".ofrnn_tf-installed"
    stamp.write_text("1 2 setup.cfg\n3 4 pyproject.toml\n")  # an earlier setup.cfg's

    done = _run_setup_env(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "[setup] uv failed; installing with pip" in done.stderr
    assert done.stderr.rstrip().endswith(
        "[setup] could not install ofrnn_tf[dev] (see above): using the .venv installed from "
        "an earlier setup.cfg; run this again where the package index can be reached")
    assert stamp.read_text() == "1 2 setup.cfg\n3 4 pyproject.toml\n"  # tried again next time

    stamp.unlink()  # a .venv no install finished in: nothing to go on with
    done = _run_setup_env(tmp_path)
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith("[setup] could not install ofrnn_tf[dev] into .venv")


def _python_check():
    """scripts/python_check.py as a module (setup_env.sh runs it as a script)."""
    import importlib.util

    path = ROOT / "scripts" / "python_check.py"
    spec = importlib.util.spec_from_file_location("python_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_python_versions_setup_env_allows_are_those_the_classifiers_name():
    check = _python_check()
    requires, tensorflow = check.requirements(str(ROOT / "setup.cfg"))
    assert tensorflow.startswith("tensorflow==")
    named = [line.split("::")[-1].strip() for line in (ROOT / "setup.cfg").read_text()
             .splitlines() if line.strip().startswith("Programming Language :: Python :: 3.")]
    allowed = [f"3.{minor}" for minor in range(20) if check.version_allowed((3, minor), requires)]
    assert named == allowed and check.allowed_range(requires) == (
        f"{allowed[0]} to {allowed[-1]}", f"python{allowed[-1]}")


def test_a_python_tensorflow_has_no_wheel_for_is_refused_with_the_remedy(monkeypatch):
    # macOS's own python3 is 3.9; a current Homebrew's can be newer than TensorFlow's
    # wheels; an Intel Mac's (or Rosetta's) is x86_64, for which TensorFlow has none.
    check = _python_check()
    monkeypatch.delenv("PYTHON", raising=False)
    requires, tensorflow = ">=3.10,<3.14", "tensorflow==2.21.*"
    assert check.problem((3, 9, 6), "Darwin", "arm64", requires, tensorflow) == (
        "python3 is Python 3.9.6; ofrnn_tf installs on Python 3.10 to 3.13, those "
        "tensorflow==2.21.* has wheels for: name one with PYTHON= (PYTHON=python3.13 bash "
        "scripts/setup_env.sh)")
    assert check.problem((3, 14, 0), "Darwin", "arm64", requires, tensorflow,
                         made_venv=True).startswith(
        ".venv was made from Python 3.14.0; ofrnn_tf installs on Python 3.10 to 3.13")
    intel = check.problem((3, 12, 1), "Darwin", "x86_64", requires, tensorflow)
    assert intel.startswith(
        "python3 is a Python for x86_64 Macs; tensorflow==2.21.* has macOS wheels for Apple "
        "silicon only (arm64, macOS 12 or later), so an Intel Mac cannot install ofrnn_tf")
    assert intel.endswith("(PYTHON=/opt/homebrew/bin/python3 bash scripts/setup_env.sh)")
    for system, machine in (("Darwin", "arm64"), ("Linux", "x86_64"), ("Linux", "aarch64")):
        assert check.problem((3, 12, 1), system, machine, requires, tensorflow) is None
        assert check.problem((3, 10, 0), system, machine, requires, tensorflow) is None


def test_setup_env_refuses_a_python_out_of_range_before_making_venv_and_after(tmp_path):
    # Made from a Python the install refuses, a .venv would stay, and PYTHON= given on the
    # rerun would never be used: setup_env.sh refuses the Python before it makes .venv,
    # and names `rm -rf .venv` for one made from such a Python.
    (tmp_path / "scripts").mkdir()
    for script in ("setup_env.sh", "python_check.py"):
        shutil.copy(ROOT / "scripts" / script, tmp_path / "scripts")
    minor = sys.version_info.minor  # the versions allowed: the next two
    (tmp_path / "setup.cfg").write_text(
        f"[options]\npython_requires = >=3.{minor + 1},<3.{minor + 3}\n"
        f"install_requires =\n    tensorflow==2.21.*\n")
    (tmp_path / "pyproject.toml").write_text("")
    version = ".".join(map(str, sys.version_info[:3]))

    def setup() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(tmp_path / "scripts" / "setup_env.sh")],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHON=sys.executable))

    done = setup()
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"[setup] {sys.executable} is Python {version}; ofrnn_tf installs on Python "
        f"3.{minor + 1} to 3.{minor + 2}, those tensorflow==2.21.* has wheels for: name one "
        f"with PYTHON= (PYTHON=python3.{minor + 2} bash scripts/setup_env.sh)\n")
    assert not (tmp_path / ".venv").exists()
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    done = setup()
    assert done.returncode == 1 and done.stderr.startswith(
        f"[setup] .venv was made from Python {version}; ofrnn_tf installs on Python")
    assert f"(rm -rf .venv && PYTHON=python3.{minor + 2} bash scripts/setup_env.sh)" in done.stderr
    assert "installing" not in done.stderr


def test_setup_env_refuses_a_python_of_another_version_than_the_venv_s(tmp_path):
    # Once .venv existed, PYTHON= was passed over without a word: a set-up or test run
    # asked for on one Python went on with the .venv of another.
    (tmp_path / "scripts").mkdir()
    for script in ("setup_env.sh", "python_check.py"):
        shutil.copy(ROOT / "scripts" / script, tmp_path / "scripts")
    minor = sys.version_info.minor
    (tmp_path / "setup.cfg").write_text(
        f"[options]\npython_requires = >=3.{minor},<3.{minor + 3}\n"
        f"install_requires =\n    tensorflow==2.21.*\n")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    stamp = subprocess.run(["cksum", "setup.cfg", "pyproject.toml"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    (tmp_path / ".venv" / ".ofrnn_tf-installed").write_text(stamp)  # installed: no install
    version = ".".join(map(str, sys.version_info[:3]))

    def python_of(version_info: tuple) -> str:
        python = tmp_path / f"python{'.'.join(map(str, version_info[:2]))}"
        python.write_text(f"#!/bin/sh\necho '{tuple(version_info)}'\n")
        python.chmod(0o755)
        return str(python)

    other = python_of((3, minor + 1, 0))
    done = _run_setup_env(tmp_path, PYTHON=other)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"[setup] PYTHON={other} is Python 3.{minor + 1}.0 but .venv was made from Python "
        f"{version}, and is kept: make it again from that Python (rm -rf .venv && "
        f"PYTHON={other} bash scripts/setup_env.sh), or leave PYTHON unset to go on with "
        f".venv\n")
    for python in (python_of((3, minor, 0)), str(tmp_path / "no-such-python")):
        done = _run_setup_env(tmp_path, PYTHON=python)  # the same minor version; none
        assert done.returncode == 0, done.stderr
        assert "PYTHON=" not in done.stderr


def _python2() -> str | None:
    """A Python 2 this machine runs (`python` on older hosts), or None."""
    candidates = [shutil.which(name) for name in ("python2.7", "python2")]
    candidates += sorted(map(str, Path.home().glob(".pyenv/versions/2.*/bin/python2")))
    for python in filter(None, candidates):
        try:
            if subprocess.run([python, "-c", "import sys; sys.exit(sys.version_info[0] != 2)"],
                              capture_output=True, timeout=30).returncode == 0:
                return python
        except (OSError, subprocess.SubprocessError):
            continue
    return None


def test_setup_env_refuses_python_2_in_the_one_line_it_gives_python_3_9(tmp_path):
    # `PYTHON=python` on a host where that is Python 2 met a traceback from the check.
    python2 = _python2()
    if python2 is None:
        pytest.skip("no Python 2 on this machine")
    (tmp_path / "scripts").mkdir()
    for script in ("setup_env.sh", "python_check.py"):
        shutil.copy(ROOT / "scripts" / script, tmp_path / "scripts")
    shutil.copy(ROOT / "setup.cfg", tmp_path)
    (tmp_path / "pyproject.toml").write_text("")
    done = subprocess.run(["bash", str(tmp_path / "scripts" / "setup_env.sh")],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHON=python2))
    assert (done.returncode, done.stdout) == (1, "")
    assert re.fullmatch(
        rf"\[setup\] {re.escape(python2)} is Python 2\.7\.\d+; ofrnn_tf installs on Python "
        r"3\.\d+ to 3\.\d+, those tensorflow==\S+ has wheels for: name one with PYTHON= "
        r"\(PYTHON=python3\.\d+ bash scripts/setup_env\.sh\)\n", done.stderr), done.stderr
    assert not (tmp_path / ".venv").exists()


# Ways of starting a process that run Python in a fork of the caller (`forks_with_python`).
_FORKING_CALLS = {"fork", "forkpty"}


def forks_with_python(source: str) -> list[str]:
    """Where `source` starts a process that runs Python in a fork of itself before (or
    instead of) exec: a `preexec_fn`, `os.fork`, `os.forkpty`, or `multiprocessing`. In a
    process with gRPC calls in flight, grpcio (1.80 on) restarts its poller in such a fork,
    which can abort it (serving/README.md, "gRPC client")."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.keyword) and node.arg == "preexec_fn":
            found.append((node.value.lineno, "preexec_fn"))
        elif (isinstance(node, ast.Attribute) and node.attr in _FORKING_CALLS
              and isinstance(node.value, ast.Name) and node.value.id == "os"):
            found.append((node.lineno, f"os.{node.attr}"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""]
            found += [(node.lineno, f"import {name}") for name in names
                      if name.split(".")[0] == "multiprocessing"]
    return [f"line {line}: {what}" for line, what in sorted(found)]


def test_forks_with_python_finds_each_way():
    assert forks_with_python(
        "import os, subprocess\nsubprocess.run(['x'], preexec_fn=os.setsid)\n"
        "pid = os.fork()\nimport multiprocessing.pool\nfrom multiprocessing import Pool\n"
        "os.forkpty()\n") == [
        "line 2: preexec_fn", "line 3: os.fork", "line 4: import multiprocessing.pool",
        "line 5: import multiprocessing", "line 6: os.forkpty"]
    assert forks_with_python(
        "import subprocess\n'preexec_fn'  # named, not passed\n"
        "subprocess.run(['x'], start_new_session=True)\n") == []


def test_no_code_of_the_project_forks_with_python_in_the_child():
    """The commands hold gRPC channels and servers, and the tests a server in their own
    process (the `serve` fixture), while they start children: a child forked with Python
    in it aborted there 1 to 3 times in 300 (a CI run failed on one), where `vfork` and
    `posix_spawn`, which `subprocess` uses otherwise, run no Python before exec."""
    sources = [path for folder in ("ofrnn_tf", "serving", "scripts", "benchmarks", "tests")
               for path in sorted((ROOT / folder).rglob("*.py"))]
    sources += sorted(ROOT.glob("*.py"))
    assert len(sources) > 100
    found = {str(path.relative_to(ROOT)): where for path in sources
             if (where := forks_with_python(path.read_text(encoding="utf-8")))}
    assert not found, found
