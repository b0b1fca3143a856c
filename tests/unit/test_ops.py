"""Metrics, HTTP API and file watching, against a real resolver service without sockets or root."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from dnsguard.app import metrics as metrics_module
from dnsguard.app.api import Api, Operations
from dnsguard.app.metrics import registry_for, render
from dnsguard.app.observe import BUCKETS, DnsObserver, DurationHistogram, ReloadCounter, TunnelObserver
from dnsguard.app.resolve import ResolveDaemon, ResolverService
from dnsguard.app.tunnel import TunnelStats
from dnsguard.app.watch import FileWatcher, watched_files
from dnsguard.config import load_config
from dnsguard.dns.resolver import Forward
from dnsguard.lifecycle import Cause, Lifecycle
from dnsguard.net.busy_poll import BusyPollSelector
from dnsguard.net.tun import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6
from dnsguard.wireguard.device import Device
from dnsguard.wireguard.events import HandshakeCompleted, HandshakeGaveUp, HandshakeInitiationSent
from dnsguard.wireguard.flow_queues import FlowQueues
from dnsguard.wireguard.keys import generate_private_key, public_key
from tests.unit.test_deploy import METRICS

TOKEN = "s3cret-token-for-tests"


def query(name: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def write_config(directory: Path, **extra: Any) -> Path:
    (directory / "ads.txt").write_text("ads.example\ntracker.example\n")
    config: dict[str, Any] = {
        "upstreams": {"servers": ["198.51.100.53"]},
        "lists": {"ads": {"sources": ["ads.txt"], "subdomains": True}},
        "groups": {"default": {"block": ["ads"]}, "kids": {"clients": ["192.0.2.10/32"], "block": ["ads"]}},
        "loading": {"cache-dir": str(directory / "cache")},
        "api": {"listen": "127.0.0.1:0"},
        "metrics": {"listen": "127.0.0.1:0"},
    }
    config.update(extra)
    path = directory / "dnsguard.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def started_service(path: Path) -> ResolverService:
    service = ResolverService(load_config(str(path)))
    await service.start(listen=False)
    return service


@contextlib.asynccontextmanager
async def running_daemon(path: Path) -> AsyncIterator[tuple[ResolverService, Operations]]:
    """A resolver service with its API and metrics sites up, as `dnsguard resolve` runs it."""
    service = await started_service(path)
    operations = Operations(ResolveDaemon(str(path), service))
    await operations.start()
    try:
        yield service, operations
    finally:
        await operations.close()
        await service.close()


def samples(exposition: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


# -- observers ----------------------------------------------------------------------------


def test_histogram_buckets_are_less_or_equal_and_cumulative() -> None:
    histogram = DurationHistogram()
    for seconds in (0.0005, 0.0006, 0.003, 20.0):
        histogram.observe(seconds)
    pairs = dict(histogram.cumulative())
    assert pairs["0.0005"] == 1  # a value on a bound falls in that bound's bucket
    assert pairs["0.001"] == 2
    assert pairs["0.005"] == 3
    assert pairs["10.0"] == 3
    assert pairs["+Inf"] == 4 == histogram.count
    assert len(pairs) == len(BUCKETS) + 1
    assert histogram.total == pytest.approx(20.0041)


def test_upstream_observer_counts_attempts_errors_and_reply_durations() -> None:
    observer = DnsObserver()
    observer.know_upstreams(["udp:198.51.100.53:53"])
    assert observer.upstream_errors[("udp:198.51.100.53:53", "timeout")] == 0
    observer.on_upstream("udp:198.51.100.53:53", 0.002, "ok")
    observer.on_upstream("udp:198.51.100.53:53", 1.0, "timeout")
    observer.on_upstream("udp:198.51.100.53:53", 0.004, "servfail")
    observer.on_upstream("udp:198.51.100.53:53", 0.0, "busy")
    assert observer.upstream_queries["udp:198.51.100.53:53"] == 3  # busy was never sent
    assert observer.upstream_duration["udp:198.51.100.53:53"].count == 2  # replies only
    assert observer.upstream_errors[("udp:198.51.100.53:53", "timeout")] == 1
    assert observer.upstream_errors[("udp:198.51.100.53:53", "servfail")] == 1
    assert observer.upstream_errors[("udp:198.51.100.53:53", "busy")] == 1


def test_tunnel_observer_counts_retries_and_give_ups_as_failures() -> None:
    observer = TunnelObserver()
    for event in (
        HandshakeInitiationSent("k", 1),
        HandshakeInitiationSent("k", 2),
        HandshakeInitiationSent("k", 3),
        HandshakeCompleted("k", True),
        HandshakeGaveUp("k", 18),
    ):
        observer.on_event(event)  # type: ignore[arg-type]
    assert observer.handshakes == {"success": 1, "failure": 3}


# -- metrics --------------------------------------------------------------------------------


async def test_resolver_metrics_move_with_queries(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    service = await started_service(path)
    try:
        daemon = ResolveDaemon(str(path), service)
        registry = registry_for(daemon)
        before = samples(render(registry))
        key = ("dnsguard_dns_queries_total", (("group", "default"), ("result", "blocked")))
        assert before[key] == 0  # known series start at zero
        assert before[("dnsguard_dns_blocked_total", (("list", "ads"),))] == 0
        assert before[("dnsguard_config_reload_total", (("result", "failure"),))] == 0
        assert before[("dnsguard_lists_entries", (("list", "ads"),))] == 2
        assert before[("dnsguard_blocking_enabled", ())] == 1
        assert before[("dnsguard_dns_upstream_queries_total", (("upstream", "udp:198.51.100.53:53"),))] == 0

        resolver = service.resolver
        assert resolver is not None
        for name in ("ads.example", "x.tracker.example", "ads.example"):
            assert isinstance(resolver.answer_now(query(name), "192.0.2.99"), bytes)
        assert isinstance(resolver.answer_now(query("ads.example"), "192.0.2.10"), bytes)
        after = samples(render(registry))
        assert after[key] == 3
        assert after[("dnsguard_dns_queries_total", (("group", "kids"), ("result", "blocked")))] == 1
        assert after[("dnsguard_dns_blocked_total", (("list", "ads"),))] == 4
        assert after[("dnsguard_dns_response_duration_seconds_count", (("result", "blocked"),))] == 4
        for labels in (dict(k[1]) for k in after):
            assert not any(value.startswith("192.0.2.") for value in labels.values()), labels
    finally:
        await service.close()


def by_label(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, label: str
) -> dict[str, float]:
    """The samples of metric `name`, by the value of their one label `label`."""
    return {dict(labels)[label]: value for (sample, labels), value in found.items() if sample == name}


async def test_a_client_exports_every_metric_of_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each name in deploy/METRICS.md appears in what a client daemon exposes."""
    path = write_config(tmp_path)
    # As a client daemon started with performance.busy-poll on runs: on net/busy_poll.py's selector.
    selector = BusyPollSelector()
    monkeypatch.setattr(metrics_module, "_busy_poll_selector", lambda: selector)
    service = await started_service(path)
    device = Device(generate_private_key())
    server_key = public_key(generate_private_key())
    device.add_peer(server_key, allowed_ips=["0.0.0.0/0"], endpoint=("198.18.2.2", 51820))
    lifecycle = Lifecycle()
    lifecycle.start(0.0)
    lifecycle.handshake_completed(0.5)
    config = service.config
    queues = FlowQueues()
    queues.enqueue([bytes(60)], 0.0)
    shell = SimpleNamespace(
        stats=TunnelStats(rx_bytes=148, tx_bytes=96, queue_drops=1, queue_marks=3, warm_ups=7),
        queues=queues,
        device=device,
        tun=SimpleNamespace(
            name="dg0",
            queue_full=2,
            write_errors=0,
            offload_flags=TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
            super_packets=3,
            segments_read=120,
            coalesced_writes=4,
            segments_coalesced=90,
        ),
        udp=SimpleNamespace(
            gso=True,
            gso_sends=7,
            sockets={
                2: SimpleNamespace(gro=True, gro_trains=5),
                10: SimpleNamespace(gro=False, gro_trains=1),
            },
        ),
    )
    # The list refresh is accounted when a refresh runs; one with a URL list shows the series.
    service.list_updated_at["ads"] = 1_700_000_000.0
    client = SimpleNamespace(
        kind="client",
        config=config,
        config_path=str(path),
        reloads=ReloadCounter(),
        tunnel_observer=TunnelObserver(),
        dns_service=service,
        tunnel_shell=shell,
        connection=lifecycle,
    )
    try:
        exposition = render(registry_for(client))
        exposed = {family.name for family in text_string_to_metric_families(exposition.decode())}
        for name, kind in METRICS.items():
            base = name.removesuffix("_total") if kind == "counter" else name
            assert base in exposed, name
        found = samples(render(registry_for(client)))
        assert found[("dnsguard_tunnel_state", (("state", "connected"),))] == 1
        assert found[("dnsguard_tunnel_state", (("state", "connecting"),))] == 0
        assert found[("dnsguard_tunnel_reconnects_total", (("cause", Cause.START.value),))] == 1
        assert found[("dnsguard_tunnel_packets_dropped_total", (("reason", "tun_queue_full"),))] == 2
        assert found[("dnsguard_tunnel_packets_dropped_total", (("reason", "queue_codel"),))] == 1
        assert found[("dnsguard_tunnel_queued_bytes", ())] == 60
        assert found[("dnsguard_tunnel_ecn_marked_total", ())] == 3
        assert found[("dnsguard_tunnel_keep_warm_ticks_total", ())] == 7
        assert ("dnsguard_tunnel_packets_dropped_total", (("reason", "cookie_replies_sent"),)) not in found
        assert found[("dnsguard_tunnel_last_handshake_timestamp_seconds", (("peer", server_key[:8]),))] == 0
        assert found[("dnsguard_tunnel_peers", ())] == 1
        assert by_label(found, "dnsguard_busy_poll_wakeups_total", "how") == {"polled": 0, "slept": 0}
        assert found[("dnsguard_tunnel_bytes_total", (("direction", "rx"),))] == 148
        assert by_label(found, "dnsguard_tunnel_offloads", "offload") == {
            "tun_csum": 1,
            "tun_tso4": 1,
            "tun_tso6": 1,
            "tun_uso4": 0,
            "tun_uso6": 0,
            "udp_gso": 1,
            "udp_gro": 1,
        }
        assert by_label(found, "dnsguard_tunnel_offload_packets_total", "kind") == {
            "tun_super_packets": 3,
            "tun_segments": 120,
            "tun_coalesced_writes": 4,
            "tun_coalesced_segments": 90,
            "udp_gso_sends": 7,
            "udp_gro_trains": 6,
        }
        promtool = shutil.which("promtool")
        if promtool is not None:  # installed by deploy/install.sh --test; its naming lint must pass
            lint = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True)
            assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    finally:
        selector.close()
        await service.close()


