"""The web dashboard: its static pages, the rules it writes, pausing per group, and its request checks.

The pages (dnsguard/app/web/) are plain HTML, CSS and one script, served from the package with no
build step and nothing fetched from elsewhere. They carry no data: everything comes from /api/, under
the API's token rules. The page asks for the token when the API answers 401, keeps it in the tab's
sessionStorage and sends it as `Authorization: Bearer` like any other client; no cookie is ever set.

Why these checks, for a page in a browser that also visits other sites:
- With no cookie, a cross-site page cannot borrow the admin's login; but an API on loopback without a
  token accepts anyone who reaches it, and a browser on the same host reaches it. So a state-changing
  request (POST) that a browser marks as coming from another origin (`Origin`, `Sec-Fetch-Site`) is
  refused, and so is a body that is not JSON: the content types a cross-site form or a "simple" fetch
  can send without a CORS preflight are exactly the non-JSON ones, and the API answers no preflight.
- DNS rebinding (a hostile name resolving to 127.0.0.1) makes the browser treat the API as that name's
  origin, so the origin checks pass: without a token, a request for the pages or /api/ whose Host is a
  name rather than an address or `localhost` is refused (/metrics and /healthz stay as scrapers use them).
- A strict Content-Security-Policy (scripts and styles from this origin only, no inline code, no
  frames) limits what an injected log entry could do; the script also inserts data as text only.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dnsguard.app.managed_rules import ACTIONS, RequestRefused, change_rule, checked_name, managed_entries

if TYPE_CHECKING:
    from dnsguard.app.api import Api, Handler
    from dnsguard.app.resolve import ResolverService

WEB_DIR = Path(__file__).resolve().parent / "web"
ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "icon.svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
DashboardHandler = Callable[["Dashboard", web.Request], Awaitable[web.Response]]
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_PAUSE_MINUTES = 7 * 24 * 60
"""A timed pause lasts at most a week; longer is `indefinitely` (until resumed)."""
DEFAULT_PAUSE_MINUTES = 5.0
"""A pause request without `minutes` (`POST /api/blocking/pause` as before groups)."""


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _is_address_host(host: str) -> bool:
    """True for `localhost` and IP literals (with or without a port, IPv6 in brackets)."""
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def refusal(request: web.Request, token_set: bool) -> web.Response | None:
    """Why the request must not reach a handler (403/415), or None; see the module docstring."""
    dashboard = request.path == "/" or request.path.startswith(("/api/", "/ui/"))
    if not token_set and dashboard and not _is_address_host(request.host):
        return _error(403, "without api.token the API answers only requests to its address or localhost")
    if request.method not in UNSAFE_METHODS or not request.path.startswith("/api/"):
        return None
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return _error(403, f"cross-site request refused (Origin {origin[:100]})")
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return _error(403, f"cross-site request refused (Sec-Fetch-Site {site[:40]})")
    has_body = (request.content_length or 0) > 0 or "Transfer-Encoding" in request.headers
    if has_body and request.content_type != "application/json":
        return _error(415, "a request body must be JSON (Content-Type: application/json)")
    return None


def _until(timestamp: float, now: float) -> float | None:
    """A pause's end for JSON: None when over or when it lasts until resumed."""
    return None if timestamp <= now or math.isinf(timestamp) else timestamp


def blocking_state(service: ResolverService, groups: bool = True) -> dict[str, Any]:
    """Whether blocking is on, for everyone and (groups) per group; a pause without end has no time."""
    now = time.time()
    resolver = service.resolver
    if resolver is None:
        return {"enabled": True, "paused_until": None}
    policy = resolver.policy
    state: dict[str, Any] = {
        "enabled": now >= policy.paused_until,
        "paused_until": _until(policy.paused_until, now),
    }
    if groups:
        state["indefinitely"] = math.isinf(policy.paused_until)
        paused = policy.group_paused_until
        state["groups"] = {
            name: {
                "enabled": now >= paused.get(name, 0.0),
                "paused_until": _until(paused.get(name, 0.0), now),
                "indefinitely": math.isinf(paused.get(name, 0.0)),
            }
            for name in policy.groups
        }
    return state


