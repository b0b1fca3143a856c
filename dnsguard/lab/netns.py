"""A disposable network lab built from Linux network namespaces.

Tests, benchmarks and `dnsguard demo` run dnsguard inside these namespaces and never in the
machine's own namespace: every link, address, route and firewall rule the lab (or dnsguard
running in it) creates lives in a namespace that the lab deletes on exit.

Topology (addresses from the documentation and benchmarking ranges only)::

    lanhost --- client ======== internet ======== server
    192.0.2.10  192.0.2.1       198.18.1.1        198.18.2.2
                198.18.1.2      198.18.2.1
                                198.51.100.53  authoritative DNS (and .54, a second one)
                                198.51.100.80  HTTP

Namespace names carry the creating process id (``dglab-<pid>-<n>-<role>``) so that a lab left
behind by a crashed process is recognised and removed the next time any lab starts, while labs
of processes that are still running are left alone.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dnsguard.errors import LabError
from dnsguard.net.capabilities import have_net_admin

NAME_PREFIX = "dglab"
_NAME_RE = re.compile(rf"^{NAME_PREFIX}-(\d+)-\d+-[a-z]+$")
_lab_counter = itertools.count(1)
_live_labs: list[Lab] = []


@dataclass(frozen=True, slots=True)
class Addresses:
    """The lab's fixed address plan."""

    client_wan4: str = "198.18.1.2"
    client_gw4: str = "198.18.1.1"
    server_wan4: str = "198.18.2.2"
    server_gw4: str = "198.18.2.1"
    client_wan6: str = "2001:db8:1::2"
    client_gw6: str = "2001:db8:1::1"
    server_wan6: str = "2001:db8:2::2"
    server_gw6: str = "2001:db8:2::1"
    dns4: str = "198.51.100.53"
    dns4_alt: str = "198.51.100.54"
    http4: str = "198.51.100.80"
    dns6: str = "2001:db8:53::53"
    http6: str = "2001:db8:80::80"
    lan_gw4: str = "192.0.2.1"
    lan_host4: str = "192.0.2.10"
    lan_gw6: str = "2001:db8:100::1"
    lan_host6: str = "2001:db8:100::10"
    zone: str = "dnsguard.example"


ADDRESSES = Addresses()


