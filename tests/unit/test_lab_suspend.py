"""The lab's simulated suspend: CLOCK_BOOTTIME moves on by the time "slept", CLOCK_MONOTONIC does not."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from dnsguard.lab.suspend import BoottimeOffset, simulate_suspend
from dnsguard.lifecycle import WakeDetector

CHILD = """
import sys, time
from pathlib import Path
from dnsguard.lab.suspend import BoottimeOffset
from dnsguard.lifecycle.clock import boottime  # bound before the patch, as the daemon's modules are

BoottimeOffset(Path(sys.argv[1])).install()
for _ in range(2):
    print(boottime() - time.monotonic(), flush=True)
    sys.stdin.readline()
"""


def test_offset_moves_boottime_only_and_reads_as_a_suspend(tmp_path: Path) -> None:
    offset = BoottimeOffset(tmp_path / "offset")
    offset.reload()  # no file yet: no offset
    assert offset.seconds == 0.0
    detector = WakeDetector(tick_interval=1.0)
    detector.observe(offset.clock_gettime(time.CLOCK_BOOTTIME), offset.clock_gettime(time.CLOCK_MONOTONIC))
    (tmp_path / "offset").write_text("120\n")
    offset.reload()
    boot, mono = offset.clock_gettime(time.CLOCK_BOOTTIME), offset.clock_gettime(time.CLOCK_MONOTONIC)
    assert boot - time.clock_gettime(time.CLOCK_BOOTTIME) == pytest.approx(120.0, abs=1.0)
    assert mono - time.clock_gettime(time.CLOCK_MONOTONIC) == pytest.approx(0.0, abs=1.0)
    assert offset.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.clock_gettime_ns(
        time.CLOCK_BOOTTIME
    ) == pytest.approx(120e9, abs=1e9)
    wake = detector.observe(boot, mono)
    assert wake is not None and wake.suspended and wake.gap == pytest.approx(120.0, abs=1.0)


def test_a_frozen_process_wakes_with_its_boottime_moved_on(tmp_path: Path) -> None:
    offset_file = tmp_path / "offset"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(offset_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        before = float(child.stdout.readline())
        simulate_suspend(child.pid, offset_file, slept=300.0, frozen_for=0.1)
        child.stdin.write("\n")
        child.stdin.flush()
        after = float(child.stdout.readline())
        assert after - before == pytest.approx(300.0, abs=1.0)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
