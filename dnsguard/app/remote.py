"""The CLI side of the HTTP API: `dnsguard pause`, `resume` and `queries` ask a running daemon."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from dnsguard.config import load_config
from dnsguard.config.addresses import parse_hostport
from dnsguard.errors import DnsguardError

WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def api_request(config_path: str, method: str, path: str, timeout: float = 10.0) -> dict[str, Any]:
    """The JSON answer of the API of the daemon that runs with this configuration file."""
    config = load_config(config_path)
    if config.api.listen is None:
        raise DnsguardError("the configuration has no api.listen: the daemon serves no API to ask")
    host, port = parse_hostport(config.api.listen, 8053, "api.listen", any_port=True)
    host = WILDCARDS.get(host, host)
    url = f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"
    request = urllib.request.Request(url, method=method)
    if config.api.token:
        request.add_header("Authorization", f"Bearer {config.api.token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise DnsguardError(f"{url}: {exc.code} {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DnsguardError(f"no dnsguard API at {url} ({reason}); is the daemon running?") from None
