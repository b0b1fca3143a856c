"""Every value is checked where it is read, with the daemon's own parsers: what loads is what runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnsguard.config import load_config
from dnsguard.config.loader import Range, parse_duration
from dnsguard.errors import ConfigError, ConfigErrors
from dnsguard.wireguard.keys import generate_preshared_key, generate_private_key, public_key

PRIVATE = generate_private_key()
PEER = public_key(generate_private_key())

BASE = "upstreams:\n  servers: [198.51.100.53]\nlists:\n  ads:\n    sources: [ads.txt]\n"


def write(tmp_path: Path, text: str, name: str = "dnsguard.yaml") -> Path:
    (tmp_path / "ads.txt").write_text("ads.example\n")
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(tmp_path: Path, text: str) -> list[ConfigError]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    found = list(error.errors) if isinstance(error, ConfigErrors) else [error]
    for each in found:
        assert each.file == str(path) and each.line is not None, str(each)
    return found


def only_error(tmp_path: Path, text: str) -> ConfigError:
    (error,) = errors_of(tmp_path, text)
    return error


def tunnel(**keys: str) -> str:
    values = {"private-key": PRIVATE, **keys}
    lines = "".join(f"  {key}: {value}\n" for key, value in values.items())
    return f"tunnel:\n{lines}  peers:\n    - public-key: {PEER}\n      allowed-ips: [0.0.0.0/0]\n"


# -- upstreams: the daemon's spec parser -------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("quic://dns.example", "unsupported protocol 'quic'"),
        ("not-an-address", "plain DNS needs an IP address"),
        ("198.51.100.53:99999", "port '99999'"),
        (":99999", "missing host"),
        ("http://dns.example/dns-query", "needs https://"),
        ("tls:dns.example#not-an-ip", "pinned address"),
    ],
)
def test_upstream_specs_are_parsed_by_the_daemons_parser(tmp_path: Path, spec: str, fragment: str) -> None:
    text = BASE.replace("[198.51.100.53]", f"['198.51.100.53', '{spec}']")
    error = only_error(tmp_path, text)
    assert (error.line, error.key) == (2, "upstreams.servers[1]")
    assert fragment in error.message


def test_conditional_upstreams_are_checked_too(tmp_path: Path) -> None:
    text = (
        "upstreams:\n  servers: [198.51.100.53]\n  conditional:\n    lan.example: [192.0.2.1]\n"
        "    home.arpa:\n      - 192.0.2.1\n      - quic://x\n    'bad zone!': [192.0.2.1]\n"
    )
    keys = {(e.key, e.line) for e in errors_of(tmp_path, text)}
    assert keys == {("upstreams.conditional.home.arpa[1]", 7), ("upstreams.conditional.bad zone!", 8)}


def test_a_filtering_config_needs_an_upstream(tmp_path: Path) -> None:
    error = only_error(tmp_path, "lists:\n  ads:\n    sources: [ads.txt]\n")
    assert error.key == "upstreams.servers" and "no upstream" in error.message


def test_the_tunnel_dns_is_an_upstream(tmp_path: Path) -> None:
    text = "lists:\n  ads:\n    sources: [ads.txt]\n" + tunnel(dns="[198.51.100.53, corp.example]")
    config = load_config(write(tmp_path, text))
    assert config.tunnel is not None and config.tunnel.dns == ["198.51.100.53", "corp.example"]


# -- WireGuard keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [
        ("private-key", "REPLACE-with-the-output-of-dnsguard-keygen", 2),
        ("private-key", "short", 2),
        ("private-key", PRIVATE[:-2] + "B=", 2),  # unused low bits set: not the canonical encoding
    ],
)
def test_private_keys_must_decode(tmp_path: Path, key: str, value: str, line: int) -> None:
    error = only_error(tmp_path, BASE + tunnel(**{key: value}))
    assert (error.line - BASE.count("\n"), error.key) == (line, f"tunnel.{key}")
    assert "private key" in error.message


def test_peer_keys_must_decode(tmp_path: Path) -> None:
    text = BASE + tunnel().replace(PEER, "not-a-key") + "      preshared-key: also-not-a-key\n"
    found = {(e.key, e.line) for e in errors_of(tmp_path, text)}
    offset = BASE.count("\n")
    assert found == {
        ("tunnel.peers[0].public-key", offset + 4),
        ("tunnel.peers[0].preshared-key", offset + 6),
    }


def test_valid_keys_load(tmp_path: Path) -> None:
    text = BASE + tunnel() + f"      preshared-key: {generate_preshared_key()}\n"
    config = load_config(write(tmp_path, text))
    assert config.tunnel is not None and config.tunnel.private_key == PRIVATE


def test_a_tunnel_needs_a_private_key(tmp_path: Path) -> None:
    text = BASE + tunnel().replace(f"  private-key: {PRIVATE}\n", "")
    error = only_error(tmp_path, text)
    assert error.key == "tunnel.private-key" and "needs a private key" in error.message


def test_the_same_peer_twice_is_an_error(tmp_path: Path) -> None:
    text = BASE + tunnel() + f"    - public-key: {PEER}\n"
    error = only_error(tmp_path, text)
    assert error.key == "tunnel.peers[1].public-key" and "same public key as peers[0]" in error.message


def test_shipped_example_keys_are_a_warning(tmp_path: Path) -> None:
    example = "wOnjbB2bKRKdhMiNylKJUF0uldStVCIRY9KNut+ltF8="
    config = load_config(write(tmp_path, BASE + tunnel(**{"private-key": example})))
    (warning,) = config.warnings
    assert warning.key == "tunnel.private-key" and warning.line == BASE.count("\n") + 2
    assert "example key" in warning.message


# -- ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("listen-port", "70000", "must be 0..65535"),
        ("listen-port", "-1", "must be 0..65535"),
        ("fwmark", "-1", "must be 1..4294967294"),
        ("fwmark", "0", "must be 1..4294967294"),
        ("fwmark", "4294967295", "mark + 1"),
        ("table", "0", "must be 1..4294967295"),
        ("table", "254", "main table"),
        ("table", "4294967296", "must be 1..4294967295"),
        ("mtu", "575", "must be 576..8920"),
        ("mtu", "65535", "must be 576..8920"),
        ("rekey-after-time", "10m", "must be 1..120"),
        ("interface", "a-name-that-is-far-too-long", "interface name"),
        ("interface", "dg/0", "interface name"),
    ],
)
def test_tunnel_ranges(tmp_path: Path, key: str, value: str, fragment: str) -> None:
    error = only_error(tmp_path, BASE + tunnel(**{key: value}))
    assert (error.key, error.line) == (f"tunnel.{key}", BASE.count("\n") + 3)
    assert fragment in error.message


def test_ipv6_tunnel_needs_an_mtu_of_1280(tmp_path: Path) -> None:
    error = only_error(tmp_path, BASE + tunnel(mtu="1000", address="[100.64.0.2/32, 'fd00::2/128']"))
    assert error.key == "tunnel.mtu" and "RFC 8200" in error.message
    load_config(write(tmp_path, BASE + tunnel(mtu="1000", address="[100.64.0.2/32]")))


@pytest.mark.parametrize(
    ("section", "key", "value", "fragment"),
    [
        ("blocking", "ttl", "9999999999", "longer than 2147483647 s"),
        ("blocking", "ttl", "2147483648", "longer than 2147483647 s"),
        ("blocking", "ttl", ".nan", "not a finite duration"),
        ("blocking", "ttl", ".inf", "not a finite duration"),
        ("blocking", "ttl", "-.inf", "not a finite duration"),
        ("blocking", "ttl", "-1", "cannot be negative"),
        ("cache", "max-ttl", "1.0e+300", "longer than"),
        ("cache", "max-entries", "-5", "must be 0..10000000"),
        ("cache", "stale-max-age", ".nan", "not a finite duration"),
        ("upstreams", "timeout", "0", "must be 0.01..60"),
        ("upstreams", "timeout", ".inf", "not a finite duration"),
        ("upstreams", "timeout", "5m", "must be 0.01..60"),
        ("loading", "refresh", "1s", "must be 60..31536000"),
        ("loading", "timeout", "0", "must be 1..3600"),
        ("loading", "min-ratio", ".nan", "finite number"),
        ("loading", "min-ratio", "1.5", "must be 0..1"),
        ("loading", "max-size", "0", "must be 1024.."),
        ("reload", "interval", "0", "must be 0.1..86400"),
        ("api", "query-log-size", "-1", "must be 0..1000000"),
        ("performance", "keep-warm", "2m", "must be 0..60"),
        ("performance", "keep-warm", "-1", "cannot be negative"),
        ("performance", "keep-warm", ".nan", "not a finite duration"),
    ],
)
def test_section_ranges(tmp_path: Path, section: str, key: str, value: str, fragment: str) -> None:
    if section == "upstreams":
        text = BASE.replace("[198.51.100.53]\n", f"[198.51.100.53]\n  {key}: {value}\n")
    else:
        text = BASE + f"{section}:\n  {key}: {value}\n"
    error = only_error(tmp_path, text)
    assert error.key == f"{section}.{key}"
    assert fragment in error.message, error.message


def test_keep_warm_is_on_for_a_second_unless_set(tmp_path: Path) -> None:
    assert float(load_config(write(tmp_path, BASE)).performance.keep_warm) == 1.0
    text = BASE + "performance:\n  keep-warm: 250ms\n"
    assert float(load_config(write(tmp_path, text)).performance.keep_warm) == 0.25
    text = BASE + "performance:\n  keep-warm: 0\n"
    assert float(load_config(write(tmp_path, text)).performance.keep_warm) == 0


def test_receive_codel_is_off_unless_set_and_takes_only_a_boolean(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, BASE)).performance.receive_codel is False
    text = BASE + "performance:\n  receive-codel: true\n"
    assert load_config(write(tmp_path, text)).performance.receive_codel is True
    error = only_error(tmp_path, BASE + "performance:\n  receive-codel: sometimes\n")
    assert error.key == "performance.receive-codel"


def test_ttl_of_a_rewrite_is_bounded(tmp_path: Path) -> None:
    text = BASE + "rewrites:\n  - name: nas.example\n    answer: [192.0.2.10]\n    ttl: 9999999999\n"
    error = only_error(tmp_path, text)
    assert (error.key, error.line) == ("rewrites[0].ttl", BASE.count("\n") + 4)


def test_largest_ttl_is_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + "blocking:\n  ttl: 2147483647\n"))
    assert config.blocking.ttl == 2**31 - 1


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("persistent-keepalive", "65536", "must be 0..65535"),
        ("endpoint", "203.0.113.10:70000", "bad port"),
    ],
)
def test_peer_ranges(tmp_path: Path, key: str, value: str, fragment: str) -> None:
    error = only_error(tmp_path, BASE + tunnel() + f"      {key}: {value}\n")
    assert error.key is not None and error.key.startswith(f"tunnel.peers[0].{key}")
    assert fragment in error.message


def test_allowed_ips_are_prefixes(tmp_path: Path) -> None:
    error = only_error(tmp_path, BASE + tunnel().replace("[0.0.0.0/0]", "[0.0.0.0/0, 0.0.0.0/33]"))
    assert error.key == "tunnel.peers[0].allowed-ips[1]" and "not an address or prefix" in error.message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("handshake-timeout", ".nan"),
        ("dead-peer-timeout", "0"),
        ("backoff-max", "2d"),
        ("debounce", "2m"),
        ("give-up-after", "0"),
    ],
)
def test_reconnect_timers(tmp_path: Path, key: str, value: str) -> None:
    text = BASE + tunnel() + f"  reconnect:\n    {key}: {value}\n"
    assert only_error(tmp_path, text).key == f"tunnel.reconnect.{key}"


def test_backoff_max_below_initial_is_an_error(tmp_path: Path) -> None:
    text = BASE + tunnel() + "  reconnect:\n    backoff-initial: 10s\n    backoff-max: 1s\n"
    assert only_error(tmp_path, text).key == "tunnel.reconnect.backoff-max"


@pytest.mark.parametrize("text", ["nan", "inf", float("nan"), float("inf"), 1e300, "99999999999s"])
def test_durations_are_finite_and_bounded(text: str | float) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_range_describes_itself() -> None:
    with pytest.raises(ValueError, match=r"70000 is out of range: must be 1\.\.65535 \(a port\)"):
        Range(1, 65535, "a port").check(70000)


# -- list files --------------------------------------------------------------------------------


def test_missing_list_file_is_an_error(tmp_path: Path) -> None:
    error = only_error(tmp_path, BASE.replace("[ads.txt]", "[ads.txt, missing.txt]"))
    assert (error.key, error.line) == ("lists.ads.sources[1]", 5)
    assert "no such file" in error.message


def test_a_directory_as_list_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "lists.d").mkdir()
    error = only_error(tmp_path, BASE.replace("[ads.txt]", "[lists.d]"))
    assert error.key == "lists.ads.sources[0]" and "not a regular file" in error.message


def test_url_sources_are_not_fetched_but_must_be_urls(tmp_path: Path) -> None:
    text = BASE.replace("[ads.txt]", "[ads.txt, 'https://lists.example/ads.txt']")
    assert load_config(write(tmp_path, text)).lists["ads"].sources[1].startswith("https://")
    error = only_error(tmp_path, BASE.replace("[ads.txt]", "['ftp://lists.example/ads.txt']"))
    assert "only http:// and https://" in error.message
    error = only_error(tmp_path, BASE.replace("[ads.txt]", "['https:///ads.txt']"))
    assert "not a URL" in error.message


# -- all errors at once ------------------------------------------------------------------------


def test_every_error_of_a_file_is_reported_in_one_pass(tmp_path: Path) -> None:
    text = (
        "upstreams:\n  servers: [quic://x, 198.51.100.53, not-an-address]\n"
        "cache:\n  max-entries: -1\n  colour: red\n"
        "blocking:\n  ttl: 9999999999\n"
        "lists:\n  ads:\n    sources: [ads.txt]\n"
    )
    found = [(e.line, e.key) for e in errors_of(tmp_path, text)]
    assert found == [
        (2, "upstreams.servers[0]"),
        (2, "upstreams.servers[2]"),
        (4, "cache.max-entries"),
        (5, "cache.colour"),
        (7, "blocking.ttl"),
    ]


def test_a_sections_own_checks_wait_for_its_values(tmp_path: Path) -> None:
    """A section's cross-value checks (here: upstream specs) run once its values parse; fix, re-check."""
    text = "upstreams:\n  servers: [quic://x]\n  timeout: .nan\n"
    assert [e.key for e in errors_of(tmp_path, text)] == ["upstreams.timeout"]


