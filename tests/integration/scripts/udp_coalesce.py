"""Run inside a lab namespace: write UDP datagrams to a TUN with offloads, one batch per IP version, and
print what a socket behind the TUN received (JSON), with the TUN's coalescing counters.

The datagrams come from 100.64.0.2 / fd00::2 (tests/unit/packet_builders.py) to 100.64.0.1 /
fd00::1, which this script puts on the loopback interface; the TUN holds neither.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit"))

from packet_builders import udp_packet

from dnsguard.net.tun import TunDevice


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def main() -> None:
    tun = TunDevice("uso0")
    ip("link", "set", "lo", "up")
    ip("addr", "add", "100.64.0.1/32", "dev", "lo")
    ip("-6", "addr", "add", "fd00::1/128", "dev", "lo")
    ip("addr", "add", "100.64.0.9/24", "dev", "uso0")
    ip("-6", "addr", "add", "fd00::9/64", "dev", "uso0", "nodad")
    ip("link", "set", "uso0", "up")
    result: dict[str, object] = {"udp_coalescing": tun.udp_coalescing}
    for family, host, version in ((socket.AF_INET, "100.64.0.1", 4), (socket.AF_INET6, "fd00::1", 6)):
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((host, 6000))
            sock.settimeout(1.0)
            sent = [bytes([i]) * 1200 for i in range(40)] + [b"last"]
            tun.write_batch([udp_packet(version, data, identifier=100 + i) for i, data in enumerate(sent)])
            received = []
            try:
                while len(received) < len(sent):
                    received.append(sock.recv(70000))
            except TimeoutError:
                pass
            result[f"ipv{version}"] = {"intact": received == sent, "received": len(received)}
    result["coalesced_writes"] = tun.coalesced_writes
    result["segments_coalesced"] = tun.segments_coalesced
    result["write_errors"] = tun.write_errors
    tun.close()
    print(json.dumps(result))


main()
