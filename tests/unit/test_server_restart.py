"""A restarted server brings its clients back at once: it initiates towards the endpoints it
remembered (daemon/endpoints.py), within the protocol's spacing of initiations. Fake clock."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from dnsguard.app.endpoints import EndpointMemory
from dnsguard.wireguard.constants import REKEY_TIMEOUT
from tests.unit.test_wireguard_device import B_ADDRESS, Host, Lab, completed, connected


def restart(lab: Lab, server: Host, client: Host) -> Host:
    """The server process starts again: same key and peers, no sessions, no endpoint known."""
    restarted = lab.host("server", B_ADDRESS, server.tunnel_ip, private_key=server.private_key)
    restarted.device.add_peer(client.public_key, allowed_ips=["100.64.0.1/32", "fd00::1/128"])
    return restarted


def test_without_a_memory_the_clients_data_goes_unanswered() -> None:
    """The problem: nothing the client sends under its old session reaches a restarted server."""
    lab = Lab()
    client, server = connected(lab)
    restarted = restart(lab, server, client)
    for _ in range(10):
        lab.send(client, "100.64.0.2", b"into the void")
        lab.advance(1.0)
    assert restarted.received == []
    assert not completed(client)[1:]


def test_a_restarted_server_initiates_to_the_remembered_endpoint_and_traffic_flows_at_once(
    tmp_path: Path,
) -> None:
    lab = Lab()
    client, server = connected(lab)
    EndpointMemory(tmp_path / "endpoints.json").save(server.device)
    lab.advance(30.0)
    restarted = restart(lab, server, client)
    lab.send(client, "100.64.0.2", b"lost")
    back_at = lab.now

    assert EndpointMemory(tmp_path / "endpoints.json").reconnect(restarted.device, lab.now) == 1
    lab.deliver()
    packet = lab.send(client, "100.64.0.2", b"after the restart")

    assert [event.is_initiator for event in completed(client)][-1] is False  # the server initiated
    assert restarted.received == [packet]
    assert lab.now - back_at <= 2.0


def test_the_restarted_server_keeps_the_spacing_between_initiations(tmp_path: Path) -> None:
    lab = Lab()
    client, server = connected(lab)
    EndpointMemory(tmp_path / "endpoints.json").save(server.device)
    restarted = restart(lab, server, client)
    lab.blocked.add(client.address)  # the client is gone too: nobody answers
    started = lab.now
    EndpointMemory(tmp_path / "endpoints.json").reconnect(restarted.device, lab.now)
    lab.deliver()
    lab.advance(30.0)
    times = [datagram.time for datagram in lab.initiations_by(restarted, since=started)]
    assert len(times) >= 5
    assert all(later - earlier >= REKEY_TIMEOUT for earlier, later in itertools.pairwise(times))


def test_a_peer_with_a_configured_endpoint_and_a_bad_file_are_left_alone(tmp_path: Path) -> None:
    lab = Lab()
    client, server = connected(lab)
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps({client.public_key: ["198.18.0.9", "not a port"], "junk": 5}))
    assert EndpointMemory(path).reconnect(server.device, lab.now) == 0
    path.write_text("{not json")
    assert EndpointMemory(path).load() == {}
    path.write_text(
        json.dumps({"not a key": ["198.18.0.9", 51820], f" {client.public_key}": ["198.18.0.9", 1]})
    )
    assert EndpointMemory(path).load() == {client.public_key: ("198.18.0.9", 1)}  # keys read canonical
    # The client's own peer has a configured endpoint: its configuration decides, not the memory.
    path.write_text(json.dumps({server.public_key: ["198.18.0.9", 51820]}))
    assert EndpointMemory(path).reconnect(client.device, lab.now) == 0


def test_endpoints_are_written_only_when_one_changed(tmp_path: Path) -> None:
    lab = Lab()
    client, server = connected(lab)
    memory = EndpointMemory(tmp_path / "endpoints.json")
    memory.save(server.device)
    assert json.loads(memory.path.read_text()) == {client.public_key: list(client.address)}
    memory.path.write_text("{}")
    memory.save(server.device)
    assert memory.path.read_text() == "{}"
