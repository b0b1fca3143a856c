"""The DNS wire fast path, specified by golden packets and checked against dnslib as an independent oracle."""

from __future__ import annotations

import contextlib
import struct

import pytest
from dnslib import QTYPE, RR, TXT, A, DNSError, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.dns import wire
from dnsguard.dns.wire import Query, QueryError
from dnsguard.errors import DnsguardError, FormError

# --- golden packets -----------------------------------------------------------------------------------------

# `dig example.com` (BIND 9.18): RD and AD set, EDNS payload 1232, an 8-byte client COOKIE (RFC 7873).
DIG_QUERY = bytes.fromhex(
    "b35c 0120 0001 0000 0000 0001"  # ID, flags RD|AD, QD=1, AR=1
    "07 6578616d706c65 03 636f6d 00 0001 0001"  # example.com A IN
    "00 0029 04d0 00000000 000c"  # OPT: root owner, type 41, payload 1232, ext-rcode/version/flags, rdlen 12
    "000a 0008 0102030405060708"  # COOKIE option, client cookie only
)

# glibc's stub resolver (getaddrinfo): AAAA, RD, no EDNS.
STUB_AAAA_QUERY = bytes.fromhex("1a2b 0100 0001 0000 0000 0000 03777777 06676f6f676c65 03636f6d 00 001c 0001")

# A validating forwarder with 0x20 case randomisation: wWw.ExAmPlE.cOm A, RD and CD, EDNS 1232 with DO.
MIXED_CASE_DO_QUERY = (
    bytes.fromhex("4242 0110 0001 0000 0000 0001")
    + b"\x03wWw\x07ExAmPlE\x03cOm\x00"
    + bytes.fromhex("0001 0001 00 0029 04d0 00008000 0000")
)

# Upstream reply to DIG_QUERY: www.example.com CNAME example.com, example.com A 93.184.215.14, compressed,
# with the upstream's OPT RR carrying our client cookie and its server cookie.
UPSTREAM_CNAME_REPLY = bytes.fromhex(
    "b35c 8180 0001 0002 0000 0001"
    "03 777777 07 6578616d706c65 03 636f6d 00 0001 0001"  # question at 12: www.example.com A IN
    "c00c 0005 0001 00000e10 0002 c010"  # CNAME, TTL 3600, to a pointer at "example.com" (offset 16)
    "c010 0001 0001 0000003c 0004 5db8d70e"  # example.com A 93.184.215.14, TTL 60
    "00 0029 04d0 00000000 0018 000a 0014 0102030405060708 1112131415161718191a1b1c"  # OPT with COOKIE
)

# Upstream NXDOMAIN: nope.example.com, SOA example.com with TTL 3600 and MINIMUM 300, names compressed
# against "example.com" at offset 17 (0x11).
UPSTREAM_NXDOMAIN_REPLY = bytes.fromhex(
    "0707 8183 0001 0000 0001 0000"  # RD RA NXDOMAIN, NS=1
    "04 6e6f7065 07 6578616d706c65 03 636f6d 00 0001 0001"  # nope.example.com A IN
    "c011 0006 0001 00000e10 001f"  # example.com SOA, TTL 3600, rdlen 31
    "02 6e73 c011"  # MNAME ns.example.com
    "03 6e6f63 c011"  # RNAME noc.example.com
    "78a1b2c3 00001c20 00000e10 00127500 0000012c"  # serial, refresh, retry, expire, MINIMUM 300
)


def make_query(
    name: bytes | str,
    qtype: int = wire.QTYPE_A,
    *,
    ident: int = 0x1234,
    flags: int = wire.FLAG_RD,
    payload: int | None = None,
    dnssec_ok: bool = False,
    options: bytes = b"",
    qclass: int = wire.QCLASS_IN,
) -> bytes:
    """Hand-assembled query; `name` as text (encoded here) or as raw wire bytes."""
    name_wire = wire.encode_name(name) if isinstance(name, str) else name
    header = struct.pack(">HHHHHH", ident, flags, 1, 0, 0, 0 if payload is None else 1)
    message = header + name_wire + struct.pack(">HH", qtype, qclass)
    if payload is not None:
        ttl = 0x8000 if dnssec_ok else 0
        message += b"\x00" + struct.pack(">HHIH", 41, payload, ttl, len(options)) + options
    return message


def with_additional(message: bytes, record: bytes) -> bytes:
    """`message` with `record` appended as its single additional record."""
    return message[:10] + b"\x00\x01" + message[12:] + record


def oracle(reply: bytes) -> DNSRecord:
    """dnslib's reading of a reply, our independent check of what the bytes say."""
    return DNSRecord.parse(reply)


def opt_of(record: DNSRecord) -> RR | None:
    opts = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
    assert len(opts) <= 1
    return opts[0] if opts else None


