"""Upstream transports (UDP, TCP, DoT, DoH) and the asyncio group that chooses among them.

The edge of the upstream path: sockets, TLS and aiohttp live here, and their exceptions become dnsguard's
upstream errors (dnsguard/dns/upstream_errors.py) where they arise. What to ask, in which order, and what a
failure does to an upstream's health is decided by the pure cores in dnsguard/dns/upstream_*.py; `fake`
holds the in-memory transport that tests the group without a network.

Spec syntax: dnsguard/dns/upstream_spec.py, shared with configuration checking.
"""

from dnsguard.net.upstream.base import TransportCounters, Upstream
from dnsguard.net.upstream.create import create_upstream
from dnsguard.net.upstream.group import AttemptHook, UpstreamGroup
from dnsguard.net.upstream.https import HttpsUpstream
from dnsguard.net.upstream.options import DEFAULT_OPTIONS, SocketSetup, TransportOptions
from dnsguard.net.upstream.stream import TcpUpstream, TlsUpstream
from dnsguard.net.upstream.udp import UdpUpstream

__all__ = [
    "DEFAULT_OPTIONS",
    "AttemptHook",
    "HttpsUpstream",
    "SocketSetup",
    "TcpUpstream",
    "TlsUpstream",
    "TransportCounters",
    "TransportOptions",
    "UdpUpstream",
    "Upstream",
    "UpstreamGroup",
    "create_upstream",
]
