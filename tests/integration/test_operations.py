"""Operations in the lab: metrics move with traffic, the API's token, reloading on file change."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab import dig_answers as answers
from dnsguard.lab.peers import DnsguardDaemon
from dnsguard.lab.scenario import HARD_CODED_RESOLVER, SERVER_TUNNEL4, start_full_tunnel

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "lab-token-0123456789abcdef"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(lab: Lab, role: str, address: str) -> Samples:
    text = lab.run(role, ["curl", "-sS", "--max-time", "5", f"http://{address}/metrics"]).stdout
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def api(lab: Lab, role: str, url: str, *, token: str | None = None, method: str = "GET") -> tuple[int, str]:
    argv = ["curl", "-sS", "--max-time", "5", "-X", method, "-w", "\n%{http_code}", url]
    if token is not None:
        argv += ["-H", f"Authorization: Bearer {token}"]
    out = lab.run(role, argv).stdout
    body, _, code = out.rpartition("\n")
    return int(code), body


def test_metrics_move_when_queries_are_blocked_and_packets_flow() -> None:
    with Lab(lan=True) as lab:
        extra = {
            "metrics": {"listen": "127.0.0.1:9153"},
            "api": {"listen": "127.0.0.1:8053", "token": TOKEN},
            "logging": {"format": "json"},
        }
        full = start_full_tunnel(lab, client_extra=extra)
        try:
            metrics = "127.0.0.1:9153"
            blocked = ("dnsguard_dns_queries_total", (("group", "default"), ("result", "blocked")))
            by_list = ("dnsguard_dns_blocked_total", (("list", "ads"),))
            sent = ("dnsguard_tunnel_packets_total", (("direction", "tx"),))
            lab.wait_for(lambda: blocked in scrape(lab, "client", metrics), timeout=10, what="metrics")
            before = scrape(lab, "client", metrics)
            assert before[("dnsguard_tunnel_state", (("state", "connected"),))] == 1
            assert before[("dnsguard_tunnel_handshakes_total", (("result", "success"),))] >= 1
            peer = [k for k in before if k[0] == "dnsguard_tunnel_last_handshake_timestamp_seconds"]
            assert len(peer) == 1 and abs(before[peer[0]] - time.time()) < 120

            for name in ("www.doubleclick.net", "ads.doubleclick.net", "www.doubleclick.net"):
                assert answers(lab.dig("client", name, HARD_CODED_RESOLVER).stdout) == ["0.0.0.0"]
            assert answers(lab.dig("client", "metrics-upstream.example", HARD_CODED_RESOLVER).stdout)
            lab.run("client", ["ping", "-c", "5", "-i", "0.2", SERVER_TUNNEL4])

            after = scrape(lab, "client", metrics)
            assert after[blocked] - before[blocked] == 3
            assert after[by_list] - before[by_list] == 3
            assert after[sent] - before[sent] >= 5
            assert (
                after[("dnsguard_tunnel_bytes_total", (("direction", "rx"),))]
                > before[("dnsguard_tunnel_bytes_total", (("direction", "rx"),))]
            )
            upstream = ("dnsguard_dns_upstream_queries_total", (("upstream", f"udp:{ADDRESSES.dns4}:53"),))
            assert after[upstream] > before.get(upstream, 0)
            count = ("dnsguard_dns_response_duration_seconds_count", (("result", "blocked"),))
            assert after[count] - before[count] == 3
            # Pings 0.2 s apart each find the tunnel idle: the daemon keeps its data path warm in between
            # (performance.keep-warm, 1 s by default), a tick every 1-3 ms.
            warm = ("dnsguard_tunnel_keep_warm_ticks_total", ())
            assert after[warm] - before[warm] >= 50

            # Structured logs: one JSON object a line, and no secret in any of them.
            code, status = api(lab, "client", "http://127.0.0.1:8053/api/status", token=TOKEN)
            assert code == 200 and json.loads(status)["connection"]["state"] == "connected"
            log_lines = [line for line in full.client.log().splitlines() if line.strip()]
            assert log_lines and all(json.loads(line)["logger"].startswith("dnsguard") for line in log_lines)
            # The start says which ChaCha20-Poly1305 code OpenSSL runs (app/aead_tuning.py).
            assert any(json.loads(line)["message"].startswith("ChaCha20-Poly1305: ") for line in log_lines)

            # Offloads: every series is there; the lab's kernel takes TUN TSO and UDP GSO.
            offloads = {
                dict(labels)["offload"]: value
                for (name, labels), value in after.items()
                if name == "dnsguard_tunnel_offloads"
            }
            assert set(offloads) == {
                "tun_csum",
                "tun_tso4",
                "tun_tso6",
                "tun_uso4",
                "tun_uso6",
                "udp_gso",
                "udp_gro",
            }
            assert offloads["tun_tso4"] == offloads["udp_gso"] == 1
            assert ("dnsguard_tunnel_offload_packets_total", (("kind", "udp_gso_sends"),)) in after
            tunnel = full.client.config["tunnel"]
            assert isinstance(tunnel, dict)
            for secret in (tunnel["private-key"], TOKEN):
                assert secret not in full.client.log() and secret not in status
        except Exception:
            print(full.client.log())
            raise


def resolve_config(**extra: object) -> dict[str, object]:
    config: dict[str, object] = {
        "resolver": {"listen": [f"{ADDRESSES.lan_gw4}:53", "127.0.0.1:53"]},
        "upstreams": {"servers": [ADDRESSES.dns4], "strategy": "strict", "timeout": "1s"},
        "lists": {"ads": {"sources": [str(ROOT / "blocklists" / "ads-trackers.txt")]}},
        "groups": {"default": {"block": ["ads"]}},
        "loading": {"cache-dir": "/tmp/dnsguard-test-lists"},
        "metrics": {"listen": "127.0.0.1:9153"},
    }
    config.update(extra)
    return config


def start_resolver(lab: Lab, config: dict[str, object]) -> DnsguardDaemon:
    daemon = DnsguardDaemon(lab, "client", "resolve", config)
    daemon.start(wait_for_interface=None)
    lab.wait_for(
        lambda: "status: NOERROR" in lab.dig("client", f"www.{ADDRESSES.zone}", "127.0.0.1").stdout,
        timeout=20,
        what="dnsguard resolve to answer",
    )
    return daemon


def test_api_off_loopback_refuses_requests_without_the_token() -> None:
    with Lab(lan=True) as lab:
        base = f"http://{ADDRESSES.lan_gw4}:8053"
        daemon = start_resolver(
            lab, resolve_config(api={"listen": f"{ADDRESSES.lan_gw4}:8053", "token": TOKEN})
        )
        try:
            code, body = api(lab, "lanhost", f"{base}/api/status")
            assert code == 401, body
            code, _ = api(lab, "lanhost", f"{base}/api/status", token="not-the-token-at-all")
            assert code == 401
            code, body = api(lab, "lanhost", f"{base}/api/status", token=TOKEN)
            assert code == 200 and json.loads(body)["kind"] == "resolve"
            assert TOKEN not in body

            lan_dns = ADDRESSES.lan_gw4
            assert answers(lab.dig("lanhost", "www.doubleclick.net", lan_dns).stdout) == ["0.0.0.0"]
            code, _ = api(lab, "lanhost", f"{base}/api/blocking/pause?minutes=5", method="POST")
            assert code == 401  # refused: blocking stays on
            assert answers(lab.dig("lanhost", "www.doubleclick.net", lan_dns).stdout) == ["0.0.0.0"]
            code, body = api(
                lab, "lanhost", f"{base}/api/blocking/pause?minutes=5", token=TOKEN, method="POST"
            )
            assert code == 200 and json.loads(body)["enabled"] is False
            assert answers(lab.dig("lanhost", "www.doubleclick.net", lan_dns).stdout) == [ADDRESSES.http4]
            assert scrape(lab, "client", "127.0.0.1:9153")[("dnsguard_blocking_enabled", ())] == 0
            code, _ = api(lab, "lanhost", f"{base}/api/blocking/resume", token=TOKEN, method="POST")
            assert code == 200
            assert answers(lab.dig("lanhost", "www.doubleclick.net", lan_dns).stdout) == ["0.0.0.0"]

            code, body = api(lab, "lanhost", f"{base}/api/queries?limit=3", token=TOKEN)
            recent = json.loads(body)["queries"]
            assert recent[0]["name"] == "www.doubleclick.net"
            assert recent[0]["client"] == ADDRESSES.lan_host4 and recent[0]["result"] == "blocked"
        except Exception:
            print(daemon.log())
            raise


def test_a_broken_file_change_keeps_serving_and_a_fixed_one_is_picked_up(tmp_path: Path) -> None:
    blocklist = tmp_path / "local.txt"
    blocklist.write_text("blocked-by-file.example\n")
    config = resolve_config(reload={"interval": "0.5s"})
    config["lists"] = {
        "ads": {"sources": [str(ROOT / "blocklists" / "ads-trackers.txt")]},
        "local": {"sources": [str(blocklist)]},
    }
    config["groups"] = {"default": {"block": ["ads", "local"]}}
    with Lab(lan=True) as lab:
        daemon = start_resolver(lab, config)
        metrics = "127.0.0.1:9153"
        failures = ("dnsguard_config_reload_total", (("result", "failure"),))
        successes = ("dnsguard_config_reload_total", (("result", "success"),))
        try:
            assert answers(lab.dig("client", "blocked-by-file.example", "127.0.0.1").stdout) == ["0.0.0.0"]
            assert answers(lab.dig("client", "later.example", "127.0.0.1").stdout) == [ADDRESSES.http4]

            # A list file edited in place: picked up without a signal.
            blocklist.write_text("blocked-by-file.example\nlater.example\n")
            lab.wait_for(
                lambda: answers(lab.dig("client", "later.example", "127.0.0.1").stdout) == ["0.0.0.0"],
                timeout=15,
                what="the edited list file to take effect",
            )
            assert scrape(lab, "client", metrics)[successes] == 1

            # A broken configuration file: counted, logged with file:line, and the last good one serves.
            good = daemon.config_path.read_text()
            daemon.config_path.write_text(good + "groups: [unclosed\n")
            lab.wait_for(
                lambda: scrape(lab, "client", metrics)[failures] == 1, timeout=15, what="the failed reload"
            )
            assert f"{daemon.config_path}:" in daemon.log()
            assert answers(lab.dig("client", "www.doubleclick.net", "127.0.0.1").stdout) == ["0.0.0.0"]
            assert answers(lab.dig("client", "later.example", "127.0.0.1").stdout) == ["0.0.0.0"]

            # Fixed: the next change is picked up.
            config["rewrites"] = [{"name": "nas.home.arpa", "answer": ["192.0.2.50"]}]
            daemon.write_config()
            lab.wait_for(
                lambda: answers(lab.dig("client", "nas.home.arpa", "127.0.0.1").stdout) == ["192.0.2.50"],
                timeout=15,
                what="the fixed configuration to take effect",
            )
            final = scrape(lab, "client", metrics)
            assert final[successes] == 2 and final[failures] == 1
        except Exception:
            print(daemon.log())
            raise
