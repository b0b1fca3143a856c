"""The tunnel's I/O shell: binds the sans-I/O WireGuard device to a TUN and UDP sockets in asyncio.

A wake-up of a busy TUN or socket drains a whole batch (until EAGAIN), one of an idle one reads
one message (IDLE_AFTER); either is handed to the device in one call, and what the device produced
is flushed; one re-armed loop timer serves every protocol timer (aioquic's pattern). Time fed to
the device is CLOCK_BOOTTIME, converted to the loop's clock only to arm the timer, so timers stay
right across suspend.

Packets from a busy TUN wait in the shell's own queues, not in the kernel's ring: each wake-up reads
up to READ_AHEAD packets, stamped as read, and a turn of the loop sends at most BATCH of them. The
queue that a bulk upload builds in front of the encryption is then one whose waits are known: a
queue per flow, each held short by CoDel, served in turn (wireguard/flow_queues.py). The TUN's ring
has no qdisc, and a loss-based TCP fills it: 18 ms of round trip under load with cubic, where
wireguard-go keeps 2 by dropping early at a third of the throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from dnsguard.lifecycle.clock import boottime
from dnsguard.net.readers import stop_reading
from dnsguard.net.tun import PacketDevice
from dnsguard.net.udp import DatagramEndpoint, DatagramSocket
from dnsguard.wireguard.codel import ArrivalCoDel
from dnsguard.wireguard.device import Device
from dnsguard.wireguard.events import Address, Event
from dnsguard.wireguard.flow_queues import FlowQueues

log = logging.getLogger(__name__)

BATCH = 128
IDLE_AFTER = 0.001
"""Seconds without a wake-up after which the TUN, or the sockets, count as idle if that last wake-up read
a single packet (datagram). An idle queue's next wake-up reads one message (a packet or super-packet; a
datagram or GRO train) and hands it on, with no further read that would find the queue empty: on a
packet's way through an idle tunnel that read costs as much as the rest (15-60 us after a wake-up on a
VM). Readiness is level-triggered, so more waiting wakes the loop again at once, as a busy queue that is
then drained in batches; a queue whose last wake-up read more than one packet is drained, as a busy one,
which keeps a bulk transfer's wake-ups (a super-packet or a train each, often a millisecond apart) to one
drain each."""
READ_AHEAD = 4 * BATCH
"""Packets a busy TUN's wake-up reads into the shell's queues: more than one turn sends (BATCH), so that
a standing queue stands here, where CoDel sees its waits."""
QUEUE_LIMIT = 8 << 20
"""Bytes the shell's queues may hold. At the limit the TUN is not read until half of it is sent: the
kernel's ring then fills and drops what no longer fits (txqueuelen), as it would without the shell's
queues; memory stays bounded whatever the senders do."""

HANDSHAKE_TYPES = (1, 2)
"""First bytes of handshake initiations and responses: what the shell counts for the cookie load."""
KEEP_WARM_EVERY = 0.002
"""Mean seconds between keep-warm ticks; each wait is drawn from half to one and a half times this, so
that traffic at a fixed rate (a ping every 20 ms, a game's 60 Hz) does not meet a tick at the same point
every time. On the bench machine a lone packet's trip through the device took 14 us more after 0.5 ms
asleep than warm, 51 us more after 2 ms, 76 after 4 and 107 after 20 (bench/cold_packet.py --pause):
with 2 ms the round trip of an idle tunnel's ping was 0.90x what it was with 4 ms, and 1 ms gave no
more than 2 ms did for 1.4x its CPU (README, Performance)."""


@dataclass
class TunnelStats:
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    send_failures: int = 0
    queue_drops: int = 0
    """Packets from the TUN that CoDel dropped from the head of a flow's queue in the shell."""
    queue_marks: int = 0
    """ECN-capable packets from the TUN that CoDel marked CE instead of dropping them."""
    arrival_drops: int = 0
    """Datagrams CoDel dropped as they were read because the socket's queue stood (ArrivalCoDel)."""
    warm_ups: int = 0
    """Keep-warm ticks that ran the data path's code on throwaway data (Device.warm_up)."""


@dataclass
class TunnelShell:
    """Runs a Device against a TUN and a UDP endpoint on the running asyncio loop.

    The TUN and the endpoint are interfaces (net/tun.py, net/udp.py): the daemons pass the real
    ones, unit tests the in-memory fakes of net/fake.py.
    """

    device: Device
    tun: PacketDevice
    udp: DatagramEndpoint
    on_event: Callable[[Event], None] | None = None
    on_batch: Callable[[bool, float], None] | None = None
    """Called after each batch with (received_authenticated, now): lifecycle bookkeeping."""
    clock: Callable[[], float] = boottime
    stats: TunnelStats = field(default_factory=TunnelStats)

    keep_warm: float = 0.0
    """Seconds after the tunnel's last packet during which the shell wakes every few milliseconds
    (KEEP_WARM_EVERY) to run the data path's code on throwaway data (Device.warm_up), so that the next
    packet of a tunnel used now and then (a ping, a keystroke, a game's updates) finds that code in the
    CPU's caches: on the bench machine an idle ping's round trip lost a tenth to a fifth. 0 is off. The
    ticks start with a packet on an idle tunnel and stop this long after the last one."""
    rng: random.Random = field(default_factory=random.Random)
    """Draws the waits between keep-warm ticks."""

    receive_codel: bool = False
    """Judge each receive by how long its first datagram waited in the socket, and drop transport
    datagrams as CoDel says (ArrivalCoDel); the configuration's performance.receive-codel. Changed
    on a running shell with set_receive_codel, which has the sockets stamp datagrams, or stop."""

    queue_by_destination: bool = False
    """Share the send queues' turns by destination first, then by flow (FlowQueues' by_destination):
    on a server, each peer with packets waiting gets an equal share of the sends whatever its number
    of flows, when the daemon is what limits them."""

    under_load_threshold: int = 128
    """Handshake messages per second above which the device demands cookies (mac2), as wireguard-go
    does when its handshake queue fills; load is remembered for a second after it drops."""

    def __post_init__(self) -> None:
        self._handshake_window_start = 0.0
        self._handshakes_in_window = 0
        self._under_load_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._readers: list[int] = []
        # When the TUN and the sockets last woke the shell, and how many packets (datagrams) it read.
        self._tun_woke = self._udp_woke = float("-inf")
        self._tun_got = self._udp_got = 0
        self.queues = FlowQueues(by_destination=self.queue_by_destination)
        """Packets read from the TUN and not yet sent."""
        self._tun_paused = False
        self._send_scheduled = False
        self._warm: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.tun.fileno(), self._tun_readable)
        self._tun_paused = False
        self._add_socket_readers()
        self.flush()

    def stop(self) -> None:
        if self._loop is None:
            return
        for fd in self._readers:
            stop_reading(self._loop, fd)
        self._readers = []
        with contextlib.suppress(Exception):
            stop_reading(self._loop, self.tun.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._warm is not None:
            self._warm.cancel()
            self._warm = None
        self._loop = None
        self.queues = FlowQueues(by_destination=self.queue_by_destination)
        self._send_scheduled = False

    def set_receive_codel(self, on: bool) -> None:
        self.receive_codel = on
        for sock in self.udp.sockets.values():
            sock.measure_waits(on)

    def _add_socket_readers(self) -> None:
        assert self._loop is not None
        for sock in self.udp.sockets.values():
            sock.measure_waits(self.receive_codel)
            self._loop.add_reader(sock.fileno(), self._udp_readable, sock, ArrivalCoDel())
            self._readers.append(sock.fileno())

    def rebind(self) -> None:
        """Replace the sockets (path change, wake) without touching the TUN."""
        if self._loop is not None:
            for fd in self._readers:
                stop_reading(self._loop, fd)
            self._readers = []
        self.udp.rebind()
        if self._loop is not None:
            self._add_socket_readers()

    # -- data path ----------------------------------------------------------------------

    def _tun_readable(self) -> None:
        now = self.clock()
        idle = self._tun_got < 2 and now - self._tun_woke >= IDLE_AFTER and not self.queues.packets
        self._tun_woke = now
        if idle:
            packets = self.tun.read_batch(1)
            self._tun_got = len(packets)
            if len(packets) == 1 and self.device.send_lone(packets[0], now, self._transmit):
                self.flush()  # what the send queued (a rekey's initiation), events, the timer
                self._sent(1, now)
            elif packets:
                self._send(packets, now)
            if self._warm is None and self.keep_warm > 0:
                self._keep_warm()
            return
        ends: list[int] = []
        packets = self.tun.read_batch(READ_AHEAD, ends)
        self._tun_got = len(packets)
        if not packets:
            return
        self.queues.enqueue(packets, now, ends)
        if self.queues.bytes >= QUEUE_LIMIT:
            self._pause_tun()
        if not self._send_scheduled:
            self._send_queued()

    def _send(self, packets: list[bytes], now: float) -> None:
        self.device.send_packets(packets, now)
        # Sent before the bookkeeping below, which after an idle spell (a cold wake-up) takes tens of
        # microseconds that the packet need not wait for.
        self.flush()
        self._sent(len(packets), now)

    def _transmit(self, datagram: bytes, endpoint: Address) -> None:
        """Send one datagram the device sealed (send_lone) at once."""
        if self.udp.sendto(datagram, endpoint):
            self.stats.tx_bytes += len(datagram)
        else:
            self.stats.send_failures += 1

    def _sent(self, count: int, now: float) -> None:
        self.stats.tx_packets += count
        if self.on_batch is not None:
            self.on_batch(False, now)

    def _send_queued(self) -> None:
        """One turn's worth (BATCH) from the flows' queues, CoDel deciding the fate of what waited long."""
        self._send_scheduled = False
        if self._loop is None:
            return
        now = self.clock()
        queues = self.queues
        drops, marks = queues.drops, queues.marks
        batch = queues.dequeue(now, BATCH)
        self.stats.queue_drops += queues.drops - drops
        self.stats.queue_marks += queues.marks - marks
        if self._tun_paused and queues.bytes < QUEUE_LIMIT // 2:
            self._resume_tun()
        if batch:
            self._send(batch, now)
        if queues.packets and self._loop is not None:
            self._send_scheduled = True
            self._loop.call_soon(self._send_queued)

    def _pause_tun(self) -> None:
        if self._loop is not None and not self._tun_paused:
            stop_reading(self._loop, self.tun.fileno())
            self._tun_paused = True

    def _resume_tun(self) -> None:
        if self._loop is not None and self._tun_paused:
            self._loop.add_reader(self.tun.fileno(), self._tun_readable)
            self._tun_paused = False

    def _udp_readable(self, sock: DatagramSocket, arrivals: ArrivalCoDel) -> None:
        now = self.clock()
        idle = self._udp_got < 2 and now - self._udp_woke >= IDLE_AFTER
        self._udp_woke = now
        received = batch = sock.receive(1 if idle else BATCH)
        self._udp_got = len(batch)
        if not batch:
            return
        if self.receive_codel and not idle:  # an idle socket's one datagram found no queue
            batch = arrivals.judge(now, sock.waited, received, sock.more_waiting)
            if len(batch) < len(received):
                self.stats.arrival_drops += len(received) - len(batch)
        if len(batch) == 1:  # an idle tunnel's datagram: no generator to build on its way
            data = batch[0][0]
            handshakes = 1 if data and data[0] in HANDSHAKE_TYPES else 0
        else:
            handshakes = sum(1 for data, _ in batch if data and data[0] in HANDSHAKE_TYPES)
        if handshakes:
            self._count_handshakes(handshakes, now)
        elif self.device.under_load and now >= self._under_load_until:
            self.device.under_load = False
        on_batch = self.on_batch
        device = self.device
        received_before = device.authenticated_received
        packets = device.receive_datagrams(batch, now, self.tun.write_batch)
        self.stats.rx_bytes += sum(len(d) for d, _ in received)
        self.stats.rx_packets += len(packets)
        if on_batch is not None:
            on_batch(device.authenticated_received != received_before or bool(packets), now)
        self.flush()
        if idle and self._warm is None and self.keep_warm > 0:
            self._keep_warm()

    def _keep_warm(self) -> None:
        """One keep-warm tick: stop if no packet came for keep_warm seconds (or it is now 0), else warm
        the data path's code and wait for the next tick. A wake-up of an idle tunnel starts the ticks
        with a call of its own, which, as a tick within an eighth of the mean wait of a packet, does no
        work: the packet just ran that code."""
        self._warm = None
        loop = self._loop
        if loop is None:
            return
        since = self.clock() - max(self._tun_woke, self._udp_woke)
        if since >= self.keep_warm:
            return
        if since >= KEEP_WARM_EVERY / 8:
            self.device.warm_up()
            self.stats.warm_ups += 1
        self._warm = loop.call_later(KEEP_WARM_EVERY * (0.5 + self.rng.random()), self._keep_warm)

    def _count_handshakes(self, count: int, now: float) -> None:
        if now - self._handshake_window_start >= 1.0:
            self._handshake_window_start = now
            self._handshakes_in_window = 0
        self._handshakes_in_window += count
        if self._handshakes_in_window > self.under_load_threshold:
            self._under_load_until = now + 1.0
        self.device.under_load = now < self._under_load_until

    def flush(self) -> None:
        """Send what the device produced, deliver its events, and re-arm the timer."""
        datagrams = self.device.datagrams_to_send()
        if datagrams:
            sent, failed = self.udp.send_batch(datagrams)
            self.stats.tx_bytes += sent
            self.stats.send_failures += failed
        if self.on_event is not None:
            while (event := self.device.next_event()) is not None:
                self.on_event(event)
        self._rearm()

    def _rearm(self) -> None:
        loop = self._loop
        if loop is None:
            return
        deadline = self.device.get_timer()
        if deadline == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self.clock())
            self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.device.handle_timer(self.clock())
        self.flush()
