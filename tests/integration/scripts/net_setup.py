"""Run inside a lab namespace: set up the tunnel's routing and kill switch, report, optionally clean.

usage: net_setup.py {leave|clean} ADDRESS...   (prints `ip route get` for each ADDRESS, unmarked and marked)
"""

import asyncio
import subprocess
import sys

from dnsguard.net.firewall import KillSwitch
from dnsguard.net.routing import RoutingPlan
from dnsguard.net.tun import open_tun

SERVER = "198.18.2.2/32"


def route_get(*args: str) -> str:
    output = subprocess.run(["ip", "route", "get", *args], capture_output=True, text=True).stdout
    return output.splitlines()[0] if output else ""


async def main() -> None:
    mode, targets = sys.argv[1], sys.argv[2:]
    tun = open_tun("dg0")
    plan = RoutingPlan("dg0", ["100.64.0.2/32", "fd00::2/128"], 1420, 51820, 51820, exclude=[SERVER])
    await plan.apply()
    await plan.apply()  # a second run replaces, it does not duplicate
    KillSwitch("dg0", 51820, exclude=[SERVER]).apply()
    for target in targets:
        print(f"{target} unmarked: {route_get(target)}")
        print(f"{target} marked: {route_get(target, 'mark', '51820')}")
    if mode == "clean":
        await plan.remove()
        KillSwitch.remove()
    tun.close()


asyncio.run(main())