def test_reporting_stops_after_max_errors(tmp_path: Path) -> None:
    from dnsguard.config.loader import MAX_ERRORS

    text = "groups:\n  kids:\n    clients:\n" + "".join(f"      - 192.0.2.{300 + i}\n" for i in range(200))
    path = write(tmp_path, text)
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    assert len(info.value.errors) == MAX_ERRORS
    assert [e.line for e in info.value.errors[:2]] == [4, 5]


@pytest.mark.parametrize(
    ("fragment_yaml", "key", "fragment"),
    [
        ("rate-limit: {burst: 0}", "resolver.rate-limit.burst", "must be 1..1000000"),
        ("rate-limit: {queries-per-second: .nan}", "resolver.rate-limit.queries-per-second", "finite"),
        ("rate-limit: {remote-ipv4-prefix: 33}", "resolver.rate-limit.remote-ipv4-prefix", "must be 8..32"),
        ("rate-limit: {exempt: [not-a-cidr]}", "resolver.rate-limit.exempt[0]", "not a CIDR"),
        ("allow-clients: [everyone]", "resolver.allow-clients[0]", "loopback, local-networks, tunnel"),
        ("max-udp-size: 100", "resolver.max-udp-size", "must be 512..4096"),
        ("max-upstream-per-client: 0", "resolver.max-upstream-per-client", "must be 1..4096"),
        ("tcp: {max-per-client: 300}", "resolver.tcp.max-per-client", "at most max-connections"),
        ("tcp: {idle-timeout: 20s, max-lifetime: 5s}", "resolver.tcp.max-lifetime", "at least idle-timeout"),
    ],
)
def test_the_resolver_limits_are_checked(tmp_path: Path, fragment_yaml: str, key: str, fragment: str) -> None:
    error = only_error(tmp_path, BASE + f"resolver:\n  {fragment_yaml}\n")
    assert error.key == key
    assert fragment in error.message, error.message


