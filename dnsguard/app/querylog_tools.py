"""`dnsguard queries` and `dnsguard top`: the query log and its statistics from the command line (API)."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

from dnsguard.app.remote import api_request
from dnsguard.config.loader import parse_duration
from dnsguard.errors import DnsguardError


def run_queries(config_path: str | None, filters: dict[str, Any], since: str | None = None) -> int:
    """Print the matching queries, oldest first; the newest `limit` of them (page with `before`)."""
    params = {key: str(value) for key, value in filters.items() if value not in (None, "")}
    if since:
        try:
            params["since"] = str(time.time() - parse_duration(since))
        except ValueError:
            raise DnsguardError(f"--since {since!r} is not a duration (e.g. 90s, 15m, 2h, 1d)") from None
    log = api_request(config_path, "GET", "/api/queries?" + urllib.parse.urlencode(params))
    for entry in reversed(log["queries"]):
        client = entry["client"] or "-"
        if entry.get("client_name"):
            client = f"{entry['client_name']} ({client})"
        qtype = entry.get("qtype_name") or entry["qtype"]
        # A row of the lasting log may stand for the same query asked several times within a second.
        times = f" x{entry['count']}" if entry.get("count", 1) > 1 else ""
        print(
            f"{_local_time(entry['time'])}  {client:<39} {entry['result']:<9} {qtype:<5} "
            f"{entry['name']}{times} ({entry['group']}: {entry['reason'] or '-'}, "
            f"{entry['elapsed_ms']:.1f} ms)"
        )
    if log.get("next") is not None:
        print(f"# older: --before {log['next']}")
    return 0


def run_top(config_path: str | None, window: str) -> int:
    """Print the totals, the top names, blocked names and clients, by query type and response code."""
    stats = api_request(config_path, "GET", "/api/stats?" + urllib.parse.urlencode({"window": window}))
    total, blocked = stats["total"], stats["blocked"]
    share = f"{100 * blocked / total:.1f} %" if total else "-"
    print(f"last {window}: {total} queries, {blocked} blocked ({share})")
    sections = [
        ("top names", [(entry["name"], entry["count"]) for entry in stats["top_names"]]),
        ("top blocked", [(entry["name"], entry["count"]) for entry in stats["top_blocked"]]),
        ("top clients", [(_client(entry), entry["count"]) for entry in stats["top_clients"]]),
        ("by query type", sorted(stats["by_qtype"].items(), key=lambda item: -item[1])),
        ("by response code", sorted(stats["by_rcode"].items(), key=lambda item: -item[1])),
    ]
    for title, rows in sections:
        print(f"\n{title}:")
        for label, count in rows:
            print(f"  {count:>9}  {label}")
        if not rows:
            print("  -")
    return 0


def _client(entry: dict[str, Any]) -> str:
    return f"{entry['client_name']} ({entry['client']})" if entry.get("client_name") else entry["client"]


def _local_time(timestamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp))
