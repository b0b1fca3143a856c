"""`dnsguard dhcp-config` and `dnsguard clients`: the LAN side of a gateway, from the command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dnsguard.config import Config, load_config
from dnsguard.config.dnsmasq import dnsmasq_config
from dnsguard.errors import ConfigError
from dnsguard.net.files import atomic_write
from dnsguard.policy.client_names import ClientName, ClientNames, canonical_address
from dnsguard.policy.leases import parse_leases


def run_dhcp_config(config_path: str, output: str | None = None) -> int:
    """Print (or write to `output`) the dnsmasq configuration of the file's `dhcp:` section."""
    config = load_config(config_path)
    if config.dhcp is None:
        raise ConfigError(
            "there is no dhcp: section to generate a dnsmasq configuration from", file=config_path
        )
    text = dnsmasq_config(config.dhcp, config_path)
    if output is None:
        print(text, end="")
    else:
        # Whole or not at all: a dnsmasq (re)started meanwhile must not read half a file.
        atomic_write(Path(output), [text.encode()])
    return 0


def offline_name(config: Config, address: str) -> ClientName:
    """A client's name without a daemon: the configuration, then the lease files as they are now.

    `dnsguard explain` uses it; the neighbour table and reverse lookups are the running daemon's.
    """
    from dnsguard.app.client_names import lease_files

    canonical = canonical_address(address)
    if canonical is None:
        return ClientName()
    names = ClientNames({name: client.addresses for name, client in config.clients.items()})
    paths = lease_files(config)
    for path in paths:
        try:
            with open(path, "rb") as handle:
                parse = parse_leases(handle.read(), time.time())
        except OSError:
            continue
        names.set_leases(path, parse.leases, order=paths)
    return names.lookup(canonical)


def client_lines(answer: dict[str, Any]) -> list[str]:
    """`dnsguard clients` for a person: one line per client of GET /api/clients."""
    lines = []
    for client in answer["clients"]:
        name = client["name"] or "-"
        source = f"({client['source']})" if client["source"] else ""
        lines.append(
            f"{client['address']:<39} {name:<24} {source:<9} {client['mac'] or '-':<17} {client['group']}"
        )
    for state in answer.get("lease_files", []):
        problem = f", {state['error']}" if state["error"] else ""
        lines.append(
            f"lease file {state['path']}: {state['leases']} leases, {state['errors']} unreadable{problem}"
        )
    return lines


def client_status_lines(status: dict[str, Any]) -> list[str]:
    """The clients line of `dnsguard status` (none for a daemon without DNS filtering)."""
    clients = status.get("clients")
    if clients is None:
        return []
    named = clients["named"]
    return [
        f"clients:    {clients['known']} known; named by config {named['config']}, by lease "
        f"{named['lease']}, by PTR {named['ptr']} (dnsguard clients lists them)"
    ]


def run_clients(config_path: str) -> int:
    from dnsguard.app.remote import api_request

    for line in client_lines(api_request(config_path, "GET", "/api/clients")):
        print(line)
    return 0
