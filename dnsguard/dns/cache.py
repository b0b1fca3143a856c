"""The answer cache: upstream replies kept as bytes, served with the client's ID, case and decremented TTLs.

Sans-I/O: no clock of its own (every call takes `now`, CLOCK_BOOTTIME seconds in the daemon), no sockets,
no asyncio. A hit costs a dict lookup, an LRU touch and one `bytes.join`; the TTL-patched body of an entry
is rebuilt at most once per second of its age, however many clients ask.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Any, Final, NamedTuple

from dnsguard.dns.wire import (
    EDE_STALE_ANSWER,
    FLAG_CD,
    FLAG_RD,
    OPT_RECORD,
    OPT_RECORD_DO,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    Query,
    ResponseMeta,
    ede_option,
    lower_ttls,
    opt_record,
    parse_response_meta,
)

CacheKey = tuple[str, int, int, int]
"""(qname, qtype, qclass, variant) where variant holds the CD flag bit and DO (bit 0)."""

_COUNTS = struct.Struct(">HHHHH")  # flags and the four section counts: header bytes 2..12
_U32_INTO = struct.Struct(">I").pack_into
_PREFETCH_QUEUE_MAX: Final = 1024
_NEVER: Final = float("inf")
# Stale answers tell EDNS clients what they are getting: EDE 3 "Stale Answer" (RFC 8914 section 4.4).
_STALE_OPT: Final = opt_record(False, ede_option(EDE_STALE_ANSWER))
_STALE_OPT_DO: Final = opt_record(True, ede_option(EDE_STALE_ANSWER))


def cache_key(query: Query) -> CacheKey:
    """The cache key of a query: replies differ by DO (RRSIGs present) and CD (unvalidated data allowed)."""
    return (query.qname, query.qtype, query.qclass, (query.flags & FLAG_CD) | query.dnssec_ok)


class CacheStats(NamedTuple):
    """Counters for metrics; all monotonic except `entries`."""

    entries: int
    hits: int
    misses: int
    stale_served: int
    evictions: int
    prefetch_hints: int


class _Entry:
    """One cached reply, split so that a hit only joins pre-built pieces around the client's own bytes."""

    __slots__ = (
        "base_tail",
        "expires",
        "headers",
        "hits",
        "inserted",
        "memo_query",
        "memo_reply",
        "prefetch_at",
        "stale_tail",
        "stale_until",
        "tail",
        "tail_age",
        "ttl_offsets",
    )

    def __init__(
        self,
        headers: tuple[bytes, bytes, bytes, bytes],
        base_tail: bytes,
        ttl_offsets: tuple[int, ...],
        inserted: float,
        expires: float,
        stale_until: float,
        prefetch_at: float,
    ) -> None:
        self.headers = headers  # header bytes 2..12, indexed by client RD (bit 0) and OPT present (bit 1)
        self.base_tail = base_tail  # everything after the question, OPT removed, TTLs as stored
        self.ttl_offsets = ttl_offsets  # relative to the tail
        self.inserted = inserted
        self.expires = expires
        self.stale_until = stale_until
        self.prefetch_at = prefetch_at
        self.hits = 0
        self.tail = base_tail
        self.tail_age = 0
        self.stale_tail: bytes | None = None
        self.memo_query: bytes | None = None
        """The last query message, but its ID, that get_planned answered from this entry (None whenever
        `tail` changes), and its whole reply but the ID: one message per entry, so an entry costs at
        most one reply more."""
        self.memo_reply = b""


def _patched_tail(entry: _Entry, age: int) -> bytes:
    buffer = bytearray(entry.base_tail)
    lower_ttls(buffer, entry.ttl_offsets, age)
    return bytes(buffer)


def _assemble(entry: _Entry, query: Query, message: bytes) -> bytes:
    """The reply to `message` (`query`, perhaps with another ID) from a fresh entry."""
    # The client's own ID and question bytes go in verbatim: that echoes 0x20 letter case for free. The
    # upstream OPT RR was dropped at `put`; ours is added per client (RFC 6891 section 7, RFC 3225).
    flags = query.flags
    if query.edns_payload:
        return b"".join(
            (
                message[:2],
                entry.headers[2 | (flags & FLAG_RD) >> 8],
                message[12 : query.question_end],
                entry.tail,
                OPT_RECORD_DO if query.dnssec_ok else OPT_RECORD,
            )
        )
    return b"".join(
        (message[:2], entry.headers[(flags & FLAG_RD) >> 8], message[12 : query.question_end], entry.tail)
    )


def _fixed_ttl_tail(entry: _Entry, ttl: int) -> bytes:
    buffer = bytearray(entry.base_tail)
    for offset in entry.ttl_offsets:
        _U32_INTO(buffer, offset, ttl)
    return bytes(buffer)


