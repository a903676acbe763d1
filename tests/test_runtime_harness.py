"""The measurement harness: statistics on known samples, warm-up and timed-run rules, peak memory."""

from __future__ import annotations

import math
import time

import pytest

from fxbench.errors import FxbenchError
from fxbench.runtime.bench import Shape, shapes_from
from fxbench.runtime.harness import LatencyStats, Measure, Warmup, clearly_faster, peak_memory, time_runs


def test_statistics_of_a_known_sample_list():
    stats = LatencyStats.from_seconds([i / 1000 for i in range(1, 101)], batch=8)  # 1..100 ms
    assert stats.count == 100
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.median_ms == pytest.approx(50.5)
    # Linear interpolation between ranks: rank 0.9 * 99 = 89.1 lies between 90 and 91 ms.
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.std_ms == pytest.approx(math.sqrt((100**2 - 1) / 12))  # population std of 1..n
    assert (stats.min_ms, stats.max_ms) == pytest.approx((1.0, 100.0))
    assert stats.throughput == pytest.approx(8 / 0.0505)  # samples/s = batch / mean latency


def test_statistics_of_constant_and_skewed_samples():
    flat = LatencyStats.from_seconds([0.002] * 4, batch=1)
    assert flat.std_ms == 0 and flat.median_ms == flat.p99_ms == pytest.approx(2.0) and flat.throughput == pytest.approx(500)
    skewed = LatencyStats.from_seconds([0.001] * 9 + [0.101], batch=2)
    assert skewed.median_ms == pytest.approx(1.0)  # one outlier moves the mean, not the median
    assert skewed.mean_ms == pytest.approx(11.0)
    assert skewed.p90_ms == pytest.approx(1.0 + 0.1 * 100)  # rank 8.1: a tenth of the way to the outlier
    with pytest.raises(ValueError):
        LatencyStats.from_seconds([], batch=1)


def test_warmup_waits_for_count_time_and_a_steady_trend():
    rule = Warmup(iters=10, seconds=0.0, window=5, tolerance=0.2, max_seconds=60)
    flat = [0.01] * 10
    assert not rule.done(flat[:9], elapsed=1.0)  # too few runs
    assert rule.done(flat, elapsed=1.0)
    assert not Warmup(iters=10, seconds=2.0).done(flat, elapsed=1.0)  # too short
    improving = [0.02] * 5 + [0.01] * 5  # the last window is twice as fast: autotuning is still on
    assert rule.steady(improving) is False and not rule.done(improving, elapsed=1.0)
    assert rule.done(improving, elapsed=60.0)  # the cap ends it anyway
    slower = [0.01] * 5 + [0.012] * 5  # slower at the end is noise, not warm-up
    assert rule.steady(slower) is True
    assert rule.steady(flat[:9]) is None  # fewer than two windows: not judged
    assert Warmup(iters=3, seconds=0.0).done([0.05, 0.02, 0.01], elapsed=0.1)  # a short warm-up asked for is honoured


def test_slow_early_runs_stay_in_warmup_and_never_reach_the_timed_runs():
    # A step that behaves like a compiler: a slow first call, then runs that get faster in stages.
    durations = [0.2] + [0.08] * 3 + [0.04] * 3
    calls: list[int] = []

    def step() -> None:
        time.sleep(durations[len(calls)] if len(calls) < len(durations) else 0.003)
        calls.append(1)

    timing = time_runs(step, device="cpu", warmup=Warmup(iters=6, seconds=0.0, window=3, tolerance=0.2), measure=Measure(iters=7))
    assert timing.warmup.first_call_s >= 0.2
    # The count alone would stop after the 6 slow runs; the trend rule kept warming up until a
    # window of fast runs was no faster than the window before it (run 11 when sleeps are exact).
    assert timing.warmup.runs >= 10 and timing.warmup.steady is True
    assert len(calls) == 1 + timing.warmup.runs + len(timing.wall)
    assert len(timing.wall) == 7 and timing.device is None
    assert sorted(timing.wall)[3] < 0.03  # the median timed run is a fast one


def test_timed_runs_by_count_or_by_time():
    def step() -> None:
        time.sleep(0.01)

    by_time = time_runs(step, device="cpu", warmup=Warmup(iters=0, seconds=0.0), measure=Measure(seconds=0.15, min_iters=3))
    assert len(by_time.wall) >= 3 and sum(by_time.wall) >= 0.14
    few = time_runs(step, device="cpu", warmup=Warmup(iters=0, seconds=0.0), measure=Measure(seconds=0.001, min_iters=5))
    assert len(few.wall) == 5  # the time budget never cuts below min_iters


