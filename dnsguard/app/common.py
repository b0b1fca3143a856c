"""Pieces shared by the daemons: config to device, endpoints, signals, logging, and the reload path."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dnsguard import native
from dnsguard.app.observe import ReloadCounter
from dnsguard.config import Config, PeerConfig, TunnelConfig, load_config
from dnsguard.config.addresses import parse_hostport
from dnsguard.errors import ConfigError, DnsguardError
from dnsguard.net.busy_poll import new_event_loop as busy_poll_loop
from dnsguard.net.busy_poll import selector_of as busy_poll_selector
from dnsguard.wireguard.keys import PublicKey

if TYPE_CHECKING:
    from dnsguard.wireguard.device import Device

log = logging.getLogger("dnsguard")

DEFAULT_PORT = 51820
DEFAULT_MTU = 1420


def resolve_endpoint(text: str) -> tuple[str, int]:
    """'host:port' (name or address) to a numeric (address, port); names resolve via the system."""
    host, port = parse_hostport(text, DEFAULT_PORT, "Endpoint")
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve endpoint {host!r}: {exc}", key="Endpoint") from None
    address = infos[0][4]
    return str(address[0]), int(address[1])


def peer_arguments(peer: PeerConfig) -> dict[str, object]:
    """Keyword arguments of Device.add_peer / update_peer for a configured peer."""
    return {
        "preshared_key": peer.preshared_key,
        "allowed_ips": peer.allowed_ips,
        "endpoint": resolve_endpoint(peer.endpoint) if peer.endpoint else None,
        "persistent_keepalive": peer.persistent_keepalive,
    }


def build_device(tunnel: TunnelConfig, now: float) -> Device:
    """A WireGuard device with the configured identity and peers."""
    # Imported here so that `dnsguard resolve` (no tunnel) does not load the crypto library.
    from dnsguard.wireguard.device import Device

    if not tunnel.private_key:
        raise ConfigError("the tunnel needs a private key", key="tunnel.private-key")
    device = Device(
        tunnel.private_key,
        rekey_after_time=tunnel.rekey_after_time,
        listen_port=tunnel.listen_port,
        mtu=tunnel.mtu or DEFAULT_MTU,
    )
    for peer in tunnel.peers:
        device.add_peer(peer.public_key, now=now, **peer_arguments(peer))  # type: ignore[arg-type]
    return device


PeerArguments = dict[PublicKey, dict[str, object]]
"""Canonical public key -> keyword arguments of Device.add_peer / update_peer."""


def prepare_peers(tunnel: TunnelConfig) -> PeerArguments:
    """Every configured peer's device arguments, checked; raises ConfigError naming the peer's key.

    Endpoint names are resolved here, and each peer is tried on a scratch device with the same identity,
    so that applying the result (`apply_peers`) cannot fail half-way.
    """
    scratch = build_device(TunnelConfig(private_key=tunnel.private_key), 0.0)
    prepared: PeerArguments = {}
    for index, peer in enumerate(tunnel.peers):
        where = f"tunnel.peers[{index}]"
        try:
            key = peer.public_key  # canonical since the configuration was validated
            arguments = peer_arguments(peer)
            scratch.add_peer(key, now=0.0, **arguments)  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ConfigError(exc.message, key=f"{where}.{exc.key}" if exc.key else where) from None
        prepared[key] = arguments
    return prepared


def apply_peers(device: Device, wanted: PeerArguments, now: float) -> tuple[int, int, int]:
    """Make the device's peers match prepared arguments; untouched peers keep their sessions.

    Returns (added, removed, updated).
    """
    added = removed = updated = 0
    for key in list(device.peers):
        if key not in wanted:
            device.remove_peer(key)
            removed += 1
    for key, arguments in wanted.items():
        if key in device.peers:
            device.update_peer(key, now=now, **arguments)  # type: ignore[arg-type]
            updated += 1
        else:
            device.add_peer(key, now=now, **arguments)  # type: ignore[arg-type]
            added += 1
    return added, removed, updated


def require_tunnel(config: Config) -> TunnelConfig:
    if config.tunnel is None:
        raise ConfigError("this command needs a 'tunnel' section (or a wg-quick .conf)", key="tunnel")
    return config.tunnel


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(config: Config, startup_notes: Sequence[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.logging.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.logging.level.upper())
    # Every daemon calls this once at start, right after load_config: the place to say what the
    # configuration asks for that dnsguard does not apply (wg-quick hooks, Table, SaveConfig...).
    for warning in config.warnings:
        log.warning("%s", warning)
    for note in startup_notes:  # what the command learned before logging was set up (app/aead_tuning.py)
        log.info("%s", note)
    log.info("data paths (DNS, tunnel): %s", native.state)


def run_daemon(coroutine: Coroutine[Any, Any, None], busy_poll: float, *, uvloop: bool = False) -> None:
    """Run a daemon's main coroutine to its end.

    With `busy_poll` (performance.busy-poll), on asyncio's loop over net/busy_poll.py's selector, which
    polls that many seconds after each of densely coming events. Else with `uvloop` on uvloop when it
    is installed, whose wake-ups cost less than asyncio's (an idle tunnel's packet wakes a daemon each
    hop; netlink works there through net/netlink.py); else on asyncio's own loop.
    """
    if busy_poll > 0:
        with asyncio.Runner(loop_factory=lambda: busy_poll_loop(busy_poll)) as runner:
            runner.run(coroutine)
        return
    if uvloop:
        try:
            import uvloop as uv
        except ImportError:
            pass
        else:
            uv.run(coroutine)
            return
    asyncio.run(coroutine)


def apply_busy_poll(window: float) -> None:
    """Give the running loop's selector a new performance.busy-poll (a reload).

    A daemon started with busy polling on takes any new window, 0 (off) included; one started with it
    off runs on a loop without it (its own, or uvloop) until a restart.
    """
    selector = busy_poll_selector(asyncio.get_running_loop())
    if selector is not None:
        if selector.window != window:
            log.info("performance.busy-poll: %s", f"{window * 1e6:.0f} us" if window > 0 else "off")
            selector.window = window
    elif window > 0:
        log.warning("performance.busy-poll: turning it on takes effect after a restart")


def notify_systemd(state: str) -> None:
    """Send an sd_notify message (e.g. "READY=1") when systemd started us as Type=notify; else nothing."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)


