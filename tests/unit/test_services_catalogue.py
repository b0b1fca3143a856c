"""The shipped catalogue of blocked services (blocklists/services) and the catalogue reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnsguard.config.services import SHIPPED_CATALOGUES, ServiceCatalogue, load_catalogue, parse_service
from dnsguard.errors import ConfigError, ConfigErrors
from dnsguard.filter.lists import ListSource, parse_text
from dnsguard.filter.rules import Outcome, Scope, category, parse_line

SHIPPED = Path(__file__).resolve().parents[2] / "blocklists" / "services"
REQUIRED = {
    "youtube",
    "tiktok",
    "instagram",
    "facebook",
    "netflix",
    "roblox",
    "discord",
    "twitch",
    "snapchat",
    "whatsapp",
    "telegram",
    "reddit",
    "twitter",
    "steam",
    "epic-games",
    "fortnite",
    "minecraft",
    "playstation",
    "xbox-live",
    "spotify",
    "prime-video",
    "disney-plus",
    "pinterest",
    "tinder",
}
INTENDED_OVERLAPS = {("fortnite", "epic-games")}
"""(service, service whose rule also covers one of its names): Fortnite's backend is under epicgames.com,
so blocking Epic Games blocks Fortnite too, while Fortnite alone leaves the Epic store up."""


@pytest.fixture(scope="module")
def catalogue() -> ServiceCatalogue:
    return load_catalogue(SHIPPED)


def rule_names(path: str) -> list[str]:
    names = []
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.startswith("!"):
            names.append(line.strip().removeprefix("||").removesuffix("^"))
    return names


def test_the_shipped_catalogue_is_found_where_a_checkout_keeps_it() -> None:
    assert SHIPPED_CATALOGUES[0] == SHIPPED


def test_every_required_service_is_in_the_catalogue_with_a_name_and_a_category(
    catalogue: ServiceCatalogue,
) -> None:
    assert set(catalogue.services) >= REQUIRED
    for service in catalogue.services.values():
        assert service.name and service.category and service.rules > 0, service
    assert {"games", "social", "video", "messaging"} <= set(catalogue.categories)
    assert {"fortnite", "minecraft", "roblox", "steam"} <= set(catalogue.categories["games"])


def test_ids_names_and_categories_are_distinct(catalogue: ServiceCatalogue) -> None:
    names = [service.name for service in catalogue.services.values()]
    assert len(names) == len(set(names))
    assert not set(catalogue.categories) & set(catalogue.services)
    files = sorted(path.stem for path in SHIPPED.iterdir())
    assert files == sorted(catalogue.services)  # nothing else in the directory, one file per id


def test_every_rule_is_a_name_rule_covering_the_name_and_its_subdomains(catalogue: ServiceCatalogue) -> None:
    for service in catalogue.services.values():
        text = Path(service.path).read_text()
        for number, line in enumerate(text.splitlines(), 1):
            if line.startswith("!"):
                continue
            where = f"{service.path}:{number}"
            assert line.startswith("||") and line.endswith("^"), where
            result = parse_line(line)
            assert result.outcome is Outcome.RULE, (where, result.reason)
            assert result.category == category(Scope.SUFFIX), where
            assert result.names == (line[2:-1],), where  # already canonical: lower case, no dot
        parsed = parse_text(text, ListSource(service.list_name, service.path))
        assert parsed.report.issue_count == 0, (service.id, [str(i) for i in parsed.report.issues])
        assert parsed.rule_count == service.rules == len(set(rule_names(service.path))), service.id


def test_no_name_belongs_to_two_services_unless_intended(catalogue: ServiceCatalogue) -> None:
    owner: dict[str, str] = {}
    for service in catalogue.services.values():
        for name in rule_names(service.path):
            assert name not in owner, f"{name} is in {owner.get(name)} and {service.id}"
            owner[name] = service.id
    found = set()
    for name, service_id in owner.items():
        labels = name.split(".")
        for i in range(1, len(labels) - 1):
            parent = ".".join(labels[i:])
            if parent in owner and owner[parent] != service_id:
                found.add((service_id, owner[parent]))
    assert found == INTENDED_OVERLAPS


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def test_a_service_file_without_a_title_is_refused_at_its_first_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c", "chat.txt", "! Category: messaging\n||chat.example^\n")
    with pytest.raises(ConfigError) as caught:
        parse_service(path, path.read_text())
    assert str(caught.value) == f"{path}:1: the header needs '! Title: <display name>'"


def test_a_bad_category_is_refused_at_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c", "chat.txt", "! Title: Chat\n! Category: Instant Messaging\n||chat.example^\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_service(path, path.read_text())
    assert caught.value.line == 2 and "Category" in caught.value.message


def test_every_bad_file_of_a_catalogue_is_reported_at_once(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    write(directory, "Bad_Id.txt", "! Title: X\n! Category: x\n")
    write(directory, "chat.txt", "! Category: messaging\n")
    write(directory, "good.txt", "! Title: Good\n! Category: video\n||good.example^\n")
    write(directory, "notes.md", "not a service")
    with pytest.raises(ConfigErrors) as caught:
        load_catalogue(directory)
    assert [Path(e.file or "").name for e in caught.value.errors] == ["Bad_Id.txt", "chat.txt"]


def test_a_category_named_like_a_service_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    write(directory, "games.txt", "! Title: Games Portal\n! Category: web\n||games.example^\n")
    write(directory, "chess.txt", "! Title: Chess\n! Category: games\n||chess.example^\n")
    with pytest.raises(ConfigError, match="games: both a service id and a category"):
        load_catalogue(directory)


def test_a_missing_catalogue_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the services catalogue: No such file"):
        load_catalogue(tmp_path / "absent")


def test_names_and_categories_resolve_to_ids_in_order_without_repeats(catalogue: ServiceCatalogue) -> None:
    ids = catalogue.resolve(["YouTube", "games", "steam"], "blocked-services")
    assert ids[0] == "youtube"
    assert ids[1:] == catalogue.categories["games"]


def test_an_unknown_name_suggests_the_close_ones(catalogue: ServiceCatalogue) -> None:
    with pytest.raises(ConfigErrors) as caught:
        catalogue.resolve(["youtub", "tiktok", "gmes", "zzzz"], "blocked-services")
    first, second, third = caught.value.errors
    assert first.key == "blocked-services[0]" and "(close: youtube)" in first.message
    assert second.key == "blocked-services[2]" and "(close: games)" in second.message
    assert third.key == "blocked-services[3]" and "categories: ai, dating, games" in third.message