# -- API -------------------------------------------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], ResolveDaemon, Path]]:
    path = write_config(tmp_path)
    service = await started_service(path)
    daemon = ResolveDaemon(str(path), service)
    routes = Api(daemon)
    from aiohttp import web

    app = web.Application(middlewares=[routes.guard])
    app.add_routes(routes.routes())
    async with TestClient(TestServer(app)) as client:
        yield client, daemon, path
    await service.close()


async def test_api_status_queries_and_explain(api: tuple[TestClient[Any, Any], ResolveDaemon, Path]) -> None:
    client, daemon, _ = api
    resolver = daemon.service.resolver
    assert resolver is not None
    resolver.answer_now(query("ads.example"), "192.0.2.10")
    resolver.answer_now(query("tracker.example"), "192.0.2.99")

    status = await (await client.get("/api/status")).json()
    assert status["kind"] == "resolve"
    assert status["dns"]["queries"] == {"blocked": 2}
    assert status["dns"]["blocking"] == {"enabled": True, "paused_until": None}

    log = await (await client.get("/api/queries", params={"client": "192.0.2.10"})).json()
    assert [(q["name"], q["result"], q["group"]) for q in log["queries"]] == [
        ("ads.example", "blocked", "kids")
    ]
    newest_first = await (await client.get("/api/queries", params={"limit": "1"})).json()
    assert newest_first["queries"][0]["name"] == "tracker.example"
    assert (await client.get("/api/queries", params={"limit": "x"})).status == 400

    explained = await (
        await client.get("/api/explain", params={"name": "Sub.Ads.Example.", "client": "192.0.2.10"})
    ).json()
    assert explained["decision"] == "block" and explained["group"] == "kids"
    assert "ads" in explained["explanation"]
    assert (await client.get("/api/explain")).status == 400


