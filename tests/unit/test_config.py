"""Configuration loading: typed values, defaults, and errors that name file:line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnsguard.config import Duration, load_config, parse_duration
from dnsguard.config.addresses import parse_hostport
from dnsguard.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "dnsguard.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_example_loads() -> None:
    config = load_config(ROOT / "config" / "home-gateway.yaml")
    kids = config.groups["kids"]
    assert kids.clients == ["192.0.2.32/27", "02:00:5e:10:00:01"]
    assert kids.safe_search is True
    assert kids.schedules[0].window == (8 * 60, 17 * 60)
    assert config.blocking.ttl == 10.0
    assert config.upstreams.strategy == "parallel_best"
    assert config.groups["printer"].filtering is False
    assert config.base_dir == str((ROOT / "config").resolve())


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_example_is_valid(path: Path) -> None:
    config = load_config(path)
    assert config.lists, "an example without lists filters nothing"
    if config.tunnel is not None:
        assert config.tunnel.peers and all(peer.public_key for peer in config.tunnel.peers)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.blocking.mode == "null_ip"
    assert config.cache.max_entries == 10_000
    assert config.tunnel is None


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ("blocking:\n  mode: nope\n", 2, "blocking.mode", "not one of"),
        ("cache:\n  max-entries: 10\n  colour: red\n", 3, "cache.colour", "unknown key"),
        (
            "lists:\n  ads:\n    sources: [a.txt]\ngroups:\n  default:\n    block: [ads, missing]\n",
            6,
            "groups.default.block[1]",
            "no list named 'missing'",
        ),
        ("groups:\n  kids:\n    clients: [192.0.2.300]\n", 3, "groups.kids.clients[0]", "not an IP"),
        ("upstreams:\n  timeout: soon\n", 2, "upstreams.timeout", "not a duration"),
        ("lists:\n  ads:\n    sources: []\n", 3, "lists.ads.sources", "at least one source"),
        (
            "groups:\n  a:\n    schedules:\n      - block: [x]\n"
            "        start: '25:00'\n        end: '10:00'\n",
            5,
            "groups.a.schedules[0].start",
            "time of day",
        ),
        ("cache: [1, 2]\n", 1, "cache", "expected a mapping"),
        ("blocking:\n  ttl: true\n", 2, "blocking.ttl", "duration"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert (error.file, error.line, error.key) == (str(path), line, key)
    assert fragment in str(error)
    assert str(error).startswith(f"{path}:{line}: {key}: ")


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path = write(tmp_path, "cache:\n  max-entries: 1\n bad: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 3 and "YAML syntax error" in str(info.value)


def test_client_in_two_groups_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "groups:\n  a:\n    clients: [192.0.2.1]\n  b:\n    clients: [192.0.2.1/32]\n")
    with pytest.raises(ConfigError, match="already in group 'a'"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), (15, 15), ("1.5s", 1.5)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == Duration(seconds)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.1", ("198.51.100.1", 53)),
        ("198.51.100.1:5353", ("198.51.100.1", 5353)),
        ("[2001:db8::1]:53", ("2001:db8::1", 53)),
        ("2001:db8::1", ("2001:db8::1", 53)),
    ],
)
def test_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, 53) == expected


WG_QUICK = """\
[Interface]
PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
Address = 100.64.0.2/32, fd00::2/128
DNS = 100.64.0.1
MTU = 1420
PostUp = echo never run

[Peer]
PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
PresharedKey = FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=
Endpoint = 198.18.2.2:51820
AllowedIPs = 0.0.0.0/0, ::/0
PersistentKeepalive = 25
"""


def test_wg_quick_file_is_accepted_as_is(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, WG_QUICK, "wg0.conf"))
    tunnel = config.tunnel
    assert tunnel is not None
    assert tunnel.address == ["100.64.0.2/32", "fd00::2/128"]
    assert tunnel.mtu == 1420 and tunnel.dns == ["100.64.0.1"]
    (peer,) = tunnel.peers
    assert peer.endpoint == "198.18.2.2:51820"
    assert peer.allowed_ips == ["0.0.0.0/0", "::/0"]
    assert peer.persistent_keepalive == 25


def test_yaml_can_point_at_a_wg_quick_file(tmp_path: Path) -> None:
    write(tmp_path, WG_QUICK, "wg0.conf")
    config = load_config(write(tmp_path, "tunnel:\n  wg-quick: wg0.conf\n  mtu: 1380\n"))
    assert config.tunnel is not None
    assert config.tunnel.mtu == 1380
    assert len(config.tunnel.peers) == 1


@pytest.mark.parametrize(
    ("broken", "line", "key"),
    [
        (WG_QUICK.replace("MTU = 1420", "MTU = big"), 5, "MTU"),
        (WG_QUICK.replace("AllowedIPs = 0.0.0.0/0", "AllowedIPs = 0.0.0.0/33"), 12, "AllowedIPs"),
        (WG_QUICK.replace("Endpoint", "Endpoit"), 11, "Endpoit"),
        (WG_QUICK.replace("[Peer]", "[Pear]"), 8, None),
    ],
)
def test_wg_quick_errors_have_lines(tmp_path: Path, broken: str, line: int, key: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, broken, "wg0.conf"))
    assert info.value.line == line and info.value.key == key


def test_the_tests_compile_lists_into_their_own_cache_not_the_systems() -> None:
    from dnsguard.config.model import DEFAULT_CACHE_DIR, ListsLoadingConfig

    cache_dir = ListsLoadingConfig().cache_dir
    assert cache_dir != DEFAULT_CACHE_DIR and Path(cache_dir).is_dir()