class AnswerCache:
    """A bounded LRU cache of upstream replies with negative caching, serve-stale and prefetch hints."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        min_ttl: int = 0,
        max_ttl: int = 86_400,
        negative_max_ttl: int = 3_600,
        stale_max_age: float = 86_400.0,
        stale_ttl: int = 30,
        prefetch_min_hits: int = 3,
        prefetch_window: float = 0.1,
    ) -> None:
        # Defaults: RFC 2308 section 5 suggests capping negative TTLs at one to three hours; RFC 8767
        # section 5 suggests keeping stale data 1 to 3 days and section 4 serving it with TTL 30.
        if max_entries < 1 or not 0 <= min_ttl <= max_ttl or negative_max_ttl < 0 or stale_max_age < 0:
            raise ValueError("cache limits out of range")
        if stale_ttl < 1 or prefetch_min_hits < 1 or not 0.0 <= prefetch_window < 1.0:
            raise ValueError("cache stale or prefetch settings out of range")
        self.max_entries = max_entries
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.negative_max_ttl = negative_max_ttl
        self.stale_max_age = stale_max_age
        self.stale_ttl = stale_ttl
        self.prefetch_min_hits = prefetch_min_hits
        self.prefetch_window = prefetch_window
        # OrderedDict over the plain-dict pop-and-reinsert trick: move_to_end and popitem(last=False) are
        # O(1) in C, while popping a plain dict's oldest key leaves holes that iteration must skip.
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self.prefetch_queue: list[Query] = []
        """Queries of popular entries near expiry, oldest first (`take_prefetch` empties it)."""
        self.hits = 0
        self.misses = 0
        self.stale_served = 0
        self.evictions = 0
        self.prefetch_hints = 0

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        return CacheStats(
            len(self._entries), self.hits, self.misses, self.stale_served, self.evictions, self.prefetch_hints
        )

    def get(self, query: Query, now: float, message: bytes | None = None) -> bytes | None:
        """The reply to send for `query` if a fresh one is cached; it may exceed `query.udp_limit`.

        `message`: a query that differs from `query.data` only in its ID, to answer with that ID (the
        resolver keeps one parsed query for the repeats of a message).
        """
        data = query.data if message is None else message
        key = (query.qname, query.qtype, query.qclass, (query.flags & FLAG_CD) | query.dnssec_ok)
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if now >= entry.expires:
            self.misses += 1
            if now >= entry.stale_until:
                del entries[key]
            return None
        entries.move_to_end(key)
        self._hit(entry, query, now)
        return _assemble(entry, query, data)

    def get_planned(
        self, key: Any, query: Query, message: bytes, after_id: bytes, now: float
    ) -> bytes | None:
        """get(query, now, message) for a message seen before, as fast as a remembered reply.

        `key` is cache_key(query) and `after_id` is message[2:], both kept by the caller (the resolver's
        plan for the message). A hit's reply, but its ID, depends only on the entry, its age in whole
        seconds and those bytes, so the entry keeps the last one with its `after_id` for the rest of
        that second (clients asking the same name with other flags or letter case take turns). Such a
        hit leaves the LRU order alone: the entry went to its end when the reply was kept, so a busy
        entry is touched once a second, not once a query.

        `key` is typed Any so that the compiled cache (dnsguard/native.py) looks up the plan's own
        tuple: typed CacheKey, each call would unpack it into a C struct and build a new tuple from that.
        """
        entry = self._entries.get(key)
        if entry is None or now >= entry.expires:
            return self.get(query, now, message)  # counts the miss, forgets an entry past its stale window
        if (
            entry.memo_query == after_id
            and now < entry.prefetch_at
            and int(now - entry.inserted) == entry.tail_age
        ):
            # The reply kept for these bytes is of this second and no refresh is due: _hit would only count.
            self.hits += 1
            entry.hits += 1
            return message[:2] + entry.memo_reply
        self._hit(entry, query, now)
        if entry.memo_query == after_id:
            return message[:2] + entry.memo_reply
        self._entries.move_to_end(key)
        reply = _assemble(entry, query, message)
        entry.memo_query, entry.memo_reply = after_id, reply[2:]
        return reply

    def _hit(self, entry: _Entry, query: Query, now: float) -> None:
        """Count a hit on a fresh entry, ask for its refresh when due, and bring its TTLs to its age in
        whole seconds (forgetting the remembered reply, whose TTLs are then a second old)."""
        self.hits += 1
        entry.hits += 1
        if now >= entry.prefetch_at and entry.hits >= self.prefetch_min_hits:
            self._hint(entry, query)
        age = int(now - entry.inserted)
        if age != entry.tail_age:
            entry.tail = _patched_tail(entry, age if age > 0 else 0)
            entry.tail_age = age
            entry.memo_query = None

    def _hint(self, entry: _Entry, query: Query) -> None:
        entry.prefetch_at = _NEVER  # one hint per stored reply; a refresh `put` re-arms it
        self.prefetch_hints += 1
        if len(self.prefetch_queue) < _PREFETCH_QUEUE_MAX:
            self.prefetch_queue.append(query)

    def get_stale(self, query: Query, now: float) -> bytes | None:
        """After upstreams failed: a fresh reply, else an expired one within `stale_max_age` (RFC 8767)."""
        key = cache_key(query)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now < entry.expires:
            return self.get(query, now)
        if now >= entry.stale_until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        self.stale_served += 1
        if entry.stale_tail is None:
            entry.stale_tail = _fixed_ttl_tail(entry, self.stale_ttl)
        data, flags = query.data, query.flags
        header = entry.headers[(2 if query.edns_payload else 0) | (flags & FLAG_RD) >> 8]
        opt = (_STALE_OPT_DO if query.dnssec_ok else _STALE_OPT) if query.edns_payload else b""
        return b"".join((data[:2], header, data[12 : query.question_end], entry.stale_tail, opt))

    def put(self, query: Query, reply: bytes, now: float, meta: ResponseMeta | None = None) -> bool:
        """Store the upstream reply to `query` if it is cacheable; FormError if it is malformed."""
        if meta is None:
            meta = parse_response_meta(reply)
        key = cache_key(query)
        lifetime = self._lifetime(query, reply, meta)
        if lifetime <= 0:
            # A newer answer says "do not cache": whatever we held for the name is outdated.
            self._entries.pop(key, None)
            return False
        question_end = meta.question_end
        tail_end = meta.opt_offset if meta.opt_offset >= 0 else meta.end
        # Every TTL is clamped like the lifetime. In a negative reply clients take min(SOA TTL, SOA MINIMUM)
        # (RFC 2308 section 5): capping every TTL at our lifetime keeps them from caching the absence
        # longer than we do.
        low, high = self.min_ttl, self.max_ttl
        cap = lifetime if meta.negative else high
        ttls = tuple(min(max(ttl, low), high, cap) for ttl in meta.ttls)
        offsets = tuple(offset - question_end for offset in meta.ttl_offsets)
        buffer = bytearray(reply[question_end:tail_end])
        for offset, ttl in zip(offsets, ttls, strict=True):
            _U32_INTO(buffer, offset, ttl)
        flags, _, ancount, nscount, arcount = _COUNTS.unpack_from(reply, 2)
        if meta.opt_offset >= 0:
            arcount -= 1
        # RD follows the client, CD the key (the same for everyone sharing this entry).
        flags = (flags & ~(FLAG_RD | FLAG_CD)) | (query.flags & FLAG_CD)
        headers = (
            _COUNTS.pack(flags, 1, ancount, nscount, arcount),
            _COUNTS.pack(flags | FLAG_RD, 1, ancount, nscount, arcount),
            _COUNTS.pack(flags, 1, ancount, nscount, arcount + 1),
            _COUNTS.pack(flags | FLAG_RD, 1, ancount, nscount, arcount + 1),
        )
        expires = now + lifetime
        entry = _Entry(
            headers,
            bytes(buffer),
            offsets,
            now,
            expires,
            expires + self.stale_max_age,
            expires - lifetime * self.prefetch_window,
        )
        entries = self._entries
        entries[key] = entry
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evictions += 1
        return True

    def _lifetime(self, query: Query, reply: bytes, meta: ResponseMeta) -> int:
        """Seconds to keep the reply, 0 if it must not be cached."""
        if meta.truncated or meta.ttl is None or meta.rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN):
            return 0
        if meta.opt_offset >= 0 and meta.opt_end != meta.end:
            return 0  # removing an OPT RR from the middle would shift later compression targets
        # Only a reply to exactly this question may be served for it: one question, same name (ignoring
        # case, RFC 4343), same type and class.
        question = query.data[12 : query.question_end]
        if reply[4:6] != b"\x00\x01" or meta.question_end != query.question_end:
            return 0
        reply_question = reply[12 : meta.question_end]
        if reply_question[:-4].lower() != question[:-4].lower() or reply_question[-4:] != question[-4:]:
            return 0
        lifetime = min(max(meta.ttl, self.min_ttl), self.max_ttl)
        if meta.negative:
            lifetime = min(lifetime, self.negative_max_ttl)
        return lifetime

    def take_prefetch(self) -> list[Query]:
        """Queries whose popular entries are about to expire; re-ask upstream and `put` the answers."""
        due, self.prefetch_queue = self.prefetch_queue, []
        return due

    def prune(self, now: float) -> int:
        """Drop entries past their stale window; returns how many (for periodic housekeeping)."""
        dead = [key for key, entry in self._entries.items() if now >= entry.stale_until]
        for key in dead:
            del self._entries[key]
        return len(dead)

    def flush(self) -> None:
        """Forget every entry (lists changed, or the API asked); counters are kept."""
        self._entries.clear()
        self.prefetch_queue.clear()
