"""bench/rtt_stages.py's matching of a ping's eight stamps (no root: captures given as text)."""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.unit import bench_scripts


@pytest.fixture(scope="module")
def stages() -> ModuleType:
    return bench_scripts.load("rtt_stages.py")


def echo_line(at: float, kind: str, sequence: int) -> str:
    return f"{at:.6f} IP 100.64.0.2 > 100.64.0.1: ICMP echo {kind}, id 7, seq {sequence}, length 408"


def test_echo_stamps_are_read_by_kind_and_sequence(stages: ModuleType, tmp_path: Path) -> None:
    capture = tmp_path / "inner.txt"
    capture.write_text(
        "\n".join([echo_line(1.0, "request", 1), "listening on dg0", echo_line(1.5, "reply", 1)]) + "\n"
    )
    assert stages.echo_stamps(capture) == {("request", 1): 1.0, ("reply", 1): 1.5}


def test_a_datagram_a_capture_missed_costs_that_ping_alone(stages: ModuleType) -> None:
    client_inner, server_inner = {}, {}
    for sequence, at in ((1, 10.0), (2, 20.0)):
        client_inner["request", sequence] = at
        server_inner["request", sequence] = at + 0.3
        server_inner["reply", sequence] = at + 0.4
        client_inner["reply", sequence] = at + 0.7
    # The client's uplink saw both ways of both pings; the server's missed ping 1's request.
    client_outer = [10.1, 10.6, 20.1, 20.6]
    server_outer = [10.5, 20.2, 20.5]

    assert stages.ping_points(client_inner, server_inner, client_outer, server_outer, 1) is None
    assert stages.ping_points(client_inner, server_inner, client_outer, server_outer, 2) == pytest.approx(
        [20.0, 20.1, 20.2, 20.3, 20.4, 20.5, 20.6, 20.7]
    )
    assert stages.ping_points(client_inner, server_inner, client_outer, server_outer, 3) is None  # never seen


def test_cpu_seconds_sum_every_thread_of_the_processes(stages: ModuleType) -> None:
    import os
    import threading

    def spin() -> None:
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass

    release = threading.Event()
    spun = threading.Event()

    def worker() -> None:
        spin()
        spun.set()
        release.wait()

    before = stages.cpu_seconds([os.getpid(), 2**22 + 1])  # a pid that is gone counts 0
    thread = threading.Thread(target=worker)
    thread.start()
    try:
        spin()
        spun.wait()
        assert stages.cpu_seconds([os.getpid()]) - before >= 0.1  # the main thread's and the worker's
    finally:
        release.set()
        thread.join()


def test_scheduled_counts_each_time_a_thread_is_put_back_on_a_cpu(stages: ModuleType) -> None:
    import os

    _, runs_before = stages.scheduled([os.getpid(), 2**22 + 1])  # a pid that is gone counts 0
    for _ in range(5):
        time.sleep(0.002)  # off the CPU, then on again: a run each
    on_cpu, runs = stages.scheduled([os.getpid()])
    assert runs - runs_before >= 5
    assert on_cpu > 0