def install_signal_handlers(stop: asyncio.Event, reload: Callable[[], object]) -> None:
    """SIGTERM/SIGINT set `stop`; SIGHUP calls `reload`, whose task (if it returns one) is watched.

    A reload never raises (`Reloader`), but should a task fail anyway its error is logged here in one
    line instead of asyncio's "Task exception was never retrieved" at exit.
    """
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, stop.set)
    running: set[asyncio.Future[Any]] = set()

    def done(task: asyncio.Future[Any]) -> None:
        running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("reload on SIGHUP failed: %s", one_line(task.exception()))

    def on_hangup() -> None:
        result = reload()
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            running.add(task)
            task.add_done_callback(done)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)


# -- reloading: one path for every daemon -------------------------------------------------------


async def _nothing() -> None:
    return None


class Background:
    """Work a service starts and does not wait for (a reload's follow-ups): each task kept referenced, a
    failure logged as `what` failing, and all of them finished by `drain` before the service closes the
    things they use."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._done(done, what))

    def _done(self, task: asyncio.Task[None], what: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.warning("%s: %s", what, one_line(task.exception()))

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for every task started so far (their failures are logged, not raised)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A change built aside: `commit` swaps it in (and must not fail), `discard` releases it."""

    commit: Callable[[], None]
    discard: Callable[[], Awaitable[None]] = _nothing


def one_line(error: BaseException | None) -> str:
    """An error as one log line."""
    text = str(error) or type(error).__name__
    return " ".join(text.split())


def config_line(path: str, key: str) -> int | None:
    """The line of a dotted key (``upstreams.servers[1]``) in a YAML configuration file, if found."""
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    line = None
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        if part.startswith("[") and isinstance(node, yaml.SequenceNode):
            index = int(part[1:-1])
            if index >= len(node.value):
                break
            node = node.value[index]
        elif isinstance(node, yaml.MappingNode):
            names = {part, part.replace("_", "-"), part.replace("-", "_")}
            found = [value for key_node, value in node.value if str(key_node.value) in names]
            if not found:
                break
            node = found[0]
        else:
            break
        line = node.start_mark.line + 1
    return line


def describe_failure(error: BaseException, config_path: str) -> str:
    """What went wrong in a reload, as one line that names the file (and line, where known)."""
    if isinstance(error, ConfigError):
        if error.file is None:
            line = config_line(config_path, error.key) if error.key else None
            error = ConfigError(error.message, file=config_path, line=line, key=error.key)
        return one_line(error)
    if isinstance(error, DnsguardError):
        return f"{config_path}: {one_line(error)}"
    return f"{config_path}: unexpected {type(error).__name__}: {one_line(error)}"


class Reloader:
    """The reload of every daemon (`resolve`, `up`, `server`), whatever triggered it (SIGHUP, file change,
    API): read the file, build every part of the new state aside (`prepare`), then swap them all in at
    once. Anything wrong on the way changes nothing, is counted as a failed reload and logged as one line
    naming file:line; the caller (the API) gets False and `counter.last_error`.
    """

    def __init__(
        self,
        config_path: str,
        counter: ReloadCounter,
        prepare: Callable[[Config], Awaitable[Prepared]],
        *,
        lock: asyncio.Lock | None = None,
    ) -> None:
        self.config_path = config_path
        self.counter = counter
        self.prepare = prepare
        self.lock = lock or asyncio.Lock()

    async def reload(self) -> bool:
        async with self.lock:
            try:
                new = load_config(self.config_path)
                prepared = await self.prepare(new)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = describe_failure(exc, self.config_path)
                self.counter.failed(error)
                log.error("configuration reload failed, nothing changed: %s", error)
                if not isinstance(exc, DnsguardError):
                    log.debug("reload failure details", exc_info=True)
                return False
            prepared.commit()
            apply_busy_poll(new.performance.busy_poll)
            self.counter.succeeded()
            log.info("configuration reloaded")
            return True
