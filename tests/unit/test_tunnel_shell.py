"""The tunnel shell (app/tunnel.py) between two in-memory hosts: TUN to device to UDP and back, timers, drops.

No root and no network: the edges are net/fake.py's, the loop a VirtualClockLoop (see shell_lab.py).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
from typing import Any

import pytest
from shell_lab import (
    CLIENT_ADDRESS,
    CLIENT_IP,
    CLIENT_NEW_ADDRESS,
    SERVER_ADDRESS,
    SERVER_IP,
    ShellLab,
    echo_request,
    run_lab,
    udp_packet,
)

from dnsguard.app import tunnel
from dnsguard.app.tunnel import BATCH, IDLE_AFTER, READ_AHEAD, TunnelShell
from dnsguard.net.fake import FakeNetwork, FakeTun, FakeUdpEndpoint
from dnsguard.net.udp import UdpEndpoint
from dnsguard.wireguard import Device, generate_private_key, public_key
from dnsguard.wireguard.flow_queues import FlowQueues


def test_a_ping_from_the_client_tun_arrives_decrypted_on_the_server_tun_and_its_reply_comes_back() -> None:
    async def main(lab: ShellLab) -> None:
        shell = lab.client_shell()
        ping = echo_request(CLIENT_IP, SERVER_IP)
        lab.client.tun.route(ping)
        await lab.run_for(0.01)
        assert lab.server.tun.take_written() == [ping]
        assert [sent.destination for sent in lab.client.udp.sent][:1] == [SERVER_ADDRESS]
        assert all(ping not in sent.data for sent in lab.client.udp.sent), "the ping left in clear"

        reply = echo_request(SERVER_IP, CLIENT_IP, sequence=2)
        lab.server.tun.route(reply)
        await lab.run_for(0.01)
        assert lab.client.tun.take_written() == [reply]
        assert (shell.stats.tx_packets, shell.stats.rx_packets) == (1, 1)
        assert lab.server.shell is not None
        assert (lab.server.shell.stats.rx_packets, lab.server.shell.stats.tx_packets) == (1, 1)

    run_lab(main)


def test_a_packet_from_the_tun_is_sent_before_the_batch_bookkeeping_runs() -> None:
    """The lifecycle's per-batch call is off a packet's way out: it comes after the send."""

    async def main(lab: ShellLab) -> None:
        shell = await lab.client_shell_with_session()
        sent_when_called: list[int] = []
        shell.on_batch = lambda received, now: sent_when_called.append(len(lab.client.udp.sent))
        sent_before = len(lab.client.udp.sent)
        lab.client.tun.route(echo_request(CLIENT_IP, SERVER_IP, 1))
        await lab.run_for(0.01)
        assert len(lab.client.udp.sent) == sent_before + 1
        # The TUN batch's call saw the datagram already sent (the server's reply, if any, came later).
        assert sent_when_called[0] == sent_before + 1

    run_lab(main)


@pytest.mark.source_only
def test_more_packets_than_one_batch_all_arrive_in_order() -> None:
    async def main(lab: ShellLab) -> None:
        shell = await lab.client_shell_with_session()
        batches: list[bool] = []
        shell.on_batch = lambda received, now: batches.append(received)
        sizes: list[int | str] = []  # each send: the batch's size, or "lone" (send_lone took it)
        send_packets, send_lone = shell.device.send_packets, shell.device.send_lone

        def recording_send_packets(packets: list[bytes], now: float) -> None:
            sizes.append(len(packets))
            send_packets(packets, now)

        def recording_send_lone(packet: bytes, now: float, transmit: Any) -> bool:
            taken = send_lone(packet, now, transmit)
            if taken:
                sizes.append("lone")
            return taken

        shell.device.send_packets = recording_send_packets  # type: ignore[method-assign]
        shell.device.send_lone = recording_send_lone  # type: ignore[method-assign]
        limits: list[int] = []
        read_batch = lab.client.tun.read_batch

        def recording_read_batch(limit: int = BATCH, ends: list[int] | None = None) -> list[bytes]:
            limits.append(limit)
            return read_batch(limit, ends)

        lab.client.tun.read_batch = recording_read_batch  # type: ignore[method-assign]
        await lab.run_for(IDLE_AFTER * 10)
        pings = [echo_request(CLIENT_IP, SERVER_IP, sequence) for sequence in range(1, 2 * BATCH + 11)]
        lab.client.tun.route(*pings)
        await lab.run_for(0.01)
        assert lab.server.tun.take_written() == pings
        assert shell.stats.tx_packets == 1 + len(pings)
        # The TUN was idle (its last wake-up, long ago, read one packet): this wake-up reads one packet and
        # sends it alone. The loop wakes again at once for the rest, now a busy queue: read ahead into the
        # shell's queue, and sent at most BATCH packets a turn, each batch handed over in one call.
        assert limits == [1, READ_AHEAD]
        assert sizes == ["lone", BATCH, BATCH, 9]
        assert batches == [False] * 4
        # Quiet again: the first lone packet still finds a queue that was busy at its last wake-up and
        # drains it; the next one, a wake-up that read one packet before it, is a single read.
        for sequence in (998, 999):
            await lab.run_for(IDLE_AFTER * 10)
            lab.client.tun.route(echo_request(CLIENT_IP, SERVER_IP, sequence))
            await lab.run_for(0.01)
        assert limits[2:] == [READ_AHEAD, 1] and sizes[4:] == [1, "lone"]

    run_lab(main)


def slow_device(shell: TunnelShell, seconds_per_batch: float) -> None:
    """The shell's clock moves on by `seconds_per_batch` for each BATCH packets the device encrypts."""
    worked = [0.0]
    lab_clock = shell.clock
    shell.clock = lambda: lab_clock() + worked[0]
    send_packets = shell.device.send_packets

    def working_send_packets(packets: list[bytes], now: float) -> None:
        worked[0] += seconds_per_batch * len(packets) / BATCH
        send_packets(packets, now)

    shell.device.send_packets = working_send_packets  # type: ignore[method-assign]


