"""ProgressLog: plain k/N lines with an ETA when stderr is not a terminal, throttled; a bar on a terminal."""

import io

import pytest

from cnnlab.utils.progress import ProgressLog, eta_seconds, format_duration


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lines_show_k_of_n_elapsed_and_an_eta_from_the_rate_so_far(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("cnnlab.utils.progress.time.perf_counter", clock)
    out = io.StringIO()  # not a terminal: plain lines
    with ProgressLog("subset models", 4, interval_s=10, stream=out) as p:
        assert p.mode == "lines"
        clock.t = 5.0
        p.update(1)  # the first unit always prints
        clock.t = 8.0
        p.update(2)  # within the interval: throttled
        clock.t = 16.0
        p.update(3)
        clock.t = 20.0
        p.update(4)  # the last always prints
    lines = out.getvalue().splitlines()
    assert lines == ["subset models: 1/4 (25%), 5s elapsed, ETA 15s",
                     "subset models: 3/4 (75%), 16s elapsed, ETA 5s",
                     "subset models: 4/4 (100%), 20s elapsed"]


def test_helpers_and_modes():
    assert format_duration(3725) == "1h02m" and format_duration(95) == "1m35s" and format_duration(7.2) == "7s"
    assert eta_seconds(0, 10, 5.0) is None and eta_seconds(2, 10, 4.0) == 16.0
    out = io.StringIO()
    with ProgressLog("x", 3, mode="off", stream=out) as p:
        p.update(3)
    assert out.getvalue() == ""
    with pytest.raises(ValueError, match="progress mode"):
        ProgressLog("x", mode="fancy")
