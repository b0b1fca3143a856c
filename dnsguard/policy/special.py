"""Special-use and locally-served names: answered here instead of leaking to the public upstream.

A name that only means something inside a home or on one host (`localhost`, `printer.local`,
`nas.home.arpa`, the PTR of 192.168.1.20, a bare `wpad`) has no public answer: forwarding it costs a
round trip to get NXDOMAIN and tells the upstream what the LAN looks like. The RFCs ask resolvers to
answer these themselves; this module says which names, and why, per RFC section. It is pure: a name
(canonical: lower case, no trailing dot) and a query type in, an answer or None out.

What is answered here (each part can be switched off, and a conditional upstream that covers a name
wins, so a LAN zone such as `home.arpa` or `168.192.in-addr.arpa` can still go to the LAN's server):

- `localhost` and below (RFC 6761 6.3): the loopback addresses; other types get NODATA.
- NXDOMAIN for `invalid` (RFC 6761 6.4), `test` (6.2: "SHOULD, by default, generate immediate negative
  responses"; forwarding is the opt-in, here a conditional upstream for `test`), `local` (RFC 6762
  22.1: mDNS names, "SHOULD generate immediate NXDOMAIN"), `onion` (RFC 7686 2: "MUST generate
  NXDOMAIN") and `home.arpa` (RFC 8375 7, added to the locally-served zones).
- `example` is not here: RFC 6761 6.5 says caching servers resolve it normally.
- Private reverse zones (RFC 6303 4, plus RFC 7793 for 100.64.0.0/10 and RFC 6762 22.1 for
  link-local): NXDOMAIN, as dnsmasq's bogus-priv does.
- Single-label names (dnsmasq's domain-needed): NXDOMAIN for the address-like lookups a host makes
  when it searches a bare name. Other types of a single label are TLD queries (a validating stub
  asks `com DS`), so they are forwarded: an unsigned NXDOMAIN there would make the TLD bogus.
- `wpad` as a bare name or directly under one label (`wpad.home`, `wpad.corp`): the WPAD name
  collision (US-CERT TA16-144A), where a proxy setting is fetched from whoever registers that name.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from dnsguard.dns.names import DomainName

LOOPBACK: Final = ("127.0.0.1", "::1")

QTYPE_A, QTYPE_AAAA, QTYPE_SVCB, QTYPE_HTTPS, QTYPE_ANY = 1, 28, 64, 65, 255
ADDRESS_QTYPES: Final = frozenset({QTYPE_A, QTYPE_AAAA, QTYPE_SVCB, QTYPE_HTTPS, QTYPE_ANY})
"""What a host asks for a name it means to connect to; a bare label asked for these is a search, not a TLD."""

SPECIAL_USE_TTL: Final = 300
"""TTL of these answers and of their SOA (negative caching). RFC 6303 3 suggests 10800 for the SOA
minimum; a shorter time lets a conditional upstream added by a reload take effect within minutes."""

# RFC 6303 4.1 and 4.2, RFC 7793 (100.64.0.0/10), RFC 6762 22.1 (169.254.0.0/16, fe80::/10).
PRIVATE_NETWORKS: Final = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "255.255.255.255/32",
    "100.64.0.0/10",
    "::/128",
    "::1/128",
    "fd00::/8",
    "fe80::/10",
    "2001:db8::/32",
)


class Answer(enum.Enum):
    NXDOMAIN = "nxdomain"
    LOOPBACK = "loopback"
    """The loopback address of the queried family; NODATA for other types (RFC 6761 6.3)."""


@dataclass(frozen=True, slots=True)
class SpecialUse:
    """The local answer for a special-use name and the rule that gives it."""

    answer: Answer
    rule: str
    """e.g. 'localhost (RFC 6761 6.3)', for `explain` and logs."""


# Top-level names answered locally, with the rule; `arpa` is looked up by zone below it.
_TOP_LEVEL: Final = {
    "localhost": SpecialUse(Answer.LOOPBACK, "localhost (RFC 6761 6.3)"),
    "invalid": SpecialUse(Answer.NXDOMAIN, "invalid (RFC 6761 6.4)"),
    "test": SpecialUse(Answer.NXDOMAIN, "test (RFC 6761 6.2)"),
    "local": SpecialUse(Answer.NXDOMAIN, "local: multicast DNS only (RFC 6762 22.1)"),
    "onion": SpecialUse(Answer.NXDOMAIN, "onion: Tor only (RFC 7686 2)"),
}
_CHECKED_TOP_LEVEL: Final = frozenset({*_TOP_LEVEL, "arpa"})
_HOME_ARPA: Final = SpecialUse(Answer.NXDOMAIN, "home.arpa: the home network's own zone (RFC 8375 7)")
_PRIVATE_REVERSE: Final = SpecialUse(
    Answer.NXDOMAIN, "reverse zone of a private or special range (RFC 6303 4, RFC 7793)"
)
_SINGLE_LABEL: Final = SpecialUse(Answer.NXDOMAIN, "single-label name: no public answer (domain-needed)")
_WPAD: Final = SpecialUse(Answer.NXDOMAIN, "wpad under a bare label: WPAD name collision (TA16-144A)")


def reverse_zones(network: str) -> list[str]:
    """The in-addr.arpa or ip6.arpa zones that cover `network` exactly (split on octet or nibble bounds)."""
    net = ipaddress.ip_network(network)
    step = 8 if net.version == 4 else 4
    length = -(-net.prefixlen // step) * step  # up to the next label boundary
    zones = []
    for subnet in net.subnets(new_prefix=length) if length > net.prefixlen else [net]:
        labels = subnet.network_address.reverse_pointer.split(".")
        full = 32 // step if net.version == 4 else 128 // step
        zones.append(".".join(labels[full - length // step :]))
    return zones


PRIVATE_REVERSE_ZONES: Final = frozenset(zone for net in PRIVATE_NETWORKS for zone in reverse_zones(net))


def _covered(name: str, zones: frozenset[str]) -> bool:
    """True when `name` is one of `zones` or below one ('.' covers every single-label name)."""
    if "." not in name and "." in zones:
        return True
    while True:
        if name in zones:
            return True
        dot = name.find(".")
        if dot < 0:
            return False
        name = name[dot + 1 :]


class SpecialUseNames:
    """Which names this resolver answers itself (see the module docstring)."""

    def __init__(
        self,
        *,
        local_answers: bool = True,
        private_reverse: bool = True,
        single_label: bool = True,
        forwarded: Iterable[DomainName] = (),
    ) -> None:
        self.local_answers = local_answers
        self.private_reverse = private_reverse
        self.single_label = single_label
        self.forwarded = frozenset(forwarded)
        """Zones with a conditional upstream: their names are forwarded, whatever the rules say."""

    @property
    def enabled(self) -> bool:
        return self.local_answers or self.private_reverse or self.single_label

    def check(self, name: str, qtype: int = QTYPE_A) -> SpecialUse | None:
        """The local answer for canonical `name` asked with `qtype`, or None to go on with the policy."""
        dot = name.rfind(".")
        if dot < 0:
            if not name:
                return None  # the root zone
            special = self._single_label(name, qtype)
        else:
            top = name[dot + 1 :]
            if top not in _CHECKED_TOP_LEVEL and dot != 4:
                return None  # almost every name: one rfind, one slice, one set lookup
            if top == "arpa":
                special = self._arpa(name)
            elif not self.local_answers:
                return None
            elif top in _TOP_LEVEL:
                special = _TOP_LEVEL[top]
            elif dot == 4 and name.startswith("wpad."):  # wpad.<label>
                special = _WPAD
            else:
                return None
        if special is None:
            return None
        # localhost stays on this host whatever is configured (RFC 6761 6.3).
        if special.answer is Answer.NXDOMAIN and self.forwarded and _covered(name, self.forwarded):
            return None
        return special

    def _single_label(self, name: str, qtype: int) -> SpecialUse | None:
        if name in _TOP_LEVEL:
            return _TOP_LEVEL[name] if self.local_answers else None
        if name == "wpad" and self.local_answers:
            return _WPAD
        if self.single_label and qtype in ADDRESS_QTYPES:
            return _SINGLE_LABEL
        return None

    def _arpa(self, name: str) -> SpecialUse | None:
        if self.local_answers and (name == "home.arpa" or name.endswith(".home.arpa")):
            return _HOME_ARPA
        if self.private_reverse and _covered(name, PRIVATE_REVERSE_ZONES):
            return _PRIVATE_REVERSE
        return None
