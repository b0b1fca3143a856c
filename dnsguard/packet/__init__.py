"""Sans-I/O IPv4/IPv6 packets: classify what the TUN hands us, build replies and refusals, rewrite flows.

The data path's use, per packet read from the TUN:

    if not dns_port_hit(buf):       # one or two struct calls; most packets stop here
        encrypt(buf)
    else:
        info = classify(buf)        # FormError if malformed: count and drop
        ...                         # UDP/53 -> udp_reply; TCP/853 -> tcp_reset_reply or icmp_unreachable
"""

from dnsguard.packet.checksum import (
    Buffer,
    checksum_from_sum,
    checksum_update,
    internet_checksum,
    pseudo_header_sum,
    verify_checksum,
)
from dnsguard.packet.icmp import (
    ICMP_DESTINATION_UNREACHABLE,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMPV6_DESTINATION_UNREACHABLE,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    Unreachable,
    icmp_echo,
    icmp_error_allowed,
    icmp_message,
    icmp_unreachable,
)
from dnsguard.packet.ip import (
    DNS_PORTS,
    FIRST_FRAGMENT,
    IPPROTO_FRAGMENT,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    LATER_FRAGMENT,
    NO_PORT,
    NOT_FRAGMENT,
    PacketInfo,
    classify,
    dns_port_hit,
    ip_header,
    ipv4_header,
    ipv6_header,
    port_hit_test,
)
from dnsguard.packet.rewrite import rewrite_endpoints
from dnsguard.packet.tcp import (
    TcpFlags,
    TcpHeader,
    parse_tcp_options,
    tcp_header,
    tcp_options,
    tcp_reset_reply,
    tcp_segment,
)
from dnsguard.packet.udp import udp_packet, udp_reply

__all__ = [
    "DNS_PORTS",
    "FIRST_FRAGMENT",
    "ICMPV6_DESTINATION_UNREACHABLE",
    "ICMPV6_ECHO_REPLY",
    "ICMPV6_ECHO_REQUEST",
    "ICMP_DESTINATION_UNREACHABLE",
    "ICMP_ECHO_REPLY",
    "ICMP_ECHO_REQUEST",
    "IPPROTO_FRAGMENT",
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "LATER_FRAGMENT",
    "NOT_FRAGMENT",
    "NO_PORT",
    "Buffer",
    "PacketInfo",
    "TcpFlags",
    "TcpHeader",
    "Unreachable",
    "checksum_from_sum",
    "checksum_update",
    "classify",
    "dns_port_hit",
    "icmp_echo",
    "icmp_error_allowed",
    "icmp_message",
    "icmp_unreachable",
    "internet_checksum",
    "ip_header",
    "ipv4_header",
    "ipv6_header",
    "parse_tcp_options",
    "port_hit_test",
    "pseudo_header_sum",
    "rewrite_endpoints",
    "tcp_header",
    "tcp_options",
    "tcp_reset_reply",
    "tcp_segment",
    "udp_packet",
    "udp_reply",
    "verify_checksum",
]