def assert_reply_to(query: Query, reply: bytes, rcode: int) -> DNSRecord:
    """The invariants every synthesized reply keeps, checked through dnslib."""
    record = oracle(reply)
    header = record.header
    assert header.id == query.id
    assert header.qr == 1 and header.ra == 1 and header.aa == 0 and header.ad == 0
    assert header.rd == (1 if query.flags & wire.FLAG_RD else 0)
    assert header.cd == (1 if query.flags & wire.FLAG_CD else 0)
    assert header.rcode == rcode
    # The question comes back byte for byte, letter case included (0x20 clients check it).
    assert reply[12 : query.question_end] == query.data[12 : query.question_end]
    assert len(record.questions) == 1
    opt = opt_of(record)
    if query.edns_payload:
        assert opt is not None
        assert opt.rclass == wire.EDNS_PAYLOAD
        assert bool(opt.ttl & 0x8000) == query.dnssec_ok
        assert opt.ttl & 0x00FF0000 == 0
    else:
        assert opt is None
    return record


# --- parse_query --------------------------------------------------------------------------------------------


def test_parse_dig_query_with_cookie() -> None:
    query = wire.parse_query(DIG_QUERY)
    assert query.id == 0xB35C
    assert query.flags == wire.FLAG_RD | wire.FLAG_AD
    assert query.qname == "example.com"
    assert (query.qtype, query.qclass) == (wire.QTYPE_A, wire.QCLASS_IN)
    assert query.question_end == 12 + 13 + 4
    assert query.question == DIG_QUERY[12:29]
    assert query.edns_payload == 1232 and query.udp_limit == 1232
    assert query.dnssec_ok is False


def test_parse_stub_query_without_edns() -> None:
    query = wire.parse_query(STUB_AAAA_QUERY)
    assert (query.qname, query.qtype) == ("www.google.com", wire.QTYPE_AAAA)
    assert query.edns_payload == 0 and query.udp_limit == 512
    assert query.question_end == len(STUB_AAAA_QUERY)


def test_qname_is_lower_case_while_question_keeps_client_case() -> None:
    query = wire.parse_query(MIXED_CASE_DO_QUERY)
    assert query.qname == "www.example.com"
    assert query.question.startswith(b"\x03wWw\x07ExAmPlE\x03cOm\x00")
    assert query.dnssec_ok is True
    assert query.flags & wire.FLAG_CD


def test_every_case_variant_gives_the_same_name() -> None:
    names = {
        wire.parse_query(make_query(variant)).qname for variant in ("ADS.Tracker.NET", "ads.tracker.net")
    }
    assert names == {"ads.tracker.net"}


def test_root_name_is_the_empty_string() -> None:
    query = wire.parse_query(make_query(b"\x00", wire.QTYPE_NS))
    assert query.qname == ""
    assert query.qtype == wire.QTYPE_NS


def test_small_edns_payload_counts_as_512() -> None:
    assert wire.parse_query(make_query("a.example", payload=100)).edns_payload == 512


def test_trailing_bytes_after_the_question_are_ignored() -> None:
    assert wire.parse_query(STUB_AAAA_QUERY + b"\xff\xff").question_end == len(STUB_AAAA_QUERY)


def test_longest_legal_name_and_label_are_accepted() -> None:
    label63 = "a" * 63
    name = ".".join([label63, label63, label63, "b" * 61])  # 4 * 64 - 2 + 1 = 255 octets on the wire
    assert len(wire.encode_name(name)) == 255
    assert wire.parse_query(make_query(name)).qname == name


def test_odd_bytes_in_labels_are_escaped_so_names_stay_distinct() -> None:
    dotted_label = b"\x03a.b\x03com\x00"  # one label "a.b", not two labels
    non_ascii = b"\x02\xc3\xa9\x03com\x00"
    assert wire.parse_query(make_query(dotted_label)).qname == "a\\.b.com"
    assert wire.parse_query(make_query(non_ascii)).qname == "\\195\\169.com"
    assert wire.parse_query(make_query(b"\x03A\\Z\x00")).qname == "a\\\\z"


def test_zero_byte_inside_a_label_does_not_confuse_the_question_end() -> None:
    # The fast path looks for the first zero byte; a binary label holding one must still parse exactly.
    for _ in range(2):  # the second time the name is remembered
        query = wire.parse_query(make_query(b"\x03a\x00b\x03com\x00", wire.QTYPE_TXT))
        assert query.qname == "a\\000b.com"
        assert query.qtype == wire.QTYPE_TXT


def test_name_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "_NAME_MEMO", {})
    monkeypatch.setattr(wire, "_NAME_MEMO_MAX", 8)
    for n in range(100):
        assert wire.parse_query(make_query(f"host{n}.example")).qname == f"host{n}.example"
    assert len(wire._NAME_MEMO) <= 8


