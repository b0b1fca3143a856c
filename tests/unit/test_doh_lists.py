"""The firewall's DoH lists: sources checked like a list's, read with malformed lines counted, refreshed
into the kernel's DoH sets in one transaction, and a failed download keeping the last good addresses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dnsguard.app.dns_firewall import DohLists, FirewallService, doh_endpoints
from dnsguard.app.lists import doh_urls_of, fetcher_for, urls_of
from dnsguard.config import Config, load_config
from dnsguard.errors import ConfigError
from dnsguard.net.dns_firewall import FakeNftables, doh_script
from dnsguard.net.downloads import FetchResult
from dnsguard.policy.firewall import parse_address_list

URL = "https://lists.example/doh.txt"


def write_config(tmp_path: Path, firewall: str) -> Path:
    path = tmp_path / "dnsguard.yaml"
    path.write_text("upstreams:\n  servers: [192.0.2.53]\n" + firewall, encoding="utf-8")
    return path


def configured(tmp_path: Path, doh_lists: str) -> Config:
    cache = f"loading:\n  cache-dir: {tmp_path / 'cache'}\n"
    return load_config(
        write_config(tmp_path, f"{cache}firewall:\n  enabled: true\n  doh-lists:\n{doh_lists}")
    )


def test_a_bad_doh_list_source_names_its_file_and_line(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, f"firewall:\n  doh-lists:\n    - {URL}\n    - missing.txt\n    - ftp://lists.example/x\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = str(raised.value)
    assert f"{path}:6: firewall.doh-lists[1]" in text and "no such file" in text
    assert f"{path}:7: firewall.doh-lists[2]" in text and "only http:// and https://" in text
    assert f"{path}:5" not in text  # the URL is well formed


def test_the_default_is_the_shipped_list_and_urls_download_with_the_lists(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("192.0.2.7\n", encoding="utf-8")
    default = load_config(write_config(tmp_path, "firewall:\n  enabled: true\n"))
    assert default.firewall.doh_lists is None and "1.1.1.1/32" in doh_endpoints(default)
    assert doh_urls_of(default) == []
    config = configured(tmp_path, f"    - mine.txt\n    - {URL}\n")
    assert urls_of(config) == [URL] and doh_urls_of(config) == [URL]
    lists = DohLists()
    assert lists.read(config) == ["192.0.2.7/32"]  # the URL has no cached copy yet
    assert [report.status for report in lists.reports] == ["ok", "kept"]
    assert "not downloaded yet" in str(lists.reports[1].error)


def test_lines_that_are_not_addresses_are_counted_and_skipped() -> None:
    entries, malformed = parse_address_list(
        "# c\n192.0.2.1 # x\nnot-an-address\n\n2001:db8::/32\n300.1.1.1\n"
    )
    assert entries == ["192.0.2.1/32", "2001:db8::/32"] and malformed == 2


def test_the_doh_sets_are_replaced_in_one_transaction() -> None:
    assert doh_script(["192.0.2.1/32", "2001:db8::/32", "192.0.2.0/24"]).splitlines() == [
        "flush set inet dnsguard_fw doh4",
        "add element inet dnsguard_fw doh4 { 192.0.2.0/24 }",
        "flush set inet dnsguard_fw doh6",
        "add element inet dnsguard_fw doh6 { 2001:db8::/32 }",
    ]


def downloaded(path: Path, text: str) -> dict[str, FetchResult]:
    path.write_text(text, encoding="utf-8")
    return {URL: FetchResult(URL, path, "downloaded")}


def test_a_refresh_that_changes_the_list_replaces_the_kernels_doh_set(tmp_path: Path) -> None:
    config = configured(tmp_path, f"    - {URL}\n")
    copy = tmp_path / "copy.txt"

    async def scenario() -> None:
        nft = FakeNftables()
        service = FirewallService(config, "dg0", [51820], nft=nft)
        await service.start()
        try:
            assert service.rules.doh == []
            await service.refresh_doh(downloaded(copy, "192.0.2.9\n2001:db8:9::/48\nbogus\n"))
            assert nft.scripts[-1] == doh_script(["192.0.2.9/32", "2001:db8:9::/48"])
            sent = len(nft.scripts)
            await service.refresh_doh(downloaded(copy, "192.0.2.9\n2001:db8:9::/48\n"))
            assert len(nft.scripts) == sent  # the same addresses: no kernel update
            await service.refresh_doh(downloaded(copy, "198.51.100.9\n"))
            assert nft.scripts[-1] == doh_script(["198.51.100.9/32"])
            snapshot = service.snapshot()
            assert snapshot["doh_endpoints"] == 1 and snapshot["doh_updates"] == 2
            assert service.explain("198.51.100.9")["verdict"] == "refused"
        finally:
            await service.close()

    asyncio.run(scenario())


def test_malformed_lines_show_in_the_snapshot(tmp_path: Path) -> None:
    config = configured(tmp_path, f"    - {URL}\n")

    async def scenario() -> None:
        service = FirewallService(config, "dg0", [51820], nft=FakeNftables())
        await service.refresh_doh(downloaded(tmp_path / "copy.txt", "192.0.2.9\nbogus\nworse\n"))
        [report] = service.snapshot()["doh_lists"]
        assert report == {
            "source": URL,
            "status": "downloaded",
            "addresses": 1,
            "malformed": 2,
            "error": None,
        }

    asyncio.run(scenario())


def test_a_failed_download_keeps_the_previous_addresses(tmp_path: Path) -> None:
    config = configured(tmp_path, f"    - {URL}\n")
    lists = DohLists()
    assert lists.read(config, downloaded(tmp_path / "copy.txt", "192.0.2.9\n")) == ["192.0.2.9/32"]
    failed = {URL: FetchResult(URL, None, "failed", error="HTTP 503")}
    assert lists.read(config, failed) == ["192.0.2.9/32"]
    assert lists.reports[0].status == "kept" and lists.reports[0].error == "HTTP 503"


def test_a_rejected_download_reads_the_cached_copy(tmp_path: Path) -> None:
    config = configured(tmp_path, f"    - {URL}\n")
    cached, _ = fetcher_for(config).paths(URL)
    cached.parent.mkdir(parents=True)
    cached.write_text("203.0.113.5\n", encoding="utf-8")
    # What the fetcher answers when a download fails and a last good copy exists.
    rejected = {URL: FetchResult(URL, cached, "cached", error="HTTP 500")}
    assert DohLists().read(config, rejected) == ["203.0.113.5/32"]
    assert doh_endpoints(config) == ["203.0.113.5/32"]  # without a refresh: the cached copy


def test_a_reload_that_changes_only_a_doh_file_replaces_only_the_doh_sets(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("192.0.2.7\n", encoding="utf-8")
    config = configured(tmp_path, "    - mine.txt\n")

    async def scenario() -> None:
        nft = FakeNftables()
        service = FirewallService(config, "dg0", [51820], nft=nft)
        await service.start()
        try:
            (tmp_path / "mine.txt").write_text("192.0.2.8\n", encoding="utf-8")
            await service.reconfigure(configured(tmp_path, "    - mine.txt\n"))
            assert nft.scripts[-1] == doh_script(["192.0.2.8/32"])
            assert sum("delete table" in script for script in nft.scripts) == 1  # only start's
        finally:
            await service.close()

    asyncio.run(scenario())


def test_a_refused_doh_update_is_counted_and_tried_again(tmp_path: Path) -> None:
    config = configured(tmp_path, f"    - {URL}\n")
    copy = tmp_path / "copy.txt"

    async def scenario() -> None:
        nft = FakeNftables()
        service = FirewallService(config, "dg0", [51820], nft=nft)
        nft.fail = True
        await service.refresh_doh(downloaded(copy, "192.0.2.9\n"))
        assert service.doh_failures == 1 and service.rules.doh == []
        nft.fail = False
        await service.refresh_doh(downloaded(copy, "192.0.2.9\n"))
        assert service.rules.doh == ["192.0.2.9/32"] and nft.scripts == [doh_script(["192.0.2.9/32"])]

    asyncio.run(scenario())
