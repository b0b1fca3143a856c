"""nftables edge of the firewall fed by DNS: one table of sets with timeouts, filled in batches.

New connections leaving through the tunnel (the host's own in the output hook, the LAN's in the forward
hook), or on a server those its peers send in through the tunnel (forward hook, whatever interface they
leave by), must go to an address a DNS answer handed out (sets `handed4`/`handed6`, per-element timeout =
TTL + grace), to an allowed prefix, or be DNS; the rest is rejected (TCP reset, else ICMP
administratively prohibited) or, in learn mode, only counted. Known DoH endpoints are refused even when
an answer handed them out. Only traffic for the tunnel interface is looked at: the LAN, link-local, the
resolver and the tunnel's own encrypted packets (marked, leaving by the uplink) never match.

Elements go in through one libnftables context (ctypes, JSON-free command text, one netlink
transaction per batch); where the library is missing, `nft -f -` runs the same text. Measured here
(bench/firewall_batch.py, 2 shared cores): a batch of 50 elements costs 0.8 ms through the library and
28 ms through a new `nft` process, hence the library first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dnsguard.dns.handed_out import Element
from dnsguard.errors import NetworkError
from dnsguard.net.firewall import _set, delete_table
from dnsguard.policy.firewall import LINK_LOCAL

FIREWALL_TABLE = "dnsguard_fw"
COUNTERS = ("refused", "learned", "doh_refused")


@dataclass
class DnsFirewallRules:
    """The firewall table's text: chains, sets and counters for one configuration."""

    tunnel_interface: str
    marks: Sequence[int]
    """The tunnel's fwmark and the resolver's: their packets are dnsguard's own."""
    enforce: bool = True
    host: bool = True
    """Filter the host's own connections (output hook)."""
    lan_interfaces: list[str] = field(default_factory=list)
    forward_from_any: bool = False
    """Filter connections forwarded from any interface (`dnsguard resolve` on a router) rather than from
    `lan_interfaces` only."""
    lan_clients: list[str] | None = None
    """Filter only forwarded connections from these prefixes (None: every LAN client, or every peer)."""
    lan_macs: list[str] = field(default_factory=list)
    """With `lan_clients`: also filter forwarded connections from these MAC addresses (group members
    named by MAC; the forward hook still sees the Ethernet header of what came in from the LAN)."""
    from_peers: bool = False
    """A server: filter the connections forwarded from `tunnel_interface` (its peers), not those leaving
    by it."""
    allow: list[str] = field(default_factory=list)
    doh: list[str] = field(default_factory=list)

    def ruleset(self) -> str:
        lines = [
            f"table inet {FIREWALL_TABLE} {{",
            "  set handed4 { type ipv4_addr; flags timeout; }",
            "  set handed6 { type ipv6_addr; flags timeout; }",
        ]
        for name, prefixes in (("allow", [*self.allow, *LINK_LOCAL]), ("doh", self.doh)):
            for version, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
                elements = _set(prefixes, version)
                body = f" elements = {elements};" if elements else ""
                lines.append(f"  set {name}{version} {{ type {kind}; flags interval;{body} }}")
        for counter in COUNTERS:
            lines.append(f"  counter {counter} {{ }}")
        tunnel = f'oifname "{self.tunnel_interface}"'
        if self.host:
            lines += [
                "  chain output {",
                "    type filter hook output priority 5; policy accept;",
                f"    {tunnel} ct state new jump check",
                "  }",
            ]
        if self.from_peers:
            forwarded = f'iifname "{self.tunnel_interface}"'
        elif self.lan_interfaces or self.forward_from_any:
            interfaces = "{ " + ", ".join(f'"{i}"' for i in self.lan_interfaces) + " }"
            forwarded = tunnel if self.forward_from_any else f"iifname {interfaces} {tunnel}"
        else:
            forwarded = ""
        if forwarded:
            lines += ["  chain forward {", "    type filter hook forward priority 5; policy accept;"]
            if self.lan_clients is None:
                lines.append(f"    {forwarded} ct state new jump check")
            else:
                for version, keyword in ((4, "ip saddr"), (6, "ip6 saddr")):
                    sources = _set(self.lan_clients, version)
                    if sources:
                        lines.append(f"    {forwarded} {keyword} {sources} ct state new jump check")
                if self.lan_macs and not self.from_peers:
                    macs = "{ " + ", ".join(self.lan_macs) + " }"
                    lines.append(f"    {forwarded} ether saddr {macs} ct state new jump check")
            lines.append("  }")
        refuse = "goto refuse" if self.enforce else 'counter name "learned" return'
        doh = 'counter name "doh_refused" goto refuse' if self.enforce else 'counter name "learned" return'
        lines += [
            "  chain check {",
            *([f"    meta mark {{ {', '.join(str(m) for m in self.marks)} }} return"] if self.marks else []),
            "    meta l4proto { tcp, udp } th dport 53 return",
            f"    ip daddr @doh4 {doh}",
            f"    ip6 daddr @doh6 {doh}",
            "    ip daddr @allow4 return",
            "    ip6 daddr @allow6 return",
            "    ip daddr @handed4 return",
            "    ip6 daddr @handed6 return",
            f"    {refuse}",
            "  }",
            "  chain refuse {",
            '    counter name "refused"',
            "    meta l4proto tcp reject with tcp reset",
            "    reject with icmpx admin-prohibited",
            "  }",
            "}",
        ]
        return "\n".join(lines) + "\n"

    def script(self) -> str:
        """Replace the table atomically (its sets start empty: the caller queues the live elements again)."""
        return f"add table inet {FIREWALL_TABLE}\ndelete table inet {FIREWALL_TABLE}\n" + self.ruleset()


