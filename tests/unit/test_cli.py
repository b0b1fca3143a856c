"""The command line: every subcommand is registered, unbuilt ones refuse clearly."""

from __future__ import annotations

import pytest

from dnsguard import __version__, cli
from dnsguard.lab import netns

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
    assert capsys.readouterr().out.strip() == f"dnsguard {__version__}"


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
