"""Rules that depend on the query, the client or answer with records, beside the hash index.

A `SideRule` is a rule with a DNS modifier (`modifiers`) or a hosts line with a real address. A
`SideIndex` holds a selection's side rules by listed name (plus the few regex and match-all ones), and is
consulted only when the selection has any: plain rules keep the hash index's fast path.

Precedence, as AdGuard documents and AdGuard Home applies it (`resolve`):

1. ``$dnsrewrite`` rules that apply (and that no ``@@...$dnsrewrite`` exception disables) answer the
   query, whatever block or exception rules say: a response code other than NOERROR (NXDOMAIN,
   REFUSED, SERVFAIL) wins outright, then a CNAME, else the records of all NOERROR rewrites together
   (those of the asked type; none of that type: an empty NOERROR answer); a CNAME to the asked name
   itself is left out (it would be a loop);
2. otherwise block and exception rules, with and without modifiers, by strength:
   ``@@...$important`` > ``$important`` > ``@@`` > block;
3. otherwise hosts lines with real addresses answer with them (the asked family; the other: NODATA),
   and their addresses' reverse names (in-addr.arpa, ip6.arpa) answer PTR with each line's first name,
   as /etc/hosts answers for dnsmasq.

A rule applies when the query's type passes ``$dnstype``, the client passes ``$client`` and ``$ctag``,
and the name is not under a ``$denyallow`` domain.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from dnsguard.filter.modifiers import RCODE_NOERROR, ClientValue, ModifierError, Rewrite, wire_name
from dnsguard.filter.regex import CompiledRegex, compile_regex

__all__ = ["Request", "Resolution", "SideIndex", "SideRule", "resolve", "strength"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CANDIDATE_CACHE: Final = 4096
# Scopes as filter.rules.Scope numbers them (an IntEnum; not imported, rules imports this module).
_EXACT: Final = 0
_PTR: Final = 12
_SUBDOMAINS: Final = 2
_EMPTY: Final[frozenset[int]] = frozenset()
_NO_TAGS: Final[frozenset[str]] = frozenset()


@dataclass(frozen=True, slots=True, eq=False)
class SideRule:
    """One rule with DNS modifiers, or one hosts line with real addresses."""

    text: str
    """The rule in canonical form (modifiers sorted): what ``$badfilter`` and `explain` name."""
    allow: bool = False
    important: bool = False
    scope: int = 1
    """A `filter.rules.Scope` value."""
    names: tuple[str, ...] = ()
    pattern: str = ""
    """A regex rule's pattern; with no names either, the rule covers every name (``*$denyallow=...``)."""
    dnstypes: frozenset[int] = _EMPTY
    not_dnstypes: frozenset[int] = _EMPTY
    clients: tuple[ClientValue, ...] = ()
    clients_negated: bool = False
    ctags: frozenset[str] = _NO_TAGS
    not_ctags: frozenset[str] = _NO_TAGS
    denyallow: tuple[str, ...] = ()
    rewrite: Rewrite | None = None
    rewrite_all: bool = False
    """``@@...$dnsrewrite`` without a value: disables every rewrite of the names it covers."""
    records: tuple[tuple[int, bytes], ...] = ()
    """A hosts line's addresses as (record type, packed address)."""
    line: int = 0
    line_text: str = ""
    """The source line as written (the compiled files store it and parse it again)."""
    list_name: str = ""
    source: str = ""

    @property
    def per_client(self) -> bool:
        """True when whether the rule applies depends on who asks."""
        return bool(self.clients or self.ctags or self.not_ctags)

    def covers(self, name: str, listed: str) -> bool:
        """True when the rule, listed under `listed`, names `name` by its scope."""
        if name == listed:
            return self.scope != _SUBDOMAINS
        return self.scope != _EXACT

    def applies(self, name: str, request: Request) -> bool:
        """True when the rule's modifiers let it apply to this query from this client."""
        if self.dnstypes and request.qtype not in self.dnstypes:
            return False
        if request.qtype in self.not_dnstypes:
            return False
        if self.clients:
            hit = any(value.matches(request.address, request.names) for value in self.clients)
            if hit is self.clients_negated:
                return False
        if self.ctags and self.ctags.isdisjoint(request.tags):
            return False
        if self.not_ctags and not self.not_ctags.isdisjoint(request.tags):
            return False
        return not any(name == domain or name.endswith("." + domain) for domain in self.denyallow)


