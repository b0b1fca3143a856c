"""The client (app/client.py) carrying out lifecycle actions on its shell and device, without root.

The client's tunnel runs against a server over net/fake.py's edges on a virtual clock (shell_lab.py);
lifecycle timers are driven through `Client.tick()` as the daemon's ticker does, with CLOCK_BOOTTIME and
CLOCK_MONOTONIC from the lab, so that a suspend is BOOTTIME jumping ahead alone.
"""

from __future__ import annotations

from shell_lab import (
    CLIENT_IP,
    CLIENT_NEW_ADDRESS,
    SERVER_ADDRESS,
    SERVER_IP,
    ShellLab,
    echo_request,
    run_lab,
)

from dnsguard.app.client import Client
from dnsguard.config import Config, TunnelConfig
from dnsguard.lifecycle import Lifecycle, LifecycleSettings, State
from dnsguard.net.firewall import KillSwitch


class RecordingKillSwitch(KillSwitch):
    """A kill switch that records what would be done to nftables instead of doing it."""

    calls: list[str] = []

    def apply(self) -> None:
        self.calls.append("apply")

    @staticmethod
    def remove() -> None:
        RecordingKillSwitch.calls.append("remove")


def start_client(lab: ShellLab, **settings: float | None) -> tuple[Client, list[State]]:
    """A client whose tunnel is started as `Client.run` starts it, on the lab's client host."""
    states: list[State] = []
    tunnel = TunnelConfig(interface="dg0", exclude_local_networks=False)
    client = Client(
        "client.yaml",
        Config(tunnel=tunnel),
        lifecycle=Lifecycle(LifecycleSettings(**settings), random_source=lambda: 0.5),  # type: ignore[arg-type]
        on_state=states.append,
        clock=lab.clock.boottime,
        monotonic_clock=lab.clock.monotonic,
    )
    lab.client.shell = client.start_tunnel(lab.client.device, lab.client.tun, lab.client.udp)
    client.run_lifecycle()
    return client, states


async def tick_for(lab: ShellLab, client: Client, seconds: float) -> None:
    """Run the client's ticker for `seconds` of virtual time, as its `_tick` task does."""
    end = lab.clock.monotonic() + seconds
    while (left := end - lab.clock.monotonic()) > 0:
        await lab.run_for(min(client.tick(), left))


async def connected_client(lab: ShellLab, **settings: float | None) -> tuple[Client, list[State]]:
    client, states = start_client(lab, **settings)
    await lab.run_for(0.01)
    assert states == [State.CONNECTING, State.CONNECTED]
    return client, states


def test_the_first_connect_initiates_one_handshake_on_the_bound_socket_and_reports_connected() -> None:
    async def main(lab: ShellLab) -> None:
        started = lab.clock.boottime()
        client, states = start_client(lab)
        assert len(lab.client.initiations()) == 1
        await lab.run_for(0.01)
        assert states == [State.CONNECTING, State.CONNECTED]
        handshake = client.lifecycle.last_handshake
        assert handshake is not None and started <= handshake < started + 0.01
        assert lab.client.udp.rebinds == 0
        assert len(lab.client.initiations()) == 1

    run_lab(main)


def test_a_path_change_rebinds_the_endpoint_and_handshakes_again_while_tun_and_kill_switch_stay_up() -> None:
    async def main(lab: ShellLab) -> None:
        client, states = await connected_client(lab, debounce=0.5)
        RecordingKillSwitch.calls = []
        client.kill_switch = RecordingKillSwitch("dg0", 0x6447)
        lab.client.udp.next_address = CLIENT_NEW_ADDRESS
        changed_at = lab.clock.boottime()

        client.on_path_change("uplink address")
        client.on_path_change("default route")  # one burst: one reconnection
        await lab.run_for(0.6)
        assert lab.client.udp.rebinds == 1
        initiation = lab.client.initiations()[-1]
        assert initiation.source == CLIENT_NEW_ADDRESS
        assert initiation.time is not None and changed_at + 0.5 <= initiation.time < changed_at + 0.6
        assert states == [State.CONNECTING, State.CONNECTED, State.REASSERTING, State.CONNECTED]

        assert RecordingKillSwitch.calls == []
        assert not lab.client.tun.closed
        ping = echo_request(CLIENT_IP, SERVER_IP)
        lab.client.tun.route(ping)
        await lab.run_for(0.01)
        assert lab.server.tun.take_written() == [ping]

    run_lab(main)