# -- known clients and tags ---------------------------------------------------------------------

CLIENTS = (
    "clients:\n"
    "  kid-tablet:\n"
    "    addresses: [192.0.2.20, AA-BB-CC-DD-EE-01]\n"
    "    tags: [device_tablet, User_Child]\n"
)


def test_a_group_naming_a_client_gets_its_addresses_and_tags_are_folded(tmp_path: Path) -> None:
    text = (
        BASE + CLIENTS + "groups:\n  kids:\n    clients: [kid-tablet, 192.0.2.30]\n    tags: [user_child]\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.clients["kid-tablet"].addresses == ["192.0.2.20/32", "aa:bb:cc:dd:ee:01"]
    assert config.clients["kid-tablet"].tags == ["device_tablet", "user_child"]
    assert config.groups["kids"].clients == ["192.0.2.20/32", "aa:bb:cc:dd:ee:01", "192.0.2.30/32"]
    assert config.groups["kids"].tags == ["user_child"]


def test_a_group_naming_an_unknown_client_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    error = only_error(tmp_path, BASE + CLIENTS + "groups:\n  kids:\n    clients: [kid-phone]\n")
    assert error.key == "groups.kids.clients" and "kid-phone" in str(error) and "kid-tablet" in str(error)


def test_a_malformed_tag_or_a_shared_address_is_refused(tmp_path: Path) -> None:
    error = only_error(tmp_path, BASE + CLIENTS.replace("device_tablet", "device tablet"))
    assert error.key == "clients.kid-tablet.tags[0]"
    twin = "  kid-phone:\n    addresses: [192.0.2.20]\n"
    error = only_error(tmp_path, BASE + CLIENTS + twin)
    assert error.key == "clients.kid-phone.addresses" and "kid-tablet" in str(error)


def test_names_are_folded_once_at_load(tmp_path: Path) -> None:
    text = BASE.replace(
        "upstreams:\n  servers: [198.51.100.53]\n",
        "upstreams:\n  servers: [198.51.100.53]\n  conditional:\n    Home.ARPA.: [192.0.2.1]\n",
    )
    text += "rewrites:\n  - {name: NAS.Home.Arpa., answer: [Storage.Example.]}\n"
    config = load_config(write(tmp_path, text))
    assert list(config.upstreams.conditional) == ["home.arpa"]
    assert (config.rewrites[0].name, config.rewrites[0].answer) == ("nas.home.arpa", ["storage.example"])
