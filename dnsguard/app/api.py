"""The HTTP API (status, explain, pause, reload, lists) and /metrics, on aiohttp.

The query log and its statistics (/api/queries, /api/stats) are in dnsguard/app/querylog_api.py.

Every /api/ route answers JSON. `/healthz` (on the API and the metrics address) needs no token and tells
nothing but that the event loop runs. When `api.token` is set, every /api/ request must carry
`Authorization: Bearer <token>`; a configuration that binds the API off loopback without a token is
refused when it is loaded. Nothing secret (private or preshared keys, the token) is ever returned.
The web dashboard (its pages at /), its routes (rules, pauses per group) and its browser checks are in
dnsguard/app/dashboard.py.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dnsguard import __version__
from dnsguard.app.client_names import clients_route
from dnsguard.app.dashboard import Dashboard, blocking_state
from dnsguard.app.metrics import peer_names, registry_for, render
from dnsguard.app.querylog_api import QueryLogApi
from dnsguard.app.services import ServicesApi
from dnsguard.app.watch import FileWatcher, watched_files
from dnsguard.config.addresses import parse_hostport
from dnsguard.errors import DnsguardError
from dnsguard.filter.modifiers import TYPE_NUMBERS
from dnsguard.filter.rules import folded_name
from dnsguard.lifecycle.clock import boottime
from dnsguard.net.bind import listening_socket

if TYPE_CHECKING:
    from dnsguard.app.operated import Operated
    from dnsguard.app.resolve import ResolverService

log = logging.getLogger("dnsguard.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(DnsguardError):
    """A request the API refuses; `status` is the HTTP status answered, the message its reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def iso_time(timestamp: float) -> str:
    """A wall-clock time as ISO 8601 UTC, to the second (e.g. 2026-12-04T17:20:01Z)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def handshake_times(wall: float | None, now: float) -> dict[str, Any]:
    """The last handshake as epoch seconds, ISO time and age, all None when there was none."""
    if not wall:
        return {"last_handshake": None, "last_handshake_time": None, "last_handshake_ago_seconds": None}
    return {
        "last_handshake": wall,
        "last_handshake_time": iso_time(wall),
        "last_handshake_ago_seconds": round(max(0.0, now - wall), 3),
    }


class Api:
    """The routes, bound to one daemon."""

    def __init__(self, daemon: Operated) -> None:
        self.daemon = daemon
        self.started_at = time.time()
        self.dashboard = Dashboard(self)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/status", self.status),
            *QueryLogApi(self.daemon).routes(),
            web.get("/api/explain", self.explain),
            web.get("/api/firewall", self.firewall),
            web.get("/api/firewall/explain", self.firewall_explain),
            web.post("/api/reload", self.reload),
            web.get("/api/lists", self.lists),
            web.post("/api/lists/refresh", self.refresh_lists),
            web.get("/api/services", ServicesApi(self.daemon).catalogue),
            clients_route(self.daemon),
            *self.dashboard.routes(),
        ]

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Token check, and JSON errors instead of HTML pages."""
        token = self.daemon.config.api.token
        if token is not None and request.path.startswith("/api/"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                response = _json({"error": "missing or wrong bearer token"}, 401)
                response.headers["WWW-Authenticate"] = 'Bearer realm="dnsguard"'
                return response
        try:
            return await handler(request)
        except ApiError as exc:
            return _json({"error": str(exc)}, exc.status)
        except web.HTTPException as exc:
            return _json({"error": exc.reason}, exc.status)

    def _service(self) -> ResolverService:
        service = self.daemon.dns_service
        if service is None or service.resolver is None:
            raise ApiError(409, "DNS filtering is not running in this daemon")
        return service

    # -- routes ---------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        """Liveness without a token: answered from the event loop, so a stuck loop fails the probe."""
        return _json({"status": "ok", "kind": self.daemon.kind})

    async def status(self, request: web.Request) -> web.Response:
        """Live state of this daemon (client, server or resolver), read when asked; wall-clock times."""
        daemon = self.daemon
        reloads = daemon.reloads
        now = time.time()
        body: dict[str, Any] = {
            "kind": daemon.kind,
            "version": __version__,
            "pid": os.getpid(),
            "config": os.path.abspath(daemon.config_path),
            "started_time": iso_time(self.started_at),
            "uptime_seconds": round(now - self.started_at, 3),
            "reloads": {
                "success": reloads.success,
                "failure": reloads.failure,
                "last_error": reloads.last_error,
                "last_at": reloads.last_at,
            },
        }
        lifecycle = daemon.connection
        if lifecycle is not None:
            # The lifecycle runs on CLOCK_BOOTTIME; its age is the same on the wall clock.
            last = lifecycle.last_handshake
            body["connection"] = {
                "state": lifecycle.state.value,
                "reconnects": {cause.value: count for cause, count in lifecycle.reconnects.items()},
                **handshake_times(now - (boottime() - last) if last is not None else None, now),
            }
        shell = daemon.tunnel_shell
        if shell is not None:
            names = peer_names(daemon.config)
            body["tunnel"] = {
                "interface": shell.tun.name,
                "public_key": shell.device.public_key,
                "rx_bytes": shell.stats.rx_bytes,
                "tx_bytes": shell.stats.tx_bytes,
                "peers": [
                    {
                        "name": names.get(peer.public_key, ""),
                        "public_key": peer.public_key,
                        "endpoint": f"{peer.endpoint[0]}:{peer.endpoint[1]}" if peer.endpoint else None,
                        "allowed_ips": list(peer.allowed_ips),
                        **handshake_times((peer.last_handshake_wall_ns or 0) / 1e9, now),
                        "rx_bytes": peer.rx_bytes,
                        "tx_bytes": peer.tx_bytes,
                    }
                    for peer in shell.device.status()
                ],
            }
        service = daemon.dns_service
        if service is not None and service.resolver is not None:
            resolver = service.resolver
            upstreams = service.forwarder.upstreams if service.forwarder is not None else None
            totals: dict[str, int] = {}
            for (result, _group), count in resolver.stats.queries.items():
                totals[result] = totals.get(result, 0) + count
            cache = resolver.cache
            body["dns"] = {
                "blocking": self._blocking(service),
                "queries": totals,
                "blocked_by_list": dict(resolver.stats.blocked_by_list),
                "cache": cache.stats()._asdict() if cache is not None else None,
                "upstreams": [
                    {
                        "name": stats.name,
                        "queries": stats.queries,
                        "failures": stats.failures,
                        "timeouts": stats.timeouts,
                        "latency_ms": round(stats.latency_ewma * 1000, 3) if stats.latency_ewma else None,
                        "last_error": stats.last_error,
                    }
                    for stats in (upstreams.stats() if upstreams is not None else [])
                ],
            }
        if service is not None and service.client_names is not None:
            body["clients"] = service.client_names.summary()
        if service is not None and service.querylog is not None:
            body["querylog"] = service.querylog.status()
        return _json(body)

    async def explain(self, request: web.Request) -> web.Response:
        service = self._service()
        assert service.resolver is not None
        text = request.query.get("name", "")
        name = folded_name(text)
        if not text.strip().rstrip("."):
            raise ApiError(400, "give ?name=")
        if name is None:
            raise ApiError(400, f"{text.strip()!r} is not a valid domain name")
        client = request.query.get("client", "")
        qtype = TYPE_NUMBERS.get(request.query.get("type", "A").upper())
        if qtype is None:
            raise ApiError(400, "unknown ?type= (A, AAAA, HTTPS, TXT, MX...)")
        policy = service.resolver.policy
        decision = policy.decide(name, client, time.time(), qtype)
        return _json(
            {
                "name": name,
                "client": client,
                "client_name": service.client_names.name_of(client)
                if service.client_names and client
                else "",
                "group": decision.group,
                "decision": decision.kind.name.lower(),
                "reason": decision.reason,
                "explanation": policy.explain(name, client, time.time(), qtype),
            }
        )

    async def firewall(self, request: web.Request) -> web.Response:
        """The firewall fed by DNS: mode, addresses handed out, batches and the kernel's counters."""
        firewall = self._service().firewall
        return _json(firewall.snapshot() if firewall is not None else {"enabled": False})

    async def firewall_explain(self, request: web.Request) -> web.Response:
        """?address=&client=: would a new connection be refused, and why."""
        firewall = self._service().firewall
        if firewall is None:
            raise ApiError(409, "the firewall fed by DNS is off in this daemon")
        address = request.query.get("address", "")
        client = request.query.get("client") or None
        try:
            return _json(firewall.explain(address, client))
        except DnsguardError as exc:
            raise ApiError(400, str(exc)) from None

    def _blocking(self, service: ResolverService) -> dict[str, Any]:
        return blocking_state(service, groups=False)

    async def reload(self, request: web.Request) -> web.Response:
        """The shared reload path: 200 when the new configuration is in use, else 422 and why."""
        ok = await self.daemon.reload()
        if ok:
            return _json({"reloaded": True})
        return _json({"reloaded": False, "error": self.daemon.reloads.last_error}, 422)

    async def lists(self, request: web.Request) -> web.Response:
        service = self._service()
        lists: dict[str, Any] = {
            name: {
                "entries": 0,
                "sources": [],
                "last_update": service.list_updated_at.get(name),
                "update_failures": service.list_update_failures.get(name, 0),
            }
            for name in service.config.lists
        }
        built = service.built
        if built is not None:
            for report in built.sources:
                entry = lists.setdefault(
                    report.list_name, {"entries": 0, "sources": [], "last_update": None, "update_failures": 0}
                )
                entry["entries"] += report.rules
                entry["sources"].append(
                    {
                        "location": report.location,
                        "status": report.status,
                        "rules": report.rules,
                        "malformed": report.malformed,
                        "error": report.error,
                        "examples": report.examples[:3],
                    }
                )
        return _json({"lists": lists, "compiled_at": built.built_at if built is not None else None})

    async def refresh_lists(self, request: web.Request) -> web.Response:
        service = self._service()
        try:
            await service.refresh_lists()
        except DnsguardError as exc:
            # The lists in use stay as they were; say why the new ones were not taken.
            raise ApiError(422, str(exc)) from None
        return await self.lists(request)


async def _metrics(registry: Any, request: web.Request) -> web.Response:
    return web.Response(body=render(registry), content_type="text/plain", charset="utf-8")


class Operations:
    """The API site, the metrics site and the file watcher of one daemon."""

    def __init__(self, daemon: Operated) -> None:
        self.daemon = daemon
        self.api = Api(daemon)
        self.registry = registry_for(daemon)
        self._runners: list[web.AppRunner] = []
        self.watcher: FileWatcher | None = None
        self.bound: dict[str, tuple[str, int]] = {}
        """'api' / 'metrics' -> the (host, port) actually bound."""

    def _app(self, api: bool, metrics: bool) -> web.Application:
        app = web.Application(middlewares=[self.api.guard, self.api.dashboard.guard] if api else [])
        app.add_routes([web.get("/healthz", self.api.health)])
        if api:
            app.add_routes(self.api.routes())
        if metrics:

            async def metrics_handler(request: web.Request) -> web.Response:
                return await _metrics(self.registry, request)

            app.add_routes([web.get("/metrics", metrics_handler)])
        return app

    async def _serve(self, listen: str, default_port: int, api: bool, metrics: bool) -> None:
        what = " and ".join(name for name, on in (("api", api), ("metrics", metrics)) if on)
        host, port = parse_hostport(listen, default_port, "listen", any_port=True)
        # A daemon without its API would leave `dnsguard pause` and `status` talking to whatever
        # holds the port (often another dnsguard): refuse to start instead (BindError).
        sock = listening_socket(host, port, socket.SOCK_STREAM, f"the {what}")
        runner = web.AppRunner(self._app(api, metrics), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runners.append(runner)
        bound = sock.getsockname()
        for name, on in (("api", api), ("metrics", metrics)):
            if on:
                self.bound[name] = (str(bound[0]), int(bound[1]))
        log.info("%s on %s:%d", what, bound[0], bound[1])

    async def start(self) -> None:
        """Serve the API and the metrics; BindError (nothing left listening) when an address is refused."""
        config = self.daemon.config
        api_listen, metrics_listen = config.api.listen, config.metrics.listen
        try:
            if api_listen is not None and api_listen == metrics_listen:
                await self._serve(api_listen, 8053, api=True, metrics=True)
            else:
                if api_listen is not None:
                    await self._serve(api_listen, 8053, api=True, metrics=False)
                if metrics_listen is not None:
                    await self._serve(metrics_listen, 9153, api=False, metrics=True)
        except BaseException:
            await self.close()
            raise
        if config.reload.watch:
            self.watcher = FileWatcher(
                lambda: watched_files(self.daemon.config_path, self.daemon.config),
                self._file_changed,
                interval=float(config.reload.interval),
            )
            self.watcher.start()

    async def _file_changed(self, changed: list[str]) -> None:
        log.info("%s changed: reloading", ", ".join(changed))
        await self.daemon.reload()

    async def close(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