def strength(allow: bool, important: bool) -> int:
    """Rule strength as the matcher compares it: block 1, allow 2, important block 3, important allow 4."""
    if allow:
        return 4 if important else 2
    return 3 if important else 1


@dataclass(frozen=True, slots=True)
class Request:
    """What besides the name a side rule may depend on."""

    qtype: int
    address: IPAddress | None = None
    names: frozenset[str] = _NO_TAGS
    """The client's configured names, lower case."""
    tags: frozenset[str] = _NO_TAGS

    @staticmethod
    def of(qtype: int, client: str, names: Iterable[str] = (), tags: Iterable[str] = ()) -> Request:
        try:
            address: IPAddress | None = ipaddress.ip_address(client.partition("%")[0])
        except ValueError:
            address = None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
        return Request(qtype, address, frozenset(n.lower() for n in names), frozenset(tags))


@dataclass(frozen=True, slots=True)
class Resolution:
    """What the side rules make of a query, given the hash index's strongest rule (`plain`)."""

    outcome: str
    """'plain': the hash index's verdict stands; 'block', 'allow': `winners[0]` decides; 'rewrite' and
    'records': answer `rcode`, `cname` or `rdatas` (of the asked type) from `winners`."""
    winners: tuple[SideRule, ...] = ()
    beaten: tuple[SideRule, ...] = ()
    """Side rules that applied but lost (`plain_beaten` says whether the index's rule lost too)."""
    plain_beaten: bool = False
    rcode: int = RCODE_NOERROR
    cname: str = ""
    rdatas: tuple[bytes, ...] = ()
    per_client: bool = False


def resolve(name: str, plain: int, candidates: Iterable[SideRule], request: Request) -> Resolution:
    """The precedence of the module docstring; `plain` is the index rule's strength (0: none)."""
    candidates = tuple(candidates)
    per_client = any(rule.per_client for rule in candidates)
    applicable = [rule for rule in candidates if rule.applies(name, request)]
    # A CNAME to the asked name itself would answer with a loop: such a rewrite is left out.
    rewrites = [
        rule
        for rule in applicable
        if rule.rewrite is not None and not rule.allow and rule.rewrite.cname != name
    ]
    if rewrites:
        disabling = [rule for rule in applicable if rule.allow and (rule.rewrite_all or rule.rewrite)]
        if any(rule.rewrite_all for rule in disabling):
            rewrites = []
        else:
            off = {rule.rewrite.text.lower() for rule in disabling if rule.rewrite is not None}
            rewrites = [
                rule for rule in rewrites if rule.rewrite is not None and rule.rewrite.text.lower() not in off
            ]
    if rewrites:
        return _rewritten(rewrites, applicable, plain, request, per_client)
    network = [rule for rule in applicable if not rule.records and not rule.rewrite and not rule.rewrite_all]
    best: SideRule | None = None
    best_strength = plain
    for rule in network:
        value = strength(rule.allow, rule.important)
        if value > best_strength:
            best, best_strength = rule, value
    if best is not None:
        beaten = tuple(rule for rule in applicable if rule is not best)
        outcome = "allow" if best.allow else "block"
        return Resolution(outcome, (best,), beaten, plain > 0, per_client=per_client)
    if plain:
        return Resolution("plain", (), tuple(applicable), per_client=per_client)
    hosts = [rule for rule in applicable if rule.records]
    if hosts:
        rdatas = tuple(data for rule in hosts for rtype, data in rule.records if rtype == request.qtype)
        others = tuple(rule for rule in applicable if not rule.records)
        return Resolution("records", tuple(hosts), others, rdatas=rdatas, per_client=per_client)
    return Resolution("plain", (), tuple(applicable), per_client=per_client)


def _rewritten(
    rewrites: list[SideRule], applicable: list[SideRule], plain: int, request: Request, per_client: bool
) -> Resolution:
    # A response code (REFUSED, NXDOMAIN...) answers alone, then a CNAME; otherwise all records are summed.
    for alone in (
        lambda rewrite: rewrite.rcode != RCODE_NOERROR,
        lambda rewrite: bool(rewrite.cname),
    ):
        for rule in rewrites:
            if rule.rewrite is not None and alone(rule.rewrite):
                beaten = tuple(other for other in applicable if other is not rule)
                return Resolution(
                    "rewrite",
                    (rule,),
                    beaten,
                    plain > 0,
                    rule.rewrite.rcode,
                    rule.rewrite.cname,
                    per_client=per_client,
                )
    rdatas = tuple(
        rule.rewrite.rdata
        for rule in rewrites
        if rule.rewrite is not None and rule.rewrite.rtype == request.qtype and rule.rewrite.rdata
    )
    beaten = tuple(other for other in applicable if other not in rewrites)
    return Resolution("rewrite", tuple(rewrites), beaten, plain > 0, rdatas=rdatas, per_client=per_client)


