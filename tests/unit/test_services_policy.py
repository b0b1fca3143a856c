"""Blocked services in a configuration: validation, the policy they make, explain, the API and metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dnsguard.app.api import Api
from dnsguard.app.lists import build_sync
from dnsguard.app.metrics import registry_for, render
from dnsguard.app.resolve import ResolveDaemon
from dnsguard.app.services import SERVICES_METRIC_LABEL, fold_services
from dnsguard.config import Config, load_config
from dnsguard.errors import ConfigError, ConfigErrors
from dnsguard.policy.engine import Kind, Policy
from tests.unit.test_ops import query, samples, started_service

CATALOGUE = Path(__file__).resolve().parents[2] / "blocklists" / "services"
KIDS = "192.0.2.40"
ADULT = "192.0.2.99"


def local_time(weekday: int, hour: int, minute: int = 0) -> float:
    """Epoch seconds of a local wall-clock moment in the week of Monday 7 December 2026 (0 = Monday)."""
    return time.mktime((2026, 12, 7 + weekday, hour, minute, 0, 0, 0, -1))


MONDAY_MORNING = local_time(0, 9)


def write_config(directory: Path, groups: dict[str, Any], **extra: Any) -> Path:
    document: dict[str, Any] = {
        "upstreams": {"servers": ["198.51.100.53"]},
        "loading": {"cache-dir": str(directory / "cache")},
        "groups": groups,
        "api": {"listen": "127.0.0.1:0"},
    }
    document.update(extra)
    path = directory / "dnsguard.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def policy_of(config: Config) -> Policy:
    return Policy(config, build_sync(config).matcher)


def kids_blocking(directory: Path, services: list[str], **kids: Any) -> Config:
    groups = {"kids": {"clients": ["192.0.2.32/27"], "blocked-services": services, **kids}, "default": {}}
    return load_config(write_config(directory, groups))


def test_a_group_blocking_youtube_blocks_its_site_and_cdn_and_no_other_group(tmp_path: Path) -> None:
    policy = policy_of(kids_blocking(tmp_path, ["youtube"], **{"block-mode": "nxdomain"}))
    for name in ("youtube.com", "www.youtube.com", "i.ytimg.com", "rr3---sn-abc.googlevideo.com"):
        decision = policy.decide(name, KIDS, MONDAY_MORNING)
        assert decision.kind is Kind.BLOCK, name
        assert decision.reason == "service:youtube"
        assert decision.block_mode == "nxdomain"  # the group's block mode
        assert policy.decide(name, ADULT, MONDAY_MORNING).kind is Kind.FORWARD, name
    assert policy.decide("www.google.com", KIDS, MONDAY_MORNING).kind is Kind.FORWARD
    assert policy.decide("ggpht.com", KIDS, MONDAY_MORNING).kind is Kind.FORWARD  # only yt3/yt4 below it


def test_a_category_blocks_each_of_its_services_under_its_own_reason(tmp_path: Path) -> None:
    policy = policy_of(kids_blocking(tmp_path, ["games"]))
    assert policy.decide("www.roblox.com", KIDS, MONDAY_MORNING).reason == "service:roblox"
    assert policy.decide("store.steampowered.com", KIDS, MONDAY_MORNING).reason == "service:steam"
    assert policy.decide("www.youtube.com", KIDS, MONDAY_MORNING).kind is Kind.FORWARD


def test_a_scheduled_service_is_blocked_only_inside_its_window(tmp_path: Path) -> None:
    schedule = {"blocked-services": ["tiktok"], "days": ["mon", "tue"], "start": "08:00", "end": "17:00"}
    config = kids_blocking(tmp_path, ["youtube"], schedules=[schedule])
    policy = policy_of(config)
    inside = [local_time(0, 8), local_time(0, 16, 59), local_time(1, 12)]
    outside = [local_time(0, 7, 59), local_time(0, 17), local_time(2, 12), local_time(5, 9)]
    for now in inside:
        decision = policy.decide("www.tiktok.com", KIDS, now)
        assert decision.kind is Kind.BLOCK and decision.reason == "service:tiktok", time.ctime(now)
    for now in outside:
        assert policy.decide("www.tiktok.com", KIDS, now).kind is Kind.FORWARD, time.ctime(now)
        assert policy.decide("youtu.be", KIDS, now).kind is Kind.BLOCK  # blocked whatever the time
    assert policy.decide("www.tiktok.com", ADULT, inside[0]).kind is Kind.FORWARD


def test_a_group_allowlist_still_unblocks_a_name_of_a_blocked_service(tmp_path: Path) -> None:
    groups = {
        "kids": {"clients": ["192.0.2.32/27"], "blocked-services": ["youtube"], "allow": ["school"]},
    }
    lists = {"school": {"allow": True, "sources": ["@@||edu.youtube.com^\n"]}}
    policy = policy_of(load_config(write_config(tmp_path, groups, lists=lists)))
    assert policy.decide("edu.youtube.com", KIDS, MONDAY_MORNING).kind is Kind.FORWARD
    assert policy.decide("www.youtube.com", KIDS, MONDAY_MORNING).kind is Kind.BLOCK


def test_explain_names_the_service_its_file_and_line(tmp_path: Path) -> None:
    policy = policy_of(kids_blocking(tmp_path, ["youtube"]))
    text = policy.explain("i.ytimg.com", KIDS, MONDAY_MORNING)
    lines = (CATALOGUE / "youtube.txt").read_text().splitlines()
    number = lines.index("||ytimg.com^") + 1
    assert "decision: block" in text
    assert "rule:     ||ytimg.com^ in list 'service:youtube'" in text
    assert f"source:   {CATALOGUE / 'youtube.txt'}:{number}" in text


def test_services_not_named_by_any_group_make_no_list(tmp_path: Path) -> None:
    config = kids_blocking(tmp_path, ["netflix", "NETFLIX"])
    assert [name for name in config.lists if name.startswith("service:")] == ["service:netflix"]
    assert config.groups["kids"].block == ["service:netflix"]


# -- validation ----------------------------------------------------------------------------------


def errors_of(path: Path) -> list[ConfigError]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return list(caught.value.errors) if isinstance(caught.value, ConfigErrors) else [caught.value]


def test_an_unknown_service_is_reported_at_its_line_with_the_close_names(tmp_path: Path) -> None:
    path = tmp_path / "dnsguard.yaml"
    path.write_text(
        "upstreams: {servers: [198.51.100.53]}\n"
        "groups:\n"
        "  kids:\n"
        "    blocked-services:\n"
        "      - youtube\n"
        "      - tiktokk\n"
        "    schedules:\n"
        "      - blocked-services: [gaems]\n"
        '        start: "08:00"\n'
        '        end: "17:00"\n'
    )
    first, second = errors_of(path)
    assert str(first) == (
        f"{path}:6: groups.kids.blocked-services[1]: no blocked service or category named 'tiktokk'"
        " (close: tiktok)"
    )
    assert first.line == 6
    assert second.line == 8 and second.key == "groups.kids.schedules[0].blocked-services[0]"
    assert "(close: games)" in second.message


def test_a_schedule_with_only_services_is_valid_and_one_with_nothing_is_not(tmp_path: Path) -> None:
    window = {"start": "08:00", "end": "17:00"}
    kids_blocking(tmp_path, [], schedules=[{"blocked-services": ["discord"], **window}])
    (error,) = errors_of(write_config(tmp_path, {"kids": {"schedules": [window]}}))
    assert error.key == "groups.kids.schedules[0].block"
    assert error.message == "a schedule needs lists or services to block"


def test_a_configured_list_cannot_take_a_service_name(tmp_path: Path) -> None:
    lists = {"service:youtube": {"sources": ["||example.org^\n"]}}
    (error,) = errors_of(write_config(tmp_path, {"default": {"block": ["service:youtube"]}}, lists=lists))
    assert error.key == "lists.service:youtube" and error.line is not None
    assert "kept for blocked services" in error.message


def test_a_custom_catalogue_is_read_relative_to_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "chat.txt").write_text("! Title: Chat\n! Category: messaging\n||chat.example^\n")
    path = write_config(tmp_path, {"default": {"blocked-services": ["chat"]}}, services={"catalogue": "mine"})
    policy = policy_of(load_config(path))
    assert policy.decide("www.chat.example", ADULT, MONDAY_MORNING).reason == "service:chat"
    # The shipped services are not in a custom catalogue.
    path = write_config(
        tmp_path, {"default": {"blocked-services": ["youtube"]}}, services={"catalogue": "mine"}
    )
    (error,) = errors_of(path)
    assert "no blocked service or category named 'youtube'" in error.message


def test_a_broken_catalogue_file_is_reported_at_its_own_line(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "chat.txt").write_text("! Title: Chat\n! Category: Chat Apps\n")
    path = write_config(tmp_path, {"default": {"blocked-services": ["chat"]}}, services={"catalogue": "mine"})
    (error,) = errors_of(path)
    assert error.file == str(tmp_path / "mine" / "chat.txt") and error.line == 2


def test_a_missing_catalogue_is_reported_at_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"default": {}}, services={"catalogue": "absent"})
    (error,) = errors_of(path)
    assert error.file == str(tmp_path / "absent") and "No such file" in error.message


# -- operations ----------------------------------------------------------------------------------


def test_metrics_count_every_service_list_under_one_label() -> None:
    counts = {"ads": 3, "service:youtube": 2, "service:tiktok": 5}
    assert fold_services(counts) == {"ads": 3, SERVICES_METRIC_LABEL: 7}


async def test_the_api_lists_the_catalogue_and_a_reload_swaps_the_blocked_services(tmp_path: Path) -> None:
    schedule = {"blocked-services": ["tiktok"], "start": "08:00", "end": "17:00"}
    groups = {
        "kids": {"clients": ["192.0.2.32/27"], "blocked-services": ["youtube"], "schedules": [schedule]},
        "guests": {"clients": ["192.0.2.64/27"], "blocked-services": ["youtube"], "filtering": False},
    }
    path = write_config(tmp_path, groups, metrics={"listen": "127.0.0.1:0"})
    service = await started_service(path)
    daemon = ResolveDaemon(str(path), service)
    routes = Api(daemon)
    app = web.Application(middlewares=[routes.guard])
    app.add_routes(routes.routes())
    try:
        async with TestClient(TestServer(app)) as client:
            body = await (await client.get("/api/services")).json()
            by_id = {entry["id"]: entry for entry in body["services"]}
            assert by_id["youtube"]["name"] == "YouTube" and by_id["youtube"]["category"] == "video"
            assert by_id["youtube"]["blocked_by"] == ["kids"]  # guests filter nothing
            assert by_id["tiktok"]["blocked_by"] == [] and by_id["tiktok"]["scheduled_by"] == ["kids"]
            assert by_id["steam"] == {**by_id["steam"], "blocked_by": [], "scheduled_by": []}
            assert "steam" in body["categories"]["games"]

            resolver = service.resolver
            assert resolver is not None
            assert isinstance(resolver.answer_now(query("www.youtube.com"), KIDS), bytes)
            log = await (await client.get("/api/queries", params={"client": KIDS})).json()
            assert [(q["result"], q["reason"]) for q in log["queries"]] == [("blocked", "service:youtube")]
            exposition = render(registry_for(daemon)).decode()
            found = samples(exposition.encode())
            assert found[("dnsguard_dns_blocked_total", (("list", SERVICES_METRIC_LABEL),))] == 1
            assert "service:" not in exposition

            groups["kids"]["blocked-services"] = ["netflix"]
            write_config(tmp_path, groups, metrics={"listen": "127.0.0.1:0"})
            assert (await client.post("/api/reload")).status == 200
            resolver = service.resolver
            assert resolver is not None
            assert isinstance(resolver.answer_now(query("www.netflix.com"), KIDS), bytes)
            assert not isinstance(resolver.answer_now(query("www.youtube.com"), KIDS), bytes)
            body = await (await client.get("/api/services")).json()
            by_id = {entry["id"]: entry for entry in body["services"]}
            assert by_id["youtube"]["blocked_by"] == [] and by_id["netflix"]["blocked_by"] == ["kids"]
    finally:
        await service.close()


def test_the_home_gateway_example_blocks_services_for_the_kids(tmp_path: Path) -> None:
    config = load_config(CATALOGUE.parents[1] / "config" / "home-gateway.yaml")
    config.loading.cache_dir = str(tmp_path / "cache")
    policy = policy_of(config)
    assert policy.decide("www.tiktok.com", KIDS, local_time(5, 20)).reason == "service:tiktok"
    assert policy.decide("www.roblox.com", KIDS, local_time(0, 10)).reason == "service:roblox"
    assert policy.decide("www.roblox.com", KIDS, local_time(5, 10)).kind is Kind.FORWARD  # a Saturday
    assert policy.decide("www.tiktok.com", ADULT, local_time(0, 10)).kind is Kind.FORWARD
