"""The CLI side of the HTTP API: `dnsguard pause`, `resume`, `queries`, `allow`, `block` and `reload` ask a
running daemon, found through its configuration file (`-c`, else $DNSGUARD_CONFIG, else DEFAULT_CONFIG)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from dnsguard.config import load_config
from dnsguard.config.addresses import parse_hostport
from dnsguard.errors import DnsguardError

WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}
DEFAULT_CONFIG = "/etc/dnsguard/dnsguard.yaml"


def daemon_config(config_path: str | None) -> str:
    """The configuration file of the daemon to ask: the one given, else $DNSGUARD_CONFIG, else the default."""
    return config_path or os.environ.get("DNSGUARD_CONFIG") or DEFAULT_CONFIG


def api_request(
    config_path: str | None,
    method: str,
    path: str,
    timeout: float = 10.0,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON answer of the API of the daemon that runs with this configuration file (see daemon_config)."""
    config = load_config(daemon_config(config_path))
    if config.api.listen is None:
        raise DnsguardError("the configuration has no api.listen: the daemon serves no API to ask")
    host, port = parse_hostport(config.api.listen, 8053, "api.listen", any_port=True)
    host = WILDCARDS.get(host, host)
    url = f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if config.api.token:
        request.add_header("Authorization", f"Bearer {config.api.token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise DnsguardError(f"{url}: {exc.code} {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DnsguardError(f"no dnsguard API at {url} ({reason}); is the daemon running?") from None
