"""`dnsguard explain` and `dnsguard lists update`: the resolver's tools that run without a daemon."""

from __future__ import annotations

import asyncio
import time

from dnsguard.app.lists import build_sync, cached_downloads, fetcher_for, urls_of
from dnsguard.config import load_config
from dnsguard.config.addresses import is_ip
from dnsguard.filter.modifiers import TYPE_NUMBERS
from dnsguard.filter.rules import folded_name
from dnsguard.policy.engine import Policy


def run_explain(config_path: str, name: str, client: str | None, qtype: str = "A") -> int:
    try:
        type_number = TYPE_NUMBERS.get(qtype.upper()) or int(qtype.upper().removeprefix("TYPE"))
    except ValueError:
        print(f"unknown query type {qtype!r} (A, AAAA, HTTPS, TXT, MX... or TYPE<number>)")
        return 2
    config = load_config(config_path)
    if is_ip(name):
        from dnsguard.app.dns_firewall import explain_in_kernel

        print(explain_in_kernel(config, name, client))
        return 0
    built = build_sync(config, cached_downloads(config))
    policy = Policy(config, built.matcher)
    # A name IDNA rejects is explained as typed (lower-cased): no rule can name it, and the answer says so.
    canonical = folded_name(name) or name.strip().rstrip(".").lower()
    if client:
        from dnsguard.app.lan_tools import offline_name

        named = offline_name(config, client)
        if named.name:
            print(f"client {client} is {named.name} (from {named.source})")
    print(policy.explain(canonical, client or "", time.time(), type_number))
    return 0


def run_lists_update(config_path: str) -> int:
    config = load_config(config_path)
    urls = urls_of(config)
    if not urls:
        print("no list sources are URLs; nothing to download")
        return 0
    fetcher = fetcher_for(
        config, progress=lambda url, got, total: print(f"  {url}: {got / 1e6:.1f} MB", flush=True)
    )
    results = asyncio.run(fetcher.fetch_all(urls))
    failed = 0
    for url, result in results.items():
        print(f"{result.status:13s} {url}" + (f"  ({result.error})" if result.error else ""))
        failed += result.status == "failed"
    return 1 if failed else 0
