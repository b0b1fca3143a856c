"""The policy: for a name asked by a client, now, what to answer and why.

Order of evaluation for a client's group:
1. local rewrites (custom answers for names, `*.name` wildcards);
2. special-use names (localhost, .local, home.arpa, private reverse zones, single labels): answered
   here whatever the group, since they are not filtering but names with no public answer;
3. filtering off for the group (or blocking paused, for all groups or this one): forward;
4. anti-bypass names: the DoH canary and iCloud Private Relay get NXDOMAIN;
5. safe search: a search engine's name is answered with a CNAME to its restricted host;
6. the group's lists (plus the lists of its schedules active right now): block or allow,
   with the list, source and line that decided. Rules with DNS modifiers and hosts lines with
   addresses (`dnsguard.filter.side`) are weighed here too, by AdGuard's precedence: they may depend
   on the query type and the client (its address, its configured name, its and its group's tags),
   answer with records (``$dnsrewrite``, hosts lines) or a response code. A hosts line or rewrite for a
   special-use name (nas.home.arpa) answers it before step 2 would.

A decision that depended on who asked says so (`Decision.per_client`): the resolver then keeps it for
nobody else.

Decisions for the common cases are shared objects, so the hot path allocates nothing.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from dnsguard.config.addresses import is_ip
from dnsguard.config.model import BlockMode, Config, GroupConfig
from dnsguard.filter.matcher import Action, Matcher, Selection, Verdict, side_verdict
from dnsguard.filter.modifiers import RCODE_NXDOMAIN, RCODES, type_name, wire_name
from dnsguard.filter.side import Request, SideRule, resolve, strength
from dnsguard.policy.clients import ClientGroups, MacLookup, is_mac
from dnsguard.policy.safesearch import safe_search_target
from dnsguard.policy.schedule import Window, local_weekday_minute
from dnsguard.policy.special import LOOPBACK, QTYPE_A, SPECIAL_USE_TTL, Answer, SpecialUse, SpecialUseNames

QTYPE_PTR = 12

DOH_CANARY = "use-application-dns.net"
PRIVATE_RELAY = ("mask.icloud.com", "mask-h2.icloud.com")
SPECIAL_USE = "special-use"
"""The reason of every special-use answer (one metric label; `explain` names the RFC rule)."""


class Kind(enum.Enum):
    FORWARD = "forward"
    """Not blocked: answer from the cache or an upstream."""
    BLOCK = "block"
    REWRITE = "rewrite"
    """A local answer: `addresses` or a CNAME `target` (also localhost's loopback addresses)."""
    SAFE_SEARCH = "safe_search"
    """Answer with a CNAME to `target` and its addresses."""
    NXDOMAIN = "nxdomain"
    """Anti-bypass names (DoH canary, Private Relay) and special-use names, with an SOA for `ttl`."""
    RCODE = "rcode"
    """Answer with response code `rcode` and no records (``$dnsrewrite=REFUSED``)."""


@dataclass(frozen=True, slots=True)
class Decision:
    kind: Kind
    group: str
    reason: str = ""
    """Why, for logs, metrics and `explain`: list name, 'doh-canary', 'safe-search', 'rewrite', ..."""
    verdict: Verdict | None = None
    target: str = ""
    addresses: tuple[str, ...] = ()
    ttl: int = 0
    block_mode: BlockMode = "null_ip"
    records: tuple[bytes, ...] | None = None
    """For REWRITE: the RDATA of the answer's records, all of the asked type (empty: NODATA)."""
    rcode: int = 0
    per_client: bool = False
    """The decision depends on who asked ($client, $ctag rules cover the name): kept for nobody else."""
    beaten: tuple[Verdict, ...] = ()
    """Rules that applied but lost to `verdict` (filled where side rules took part)."""


@dataclass(frozen=True, slots=True)
class Rewrite:
    addresses: tuple[str, ...]
    target: str
    ttl: int


@dataclass
class CompiledGroup:
    name: str
    config: GroupConfig
    block_mode: BlockMode
    base: Selection | None
    windows: list[tuple[Window, tuple[str, ...]]]
    lists: tuple[str, ...]
    forward: Decision
    _by_mask: dict[int, Selection | None] = field(default_factory=dict)
    _minute_key: tuple[int, int] = (-1, -1)
    _current: Selection | None = None
    _block_decisions: dict[int, Decision] = field(default_factory=dict)

    def selection(self, matcher: Matcher, weekday: int, minute: int) -> Selection | None:
        """The lists active at this minute (recomputed once a minute, not per query)."""
        if (weekday, minute) == self._minute_key:
            return self._current
        mask = 0
        for i, (window, _) in enumerate(self.windows):
            if window.active(weekday, minute):
                mask |= 1 << i
        if mask not in self._by_mask:
            if mask == 0:
                self._by_mask[0] = self.base
            else:
                extra = [name for i, (_, names) in enumerate(self.windows) if mask >> i & 1 for name in names]
                self._by_mask[mask] = matcher.select([*self.lists, *extra])
        self._minute_key = (weekday, minute)
        self._current = self._by_mask[mask]
        return self._current


class Policy:
    """Compiled policy for one configuration and one matcher."""

    def __init__(
        self,
        config: Config,
        matcher: Matcher,
        *,
        mac_lookup: MacLookup | None = None,
        learned_names: Callable[[str], str] | None = None,
    ) -> None:
        self.config = config
        self.learned_names = learned_names
        """The name of a client address learned at run time (leases, neighbours, reverse lookups; '' for
        none): `$client` rules may name it as they name configured clients."""
        self.matcher = matcher
        blocking = config.blocking
        self.block_ttl = int(blocking.ttl)
        self.groups: dict[str, CompiledGroup] = {}
        for name, group in config.groups.items():
            lists = tuple(dict.fromkeys([*group.block, *group.allow]))
            self.groups[name] = CompiledGroup(
                name=name,
                config=group,
                block_mode=group.block_mode or blocking.mode,
                base=matcher.select(lists) if lists else None,
                windows=[(Window.from_config(s), tuple(s.block)) for s in group.schedules],
                lists=lists,
                forward=Decision(Kind.FORWARD, name),
            )
        if "default" not in self.groups:
            self.groups["default"] = CompiledGroup(
                "default", GroupConfig(), blocking.mode, None, [], (), Decision(Kind.FORWARD, "default")
            )
        self.clients = ClientGroups(
            {n: g.clients for n, g in config.groups.items()}, default="default", mac_lookup=mac_lookup
        )
        # Which configured client an address is, for $client names and $ctag tags.
        self.client_ids = ClientGroups(
            {n: c.addresses for n, c in config.clients.items()}, default=None, mac_lookup=mac_lookup
        )
        self._requests: dict[tuple[str, str, int], Request] = {}
        self.rewrites: dict[str, Rewrite] = {}
        self.wildcard_rewrites: dict[str, Rewrite] = {}
        self.pointers: dict[str, tuple[tuple[bytes, ...], int]] = {}
        """Reverse name (in-addr.arpa, ip6.arpa) of each address a rewrite answers with -> the PTR
        records naming the rewritten names, and the shortest of their TTLs: local names resolve back."""
        for rewrite in config.rewrites:
            answers = tuple(rewrite.answer)
            is_name = not is_ip(answers[0])
            entry = Rewrite(
                () if is_name else answers,
                answers[0] if is_name else "",
                int(rewrite.ttl),
            )
            name = rewrite.name  # folded by the configuration
            if name.startswith("*."):
                self.wildcard_rewrites[name[2:]] = entry
            else:
                self.rewrites[name] = entry
                for address in entry.addresses:
                    self._add_pointer(ipaddress.ip_address(address).reverse_pointer, name, entry.ttl)
        self.canaries: frozenset[str] = frozenset(
            ([DOH_CANARY] if blocking.doh_canary else [])
            + (list(PRIVATE_RELAY) if blocking.block_private_relay else [])
        )
        special = config.resolver.special_use
        self.special = SpecialUseNames(
            local_answers=special.local_answers,
            private_reverse=special.private_reverse,
            single_label=special.single_label,
            forwarded=config.upstreams.conditional,
        )
        self._special_decisions: dict[tuple[SpecialUse, str], Decision] = {}
        self.paused_until = 0.0
        self.group_paused_until: dict[str, float] = {}
        """Group name -> wall-clock end of a pause of that group alone (API); math.inf: until resumed."""
        self._group_of_client: dict[str, CompiledGroup] = {}

    def group_for(self, client: str) -> CompiledGroup:
        """The group of a client address, or of a MAC address (`explain --client MAC`)."""
        group = self._group_of_client.get(client)
        if group is None:
            if is_mac(client):
                return self.groups[self.clients.group_of_mac(client) or "default"]
            group = self.groups[self.clients.group_of(client) or "default"]
            if len(self._group_of_client) >= 4096:
                self._group_of_client.clear()
            self._group_of_client[client] = group
        return group

    def client_moved(self, address: str) -> bool:
        """Forget the group of `address` (its MAC changed).

        True when memos kept elsewhere for the address (the resolver's plans) may hold a wrong group:
        its group is now another one, or it was not remembered here to compare with.
        """
        before = self._group_of_client.pop(address, None)
        self.clients.forget(address)
        self.client_ids.forget(address)
        self._requests.clear()
        # Not remembered here (never asked, or the memo was cleared): the caller's own memos may still
        # hold the old group, so count it as moved.
        return before is None or self.group_for(address) is not before

    def decide(self, name: str, client: str, now: float, qtype: int = QTYPE_A) -> Decision:
        """The decision for canonical `name` (lower case, no trailing dot) from `client` at wall time now."""
        group = self.group_for(client)
        return self.decide_for_group(name, group, now, qtype, client)

    def _add_pointer(self, reverse: str, name: str, ttl: int) -> None:
        records, shortest = self.pointers.get(reverse, ((), ttl))
        target = wire_name(name)
        if target not in records:
            self.pointers[reverse] = ((*records, target), min(shortest, ttl))

    def decide_for_group(
        self, name: str, group: CompiledGroup, now: float, qtype: int = QTYPE_A, client: str = ""
    ) -> Decision:
        if self.rewrites or self.wildcard_rewrites:
            rewrite = self._rewrite(name)
            if rewrite is not None:
                return Decision(
                    Kind.REWRITE,
                    group.name,
                    "rewrite",
                    target=rewrite.target,
                    addresses=rewrite.addresses,
                    ttl=rewrite.ttl,
                )
            if qtype == QTYPE_PTR:
                pointer = self.pointers.get(name)
                if pointer is not None:
                    return Decision(Kind.REWRITE, group.name, "rewrite", records=pointer[0], ttl=pointer[1])
        special = self.special.check(name, qtype)
        if special is not None and not self._lists_answer(name, group, now):
            return self._special_decision(special, group)
        if not group.config.filtering or now < self.paused_until:
            return group.forward
        if self.group_paused_until and now < self.group_paused_until.get(group.name, 0.0):
            return group.forward
        if name in self.canaries:
            return Decision(
                Kind.NXDOMAIN,
                group.name,
                "doh-canary" if name == DOH_CANARY else "private-relay",
                ttl=self.block_ttl,
            )
        if group.config.safe_search:
            target = safe_search_target(name)
            if target is not None:
                return Decision(Kind.SAFE_SEARCH, group.name, "safe-search", target=target, ttl=300)
        weekday, minute = local_weekday_minute(now) if group.windows else (0, 0)
        selection = group.selection(self.matcher, weekday, minute)
        if selection is None:
            return group.forward
        side = selection.side
        if side is not None:
            candidates = side.candidates(name)
            if candidates:
                return self._side_decision(name, group, selection, candidates, qtype, client)
        return self._verdict_decision(selection.match_canonical(name), group)

    def _verdict_decision(self, verdict: Verdict, group: CompiledGroup) -> Decision:
        if verdict.action is Action.BLOCK:
            key = id(verdict)
            decision = group._block_decisions.get(key)
            if decision is None or decision.verdict is not verdict:
                decision = Decision(
                    Kind.BLOCK,
                    group.name,
                    verdict.list_name,
                    verdict,
                    ttl=self.block_ttl,
                    block_mode=group.block_mode,
                )
                if len(group._block_decisions) > 8192:
                    group._block_decisions.clear()
                group._block_decisions[key] = decision
            return decision
        if verdict.action is Action.ALLOW:
            return Decision(Kind.FORWARD, group.name, verdict.list_name, verdict)
        return group.forward

    def _lists_answer(self, name: str, group: CompiledGroup, now: float) -> bool:
        """True when the group's lists hold a hosts line or a rewrite for `name` (a special-use one)."""
        if not group.config.filtering or self.paused(group.name, now):
            return False
        weekday, minute = local_weekday_minute(now) if group.windows else (0, 0)
        selection = group.selection(self.matcher, weekday, minute)
        if selection is None or selection.side is None:
            return False
        return any(rule.records or rule.rewrite for rule in selection.side.candidates(name))

    def request(self, client: str, group: CompiledGroup, qtype: int) -> Request:
        """What side rules may ask about a query: its type, the client's address, names and tags."""
        key = (client, group.name, qtype)
        request = self._requests.get(key)
        if request is None:
            client_name = self.client_ids.group_of(client) if client else None
            tags = list(group.config.tags)
            names: list[str] = []
            if client_name is not None:
                names.append(client_name)
                tags.extend(self.config.clients[client_name].tags)
            request = Request.of(qtype, client, names, tags)
            if len(self._requests) >= 4096:
                self._requests.clear()
            self._requests[key] = request
        learned = self.learned_names
        if learned is not None and client:
            # Looked up at each query, not kept with the request: a lease may name the address later.
            name = learned(client).lower()
            if name and name not in request.names:
                request = replace(request, names=request.names | {name})
        return request

    def _side_decision(
        self,
        name: str,
        group: CompiledGroup,
        selection: Selection,
        candidates: tuple[SideRule, ...],
        qtype: int,
        client: str,
    ) -> Decision:
        verdict = selection.match_canonical(name)
        plain = (
            strength(verdict.action is Action.ALLOW, verdict.important)
            if verdict.action is not Action.NONE
            else 0
        )
        found = resolve(name, plain, candidates, self.request(client, group, qtype))
        beaten = tuple(side_verdict(rule) for rule in found.beaten)
        if found.plain_beaten:
            beaten += (verdict,)
        per_client = found.per_client
        if found.outcome == "plain":
            decision = self._verdict_decision(verdict, group)
            if per_client or beaten:
                decision = replace(decision, per_client=per_client, beaten=beaten)
            return decision
        winner = found.winners[0]
        shown = side_verdict(winner)
        reason = winner.list_name
        if found.outcome == "block":
            return Decision(
                Kind.BLOCK,
                group.name,
                reason,
                shown,
                ttl=self.block_ttl,
                block_mode=group.block_mode,
                per_client=per_client,
                beaten=beaten,
            )
        if found.outcome == "allow":
            return Decision(Kind.FORWARD, group.name, reason, shown, per_client=per_client, beaten=beaten)
        if found.cname:
            kind, target, records = Kind.REWRITE, found.cname, None
        elif found.rcode == RCODE_NXDOMAIN:
            kind, target, records = Kind.NXDOMAIN, "", None
        elif found.rcode:
            kind, target, records = Kind.RCODE, "", None
        else:
            kind, target, records = Kind.REWRITE, "", found.rdatas
        return Decision(
            kind,
            group.name,
            reason,
            shown,
            target=target,
            ttl=self.block_ttl,
            records=records,
            rcode=found.rcode,
            per_client=per_client,
            beaten=beaten,
        )

    def _beaten(self, name: str, group: CompiledGroup, now: float, decision: Decision) -> list[Verdict]:
        """The rules that applied to the name but lost to the deciding one (explain)."""
        beaten = list(decision.beaten)
        if decision.verdict is None:
            return beaten
        weekday, minute = local_weekday_minute(now) if group.windows else (0, 0)
        selection = group.selection(self.matcher, weekday, minute)
        if selection is not None:
            for verdict in selection.all_matches(name):
                if verdict != decision.verdict and verdict not in beaten:
                    beaten.append(verdict)
        return beaten

    def paused(self, group: str, now: float) -> bool:
        """True while blocking is paused for every group or for this one."""
        return now < self.paused_until or now < self.group_paused_until.get(group, 0.0)

    def _special_decision(self, special: SpecialUse, group: CompiledGroup) -> Decision:
        key = (special, group.name)
        decision = self._special_decisions.get(key)
        if decision is None:  # a handful of rules times the groups: never cleared
            if special.answer is Answer.LOOPBACK:
                decision = Decision(
                    Kind.REWRITE, group.name, SPECIAL_USE, addresses=LOOPBACK, ttl=SPECIAL_USE_TTL
                )
            else:
                decision = Decision(Kind.NXDOMAIN, group.name, SPECIAL_USE, ttl=SPECIAL_USE_TTL)
            self._special_decisions[key] = decision
        return decision

    def _rewrite(self, name: str) -> Rewrite | None:
        rewrite = self.rewrites.get(name)
        if rewrite is not None or not self.wildcard_rewrites:
            return rewrite
        parts = name.split(".")
        for i in range(1, len(parts)):
            rewrite = self.wildcard_rewrites.get(".".join(parts[i:]))
            if rewrite is not None:
                return rewrite
        return None

    def explain(self, name: str, client: str, now: float, qtype: int = QTYPE_A) -> str:
        """A human-readable account of the decision, with the rule's source line."""
        client = client.strip().lower().replace("-", ":") if is_mac(client) else client
        group = self.group_for(client)
        decision = self.decide_for_group(name, group, now, qtype, client)
        lines = [
            f"name:     {name}",
            f"client:   {client or '-'} (group {group.name})",
            f"decision: {decision.kind.value}",
        ]
        if qtype != QTYPE_A:
            lines.insert(1, f"type:     {type_name(qtype)}")
        if decision.reason == SPECIAL_USE:
            special = self.special.check(name, qtype)
            if special is not None:
                lines.append(f"rule:     {special.rule}")
        if decision.kind is Kind.BLOCK and decision.verdict is not None:
            lines.append(f"mode:     {decision.block_mode}, ttl {decision.ttl} s")
        if decision.verdict is not None:
            v = decision.verdict
            lines.append(f"rule:     {v.rule} in list {v.list_name!r}")
            lines.append(f"source:   {v.source}:{v.line}")
            text = self.matcher.source_line(v)
            if text is not None:
                lines.append(f"line:     {text.strip()}")
        elif decision.reason:
            lines.append(f"reason:   {decision.reason}")
        if decision.target:
            lines.append(f"answer:   CNAME {decision.target}")
        if decision.addresses:
            lines.append(f"answer:   {', '.join(decision.addresses)}")
        if decision.records is not None:
            lines.append(f"answer:   {_records_text(decision.records, qtype)}")
        if decision.kind is Kind.RCODE:
            code = next((name for name, number in RCODES.items() if number == decision.rcode), decision.rcode)
            lines.append(f"answer:   response code {code}")
        for verdict in self._beaten(name, group, now, decision):
            lines.append(
                f"beat:     {verdict.rule} in list {verdict.list_name!r} ({verdict.source}:{verdict.line})"
            )
        if decision.per_client:
            lines.append("note:     rules for particular clients cover this name")
        if decision.kind is Kind.FORWARD and decision.verdict is None:
            active = ", ".join(group.lists) or "no lists"
            lines.append(f"reason:   not listed in {active}")
        return "\n".join(lines)


def _records_text(records: tuple[bytes, ...], qtype: int) -> str:
    if not records:
        return f"no {type_name(qtype)} records (NODATA)"
    if qtype in (1, 28):
        return ", ".join(str(ipaddress.ip_address(data)) for data in records)
    if qtype == QTYPE_PTR:
        return ", ".join(f"PTR {_wire_text(data)}" for data in records)
    return f"{len(records)} {type_name(qtype)} record(s)"


def _wire_text(data: bytes) -> str:
    """An uncompressed wire-format name (a PTR record's RDATA) as text."""
    labels = []
    at = 0
    while at < len(data) and data[at]:
        labels.append(data[at + 1 : at + 1 + data[at]].decode("ascii", "replace"))
        at += 1 + data[at]
    return ".".join(labels) + "."
