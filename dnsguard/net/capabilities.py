"""Whether this process may change interfaces, routes and firewall tables."""

from __future__ import annotations

import os
from pathlib import Path

CAP_NET_ADMIN = 12


def have_net_admin() -> bool:
    """True when this process holds CAP_NET_ADMIN (needed for every tunnel and lab operation)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return os.geteuid() == 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << CAP_NET_ADMIN))
    return os.geteuid() == 0
