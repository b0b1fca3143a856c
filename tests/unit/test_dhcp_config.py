"""The dhcp: section and the dnsmasq file made from it: what it says, and what it refuses to write."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.cli import main
from dnsguard.config import load_config
from dnsguard.config.dnsmasq import dnsmasq_config, option_line
from dnsguard.config.lan import DhcpConfig, DhcpHostConfig, DhcpIpv6Config
from dnsguard.errors import ConfigError

CONFIG = Path(__file__).resolve().parents[2] / "config" / "home-gateway.yaml"
BASE = {"interface": "lan0", "range-start": "192.0.2.100", "range-end": "192.0.2.199", "dns": ["192.0.2.1"]}


def write(tmp_path: Path, dhcp: dict[str, Any]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"dhcp": dhcp}))
    return path


def load_error(tmp_path: Path, dhcp: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, dhcp))
    return str(caught.value)


def test_the_shipped_gateway_config_generates_dhcp_dns_router_static_leases_and_ra(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["dhcp-config", "-c", str(CONFIG)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if not line.startswith("#")] == [
        "port=0",
        "interface=lan0",
        "bind-interfaces",
        "dhcp-authoritative",
        "dhcp-leasefile=/var/lib/dnsguard-dhcp/dhcp.leases",
        "dhcp-range=interface:lan0,192.0.2.100,192.0.2.199,43200",
        "dhcp-option=option:router,192.0.2.1",
        "dhcp-option=option:dns-server,192.0.2.1",
        "domain=home.arpa",
        "dhcp-host=02:00:5e:10:00:05,192.0.2.5,printer",
        "enable-ra",
        "dhcp-range=::,constructor:lan0,ra-stateless,64,43200",
        "dhcp-option=option6:dns-server,[2001:db8:100::1]",
    ]


def test_dnsmasq_accepts_the_generated_file(tmp_path: Path) -> None:
    dnsmasq = shutil.which("dnsmasq") or shutil.which("/usr/sbin/dnsmasq")
    if dnsmasq is None:
        pytest.skip("dnsmasq is not installed (deploy/install.sh --test installs it)")
    path = tmp_path / "dnsmasq.conf"
    path.write_text(dnsmasq_config(load_config(CONFIG).dhcp))  # type: ignore[arg-type]
    checked = subprocess.run([dnsmasq, "--test", "-C", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_without_a_dhcp_section_dhcp_config_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("cache: {}\n")
    assert main(["dhcp-config", "-c", str(path)]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("there is no dhcp: section to generate a dnsmasq configuration from")
    )


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"interface": "lan0\ndhcp-script=/tmp/x"}, "dhcp.interface"),
        ({"interface": "lan0,eth1"}, "dhcp.interface"),
        ({"interface": "lan0\n"}, "dhcp.interface"),
        ({"hosts": [{"mac": "02:00:5e:10:00:05", "name": "printer\n"}]}, "dhcp.hosts[0].name"),
        ({"range-start": "192.0.2.300"}, "dhcp.range-start"),
        ({"range-start": "192.0.2.200"}, "dhcp.range-start"),
        ({"dns": ["2001:db8::1"]}, "dhcp.dns[0]"),
        ({"dns": []}, "dhcp.dns"),
        ({"router": "192.0.2.1,192.0.2.2"}, "dhcp.router"),
        ({"domain": "home.arpa\nport=53"}, "dhcp.domain"),
        ({"lease-file": "/var/lib/x\nconf-file=/tmp/evil"}, "dhcp.lease-file"),
        ({"lease-file": "/var/lib/a,b"}, "dhcp.lease-file"),
        ({"lease-time": "1m"}, "dhcp.lease-time"),
        ({"hosts": [{"mac": "02:00:5e:10:00:05", "name": "printer,192.0.2.9"}]}, "dhcp.hosts[0].name"),
        ({"hosts": [{"mac": "02:00:5e:10:00:05", "name": "a\nb"}]}, "dhcp.hosts[0].name"),
        ({"hosts": [{"mac": "02:00:5e:10:00:05,ignore"}]}, "dhcp.hosts[0].mac"),
        ({"hosts": [{"mac": "02:00:5e:10:00:05"}]}, "dhcp.hosts[0].address"),
        (
            {"hosts": [{"mac": "02:00:5e:10:00:05", "name": "a"}, {"mac": "02-00-5E-10-00-05", "name": "b"}]},
            "dhcp.hosts[1].mac",
        ),
        ({"ipv6": {"dns": ["192.0.2.1"]}}, "dhcp.ipv6.dns[0]"),
        ({"ipv6": {"mode": "stateful", "dns": ["2001:db8::1"]}}, "dhcp.ipv6.mode"),
        ({"ipv6": {}}, "dhcp.ipv6.dns"),
    ],
)
def test_values_that_would_inject_lines_or_fields_are_refused_with_their_key(
    tmp_path: Path, change: dict[str, Any], key: str
) -> None:
    message = load_error(tmp_path, {**BASE, **change})
    assert f": {key}:" in message and "\n" not in message


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=30) | st.sampled_from(["printer", "a,b", "a\nb", "x\u2028y", "a b"]))
def test_the_generator_itself_never_writes_a_value_with_a_line_break_or_comma(text: str) -> None:
    dhcp = DhcpConfig("lan0", "192.0.2.100", "192.0.2.199", ["192.0.2.1"])
    # Values set without validation (as a caller could): the generator refuses, never writes them.
    dhcp.hosts = [DhcpHostConfig("02:00:5e:10:00:05", None, text)]
    dhcp.ipv6 = DhcpIpv6Config(dns=["2001:db8::1"])
    safe = bool(text) and all("!" <= c <= "~" and c not in ",#" for c in text)
    try:
        output = dnsmasq_config(dhcp)
    except ConfigError:
        assert not safe
        return
    assert safe
    lines = output.split("\n")
    assert len(lines) == 14 and lines[9] == f"dhcp-host=02:00:5e:10:00:05,{text}"


def test_option_line_refuses_empty_values_and_comments() -> None:
    with pytest.raises(ConfigError):
        option_line("domain", "")
    with pytest.raises(ConfigError):
        option_line("domain", "home.arpa # x")
    assert option_line("enable-ra") == "enable-ra"


# -- the unit that runs it ---------------------------------------------------------------------

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "dnsguard-dhcp.service"


def unit_values(key: str) -> list[str]:
    """The values of 'Section.Key' in the unit, in order."""
    wanted_section, wanted_key = key.split(".")
    section = ""
    found = []
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        name, _, value = line.partition("=")
        if line.startswith("["):
            section = line.strip("[]")
        elif not line.startswith("#") and section == wanted_section and name == wanted_key:
            found.append(value)
    return found


def test_the_unit_generates_the_file_dnsmasq_reads_and_keeps_leases_where_dnsguard_looks() -> None:
    from dnsguard.cli import build_parser
    from dnsguard.config.lan import DEFAULT_LEASE_FILE

    [pre] = unit_values("Service.ExecStartPre")
    [start] = unit_values("Service.ExecStart")
    generate = build_parser().parse_args(pre.split()[1:])
    assert generate.command == "dhcp-config" and generate.config == "/etc/dnsguard/resolver.yaml"
    [runtime] = unit_values("Service.RuntimeDirectory")
    assert generate.output == f"/run/{runtime}/dnsmasq.conf"
    assert f"--conf-file={generate.output}" in start.split() and "--keep-in-foreground" in start.split()
    [state] = unit_values("Service.StateDirectory")
    assert Path(DEFAULT_LEASE_FILE).parent == Path("/var/lib") / state


def test_dhcp_config_output_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "dnsmasq.conf"
    assert main(["dhcp-config", "-c", str(CONFIG), "-o", str(target)]) == 0
    assert target.read_text() == dnsmasq_config(load_config(CONFIG).dhcp, str(CONFIG))  # type: ignore[arg-type]


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    control = tmp_path / "control.service"
    control.write_text("[Unit]\nDescription=control\n[Service]\nType=exec\nExecStart=/bin/true\n")
    probe = subprocess.run([analyze, "verify", str(control)], capture_output=True, text=True, cwd=tmp_path)
    if probe.returncode != 0 or probe.stderr.strip():
        pytest.skip(f"systemd-analyze verify does not work here: {(probe.stderr or probe.stdout).strip()}")
    # verify checks that the programs exist: stand-ins where this machine has no dnsguard link.
    text = UNIT.read_text()
    for program in ("/usr/local/bin/dnsguard", "/usr/sbin/dnsmasq"):
        if not Path(program).exists():
            text = text.replace(program, "/bin/true")
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output
