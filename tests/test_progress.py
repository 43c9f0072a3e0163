"""The progress line: rate and ETA from an injected clock, throttling, completion, formatting."""
import pytest

from bench.progress import Progress, format_duration


class Clock:
    """A settable clock: tests move time with `t.now = ...` instead of sleeping."""

    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def make(total=2100, every=10.0, **kw):
    clock, lines = Clock(), []
    return Progress(total, "[dino] evaluate", log=lines.append, every=every, clock=clock, **kw), clock, lines


def test_rate_and_eta_from_the_clock():
    p, clock, _ = make()
    clock.now += 110.0
    p.done = 1199
    p.update()  # 1200 images in 110 s: 10.909 img/s, 900 left -> 82.5 s
    assert p.rate() == pytest.approx(1200 / 110) and p.eta() == pytest.approx(900 * 110 / 1200)
    assert p.line() == "[dino] evaluate: 1200/2100 images (57%), 10.9 img/s, ETA 1 min 22 s"


def test_unknown_rate_before_any_work_or_time():
    p, clock, _ = make()
    assert p.rate() is None and p.eta() is None
    assert p.line() == "[dino] evaluate: 0/2100 images (0%), ? img/s, ETA ?"
    p.done = 5  # work done but no time passed on the clock
    assert p.rate() is None and p.line().endswith("? img/s, ETA ?")


def test_printing_is_throttled_to_every_seconds():
    p, clock, lines = make(total=1000, every=10.0)
    for _ in range(50):  # 50 updates in 9.8 s: nothing yet
        clock.now += 0.196
        p.update(10)
    assert lines == []
    clock.now += 0.3  # 10.1 s since the start
    p.update(10)
    assert lines == ["[dino] evaluate: 510/1000 images (51%), 50.5 img/s, ETA 10 s"]  # 490 / 50.5 = 9.7 s
    clock.now += 9.9
    p.update(10)
    assert len(lines) == 1  # 9.9 s since the last line
    clock.now += 0.1
    p.update(10)
    assert len(lines) == 2 and lines[-1].startswith("[dino] evaluate: 530/1000 images (53%)")


def test_final_line_always_printed_at_completion():
    p, clock, lines = make(total=100, every=10.0)
    clock.now += 1.0
    p.update(60)
    clock.now += 1.0
    p.update(40)  # only 2 s since the start, but the step is done
    assert lines == ["[dino] evaluate: 100/100 images (100%), 50.0 img/s, done in 2 s"]
    p.update(0)  # the completion line is logged once; later updates are throttled again
    assert len(lines) == 1
    p2, clock2, lines2 = make(total=100, every=0.0)  # every=0: a line per update
    for _ in range(4):
        clock2.now += 1.0
        p2.update(25)
    assert len(lines2) == 4 and lines2[-1].endswith("done in 4 s")


def test_percentage_never_shows_100_before_done_and_custom_unit():
    p, clock, _ = make(total=1000, unit="batches")
    clock.now += 2.0
    p.update(999)
    assert "999/1000 batches (99%), 499.5 batches/s, ETA 0 s" in p.line()
    p, clock, _ = make(total=10, unit="steps")
    clock.now += 100.0
    p.update(1)
    assert p.line() == "[dino] evaluate: 1/10 steps (10%), 0.01 steps/s, ETA 15 min 0 s"


def test_total_zero():
    p, clock, lines = make(total=0)
    assert p.eta() == 0.0 and p.line() == "[dino] evaluate: 0/0 images (100%), ? img/s, done in 0 s"
    p.update(0)
    assert lines == ["[dino] evaluate: 0/0 images (100%), ? img/s, done in 0 s"]
    with pytest.raises(ValueError):
        Progress(-1, "x")


def test_eta_format_at_three_magnitudes():
    assert format_duration(0) == "0 s" and format_duration(42.4) == "42 s" and format_duration(59.4) == "59 s"
    assert format_duration(59.6) == "1 min 0 s"  # rounded before choosing the form
    assert format_duration(83) == "1 min 23 s" and format_duration(3599) == "59 min 59 s"
    assert format_duration(3600) == "1 h 0 min" and format_duration(2 * 3600 + 5 * 60 + 59) == "2 h 5 min"
    assert format_duration(-3) == "0 s"
    # ... and as the ETA of a line: 1 h 40 min left at 1 img/s.
    p, clock, _ = make(total=6100)
    clock.now += 100.0
    p.update(100)
    assert p.line().endswith("1.0 img/s, ETA 1 h 40 min")


def test_default_log_is_print(capsys):
    clock = Clock()
    p = Progress(2, "[x] step", clock=clock)
    clock.now += 1.0
    p.update(2)
    assert capsys.readouterr().out == "[x] step: 2/2 images (100%), 2.0 img/s, done in 1 s\n"
