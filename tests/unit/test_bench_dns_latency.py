"""bench/dns_latency.py's readout of a server's runs (no root)."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.unit import bench_scripts


@pytest.fixture(scope="module")
def latency() -> ModuleType:
    return bench_scripts.load("dns_latency.py")


def test_runs_per_answer_and_cpu_per_run(latency: ModuleType) -> None:
    assert latency.runs_line(0.5, 10_000, 20_000) == "  runs 0.50/answer,  50.0 us each"
    assert latency.runs_line(0.0, 0, 20_000) == ""  # a server whose threads were never read
    assert latency.runs_line(0.5, 10_000, 0) == ""
