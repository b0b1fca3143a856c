"""Reloads and list builds: all or nothing, the last good copy of a list, the compiled-list cache."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import weakref
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dnsguard.app import list_store as store
from dnsguard.app import lists as build_module
from dnsguard.app.api import Api
from dnsguard.app.common import config_line, install_signal_handlers, prepare_peers
from dnsguard.app.dns_filtering import FilteringTunnelDaemon, TunnelDns, filtering_config
from dnsguard.app.lists import BuildError, build_sync
from dnsguard.app.observe import ReloadCounter
from dnsguard.app.resolve import ResolveDaemon, ResolverService
from dnsguard.config import Config, load_config
from dnsguard.dns.resolver import Forward
from dnsguard.filter import compiled
from dnsguard.filter.matcher import Action
from dnsguard.wireguard.keys import generate_private_key, public_key
from tests.unit.test_ops import query, started_service, write_config

BIG_LIST = "".join(f"host{i}.blocked.example\n" for i in range(2000))


def blocked(service: ResolverService, name: str) -> bool:
    assert service.resolver is not None
    return service.resolver.policy.matcher.match(name).action is Action.BLOCK


def set_config(path: Path, **changes: Any) -> None:
    config = yaml.safe_load(path.read_text())
    config.update(changes)
    path.write_text(yaml.safe_dump(config))


# -- atomic reloads -----------------------------------------------------------------------------


async def test_a_reload_with_a_bad_upstream_applies_nothing_and_says_where(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    service = await started_service(path)
    daemon = ResolveDaemon(str(path), service)
    resolver = service.resolver
    forwarder = service.forwarder
    assert resolver is not None
    before = (resolver.policy, resolver.policy.matcher, forwarder.upstreams, resolver.cache, service.config)
    try:
        # New lists and groups in the same file: they must not be swapped in either.
        (tmp_path / "more.txt").write_text("more.example\n")
        set_config(
            path,
            upstreams={"servers": ["198.51.100.53", "udp:dns.example"]},
            lists={"ads": {"sources": ["ads.txt", "more.txt"]}},
        )
        assert not await daemon.reload()
        after = (
            resolver.policy,
            resolver.policy.matcher,
            forwarder.upstreams,
            resolver.cache,
            service.config,
        )
        assert all(new is old for new, old in zip(after, before, strict=True))
        assert service.reloads.failure == 1 and service.reloads.success == 0
        error = service.reloads.last_error or ""
        line = config_line(str(path), "upstreams.servers[1]")
        assert line is not None and f"{path}:{line}: upstreams.servers[1]" in error
        assert "udp:dns.example" in error and "\n" not in error
        assert not blocked(service, "more.example")
        assert isinstance(resolver.answer_now(query("ads.example"), "192.0.2.99"), bytes)
    finally:
        await service.close()


async def test_a_reload_whose_lists_do_not_compile_applies_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path)
    service = await started_service(path)
    daemon = ResolveDaemon(str(path), service)
    resolver = service.resolver
    forwarder = service.forwarder
    assert resolver is not None
    policy, upstreams = resolver.policy, forwarder.upstreams

    def broken(*args: object) -> object:
        raise BuildError("list compile failed: MemoryError: out of memory")

    monkeypatch.setattr(build_module, "run_job", broken)
    try:
        (tmp_path / "ads.txt").write_text("ads.example\nnew.example\n")
        set_config(path, upstreams={"servers": ["198.51.100.54"]})
        assert not await daemon.reload()
        assert resolver.policy is policy and forwarder.upstreams is upstreams
        assert service.reloads.failure == 1
        assert "out of memory" in (service.reloads.last_error or "")
    finally:
        await service.close()


async def test_a_good_reload_swaps_policy_lists_and_upstreams_together(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    service = await started_service(path)
    daemon = ResolveDaemon(str(path), service)
    resolver = service.resolver
    forwarder = service.forwarder
    assert resolver is not None
    policy, upstreams = resolver.policy, forwarder.upstreams
    try:
        (tmp_path / "ads.txt").write_text("ads.example\ntracker.example\nnew.example\n")
        set_config(path, upstreams={"servers": ["198.51.100.54"]})
        assert await daemon.reload()
        assert resolver.policy is not policy and forwarder.upstreams is not upstreams
        assert forwarder.upstreams is not None
        assert [u.name for u in forwarder.upstreams.upstreams] == ["udp:198.51.100.54:53"]
        assert blocked(service, "new.example")
        assert service.reloads.success == 1 and service.reloads.failure == 0
    finally:
        await service.close()


async def test_the_api_answers_422_with_the_message_when_a_reload_fails(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    service = await started_service(path)
    daemon = ResolveDaemon(str(path), service)
    routes = Api(daemon)
    app = web.Application(middlewares=[routes.guard])
    app.add_routes(routes.routes())
    try:
        async with TestClient(TestServer(app)) as client:
            set_config(path, upstreams={"servers": ["tls:"]})
            response = await client.post("/api/reload")
            body = await response.json()
            assert response.status == 422
            assert body["reloaded"] is False and "upstreams.servers[0]" in body["error"]
            assert daemon.reloads.failure == 1
            status = await (await client.get("/api/status")).json()
            assert status["reloads"]["failure"] == 1
    finally:
        await service.close()


async def test_a_failed_reload_on_sighup_is_logged_never_left_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    calls: list[int] = []

    async def failing_reload() -> bool:
        calls.append(1)
        raise RuntimeError("boom")

    install_signal_handlers(stop, failing_reload)
    loop = asyncio.get_running_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="dnsguard"):
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(100):
                if any("reload on SIGHUP failed" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.01)
        assert calls == [1]
        messages = [r.getMessage() for r in caplog.records]
        assert "reload on SIGHUP failed: boom" in messages
        assert not any("never retrieved" in m for m in messages)
    finally:
        for handled in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(handled)


async def test_sighup_reloads_through_the_shared_path(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    service = await started_service(path)
    daemon = ResolveDaemon(str(path), service)
    stop = asyncio.Event()
    install_signal_handlers(stop, daemon.reload)
    loop = asyncio.get_running_loop()
    try:
        set_config(path, upstreams={"servers": ["https://"]})
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if service.reloads.failure:
                break
            await asyncio.sleep(0.01)
        assert service.reloads.failure == 1
    finally:
        for handled in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(handled)
        await service.close()


# -- the last good copy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    ["garbage", "empty", "truncated"],
)
async def test_a_list_file_that_turns_bad_keeps_its_last_good_copy(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(tmp_path)
    ads = tmp_path / "ads.txt"
    ads.write_text("ads.example\n" + BIG_LIST)
    service = await started_service(path)
    daemon = ResolveDaemon(str(path), service)
    try:
        assert blocked(service, "host1999.blocked.example")
        if damage == "garbage":
            ads.write_bytes(b"<html><body>502 Bad Gateway</body></html>\n" * 500 + b"\x00\xff\xfe\n" * 50)
        elif damage == "empty":
            ads.write_text("")
        else:
            ads.write_text("ads.example\n" + BIG_LIST[:1000])
        with caplog.at_level(logging.WARNING, logger="dnsguard"):
            assert await daemon.reload()  # the configuration is fine: the reload succeeds
        assert blocked(service, "host1999.blocked.example") and blocked(service, "ads.example")
        assert service.built is not None
        report = next(r for r in service.built.sources if r.list_name == "ads")
        assert report.status == "kept" and report.error
        assert report.rules == 2001
        assert service.list_update_failures["ads"] == 1
        assert any("last good copy" in r.getMessage() for r in caplog.records)
        # A restart keeps serving the last good copy, and says so again.
        again = build_sync(load_config(str(path)))
        assert again.matcher.match("host5.blocked.example").blocked
        assert next(r for r in again.sources if r.list_name == "ads").status == "kept"
    finally:
        await service.close()


async def test_a_deleted_list_file_fails_the_reload_and_the_lists_keep_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A configuration naming a file that is not there fails `check` and start; a reload runs the same
    # validation, so it fails too, changes nothing, and says which line names the file.
    path = write_config(tmp_path)
    ads = tmp_path / "ads.txt"
    ads.write_text("ads.example\n" + BIG_LIST)
    service = await started_service(path)
    daemon = ResolveDaemon(str(path), service)
    try:
        ads.unlink()
        with caplog.at_level(logging.ERROR, logger="dnsguard"):
            assert not await daemon.reload()
        assert blocked(service, "host1999.blocked.example") and blocked(service, "ads.example")
        assert service.reloads.failure == 1
        assert any("ads.txt" in r.getMessage() and "no such file" in r.getMessage() for r in caplog.records)
    finally:
        await service.close()


def test_a_source_that_cannot_be_read_keeps_its_last_good_copy(tmp_path: Path) -> None:
    """Between the configuration check and the compile (or for a URL's cached download), a source can
    still become unreadable: its last good compiled copy stays."""
    path = write_config(tmp_path)
    ads = tmp_path / "ads.txt"
    ads.write_text(BIG_LIST)
    config = load_config(str(path))
    assert build_sync(config).matcher.match("host3.blocked.example").blocked
    ads.unlink()
    os.mkfifo(ads)  # exists, but is no list: refused without blocking
    again = build_sync(config)
    report = again.sources[0]
    assert report.status == "kept" and report.error == "a FIFO, not a regular file"
    assert again.matcher.match("host3.blocked.example").blocked
    ads.unlink()
    gone = build_sync(config)
    assert gone.sources[0].status == "kept" and "No such file" in (gone.sources[0].error or "")
    assert gone.matcher.match("host3.blocked.example").blocked


async def test_a_list_that_recovers_replaces_the_kept_copy(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    ads = tmp_path / "ads.txt"
    ads.write_text(BIG_LIST)
    service = await started_service(path)
    daemon = ResolveDaemon(str(path), service)
    try:
        ads.write_text("")
        assert await daemon.reload()
        assert blocked(service, "host7.blocked.example")
        ads.write_text("other.example\n")  # 1 name where 2000 were: taken for a truncation
        assert await daemon.reload()
        assert blocked(service, "host7.blocked.example")
        ads.write_text(BIG_LIST.replace("blocked", "listed"))
        assert await daemon.reload()
        assert blocked(service, "host7.listed.example") and not blocked(service, "host7.blocked.example")
        assert service.built is not None and service.built.sources[0].status == "ok"
    finally:
        await service.close()


def test_a_small_hand_kept_list_may_shrink(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    first = build_sync(load_config(str(path)))
    assert first.matcher.match("tracker.example").blocked
    (tmp_path / "ads.txt").write_text("ads.example\n")
    second = build_sync(load_config(str(path)))
    assert second.sources[0].status == "ok"
    assert not second.matcher.match("tracker.example").blocked


def test_setting_min_ratio_to_zero_accepts_a_shrink_that_was_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    (tmp_path / "ads.txt").write_text(BIG_LIST)
    build_sync(load_config(str(path)))
    (tmp_path / "ads.txt").write_text("ads.example\n")
    rejected = build_sync(load_config(str(path)))
    assert rejected.sources[0].status == "kept" and rejected.sources[0].rules == 2000
    set_config(path, loading={"cache-dir": str(tmp_path / "cache"), "min-ratio": 0.0})
    after = build_sync(load_config(str(path)))
    assert after.sources[0].status == "ok" and after.sources[0].rules == 1


# -- rebuilding only what changed, and the cache on disk ------------------------------------------------


def two_list_config(tmp_path: Path) -> Path:
    (tmp_path / "one.txt").write_text("one.example\n")
    (tmp_path / "two.txt").write_text("two.example\n")
    return write_config(
        tmp_path,
        lists={"one": {"sources": ["one.txt"]}, "two": {"sources": ["two.txt", "inline.example\n"]}},
        groups={"default": {"block": ["one", "two"]}},
    )


def count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    parsed: list[str] = []
    real = store.parse_bytes

    def counting(data: bytes, source: Any, **options: Any) -> Any:
        parsed.append(source.location)
        return real(data, source, **options)

    monkeypatch.setattr(store, "parse_bytes", counting)
    return parsed


def test_only_the_sources_that_changed_are_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = two_list_config(tmp_path)
    parsed = count_parses(monkeypatch)
    first = build_sync(load_config(str(path)))
    assert len(parsed) == 3 and first.compiled
    parsed.clear()
    (tmp_path / "two.txt").write_text("two.example\nthree.example\n")
    second = build_sync(load_config(str(path)))
    assert parsed == [str((tmp_path / "two.txt").resolve())]
    assert second.compiled and second.matcher.match("three.example").blocked
    assert second.matcher.match("one.example").blocked and second.matcher.match("inline.example").blocked
    # Touched but not changed: read and recognised by its digest, not parsed.
    parsed.clear()
    os.utime(tmp_path / "one.txt", ns=(1, 1))
    build_sync(load_config(str(path)))
    assert parsed == []


def test_a_second_start_loads_the_cache_without_compiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = two_list_config(tmp_path)
    first = build_sync(load_config(str(path)))
    assert first.compiled and first.index is not None

    def must_not_run(*args: object, **kwargs: object) -> object:
        raise AssertionError("compiled again")

    monkeypatch.setattr(store, "compile_matcher", must_not_run)
    monkeypatch.setattr(store, "parse_bytes", must_not_run)
    monkeypatch.setattr(build_module, "run_job", must_not_run)
    second = build_sync(load_config(str(path)))
    assert not second.compiled and second.index == first.index
    assert second.matcher.match("sub.two.example").action is Action.NONE
    assert second.matcher.match("two.example").blocked and second.matcher.match("inline.example").blocked
    assert [r.rules for r in second.sources] == [r.rules for r in first.sources]


async def test_a_service_start_from_the_cache_compiles_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path)
    first = await started_service(path)
    await first.close()

    def must_not_run(*args: object, **kwargs: object) -> object:
        raise AssertionError("compiled again")

    monkeypatch.setattr(store, "compile_matcher", must_not_run)
    monkeypatch.setattr(build_module, "run_job", must_not_run)
    monkeypatch.setattr(build_module, "compile_in_child", must_not_run)
    second = await started_service(path)
    try:
        assert second.built is not None and not second.built.compiled
        assert second.resolver is not None
        assert isinstance(second.resolver.answer_now(query("ads.example"), "192.0.2.99"), bytes)
        assert isinstance(second.resolver.answer_now(query("example.org"), "192.0.2.99"), Forward)
    finally:
        await second.close()


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_damaged_cache_file_is_detected_and_rebuilt(tmp_path: Path, damage: str) -> None:
    path = two_list_config(tmp_path)
    first = build_sync(load_config(str(path)))
    assert first.index is not None
    directory = Path(first.index).parent
    for victim in [Path(first.index), *directory.glob("*.rules")]:
        data = victim.read_bytes()
        if damage == "truncate":
            victim.write_bytes(data[: len(data) // 2])
        elif damage == "flip":
            victim.write_bytes(data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:])
        elif damage == "garbage":
            victim.write_bytes(os.urandom(len(data)))
        else:
            victim.write_bytes(b"")
    again = build_sync(load_config(str(path)))
    assert again.compiled
    for name in ("one.example", "two.example", "inline.example"):
        assert again.matcher.match(name).blocked, name
    assert [r.status for r in again.sources] == ["ok", "ok", "ok"]


def test_the_index_format_refuses_damage_and_another_key(tmp_path: Path) -> None:
    path = two_list_config(tmp_path)
    first = build_sync(load_config(str(path)))
    assert first.index is not None
    data = Path(first.index).read_bytes()
    key = (Path(first.index).parent / "hash.key").read_bytes()
    assert compiled.load_index(data, key).match("one.example").blocked
    with pytest.raises(compiled.CompiledFormatError, match="truncated"):
        compiled.load_index(data[:-8], key)
    with pytest.raises(compiled.CompiledFormatError, match="checksum"):
        compiled.load_index(data[:100] + b"\xff" + data[101:], key)
    with pytest.raises(compiled.CompiledFormatError, match="another hash key"):
        compiled.load_index(data, bytes(32))
    with pytest.raises(compiled.CompiledFormatError):
        compiled.load_index(b"DGIDX002", key)


async def test_a_big_compile_runs_in_a_child_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path)
    (tmp_path / "ads.txt").write_text(BIG_LIST)
    monkeypatch.setattr(build_module, "IN_PROCESS_BYTES", 0)

    def not_here(*args: object) -> object:
        raise AssertionError("compiled in the daemon")

    monkeypatch.setattr(build_module, "run_job", not_here)
    built = await build_module.build(load_config(str(path)), download=False)
    assert built.compiled and built.matcher.match("host42.blocked.example").blocked


async def test_a_failing_child_compile_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path)
    config = load_config(str(path))
    job = build_module.compile_job(config, {})
    broken = store.CompileJob(str(tmp_path / "nowhere" / "\0bad"), job.list_names, job.sources)
    with pytest.raises(BuildError, match="list compile failed"):
        await build_module.compile_in_child(broken, bytes(32))


def test_config_line_finds_nested_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("upstreams:\n  servers:\n    - 198.51.100.53\n    - tls:\nlists: {}\n")
    assert config_line(str(path), "upstreams.servers[1]") == 4
    assert config_line(str(path), "upstreams.timeout") == 2  # the deepest key found
    assert config_line(str(tmp_path / "missing.yaml"), "upstreams") is None


# -- the tunnel daemons share the path ------------------------------------------------------------


class TunnelDaemonUnderTest(FilteringTunnelDaemon):
    """`up`/`server` as the shared reload path sees them, with a resolver service and no kernel."""

    def __init__(self, path: Path, dns: TunnelDns) -> None:
        self.config_path = str(path)
        self.config = dns.config
        self.dns = dns
        self.shell = None
        self.reloads = ReloadCounter()
        self.peer_commits: list[int] = []

    async def prepare_tunnel(self, new: Config) -> Callable[[], None]:
        assert new.tunnel is not None
        peers = prepare_peers(new.tunnel)
        return lambda: self.peer_commits.append(len(peers))


def tunnel_config(tmp_path: Path, peer_key: str) -> Path:
    private = generate_private_key()
    (tmp_path / "private.key").write_text(private)
    return write_config(
        tmp_path,
        tunnel={
            "private-key": private,
            "address": ["100.64.0.2/32"],
            "peers": [{"public-key": peer_key, "allowed-ips": ["0.0.0.0/0"], "endpoint": "198.18.0.1:51820"}],
        },
    )


async def tunnel_daemon(tmp_path: Path) -> tuple[TunnelDaemonUnderTest, Path, Config, TunnelDns]:
    """A tunnel daemon over a started resolver service (the caller closes `dns.service`)."""
    path = tunnel_config(tmp_path, public_key(generate_private_key()))
    config = load_config(str(path))
    dns = TunnelDns(config, server=False)
    dns.service = ResolverService(filtering_config(config, ["127.0.0.1:53"], False))
    await dns.service.start(listen=False)
    return TunnelDaemonUnderTest(path, dns), path, config, dns


async def test_a_tunnel_reload_whose_peer_is_bad_leaves_dns_and_peers_alone(tmp_path: Path) -> None:
    daemon, path, config, dns = await tunnel_daemon(tmp_path)
    resolver = dns.service.resolver
    forwarder = dns.service.forwarder
    assert resolver is not None
    policy, upstreams = resolver.policy, forwarder.upstreams
    try:
        # The tunnel's own public key as its peer: only building the peers finds that out.
        raw = yaml.safe_load(path.read_text())
        own = public_key(raw["tunnel"]["private-key"])
        raw["tunnel"]["peers"][0]["public-key"] = own
        raw["upstreams"] = {"servers": ["198.51.100.54"]}
        path.write_text(yaml.safe_dump(raw))
        assert not await daemon.reload()
        assert resolver.policy is policy and forwarder.upstreams is upstreams
        assert daemon.config is config and daemon.peer_commits == []
        assert daemon.reloads.failure == 1
        assert "tunnel.peers[0]" in (daemon.reloads.last_error or "")
        # A good change goes through both parts at once.
        raw["tunnel"]["peers"][0]["public-key"] = public_key(generate_private_key())
        path.write_text(yaml.safe_dump(raw))
        assert await daemon.reload()
        assert resolver.policy is not policy and forwarder.upstreams is not upstreams
        assert daemon.peer_commits == [1] and daemon.config is not config
        assert daemon.reloads.success == 1
    finally:
        await dns.service.close()


async def test_a_tunnel_reload_gives_the_shell_its_keep_warm_and_a_bad_one_keeps_it(tmp_path: Path) -> None:
    daemon, path, config, dns = await tunnel_daemon(tmp_path)
    shell = SimpleNamespace(keep_warm=float(config.performance.keep_warm), set_receive_codel=lambda on: None)
    daemon.shell = shell  # type: ignore[assignment]
    try:
        assert shell.keep_warm == 1.0
        set_config(path, performance={"keep-warm": "200ms"})
        assert await daemon.reload()
        assert shell.keep_warm == pytest.approx(0.2)
        set_config(path, performance={"keep-warm": "5m"})  # over the 60 s limit
        assert not await daemon.reload()
        assert "performance.keep-warm" in (daemon.reloads.last_error or "")
        assert shell.keep_warm == pytest.approx(0.2)
        set_config(path, performance={"keep-warm": 0})
        assert await daemon.reload()
        assert shell.keep_warm == 0
    finally:
        await dns.service.close()


async def test_a_tunnel_reload_turns_receive_codel_on_and_off_and_a_bad_one_keeps_it(tmp_path: Path) -> None:
    daemon, path, config, dns = await tunnel_daemon(tmp_path)
    shell = SimpleNamespace(keep_warm=1.0, receive_codel=config.performance.receive_codel)
    shell.set_receive_codel = lambda on: setattr(shell, "receive_codel", on)
    daemon.shell = shell  # type: ignore[assignment]
    try:
        assert shell.receive_codel is False  # off unless set
        set_config(path, performance={"receive-codel": True})
        assert await daemon.reload()
        assert shell.receive_codel is True
        set_config(path, performance={"receive-codel": "sometimes"})
        assert not await daemon.reload()
        assert "performance.receive-codel" in (daemon.reloads.last_error or "")
        assert shell.receive_codel is True
        set_config(path, performance={"receive-codel": False})
        assert await daemon.reload()
        assert shell.receive_codel is False
    finally:
        await dns.service.close()


async def test_a_swap_frees_the_previous_matcher_without_a_garbage_collection(tmp_path: Path) -> None:
    """Reloads collect only new garbage (no full collection stalls queries): the old index must not sit
    in a reference cycle, or its mapping would stay until the next full collection."""
    path = write_config(tmp_path)
    service = await started_service(path)
    daemon = ResolveDaemon(str(path), service)
    resolver = service.resolver
    assert resolver is not None
    resolver.answer_now(query("ads.example"), "192.0.2.99")
    resolver.policy.explain("ads.example", "192.0.2.99", 0.0)
    old = weakref.ref(resolver.policy.matcher)
    gc.disable()
    try:
        (tmp_path / "ads.txt").write_text("other.example\n")
        assert await daemon.reload()
        assert old() is None
    finally:
        gc.enable()
        await service.close()


def test_an_unusable_cache_directory_still_builds_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "not-a-directory").write_text("")
    path = write_config(tmp_path, loading={"cache-dir": str(tmp_path / "not-a-directory")})
    with caplog.at_level(logging.WARNING, logger="dnsguard"):
        built = build_sync(load_config(str(path)))
    assert built.matcher.match("ads.example").blocked and built.index is None
    assert any("compiled lists are not kept" in r.getMessage() for r in caplog.records)


async def test_a_small_change_next_to_a_big_list_still_compiles_in_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = two_list_config(tmp_path)
    (tmp_path / "one.txt").write_text(BIG_LIST)
    config = load_config(str(path))
    first = await build_module.build(config, download=False)
    assert first.compiled
    monkeypatch.setattr(build_module, "IN_PROCESS_RULES", 1000)  # the 2000 names of one.txt are "big"

    def not_here(*args: object) -> object:
        raise AssertionError("the index was sorted in the daemon")

    monkeypatch.setattr(build_module, "run_job", not_here)
    (tmp_path / "two.txt").write_text("two.example\nthree.example\n")
    second = await build_module.build(config, download=False)
    assert second.compiled and second.matcher.match("three.example").blocked
    assert second.matcher.match("host1.blocked.example").blocked


async def test_a_reload_that_changes_no_list_keeps_the_mapped_matcher(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    service = await started_service(path)
    daemon = ResolveDaemon(str(path), service)
    resolver = service.resolver
    assert resolver is not None
    matcher, policy = resolver.policy.matcher, resolver.policy
    try:
        set_config(path, upstreams={"servers": ["198.51.100.54"]})
        assert await daemon.reload()
        assert resolver.policy is not policy and resolver.policy.matcher is matcher
    finally:
        await service.close()
