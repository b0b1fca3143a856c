"""GET /api/queries (search with filters and paging) and GET /api/stats (aggregates over a window).

With the lasting query log on, both read its database; without it, /api/queries filters the resolver's
in-memory log the same way and /api/stats answers 404 (the dashboard then sums the in-memory log).

/api/queries parameters: since, until (epoch seconds), client (address or client name), name
(substring), result, qtype (A, AAAA... or a number), list (the list or built-in rule that blocked),
before (paging: the `next` of the previous page), limit (1..1000, default 100). Newest first.
/api/stats: window = 1h, 24h (default) or 7d.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dnsguard.app.querylog_store import WINDOWS, QueryLogError, Search, qtype_name, qtype_number, rcode_name
from dnsguard.errors import DnsguardError

if TYPE_CHECKING:
    from dnsguard.app.operated import Operated
    from dnsguard.app.resolve import ResolverService

MAX_LIMIT = 1000


class BadRequest(DnsguardError):
    """A search parameter that is wrong (answered 400 with this message)."""


def parse_search(query: Mapping[str, str], resolve_client: Any = None) -> Search:
    """The Search a request's parameters ask for; BadRequest names the parameter that is wrong."""

    def number(key: str) -> float | None:
        text = query.get(key)
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise BadRequest(f"{key} must be a number (epoch seconds)") from None
        if not math.isfinite(value):
            raise BadRequest(f"{key} must be a finite number")
        return value

    try:
        limit = int(query.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be a number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be 1..{MAX_LIMIT}")
    before = query.get("before")
    try:
        before_id = int(before) if before else None
    except ValueError:
        raise BadRequest("before must be the `next` of a previous page") from None
    qtype_text = query.get("qtype")
    try:
        qtype = qtype_number(qtype_text) if qtype_text else None
    except ValueError:
        raise BadRequest(f"qtype {qtype_text!r} is neither a known type nor a number 0..65535") from None
    client = query.get("client") or None
    if client and resolve_client is not None:
        client = resolve_client(client)
    return Search(
        since=number("since"),
        until=number("until"),
        client=client,
        name=(query.get("name") or "").strip().lower() or None,
        result=query.get("result") or None,
        qtype=qtype,
        list_name=query.get("list") or None,
        before_id=before_id,
        limit=limit,
    )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class QueryLogApi:
    def __init__(self, daemon: Operated) -> None:
        self.daemon = daemon

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/queries", self.queries), web.get("/api/stats", self.stats)]

    def _service(self) -> ResolverService | None:
        service = self.daemon.dns_service
        return service if service is not None and service.resolver is not None else None

    def _name_of(self, service: ResolverService, address: str) -> str:
        return service.client_names.name_of(address) if service.client_names and address else ""

    def _client_address(self, service: ResolverService, text: str) -> str:
        """A client given by its configured name becomes its first address."""
        client = service.config.clients.get(text)
        if client is not None and client.addresses:
            return client.addresses[0].split("/")[0]
        return text

    async def queries(self, request: web.Request) -> web.Response:
        service = self._service()
        if service is None:
            return _error(409, "DNS filtering is not running in this daemon")
        try:
            search = parse_search(request.query, lambda text: self._client_address(service, text))
        except BadRequest as exc:
            return _error(400, str(exc))
        querylog = service.querylog
        assert service.resolver is not None
        if querylog is not None and querylog.path is not None:
            try:
                rows = await querylog.search(search)
            except QueryLogError as exc:
                return _error(503, str(exc))
            source = "querylog"
        else:
            rows = _search_memory(service, search)
            source = "memory"
        for row in rows:
            row["client_name"] = self._name_of(service, row["client"])
            row["qtype_name"] = qtype_name(row["qtype"])
            row["rcode_name"] = rcode_name(row["rcode"])
            row["elapsed_ms"] = round(row["elapsed_ms"], 3)
        page_full = len(rows) == search.limit and "id" in (rows[-1] if rows else {})
        return web.json_response(
            {
                "queries": rows,
                "next": rows[-1]["id"] if page_full else None,
                "source": source,
                "capacity": service.resolver.query_log.maxlen,
                "querylog": querylog.status() if querylog is not None else None,
            }
        )

    async def stats(self, request: web.Request) -> web.Response:
        service = self._service()
        if service is None:
            return _error(409, "DNS filtering is not running in this daemon")
        window = request.query.get("window", "24h")
        if window not in WINDOWS:
            return _error(400, f"window must be one of {', '.join(WINDOWS)}")
        querylog = service.querylog
        if querylog is None or querylog.path is None:
            return _error(404, "the lasting query log is off (querylog.enabled): no statistics over time")
        try:
            body = await querylog.stats(window)
        except QueryLogError as exc:
            return _error(503, str(exc))
        for entry in body["top_clients"]:
            entry["client_name"] = self._name_of(service, entry["client"])
        return web.json_response(body)


def _search_memory(service: ResolverService, search: Search) -> list[dict[str, Any]]:
    """The in-memory log under the same filters (no ids: it has no paging)."""
    assert service.resolver is not None
    rows: list[dict[str, Any]] = []
    for entry in reversed(service.resolver.recent_queries()):
        if (
            (search.since is not None and entry.time < search.since)
            or (search.until is not None and entry.time >= search.until)
            or (search.client and entry.client != search.client)
            or (search.result and entry.result != search.result)
            or (search.qtype is not None and entry.qtype != search.qtype)
            or (search.list_name and entry.reason != search.list_name)
            or (search.name and search.name not in entry.name)
        ):
            continue
        rows.append(
            {
                "time": entry.time,
                "client": entry.client,
                "name": entry.name,
                "qtype": entry.qtype,
                "result": entry.result,
                "group": entry.group,
                "reason": entry.reason,
                "elapsed_ms": entry.elapsed_ms,
                "rcode": entry.rcode,
            }
        )
        if len(rows) >= search.limit:
            break
    return rows