def test_rounds_share_the_runs_out():
    assert Measure(iters=10, rounds=3).per_round() == Measure(iters=4, seconds=2.0 / 3, min_iters=4, max_iters=333_334, rounds=1)
    one = Measure(seconds=3.0, min_iters=10, rounds=4).per_round()
    assert (one.iters, one.seconds, one.min_iters, one.rounds) == (None, 0.75, 3, 1)
    assert Measure(iters=5, rounds=1).per_round() == Measure(iters=5, rounds=1)
    # time_runs is one backend alone: it times all of the runs at once, whatever the rounds.
    timing = time_runs(lambda: None, device="cpu", warmup=Warmup(iters=0, seconds=0.0), measure=Measure(iters=7, rounds=3))
    assert len(timing.wall) == 7


def test_rounds_are_the_default_and_share_exact_counts():
    assert Measure().rounds == 5  # interleaved unless asked otherwise
    assert [m.iters for m in map(Measure(iters=10, rounds=3).share, range(3))] == [4, 3, 3]
    assert [m and m.iters for m in map(Measure(iters=3, rounds=5).share, range(5))] == [1, 1, 1, None, None]
    timed = Measure(seconds=2.0, min_iters=10, rounds=4).share(0)
    assert (timed.seconds, timed.min_iters, timed.rounds) == (0.5, 3, 1)  # 10 over 4 rounds: 3, 3, 2, 2
    assert Measure(seconds=2.0, min_iters=10, rounds=4).share(3).min_iters == 2


def test_p95_spread_and_the_medians_interval():
    stats = LatencyStats.from_seconds([i / 1e3 for i in range(1, 101)], batch=1)  # 1..100 ms
    assert stats.p95_ms == pytest.approx(95.05) and stats.p25_ms == pytest.approx(25.75) and stats.p75_ms == pytest.approx(75.25)
    assert stats.iqr_ms == pytest.approx(49.5) and stats.spread == pytest.approx(49.5 / 50.5) and stats.noisy
    assert stats.median_ci_ms == pytest.approx(1.57 * 49.5 / 10)
    steady = LatencyStats.from_seconds([0.010 + 0.0001 * (i % 5) for i in range(50)], batch=1)
    assert not steady.noisy and steady.spread < 0.1  # IQR 0.2 ms of 10.2: 2%
    data = steady.to_dict()
    assert {"p95_ms", "iqr_ms", "spread", "noisy", "median_ci_ms"} <= set(data) and LatencyStats.from_dict(data) == steady


def test_clearly_faster_needs_notches_that_do_not_overlap():
    fast = LatencyStats.from_seconds([0.010 + 0.0005 * (i % 5) for i in range(100)], batch=1)  # 10-12 ms
    slow = LatencyStats.from_seconds([0.013 + 0.0005 * (i % 5) for i in range(100)], batch=1)  # 13-15 ms
    close = LatencyStats.from_seconds([0.0102 + 0.0005 * (i % 5) for i in range(10)], batch=1)  # 2% slower, few runs
    assert clearly_faster(fast, slow) and not clearly_faster(slow, fast)
    assert not clearly_faster(fast, close) and not clearly_faster(close, fast)


@pytest.mark.parametrize(
    "make",
    [lambda: Measure(iters=0), lambda: Measure(iters=None, seconds=0), lambda: Measure(rounds=0), lambda: Warmup(iters=-1), lambda: Warmup(seconds=5, max_seconds=1),
     lambda: shapes_from([0], [128]), lambda: shapes_from([1], [])],
)
def test_bad_options_are_user_errors(make):
    with pytest.raises(FxbenchError):
        make()


def test_sweep_is_every_batch_with_every_sequence():
    assert shapes_from([1, 8, 8], [128, 512]) == [Shape(1, 128), Shape(1, 512), Shape(8, 128), Shape(8, 512)]
    assert shapes_from([1, 4], [128], has_seq=False) == [Shape(1, None), Shape(4, None)]
    assert Shape(8, 128).label == "b8 s128" and Shape(4, None).label == "b4"


def test_peak_rss_growth_sees_a_transient_allocation():
    with peak_memory("cpu") as probe:
        block = bytearray(256 * 2**20)  # touched: bytearray zero-fills
        del block
    assert probe.record is not None and probe.record.kind == "rss"
    assert probe.record.growth_mib >= 200  # freed before the end, still the peak
    with peak_memory("cpu") as quiet:
        sum(range(1000))
    assert quiet.record is not None and quiet.record.growth_mib < 50
