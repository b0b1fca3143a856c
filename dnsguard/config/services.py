"""Blocked services: named rule sets (YouTube, TikTok, Steam...) that groups and schedules block by id.

The catalogue is a directory of adblock lists, one per service, named ``<id>.txt``; the header names the
service and its category::

    ! Title: YouTube
    ! Category: video
    ||youtube.com^
    ||ytimg.com^

A group or schedule names services by id, or a whole category (``games``)::

    groups:
      kids:
        blocked-services: [tiktok, games]

Loading turns each service in use into an ordinary list, ``service:<id>``, whose one source is the
service's file, and adds it to the group's (or schedule's) block lists. So a service is matched, reloaded,
cached, explained and logged exactly as a list is: a blocked answer's reason is ``service:youtube``, and
`explain` shows the rule and the catalogue line that matched. Nothing here matches names.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dnsguard.config.loader import Problems, read_text
from dnsguard.config.model import Config, ListConfig
from dnsguard.config.shipped import shipped_path
from dnsguard.errors import ConfigError

SERVICE_LIST_PREFIX: Final = "service:"
"""List names of blocked services; reserved, so a configured list cannot take one."""
MAX_SERVICES: Final = 1000
"""Files read from one catalogue directory: a catalogue is a few dozen; a wrong directory is refused
rather than read whole."""
SHIPPED_CATALOGUES: Final = (
    shipped_path("blocklists/services"),  # the installed package, or a checkout
    Path("/usr/share/dnsguard/blocklists/services"),  # the container image
)
_ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HEADER_RE: Final = re.compile(r"^!\s*([A-Za-z-]+)\s*:\s*(.*?)\s*$")


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    name: str
    category: str
    path: str
    """The service's list file (absolute): the source of its list."""
    rules: int
    """Rule lines in the file (lines that are neither blank nor comments)."""

    @property
    def list_name(self) -> str:
        return SERVICE_LIST_PREFIX + self.id


@dataclass(frozen=True, slots=True)
class ServiceCatalogue:
    directory: str
    services: dict[str, Service]

    @property
    def categories(self) -> dict[str, list[str]]:
        """Category -> ids of its services, both sorted."""
        found: dict[str, list[str]] = {}
        for service in sorted(self.services.values(), key=lambda s: s.id):
            found.setdefault(service.category, []).append(service.id)
        return dict(sorted(found.items()))

    def resolve(self, names: list[str], key: str) -> list[str]:
        """Service ids for ids and category names, in order, without repeats; ConfigError per unknown name,
        with the close matches."""
        problems = Problems()
        categories = self.categories
        ids: list[str] = []
        for i, raw in enumerate(names):
            name = raw.strip().lower()
            if name in self.services:
                ids.append(name)
            elif name in categories:
                ids.extend(categories[name])
            else:
                problems.errors.append(ConfigError(self._unknown(raw), key=f"{key}[{i}]"))
        problems.raise_any()
        return list(dict.fromkeys(ids))

    def _unknown(self, name: str) -> str:
        known = [*self.services, *self.categories]
        close = difflib.get_close_matches(name.strip().lower(), known, n=4, cutoff=0.6)
        if close:
            return f"no blocked service or category named {name!r} (close: {', '.join(close)})"
        return (
            f"no blocked service or category named {name!r} (categories: {', '.join(self.categories)};"
            f" services: the files of {self.directory})"
        )