class SideIndex:
    """A selection's side rules, found by the names they list (and the few that list none)."""

    def __init__(self, rules: Iterable[SideRule]) -> None:
        self._by_name: dict[str, list[SideRule]] = {}
        self._everywhere: list[SideRule] = []
        self._regexes: list[tuple[SideRule, CompiledRegex]] = []
        self._order: dict[int, int] = {}
        self._pointers = 0
        for rule in rules:
            self._order[id(rule)] = order = len(self._order)
            if rule.records:
                pointer = pointer_rule(rule)
                if pointer is not None:
                    self._order[id(pointer)] = order
                    self._by_name.setdefault(pointer.names[0], []).append(pointer)
                    self._pointers += 1
            if rule.names:
                for listed in rule.names:
                    self._by_name.setdefault(listed, []).append(rule)
            elif rule.pattern:
                self._regexes.append((rule, compile_regex(rule.pattern)))
            else:
                self._everywhere.append(rule)
        self._cache: dict[str, tuple[SideRule, ...]] = {}
        # The last two labels of every listed name (the name itself if it has one label): a query can
        # only be under a listed name if its own last two (or last one) labels are among them.
        self._tails = frozenset(_tail(listed) for listed in self._by_name)
        self._labels_one = any("." not in listed for listed in self._by_name)

    def __len__(self) -> int:
        """The side rules given (a hosts line's reverse entry is not one more)."""
        return (
            len({id(rule) for rules in self._by_name.values() for rule in rules})
            - self._pointers
            + len(self._everywhere)
            + len(self._regexes)
        )

    def candidates(self, name: str) -> tuple[SideRule, ...]:
        """The rules whose pattern covers `name` (modifiers not yet checked), in list order."""
        # Runs for every query of a group that has side rules: a few dictionary probes, no allocation
        # unless a rule is found. Only regex side rules, rare and costlier, have their answers cached.
        regexes = self._regexes
        if regexes:
            cached = self._cache.get(name)
            if cached is not None:
                return cached
        elif not self._everywhere and _tail(name) not in self._tails:
            last = name.rfind(".")
            if not self._labels_one or name[last + 1 :] not in self._tails:
                return ()
        found: list[SideRule] | None = list(self._everywhere) if self._everywhere else None
        by_name = self._by_name
        suffix = name
        start = 0
        while True:
            listed = by_name.get(suffix)
            if listed is not None:
                for rule in listed:
                    if rule.covers(name, suffix):
                        if found is None:
                            found = [rule]
                        elif rule not in found:
                            found.append(rule)
            dot = name.find(".", start)
            if dot < 0:
                break
            start = dot + 1
            suffix = name[start:]
        if regexes:
            matched = [rule for rule, regex in regexes if regex.search(name) is not None]
            if matched:
                found = [*(found or ()), *matched]
        if found is not None and len(found) > 1:
            order = self._order
            found.sort(key=lambda rule: order[id(rule)])
        result = tuple(found) if found else ()
        if regexes:
            if len(self._cache) >= _CANDIDATE_CACHE:
                self._cache.clear()
            self._cache[name] = result
        return result


def pointer_rule(rule: SideRule) -> SideRule | None:
    """A hosts line's reverse entry: its address's reverse name answers PTR with the line's first name
    (the host's canonical name in /etc/hosts); None for a rule without an address or names."""
    if not rule.names:
        return None
    for rtype, packed in rule.records:
        if rtype in (1, 28):
            try:
                target = wire_name(rule.names[0])
            except ModifierError:
                return None
            reverse = ipaddress.ip_address(packed).reverse_pointer
            return replace(rule, names=(reverse,), scope=_EXACT, records=((_PTR, target),))
    return None


def _tail(name: str) -> str:
    """The last two labels of a name (all of it when it has fewer)."""
    last = name.rfind(".")
    if last < 0:
        return name
    before = name.rfind(".", 0, last)
    return name[before + 1 :] if before >= 0 else name