def test_a_handshake_timeout_backs_off_then_retries_from_a_fresh_socket() -> None:
    async def main(lab: ShellLab) -> None:
        lab.network.blocked.add(SERVER_ADDRESS[0])
        client, states = start_client(lab, handshake_timeout=5.0, backoff_initial=1.0)
        started = lab.clock.boottime()
        await tick_for(lab, client, 5.9)
        assert lab.client.udp.rebinds == 0, "the timeout itself only schedules the retry"
        await tick_for(lab, client, 0.2)
        # The start was attempt 1; the retry after 5 s + 1 s of backoff is attempt 2: a fresh socket.
        assert lab.client.udp.rebinds == 1
        retry = lab.client.initiations()[-1]
        assert retry.time is not None and started + 6.0 <= retry.time < started + 6.1
        assert lab.client.initiations()[0].time == started
        assert states == [State.CONNECTING]

    run_lab(main)


def test_data_sent_without_an_answer_for_the_dead_peer_timeout_sends_a_probe_handshake() -> None:
    async def main(lab: ShellLab) -> None:
        # 8 s: before the device's own new-handshake timer (15 s), so the initiation is the probe's.
        client, states = await connected_client(lab, dead_peer_timeout=8.0)
        lab.network.blocked.add(SERVER_ADDRESS[0])
        before = len(lab.client.initiations())
        lab.client.tun.route(echo_request(CLIENT_IP, SERVER_IP))
        sent_at = lab.clock.boottime()
        await tick_for(lab, client, 7.9)
        assert len(lab.client.initiations()) == before
        await tick_for(lab, client, 0.2)
        probes = lab.client.initiations()[before:]
        assert len(probes) == 1
        assert probes[0].time is not None and sent_at + 8.0 <= probes[0].time < sent_at + 8.1
        assert lab.client.udp.rebinds == 0, "a probe keeps the socket"
        assert states[-1] is State.CONNECTED

    run_lab(main)


def test_giving_up_reports_the_failed_state_and_stops_the_client() -> None:
    async def main(lab: ShellLab) -> None:
        lab.network.blocked.add(SERVER_ADDRESS[0])
        client, states = start_client(lab, give_up_after=20.0)
        await tick_for(lab, client, 19.0)
        assert states == [State.CONNECTING]
        assert not client._stop.is_set()
        await tick_for(lab, client, 1.5)
        assert states == [State.CONNECTING, State.FAILED]
        assert client.lifecycle.state is State.FAILED
        assert client._stop.is_set(), "run() returns and tears down on GiveUp"

    run_lab(main)


def test_a_wake_from_suspend_rebinds_and_handshakes_at_once() -> None:
    async def main(lab: ShellLab) -> None:
        client, states = await connected_client(lab)
        client.tick()
        await lab.run_for(1.0)
        client.tick()
        assert lab.client.udp.rebinds == 0, "a tick on time is no wake"
        before = len(lab.client.initiations())

        lab.clock.suspend(600.0)
        woke_at = lab.clock.boottime()
        client.tick()
        assert lab.client.udp.rebinds == 1
        assert [sent.time for sent in lab.client.initiations()[before:]] == [woke_at]
        await lab.run_for(0.01)
        assert states[-2:] == [State.REASSERTING, State.CONNECTED]
        ping = echo_request(CLIENT_IP, SERVER_IP)
        lab.client.tun.route(ping)
        await lab.run_for(0.01)
        assert lab.server.tun.take_written() == [ping]

    run_lab(main)
