"""wg-quick files read as wg(8) and wg-quick(8) read them: repeated keys add up, unapplied keys are warned."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnsguard.config import load_config, parse_wg_quick, upstream_servers
from dnsguard.errors import ConfigError, ConfigErrors
from dnsguard.wireguard.keys import generate_private_key, public_key

PRIVATE = generate_private_key()
PEER = public_key(generate_private_key())

PROVIDER = f"""\
# as a VPN provider ships it: one family per line
[Interface]
PrivateKey = {PRIVATE}
Address = 100.64.0.2/32
Address = fd00::2/128
DNS = 198.51.100.53
DNS = 2001:db8::53, corp.example
PostUp = iptables -I OUTPUT ! -o %i -j REJECT
PreDown = iptables -D OUTPUT ! -o %i -j REJECT
Table = off
SaveConfig = true

[Peer]
PublicKey = {PEER}
AllowedIPs = 0.0.0.0/0
AllowedIPs = ::/0
Endpoint = 203.0.113.10:51820
"""


def write(tmp_path: Path, text: str, name: str = "wg0.conf") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_repeated_allowed_ips_address_and_dns_lines_accumulate() -> None:
    tunnel, _ = parse_wg_quick(PROVIDER, "wg0.conf")
    (peer,) = tunnel.peers
    assert peer.allowed_ips == ["0.0.0.0/0", "::/0"]
    assert tunnel.address == ["100.64.0.2/32", "fd00::2/128"]
    assert tunnel.dns == ["198.51.100.53", "2001:db8::53", "corp.example"]


def test_keys_dnsguard_does_not_apply_are_warnings_with_lines() -> None:
    _, warnings = parse_wg_quick(PROVIDER, "wg0.conf")
    assert [(w.line, w.key) for w in warnings] == [
        (8, "PostUp"),
        (9, "PreDown"),
        (10, "Table"),
        (11, "SaveConfig"),
    ]
    assert all(w.file == "wg0.conf" for w in warnings)
    assert "never runs commands" in warnings[0].message
    assert str(warnings[0]).startswith("wg0.conf:8: PostUp: ")


def test_every_hook_is_a_warning() -> None:
    hooks = "".join(f"{hook} = true\n" for hook in ("PreUp", "PostUp", "PreDown", "PostDown"))
    text = PROVIDER.replace("[Peer]", hooks + "[Peer]")
    _, warnings = parse_wg_quick(text, "wg0.conf")
    assert [w.key for w in warnings][-4:] == ["PreUp", "PostUp", "PreDown", "PostDown"]


def test_fwmark_off_is_a_warning_and_keeps_the_mark() -> None:
    tunnel, warnings = parse_wg_quick(PROVIDER.replace("Table = off", "FwMark = off"), "wg0.conf")
    assert tunnel.fwmark == 51820
    assert [w.key for w in warnings if w.key == "FwMark"] == ["FwMark"]


def test_loaded_config_carries_the_warnings_and_dns_upstreams(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, PROVIDER))
    assert [w.key for w in config.warnings] == ["PostUp", "PreDown", "Table", "SaveConfig"]
    assert upstream_servers(config) == ["198.51.100.53", "2001:db8::53"]


def test_yaml_pointing_at_a_wg_quick_file_gets_its_warnings(tmp_path: Path) -> None:
    write(tmp_path, PROVIDER)
    config = load_config(write(tmp_path, "tunnel:\n  wg-quick: wg0.conf\n", "dnsguard.yaml"))
    assert len(config.warnings) == 4 and all(w.file == str(tmp_path / "wg0.conf") for w in config.warnings)
    assert config.tunnel is not None and config.tunnel.peers[0].allowed_ips == ["0.0.0.0/0", "::/0"]


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "fragment"),
    [
        (
            f"PrivateKey = {PRIVATE}",
            "PrivateKey = REPLACE-WITH-THE-OUTPUT-OF-dnsguard-keygen",
            3,
            "PrivateKey",
            "44",
        ),
        (f"PublicKey = {PEER}", "PublicKey = nope", 14, "PublicKey", "44"),
        ("AllowedIPs = ::/0", "AllowedIPs = ::/129", 16, "AllowedIPs", "not an address or prefix"),
        ("Address = fd00::2/128", "Address = fd00::2/129", 5, "Address", "bad value"),
        ("DNS = 198.51.100.53", "DNS = not a name!", 6, "DNS", "not a domain name"),
        ("Endpoint = 203.0.113.10:51820", "Endpoint = 203.0.113.10:99999", 17, "Endpoint", "bad port"),
        ("Table = off", "MTU = 70000", 10, "MTU", "must be 576..8920"),
        ("Table = off", "ListenPort = 70000", 10, "ListenPort", "must be 0..65535"),
        ("Table = off", "FwMark = 0x100000000", 10, "FwMark", "must be 1..4294967294"),
        (
            "Endpoint = 203.0.113.10:51820",
            "PersistentKeepalive = 70000",
            17,
            "PersistentKeepalive",
            "0..65535",
        ),
    ],
)
def test_bad_values_name_their_line(old: str, new: str, line: int, key: str, fragment: str) -> None:
    assert old in PROVIDER
    with pytest.raises(ConfigError) as info:
        parse_wg_quick(PROVIDER.replace(old, new), "wg0.conf")
    error = info.value
    assert (error.file, error.line, error.key) == ("wg0.conf", line, key)
    assert fragment in error.message


def test_every_bad_line_is_reported() -> None:
    text = PROVIDER.replace("AllowedIPs = ::/0", "AllowedIPs = ::/129").replace("Table = off", "MTU = 1")
    with pytest.raises(ConfigErrors) as info:
        parse_wg_quick(text, "wg0.conf")
    assert [(e.line, e.key) for e in info.value.errors] == [(10, "MTU"), (16, "AllowedIPs")]


def test_fwmark_in_hex_as_wg_accepts_it() -> None:
    tunnel, _ = parse_wg_quick(PROVIDER.replace("Table = off", "FwMark = 0xca6c"), "wg0.conf")
    assert tunnel.fwmark == 0xCA6C


def test_ipv6_tunnel_with_a_small_mtu_is_refused_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, PROVIDER.replace("Table = off", "MTU = 1200"))
    with pytest.raises(ConfigError, match="RFC 8200") as info:
        load_config(path)
    assert (info.value.file, info.value.line, info.value.key) == (str(path), 10, "MTU")


def test_the_same_peer_twice_is_refused_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, PROVIDER + f"\n[Peer]\nPublicKey = {PEER}\nAllowedIPs = 100.64.0.9/32\n")
    with pytest.raises(ConfigError, match="same public key as peers") as info:
        load_config(path)
    assert (info.value.line, info.value.key) == (20, "PublicKey")


def test_a_missing_wg_quick_file_is_named_at_the_yaml_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, "upstreams: {servers: [198.51.100.53]}\ntunnel:\n  wg-quick: absent.conf\n", "d.yaml"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.file, info.value.line, info.value.key) == (str(path), 3, "tunnel.wg-quick")
    assert "absent.conf: file not found" in info.value.message


def test_errors_inside_the_wg_quick_file_name_its_lines(tmp_path: Path) -> None:
    write(tmp_path, PROVIDER.replace("AllowedIPs = ::/0", "AllowedIPs = ::/129"))
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "tunnel:\n  wg-quick: wg0.conf\n", "d.yaml"))
    assert (info.value.file, info.value.line) == (str(tmp_path / "wg0.conf"), 16)