async def test_api_pause_lets_blocked_names_through_until_resumed(
    api: tuple[TestClient[Any, Any], ResolveDaemon, Path],
) -> None:
    client, daemon, _ = api
    resolver = daemon.service.resolver
    assert resolver is not None
    assert (await client.post("/api/blocking/pause", params={"minutes": "0"})).status == 400
    paused = await (await client.post("/api/blocking/pause", json={"minutes": 10})).json()
    assert paused["enabled"] is False and paused["paused_until"] > 0
    assert isinstance(
        resolver.answer_now(query("ads.example"), "192.0.2.99"), Forward
    )  # forwarded, not blocked
    # A list refresh or reload builds a new policy: the pause must survive it.
    assert await daemon.reload()
    assert daemon.service.resolver is not None
    assert isinstance(daemon.service.resolver.answer_now(query("ads.example"), "192.0.2.99"), Forward)
    resumed = await (await client.post("/api/blocking/resume")).json()
    assert resumed["enabled"] is True
    assert isinstance(resolver.answer_now(query("ads.example"), "192.0.2.99"), bytes)


async def test_api_reload_with_a_broken_file_keeps_the_last_good_config(
    api: tuple[TestClient[Any, Any], ResolveDaemon, Path],
) -> None:
    client, daemon, path = api
    good = path.read_text()
    path.write_text(good + "groups:\n  default: {block: [no-such-list]}\n  bad: [\n")
    response = await client.post("/api/reload")
    body = await response.json()
    assert response.status == 422 and body["reloaded"] is False
    assert str(path) in body["error"]
    assert daemon.reloads.failure == 1
    resolver = daemon.service.resolver
    assert resolver is not None
    assert isinstance(resolver.answer_now(query("ads.example"), "192.0.2.99"), bytes)  # still blocking

    lists = await (await client.get("/api/lists")).json()
    assert lists["lists"]["ads"]["entries"] == 2
    assert lists["lists"]["ads"]["sources"][0]["status"] == "ok"