REJECTED = [
    # (case, message, rcode to answer with, may a full parser understand it)
    ("empty", b"", None, False),
    ("only one byte", b"\x12", None, False),
    ("header cut short", bytes.fromhex("1234 0100 0001"), wire.RCODE_FORMERR, False),
    ("a response", make_query("x.example", flags=0x8180), None, False),
    ("opcode NOTIFY", make_query("x.example", flags=4 << 11), wire.RCODE_NOTIMP, False),
    ("opcode UPDATE", make_query("x.example", flags=5 << 11), wire.RCODE_NOTIMP, False),
    ("no question", bytes.fromhex("1234 0100 0000 0000 0000 0000"), wire.RCODE_FORMERR, False),
    (
        "two questions",  # RFC 9619
        bytes.fromhex("1234 0100 0002 0000 0000 0000") + (b"\x01a\x00\x00\x01\x00\x01" * 2),
        wire.RCODE_FORMERR,
        False,
    ),
    (
        "answer records in a query",
        bytes.fromhex("1234 0100 0001 0001 0000 0000") + b"\x01a\x00\x00\x01\x00\x01",
        wire.RCODE_FORMERR,
        True,
    ),
    (
        "authority records (IXFR-style)",
        bytes.fromhex("1234 0000 0001 0000 0001 0000") + b"\x01a\x00\x00\xfb\x00\x01",
        wire.RCODE_FORMERR,
        True,
    ),
    (
        "two additional records",
        bytes.fromhex("1234 0100 0001 0000 0000 0002") + b"\x01a\x00\x00\x01\x00\x01",
        wire.RCODE_FORMERR,
        True,
    ),
    (
        "TSIG instead of OPT",
        with_additional(make_query("x.example"), b"\x03key\x00" + struct.pack(">HHIH", 250, 255, 0, 0)),
        wire.RCODE_FORMERR,
        True,
    ),
    (
        "non-root owner on a type-41 record",
        with_additional(make_query("x.example"), b"\x01k\x00" + struct.pack(">HHIH", 41, 1232, 0, 0)),
        wire.RCODE_FORMERR,
        True,
    ),
    (
        "root-owned additional record that is not OPT",
        with_additional(make_query("x.example"), b"\x00" + struct.pack(">HHIH", 1, 1, 0, 4) + bytes(4)),
        wire.RCODE_FORMERR,
        True,
    ),
    ("compression pointer in the question", make_query(b"\xc0\x0c"), wire.RCODE_FORMERR, False),
    ("label of 64 octets", make_query(b"\x40" + b"a" * 64 + b"\x00"), wire.RCODE_FORMERR, False),
    ("extended label type", make_query(b"\x41" + b"a" * 65 + b"\x00"), wire.RCODE_FORMERR, False),
    ("name of 257 octets", make_query((b"\x3f" + b"a" * 63) * 4 + b"\x00"), wire.RCODE_FORMERR, False),
    ("name not terminated", make_query("x.example")[:20], wire.RCODE_FORMERR, False),
    ("qtype cut short", make_query("x.example")[:-3], wire.RCODE_FORMERR, False),
    ("OPT cut short", make_query("x.example", payload=1232)[:-4], wire.RCODE_FORMERR, False),
    (
        "OPT RDATA overruns",
        make_query("x.example", payload=1232)[:-2] + b"\x00\x09",
        wire.RCODE_FORMERR,
        False,
    ),
    (
        "EDNS option overruns RDATA",
        make_query("x.example", payload=1232, options=b"\x00\x0a\x00\x09abcd"),
        wire.RCODE_FORMERR,
        False,
    ),
    (
        "EDNS version 1",
        make_query("x.example", payload=1232)[:-6] + b"\x00\x01\x00\x00\x00\x00",
        wire.RCODE_BADVERS,
        False,
    ),
]


@pytest.mark.parametrize(
    ("message", "rcode", "fallback"), [case[1:] for case in REJECTED], ids=[case[0] for case in REJECTED]
)
def test_rejected_queries_say_how_to_answer(message: bytes, rcode: int | None, fallback: bool) -> None:
    with pytest.raises(QueryError) as caught:
        wire.parse_query(message)
    assert isinstance(caught.value, FormError)
    assert caught.value.rcode == rcode
    assert caught.value.fallback == fallback


def test_name_of_256_octets_is_rejected() -> None:
    name = (b"\x3f" + b"a" * 63) * 3 + b"\x3e" + b"b" * 62 + b"\x00"  # 3 * 64 + 63 + 1 = 256 octets
    assert len(name) == 256
    with pytest.raises(QueryError, match="255"):
        wire.parse_query(make_query(name))


def test_fallback_queries_are_read_by_the_full_parser_as_dnslib_reads_them() -> None:
    # "Fallback" means what it says: the message is DNS that the bounded full parser reads.
    record = DNSRecord.question("Known.Example", "AAAA")
    record.add_answer(RR("known.example", QTYPE.A, rdata=A("192.0.2.9"), ttl=60))
    record.add_ar(RR("known.example", QTYPE.TXT, rdata=TXT("signature"), ttl=0))
    message = bytes(record.pack())
    with pytest.raises(QueryError) as caught:
        wire.parse_query(message)
    assert caught.value.fallback
    query = wire.parse_full_query(message)
    assert (query.qname, query.qtype, query.question_end, query.edns_payload) == (
        "known.example",
        wire.QTYPE_AAAA,
        12 + 15 + 4,
        0,
    )


def test_the_full_parser_reads_the_opt_rr_after_other_additional_records() -> None:
    record = DNSRecord.question("a.example")
    record.add_ar(RR("a.example", QTYPE.TXT, rdata=TXT("x")))
    message = bytes(record.pack())
    opt = b"\x00" + struct.pack("!HHIH", wire.QTYPE_OPT, 4096, 0x8000, 0)
    message = message[:10] + b"\x00\x02" + message[12:] + opt
    query = wire.parse_full_query(message)
    assert query.edns_payload == 4096 and query.dnssec_ok


