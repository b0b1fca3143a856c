"""Blocked services for operations: the catalogue over the API, and their lists folded in the metrics.

Each service a group blocks is an ordinary list named ``service:<id>`` (see `dnsguard.config.services`),
so the resolver, the query log and `explain` need nothing here.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from dnsguard.config.model import Config
from dnsguard.config.services import (
    SERVICE_LIST_PREFIX,
    ServiceCatalogue,
    catalogue_directory,
    load_catalogue,
)
from dnsguard.errors import ConfigError

if TYPE_CHECKING:
    from dnsguard.app.operated import Operated

SERVICES_METRIC_LABEL: Final = "blocked-services"
"""The one `list` label value that every service list is counted under: a catalogue has dozens of
services, and a label value each would multiply every list series by them."""


def fold_services(counts: dict[str, int]) -> dict[str, int]:
    """Per-list counts with every ``service:<id>`` list summed into SERVICES_METRIC_LABEL."""
    folded: dict[str, int] = {}
    for name, count in counts.items():
        key = SERVICES_METRIC_LABEL if name.startswith(SERVICE_LIST_PREFIX) else name
        folded[key] = folded.get(key, 0) + count
    return folded


def catalogue_report(config: Config, catalogue: ServiceCatalogue) -> dict[str, Any]:
    """Every service of the catalogue with the groups that block it always, and those that block it on
    a schedule (groups with filtering off block nothing)."""
    services = []
    for service in sorted(catalogue.services.values(), key=lambda s: s.id):
        always = []
        scheduled = []
        for group_name, group in config.groups.items():
            if not group.filtering:
                continue
            if service.list_name in group.block:
                always.append(group_name)
            if any(service.list_name in schedule.block for schedule in group.schedules):
                scheduled.append(group_name)
        services.append(
            {
                "id": service.id,
                "name": service.name,
                "category": service.category,
                "list": service.list_name,
                "rules": service.rules,
                "blocked_by": always,
                "scheduled_by": scheduled,
            }
        )
    return {"catalogue": catalogue.directory, "categories": catalogue.categories, "services": services}


class ServicesApi:
    """GET /api/services: the catalogue of the configuration in use, and which groups block what."""

    def __init__(self, daemon: Operated) -> None:
        self.daemon = daemon

    async def catalogue(self, request: web.Request) -> web.Response:
        config = self.daemon.config
        directory = catalogue_directory(config)
        if directory is None:
            return web.json_response(
                {"error": "no services catalogue installed (services.catalogue)"}, status=404
            )
        try:
            catalogue = await asyncio.to_thread(load_catalogue, directory)
        except ConfigError as exc:
            # Changed on disk since the configuration was loaded; the lists in use are unaffected.
            return web.json_response({"error": str(exc)}, status=500)
        return web.json_response(catalogue_report(config, catalogue))
