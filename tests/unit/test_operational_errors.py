"""Expected operational failures read as one line with a hint; `status` answers live through the API."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from dnsguard.app.api import Api, Operations, handshake_times
from dnsguard.app.observe import ReloadCounter, TunnelObserver
from dnsguard.cli import EXIT_BROKEN_PIPE, main, status_lines
from dnsguard.errors import NetworkError
from dnsguard.lifecycle import Lifecycle
from dnsguard.lifecycle.clock import boottime
from dnsguard.net import bind, firewall, routing
from dnsguard.net.bind import BindError, bind_error, listening_socket, port_holder
from dnsguard.net.dns_listeners import DnsListeners
from dnsguard.net.journal import state_file
from tests.unit.test_ops import TOKEN, running_daemon, write_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def taken_tcp() -> Iterator[tuple[str, int]]:
    """A TCP port on 127.0.0.1 held by another socket (as another daemon would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield "127.0.0.1", holder.getsockname()[1]


@pytest.fixture
def taken_udp() -> Iterator[tuple[str, int]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield "127.0.0.1", holder.getsockname()[1]


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text
    return text


# -- the mapping ----------------------------------------------------------------------------------


def test_a_taken_port_names_the_address_and_what_holds_it(taken_tcp: tuple[str, int]) -> None:
    host, port = taken_tcp
    with pytest.raises(BindError) as error:
        listening_socket(host, port, socket.SOCK_STREAM, "the api")
    text = one_line(error.value)
    assert text.startswith(f"cannot listen on 127.0.0.1:{port} for the api: the port is already in use")
    if shutil.which("ss") is not None:
        assert f"pid {os.getpid()}" in text  # ss -lpn names this test process as the holder


def test_a_second_udp_listener_on_the_same_port_fails_instead_of_sharing_it(
    taken_udp: tuple[str, int],
) -> None:
    host, port = taken_udp
    with pytest.raises(BindError, match="already in use"):
        listening_socket(host, port, socket.SOCK_DGRAM, "DNS")
    first = listening_socket(host, 0, socket.SOCK_DGRAM, "DNS")
    try:
        # Linux lets two UDP sockets that both set SO_REUSEADDR share a port; ours must not.
        with pytest.raises(BindError, match="already in use"):
            listening_socket(host, first.getsockname()[1], socket.SOCK_DGRAM, "DNS")
    finally:
        first.close()


def test_port_holder_reads_ss(taken_udp: tuple[str, int]) -> None:
    if shutil.which("ss") is None:
        pytest.skip("no ss on this machine")
    holder = port_holder(taken_udp[1], socket.SOCK_DGRAM)
    assert holder is not None and holder.endswith(f"(pid {os.getpid()})")


def test_port_53_taken_points_at_systemd_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bind, "port_holder", lambda port, kind: "systemd-resolve (pid 512)")
    text = one_line(bind_error(OSError(errno.EADDRINUSE, "Address in use"), "0.0.0.0", 53, "DNS"))
    assert "0.0.0.0:53" in text and "systemd-resolve (pid 512)" in text
    assert "DNSStubListener=no" in text
    monkeypatch.setattr(bind, "port_holder", lambda port, kind: "named (pid 77)")
    text = one_line(bind_error(OSError(errno.EADDRINUSE, "Address in use"), "::", 53, "DNS"))
    assert "[::]:53" in text and "named (pid 77)" in text and "DNSStubListener" not in text


def test_an_address_not_assigned_here() -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface of a test machine: the kernel says EADDRNOTAVAIL.
    with pytest.raises(BindError) as error:
        listening_socket("192.0.2.1", 0, socket.SOCK_DGRAM, "DNS")
    text = one_line(error.value)
    assert "192.0.2.1:0" in text and "not an address of this machine" in text
    assert "network-online.target" in text


def test_no_privilege_for_a_low_port() -> None:
    text = one_line(bind_error(OSError(errno.EACCES, "Permission denied"), "127.0.0.1", 53, "DNS"))
    assert "127.0.0.1:53" in text and "CAP_NET_BIND_SERVICE" in text


def test_no_privilege_for_a_low_port_as_an_unprivileged_user() -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root to drop to an unprivileged user")
    code = (
        "import socket; from dnsguard.net.bind import listening_socket\n"
        "try:\n    listening_socket('127.0.0.1', 53, socket.SOCK_DGRAM, 'DNS')\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    result = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    if not result.stdout:  # e.g. the interpreter lives under a directory that user cannot read
        pytest.skip(f"the unprivileged user cannot run the tests' Python: {result.stderr.strip()[-200:]}")
    assert result.stdout.startswith("BindError cannot listen on 127.0.0.1:53 for DNS: permission denied")


# -- where the listeners bind ---------------------------------------------------------------------


async def test_dns_listeners_refuse_a_taken_port_in_one_line(taken_udp: tuple[str, int]) -> None:
    host, port = taken_udp
    listeners = DnsListeners(answerer=None, addresses=[f"{host}:{port}"])  # type: ignore[arg-type]
    with pytest.raises(BindError) as error:
        await listeners.start()
    assert one_line(error.value).startswith(f"cannot listen on 127.0.0.1:{port} for DNS:")
    await listeners.close()


async def test_dns_over_tcp_refuses_a_taken_port(taken_tcp: tuple[str, int]) -> None:
    host, port = taken_tcp
    listeners = DnsListeners(answerer=None, addresses=[f"{host}:{port}"])  # type: ignore[arg-type]
    with pytest.raises(BindError, match=f"127.0.0.1:{port} for DNS over TCP"):
        await listeners.start()
    await listeners.close()


async def test_operations_refuse_a_taken_api_port_and_leave_nothing_listening(
    tmp_path: Path, taken_tcp: tuple[str, int]
) -> None:
    host, port = taken_tcp
    path = write_config(tmp_path, api={"listen": "127.0.0.1:0"}, metrics={"listen": f"{host}:{port}"})
    from dnsguard.app.resolve import ResolveDaemon, ResolverService
    from dnsguard.config import load_config

    service = ResolverService(load_config(str(path)))
    await service.start(listen=False)
    operations = Operations(ResolveDaemon(str(path), service))
    try:
        with pytest.raises(BindError, match=f"127.0.0.1:{port} for the metrics"):
            await operations.start()
        assert operations._runners == []  # the API that did bind was closed again
        api_host, api_port = operations.bound["api"]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((api_host, api_port), timeout=5).close()
    finally:
        await operations.close()
        await service.close()


def run_dnsguard(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dnsguard", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


def test_a_daemon_whose_api_port_is_taken_refuses_to_start(
    tmp_path: Path, taken_tcp: tuple[str, int]
) -> None:
    """A second `dnsguard resolve` must not run without its API while `pause` reaches the first one."""
    host, port = taken_tcp
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dns_port = probe.getsockname()[1]
    path = write_config(tmp_path, api={"listen": f"{host}:{port}"}, metrics={"listen": None})
    path.write_text(path.read_text() + f"resolver:\n  listen: ['127.0.0.1:{dns_port}']\n")
    result = run_dnsguard("resolve", "-c", str(path))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"dnsguard: cannot listen on 127.0.0.1:{port} for the api: the port is already in use" in (
        result.stderr
    )


def test_a_daemon_whose_dns_port_is_taken_says_so_in_one_line(
    tmp_path: Path, taken_udp: tuple[str, int]
) -> None:
    host, port = taken_udp
    path = write_config(tmp_path, api={"listen": "127.0.0.1:0"})
    path.write_text(path.read_text() + f"resolver:\n  listen: ['{host}:{port}']\n")
    result = run_dnsguard("resolve", "-c", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("dnsguard: ")]
    assert errors == [errors[0]] and f"127.0.0.1:{port} for DNS: the port is already in use" in errors[0]


# -- a closed pipe --------------------------------------------------------------------------------


def test_explain_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`dnsguard explain NAME | head -1`: the reader leaves before the output is written."""
    path = write_config(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "dnsguard", "explain", "ads.example", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # what head does after its line; here before the first one
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert stderr == ""


def test_explain_into_head_prints_the_first_line(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    command = f"{sys.executable} -m dnsguard explain ads.example -c {path} | head -1"
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout == "name:     ads.example\n"
    assert result.stderr == ""


# -- status ---------------------------------------------------------------------------------------


def test_handshake_times_are_wall_clock() -> None:
    assert handshake_times(1_000.0, 1_012.5) == {
        "last_handshake": 1_000.0,
        "last_handshake_time": "1970-01-01T00:16:40Z",
        "last_handshake_ago_seconds": 12.5,
    }
    assert handshake_times(None, 5.0)["last_handshake_time"] is None
    assert handshake_times(0.0, 5.0)["last_handshake"] is None  # a peer that never shook hands


async def test_status_of_a_client_shows_the_handshake_on_the_wall_clock(tmp_path: Path) -> None:
    from dnsguard.app.resolve import ResolverService

    lifecycle = Lifecycle()
    lifecycle.start(boottime() - 60)
    lifecycle.handshake_completed(boottime() - 30)  # on CLOCK_BOOTTIME, as the daemon feeds it
    config_path = write_config(tmp_path)
    from dnsguard.config import load_config

    client = SimpleNamespace(
        kind="client",
        config=load_config(str(config_path)),
        config_path=str(config_path),
        reloads=ReloadCounter(),
        tunnel_observer=TunnelObserver(),
        dns_service=ResolverService(load_config(str(config_path))),
        tunnel_shell=None,
        connection=lifecycle,
    )
    response = await Api(client).status(None)  # type: ignore[arg-type]
    body = json.loads(response.body)  # type: ignore[arg-type]
    connection = body["connection"]
    assert connection["state"] == "connected"
    # Converted from the boot clock: about 30 s ago (generous bounds: this is no timing test).
    assert 29 <= connection["last_handshake_ago_seconds"] < 300
    assert connection["last_handshake_time"].endswith("Z") and "T" in connection["last_handshake_time"]
    text = "\n".join(status_lines(body))
    assert f"last handshake {connection['last_handshake_time']} (" in text and " s ago)" in text


async def test_status_command_asks_the_running_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, api={"listen": "127.0.0.1:0", "token": TOKEN})
    async with running_daemon(path) as (service, operations):
        host, port = operations.bound["api"]
        cli_config = write_config(tmp_path, api={"listen": f"{host}:{port}", "token": TOKEN})
        assert service.resolver is not None
        for _ in range(3):
            service.resolver.answer_now(
                b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03ads\x07example\x00\x00\x01\x00\x01",
                "192.0.2.10",
            )
        assert await asyncio.to_thread(main, ["status", "-c", str(cli_config)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("resolve (dnsguard ") and "blocking:   on" in out
        assert "queries:    blocked 3" in out  # live, not as of the start
        service.resolver.answer_now(
            b"\x12\x35\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03ads\x07example\x00\x00\x01\x00\x01",
            "192.0.2.10",
        )
        assert await asyncio.to_thread(main, ["status", "--json", "-c", str(cli_config)]) == 0
        assert json.loads(capsys.readouterr().out)["dns"]["queries"] == {"blocked": 4}
    assert await asyncio.to_thread(main, ["status", "-c", str(cli_config)]) == 1
    assert "is the daemon running?" in capsys.readouterr().err


async def test_status_without_a_config_finds_the_client_by_its_interface(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dnsguard.app import client

    monkeypatch.setattr(client, "RUN_DIR", tmp_path / "run")
    assert await asyncio.to_thread(main, ["status", "--interface", "dg7"]) == 1
    error = capsys.readouterr().err
    assert "no running client for dg7" in error and "give its configuration with -c" in error
    path = write_config(tmp_path, api={"listen": "127.0.0.1:0"})
    async with running_daemon(path) as (_, operations):
        host, port = operations.bound["api"]
        cli_config = write_config(tmp_path, api={"listen": f"{host}:{port}"})
        (tmp_path / "run").mkdir()
        state_file(tmp_path / "run", "dg7").write_text(
            json.dumps({"pid": os.getpid(), "config": str(cli_config)})
        )
        assert await asyncio.to_thread(main, ["status", "--interface", "dg7"]) == 0
        assert capsys.readouterr().out.startswith("resolve (dnsguard ")


# -- library errors leave the edges as dnsguard errors -----------------------------------------


async def test_a_refused_socket_setup_is_a_network_error_in_one_line() -> None:
    def refuse(sock: socket.socket) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")  # SO_MARK without CAP_NET_ADMIN

    listeners = DnsListeners(answerer=None, addresses=["127.0.0.1:53"], socket_setup=refuse)  # type: ignore[arg-type]
    with pytest.raises(NetworkError) as error:
        await listeners.start()
    assert one_line(error.value) == "cannot set up the DNS socket on 127.0.0.1:53: Operation not permitted"
    await listeners.close()


async def test_netlink_that_cannot_be_opened_is_a_network_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_netlink() -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(routing, "route_socket", no_netlink)
    with pytest.raises(NetworkError, match=r"^cannot read the main routing table: "):
        await routing.local_networks("dg0")
    with pytest.raises(NetworkError, match=r"^routing removal for dg0 failed: "):
        await routing.RoutingPlan("dg0", ["100.64.0.2/32"], 1420, 51820, 51820).remove()
    with pytest.raises(NetworkError, match=r"^cannot configure dg0: "):
        await routing.configure_interface("dg0", ["100.64.0.1/24"], 1420, [])


def test_an_nft_that_hangs_is_a_network_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(*args: object, **kwargs: object) -> None:
        raise subprocess.TimeoutExpired("nft", 30)

    monkeypatch.setattr(firewall.shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(firewall.subprocess, "run", hang)
    with pytest.raises(NetworkError, match=r"^nft \(nftables\) could not run: "):
        firewall.delete_table("inet", "dnsguard_test")
