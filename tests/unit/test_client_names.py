"""Client names: sources merged by priority, MACs followed through the neighbours, PTR on a fake clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from dnslib import PTR, QTYPE, RCODE, RR, DNSRecord

from dnsguard.app.api import Api
from dnsguard.app.client_names import ClientDirectory, lease_files, needs_neighbours
from dnsguard.app.lan_tools import client_lines, offline_name
from dnsguard.app.resolve import ResolveDaemon, ResolverService
from dnsguard.cli import status_lines
from dnsguard.config import Config, load_config
from dnsguard.errors import NetworkError
from dnsguard.net.lease_files import REREAD_AFTER, LeaseFiles
from dnsguard.net.reverse_lookup import parse_ptr_answer, ptr_query
from dnsguard.policy.client_names import (
    MIN_TTL,
    NEGATIVE_TTL,
    ClientName,
    ClientNames,
    ReverseNames,
    canonical_address,
    ptr_name,
)
from dnsguard.policy.leases import Lease, LeaseParse

TABLET_MAC = "02:00:5e:10:00:01"
PHONE_MAC = "02:00:5e:10:00:02"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def leases(*items: Lease) -> dict[str, Lease]:
    return {lease.address: lease for lease in items}


# -- priority ---------------------------------------------------------------------------------


def test_a_configured_name_wins_over_a_lease_and_a_ptr_name() -> None:
    reverse = ReverseNames()
    reverse.answered("192.0.2.5", "printer.lan", 3600, 0)
    names = ClientNames({"office-printer": ["192.0.2.5/32"]}, reverse=reverse)
    names.set_leases("dnsmasq", leases(Lease("192.0.2.5", "02:00:5e:10:00:05", "HP-1234")))
    assert names.lookup("192.0.2.5") == ClientName("office-printer", "config", "02:00:5e:10:00:05")


def test_a_lease_wins_over_a_ptr_name_and_a_ptr_name_names_the_rest() -> None:
    reverse = ReverseNames()
    reverse.answered("192.0.2.7", "old.lan", 3600, 0)
    reverse.answered("192.0.2.8", "nas.lan", 3600, 0)
    names = ClientNames({}, reverse=reverse)
    names.set_leases("dnsmasq", leases(Lease("192.0.2.7", PHONE_MAC, "phone")))
    assert names.lookup("192.0.2.7") == ClientName("phone", "lease", PHONE_MAC)
    assert names.lookup("192.0.2.8") == ClientName("nas.lan", "ptr", "")
    assert names.lookup("192.0.2.9") == ClientName()


def test_the_longest_configured_prefix_names_an_address() -> None:
    names = ClientNames({"lan": ["192.0.2.0/24"], "kids-room": ["192.0.2.32/27"], "tv": ["192.0.2.33"]})
    assert names.lookup("192.0.2.33").name == "tv"
    assert names.lookup("192.0.2.34").name == "kids-room"
    assert names.lookup("192.0.2.200").name == "lan"
    assert names.lookup("2001:db8::1").name == ""


def test_a_configured_mac_names_whichever_address_the_neighbour_table_gives_it() -> None:
    table = {"192.0.2.40": TABLET_MAC}
    names = ClientNames({"kids-tablet": [TABLET_MAC]}, mac_lookup=table.get)
    assert names.lookup("192.0.2.40") == ClientName("kids-tablet", "config", TABLET_MAC)
    table.clear()
    table["192.0.2.41"] = TABLET_MAC  # the tablet moved; its old address is someone else's now
    assert names.lookup("192.0.2.41").name == "kids-tablet"
    assert names.lookup("192.0.2.40").name == ""


def test_a_configured_mac_names_an_address_through_its_lease_without_a_neighbour_entry() -> None:
    names = ClientNames({"kids-tablet": [TABLET_MAC]})
    names.set_leases("dnsmasq", leases(Lease("192.0.2.42", TABLET_MAC, "android-3f2a")))
    assert names.lookup("192.0.2.42") == ClientName("kids-tablet", "config", TABLET_MAC)


def test_a_device_ipv6_address_takes_the_name_of_its_ipv4_lease_by_mac() -> None:
    table = {"2001:db8:100::a1": PHONE_MAC}
    names = ClientNames({}, mac_lookup=table.get)
    names.set_leases("dnsmasq", leases(Lease("192.0.2.43", PHONE_MAC, "phone")))
    assert names.lookup("2001:db8:100::a1") == ClientName("phone", "lease", PHONE_MAC)


def test_the_first_lease_file_wins_and_a_file_that_empties_takes_its_names_away() -> None:
    names = ClientNames({})
    order = ["/dhcp.leases", "/router.leases"]
    names.set_leases("/router.leases", leases(Lease("192.0.2.50", "", "router-name")), order)
    names.set_leases("/dhcp.leases", leases(Lease("192.0.2.50", "", "own-name")), order)
    assert names.lookup("192.0.2.50").name == "own-name"
    names.set_leases("/dhcp.leases", {}, order)
    assert names.lookup("192.0.2.50").name == "router-name"
    names.set_leases("/router.leases", {}, order)
    assert names.lookup("192.0.2.50").name == ""


async def test_a_reload_keeps_the_leases_of_files_still_configured(tmp_path: Path) -> None:
    path = tmp_path / "dnsguard.yaml"
    first = {"upstreams": {"servers": ["198.51.100.53"]}, "client-names": {"lease-files": ["/a", "/b"]}}
    path.write_text(yaml.safe_dump(first))
    directory = ClientDirectory(load_config(path))
    directory.names.set_leases("/a", leases(Lease("192.0.2.1", "", "one")))
    directory.names.set_leases("/b", leases(Lease("192.0.2.2", "", "two")))
    path.write_text(yaml.safe_dump({**first, "client-names": {"lease-files": ["/b"]}}))
    directory.reconfigure(load_config(path), None)  # its first read of /b comes later, in a task
    assert (directory.name_of("192.0.2.1"), directory.name_of("192.0.2.2")) == ("", "two")
    await directory.close()


def test_addresses_are_canonical_and_zones_dropped() -> None:
    assert canonical_address("fe80::0001%lan0") == "fe80::1"
    assert canonical_address("2001:DB8::A") == "2001:db8::a"
    assert canonical_address("not an address") is None


# -- reverse names on a fake clock --------------------------------------------------------------


def test_a_ptr_name_is_asked_once_kept_for_its_ttl_then_asked_again() -> None:
    reverse = ReverseNames(rate=1, burst=1)
    assert reverse.due("192.0.2.60", 0.0)
    assert not reverse.due("192.0.2.60", 0.0)  # pending: not asked twice
    reverse.answered("192.0.2.60", "tv.lan", 600, 0.5)
    assert reverse.name("192.0.2.60") == "tv.lan"
    assert not reverse.due("192.0.2.60", 600.0)
    assert reverse.due("192.0.2.60", 600.6)
    assert reverse.name("192.0.2.60") == "tv.lan"  # shown while its refresh is in flight


def test_a_ptr_ttl_is_clamped_so_that_ttl_zero_does_not_ask_every_query() -> None:
    reverse = ReverseNames()
    reverse.answered("192.0.2.61", "a.lan", 0, 0.0)
    assert not reverse.due("192.0.2.61", MIN_TTL - 0.1)
    assert reverse.due("192.0.2.61", MIN_TTL)


def test_no_name_or_no_answer_waits_the_negative_ttl() -> None:
    reverse = ReverseNames()
    assert reverse.due("192.0.2.62", 0.0)
    reverse.failed("192.0.2.62", 0.0)
    assert reverse.name("192.0.2.62") == ""
    assert not reverse.due("192.0.2.62", NEGATIVE_TTL - 1)
    assert reverse.due("192.0.2.62", NEGATIVE_TTL)


def test_reverse_lookups_are_rate_limited_by_a_token_bucket() -> None:
    reverse = ReverseNames(rate=2, burst=3)
    asked = [reverse.due(f"192.0.2.{i}", 0.0) for i in range(1, 11)]
    assert asked.count(True) == 3 and reverse.limited == 7
    assert [reverse.due(f"192.0.2.{i}", 1.0) for i in range(4, 8)] == [True, True, False, False]


def test_remembered_reverse_names_are_bounded() -> None:
    reverse = ReverseNames(max_entries=2)
    for i in range(1, 4):
        reverse.answered(f"192.0.2.{i}", f"h{i}.lan", 3600, 0.0)
    assert reverse.named() == {"192.0.2.2": "h2.lan", "192.0.2.3": "h3.lan"}


def test_ptr_names_are_host_names_or_nothing() -> None:
    assert ptr_name("Laptop.Home.Arpa.") == "laptop.home.arpa"
    assert ptr_name("bad\\032name.lan.") is None
    assert ptr_name("x" * 64 + ".lan") is None
    assert ptr_name(".") is None


def test_ptr_query_and_answer_are_matched_by_id_and_question() -> None:
    query = DNSRecord.parse(ptr_query("192.0.2.9", 0x4242))
    assert str(query.q.qname) == "9.2.0.192.in-addr.arpa." and query.q.qtype == QTYPE.PTR
    reply = query.reply()
    reply.add_answer(RR("9.2.0.192.in-addr.arpa.", QTYPE.PTR, rdata=PTR("tv.lan."), ttl=77))
    assert parse_ptr_answer(bytes(reply.pack()), "192.0.2.9", 0x4242) == ("tv.lan.", 77)
    assert parse_ptr_answer(bytes(reply.pack()), "192.0.2.9", 0x4243) is None
    assert parse_ptr_answer(bytes(reply.pack()), "192.0.2.10", 0x4242) is None
    nx = query.reply()
    nx.header.rcode = RCODE.NXDOMAIN
    assert parse_ptr_answer(bytes(nx.pack()), "192.0.2.9", 0x4242) == (None, 0)
    assert parse_ptr_answer(b"\x42\x42garbage", "192.0.2.9", 0x4242) is None


# -- the daemon's directory ----------------------------------------------------------------------


def config_file(tmp_path: Path, **extra: Any) -> Path:
    document: dict[str, Any] = {
        "upstreams": {"servers": ["198.51.100.53"]},
        "groups": {"kids": {"clients": ["kids-tablet"]}},
        "clients": {"kids-tablet": {"addresses": ["192.0.2.20"]}},
        "loading": {"cache-dir": str(tmp_path / "cache")},
        "api": {"listen": "127.0.0.1:0"},
    }
    document.update(extra)
    path = tmp_path / "dnsguard.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


async def test_an_unnamed_address_gets_its_ptr_name_in_the_background(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, **{"client-names": {"reverse-lookup": "192.0.2.254"}}))
    clock = FakeClock()
    asked: list[tuple[str, str]] = []

    async def fake_lookup(server: str, address: str) -> tuple[str | None, int]:
        asked.append((server, address))
        if address == "192.0.2.71":
            raise NetworkError("no answer")
        return "nas.lan.", 3600

    directory = ClientDirectory(config, clock=clock, reverse_lookup=fake_lookup)
    assert directory.name_of("192.0.2.70") == ""  # answered at once, from memory
    assert directory.name_of("192.0.2.71") == ""
    assert directory.name_of("192.0.2.20") == "kids-tablet"  # named: no lookup
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert directory.name_of("192.0.2.70") == "nas.lan"
    assert directory.lookup("192.0.2.70").source == "ptr"
    assert directory.name_of("192.0.2.71") == ""
    assert asked == [("192.0.2.254", "192.0.2.70"), ("192.0.2.254", "192.0.2.71")]
    clock.now += NEGATIVE_TTL
    directory.name_of("192.0.2.71")
    await asyncio.sleep(0)
    assert asked[-1] == ("192.0.2.254", "192.0.2.71")
    await directory.close()


async def test_lease_files_are_read_again_when_they_change(tmp_path: Path) -> None:
    path = tmp_path / "dhcp.leases"
    path.write_text(f"0 {PHONE_MAC} 192.0.2.80 phone *\n")
    seen: list[tuple[str, LeaseParse]] = []
    clock = FakeClock()
    files = LeaseFiles([str(path), str(tmp_path / "missing")], lambda p, r: seen.append((p, r)), clock=clock)
    await files.poll()
    assert [(p, sorted(r.leases)) for p, r in seen] == [
        (str(path), ["192.0.2.80"]),
        (str(tmp_path / "missing"), []),
    ]
    assert files.files[str(tmp_path / "missing")].error is not None
    seen.clear()
    await files.poll()
    assert seen == []  # nothing changed
    path.write_text(f"0 {PHONE_MAC} 192.0.2.81 phone *\n0 {TABLET_MAC} 192.0.2.82 tablet *\n")
    await files.poll()
    assert [(p, sorted(r.leases)) for p, r in seen] == [(str(path), ["192.0.2.81", "192.0.2.82"])]
    seen.clear()
    clock.now += REREAD_AFTER
    await files.poll()
    assert len(seen) == 2  # read again after a while, so that expired leases leave


def test_the_dhcp_servers_lease_file_is_read_first_and_needs_the_neighbour_table(tmp_path: Path) -> None:
    dhcp = {
        "interface": "lan0",
        "range-start": "192.0.2.100",
        "range-end": "192.0.2.199",
        "dns": ["192.0.2.1"],
    }
    config = load_config(
        config_file(
            tmp_path,
            dhcp={**dhcp, "lease-file": str(tmp_path / "own.leases")},
            **{"client-names": {"lease-files": [str(tmp_path / "router.leases")]}},
        )
    )
    assert lease_files(config) == [str(tmp_path / "own.leases"), str(tmp_path / "router.leases")]
    assert needs_neighbours(config)
    assert not needs_neighbours(load_config(config_file(tmp_path)))
    (tmp_path / "own.leases").write_text(f"0 {PHONE_MAC} 192.0.2.90 phone *\n")
    assert offline_name(config, "192.0.2.90") == ClientName("phone", "lease", PHONE_MAC)
    assert offline_name(config, "192.0.2.20").name == "kids-tablet"


async def test_api_clients_lists_names_sources_macs_and_groups(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    service = ResolverService(load_config(path))
    await service.start(listen=False)
    try:
        directory = service.client_names
        assert directory is not None
        directory.names.set_leases("/leases", leases(Lease("192.0.2.30", PHONE_MAC, "phone")))
        directory.name_of("2001:db8::99")  # asked, unnamed: listed too
        app = web.Application()
        app.add_routes(Api(ResolveDaemon(str(path), service)).routes())
        async with TestClient(TestServer(app)) as client:
            answer = await (await client.get("/api/clients")).json()
            status = await (await client.get("/api/status")).json()
            explained = await (
                await client.get("/api/explain", params={"name": "a.example", "client": "192.0.2.20"})
            ).json()
    finally:
        await service.close()
    assert answer["clients"] == [
        {"address": "192.0.2.20", "name": "kids-tablet", "source": "config", "mac": "", "group": "kids"},
        {"address": "192.0.2.30", "name": "phone", "source": "lease", "mac": PHONE_MAC, "group": "default"},
        {"address": "2001:db8::99", "name": "", "source": "", "mac": "", "group": "default"},
    ]
    assert explained["client_name"] == "kids-tablet"
    assert "clients:    3 known; named by config 1, by lease 1, by PTR 0 (dnsguard clients lists them)" in (
        status_lines(status)
    )
    assert client_lines(answer)[1].split() == ["192.0.2.30", "phone", "(lease)", PHONE_MAC, "default"]


@pytest.mark.parametrize("address", ["", "::", "garbage"])
def test_odd_addresses_have_no_name(address: str) -> None:
    assert ClientDirectory(Config()).name_of(address) == ""


def test_explain_names_the_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dnsguard.cli import main

    assert main(["explain", "a.example", "-c", str(config_file(tmp_path)), "--client", "192.0.2.20"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "client 192.0.2.20 is kids-tablet (from config)"


class PtrServer(asyncio.DatagramProtocol):
    """A LAN resolver on loopback: answers PTR questions from `names`, after a wrong-ID datagram first."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        assert self.transport is not None
        query = DNSRecord.parse(data)
        owner = str(query.q.qname)
        if owner.startswith("99."):
            return  # silence: the client times out
        reply = query.reply()
        if owner in self.names:
            reply.add_answer(RR(owner, QTYPE.PTR, rdata=PTR(self.names[owner]), ttl=120))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        stray = DNSRecord.parse(bytes(reply.pack()))
        stray.header.id ^= 1
        self.transport.sendto(bytes(stray.pack()), addr)  # ignored: not the question's ID
        self.transport.sendto(bytes(reply.pack()), addr)


async def test_lookup_ptr_asks_the_configured_server_and_times_out_on_silence() -> None:
    from dnsguard.net.reverse_lookup import lookup_ptr

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: PtrServer({"7.2.0.192.in-addr.arpa.": "tv.lan."}), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    try:
        assert await lookup_ptr("127.0.0.1", "192.0.2.7", port=port) == ("tv.lan.", 120)
        assert await lookup_ptr("127.0.0.1", "192.0.2.8", port=port) == (None, 0)
        with pytest.raises(NetworkError, match="no answer"):
            await lookup_ptr("127.0.0.1", "192.0.2.99", port=port, timeout=0.05)
    finally:
        transport.close()
