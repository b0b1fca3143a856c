"""bench/dns_latency.py's readout of a server's runs (no root)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def latency() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        from sibling import load_bench

        return load_bench("dns_latency.py")
    finally:
        sys.path.remove(str(BENCH))


def test_runs_per_answer_and_cpu_per_run(latency: ModuleType) -> None:
    assert latency.runs_line(0.5, 10_000, 20_000) == "  runs 0.50/answer,  50.0 us each"
    assert latency.runs_line(0.0, 0, 20_000) == ""  # a server whose threads were never read
    assert latency.runs_line(0.5, 10_000, 0) == ""
