"""The dashboard's API: pages, browser request checks, managed rules, pauses per group; no root."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from dnsguard.app.api import Operations
from dnsguard.app.dashboard import CONTENT_SECURITY_POLICY
from dnsguard.app.resolve import ResolveDaemon
from dnsguard.config import load_config
from dnsguard.dns.resolver import Forward
from dnsguard.errors import ConfigError
from tests.unit.test_ops import TOKEN, query, running_daemon, started_service, write_config

Client = TestClient[Any, Any]
KID = "192.0.2.10"
ADULT = "192.0.2.99"


def managed_config(directory: Path, **extra: Any) -> Path:
    return write_config(directory, **{"managed-lists": {"directory": str(directory / "state")}, **extra})


@pytest.fixture
async def dashboard(tmp_path: Path) -> AsyncIterator[tuple[Client, ResolveDaemon]]:
    path = managed_config(tmp_path)
    service = await started_service(path)
    daemon = ResolveDaemon(str(path), service)
    app = Operations(daemon)._app(api=True, metrics=False)
    async with TestClient(TestServer(app)) as client:
        yield client, daemon
    await service.close()


def blocked(daemon: ResolveDaemon, name: str, client: str = ADULT) -> bool:
    resolver = daemon.service.resolver
    assert resolver is not None
    return not isinstance(resolver.answer_now(query(name), client), Forward)


async def rule(client: Client, action: object, name: object) -> tuple[int, dict[str, Any]]:
    response = await client.post("/api/rules", json={"action": action, "name": name})
    return response.status, await response.json()


# -- pages -------------------------------------------------------------------------------------


async def test_the_pages_are_served_without_a_token_under_a_strict_policy(tmp_path: Path) -> None:
    path = managed_config(tmp_path, api={"listen": "127.0.0.1:0", "token": TOKEN})
    async with running_daemon(path) as (_, operations):
        host, port = operations.bound["api"]
        from aiohttp import ClientSession

        async with ClientSession() as session:
            async with session.get(f"http://{host}:{port}/") as page:
                assert page.status == 200 and page.content_type == "text/html"
                text = await page.text()
                assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                assert "<script>" not in text and "onclick" not in text and "style=" not in text
            async with session.get(f"http://{host}:{port}/ui/dashboard.js") as script:
                assert script.status == 200 and script.content_type == "text/javascript"
                assert "innerHTML" not in await script.text()
            for missing in ("/ui/nothing.js", "/ui/..%2Fapi.py", "/ui/index.html"):
                async with session.get(f"http://{host}:{port}{missing}") as response:
                    assert response.status == 404, missing
            # The data stays behind the token.
            async with session.get(f"http://{host}:{port}/api/rules") as refused:
                assert refused.status == 401
            async with session.post(
                f"http://{host}:{port}/api/rules", json={"action": "allow", "name": "ads.example"}
            ) as refused:
                assert refused.status == 401
            assert not (tmp_path / "state").exists()


# -- browser request checks --------------------------------------------------------------------


async def test_a_state_change_from_another_origin_is_refused(dashboard: tuple[Client, ResolveDaemon]) -> None:
    client, daemon = dashboard
    own = f"http://{client.host}:{client.port}"
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": f"http://{client.host}:1"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        response = await client.post("/api/blocking/pause", json={"minutes": 5}, headers=headers)
        assert response.status == 403, headers
        assert "cross-site" in (await response.json())["error"]
    assert daemon.service.blocking_enabled
    # The page's own requests, and those of programs that send no Origin (curl, the CLI), pass.
    response = await client.post(
        "/api/blocking/pause", json={"minutes": 5}, headers={"Origin": own, "Sec-Fetch-Site": "same-origin"}
    )
    assert response.status == 200 and not daemon.service.blocking_enabled
    assert (await client.post("/api/blocking/resume")).status == 200
    assert daemon.service.blocking_enabled


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain"]
)
async def test_a_body_a_form_could_send_is_refused(
    dashboard: tuple[Client, ResolveDaemon], content_type: str
) -> None:
    client, daemon = dashboard
    body = '{"action": "allow", "name": "ads.example"}'
    response = await client.post("/api/rules", data=body, headers={"Content-Type": content_type})
    assert response.status == 415
    assert "JSON" in (await response.json())["error"]
    assert blocked(daemon, "ads.example")


async def test_without_a_token_a_request_by_name_is_refused_against_dns_rebinding(
    dashboard: tuple[Client, ResolveDaemon],
) -> None:
    client, _ = dashboard
    assert (await client.get("/api/status", headers={"Host": "rebound.example:8053"})).status == 403
    assert (await client.get("/", headers={"Host": "rebound.example"})).status == 403
    assert (await client.get("/healthz", headers={"Host": "probe.example"})).status == 200
    for host in ("localhost:8053", "127.0.0.1:8053", "[::1]:8053", "127.0.0.1"):
        assert (await client.get("/api/status", headers={"Host": host})).status == 200, host


async def test_with_a_token_a_request_by_name_is_answered(tmp_path: Path) -> None:
    path = managed_config(tmp_path, api={"listen": "127.0.0.1:0", "token": TOKEN})
    async with running_daemon(path) as (_, operations):
        host, port = operations.bound["api"]
        from aiohttp import ClientSession

        async with ClientSession() as session:
            headers = {"Host": "gateway.home.arpa:8053", "Authorization": f"Bearer {TOKEN}"}
            async with session.get(f"http://{host}:{port}/api/status", headers=headers) as response:
                assert response.status == 200


# -- managed rules -----------------------------------------------------------------------------


async def test_allowing_a_blocked_name_lets_the_next_lookup_pass_until_removed(
    dashboard: tuple[Client, ResolveDaemon], tmp_path: Path
) -> None:
    client, daemon = dashboard
    assert blocked(daemon, "ads.example") and blocked(daemon, "sub.ads.example", KID)
    status, body = await rule(client, "allow", "Ads.Example.")
    assert status == 200 and body == {"name": "ads.example", "action": "allow", "changed": True}
    assert not blocked(daemon, "ads.example") and not blocked(daemon, "sub.ads.example", KID)
    assert blocked(daemon, "tracker.example")
    assert "@@||ads.example^$important" in (tmp_path / "state" / "managed-allow.txt").read_text()
    assert await (await client.get("/api/rules")).json() == {"allow": ["ads.example"], "block": []}

    assert await rule(client, "allow", "ads.example") == (
        200,
        {"name": "ads.example", "action": "allow", "changed": False},
    )
    status, _ = await rule(client, "remove", "ads.example")
    assert status == 200 and blocked(daemon, "ads.example")
    assert await (await client.get("/api/rules")).json() == {"allow": [], "block": []}
    assert "managed-allow" not in daemon.config.lists  # an emptied file is no source


async def test_blocking_a_name_then_allowing_it_moves_it_between_the_lists(
    dashboard: tuple[Client, ResolveDaemon], tmp_path: Path
) -> None:
    client, daemon = dashboard
    assert not blocked(daemon, "video.example", KID)
    assert (await rule(client, "block", "video.example"))[0] == 200
    assert blocked(daemon, "video.example", KID) and blocked(daemon, "www.video.example")
    explained = await (await client.get("/api/explain", params={"name": "video.example"})).json()
    assert "managed-block" in explained["explanation"]
    assert (await rule(client, "allow", "video.example"))[0] == 200
    assert not blocked(daemon, "video.example")
    assert await (await client.get("/api/rules")).json() == {"allow": ["video.example"], "block": []}
    assert "video.example" not in (tmp_path / "state" / "managed-block.txt").read_text()


async def test_lines_written_by_hand_in_a_managed_list_are_kept(
    dashboard: tuple[Client, ResolveDaemon], tmp_path: Path
) -> None:
    client, daemon = dashboard
    state = tmp_path / "state"
    state.mkdir()
    (state / "managed-block.txt").write_text("# mine\nhand.example\n")
    assert await daemon.reload()
    assert blocked(daemon, "hand.example")
    assert (await rule(client, "block", "other.example"))[0] == 200
    assert (await rule(client, "remove", "other.example"))[0] == 200
    assert (state / "managed-block.txt").read_text() == "# mine\nhand.example\n"
    assert blocked(daemon, "hand.example")


@pytest.mark.parametrize(
    ("action", "name", "message"),
    [
        ("allow", None, 'give "name"'),
        ("allow", "", 'give "name"'),
        ("allow", 42, 'give "name"'),
        ("permit", "ads.example", 'give "action"'),
        (None, "ads.example", 'give "action"'),
        ("allow", "*.ads.example", "invalid character '*'"),
        ("block", "||ads.example^", "invalid character '^'"),
        ("block", "198.51.100.7", "ip address"),
        ("block", "a..example", "empty label"),
        ("block", "ads example", "invalid character ' '"),
        ("block", "https://ads.example/", "invalid character"),
        ("block", "localhost", "single label"),
        ("block", "x" * 64 + ".example", "label longer than 63"),
        ("remove", "a." * 127 + "example", "longer than 253"),
    ],
)
async def test_a_rule_that_is_not_a_canonical_name_is_a_clear_400(
    dashboard: tuple[Client, ResolveDaemon], tmp_path: Path, action: object, name: object, message: str
) -> None:
    client, _ = dashboard
    status, body = await rule(client, action, name)
    assert status == 400 and message in body["error"], body
    assert "\n" not in body["error"]
    assert not (tmp_path / "state").exists()


async def test_a_body_that_is_not_a_json_object_is_a_400(dashboard: tuple[Client, ResolveDaemon]) -> None:
    client, _ = dashboard
    for body in ("[1, 2]", "{not json", '"ads.example"'):
        response = await client.post("/api/rules", data=body, headers={"Content-Type": "application/json"})
        assert response.status == 400, body


async def test_rules_with_managed_lists_turned_off_are_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, **{"managed-lists": {"directory": None}})
    service = await started_service(path)
    app = Operations(ResolveDaemon(str(path), service))._app(api=True, metrics=False)
    async with TestClient(TestServer(app)) as client:
        status, body = await rule(client, "allow", "ads.example")
    await service.close()
    assert status == 409 and "managed-lists.directory" in body["error"]


# -- pausing per group -------------------------------------------------------------------------


async def test_pausing_one_group_unfilters_only_its_clients_and_survives_a_reload(
    dashboard: tuple[Client, ResolveDaemon],
) -> None:
    client, daemon = dashboard
    assert blocked(daemon, "ads.example", KID)  # remembered as a plan for the kid's repeats
    response = await client.post("/api/blocking/pause", json={"minutes": 30, "group": "kids"})
    state = await response.json()
    assert response.status == 200 and state["enabled"] is True
    assert state["groups"]["kids"]["enabled"] is False and state["groups"]["kids"]["paused_until"] > 0
    assert state["groups"]["default"] == {"enabled": True, "paused_until": None, "indefinitely": False}
    assert not blocked(daemon, "ads.example", KID) and blocked(daemon, "ads.example", ADULT)
    assert await daemon.reload()
    assert not blocked(daemon, "ads.example", KID) and blocked(daemon, "ads.example", ADULT)

    response = await client.post("/api/blocking/resume", json={"group": "kids"})
    assert (await response.json())["groups"]["kids"]["enabled"] is True
    assert blocked(daemon, "ads.example", KID)


async def test_a_pause_without_minutes_lasts_until_resumed(dashboard: tuple[Client, ResolveDaemon]) -> None:
    client, daemon = dashboard
    state = await (await client.post("/api/blocking/pause", json={"minutes": None})).json()
    assert state["enabled"] is False and state["paused_until"] is None and state["indefinitely"] is True
    status = await (await client.get("/api/status")).json()
    assert status["dns"]["blocking"] == {"enabled": False, "paused_until": None}
    await client.post("/api/blocking/pause", json={"minutes": None, "group": "kids"})
    assert not blocked(daemon, "ads.example", ADULT)
    state = await (await client.post("/api/blocking/resume")).json()  # every pause ends
    assert state["enabled"] is True and all(group["enabled"] for group in state["groups"].values())
    assert blocked(daemon, "ads.example", KID)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"minutes": 0}, "minutes must be in"),
        ({"minutes": -5}, "minutes must be in"),
        ({"minutes": 7 * 24 * 60 + 1}, "minutes must be in"),
        ({"minutes": "soon"}, "minutes must be a number"),
        ({"minutes": [5]}, "minutes must be a number"),
        ({"minutes": 5, "group": "nobody"}, "no group named 'nobody' (groups: default, kids)"),
        ({"minutes": 5, "group": 7}, "no group named '7'"),
    ],
)
async def test_a_bad_pause_is_a_400_and_changes_nothing(
    dashboard: tuple[Client, ResolveDaemon], body: dict[str, Any], message: str
) -> None:
    client, _ = dashboard
    response = await client.post("/api/blocking/pause", json=body)
    assert response.status == 400 and message in (await response.json())["error"]
    state = await (await client.get("/api/blocking")).json()
    assert state["enabled"] and all(group["enabled"] for group in state["groups"].values())


# -- configuration -----------------------------------------------------------------------------


def test_a_managed_list_is_selected_by_every_group_only_while_its_file_holds_a_rule(tmp_path: Path) -> None:
    path = managed_config(tmp_path, groups={"kids": {"clients": [KID], "block": ["ads"]}})
    assert "managed-block" not in load_config(path).lists
    state = tmp_path / "state"
    state.mkdir()
    (state / "managed-block.txt").write_text("# only a comment\n\n")
    assert "managed-block" not in load_config(path).lists
    (state / "managed-block.txt").write_text("# header\n||video.example^$important\n")
    config = load_config(path)
    assert config.lists["managed-block"].sources == [str(state / "managed-block.txt")]
    assert config.groups["kids"].block == ["ads", "managed-block"]
    assert config.groups["default"].block == ["managed-block"]  # the clients of no group


def test_a_list_named_like_a_managed_one_is_an_error_at_its_line(tmp_path: Path) -> None:
    path = managed_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["lists"]["managed-allow"] = {"sources": ["ads.txt"]}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"dnsguard\.yaml:\d+: lists\.managed-allow: .*rename this list"):
        load_config(path)


def test_an_empty_managed_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"managed-lists\.directory: give a directory, or null"):
        load_config(write_config(tmp_path, **{"managed-lists": {"directory": " "}}))


# -- CLI -----------------------------------------------------------------------------------------


async def test_cli_allow_block_and_reload_find_the_daemon_through_dnsguard_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dnsguard.cli import main

    path = managed_config(tmp_path, api={"listen": "127.0.0.1:0", "token": TOKEN})
    async with running_daemon(path) as (service, operations):
        host, port = operations.bound["api"]
        monkeypatch.setenv(
            "DNSGUARD_CONFIG", str(managed_config(tmp_path, api={"listen": f"{host}:{port}", "token": TOKEN}))
        )
        daemon = ResolveDaemon(str(path), service)
        assert await asyncio.to_thread(main, ["allow", "ads.example"]) == 0
        assert capsys.readouterr().out == "ads.example allowed for every group\n"
        assert not blocked(daemon, "ads.example")
        assert await asyncio.to_thread(main, ["block", "video.example"]) == 0
        assert blocked(daemon, "video.example")
        assert await asyncio.to_thread(main, ["block", "video.example"]) == 0
        assert capsys.readouterr().out.endswith("video.example was already blocked\n")
        assert await asyncio.to_thread(main, ["block", "*.video.example"]) == 1
        assert "400 '*.video.example' is not a domain name" in capsys.readouterr().err
        assert await asyncio.to_thread(main, ["reload"]) == 0
        assert capsys.readouterr().out == "configuration and lists reloaded\n"
        assert await asyncio.to_thread(main, ["pause", "--group", "kids"]) == 0
        assert capsys.readouterr().out == "blocking for group kids paused until resumed\n"
        assert not blocked(daemon, "ads.example", KID) and service.blocking_enabled
        assert await asyncio.to_thread(main, ["resume", "--group", "kids"]) == 0
        assert blocked(daemon, "tracker.example", KID)
        assert await asyncio.to_thread(main, ["pause", "--group", "nobody"]) == 1
        assert "400 no group named 'nobody'" in capsys.readouterr().err
        assert await asyncio.to_thread(main, ["pause", "5"]) == 0
        assert not service.blocking_enabled


def test_cli_without_a_configuration_names_the_file_it_looked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dnsguard.cli import main

    monkeypatch.setenv("DNSGUARD_CONFIG", str(tmp_path / "missing.yaml"))
    assert main(["allow", "ads.example"]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "Traceback" not in err
