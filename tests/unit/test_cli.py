"""The command line: every subcommand is registered, unbuilt ones refuse clearly, check judges as start."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnsguard import __version__, cli
from dnsguard.lab import netns
from dnsguard.wireguard.keys import generate_private_key, public_key

SUBCOMMANDS = [
    "up",
    "down",
    "server",
    "resolve",
    "check",
    "explain",
    "keygen",
    "pubkey",
    "lists",
    "status",
    "demo",
]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"dnsguard {__version__} (commit ")


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_no_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: dnsguard" in capsys.readouterr().out


def test_demo_without_net_admin_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("dnsguard.demo.have_net_admin", lambda: False)
    assert cli.main(["demo"]) == 2
    assert "CAP_NET_ADMIN" in capsys.readouterr().err


def test_lab_refuses_without_net_admin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "have_net_admin", lambda: False)
    with pytest.raises(netns.LabError, match="CAP_NET_ADMIN"):
        netns.Lab().start()


# -- dnsguard check ----------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = generate_private_key()
PEER = public_key(generate_private_key())
GOOD = (
    "upstreams:\n  servers: [198.51.100.53]\n"
    "lists:\n  ads:\n    sources: [ads.txt]\n"
    "groups:\n  default:\n    block: [ads]\n"
    f"tunnel:\n  private-key: {PRIVATE}\n  address: [100.64.0.2/32]\n  listen-port: 51820\n"
    f"  fwmark: 51820\n  peers:\n    - public-key: {PEER}\n      allowed-ips: [0.0.0.0/0]\n"
    "blocking:\n  ttl: 10s\n"
)
BILLION_LAUGHS = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{name}: &{name} [" + ",".join([f"*{chr(ord(name) - 1)}"] * 9) + "]\n" for name in "bcdefghi"
)


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str, Path]:
    (tmp_path / "ads.txt").write_text("ads.example\n")
    path = tmp_path / "dnsguard.yaml"
    path.write_text(text)
    code = cli.main(["check", "-c", str(path)])
    out, err = capsys.readouterr()
    return code, out, err, path


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_check_accepts_every_shipped_example(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "configuration is valid" in out and err == ""


def test_check_accepts_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err, _ = check(tmp_path, GOOD, capsys)
    assert (code, err) == (0, "")
    assert "upstreams: 198.51.100.53" in out and "list ads:" in out and "1 rules" in out


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("[198.51.100.53]", "[quic://dns.example]", "upstreams.servers[0]"),
        ("[198.51.100.53]", "[not-an-address]", "upstreams.servers[0]"),
        ("[198.51.100.53]", "[':99999']", "upstreams.servers[0]"),
        (PRIVATE, "REPLACE-with-the-output-of-dnsguard-keygen", "tunnel.private-key"),
        (PEER, "not-a-key", "tunnel.peers[0].public-key"),
        ("listen-port: 51820", "listen-port: 70000", "tunnel.listen-port"),
        ("fwmark: 51820", "fwmark: -1", "tunnel.fwmark"),
        ("ttl: 10s", "ttl: .nan", "blocking.ttl"),
        ("ttl: 10s", "ttl: .inf", "blocking.ttl"),
        ("ttl: 10s", "ttl: 9999999999", "blocking.ttl"),
        ("[ads.txt]", "[missing.txt]", "lists.ads.sources[0]"),
        ("[ads.txt]", "[.]", "lists.ads.sources[0]"),
        ("ttl: 10s", "ttl: !!int abc", "blocking.ttl"),
        ("ttl: 10s", "ttl: !!python/name:os.system", "blocking.ttl"),
        ("ttl: 10s", "ttl: !!timestamp 2020-13-45", "blocking.ttl"),
        ("ttl: 10s", "ttl: " + "[" * 3000 + "]" * 3000, None),
        ("ttl: 10s", "ttl: 10s\ngroups:\n  kids: {}", "groups"),
        ("    sources: [ads.txt]\n", "    sources: [ads.txt]\n  ads:\n    sources: [ads.txt]\n", "lists.ads"),
    ],
)
def test_check_refuses_what_the_daemon_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, key: str | None
) -> None:
    assert old in GOOD
    code, out, err, path = check(tmp_path, GOOD.replace(old, new, 1), capsys)
    assert code == cli.EXIT_USAGE and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"dnsguard: {path}:") and "Traceback" not in err
    if key is not None:
        assert f": {key}: " in line


def test_check_refuses_the_billion_laughs_quickly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err, path = check(tmp_path, BILLION_LAUGHS + GOOD, capsys)
    assert code == cli.EXIT_USAGE
    assert err.startswith(f"dnsguard: {path}:6: ") and "aliases expanded" in err


def test_check_prints_one_line_per_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD.replace("listen-port: 51820", "listen-port: 70000").replace("ttl: 10s", "ttl: .nan")
    code, _, err, path = check(tmp_path, text, capsys)
    assert code == cli.EXIT_USAGE
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"dnsguard: {path}:") for line in lines)
    assert ": tunnel.listen-port: " in lines[0] and ": blocking.ttl: " in lines[1]


def test_check_of_a_wg_quick_file_warns_and_shows_dns_upstreams(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(
        f"[Interface]\nPrivateKey = {PRIVATE}\nAddress = 100.64.0.2/32\nDNS = 198.51.100.53\n"
        "PostUp = echo never run\nTable = off\n\n"
        f"[Peer]\nPublicKey = {PEER}\nAllowedIPs = 0.0.0.0/0\nAllowedIPs = ::/0\n"
    )
    assert cli.main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"warning: {path}:5: PostUp: not run" in out
    assert f"warning: {path}:6: Table: ignored" in out
    assert "upstreams: 198.51.100.53 (from the tunnel's DNS)" in out


@pytest.mark.parametrize("text", ["", "resolver:\n  listen: ['127.0.0.1:53']\n"])
def test_check_refuses_a_file_no_daemon_starts_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    code, out, err, path = check(tmp_path, text, capsys)
    assert (code, out) == (cli.EXIT_USAGE, "")
    assert err.startswith(f"dnsguard: {path}: upstreams.servers: neither a tunnel nor upstream servers")