def parse_service(path: Path, text: str) -> Service:
    """One service file: its id from the file name, name and category from its header (ConfigError at the
    file's line otherwise)."""
    service_id = path.stem
    if not _ID_RE.match(service_id):
        raise ConfigError(
            f"{service_id!r} is not a service id (lower-case letters, digits and '-')", file=str(path)
        )
    header: dict[str, tuple[int, str]] = {}
    rules = 0
    for number, text_line in enumerate(text.splitlines(), 1):
        stripped = text_line.strip()
        match = _HEADER_RE.match(stripped)
        if match is not None and not rules:
            header.setdefault(match.group(1).lower(), (number, match.group(2)))
        elif stripped and not stripped.startswith(("!", "#")):
            rules += 1
    if not header.get("title", (0, ""))[1]:
        raise ConfigError("the header needs '! Title: <display name>'", file=str(path), line=1)
    category_line, category = header.get("category", (1, ""))
    if not _ID_RE.match(category):
        raise ConfigError(
            f"the header needs '! Category: <word>' (lower-case letters, digits and '-'), not {category!r}",
            file=str(path),
            line=category_line,
        )
    return Service(service_id, header["title"][1], category, str(path.resolve()), rules)


def load_catalogue(directory: str | Path) -> ServiceCatalogue:
    """Every ``*.txt`` of `directory`; ConfigError (all of them at once) for a bad file or directory."""
    directory = Path(directory)
    try:
        paths = sorted(path for path in directory.iterdir() if path.suffix == ".txt")
    except OSError as exc:
        message = f"cannot read the services catalogue: {exc.strerror or exc}"
        raise ConfigError(message, file=str(directory)) from None
    if len(paths) > MAX_SERVICES:
        raise ConfigError(f"more than {MAX_SERVICES} service files: not a catalogue", file=str(directory))
    problems = Problems()
    services: dict[str, Service] = {}
    for path in paths:
        with problems.check():
            service = parse_service(path, read_text(path))
            services[service.id] = service
    problems.raise_any()
    catalogue = ServiceCatalogue(str(directory.resolve()), services)
    clashes = sorted(set(catalogue.categories) & set(services))
    if clashes:
        raise ConfigError(
            f"{', '.join(clashes)}: both a service id and a category; rename one", file=str(directory)
        )
    return catalogue


def catalogue_directory(config: Config) -> Path | None:
    """The configured catalogue, else the first shipped one that exists."""
    if config.services.catalogue is not None:
        return Path(config.base_dir) / config.services.catalogue
    return next((path for path in SHIPPED_CATALOGUES if path.is_dir()), None)


def apply_services(config: Config) -> None:
    """Make the services the groups and schedules block into lists, and block those lists there.

    Raises ConfigError (ConfigErrors for several), keyed by YAML path, for an unknown id or category,
    a configured list that takes a reserved name, or a catalogue that cannot be read.
    """
    problems = Problems()
    for name in config.lists:
        if name.startswith(SERVICE_LIST_PREFIX):
            problems.errors.append(
                ConfigError(
                    f"'{SERVICE_LIST_PREFIX}' names are kept for blocked services", key=f"lists.{name}"
                )
            )
    uses = [
        (f"groups.{group_name}.blocked-services", group.blocked_services, group.block)
        for group_name, group in config.groups.items()
    ] + [
        (f"groups.{group_name}.schedules[{s}].blocked-services", schedule.blocked_services, schedule.block)
        for group_name, group in config.groups.items()
        for s, schedule in enumerate(group.schedules)
    ]
    if not any(names for _, names, _ in uses) and config.services.catalogue is None:
        problems.raise_any()
        return
    directory = catalogue_directory(config)
    if directory is None:
        problems.errors.append(
            ConfigError(
                "no services catalogue installed: set services.catalogue to a directory of service lists",
                key="services.catalogue",
            )
        )
        problems.raise_any()
        return
    try:
        catalogue = load_catalogue(directory)
    except ConfigError as exc:
        problems.errors.append(exc)
        problems.raise_any()
        return
    for key, names, block in uses:
        with problems.check():
            for service_id in catalogue.resolve(names, key):
                service = catalogue.services[service_id]
                # One list per service, shared by every group and schedule that blocks it.
                config.lists.setdefault(
                    service.list_name,
                    ListConfig(sources=[service.path], description=f"blocked service: {service.name}"),
                )
                if service.list_name not in block:
                    block.append(service.list_name)
    problems.raise_any()
