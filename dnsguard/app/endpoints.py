"""What a restarted server remembers of its peers: where each was last heard from.

A restarted server has lost every session. Its clients keep sending under keys it no longer has,
and the protocol gives them only their own timers to notice: the dead-peer timer (15 s of
unanswered data), then one initiation per REKEY_TIMEOUT (5 s) at most. Nothing a client can see
tells it that the server is back, so a client alone cannot be back within 2 s of the server.

The server can. It writes the last authenticated endpoint of each peer to its state directory
whenever one changes (roaming is rare, so this is not per packet), and when it starts it points
each peer without a configured endpoint at the remembered one and initiates a handshake there,
as wireguard-go does for a peer with a configured endpoint. A freshly started device has sent no
initiation, so the REKEY_TIMEOUT spacing between initiations is respected; the client answers as
responder, which has no spacing rule beyond the 20 ms flood limit, and its tunnel carries traffic
again one round trip after the server is up, however long or short the outage was. A peer that is
no longer there costs the usual bounded retransmissions (MAX_TIMER_HANDSHAKES, then silence).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from dnsguard.errors import ConfigError
from dnsguard.net.journal import RUN_DIR, state_file
from dnsguard.wireguard.device import Device
from dnsguard.wireguard.events import Address
from dnsguard.wireguard.keys import PublicKey, parse_public_key

log = logging.getLogger(__name__)


def memory_path(interface: str) -> Path:
    """The server's endpoint file for `interface` in this network namespace.

    In systemd's StateDirectory= when the unit has one (the server's unit has no /run/dnsguard,
    and /var/lib also outlives a reboot), else beside the client's state files.
    """
    state_directory = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    base = Path(state_directory) if state_directory else RUN_DIR
    return state_file(base, interface).with_suffix(".endpoints.json")


class EndpointMemory:
    """The file of remembered peer endpoints: {public key: [host, port]}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: dict[PublicKey, Address] = {}

    def load(self) -> dict[PublicKey, Address]:
        """The remembered endpoints; an unreadable or malformed file remembers nothing."""
        try:
            document = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(document, dict):
            return {}
        endpoints: dict[PublicKey, Address] = {}
        for text, value in document.items():
            try:
                key = parse_public_key(text)
            except ConfigError:
                continue
            if (
                isinstance(value, list)
                and len(value) == 2
                and isinstance(value[0], str)
                and isinstance(value[1], int)
            ):
                endpoints[key] = (value[0], value[1])
        self._saved = dict(endpoints)
        return endpoints

    def save(self, device: Device) -> None:
        """Write every peer's current endpoint, if any changed since the last write."""
        endpoints = {key: peer.endpoint for key, peer in device.peers.items() if peer.endpoint is not None}
        if endpoints == self._saved:
            return
        temporary = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps({key: list(address) for key, address in endpoints.items()}))
            temporary.replace(self.path)
        except OSError as exc:
            log.warning("cannot remember peer endpoints in %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                temporary.unlink()
            return
        self._saved = endpoints

    def reconnect(self, device: Device, now: float) -> int:
        """Point peers at their remembered endpoints and initiate to each; returns how many."""
        count = 0
        for key, address in self.load().items():
            peer = device.peers.get(key)
            if peer is None or peer.configured_endpoint is not None:
                continue
            device.reset_endpoint(key, address)
            device.force_handshake(now, key, keep_pending=True)
            count += 1
        return count
