"""DHCP lease files: dnsmasq, ISC dhcpd and Kea, read as the daemons write them, and hostile ones."""

from __future__ import annotations

import calendar

from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.policy.leases import MAX_LEASE_FILE_SIZE, MAX_LEASES, Lease, detect_format, parse_leases

NOW = 1_800_000_000.0
LATER = int(NOW) + 3600

DNSMASQ = f"""\
{LATER} 02:00:5e:10:00:01 192.0.2.101 kids-tablet 01:02:00:5e:10:00:01
{LATER} 02:00:5e:10:00:02 192.0.2.102 * *
0 02:00:5e:10:00:03 192.0.2.103 nas *
{int(NOW) - 10} 02:00:5e:10:00:04 192.0.2.104 gone *
duid 00:01:00:01:2c:4b:1e:9a:02:00:5e:10:00:00
{LATER} 305419896 2001:db8:100::1234 laptop 00:01:00:01:2c:4b:1e:9a:02:00:5e:10:00:09
"""

ISC = """\
# The format of this file is documented in the dhcpd.leases(5) manual page.
authoring-byte-order little-endian;
server-duid "\\000\\001\\000\\001";
lease 192.0.2.50 {
  starts 5 2026/12/04 10:00:00;
  ends 5 2027/12/04 10:00:00;
  cltt 5 2026/12/04 10:00:00;
  binding state active;
  next binding state free;
  hardware ethernet 02:00:5e:10:00:50;
  uid "\\001\\002\\000^\\020\\000P";
  set vendor-class-identifier = "android-dhcp-13";
  client-hostname "Pixel-7";
}
lease 192.0.2.51 {
  starts epoch 1764842400; # Thu Dec 04 10:00:00 2025
  ends never;
  binding state active;
  hardware ethernet 02:00:5e:10:00:51;
  client-hostname "tv";
}
lease 192.0.2.53 {
  binding state active;
  hardware ethernet 02:00:5e:10:00:53;
  ends epoch 1900000000; # Sun Mar 17 17:46:40 2030
  client-hostname "epoch";
}
lease 192.0.2.52 {
  ends 5 2026/12/04 10:00:00;
  binding state active;
  hardware ethernet 02:00:5e:10:00:52;
  client-hostname "expired";
}
lease 192.0.2.51 {
  ends never;
  binding state free;
  hardware ethernet 02:00:5e:10:00:51;
}
"""

KEA4 = f"""\
address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context,pool_id
192.0.2.60,02:00:5e:10:00:60,01:02:00:5e:10:00:60,3600,{LATER},1,0,0,printer.home.arpa.,0,,0
192.0.2.61,02:00:5e:10:00:61,,3600,{LATER},1,0,0,declined,1,,0
192.0.2.62,02:00:5e:10:00:62,,3600,{LATER},1,0,0,odd&#x2cname,0,,0
192.0.2.60,02:00:5e:10:00:60,01:02:00:5e:10:00:60,3600,{LATER},1,0,0,printer2,0,,0
"""

KEA6 = f"""\
address,duid,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,iaid,prefix_len,fqdn_fwd,fqdn_rev,hostname,hwaddr,state,user_context
2001:db8:100::60,00:01:00:01,3600,{LATER},1,1800,0,1,128,0,0,phone,02:00:5e:10:00:70,0,
"""


def test_dnsmasq_leases_with_expiry_infinite_and_ipv6() -> None:
    parse = parse_leases(DNSMASQ.encode(), NOW)
    assert parse.format == "dnsmasq" and parse.errors == 0
    assert parse.leases["192.0.2.101"] == Lease("192.0.2.101", "02:00:5e:10:00:01", "kids-tablet", LATER)
    assert parse.leases["192.0.2.102"].hostname == ""  # '*': no name announced
    assert parse.leases["192.0.2.103"].expires is None  # expiry 0: an infinite lease
    assert "192.0.2.104" not in parse.leases  # expired
    assert parse.leases["2001:db8:100::1234"] == Lease("2001:db8:100::1234", "", "laptop", LATER)


def test_isc_leases_take_the_newest_entry_and_only_active_ones() -> None:
    parse = parse_leases(ISC.encode(), NOW)
    assert parse.format == "isc" and parse.errors == 0
    assert parse.leases == {
        "192.0.2.50": Lease(
            "192.0.2.50", "02:00:5e:10:00:50", "pixel-7", calendar.timegm((2027, 12, 4, 10, 0, 0))
        ),
        "192.0.2.53": Lease("192.0.2.53", "02:00:5e:10:00:53", "epoch", 1_900_000_000.0),
    }


def test_kea_csv_v4_and_v6() -> None:
    parse = parse_leases(KEA4.encode(), NOW)
    assert parse.format == "kea"
    assert parse.leases["192.0.2.60"].hostname == "printer2"  # the later row wins
    assert "192.0.2.61" not in parse.leases  # state 1: declined
    assert parse.leases["192.0.2.62"].hostname == ""  # "odd,name" is not a DNS label
    assert parse.errors == 1
    six = parse_leases(KEA6.encode(), NOW)
    assert six.leases["2001:db8:100::60"] == Lease("2001:db8:100::60", "02:00:5e:10:00:70", "phone", LATER)


