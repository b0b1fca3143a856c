"""Client MAC addresses from the kernel's neighbour table (for per-device policy by MAC)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def mac_of(address: str, arp_table: Path = Path("/proc/net/arp")) -> str | None:
    """The MAC address the kernel has learned for an IPv4 or IPv6 neighbour, or None."""
    if ":" not in address:
        try:
            lines = arp_table.read_text().splitlines()[1:]
        except OSError:
            return None
        for line in lines:
            fields = line.split()
            # IP address, HW type, Flags, HW address, Mask, Device; flags 0x0 is an incomplete entry.
            if len(fields) >= 4 and fields[0] == address and fields[2] != "0x0":
                return fields[3].lower()
        return None
    try:
        result = subprocess.run(
            ["ip", "-6", "neigh", "show", address], capture_output=True, text=True, timeout=2
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = result.stdout.split()
    return fields[fields.index("lladdr") + 1].lower() if "lladdr" in fields else None