def doh_script(doh: Sequence[str]) -> str:
    """One transaction replacing the DoH endpoint sets: emptied and filled again, never seen half done."""
    lines = []
    for version in (4, 6):
        name = f"inet {FIREWALL_TABLE} doh{version}"
        lines.append(f"flush set {name}")
        elements = _set(doh, version)
        if elements:
            lines.append(f"add element {name} {elements}")
    return "\n".join(lines) + "\n"


def element_script(elements: Iterable[Element]) -> str:
    """One transaction adding or refreshing elements.

    `add element` leaves an existing element's timeout as it was, so each element is added (a no-op when
    present), deleted and added again with its new timeout, all in the same transaction: the address is
    never missing from the set as the kernel applies the batch atomically.
    """
    by_set: dict[str, list[str]] = {"handed4": [], "handed6": []}
    plain: dict[str, list[str]] = {"handed4": [], "handed6": []}
    for element in elements:
        name = "handed4" if element.version == 4 else "handed6"
        by_set[name].append(f"{element.address} timeout {element.timeout}s")
        plain[name].append(element.address)
    lines = []
    for name, items in by_set.items():
        if items:
            table = f"inet {FIREWALL_TABLE} {name}"
            lines.append(f"add element {table} {{ {', '.join(items)} }}")
            lines.append(f"delete element {table} {{ {', '.join(plain[name])} }}")
            lines.append(f"add element {table} {{ {', '.join(items)} }}")
    return "\n".join(lines) + "\n" if lines else ""


class Nftables:
    """One persistent libnftables context (or `nft -f -` where the library is missing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self._ctx: int | None = None
        name = ctypes.util.find_library("nftables")
        if name is None:
            return
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            return
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            return
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        self._lib, self._ctx = lib, ctx

    @property
    def backend(self) -> str:
        return "libnftables" if self._lib is not None else "nft"

    def run(self, script: str, json_output: bool = False) -> str:
        """Run nft commands in one transaction; the output text (JSON if asked); NetworkError if refused."""
        if not script:
            return ""
        with self._lock:
            lib, ctx = self._lib, self._ctx
            if lib is None or ctx is None:
                return _run_nft(script, json_output)
            lib.nft_ctx_output_set_flags(ctx, 1 << 4 if json_output else 0)  # NFT_CTX_OUTPUT_JSON
            status = lib.nft_run_cmd_from_buffer(ctx, script.encode())
            output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        if status != 0:
            raise NetworkError(f"nftables rejected the firewall update: {error.strip()[:500]}")
        return output

    def close(self) -> None:
        with self._lock:
            if self._lib is not None and self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
            self._lib = self._ctx = None


class FakeNftables:
    """In memory, for tests without root: records each transaction; `fail` makes the next ones refused."""

    backend = "fake"

    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.fail = False

    def run(self, script: str, json_output: bool = False) -> str:
        if self.fail:
            raise NetworkError("nftables rejected the firewall update: (fake)")
        self.scripts.append(script)
        return '{"nftables": []}' if json_output else ""

    def close(self) -> None:
        pass


def _run_nft(script: str, json_output: bool) -> str:
    if shutil.which("nft") is None:
        raise NetworkError("nft (nftables) is not installed")
    command = ["nft", "-j", "-f", "-"] if json_output else ["nft", "-f", "-"]
    try:
        result = subprocess.run(command, input=script, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"nft (nftables) could not run: {exc}") from exc
    if result.returncode != 0:
        raise NetworkError(f"nftables rejected the firewall update: {result.stderr.strip()[:500]}")
    return result.stdout


def read_counters(nft: Nftables | FakeNftables) -> dict[str, int]:
    """Packets counted by the firewall's named counters (empty when the table is absent)."""
    try:
        text = nft.run(f"list counters table inet {FIREWALL_TABLE}\n", json_output=True)
        items = json.loads(text).get("nftables", [])
    except (NetworkError, ValueError):
        return {}
    counters: dict[str, int] = {}
    for item in items:
        counter = item.get("counter") if isinstance(item, dict) else None
        if isinstance(counter, dict) and counter.get("name") in COUNTERS:
            counters[str(counter["name"])] = int(counter.get("packets", 0))
    return counters


_EXPIRES = re.compile(r"expires ((?:\d+(?:ms|d|h|m|s))+)")
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_expires(text: str) -> float | None:
    """Seconds left from nft's element listing (`... timeout 1m40s expires 1m39s992ms`)."""
    match = _EXPIRES.search(text)
    if match is None:
        return None
    return sum(int(n) * _UNITS[unit] for n, unit in re.findall(r"(\d+)(ms|d|h|m|s)", match.group(1)))


def kernel_seconds_left(nft: Nftables, address: str) -> float | None:
    """How long the kernel's handed-out set keeps `address` open (None: absent, or no firewall table)."""
    name = "handed4" if ipaddress.ip_address(address).version == 4 else "handed6"
    try:
        text = nft.run(f"get element inet {FIREWALL_TABLE} {name} {{ {address} }}\n")
    except NetworkError:
        return None
    return parse_expires(text)


def firewall_present(nft: Nftables) -> bool:
    try:
        nft.run(f"list table inet {FIREWALL_TABLE}\n")
    except NetworkError:
        return False
    return True


def remove_firewall() -> None:
    delete_table("inet", FIREWALL_TABLE)