def pointer_loop_query() -> bytes:
    """One question plus an answer record whose owner is two compression pointers aimed at each other."""
    question = make_query("loop.example")
    first = len(question)
    owner = struct.pack("!HH", 0xC000 | (first + 2), 0xC000 | first)
    return (
        question[:6]
        + b"\x00\x01"
        + question[8:]
        + owner
        + struct.pack("!HHIH", wire.QTYPE_A, 1, 60, 4)
        + bytes(4)
        + bytes(180)
    )


def test_a_pointer_loop_is_formerr_after_one_step() -> None:
    message = pointer_loop_query()
    with pytest.raises(QueryError) as caught:
        wire.parse_full_query(message)
    assert caught.value.rcode == wire.RCODE_FORMERR and caught.value.reason == "records"


@pytest.mark.parametrize("section", [6, 8, 10])
def test_section_counts_beyond_the_message_are_refused_before_reading_a_record(section: int) -> None:
    message = bytearray(make_query("a.example"))
    struct.pack_into("!H", message, section, 0xFFFF)
    with pytest.raises(QueryError, match="exceed") as caught:
        wire.parse_full_query(bytes(message))
    assert caught.value.reason == "records"


def test_every_refusal_names_a_known_reason() -> None:
    for _, message, _, _ in REJECTED:
        with pytest.raises(QueryError) as caught:
            wire.parse_query(message)
        assert caught.value.reason in wire.MALFORMED_REASONS


def test_any_is_answered_with_one_small_hinfo_record() -> None:
    query = wire.parse_query(make_query("example.org", wire.QTYPE_ANY, payload=4096))
    reply = wire.answer_any(query)
    parsed = DNSRecord.parse(reply)
    assert [(QTYPE[r.rtype], r.ttl) for r in parsed.rr] == [("HINFO", wire.ANY_TTL)]
    assert b"RFC8482" in reply and len(reply) < 2 * len(query.data)


# --- synthesized replies ------------------------------------------------------------------------------------

QUERY_VARIANTS = {
    "dig with cookie": DIG_QUERY,
    "stub without EDNS": make_query("ads.example.com", ident=7, flags=wire.FLAG_RD),
    "DO and CD, 0x20 case": MIXED_CASE_DO_QUERY,
    "no RD": make_query("Ads.Example.Com", ident=9, flags=0, payload=4096),
}


@pytest.fixture(params=list(QUERY_VARIANTS), ids=list(QUERY_VARIANTS))
def variant(request: pytest.FixtureRequest) -> bytes:
    return QUERY_VARIANTS[request.param]


def with_type(message: bytes, qtype: int) -> bytes:
    query = wire.parse_query(message)
    end = query.question_end
    return message[: end - 4] + struct.pack(">H", qtype) + message[end - 2 :]


def test_null_ip_answers_a_with_zero_address(variant: bytes) -> None:
    query = wire.parse_query(with_type(variant, wire.QTYPE_A))
    record = assert_reply_to(query, wire.null_ip(query, 10), wire.RCODE_NOERROR)
    assert [(rr.rtype, str(rr.rdata), rr.ttl) for rr in record.rr] == [(QTYPE.A, "0.0.0.0", 10)]
    assert str(record.rr[0].rname).lower() == query.qname + "."


def test_null_ip_answers_aaaa_with_unspecified_address(variant: bytes) -> None:
    query = wire.parse_query(with_type(variant, wire.QTYPE_AAAA))
    record = assert_reply_to(query, wire.null_ip(query, 10), wire.RCODE_NOERROR)
    assert [(rr.rtype, str(rr.rdata), rr.ttl) for rr in record.rr] == [(QTYPE.AAAA, "::", 10)]


@pytest.mark.parametrize("qtype", [wire.QTYPE_HTTPS, wire.QTYPE_TXT, 15, wire.QTYPE_ANY, wire.QTYPE_CNAME])
def test_null_ip_gives_nodata_with_soa_for_other_types(variant: bytes, qtype: int) -> None:
    query = wire.parse_query(with_type(variant, qtype))
    record = assert_reply_to(query, wire.null_ip(query, 10), wire.RCODE_NOERROR)
    assert record.rr == []
    [soa] = record.auth
    assert soa.rtype == QTYPE.SOA and soa.ttl == 10 and soa.rdata.times[-1] == 10  # RFC 2308: negative TTL


@given(qtype=st.integers(0, 65535), ttl=st.integers(0, 2**31 - 1))
@settings(max_examples=200, deadline=None)
def test_blocked_answers_never_carry_a_record_of_another_type(qtype: int, ttl: int) -> None:
    query = wire.parse_query(with_type(DIG_QUERY, qtype))
    addresses = wire.pack_addresses(["1.2.3.4", "::1"])
    for reply in (wire.null_ip(query, ttl), wire.answer_addresses(query, addresses, ttl)):
        record = oracle(reply)
        assert all(rr.rtype == qtype for rr in record.rr)


