"""How commands and benchmark scripts stop on Ctrl-C and SIGTERM (`ofrnn_tf.cli.interrupts`,
`benchmarks/_stops.py`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from benchmarks import _stops
from ofrnn_tf.cli import interrupts


@pytest.fixture
def handlers():
    """Puts back the SIGINT and SIGTERM handlers a test changes."""
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in kept.items():
        signal.signal(signum, handler)
    interrupts._RECEIVED.clear()


def test_sigterm_raises_keyboard_interrupt_and_ends_as_terminated(handlers):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    interrupts.install()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
    assert interrupts.received() == signal.SIGTERM
    assert interrupts.ended_by() == ("terminated", 143)
    with pytest.raises(KeyboardInterrupt):
        interrupts.stop_if_interrupted()  # where the handler's own raise was lost


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_waiting_for_a_child_stops_on_a_signal_another_thread_took(handlers, signum):
    """A signal the kernel hands to another thread runs its handler once the main thread is
    back in Python: `wait_for` is within half a second, where `Popen.wait()` held it until
    the child ended (here, 30 s)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    interrupts.install()
    parked = threading.Event()
    other = threading.Thread(target=parked.wait, daemon=True)
    other.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        threading.Timer(0.5, signal.pthread_kill, (other.ident, signum)).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            interrupts.wait_for(child)
        assert time.monotonic() - started < 10
        assert interrupts.received() == signum and child.poll() is None
    finally:
        child.kill()
        child.wait()
        parked.set()


def test_a_keyboard_interrupt_without_a_signal_is_taken_for_ctrl_c(handlers):
    interrupts.install()
    assert interrupts.received() is None
    interrupts.stop_if_interrupted()  # nothing came: goes on
    assert interrupts.ended_by() == ("interrupted", 130)


def test_install_forgets_the_signals_of_an_earlier_run(handlers):
    interrupts._RECEIVED.append(signal.SIGTERM)
    interrupts.install()
    assert interrupts.received() is None


def test_an_ignored_sigint_stays_ignored_and_a_programs_own_sigterm_handler_is_kept(handlers):
    # A background job of a non-interactive shell starts with SIGINT ignored: a Ctrl-C
    # meant for the foreground must not stop it.
    def own(signum, frame):
        pass

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, own)
    interrupts.install()
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is own


def test_a_benchmark_started_with_sigint_ignored_keeps_it_ignored(handlers, monkeypatch):
    seen = {}

    def main(argv):
        seen["sigint"] = signal.getsignal(signal.SIGINT)
        seen["sigterm"] = signal.getsignal(signal.SIGTERM)

    monkeypatch.setattr(sys, "argv", ["bench_example.py"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with pytest.raises(SystemExit) as ended:
        _stops.run(main)
    assert ended.value.code in (None, 0)
    assert seen["sigint"] == signal.SIG_IGN
    assert seen["sigterm"] not in (signal.SIG_DFL, signal.SIG_IGN)


def test_a_benchmark_stopped_by_sigterm_says_so_and_exits_143(handlers, monkeypatch, capsys):
    def main(argv):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(sys, "argv", ["bench_example.py"])
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with pytest.raises(SystemExit) as ended:
        _stops.run(main)
    assert ended.value.code == 143
    assert capsys.readouterr().err.rstrip().endswith("bench_example.py: terminated")
