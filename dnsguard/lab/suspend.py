"""Run a dnsguard command on a CLOCK_BOOTTIME the lab can push forward: a suspend without suspending.

    python -m dnsguard.lab.suspend --offset-file PATH up -c client.yaml

A real suspend freezes every process, and on wake CLOCK_BOOTTIME has grown by the time slept
while CLOCK_MONOTONIC (and asyncio's loop clock with it) has not. The lab does the same to one
process: SIGSTOP freezes it, `simulate_suspend` adds the seconds slept to the offset file, SIGCONT
resumes it, and this launcher's SIGCONT handler reads the file before dnsguard runs again. From
then on every CLOCK_BOOTTIME reading in the process is that much later.

The patch sits on `time.clock_gettime`, below every dnsguard clock: modules that did
`from dnsguard.lifecycle.clock import boottime`, and defaults such as `clock=boottime` bound at
import, would keep calling the original function if only that function were replaced.
Lab only: the product never imports this module.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

_real_clock_gettime = time.clock_gettime
_real_clock_gettime_ns = time.clock_gettime_ns


class BoottimeOffset:
    """Seconds added to CLOCK_BOOTTIME readings, re-read from a file on SIGCONT."""

    def __init__(self, offset_file: Path) -> None:
        self.offset_file = offset_file
        self.seconds = 0.0

    def reload(self) -> None:
        try:
            text = self.offset_file.read_text().strip()
        except FileNotFoundError:
            return
        seconds = float(text or 0)
        if seconds != self.seconds:
            self.seconds = seconds
            # os.write, not print: this runs in a signal handler, maybe inside a buffered write.
            os.write(2, f"lab suspend: CLOCK_BOOTTIME offset now {seconds:+.1f} s\n".encode())

    def clock_gettime(self, clock_id: int) -> float:
        value = _real_clock_gettime(clock_id)
        return value + self.seconds if clock_id == time.CLOCK_BOOTTIME else value

    def clock_gettime_ns(self, clock_id: int) -> int:
        value = _real_clock_gettime_ns(clock_id)
        return value + int(self.seconds * 1e9) if clock_id == time.CLOCK_BOOTTIME else value

    def install(self) -> None:
        """Patch the time module and re-read the offset whenever the process is continued."""
        self.reload()
        time.clock_gettime = self.clock_gettime
        time.clock_gettime_ns = self.clock_gettime_ns

        def on_continue(_signum: int, _frame: FrameType | None) -> None:
            self.reload()

        signal.signal(signal.SIGCONT, on_continue)


def simulate_suspend(pid: int, offset_file: Path, slept: float, frozen_for: float = 1.0) -> float:
    """Freeze a process started through this launcher, move its boottime on by `slept`, resume it.

    Returns the wall-clock time (time.time()) of the SIGCONT: the moment of "wake".
    """
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(frozen_for)
        previous = float(offset_file.read_text().strip() or 0) if offset_file.exists() else 0.0
        offset_file.write_text(f"{previous + slept}\n")
    finally:
        woke = time.time()
        os.kill(pid, signal.SIGCONT)
    return woke


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--offset-file", required=True, type=Path)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the dnsguard command line")
    args = parser.parse_args(argv)
    BoottimeOffset(args.offset_file).install()
    from dnsguard.cli import main as dnsguard_main

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return dnsguard_main(command)


if __name__ == "__main__":
    raise SystemExit(main())