async def through_slow_device(
    lab: ShellLab, packets: list[bytes], seconds_per_batch: float
) -> tuple[TunnelShell, list[bytes]]:
    """Route the packets into the client's TUN at once, its device as slow as given: (shell, delivered)."""
    shell = await lab.client_shell_with_session()
    slow_device(shell, seconds_per_batch)
    lab.client.tun.route(*packets)
    await lab.run_for(1.0)
    return shell, lab.server.tun.take_written()


def is_subsequence(part: list[bytes], whole: list[bytes]) -> bool:
    rest = iter(whole)
    return all(any(packet == candidate for candidate in rest) for packet in part)


@pytest.mark.source_only
def test_a_queue_that_stands_in_front_of_the_encryption_loses_packets_from_its_head() -> None:
    """The TUN fills four times faster than the device encrypts: the wait grows past CoDel's target."""

    async def main(lab: ShellLab) -> None:
        pings = [echo_request(CLIENT_IP, SERVER_IP, sequence) for sequence in range(1, 40_001)]
        shell, delivered = await through_slow_device(lab, pings, 0.001)
        drops = shell.stats.queue_drops
        assert drops >= 2
        assert drops == shell.queues.drops
        assert len(delivered) == len(pings) - drops
        assert is_subsequence(delivered, pings)  # in order, none twice
        assert delivered[:2000] == pings[:2000]  # nothing dropped before the wait stood for an interval

    run_lab(main)


def slow_receiver(lab: ShellLab, seconds_per_batch: float) -> TunnelShell:
    """The server's clock (its shell's and its socket's stamps) moves on by `seconds_per_batch` for
    each BATCH datagrams its device opens."""
    shell = lab.server.shell
    assert shell is not None
    worked = [0.0]
    lab_clock = shell.clock

    def clock() -> float:
        return lab_clock() + worked[0]

    shell.clock = clock
    lab.server.udp._socket.clock = clock
    receive_datagrams = shell.device.receive_datagrams

    def working_receive(datagrams: Any, now: float, write: Any = None) -> list[bytes]:
        worked[0] += seconds_per_batch * len(datagrams) / BATCH
        return receive_datagrams(datagrams, now, write)

    shell.device.receive_datagrams = working_receive  # type: ignore[method-assign,assignment]
    return shell