def process_alive(pid: int) -> bool:
    """True when a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def list_namespaces() -> list[str]:
    """Names of all network namespaces known to iproute2."""
    result = _ip("netns", "list", check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _kill_namespace_processes(namespace: str) -> None:
    result = _ip("netns", "pids", namespace, check=False)
    pids = [int(p) for p in result.stdout.split() if p.isdigit()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid in pids if process_alive(pid)]
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(process_alive(pid) for pid in alive):
            time.sleep(0.05)


def delete_namespace(namespace: str) -> None:
    """Kill what runs inside a namespace, then delete it; missing namespaces are fine."""
    _kill_namespace_processes(namespace)
    _ip("netns", "del", namespace, check=False)


def cleanup_leftovers() -> list[str]:
    """Delete lab namespaces whose creating process is gone; returns their names."""
    removed = []
    for namespace in list_namespaces():
        match = _NAME_RE.match(namespace)
        if match and not process_alive(int(match.group(1))):
            delete_namespace(namespace)
            removed.append(namespace)
    return removed


@dataclass
class Lab:
    """Namespaces joined by veth pairs, with DNS and HTTP servers in the 'internet' namespace.

    Use as a context manager; the namespaces and every process started through the lab are
    removed on exit, also when the body raises.
    """

    lan: bool = False
    extra_client: bool = False
    """A second client namespace ('client2', uplink 198.18.3.2) for multi-peer tests."""
    services: bool = True
    ipv6: bool = True
    addresses: Addresses = ADDRESSES
    namespaces: dict[str, str] = field(default_factory=dict)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[Path] = field(default_factory=list)
    _closed: bool = False

    def __post_init__(self) -> None:
        self.run_id = f"{NAME_PREFIX}-{os.getpid()}-{next(_lab_counter)}"
        self.log_dir = Path(f"/tmp/{self.run_id}")

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Build the topology; on any failure, remove what was built and raise LabError."""
        if not have_net_admin():
            raise LabError("the lab needs CAP_NET_ADMIN: run as root")
        cleanup_leftovers()
        _live_labs.append(self)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every process started through the lab and delete its namespaces."""
        if self._closed:
            return
        self._closed = True
        for process in reversed(self._processes):
            _stop_process(process)
        for namespace in reversed(list(self.namespaces.values())):
            delete_namespace(namespace)
        if self in _live_labs:
            _live_labs.remove(self)

    # -- building --------------------------------------------------------------------------

    def _add_namespace(self, role: str) -> str:
        name = f"{self.run_id}-{role}"
        _ip("netns", "add", name)
        self.namespaces[role] = name
        # Duplicate address detection would leave fresh link-local addresses tentative for
        # a second or two, and IPv6 would fail in the lab's first moments.
        self.sh(
            role,
            "sysctl -qw net.ipv6.conf.default.accept_dad=0",
            "sysctl -qw net.ipv6.conf.all.accept_dad=0",
            "ip link set lo up",
        )
        return name

    def _veth(self, role_a: str, if_a: str, role_b: str, if_b: str) -> None:
        _ip(
            "link",
            "add",
            if_a,
            "netns",
            self.namespaces[role_a],
            "type",
            "veth",
            "peer",
            "name",
            if_b,
            "netns",
            self.namespaces[role_b],
        )
        self.sh(role_a, f"ip link set {if_a} up")
        self.sh(role_b, f"ip link set {if_b} up")

    def _build(self) -> None:
        a = self.addresses
        for role in ("internet", "server", "client"):
            self._add_namespace(role)
        self._veth("internet", "c0", "client", "eth0")
        self._veth("internet", "s0", "server", "eth0")
        self.sh(
            "internet",
            f"ip addr add {a.client_gw4}/24 dev c0",
            f"ip addr add {a.server_gw4}/24 dev s0",
            f"ip addr add {a.dns4}/32 dev lo",
            f"ip addr add {a.dns4_alt}/32 dev lo",
            f"ip addr add {a.http4}/32 dev lo",
            "sysctl -qw net.ipv4.ip_forward=1",
        )
        self.sh(
            "client", f"ip addr add {a.client_wan4}/24 dev eth0", f"ip route add default via {a.client_gw4}"
        )
        self.sh(
            "server", f"ip addr add {a.server_wan4}/24 dev eth0", f"ip route add default via {a.server_gw4}"
        )
        if self.ipv6:
            self.sh(
                "internet",
                "sysctl -qw net.ipv6.conf.all.forwarding=1",
                f"ip -6 addr add {a.client_gw6}/64 dev c0 nodad",
                f"ip -6 addr add {a.server_gw6}/64 dev s0 nodad",
                f"ip -6 addr add {a.dns6}/128 dev lo",
                f"ip -6 addr add {a.http6}/128 dev lo",
            )
            self.sh(
                "client",
                f"ip -6 addr add {a.client_wan6}/64 dev eth0 nodad",
                f"ip -6 route add default via {a.client_gw6}",
            )
            self.sh(
                "server",
                f"ip -6 addr add {a.server_wan6}/64 dev eth0 nodad",
                f"ip -6 route add default via {a.server_gw6}",
            )
        if self.extra_client:
            self._add_namespace("client2")
            self._veth("internet", "c2", "client2", "eth0")
            self.sh("internet", "ip addr add 198.18.3.1/24 dev c2")
            self.sh("client2", "ip addr add 198.18.3.2/24 dev eth0", "ip route add default via 198.18.3.1")
        if self.lan:
            self._add_namespace("lanhost")
            self._veth("client", "lan0", "lanhost", "eth0")
            self.sh("client", f"ip addr add {a.lan_gw4}/24 dev lan0")
            self.sh(
                "lanhost", f"ip addr add {a.lan_host4}/24 dev eth0", f"ip route add default via {a.lan_gw4}"
            )
            if self.ipv6:
                self.sh("client", f"ip -6 addr add {a.lan_gw6}/64 dev lan0 nodad")
                self.sh(
                    "lanhost",
                    f"ip -6 addr add {a.lan_host6}/64 dev eth0 nodad",
                    f"ip -6 route add default via {a.lan_gw6}",
                )
        if self.services:
            self.start_services()

    def start_services(self) -> None:
        """Start the lab's authoritative DNS and HTTP servers in the internet namespace."""
        a = self.addresses
        listen = [a.dns4, a.dns4_alt] + ([a.dns6] if self.ipv6 else [])
        http = [a.http4] + ([a.http6] if self.ipv6 else [])
        ready = self.log_dir / "services.ready"
        ready.unlink(missing_ok=True)
        self.python(
            "internet",
            "dnsguard.lab.services",
            *[arg for ip in listen for arg in ("--dns", ip)],
            *[arg for ip in http for arg in ("--http", ip)],
            "--zone",
            a.zone,
            "--ready-file",
            str(ready),
            log_name="services",
        )
        self.wait_for(ready.exists, timeout=15, what="lab DNS/HTTP services to start")

    # -- running things inside ---------------------------------------------------------------

    def namespace(self, role: str) -> str:
        """The namespace name of a role (client, server, internet, lanhost)."""
        try:
            return self.namespaces[role]
        except KeyError:
            raise LabError(f"this lab has no {role!r} namespace") from None

    def command(self, role: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside a role's namespace."""
        return ["ip", "netns", "exec", self.namespace(role), *argv]

    def run(
        self,
        role: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a namespace and wait for it; raise LabError when check fails."""
        result = subprocess.run(
            self.command(role, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )
        if check and result.returncode != 0:
            raise LabError(
                f"[{role}] {shlex.join(argv)} exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result

    def sh(self, role: str, *commands: str, check: bool = True) -> str:
        """Run shell-split command lines inside a namespace in order; return the last stdout."""
        output = ""
        for line in commands:
            output = self.run(role, shlex.split(line), check=check).stdout
        return output

    def popen(
        self,
        role: str,
        argv: Sequence[str],
        *,
        log_name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a background process inside a namespace; it is stopped when the lab closes."""
        log_path = self.log_dir / f"{log_name or Path(argv[0]).name}-{len(self._processes)}.log"
        log = log_path.open("wb")
        self._logs.append(log_path)
        process = subprocess.Popen(
            self.command(role, argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        process.log_path = log_path  # type: ignore[attr-defined]
        self._processes.append(process)
        return process

    def python(
        self,
        role: str,
        module: str,
        *args: str,
        log_name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `python -m module args` (this interpreter) inside a namespace."""
        full_env = dict(os.environ if env is None else env)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        return self.popen(
            role, [sys.executable, "-m", module, *args], log_name=log_name or module, env=full_env
        )

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """Stop one process started through the lab."""
        _stop_process(process)

    def wait_for(
        self, condition: Callable[[], object], *, timeout: float, what: str, interval: float = 0.05
    ) -> None:
        """Poll until condition() is truthy; raise LabError naming `what` on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(interval)
        raise LabError(f"timed out after {timeout:.0f} s waiting for {what}; logs: {self.log_dir}")

    def dig(
        self,
        role: str,
        name: str,
        server: str,
        *,
        qtype: str = "A",
        tcp: bool = False,
        port: int = 53,
        timeout: float = 2,
    ) -> subprocess.CompletedProcess[str]:
        """Ask `server` about `name` with dig from inside a namespace."""
        argv = [
            "dig",
            f"@{server}",
            "-p",
            str(port),
            name,
            qtype,
            "+tries=1",
            f"+time={int(timeout)}",
            "+noall",
            "+answer",
            "+comments",
            "+stats",
        ]
        if tcp:
            argv.append("+tcp")
        return self.run(role, argv, check=False, timeout=timeout * 3 + 5)

    def logs(self) -> str:
        """Every lab process log, for failure reports."""
        parts = []
        for path in self._logs:
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def dig_answers(output: str) -> list[str]:
    """The rdata of each answer record in dig's output."""
    return [
        line.split()[-1]
        for line in output.splitlines()
        if line and not line.startswith(";") and len(line.split()) >= 5
    ]


def dig_status(output: str) -> str:
    """dig's status (NOERROR, NXDOMAIN, ...), or 'TIMEOUT' when no answer came."""
    match = re.search(r"status: (\w+)", output)
    return match.group(1) if match else "TIMEOUT"


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def _close_all_labs() -> None:
    for lab in list(_live_labs):
        with contextlib.suppress(Exception):
            lab.close()


atexit.register(_close_all_labs)


@contextlib.contextmanager
def lab_session(**options: bool) -> Iterator[Lab]:
    """A lab that is also torn down on SIGTERM/SIGHUP (for long-running commands like the demo)."""
    previous: dict[signal.Signals, object] = {}

    def on_signal(signum: int, _frame: object) -> None:
        _close_all_labs()
        raise SystemExit(128 + signum)

    for stop_signal in (signal.SIGTERM, signal.SIGHUP):
        previous[stop_signal] = signal.signal(stop_signal, on_signal)
    try:
        with Lab(**options) as lab:  # type: ignore[arg-type]
            yield lab
    finally:
        for stop_signal, handler in previous.items():
            signal.signal(stop_signal, handler)  # type: ignore[arg-type]
