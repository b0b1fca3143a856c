"""Reference peers and dnsguard daemons inside the lab: wireguard-go and `dnsguard up/server`.

Each helper writes its configuration into the lab's log directory, starts the process in a
namespace through the lab (so it is stopped when the lab closes) and waits until it is ready.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dnsguard.errors import LabError
from dnsguard.lab.netns import ADDRESSES, Lab


def genkey() -> tuple[str, str]:
    """A (private, public) key pair."""
    from dnsguard.wireguard.keys import generate_private_key, public_key

    private = generate_private_key()
    return private, public_key(private)


@dataclass
class WgPeer:
    public_key: str
    allowed_ips: list[str]
    endpoint: str | None = None
    persistent_keepalive: int = 0
    preshared_key: str | None = None


@dataclass
class WireguardGo:
    """wireguard-go with `wg` configuration, in one namespace."""

    lab: Lab
    role: str
    private_key: str
    addresses: list[str]
    listen_port: int | None = None
    peers: list[WgPeer] = field(default_factory=list)
    interface: str = ""
    """Default wg<lab tag><role>: wireguard-go's control socket lives in /var/run/wireguard, shared by
    every namespace, so instances of different labs (one after another, or side by side) need
    different interface names, or one's exit removes the socket the other just made."""
    routes: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> WireguardGo:
        tag = zlib.crc32(self.lab.run_id.encode()) % 10000
        self.interface = self.interface or f"wg{tag:04d}{self.role}"[:15]
        if shutil.which("wireguard-go") is None or shutil.which("wg") is None:
            raise LabError("wireguard-go and wg are needed (deploy/install.sh --test installs them)")
        env = {"WG_PROCESS_FOREGROUND": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LOG_LEVEL": "error"}
        self.process = self.lab.popen(
            self.role, ["wireguard-go", self.interface], log_name="wireguard-go", env=env
        )
        # `wg show` answers through the control socket, which wireguard-go opens after the interface.
        self.lab.wait_for(
            lambda: self.lab.run(self.role, ["wg", "show", self.interface], check=False).returncode == 0,
            timeout=10,
            what="wireguard-go to create its interface and control socket",
        )
        key_file = self.lab.log_dir / f"{self.role}-{self.interface}.key"
        key_file.write_text(self.private_key + "\n")
        key_file.chmod(0o600)
        argv = ["wg", "set", self.interface, "private-key", str(key_file)]
        if self.listen_port:
            argv += ["listen-port", str(self.listen_port)]
        self.lab.run(self.role, argv)
        for peer in self.peers:
            self.set_peer(peer)
        for address in self.addresses:
            self.lab.run(self.role, ["ip", "address", "add", address, "dev", self.interface])
        self.lab.run(self.role, ["ip", "link", "set", self.interface, "mtu", "1420", "up"])
        for route in self.routes:
            self.lab.run(self.role, ["ip", "route", "replace", route, "dev", self.interface])
        return self

    def set_peer(self, peer: WgPeer) -> None:
        argv = [
            "wg",
            "set",
            self.interface,
            "peer",
            peer.public_key,
            "allowed-ips",
            ",".join(peer.allowed_ips),
        ]
        if peer.endpoint:
            argv += ["endpoint", peer.endpoint]
        if peer.persistent_keepalive:
            argv += ["persistent-keepalive", str(peer.persistent_keepalive)]
        if peer.preshared_key:
            psk = self.lab.log_dir / f"{self.role}-psk-{peer.public_key[:6].replace('/', '_')}"
            psk.write_text(peer.preshared_key + "\n")
            argv += ["preshared-key", str(psk)]
        self.lab.run(self.role, argv)

    def show(self) -> str:
        return self.lab.run(self.role, ["wg", "show", self.interface, "dump"]).stdout

    def latest_handshake(self, public_key: str) -> int:
        for line in self.show().splitlines()[1:]:
            fields = line.split("\t")
            if fields[0] == public_key:
                return int(fields[4])
        return 0


@dataclass
class DnsguardDaemon:
    """`dnsguard up` or `dnsguard server` with a YAML configuration, in one namespace."""

    lab: Lab
    role: str
    command: str
    config: dict[str, object]
    name: str = ""
    process: subprocess.Popen[bytes] | None = None
    entry: tuple[str, ...] = ("dnsguard",)
    """What `python -m` runs before the command: a lab launcher such as dnsguard.lab.suspend can wrap it."""
    env: dict[str, str] = field(default_factory=dict)
    """More environment for the daemon (e.g. a shared DNSGUARD_RUN_DIR, a start-up pause point)."""
    _notify: socket.socket | None = field(default=None, repr=False)
    _notified_ready: bool = False

    @property
    def config_path(self) -> Path:
        return self.lab.log_dir / f"{self.name or self.role}-{self.command}.yaml"

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self, wait_for_interface: str | None = "dg0") -> DnsguardDaemon:
        """Start the daemon; with `wait_for_interface`, return once it is up and said READY=1.

        The interface comes up early in a daemon's start; READY=1 (sd_notify, as systemd would get
        it) comes after every part runs, its tick and path monitor too. A test that begins before
        that races the daemon's own start: a freeze before the first tick goes unnoticed, route
        changes before the monitor subscribes are never seen.
        """
        self.write_config()
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONUNBUFFERED": "1",
            "DNSGUARD_RUN_DIR": str(self.lab.log_dir / f"run-{self.role}"),
            # A socket path, not an abstract name: those are per network namespace.
            "NOTIFY_SOCKET": str(self._open_notify_socket()),
            **self.env,
        }
        self.process = self.lab.popen(
            self.role,
            [sys.executable, "-m", *self.entry, self.command, "-c", str(self.config_path)],
            log_name=f"dnsguard-{self.command}",
            env=env,
        )
        if wait_for_interface:

            def ready() -> bool:
                if self.process is not None and self.process.poll() is not None:
                    raise LabError(f"dnsguard {self.command} exited {self.process.returncode}:\n{self.log()}")
                return self._ready_notified() and (
                    "UP"
                    in self.lab.run(
                        self.role, ["ip", "-br", "link", "show", wait_for_interface], check=False
                    ).stdout
                )

            self.lab.wait_for(
                ready, timeout=20, what=f"dnsguard {self.command} to bring up {wait_for_interface}"
            )
        return self

    def _open_notify_socket(self) -> Path:
        if self._notify is not None:
            self._notify.close()
        path = self.lab.log_dir / f"notify-{self.name or self.role}-{self.command}.sock"
        path.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._notify.bind(str(path))
        self._notify.setblocking(False)
        self._notified_ready = False
        return path

    def _ready_notified(self) -> bool:
        while not self._notified_ready and self._notify is not None:
            try:
                message = self._notify.recv(4096)
            except BlockingIOError:
                break
            self._notified_ready = b"READY=1" in message.split(b"\n")
        return self._notified_ready

    def reload(self) -> None:
        self.write_config()
        assert self.process is not None
        # The lab runs the daemon under `ip netns exec`, which execs: the pid is the daemon's.
        subprocess.run(["kill", "-HUP", str(self.process.pid)], check=True)

    def stop(self, timeout: float = 10) -> int | None:
        if self.process is None:
            return None
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log(self) -> str:
        path = getattr(self.process, "log_path", None)
        return Path(path).read_text(errors="replace")[-6000:] if path else ""


def wait_ping(lab: Lab, role: str, address: str, timeout: float = 15) -> float:
    """Ping until an answer comes back; returns the seconds it took."""
    started = time.monotonic()
    lab.wait_for(
        lambda: lab.run(role, ["ping", "-c", "1", "-W", "1", address], check=False).returncode == 0,
        timeout=timeout,
        what=f"{role} to reach {address}",
        interval=0.1,
    )
    return time.monotonic() - started


def start_resolver(
    lab: Lab,
    config: dict[str, object],
    *,
    ask_from: str = "client",
    server: str = "127.0.0.1",
    timeout: float = 30,
) -> DnsguardDaemon:
    """`dnsguard resolve` in the gateway namespace, returned once a lookup from `ask_from` is answered."""
    daemon = DnsguardDaemon(lab, "client", "resolve", config).start(wait_for_interface=None)
    zone = ADDRESSES.zone
    lab.wait_for(
        lambda: "status: NOERROR" in lab.dig(ask_from, f"www.{zone}", server).stdout,
        timeout=timeout,
        what="dnsguard resolve to answer",
    )
    return daemon
