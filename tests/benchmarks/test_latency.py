"""Latency statistics on known samples and the samplers' stopping rules (driven by a fake clock, not timed)."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.latency import (BACKENDS, LatencyStats, collect, collect_interleaved, cuda_device_present,
                                cuda_unavailable, parse_backends, tiled)
from edge.errors import EdgeError


def test_percentiles_and_moments_of_known_samples():
    s = LatencyStats.from_samples(list(range(1, 101)), warmup_runs=3)  # 1..100 ms
    assert (s.n_samples, s.warmup_runs) == (100, 3)
    assert (s.min_ms, s.max_ms, s.mean_ms) == (1.0, 100.0, 50.5)
    # linear interpolation between order statistics: rank = p/100 * (n - 1)
    assert s.p10_ms == pytest.approx(10.9)
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.std_ms == pytest.approx(np.std(np.arange(1, 101), ddof=1))  # sample std, 29.01
    assert s.total_s == pytest.approx(5.05)


def test_one_sample_has_zero_spread_and_none_is_an_error():
    s = LatencyStats.from_samples([12.5])
    assert s.p50_ms == s.p99_ms == s.min_ms == 12.5 and s.std_ms == 0.0
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])
    assert set(s.to_json()) >= {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms"}


class FakeClock:
    """Each call of the timed function advances the clock by ``step`` seconds."""

    def __init__(self, step: float) -> None:
        self.t, self.step, self.calls = 0.0, step, 0

    def __call__(self) -> float:
        return self.t

    def work(self) -> None:
        self.calls += 1
        self.t += self.step


def test_collect_stops_at_n_runs_and_does_not_time_the_warmup():
    c = FakeClock(0.010)
    samples = collect(c.work, runs=5, seconds=100.0, warmup=3, clock=c)
    assert c.calls == 8 and samples == pytest.approx([10.0] * 5)


def test_collect_stops_after_t_seconds_but_keeps_one_sample():
    c = FakeClock(0.25)
    assert len(collect(c.work, runs=1000, seconds=1.0, clock=c)) == 4
    c = FakeClock(5.0)
    assert len(collect(c.work, runs=1000, seconds=1.0, clock=c)) == 1


def test_interleaved_rounds_rotate_and_give_every_backend_the_same_count():
    order: list[str] = []
    c = FakeClock(0.1)

    def fn(name):
        def run():
            order.append(name)
            c.work()
        return run

    out = collect_interleaved({"a": fn("a"), "b": fn("b"), "c": fn("c")}, runs=100, seconds=0.5, warmup=1, clock=c)
    assert {k: len(v) for k, v in out.items()} == {"a": 2, "b": 2, "c": 2}  # the started round is finished
    assert order == ["a", "b", "c", "a", "b", "c", "b", "c", "a"]  # warm-up, then rotated rounds


def test_a_backend_over_the_budget_sits_out_once_it_has_its_minimum_samples():
    t = [0.0]
    cost = {"fast": 0.010, "slow": 2.0}  # seconds per call

    def fn(name):
        def run():
            t[0] += cost[name]
        return run

    out = collect_interleaved({"fast": fn("fast"), "slow": fn("slow")}, runs=10, seconds=1e9, clock=lambda: t[0],
                              budget_ms=500.0, min_samples=3)
    assert {k: len(v) for k, v in out.items()} == {"fast": 10, "slow": 3}
    assert out["slow"] == pytest.approx([2000.0] * 3)
    even = collect_interleaved({"fast": fn("fast"), "slow": fn("slow")}, runs=4, seconds=1e9, clock=lambda: t[0])
    assert {k: len(v) for k, v in even.items()} == {"fast": 4, "slow": 4}  # no budget: the same count


def test_backend_names_are_checked_with_a_suggestion():
    assert parse_backends("torch, tvm,torch") == ["torch", "tvm"]
    with pytest.raises(EdgeError, match=r"unknown backend 'onnxrutime'; did you mean 'onnxruntime'\?"):
        parse_backends("tvm,onnxrutime")
    assert "tvm-cuda" in BACKENDS and "tvm-default" in BACKENDS
    with pytest.raises(EdgeError, match=r"did you mean 'tvm-default'\?"):
        parse_backends("onnxruntime,tvm-defualt")


@pytest.mark.skipif(cuda_device_present(), reason="this machine has a CUDA GPU")
def test_cuda_backends_say_no_cuda_device_on_a_cpu_machine():
    for b in ("torch-cuda", "onnxruntime-cuda", "tvm-cuda"):
        assert cuda_unavailable(b) == "no CUDA device"


def test_full_image_runs_through_the_sliding_window():
    calls = []

    def predictor(x):
        calls.append(x.shape)
        return x[:, :1] + 1

    img = np.zeros((3, 100, 70), np.float32)
    out = tiled(predictor, img, (32, 32), overlap=8, divisor=16)()
    assert out.shape == (1, 100, 70) and np.allclose(out, 1.0)
    assert all(s == (1, 3, 32, 32) for s in calls) and len(calls) == 6 * 4  # 100 -> 112 px: 6 origins; 70 -> 80 px: 4
