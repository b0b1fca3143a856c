"""Building the transport a spec names."""

from __future__ import annotations

from dnsguard.dns.upstream_spec import Scheme, UpstreamSpec, parse_upstream
from dnsguard.net.upstream.base import Upstream
from dnsguard.net.upstream.https import HttpsUpstream
from dnsguard.net.upstream.options import DEFAULT_OPTIONS, TransportOptions
from dnsguard.net.upstream.stream import TcpUpstream, TlsUpstream
from dnsguard.net.upstream.udp import UdpUpstream

__all__ = ["create_upstream"]


def create_upstream(spec: UpstreamSpec | str, options: TransportOptions | None = None) -> Upstream:
    """The transport for a spec (a parsed UpstreamSpec or a spec string)."""
    if isinstance(spec, str):
        spec = parse_upstream(spec)
    options = options or DEFAULT_OPTIONS
    if spec.scheme is Scheme.UDP:
        return UdpUpstream(spec.host, spec.port, name=spec.name, options=options)
    if spec.scheme is Scheme.TCP:
        return TcpUpstream(spec.host, spec.port, name=spec.name, options=options)
    if spec.scheme is Scheme.TLS:
        return TlsUpstream(spec.host, spec.port, addresses=spec.addresses, name=spec.name, options=options)
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return HttpsUpstream(
        f"https://{host}:{spec.port}{spec.path}", addresses=spec.addresses, name=spec.name, options=options
    )
