"""Micro-benchmark of the per-packet dispatch and the checksum: python bench/packet_classify.py [--quick].

The full run takes about a minute; `--quick` a few seconds, with noisier figures.

Reports the minimum over many repeats (the least disturbed run), in nanoseconds per call, next to an empty
function call as the floor that any per-packet Python call pays. The checksum section also times the
alternatives that dnsguard/packet/checksum.py was chosen over, so the choice can be re-checked on new
CPython versions.
"""

from __future__ import annotations

import argparse
import array
import ipaddress
import struct
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnsguard.packet import (
    TcpFlags,
    checksum_from_sum,
    classify,
    dns_port_hit,
    internet_checksum,
    rewrite_endpoints,
    tcp_segment,
    udp_packet,
    udp_reply,
)

CLIENT_V4 = ipaddress.IPv4Address("10.13.0.2").packed
WEB_V4 = ipaddress.IPv4Address("93.184.216.34").packed
RESOLVER_V4 = ipaddress.IPv4Address("9.9.9.9").packed
CLIENT_V6 = ipaddress.IPv6Address("fd00:13::2").packed
WEB_V6 = ipaddress.IPv6Address("2606:2800:220:1::1").packed
RESOLVER_V6 = ipaddress.IPv6Address("2620:fe::fe").packed
# A query for example.com/A, as a stub resolver sends it.
DNS_QUERY = bytes.fromhex("c0de01000001000000000000076578616d706c6503636f6d0000010001")
DNS_ANSWER = (
    DNS_QUERY[:2]
    + bytes.fromhex("8180000100010000")
    + DNS_QUERY[8:]
    + bytes.fromhex("c00c000100010000012c00045db8d822")
)


def ipv6_with_extension_headers() -> bytes:
    """A UDP/53 packet behind Hop-by-Hop and Destination Options headers, the slow path of the fast test."""
    plain = udp_packet(CLIENT_V6, RESOLVER_V6, 40000, 53, DNS_QUERY)
    hop_by_hop = bytes([60, 0, 1, 4, 0, 0, 0, 0])  # next: Destination Options; PadN
    destination_options = bytes([17, 0, 1, 4, 0, 0, 0, 0])  # next: UDP; PadN
    payload_length = len(plain) - 40 + 16
    header = plain[:4] + struct.pack("!HBB", payload_length, 0, 64) + plain[8:40]
    return header + hop_by_hop + destination_options + plain[40:]


def packets() -> dict[str, bytes]:
    """The traffic mix the dispatch sees, one representative of each kind."""
    return {
        "ipv4 tcp/443 1400B (not DNS)": tcp_segment(
            CLIENT_V4, WEB_V4, 40000, 443, 1, 1, TcpFlags.ACK, payload=bytes(1400)
        ),
        "ipv4 udp/53 query": udp_packet(CLIENT_V4, RESOLVER_V4, 40000, 53, DNS_QUERY),
        "ipv6 tcp/443 1400B (not DNS)": tcp_segment(
            CLIENT_V6, WEB_V6, 40000, 443, 1, 1, TcpFlags.ACK, payload=bytes(1400)
        ),
        "ipv6 udp/53 query": udp_packet(CLIENT_V6, RESOLVER_V6, 40000, 53, DNS_QUERY),
        "ipv6 hbh+dstopts udp/53": ipv6_with_extension_headers(),
    }


def nanoseconds(function: Callable[..., object], argument: object, number: int, repeat: int) -> float:
    """Minimum time of one call, in nanoseconds."""
    timings = timeit.repeat(
        "function(argument)",
        globals={"function": function, "argument": argument},
        number=number,
        repeat=repeat,
    )
    return min(timings) / number * 1e9


def dispatch(buf: bytes | memoryview) -> object:
    """What the data path does per packet: the fast test, and the full parse only on a hit."""
    if dns_port_hit(buf):
        return classify(buf)
    return None


def empty_call(buf: object) -> object:
    """The floor: an empty Python call with one argument."""
    return None


# The alternatives to internet_checksum, kept here only to be measured against it.
def checksum_array_sum(data: bytes) -> int:
    """Sum of array('H') in native order, folded, byte-swapped back on little-endian hosts (RFC 1071 2(B))."""
    if len(data) & 1:
        data += b"\0"
    word_sum = sum(array.array("H", data))
    while word_sum >> 16:
        word_sum = (word_sum & 0xFFFF) + (word_sum >> 16)
    if sys.byteorder == "little":
        word_sum = ((word_sum >> 8) | (word_sum << 8)) & 0xFFFF
    return 0xFFFF - word_sum


