"""The lasting query log with `dnsguard resolve` in a lab namespace: queries asked, a restart, found again."""

from __future__ import annotations

import json
from pathlib import Path

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab import dig_answers as answers
from tests.integration.test_operations import TOKEN, api, resolve_config, scrape, start_resolver

BLOCKED = "www.doubleclick.net"


def test_queries_asked_before_a_restart_are_found_after_it(tmp_path: Path) -> None:
    database = tmp_path / "querylog.sqlite"
    config = resolve_config(
        api={"listen": "127.0.0.1:8053", "token": TOKEN},
        querylog={"enabled": True, "path": str(database), "privacy": "anonymised"},
    )
    base = "http://127.0.0.1:8053"
    with Lab(lan=True) as lab:
        daemon = start_resolver(lab, config)
        try:
            lan_dns = ADDRESSES.lan_gw4
            assert answers(lab.dig("lanhost", BLOCKED, lan_dns).stdout) == ["0.0.0.0"]
            # The lab's zone has no AAAA record for this name: logged with its NXDOMAIN.
            assert (
                "status: NXDOMAIN"
                in lab.dig("lanhost", f"mail.{ADDRESSES.zone}", lan_dns, qtype="AAAA").stdout
            )
            lab.wait_for(
                lambda: (
                    scrape(lab, "client", "127.0.0.1:9153").get(("dnsguard_querylog_written_total", ()), 0)
                    >= 3
                ),
                timeout=10,
                what="the queries to be written",
            )
            daemon.stop()
            daemon.start(wait_for_interface=None)
            lab.wait_for(
                lambda: "status: NOERROR" in lab.dig("client", f"www.{ADDRESSES.zone}", "127.0.0.1").stdout,
                timeout=20,
                what="dnsguard resolve to answer again",
            )
            code, body = api(
                lab, "client", f"{base}/api/queries?name=doubleclick&result=blocked", token=TOKEN
            )
            assert code == 200, body
            found = json.loads(body)
            assert found["source"] == "querylog"
            assert [(q["name"], q["client"]) for q in found["queries"]] == [
                (BLOCKED, ADDRESSES.lan_host4.rsplit(".", 1)[0] + ".0")
            ]
            code, body = api(lab, "client", f"{base}/api/queries?qtype=AAAA", token=TOKEN)
            assert [(q["name"], q["rcode_name"]) for q in json.loads(body)["queries"]] == [
                (f"mail.{ADDRESSES.zone}", "NXDOMAIN")
            ]
            code, body = api(lab, "client", f"{base}/api/stats?window=1h", token=TOKEN)
            stats = json.loads(body)
            assert code == 200 and stats["blocked"] == 1 and stats["total"] >= 3
            assert stats["top_blocked"] == [{"name": BLOCKED, "count": 1}]
            assert database.exists()
        except Exception:
            print(daemon.log())
            raise