def test_nxdomain_with_and_without_soa(variant: bytes) -> None:
    query = wire.parse_query(variant)
    bare = assert_reply_to(query, wire.nxdomain(query), wire.RCODE_NXDOMAIN)
    assert bare.rr == [] and bare.auth == []
    with_soa = assert_reply_to(query, wire.nxdomain(query, negative_ttl=300), wire.RCODE_NXDOMAIN)
    [soa] = with_soa.auth
    assert soa.ttl == 300 and soa.rdata.times[-1] == 300
    assert str(soa.rdata.mname) == "dnsguard.invalid."


def test_nodata_refused_servfail(variant: bytes) -> None:
    query = wire.parse_query(variant)
    nodata = assert_reply_to(query, wire.nodata(query, negative_ttl=5), wire.RCODE_NOERROR)
    assert nodata.rr == [] and nodata.auth[0].ttl == 5
    assert assert_reply_to(query, wire.nodata(query), wire.RCODE_NOERROR).auth == []
    assert_reply_to(query, wire.refused(query), wire.RCODE_REFUSED)
    assert_reply_to(query, wire.servfail(query), wire.RCODE_SERVFAIL)


def test_truncated_reply_sets_tc_and_carries_no_records(variant: bytes) -> None:
    query = wire.parse_query(variant)
    record = assert_reply_to(query, wire.truncated(query), wire.RCODE_NOERROR)
    assert record.header.tc == 1 and record.rr == [] and record.auth == []


def test_answer_addresses_picks_the_queried_family(variant: bytes) -> None:
    addresses = wire.pack_addresses(["192.0.2.1", "2001:db8::1", "192.0.2.2"])
    a_query = wire.parse_query(with_type(variant, wire.QTYPE_A))
    record = assert_reply_to(a_query, wire.answer_addresses(a_query, addresses, 60), wire.RCODE_NOERROR)
    assert [str(rr.rdata) for rr in record.rr] == ["192.0.2.1", "192.0.2.2"]
    aaaa_query = wire.parse_query(with_type(variant, wire.QTYPE_AAAA))
    record = assert_reply_to(aaaa_query, wire.answer_addresses(aaaa_query, addresses, 60), wire.RCODE_NOERROR)
    assert [str(rr.rdata) for rr in record.rr] == ["2001:db8::1"]


def test_answer_addresses_without_an_address_of_the_family_is_nodata(variant: bytes) -> None:
    query = wire.parse_query(with_type(variant, wire.QTYPE_AAAA))
    reply = wire.answer_addresses(query, wire.pack_addresses(["192.0.2.1"]), 60)
    record = assert_reply_to(query, reply, wire.RCODE_NOERROR)
    assert record.rr == [] and record.auth[0].rtype == QTYPE.SOA


def test_answer_cname_with_addresses_for_safe_search(variant: bytes) -> None:
    query = wire.parse_query(with_type(variant, wire.QTYPE_A))
    addresses = wire.pack_addresses(["216.239.38.120", "2001:4860:4802:32::78"])
    reply = wire.answer_cname(query, "forcesafesearch.google.com", 3600, addresses)
    record = assert_reply_to(query, reply, wire.RCODE_NOERROR)
    cname, address = record.rr
    assert cname.rtype == QTYPE.CNAME and str(cname.rdata) == "forcesafesearch.google.com."
    # The A record is owned by the CNAME target: the compression pointer lands on the CNAME RDATA.
    assert (str(address.rname), str(address.rdata), address.ttl) == (
        "forcesafesearch.google.com.",
        "216.239.38.120",
        3600,
    )
    meta = wire.parse_response_meta(reply)
    assert meta.targets == ("forcesafesearch.google.com",)


def test_answer_cname_for_other_types_is_the_cname_alone() -> None:
    query = wire.parse_query(with_type(DIG_QUERY, wire.QTYPE_TXT))
    record = oracle(wire.answer_cname(query, "restrict.youtube.com.", 60, wire.pack_addresses(["1.1.1.1"])))
    assert [rr.rtype for rr in record.rr] == [QTYPE.CNAME]


def test_ede_option_is_echoed_only_to_edns_clients() -> None:
    ede = wire.ede_option(wire.EDE_BLOCKED, "hagezi-pro")
    query = wire.parse_query(DIG_QUERY)
    record = assert_reply_to(query, wire.nxdomain(query, 10, ede=ede), wire.RCODE_NXDOMAIN)
    opt = opt_of(record)
    assert opt is not None
    [option] = opt.rdata
    assert option.code == 15
    assert option.data == b"\x00\x0fhagezi-pro"  # INFO-CODE 15 "Blocked", then the EXTRA-TEXT (RFC 8914)
    stub = wire.parse_query(STUB_AAAA_QUERY)
    assert opt_of(oracle(wire.null_ip(stub, 10, ede=ede))) is None


def test_ede_extra_text_is_cut_on_a_character_boundary() -> None:
    option = wire.ede_option(wire.EDE_FILTERED, "é" * 150)
    text = option[6:]
    assert len(text) <= 200
    assert text.decode("utf-8") == "é" * 100
    assert struct.unpack(">HHH", option[:6]) == (15, 2 + len(text), 17)