def checksum_struct_sum(data: bytes) -> int:
    """Sum of big-endian words from struct.unpack, folded."""
    if len(data) & 1:
        data += b"\0"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    word_sum = sum(words)
    while word_sum >> 16:
        word_sum = (word_sum & 0xFFFF) + (word_sum >> 16)
    return 0xFFFF - word_sum


_HALVING_MASKS = tuple((1 << (16 << power)) - 1 for power in range(20))


def checksum_bigint_halving(data: bytes) -> int:
    """One bigint, folded by adding its high half to its low half until it fits in 32 bits."""
    value = int.from_bytes(data, "big") << (8 * (len(data) & 1))
    bits = value.bit_length()
    while bits > 32:
        power = (bits - 1).bit_length() - 5
        value = (value >> (16 << power)) + (value & _HALVING_MASKS[power])
        bits = value.bit_length()
    return checksum_from_sum(value)


def main() -> None:
    """Run and print every measurement."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier), for a smoke run")
    parser.add_argument("--repeat", type=int, default=300, help="runs per figure; the minimum is reported")
    args = parser.parse_args()
    number, repeat = (2000, 20) if args.quick else (5000, args.repeat)

    print(f"CPython {sys.version.split()[0]}, ns per call, min of {repeat} x {number}")
    print(f"  {'empty Python call':40s} {nanoseconds(empty_call, b'', number, repeat):8.0f}")
    print("\nper-packet dispatch (bytes / memoryview)")
    print(f"  {'packet':32s} {'dns_port_hit':>14s} {'classify':>14s} {'hit+classify':>14s}")
    for name, packet in packets().items():
        view = memoryview(packet)
        columns = []
        for function in (dns_port_hit, classify, dispatch):
            on_bytes = nanoseconds(function, packet, number, repeat)
            on_view = nanoseconds(function, view, number, repeat)
            columns.append(f"{on_bytes:6.0f} /{on_view:6.0f}")
        print(f"  {name:32s} {columns[0]:>14s} {columns[1]:>14s} {columns[2]:>14s}")

    print("\nreply and rewrite")
    query = packets()["ipv4 udp/53 query"]
    query_info = classify(query)
    print(
        f"  {'udp_reply ipv4 (61-byte answer)':40s} "
        f"{nanoseconds(lambda info: udp_reply(info, DNS_ANSWER), query_info, number, repeat):8.0f}"
    )
    query6_info = classify(packets()["ipv6 udp/53 query"])
    print(
        f"  {'udp_reply ipv6 (61-byte answer)':40s} "
        f"{nanoseconds(lambda info: udp_reply(info, DNS_ANSWER), query6_info, number, repeat):8.0f}"
    )
    scratch = bytearray(query)

    # Rewriting the same buffer over and over leaves it inconsistent with query_info, which costs the same.
    def redirect(info: object) -> object:
        return rewrite_endpoints(scratch, query_info, dst=CLIENT_V4, dport=5353)

    print(f"  {'rewrite_endpoints ipv4 dst+dport':40s} {nanoseconds(redirect, None, number, repeat):8.0f}")

    print("\ninternet checksum: ns per call (MB/s)")
    alternatives: list[tuple[str, Callable[[bytes], int]]] = [
        ("int.from_bytes % 0xFFFF (used)", internet_checksum),
        ("sum(array('H'))", checksum_array_sum),
        ("sum(struct.unpack('!nH'))", checksum_struct_sum),
        ("bigint halving", checksum_bigint_halving),
    ]
    sizes = (20, 100, 512, 1500)
    print(f"  {'method':32s}" + "".join(f"{size:>18d}B" for size in sizes))
    for name, checksum_function in alternatives:
        cells = []
        for size in sizes:
            data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
            assert checksum_function(data) == internet_checksum(data), name
            elapsed = nanoseconds(checksum_function, data, max(number // 10, 100), repeat)
            cells.append(f"{elapsed:8.0f} ({size / elapsed * 1e3:5.0f})")
        print(f"  {name:32s}" + "".join(f"{cell:>19s}" for cell in cells))


if __name__ == "__main__":
    main()
