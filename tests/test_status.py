"""ofrnn_tf/status.py: progress bars in a terminal and in a log file."""

import io
import os
import re
import sys
import time

import pytest
import tqdm.std

from ofrnn_tf import status


class Terminal(io.StringIO):
    """A terminal of `size` (columns, rows): one opened without a window size says 0, 0."""

    def __init__(self, monkeypatch, size=(80, 24)):
        super().__init__()
        real = os.get_terminal_size

        def get_terminal_size(fd=1):
            return os.terminal_size(size) if fd == self.fileno() else real(fd)

        monkeypatch.setattr(os, "get_terminal_size", get_terminal_size)

    def isatty(self):
        return True

    def fileno(self):
        return 2


def run_bar(monkeypatch, stream, steps=500, **kwargs):
    monkeypatch.setattr(sys, "stderr", stream)
    with status.progress_bar(total=steps, desc="stage 1 epoch 1/2", **kwargs) as bar:
        for _ in range(steps):
            bar.set_postfix_str("loss=0.1234, 973 img/s", refresh=False)
            bar.update(1)
    return stream.getvalue()


def test_off_a_terminal_a_bar_writes_whole_lines_and_few_of_them(monkeypatch):
    text = run_bar(monkeypatch, io.StringIO(), mininterval=0)  # a redraw per update
    assert "\r" not in text and text.endswith("\n")
    assert all(line.startswith("stage 1 epoch 1/2") for line in text.splitlines())
    # At the default interval a fast bar writes its first and last state only.
    lines = run_bar(monkeypatch, io.StringIO()).splitlines()
    assert len(lines) == 2 and "500/500" in lines[-1], lines
    assert lines[-1].endswith("loss=0.1234, 973 img/s]"), lines


def test_off_a_terminal_a_line_says_the_bar_in_words_not_blocks(monkeypatch):
    """A log's line is the percentage and the count: the bar's ten blocks said nothing
    more there, and a screen reader read each out ("full block")."""
    lines = run_bar(monkeypatch, io.StringIO(), steps=10).splitlines()
    assert lines[-1].startswith("stage 1 epoch 1/2: 100% 10/10 ["), lines
    assert not re.search("[\u2588-\u258f|]", "".join(lines)), lines


def test_on_a_terminal_a_bar_is_redrawn_in_place(monkeypatch):
    text = run_bar(monkeypatch, Terminal(monkeypatch), mininterval=0)
    assert text.count("\r") > 100 and text.count("\n") <= 1


@pytest.mark.parametrize("size", [(0, 0), (80, 0), (0, 24)])
def test_a_terminal_without_a_size_gets_the_lines_a_log_file_gets(monkeypatch, size):
    # `script -qc ...` started off a terminal, a CI runner's pseudo-terminal: tqdm would
    # draw every bar there as an empty line.
    lines = run_bar(monkeypatch, Terminal(monkeypatch, size)).splitlines()
    assert len(lines) == 2 and "500/500" in lines[-1], lines


@pytest.mark.parametrize("step", [-3600.0, 86400.0])
def test_a_bar_keeps_time_when_the_wall_clock_is_set_back_or_forward(monkeypatch, step):
    """Ten seconds a step, and after the fourth step the wall clock steps back an hour (or
    on a day): the elapsed time, rate and remaining time stay those of the work, and the
    log still gets a line every `LOG_INTERVAL_SECONDS`."""
    wall, steady = [1_800_000_000.0], [1000.0]
    monkeypatch.setattr(time, "time", lambda: wall[0])
    monkeypatch.setattr(tqdm.std, "time", lambda: wall[0])  # tqdm's own `from time import`
    monkeypatch.setattr(time, "monotonic", lambda: steady[0])
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with status.progress_bar(total=20, unit="step", desc="stage 2 epoch 1/1") as bar:
        for i in range(20):
            wall[0] += 10.0 + (step if i == 3 else 0.0)
            steady[0] += 10.0
            bar.update(1)
    lines = sys.stderr.getvalue().splitlines()
    times = [re.search(r"% (\d+)/20 \[([^]]*)\]", line).groups() for line in lines]

    def minutes(seconds):
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    assert times == [("0", "00:00<?, ?step/s")] + [
        (str(n), f"{minutes(10 * n)}<{minutes(10 * (20 - n))}, 10.00s/step")
        for n in (3, 6, 9, 12, 15, 18, 20)], lines


def test_a_disabled_bar_writes_nothing(monkeypatch):
    assert run_bar(monkeypatch, io.StringIO(), enabled=False) == ""


def test_a_status_line_shows_control_characters_and_stays_one_line(capsys):
    status.log("caf\u00e9 \x1b[2J\x00\x7f\x85 one\n[ofrnn_tf] forged\ttwo")
    assert capsys.readouterr().err == (
        "[ofrnn_tf] caf\u00e9 \\x1b[2J\\x00\\x7f\\x85 one\\x0a[ofrnn_tf] forged\ttwo\n")