def test_encode_name() -> None:
    assert wire.encode_name("example.com.") == b"\x07example\x03com\x00"
    assert wire.encode_name(".") == b"\x00"
    for bad in ("a..b", "a" * 64 + ".com", ".".join(["a" * 63] * 4 + ["b"])):
        with pytest.raises(ValueError):
            wire.encode_name(bad)


# --- replies to what does not parse -------------------------------------------------------------------------


def test_formerr_for_garbage_with_only_an_id() -> None:
    reply = wire.formerr(b"\xab\xcd")
    assert reply == bytes.fromhex("abcd 8081 0000 0000 0000 0000")
    record = oracle(reply)
    assert record.header.id == 0xABCD and record.header.rcode == wire.RCODE_FORMERR
    with pytest.raises(FormError):
        wire.formerr(b"\xab")


def test_formerr_echoes_a_readable_question() -> None:
    message = (
        bytes.fromhex("1234 0100 0001 0001 0000 0000") + wire.encode_name("x.example") + b"\x00\x01\x00\x01"
    )
    reply = wire.formerr(message)
    record = oracle(reply)
    assert record.header.rcode == wire.RCODE_FORMERR and record.header.rd == 1
    assert str(record.q.qname) == "x.example."


def test_notimp_copies_the_opcode() -> None:
    message = make_query("zone.example", flags=5 << 11)
    with pytest.raises(QueryError) as caught:
        wire.parse_query(message)
    assert caught.value.rcode == wire.RCODE_NOTIMP
    record = oracle(wire.notimp(message))
    assert record.header.opcode == 5 and record.header.rcode == wire.RCODE_NOTIMP and record.header.qr == 1


def test_badvers_travels_in_the_opt_extended_rcode() -> None:
    message = make_query("x.example", payload=1232)[:-6] + b"\x00\x01\x00\x00\x00\x00"
    reply = wire.error_reply(message, wire.RCODE_BADVERS)
    opt = opt_of(oracle(reply))
    assert opt is not None and opt.ttl >> 24 == 1  # 16 = 1 << 4 | 0
    assert wire.parse_response_meta(reply).rcode == wire.RCODE_BADVERS


# --- upstream replies ---------------------------------------------------------------------------------------


def test_meta_of_a_cname_reply() -> None:
    meta = wire.parse_response_meta(UPSTREAM_CNAME_REPLY)
    assert meta.rcode == wire.RCODE_NOERROR and not meta.truncated and not meta.negative
    assert meta.ttl == 60  # the smallest answer TTL
    assert meta.ttls == (3600, 60)
    assert meta.targets == ("example.com",)
    assert meta.addresses == (bytes([93, 184, 215, 14]),)
    assert meta.question_end == 33
    # The OPT RR is recognised and its "TTL" (extended RCODE and flags) is not a TTL to patch.
    assert UPSTREAM_CNAME_REPLY[meta.opt_offset : meta.opt_offset + 3] == b"\x00\x00\x29"
    assert meta.opt_end == meta.end == len(UPSTREAM_CNAME_REPLY)
    assert all(offset < meta.opt_offset for offset in meta.ttl_offsets)
    for offset, ttl in zip(meta.ttl_offsets, meta.ttls, strict=True):
        assert struct.unpack_from(">I", UPSTREAM_CNAME_REPLY, offset)[0] == ttl


def test_meta_of_nxdomain_takes_the_soa_minimum() -> None:
    meta = wire.parse_response_meta(UPSTREAM_NXDOMAIN_REPLY)
    assert meta.rcode == wire.RCODE_NXDOMAIN and meta.negative
    assert meta.ttl == 300  # RFC 2308: min(SOA TTL 3600, MINIMUM 300)
    assert meta.ttls == (3600,)
    assert oracle(UPSTREAM_NXDOMAIN_REPLY).auth[0].rtype == QTYPE.SOA  # the oracle agrees on the vector


def test_meta_of_negative_reply_without_soa_has_no_ttl() -> None:
    query = wire.parse_query(DIG_QUERY)
    assert wire.parse_response_meta(wire.nxdomain(query)).ttl is None
    assert wire.parse_response_meta(wire.nodata(query)).ttl is None
    assert wire.parse_response_meta(wire.nodata(query, 30)).ttl == 30


def test_meta_treats_ttls_with_the_top_bit_set_as_zero() -> None:
    reply = bytearray(UPSTREAM_CNAME_REPLY)
    struct.pack_into(">I", reply, 39, 0x80000001)  # the CNAME's TTL
    meta = wire.parse_response_meta(bytes(reply))
    assert meta.ttls == (0, 60) and meta.ttl == 0  # RFC 2181 section 8


def test_meta_reads_truncation_and_extended_rcode() -> None:
    reply = bytearray(UPSTREAM_CNAME_REPLY)
    reply[2] |= 0x02
    opt = wire.parse_response_meta(UPSTREAM_CNAME_REPLY).opt_offset
    reply[opt + 5] = 0x01  # extended RCODE high bits: 1 << 4 | 0 = BADVERS
    meta = wire.parse_response_meta(bytes(reply))
    assert meta.truncated and meta.rcode == 16