async def test_api_token_is_required_when_set(tmp_path: Path) -> None:
    path = write_config(tmp_path, api={"listen": "127.0.0.1:0", "token": TOKEN})
    async with running_daemon(path) as (_, operations):
        host, port = operations.bound["api"]
        from aiohttp import ClientSession

        async with ClientSession() as session:
            async with session.get(f"http://{host}:{port}/api/status") as refused:
                assert refused.status == 401
                assert "secret" not in await refused.text()
            wrong = {"Authorization": "Bearer wrong-token-wrong-token"}
            async with session.get(f"http://{host}:{port}/api/status", headers=wrong) as refused:
                assert refused.status == 401
            right = {"Authorization": f"Bearer {TOKEN}"}
            async with session.get(f"http://{host}:{port}/api/status", headers=right) as accepted:
                assert accepted.status == 200
                assert TOKEN not in await accepted.text()
            mhost, mport = operations.bound["metrics"]
            async with session.get(f"http://{mhost}:{mport}/metrics") as metrics:
                assert metrics.status == 200
                assert "dnsguard_build_info" in await metrics.text()


def test_an_api_off_loopback_without_a_token_is_a_config_error(tmp_path: Path) -> None:
    from dnsguard.errors import ConfigError

    path = write_config(tmp_path, api={"listen": "198.51.100.7:8053"})
    with pytest.raises(ConfigError, match=r"api\.token"):
        load_config(str(path))