async def _payload(request: web.Request) -> dict[str, Any]:
    """The JSON object of the body ({} when there is none); 400 for anything else."""
    if not request.body_exists:
        return {}
    try:
        payload = await request.json()
    except ValueError:
        raise RequestRefused(400, "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise RequestRefused(400, "the body must be a JSON object")
    return payload


def _answering_errors(method: DashboardHandler) -> DashboardHandler:
    """A handler whose RequestRefused becomes its JSON error answer (whatever middlewares the app has)."""

    @functools.wraps(method)
    async def handler(self: Dashboard, request: web.Request) -> web.Response:
        try:
            return await method(self, request)
        except RequestRefused as exc:
            return _error(exc.status, str(exc))

    return handler


class Dashboard:
    """The dashboard's pages and the API routes it adds, bound to one daemon's Api."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self._rules_lock = asyncio.Lock()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/ui/{asset}", self.asset),
            web.get("/api/blocking", self.blocking),
            web.post("/api/blocking/pause", self.pause),
            web.post("/api/blocking/resume", self.resume),
            web.get("/api/rules", self.rules),
            web.post("/api/rules", self.change_rule),
        ]

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Browser safety (see the module docstring), and the security headers on every answer."""
        response: web.StreamResponse | None = refusal(request, self.api.daemon.config.api.token is not None)
        if response is None:
            response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    # -- pages ------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB_DIR / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["asset"]
        content_type = ASSETS.get(name)  # a fixed set: no path from the request reaches the file system
        if content_type is None:
            return _error(404, "no such file")
        return web.FileResponse(WEB_DIR / name, headers={"Content-Type": content_type})

    # -- blocking, per group ----------------------------------------------------------------

    def _group(self, service: ResolverService, payload: dict[str, Any], request: web.Request) -> str | None:
        group = payload.get("group", request.query.get("group"))
        if group is None:
            return None
        assert service.resolver is not None
        if not isinstance(group, str) or group not in service.resolver.policy.groups:
            known = ", ".join(sorted(service.resolver.policy.groups))
            raise RequestRefused(400, f"no group named {str(group)[:64]!r} (groups: {known})")
        return group

    @_answering_errors
    async def blocking(self, request: web.Request) -> web.Response:
        return web.json_response(blocking_state(self.api._service()))

    @_answering_errors
    async def pause(self, request: web.Request) -> web.Response:
        """Pause blocking for `minutes` (JSON null: until resumed), of every group or of `group`."""
        service = self.api._service()
        payload = await _payload(request)
        group = self._group(service, payload, request)
        if "minutes" in payload:
            minutes = payload["minutes"]
        else:
            minutes = request.query.get("minutes", DEFAULT_PAUSE_MINUTES)
        if minutes is None:
            seconds = math.inf
        else:
            try:
                value = float(minutes)
            except (TypeError, ValueError):
                raise RequestRefused(
                    400, "minutes must be a number, or null to pause until resumed"
                ) from None
            if not 0 < value <= MAX_PAUSE_MINUTES:
                raise RequestRefused(400, f"minutes must be in (0, {MAX_PAUSE_MINUTES}], or null")
            seconds = value * 60
        service.pause(seconds, group)
        return web.json_response(blocking_state(service))

    @_answering_errors
    async def resume(self, request: web.Request) -> web.Response:
        """End the pause of `group`, or without one every pause."""
        service = self.api._service()
        group = self._group(service, await _payload(request), request)
        service.resume(group)
        return web.json_response(blocking_state(service))

    # -- managed rules ----------------------------------------------------------------------

    @_answering_errors
    async def rules(self, request: web.Request) -> web.Response:
        entries = await asyncio.to_thread(managed_entries, self.api.daemon.config)
        return web.json_response({"allow": entries["managed-allow"], "block": entries["managed-block"]})

    @_answering_errors
    async def change_rule(self, request: web.Request) -> web.Response:
        """{"action": "allow"|"block"|"remove", "name": NAME}: write the managed lists, then reload."""
        payload = await _payload(request)
        action = payload.get("action")
        if action not in ACTIONS:
            raise RequestRefused(400, 'give "action": one of ' + ", ".join(ACTIONS))
        name = checked_name(payload.get("name"))
        daemon = self.api.daemon
        async with self._rules_lock:
            # The write leaves the event loop: the serving loop never waits on a disk write.
            change = await asyncio.to_thread(change_rule, daemon.config, action, name)
            if change.changed and not await daemon.reload():
                raise RequestRefused(422, f"written, but the reload failed: {daemon.reloads.last_error}")
        return web.json_response({"name": name, "action": action, "changed": change.changed})