@pytest.mark.source_only
@pytest.mark.parametrize(
    ("count", "receive_codel"),
    [(40_000, True), (8_000, True), (40_000, False)],
    ids=["standing", "a-burst", "standing-without-receive-codel"],
)
def test_a_queue_that_stands_in_the_socket_loses_transport_datagrams_as_they_are_read(
    count: int, receive_codel: bool
) -> None:
    """The peer's datagrams queue in the server's socket while its reader is off; the server then opens
    BATCH of them a millisecond. With receive_codel, 40,000 keep the wait above CoDel's target for
    312 ms: datagrams are dropped as they are read; 8,000 drain in 62 ms, under an interval: none is.
    Without it (the default) none is either way."""

    async def main(lab: ShellLab) -> None:
        await lab.client_shell_with_session()
        server = slow_receiver(lab, 0.001)
        server.receive_codel = receive_codel
        server.stop()
        pings = [echo_request(CLIENT_IP, SERVER_IP, sequence) for sequence in range(1, count + 1)]
        lab.client.tun.route(*pings)
        await lab.run_for(0.05)
        assert len(lab.server.udp._socket.inbox) == count
        server.start()
        await lab.run_for(1.0)
        delivered = lab.server.tun.take_written()
        drops = server.stats.arrival_drops
        if count == 8_000 or not receive_codel:
            assert drops == 0
            assert delivered == pings
            return
        assert drops >= 2
        assert len(delivered) == len(pings) - drops
        assert is_subsequence(delivered, pings)  # in order, none twice
        assert delivered[:12_000] == pings[:12_000]  # nothing dropped before the wait stood an interval
        assert all(peer.current_keypair is not None for peer in server.device.peers.values())

    run_lab(main)


