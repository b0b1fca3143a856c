"""bench/tunnel.py's iperf3 handling: a failed run is retried once, then reported, never a traceback."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "tunnel.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_tunnel", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_tunnel"] = module
    spec.loader.exec_module(module)
    return module


class ScriptedLab:
    """Answers each `run` with the next scripted iperf3 outcome."""

    def __init__(self, *outcomes: tuple[int, str]) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def run(self, role: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls += 1
        self.argv = argv
        code, stdout = self.outcomes.pop(0)
        return subprocess.CompletedProcess(argv, code, stdout, "")


GOOD = json.dumps(
    {
        "end": {
            "sum_received": {"bits_per_second": 4.2e8, "bytes": 420_000_000},
            "sum_sent": {"retransmits": 7},
        }
    }
)
REFUSED = json.dumps({"start": {}, "error": "unable to connect to server"})


def test_a_failed_iperf3_run_is_retried_once(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: None)
    lab = ScriptedLab((1, REFUSED), (0, GOOD))
    mbps, carried, _cpu, retransmits = bench.iperf(lab, 1, False, [])
    assert (round(mbps), carried, retransmits, lab.calls) == (420, 420_000_000, 7, 2)


@pytest.mark.parametrize("stdout", [REFUSED, "", "not json", json.dumps({"end": {}})])
def test_two_failed_runs_are_reported_without_a_traceback(
    bench: ModuleType, stdout: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: None)
    lab = ScriptedLab((1, stdout), (1, stdout))
    assert bench.iperf(lab, 1, True, []) is None
    out = capsys.readouterr().out
    assert out.count("download attempt") == 2
    if stdout == REFUSED:
        assert "unable to connect to server" in out


def test_ping_summaries_parse_and_a_missing_one_is_none(bench: ModuleType) -> None:
    out = "--- x ping statistics ---\n5 packets\nrtt min/avg/max/mdev = 0.1/0.25/0.4/0.05 ms\n"
    assert bench.parse_ping(out) == 0.25
    assert bench.parse_ping("100% packet loss\n") is None


def test_the_baseline_contender_runs_dnsguard_from_the_named_checkout(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit, match="not a dnsguard checkout"):
        bench.baseline_contender(str(tmp_path))
    checkout = Path(__file__).resolve().parents[2]
    seen: list[dict[str, str]] = []
    monkeypatch.setattr(bench, "setup_dnsguard", lambda lab, filtering=None, env=None: seen.append(env))
    bench.baseline_contender(str(checkout))(object())
    # PYTHONSAFEPATH: the working directory (perhaps another checkout) must not shadow PYTHONPATH.
    assert seen == [{"PYTHONPATH": str(checkout), "PYTHONSAFEPATH": "1"}]


def test_a_congestion_control_goes_to_iperf3_only_when_asked_for(bench: ModuleType) -> None:
    lab = ScriptedLab((0, GOOD), (0, GOOD))
    bench.iperf_once(lab, 1, False, congestion="cubic")
    assert lab.argv[-2:] == ["-C", "cubic"]
    bench.iperf_once(lab, 1, False)
    assert "-C" not in lab.argv