def test_fully_qualified_names_show_their_first_label() -> None:
    parse = parse_leases(f"{LATER} 02:00:5e:10:00:01 192.0.2.9 laptop.home.arpa *\n".encode(), NOW)
    assert parse.leases["192.0.2.9"].hostname == "laptop"


def test_hostile_host_names_are_dropped_and_counted() -> None:
    hostile = 'lease 192.0.2.7 { ends never; client-hostname "x\\nrm -rf /\\033[2J"; }\n'
    parse = parse_leases(hostile.encode(), NOW)
    assert parse.leases["192.0.2.7"].hostname == "" and parse.errors == 1


def test_truncated_files_keep_what_was_whole() -> None:
    cut = ISC[: ISC.index("lease 192.0.2.51") + 30]
    parse = parse_leases(cut.encode(), NOW)
    assert set(parse.leases) == {"192.0.2.50"} and parse.errors == 1
    line_cut = DNSMASQ[: DNSMASQ.index("192.0.2.102") + 4]
    parse = parse_leases(line_cut.encode(), NOW)
    assert set(parse.leases) == {"192.0.2.101"} and parse.errors == 1


def test_garbage_lines_are_counted_with_examples() -> None:
    text = (
        f"{LATER} not-a-mac 192.0.2.1 a *\n{LATER} 02:00:5e:10:00:01 999.0.2.1 b *\n!!!\n"
        f"{LATER} 02:00:5e:10:00:01 192.0.2.010 octal *\n"
    )
    parse = parse_leases(text.encode(), NOW, format="dnsmasq")
    assert parse.leases == {} and parse.errors == 4 and len(parse.examples) == 3


def test_an_oversized_file_is_read_up_to_the_bound() -> None:
    line = f"{LATER} 02:00:5e:10:00:01 192.0.2.1 a *\n".encode()
    data = line * (MAX_LEASE_FILE_SIZE // len(line) + 10)
    parse = parse_leases(data, NOW)
    assert parse.errors >= 1 and "larger than" in parse.examples[0]
    assert set(parse.leases) == {"192.0.2.1"}


def test_the_number_of_leases_is_bounded() -> None:
    lines = [f"0 02:00:5e:10:00:01 198.18.{i // 256}.{i % 256} h *" for i in range(MAX_LEASES + 5)]
    parse = parse_leases("\n".join(lines).encode(), NOW)
    assert len(parse.leases) == MAX_LEASES and parse.errors == 5


def test_format_detection() -> None:
    assert detect_format("") is None
    assert detect_format("\n# comment\nlease 1.2.3.4 {") == "isc"
    assert detect_format("duid 00:01\n") == "dnsmasq"
    assert detect_format("address,hwaddr\n") == "kea"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from([None, "dnsmasq", "isc", "kea"]))
def test_any_bytes_parse_without_raising(data: bytes, format: str | None) -> None:
    parse = parse_leases(data, NOW, format)  # type: ignore[arg-type]
    for lease in parse.leases.values():
        assert lease.hostname == "" or lease.hostname.replace("-", "").isalnum()


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(ISC) + len(KEA4) + len(DNSMASQ)), st.binary(max_size=40))
def test_real_files_cut_anywhere_and_spliced_with_garbage_parse(cut: int, garbage: bytes) -> None:
    for text in (ISC, KEA4, DNSMASQ):
        data = text.encode()
        parse = parse_leases(data[: cut % (len(data) + 1)] + garbage, NOW)
        assert all(lease.address for lease in parse.leases.values())


LEASES = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2**32 - 1).map(
            lambda n: f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        ),
        st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)),
        st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
        st.integers(min_value=int(NOW) + 1, max_value=int(NOW) + 10**7),
    ),
    max_size=20,
)


def render(format: str, leases: list[tuple[str, str, str, int]]) -> str:
    if format == "dnsmasq":
        return "".join(f"{expiry} {mac} {address} {name} *\n" for address, mac, name, expiry in leases)
    if format == "kea":
        header = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state\n"
        rows = (f"{address},{mac},,3600,{expiry},1,0,0,{name},0\n" for address, mac, name, expiry in leases)
        return header + "".join(rows)
    import time

    return "".join(
        f"lease {address} {{\n  ends 1 {time.strftime('%Y/%m/%d %H:%M:%S', time.gmtime(expiry))};\n"
        f'  binding state active;\n  hardware ethernet {mac};\n  client-hostname "{name}";\n}}\n'
        for address, mac, name, expiry in leases
    )


@settings(max_examples=150, deadline=None)
@given(LEASES, st.sampled_from(["dnsmasq", "isc", "kea"]))
def test_every_format_reads_back_what_its_server_wrote_newest_entry_winning(
    leases: list[tuple[str, str, str, int]], format: str
) -> None:
    expected = {address: Lease(address, mac, name, float(expiry)) for address, mac, name, expiry in leases}
    parse = parse_leases(render(format, leases).encode(), NOW)
    assert parse.errors == 0 and parse.leases == expected