@pytest.mark.source_only
def test_a_ping_behind_an_upload_goes_out_ahead_of_the_uploads_backlog() -> None:
    async def main(lab: ShellLab) -> None:
        upload = [udp_packet(CLIENT_IP, SERVER_IP, sequence) for sequence in range(3000)]
        ping = echo_request(CLIENT_IP, SERVER_IP, 1)
        _shell, delivered = await through_slow_device(lab, [*upload, ping], 0.001)
        assert ping in delivered
        # Read once its turn in the TUN came (READ_AHEAD a turn), then sent at the next turn, ahead of
        # the upload's backlog (about 2,200 packets by then).
        assert delivered.index(ping) <= (3000 // READ_AHEAD + 2) * BATCH
        assert delivered.index(ping) < len(upload) // 2

    run_lab(main)


def quiet_share(queue_by_destination: bool) -> float:
    """The share of the first 800 packets delivered that go to a destination with one flow, beside one
    with eight, the client's device slower than its TUN fills."""
    busy, quiet = "198.51.100.7", "198.51.100.8"
    shares = []

    async def main(lab: ShellLab) -> None:
        shell = await lab.client_shell_with_session(queue_by_destination=queue_by_destination)
        assert shell.queues.by_destination == queue_by_destination
        # As many queues as make a collision of the nine flows unlikely (see test_wireguard_flow_queues).
        shell.queues = FlowQueues(1 << 20, by_destination=queue_by_destination)
        slow_device(shell, 0.0001)
        packets = []
        for sequence in range(400):
            packets += [udp_packet(CLIENT_IP, busy, sequence, port=port) for port in range(40000, 40008)]
            packets.append(udp_packet(CLIENT_IP, quiet, sequence))
        lab.client.tun.route(*packets)
        await lab.run_for(1.0)
        first = lab.server.tun.take_written()[:800]
        assert len(first) == 800
        shares.append(sum(packet[16:20] == socket.inet_aton(quiet) for packet in first) / 800)
        shell.stop()
        assert shell.queues.by_destination == queue_by_destination  # a restarted shell keeps it

    run_lab(main)
    return shares[0]


@pytest.mark.source_only
def test_queues_by_destination_give_a_destination_with_one_flow_as_many_sends_as_one_with_eight() -> None:
    # Each TUN read brings 57 of its packets and a turn sends 128: about 0.45 is all it has to send.
    assert quiet_share(queue_by_destination=True) > 0.35
    assert quiet_share(queue_by_destination=False) < 0.2  # by flow alone: about one in nine


@pytest.mark.source_only
def test_a_burst_whose_wait_stays_under_the_target_loses_nothing() -> None:
    async def main(lab: ShellLab) -> None:
        pings = [echo_request(CLIENT_IP, SERVER_IP, sequence) for sequence in range(1, 40_001)]
        shell, delivered = await through_slow_device(lab, pings, 0.00001)
        assert delivered == pings
        assert shell.stats.queue_drops == 0

    run_lab(main)


@pytest.mark.source_only
def test_a_full_shell_queue_stops_reading_the_tun_until_half_of_it_is_sent(monkeypatch: Any) -> None:
    monkeypatch.setattr(tunnel, "QUEUE_LIMIT", 30_000)

    async def main(lab: ShellLab) -> None:
        shell = await lab.client_shell_with_session()
        turns: list[tuple[str, int]] = []
        for name in ("_pause_tun", "_resume_tun"):
            original = getattr(shell, name)

            def recording(original: Any = original, name: str = name) -> None:
                turns.append((name, shell.queues.bytes))
                original()

            setattr(shell, name, recording)
        pings = [echo_request(CLIENT_IP, SERVER_IP, sequence) for sequence in range(1, 3001)]
        lab.client.tun.route(*pings)
        await lab.run_for(0.1)
        assert lab.server.tun.take_written() == pings
        assert len(turns) >= 4
        for (name, queued), expected in zip(
            turns, itertools.cycle(["_pause_tun", "_resume_tun"]), strict=False
        ):
            assert name == expected
            assert queued >= 30_000 if name == "_pause_tun" else queued < 15_000

    run_lab(main)


def test_an_idle_socket_wake_up_opens_one_message_and_the_backlog_follows_in_batches() -> None:
    async def main(lab: ShellLab) -> None:
        shell = await lab.client_shell_with_session()
        calls: list[tuple[int, int]] = []
        receive = lab.client.udp.sockets[socket.AF_INET].receive
        written_before: list[int] = []

        def recording_receive(limit: int) -> list[tuple[bytes, tuple[str, int]]]:
            written_before.append(len(lab.client.tun.written))
            batch = receive(limit)
            calls.append((limit, len(batch)))
            return batch

        lab.client.udp.sockets[socket.AF_INET].receive = recording_receive  # type: ignore[method-assign]
        replies = [echo_request(SERVER_IP, CLIENT_IP, sequence) for sequence in range(1, BATCH + 11)]
        lab.server.tun.route(*replies)
        await lab.run_for(0.01)
        assert lab.client.tun.take_written()[-len(replies) :] == replies
        assert shell.stats.rx_packets >= len(replies)
        # The idle socket's wake-up: one message, written to the TUN before the socket is read again;
        # then the backlog, in batches.
        assert calls[0] == (1, 1) and calls[1][0] == BATCH
        assert written_before[1] == written_before[0] + 1
        for (limit, got), (next_limit, _) in itertools.pairwise(calls):
            if limit == 1 and got:
                assert next_limit == BATCH

    run_lab(main)


def test_handshakes_one_by_one_or_in_a_batch_put_the_server_under_load_for_a_second() -> None:
    """More handshake messages a second than the threshold make the device demand cookies (mac2),
    counted alike from an idle socket's single datagram and from a busy one's batch."""

    async def main(lab: ShellLab) -> None:
        server = lab.server.shell
        assert server is not None
        server.under_load_threshold = 3
        source = ("192.0.2.66", 40000)
        reads: list[int] = []
        receive = lab.server.udp.sockets[socket.AF_INET].receive

        def recording_receive(limit: int) -> list[tuple[bytes, tuple[str, int]]]:
            batch = receive(limit)
            reads.append(len(batch))
            return batch

        lab.server.udp.sockets[socket.AF_INET].receive = recording_receive  # type: ignore[method-assign]
        for _ in range(3):  # one by one, each wake-up an idle socket's single datagram
            lab.server.udp.inject(b"\x01" + bytes(147), source)
            await lab.run_for(0.01)
        assert [read for read in reads if read] == [1, 1, 1]
        assert not lab.server.device.under_load
        lab.server.udp.inject(b"\x02" + bytes(91), source)  # a response counts too
        await lab.run_for(0.01)
        assert lab.server.device.under_load

        await lab.run_for(1.5)
        lab.server.udp.inject(b"\x04" + bytes(47), source)  # no handshake for a second: load is over
        await lab.run_for(0.01)
        assert not lab.server.device.under_load

        await lab.run_for(1.5)
        reads.clear()
        for _ in range(5):  # a burst: the first wake-up reads one, the next the rest as a batch
            lab.server.udp.inject(b"\x01" + bytes(147), source)
        await lab.run_for(0.01)
        assert [read for read in reads if read] == [1, 4]
        assert lab.server.device.under_load

    run_lab(main)


@pytest.mark.source_only
def test_the_shell_arms_one_timer_for_the_devices_next_deadline_and_fires_it_exactly_then() -> None:
    async def main(lab: ShellLab) -> None:
        lab.network.blocked.add(SERVER_ADDRESS[0])
        shell = lab.client_shell()
        fired: list[float] = []
        handle_timer = lab.client.device.handle_timer

        def recording_handle_timer(now: float) -> None:
            fired.append(now)
            handle_timer(now)

        lab.client.device.handle_timer = recording_handle_timer  # type: ignore[method-assign]
        lab.client.tun.route(echo_request(CLIENT_IP, SERVER_IP))
        await lab.run_for(0.001)
        assert len(lab.client.initiations()) == 1
        deadline = lab.client.device.get_timer()
        assert deadline is not None and deadline > lab.clock.boottime()
        for _ in range(3):
            shell.flush()  # the same deadline again: the armed timer stays, no second one
        await lab.run_for(deadline - lab.clock.boottime() + 0.001)
        assert fired == [deadline]
        retransmit = lab.client.initiations()[1]
        assert retransmit.time == deadline

    run_lab(main)


def test_a_full_tun_queue_drops_and_counts_what_does_not_fit_and_delivers_the_rest() -> None:
    async def main(lab: ShellLab) -> None:
        lab.client_shell()
        lab.server.tun.write_capacity = 3
        pings = [echo_request(CLIENT_IP, SERVER_IP, sequence) for sequence in range(1, 6)]
        lab.client.tun.route(*pings)
        await lab.run_for(0.01)
        assert lab.server.tun.take_written() == pings[:3]
        assert lab.server.tun.queue_full == 2

        lab.client.tun.route(pings[4])
        await lab.run_for(0.01)
        assert lab.server.tun.take_written() == [pings[4]]
        assert lab.server.tun.queue_full == 2

    run_lab(main)


def test_a_packet_the_tun_refuses_is_dropped_and_counted_and_the_data_path_goes_on() -> None:
    async def main(lab: ShellLab) -> None:
        lab.client_shell()
        pings = [echo_request(CLIENT_IP, SERVER_IP, sequence) for sequence in range(1, 4)]
        lab.server.tun.refuse_writes = True
        lab.client.tun.route(pings[0], pings[1])
        await lab.run_for(0.01)
        assert lab.server.tun.take_written() == []
        assert lab.server.tun.write_errors == 2

        lab.server.tun.refuse_writes = False
        lab.client.tun.route(pings[2])
        await lab.run_for(0.01)
        assert lab.server.tun.take_written() == [pings[2]]

    run_lab(main)


def test_a_send_the_endpoint_refuses_is_counted_as_a_send_failure_and_the_next_one_goes_out() -> None:
    async def main(lab: ShellLab) -> None:
        shell = lab.client_shell()
        first, second = echo_request(CLIENT_IP, SERVER_IP, 1), echo_request(CLIENT_IP, SERVER_IP, 2)
        lab.client.tun.route(first)
        await lab.run_for(0.01)
        assert lab.server.tun.take_written() == [first]
        assert shell.stats.send_failures == 0

        lab.client.udp.refuse_sends = True
        lab.client.tun.route(second)
        await lab.run_for(0.01)
        assert shell.stats.send_failures == 1
        assert lab.server.tun.take_written() == []

        lab.client.udp.refuse_sends = False
        lab.client.tun.route(second)
        await lab.run_for(0.01)
        assert lab.server.tun.take_written() == [second]
        # Bytes count what left, through the batch path (the first, before a session) and the lone one.
        assert shell.stats.tx_bytes == sum(len(sent.data) for sent in lab.client.udp.sent)

    run_lab(main)


def test_after_a_rebind_the_shell_reads_the_new_socket_and_the_server_follows_the_new_address() -> None:
    async def main(lab: ShellLab) -> None:
        shell = lab.client_shell()
        lab.client.tun.route(echo_request(CLIENT_IP, SERVER_IP, 1))
        await lab.run_for(0.01)
        lab.server.tun.take_written()

        lab.client.udp.next_address = CLIENT_NEW_ADDRESS
        shell.rebind()
        ping = echo_request(CLIENT_IP, SERVER_IP, 2)
        lab.client.tun.route(ping)
        await lab.run_for(0.01)
        assert lab.server.tun.take_written() == [ping]
        assert lab.client.udp.sent[-1].source == CLIENT_NEW_ADDRESS

        reply = echo_request(SERVER_IP, CLIENT_IP, 3)
        lab.server.tun.route(reply)
        await lab.run_for(0.01)
        assert lab.server.udp.sent[-1].destination == CLIENT_NEW_ADDRESS
        assert lab.client.tun.take_written() == [reply]

    run_lab(main)


def test_a_stopped_shell_reads_nothing_more_and_fires_no_timer() -> None:
    async def main(lab: ShellLab) -> None:
        lab.network.blocked.add(SERVER_ADDRESS[0])
        shell = lab.client_shell()
        lab.client.tun.route(echo_request(CLIENT_IP, SERVER_IP))
        await lab.run_for(0.001)
        assert len(lab.client.initiations()) == 1
        shell.stop()
        lab.client.tun.route(echo_request(CLIENT_IP, SERVER_IP, 2))
        await lab.run_for(30.0)
        assert len(lab.client.tun.to_read) == 1
        assert len(lab.client.initiations()) == 1

    run_lab(main)


# -- keeping an idle tunnel's data path warm (performance.keep-warm) --------------------------------


def recording_warm_ups(lab: ShellLab, host: Any) -> list[float]:
    """The boottime of every Device.warm_up call of `host`'s device."""
    times: list[float] = []
    warm_up = host.device.warm_up

    def recording() -> None:
        times.append(lab.clock.boottime())
        warm_up()

    host.device.warm_up = recording
    return times


@pytest.mark.source_only
def test_a_packet_on_an_idle_tunnel_keeps_the_data_path_warm_for_keep_warm_seconds() -> None:
    async def main(lab: ShellLab) -> None:
        shell = await lab.client_shell_with_session(keep_warm=0.1)
        await lab.run_for(2.0)  # the session's own packets are a second behind: the ticks stopped
        warm_ups = recording_warm_ups(lab, lab.client)
        sent, counted = len(lab.client.udp.sent), shell.stats.warm_ups
        lab.client.tun.route(echo_request(CLIENT_IP, SERVER_IP, 1))
        await lab.run_for(0.0001)
        ping_at = lab.clock.boottime()
        assert len(lab.client.udp.sent) == sent + 1 and warm_ups == []  # the packet itself: no tick

        await lab.run_for(0.5)
        # A tick every 1 to 3 ms (KEEP_WARM_EVERY, 2, on average), the first a wait after the packet, the
        # last within a wait of keep_warm after it; then none.
        assert 0.1 / tunnel.KEEP_WARM_EVERY / 1.5 <= len(warm_ups) <= 0.1 / (tunnel.KEEP_WARM_EVERY / 2)
        gaps = [b - a for a, b in zip([ping_at, *warm_ups], warm_ups, strict=False)]
        assert all(
            tunnel.KEEP_WARM_EVERY / 2 - 1e-9 <= gap <= tunnel.KEEP_WARM_EVERY * 1.5 + 1e-9 for gap in gaps
        )
        assert len(set(round(gap, 6) for gap in gaps)) > 1, "the waits are drawn, not one period"
        assert warm_ups[-1] < ping_at + 0.1
        assert shell.stats.warm_ups == counted + len(warm_ups)
        # The ticks send nothing and count no packet.
        assert len(lab.client.udp.sent) == sent + 1 and shell.stats.tx_packets == 2
        # The next packet on the idle tunnel starts them again, and its datagram carries the next counter.
        lab.client.tun.route(echo_request(CLIENT_IP, SERVER_IP, 2))
        ticked = len(warm_ups)
        await lab.run_for(0.05)
        assert len(warm_ups) > ticked and warm_ups[-1] > ping_at + 0.5
        counters = [int.from_bytes(s.data[8:16], "little") for s in lab.client.udp.sent if s.data[0] == 4]
        assert counters[-1] == counters[-2] + 1
        assert lab.server.tun.take_written()[-2:] == [
            echo_request(CLIENT_IP, SERVER_IP, 1),
            echo_request(CLIENT_IP, SERVER_IP, 2),
        ]

    run_lab(main)


@pytest.mark.source_only
def test_the_server_keeps_warm_after_a_datagram_on_an_idle_tunnel() -> None:
    async def main(lab: ShellLab) -> None:
        await lab.client_shell_with_session()
        await lab.run_for(2.0)
        assert lab.server.shell is not None
        lab.server.shell.keep_warm = 0.05
        warm_ups = recording_warm_ups(lab, lab.server)
        lab.client.tun.route(echo_request(CLIENT_IP, SERVER_IP, 1))
        await lab.run_for(0.0001)
        received_at = lab.clock.boottime()
        await lab.run_for(0.2)
        assert warm_ups and all(received_at < at < received_at + 0.05 for at in warm_ups)

    run_lab(main)


@pytest.mark.source_only
def test_keep_warm_off_stopped_or_turned_off_runs_no_tick() -> None:
    async def main(lab: ShellLab) -> None:
        shell = await lab.client_shell_with_session()  # keep_warm 0: the shell's default
        await lab.run_for(2.0)
        warm_ups = recording_warm_ups(lab, lab.client)
        lab.client.tun.route(echo_request(CLIENT_IP, SERVER_IP, 1))
        await lab.run_for(0.5)
        assert warm_ups == []

        shell.keep_warm = 10.0  # a reload turns it on: the next packet on the idle tunnel starts it
        lab.client.tun.route(echo_request(CLIENT_IP, SERVER_IP, 2))
        await lab.run_for(0.05)
        assert warm_ups
        shell.keep_warm = 0.0  # and off: the next tick is the last, it does no work
        count = len(warm_ups)
        await lab.run_for(1.0)
        assert len(warm_ups) == count

        shell.keep_warm = 10.0
        lab.client.tun.route(echo_request(CLIENT_IP, SERVER_IP, 3))
        await lab.run_for(0.05)
        count = len(warm_ups)
        shell.stop()
        await lab.run_for(1.0)
        assert len(warm_ups) == count

    run_lab(main)


def test_a_shell_on_uvloop_pauses_resumes_rebinds_and_stops() -> None:
    # The daemons run on uvloop, whose remove_reader answers None where asyncio's answers a bool: a
    # compiled shell that read that answer stopped halfway with a TypeError (a paused TUN never
    # marked paused, so never resumed).
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        tun = FakeTun()
        udp = FakeUdpEndpoint(CLIENT_ADDRESS, FakeNetwork())
        shell = TunnelShell(Device(generate_private_key()), tun, udp)
        shell.start()
        shell._pause_tun()
        assert shell._tun_paused
        shell._resume_tun()
        assert not shell._tun_paused
        shell.rebind()
        shell.stop()
        udp.close()
        tun.close()

    uvloop.run(main())


def garbage(rng: random.Random) -> bytes:
    """A datagram an attacker might send a WireGuard port: random bytes, or a message type's header
    with a body of any length, or of the length of that type's message."""
    kind = rng.choice(["random", "typed", "sized"])
    if kind == "random":
        return rng.randbytes(rng.randint(0, 300))
    header = bytes([rng.randint(1, 4), 0, 0, 0])
    if kind == "typed":
        return header + rng.randbytes(rng.randint(0, 200))
    return header + rng.randbytes(rng.choice([144, 88, 60, 28, 40]))


@pytest.mark.parametrize("offloads", [True, False], ids=["gro", "recvmmsg"])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_garbage_through_real_sockets_is_counted_and_dropped_on_uvloop(
    family: socket.AddressFamily, offloads: bool
) -> None:
    # The daemons' whole receive path (a real UDP socket with GRO or recvmmsg, the shell on uvloop, the
    # device), compiled in CI: no datagram may raise, whatever its sender's address family.
    uvloop = pytest.importorskip("uvloop")
    errors: list[dict[str, Any]] = []
    sent = 600
    host = "127.0.0.1" if family == socket.AF_INET else "::1"

    async def main() -> tuple[int, int]:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        tun = FakeTun()
        udp = UdpEndpoint(0, offloads=offloads)
        device = Device(generate_private_key())
        device.add_peer(public_key(generate_private_key()), allowed_ips=["100.64.0.2/32"])
        shell = TunnelShell(device, tun, udp)
        shell.start()
        sender = socket.socket(family, socket.SOCK_DGRAM)
        rng = random.Random(family * 2 + offloads)
        try:
            for number in range(sent):
                sender.sendto(garbage(rng), (host, udp.port))
                if number % 20 == 0:
                    await asyncio.sleep(0.001)
            for _ in range(100):
                await asyncio.sleep(0.01)
                dropped = sum(device.counters.as_dict().values()) - device.counters.cookie_replies_sent
                if dropped >= sent:
                    break
            return dropped, len(tun.take_written())
        finally:
            shell.stop()
            sender.close()
            udp.close()
            tun.close()

    dropped, written = uvloop.run(main())
    assert errors == []
    assert (dropped, written) == (sent, 0)