def test_meta_follows_chains_of_compression_pointers() -> None:
    # www.example.com CNAME cdn.example.com (suffix pointer), which CNAMEs to edge.cdn.example.com (pointer to
    # a name ending in a pointer), whose A record is owned by a pointer to that name again.
    question = b"\x03www\x07example\x03com\x00" + struct.pack(">HH", 1, 1)  # example.com at offset 16
    first_rdata = 12 + len(question) + 12  # where "cdn" + pointer starts
    cdn = b"\x03cdn\xc0\x10"
    edge = b"\x04edge" + struct.pack(">H", 0xC000 | first_rdata)
    second_rdata = first_rdata + len(cdn) + 12
    records = (
        struct.pack(">HHHIH", 0xC00C, 5, 1, 300, len(cdn))
        + cdn
        + struct.pack(">HHHIH", 0xC000 | first_rdata, 5, 1, 300, len(edge))
        + edge
        + struct.pack(">HHHIH", 0xC000 | second_rdata, 1, 1, 20, 4)
        + bytes([192, 0, 2, 7])
    )
    reply = struct.pack(">HHHHHH", 1, 0x8180, 1, 3, 0, 0) + question + records
    meta = wire.parse_response_meta(reply)
    assert meta.targets == ("cdn.example.com", "edge.cdn.example.com")
    assert meta.addresses == (bytes([192, 0, 2, 7]),) and meta.ttl == 20
    assert str(oracle(reply).rr[2].rname) == "edge.cdn.example.com."


def test_meta_collects_https_target_names() -> None:
    query = wire.parse_query(with_type(DIG_QUERY, wire.QTYPE_HTTPS))
    target = wire.encode_name("svc.tracker.example")
    rdata = struct.pack(">H", 1) + target + struct.pack(">HH", 1, 3) + b"\x02h2"  # priority, target, alpn=h2
    record = struct.pack(">HHHIH", 0xC00C, wire.QTYPE_HTTPS, 1, 300, len(rdata)) + rdata
    alias_to_self = struct.pack(">HHHIH", 0xC00C, wire.QTYPE_HTTPS, 1, 300, 3) + b"\x00\x01\x00"
    reply = wire._reply(query, 0, 2, record + alias_to_self, 0, b"")
    assert wire.parse_response_meta(reply).targets == ("svc.tracker.example",)


MALFORMED_REPLIES = {
    "a query, not a response": DIG_QUERY,
    "short header": UPSTREAM_CNAME_REPLY[:7],
    "cut inside the question": UPSTREAM_CNAME_REPLY[:20],
    "cut inside a record": UPSTREAM_CNAME_REPLY[:45],
    "cut inside RDATA": UPSTREAM_CNAME_REPLY[:75],
    "pointer loop": bytes.fromhex("0001 8180 0001 0000 0000 0000 01 61 c0 0c 0001 0001"),  # a.a.a.a...
    "forward pointer": bytes.fromhex("0001 8180 0001 0000 0000 0000 c0 20 0001 0001") + bytes(20),
    "pointer to itself": bytes.fromhex("0001 8180 0001 0000 0000 0000 c0 0c 0001 0001"),
    "A record of 5 bytes": bytes.fromhex("0001 8180 0001 0001 0000 0000 0161 00 0001 0001")
    + bytes.fromhex("c00c 0001 0001 00000001 0005 0102030405"),
    "CNAME target overruns RDATA": bytes.fromhex("0001 8180 0001 0001 0000 0000 0161 00 0001 0001")
    + bytes.fromhex("c00c 0005 0001 00000001 0002 0162 00"),
    "two OPT records": UPSTREAM_CNAME_REPLY[:11]
    + b"\x02"
    + UPSTREAM_CNAME_REPLY[12:]
    + bytes.fromhex("00 0029 04d0 00000000 0000"),
    "OPT in the answer section": bytes.fromhex("0001 8180 0000 0001 0000 0000 00 0029 04d0 00000000 0000"),
    "reserved label type": bytes.fromhex("0001 8180 0001 0000 0000 0000 81 61 00 0001 0001"),
}


@pytest.mark.parametrize("reply", list(MALFORMED_REPLIES.values()), ids=list(MALFORMED_REPLIES))
def test_malformed_replies_raise_form_error(reply: bytes) -> None:
    with pytest.raises(FormError):
        wire.parse_response_meta(reply)


# --- patch_reply --------------------------------------------------------------------------------------------


def test_patch_reply_sets_id_lowers_ttls_and_copies_question_case() -> None:
    meta = wire.parse_response_meta(UPSTREAM_CNAME_REPLY)
    query = wire.parse_query(make_query("WWW.Example.COM", ident=0x4321))
    patched = wire.patch_reply(UPSTREAM_CNAME_REPLY, 0x4321, meta.ttl_offsets, 25, query.question)
    record = oracle(patched)
    assert record.header.id == 0x4321
    assert [rr.ttl for rr in record.rr] == [3575, 35]
    assert patched[12:33] == query.question
    assert patched[meta.opt_offset :] == UPSTREAM_CNAME_REPLY[meta.opt_offset :]  # OPT flags untouched