# -- file watch -----------------------------------------------------------------------------------


async def test_file_watcher_reports_a_settled_change_once(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    config = load_config(str(path))
    files = watched_files(str(path), config)
    assert set(files) == {path.resolve(), (tmp_path / "ads.txt").resolve()}
    seen: list[list[str]] = []

    async def on_change(changed: list[str]) -> None:
        seen.append(changed)

    watcher = FileWatcher(lambda: files, on_change, interval=0.05)
    watcher._seen = watcher.snapshot()
    assert await watcher.check() == []
    (tmp_path / "ads.txt").write_text("ads.example\ntracker.example\nmore.example\n")
    assert await watcher.check() == [str((tmp_path / "ads.txt").resolve())]
    assert await watcher.check() == []
    watcher.start()
    try:
        # Replaced by rename, as editors and configuration management do.
        replacement = tmp_path / "new.yaml"
        replacement.write_text(path.read_text())
        replacement.replace(path)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
    finally:
        await watcher.stop()
    assert seen == [[str(path.resolve())]]


def test_systemd_notification_reaches_the_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from dnsguard.app.common import notify_systemd

    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        notify_systemd("READY=1\nSTATUS=answering DNS")
        assert receiver.recv(256) == b"READY=1\nSTATUS=answering DNS"
    monkeypatch.delenv("NOTIFY_SOCKET")
    notify_systemd("READY=1")  # not under systemd: nothing happens


async def test_health_needs_no_token(tmp_path: Path) -> None:
    path = write_config(tmp_path, api={"listen": "127.0.0.1:0", "token": TOKEN})
    async with running_daemon(path) as (_, operations):
        from aiohttp import ClientSession

        async with ClientSession() as session:
            for what in ("api", "metrics"):
                host, port = operations.bound[what]
                async with session.get(f"http://{host}:{port}/healthz") as health:
                    assert health.status == 200
                    assert await health.json() == {"status": "ok", "kind": "resolve"}


async def test_cli_pause_resume_and_queries_talk_to_the_running_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dnsguard.cli import main

    path = write_config(tmp_path, api={"listen": "127.0.0.1:0", "token": TOKEN})
    async with running_daemon(path) as (service, operations):
        host, port = operations.bound["api"]
        cli_config = write_config(tmp_path, api={"listen": f"{host}:{port}", "token": TOKEN})
        assert service.resolver is not None
        service.resolver.answer_now(query("ads.example"), "192.0.2.10")

        assert await asyncio.to_thread(main, ["pause", "10", "-c", str(cli_config)]) == 0
        assert not service.blocking_enabled
        assert "blocking paused until" in capsys.readouterr().out
        assert await asyncio.to_thread(main, ["resume", "-c", str(cli_config)]) == 0
        assert service.blocking_enabled
        assert await asyncio.to_thread(main, ["queries", "--result", "blocked", "-c", str(cli_config)]) == 0
        out = capsys.readouterr().out
        assert "192.0.2.10" in out and "ads.example (kids: ads" in out

        wrong = write_config(tmp_path, api={"listen": f"{host}:{port}", "token": "x" * 20})
        assert await asyncio.to_thread(main, ["pause", "5", "-c", str(wrong)]) == 1
        assert "401" in capsys.readouterr().err
        assert service.blocking_enabled
    # No daemon any more: a clear error, not a traceback.
    assert await asyncio.to_thread(main, ["resume", "-c", str(cli_config)]) == 1
    assert "is the daemon running?" in capsys.readouterr().err
