"""A server killed and started again: its clients carry traffic again within 2 s of its return,
with the default (15 s) dead-peer timeout, however short or long the outage."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from dnsguard.lab import Lab
from dnsguard.lab.peers import wait_ping
from dnsguard.lab.scenario import SERVER_TUNNEL4, FullTunnel, start_full_tunnel

RECOVERY_BOUND = 2.0


@pytest.fixture
def tunnel() -> Iterator[FullTunnel]:
    with Lab() as lab:
        full = start_full_tunnel(lab, lan=False)
        try:
            yield full
        except Exception:
            print(full.client.log())
            print(full.server.log())
            raise


@pytest.mark.parametrize("outage", [0.0, 7.0, 22.0], ids=["at-once", "7s", "22s-past-dead-peer"])
def test_clients_are_back_within_two_seconds_of_the_server(tunnel: FullTunnel, outage: float) -> None:
    lab, server, client = tunnel.lab, tunnel.server, tunnel.client
    # Traffic while the server is away, as a user's would be: the client's data goes unanswered.
    pinger = lab.popen("client", ["ping", "-i", "0.2", "-W", "1", SERVER_TUNNEL4], log_name="ping")
    time.sleep(1.0)
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    time.sleep(outage)
    spawned = time.monotonic()
    server.start()
    ready = time.monotonic()
    recovered = wait_ping(lab, "client", SERVER_TUNNEL4, timeout=30)
    lab.stop(pinger)
    print(
        f"outage {outage:.0f} s: server ready {ready - spawned:.2f} s after it was started; "
        f"client back {recovered:.2f} s after the server was ready"
    )
    assert "initiating to 1 peers at their last known endpoints" in server.log()
    if outage > 20:
        # The client had given the server up and rebound its socket: still found at the same port.
        assert "reconnecting (dead_peer" in client.log(), client.log()
    assert recovered <= RECOVERY_BOUND, client.log()
    assert client.process is not None and client.process.poll() is None