def test_patch_reply_clamps_ttls_at_zero() -> None:
    meta = wire.parse_response_meta(UPSTREAM_CNAME_REPLY)
    patched = wire.patch_reply(UPSTREAM_CNAME_REPLY, 1, meta.ttl_offsets, 100)
    assert [rr.ttl for rr in oracle(patched).rr] == [3500, 0]


def test_patch_reply_refuses_another_question() -> None:
    meta = wire.parse_response_meta(UPSTREAM_CNAME_REPLY)
    other = wire.parse_query(make_query("www.example.org"))
    with pytest.raises(ValueError):
        wire.patch_reply(UPSTREAM_CNAME_REPLY, 1, meta.ttl_offsets, 0, other.question)


# --- properties: hostile bytes never raise anything but FormError -------------------------------------------

FUZZ = settings(max_examples=400, deadline=None)


@FUZZ
@given(st.binary(max_size=600))
def test_parse_query_raises_only_query_error(data: bytes) -> None:
    try:
        query = wire.parse_query(data)
    except QueryError as error:
        if error.rcode is not None:
            wire.error_reply(data, error.rcode)  # and we can always answer it
        return
    assert query.question_end <= len(data)
    wire.null_ip(query, 5)


@FUZZ
@given(st.binary(max_size=600))
def test_parse_response_meta_raises_only_form_error_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(FormError):
        wire.parse_response_meta(data)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    message = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        position = draw(st.integers(0, max(len(message) - 1, 0)))
        if action == "flip" and message:
            message[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and message:
            message[position] = draw(st.sampled_from([0x00, 0x3F, 0x40, 0xC0, 0xFF, position & 0xFF]))
        elif action == "cut":
            del message[position:]
        else:
            message[position:position] = draw(st.binary(min_size=1, max_size=4))
    return bytes(message)


@FUZZ
@given(st.one_of(mutated(UPSTREAM_CNAME_REPLY), mutated(UPSTREAM_NXDOMAIN_REPLY)))
def test_parse_response_meta_on_mutated_replies(reply: bytes) -> None:
    try:
        meta = wire.parse_response_meta(reply)
    except FormError:
        return
    assert all(0 < offset <= len(reply) - 4 for offset in meta.ttl_offsets)
    wire.patch_reply(reply, 7, meta.ttl_offsets, 3)


@FUZZ
@given(st.one_of(mutated(DIG_QUERY), mutated(MIXED_CASE_DO_QUERY), mutated(STUB_AAAA_QUERY)))
def test_parse_query_on_mutated_queries(data: bytes) -> None:
    try:
        query = wire.parse_query(data)
    except DnsguardError:
        return
    # Whatever we accept, dnslib reads the same question from, unless the name holds bytes dnslib refuses
    # (binary labels are legal, RFC 2181 section 11), which our text form always shows escaped.
    try:
        record = DNSRecord.parse(data)
    except DNSError:
        assert "\\" in query.qname
        return
    assert (record.q.qtype, record.q.qclass) == (query.qtype, query.qclass)
    assert len(record.questions) == 1
    if "\\" not in query.qname:
        assert str(record.q.qname).lower().rstrip(".") == query.qname


LABEL = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=20
)


@settings(max_examples=200, deadline=None)
@given(
    labels=st.lists(LABEL, min_size=1, max_size=6),
    qtype=st.sampled_from([wire.QTYPE_A, wire.QTYPE_AAAA, wire.QTYPE_HTTPS, wire.QTYPE_TXT]),
    payload=st.one_of(st.none(), st.integers(0, 65535)),
    dnssec_ok=st.booleans(),
    flags=st.sampled_from([0, wire.FLAG_RD, wire.FLAG_RD | wire.FLAG_CD, wire.FLAG_RD | wire.FLAG_AD]),
)
def test_every_reply_to_every_query_reads_back_correctly(
    labels: list[str], qtype: int, payload: int | None, dnssec_ok: bool, flags: int
) -> None:
    name = ".".join(labels)
    query = wire.parse_query(make_query(name, qtype, flags=flags, payload=payload, dnssec_ok=dnssec_ok))
    assert query.qname == name.lower()
    assert str(DNSRecord.parse(query.data).q.qname).rstrip(".").lower() == query.qname
    ede = wire.ede_option(wire.EDE_FILTERED, "list")
    for reply, rcode in [
        (wire.null_ip(query, 2), wire.RCODE_NOERROR),
        (wire.nxdomain(query, 2, ede), wire.RCODE_NXDOMAIN),
        (wire.refused(query), wire.RCODE_REFUSED),
        (wire.answer_cname(query, "safe.example", 60, wire.pack_addresses(["1.2.3.4", "::2"])), 0),
    ]:
        assert_reply_to(query, reply, rcode)
        assert wire.parse_response_meta(reply).rcode == rcode


@FUZZ
@given(st.one_of(st.binary(max_size=600), mutated(pointer_loop_query())))
def test_the_full_parser_raises_only_query_error_with_a_known_reason(data: bytes) -> None:
    try:
        query = wire.parse_full_query(data)
    except QueryError as error:
        assert error.reason in wire.MALFORMED_REASONS
        if error.rcode is not None:
            wire.error_reply(data, error.rcode)
        return
    assert query.question_end <= len(data)
