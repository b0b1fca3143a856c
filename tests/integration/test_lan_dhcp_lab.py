"""LAN onboarding in the lab: a device gets its address, router and DNS from the generated dnsmasq,
IPv6 router advertisements name dnsguard (RDNSS), and the device's queries carry its lease's name.

Gateway: the 'client' namespace (lan0 192.0.2.1/24, 2001:db8:100::1/64) runs `dnsguard resolve` and
dnsmasq with the file `dnsguard dhcp-config` prints. Device: the 'lanhost' namespace, its static
addresses removed, asks for a lease with busybox udhcpc under the host name "phone".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab.netns import dig_answers

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("dnsmasq", "udhcpc", "rdisc6")),
    reason="needs dnsmasq, udhcpc and rdisc6 (deploy/install.sh --test installs them)",
)

API = "127.0.0.1:18053"
# udhcpc runs this with the lease in its environment. It sets the address itself and writes nothing
# else: busybox's default script would rewrite /etc/resolv.conf, which the namespaces share with the host.
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    printf 'ip=%s\\nrouter=%s\\ndns=%s\\n' "$ip" "$router" "$dns" > "{out}"
    ;;
esac
"""


def gateway_config(directory: Path) -> Path:
    a = ADDRESSES
    document = {
        "resolver": {
            "listen": [f"{a.lan_gw4}:53", f"[{a.lan_gw6}]:53"],
            "allow-clients": ["loopback", "local-networks"],
        },
        "upstreams": {"servers": [a.dns4]},
        "loading": {"cache-dir": str(directory / "cache")},
        "api": {"listen": API},
        "metrics": {"listen": None},
        "reload": {"watch": False},
        "client-names": {"poll-interval": "0.5s"},
        "dhcp": {
            "interface": "lan0",
            "range-start": "192.0.2.100",
            "range-end": "192.0.2.149",
            "lease-time": "1h",
            "router": a.lan_gw4,
            "dns": [a.lan_gw4],
            "domain": "home.arpa",
            "lease-file": str(directory / "dhcp.leases"),
            "ipv6": {"mode": "ra-stateless", "dns": [a.lan_gw6]},
        },
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def api_get(lab: Lab, path: str) -> dict[str, object]:
    result = lab.run("client", ["curl", "-sS", "--max-time", "5", f"http://{API}{path}"])
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def api_up(lab: Lab) -> bool:
    probe = lab.run("client", ["curl", "-sS", "--max-time", "1", f"http://{API}/healthz"], check=False)
    return probe.returncode == 0


def test_a_lan_device_is_onboarded_by_dhcp_and_ra_and_named_by_its_lease(lan_lab: Lab) -> None:
    lab, a = lan_lab, ADDRESSES
    directory = lab.log_dir
    config = gateway_config(directory)
    generated = subprocess.run(
        [sys.executable, "-m", "dnsguard", "dhcp-config", "-c", str(config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    dnsmasq_conf = directory / "dnsmasq.conf"
    dnsmasq_conf.write_text(generated)
    (directory / "dhcp.leases").touch()

    resolver = lab.python("client", "dnsguard", "resolve", "-c", str(config), log_name="resolve")
    lab.wait_for(
        lambda: resolver.poll() is not None or api_up(lab),
        timeout=30,
        what="dnsguard resolve's API",
        interval=0.3,
    )
    assert resolver.poll() is None, lab.logs()
    # The gateway's link-local address must be usable before dnsmasq can send advertisements from it.
    lab.wait_for(
        lambda: "tentative" not in lab.sh("client", "ip -6 addr show dev lan0 scope link"),
        timeout=10,
        what="lan0's link-local address",
    )
    lab.popen(
        "client",
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--log-facility=-",
            "--user=root",
            f"--conf-file={dnsmasq_conf}",
            f"--pid-file={directory / 'dnsmasq.pid'}",
            "--log-dhcp",
        ],
        log_name="dnsmasq",
    )

    # The device: no static address, a lease from dnsmasq under the name it announces.
    lab.sh("lanhost", "ip -4 addr flush dev eth0", "ip -4 route flush dev eth0")
    lease_out = directory / "udhcpc.lease"
    script = directory / "udhcpc.script"
    script.write_text(UDHCPC_SCRIPT.format(out=lease_out))
    script.chmod(0o755)
    started = time.monotonic()
    lab.run(
        "lanhost",
        [
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            "10",
            "-T",
            "1",
            "-s",
            str(script),
            "-x",
            "hostname:phone",
        ],
        timeout=30,
    )
    print(f"lease obtained in {time.monotonic() - started:.2f} s")
    lease = dict(line.split("=", 1) for line in lease_out.read_text().split())
    assert lease["router"] == a.lan_gw4 and lease["dns"] == a.lan_gw4
    device = lease["ip"]
    assert device.startswith("192.0.2.1") and 100 <= int(device.rsplit(".", 1)[1]) <= 149
    assert device in lab.sh("lanhost", "ip -4 addr show dev eth0")

    # IPv6: the gateway's router advertisement carries dnsguard's IPv6 address as RDNSS.
    lab.wait_for(
        lambda: "tentative" not in lab.sh("lanhost", "ip -6 addr show dev eth0 scope link"),
        timeout=10,
        what="the device's link-local address",
    )
    advert = lab.run("lanhost", ["rdisc6", "-1", "-r", "3", "-w", "1500", "eth0"], check=False, timeout=20)
    assert "Recursive DNS server" in advert.stdout and a.lan_gw6 in advert.stdout, advert.stdout + lab.logs()
    assert "2001:db8:100::/64" in advert.stdout  # the prefix for SLAAC

    # The device asks the DNS server its lease named; dnsguard answers it.
    answer = lab.dig("lanhost", f"www.{a.zone}", lease["dns"])
    assert dig_answers(answer.stdout), answer.stdout + lab.logs()

    def named() -> bool:
        clients = api_get(lab, "/api/clients")["clients"]
        return any(c["address"] == device and c["name"] == "phone" for c in clients)  # type: ignore[attr-defined]

    lab.wait_for(named, timeout=10, what="the device's lease name in /api/clients", interval=0.3)
    clients = api_get(lab, "/api/clients")
    entry = next(c for c in clients["clients"] if c["address"] == device)  # type: ignore[attr-defined]
    assert entry["source"] == "lease" and entry["group"] == "default" and len(entry["mac"]) == 17
    # Its IPv6 address has no lease: the neighbour table gives its MAC, and the MAC its IPv4 lease's name.
    answer6 = lab.dig("lanhost", f"www.{a.zone}", a.lan_gw6)
    assert dig_answers(answer6.stdout), answer6.stdout + lab.logs()

    def named6() -> bool:
        clients = api_get(lab, "/api/clients")["clients"]
        return any(c["address"].startswith("2001:db8:100:") and c["name"] == "phone" for c in clients)  # type: ignore[attr-defined]

    try:
        lab.wait_for(
            named6, timeout=10, what="the device's IPv6 address named by its lease's MAC", interval=0.3
        )
    except Exception:
        print(api_get(lab, "/api/clients"), lab.sh("client", "ip -6 neigh show dev lan0"), lab.logs())
        raise
    listed = lab.run("client", [sys.executable, "-m", "dnsguard", "clients", "-c", str(config)]).stdout
    assert any(line.split()[:3] == [device, "phone", "(lease)"] for line in listed.splitlines()), listed
    queries = api_get(lab, f"/api/queries?client={device}")["queries"]
    assert [q["name"] for q in queries] == [f"www.{a.zone}"]  # type: ignore[attr-defined]
