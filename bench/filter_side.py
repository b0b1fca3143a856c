"""Cost of side rules (DNS modifiers, hosts addresses) on policy decisions, in one process.

    python bench/filter_side.py

Decisions per second (`Policy.decide_for_group`, the verdict caches emptied before each pass) over the
first 20,000 names of top-domains.txt, for one group with two big adblock lists, then the same group
with 200 side rules added ($client and $dnstype rules on names that are asked). The two are measured
alternately, twice each, and the best pass of each is shown: on a shared machine the first pass of
a process is slower whatever it measures. Groups whose lists hold no side rule take the plain path.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dnsguard.app.lists import build_sync  # noqa: E402
from dnsguard.config import Config, GroupConfig, ListConfig  # noqa: E402
from dnsguard.policy.engine import Policy  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
BIG = [str(DATA / "blocklists" / "hagezi-pro-adblock.txt"), str(DATA / "blocklists" / "oisd-big-adblock.txt")]


def decisions_per_second(sources: list[str], names: list[str]) -> float:
    config = Config(lists={"l": ListConfig(sources=sources)}, groups={"default": GroupConfig(block=["l"])})
    for group in config.groups.values():
        group.validate()
    policy = Policy(config, build_sync(config).matcher)
    group = policy.groups["default"]
    selection = group.base
    assert selection is not None
    best = 0.0
    for _ in range(3):
        selection._cache.clear()
        selection._chains.clear()
        started = time.perf_counter()
        for name in names:
            policy.decide_for_group(name, group, 1000.0, 1, "198.51.100.1")
        best = max(best, len(names) / (time.perf_counter() - started))
    return best


def main() -> None:
    lines = (DATA / "queries" / "top-domains.txt").read_text().split()
    names = lines[:20_000]
    side = "".join(f"||{names[i * 50]}^$client=192.0.2.{i}\n" for i in range(100))
    side += "".join(f"||{names[i * 50 + 7]}^$dnstype=AAAA\n" for i in range(100))
    plain = with_side = 0.0
    for _ in range(2):
        plain = max(plain, decisions_per_second(BIG, names))
        with_side = max(with_side, decisions_per_second([*BIG, side], names))
    print(f"plain lists:             {plain:12,.0f} decisions/s")
    print(f"with 200 side rules:     {with_side:12,.0f} decisions/s  ({with_side / plain:.2f} of plain)")


if __name__ == "__main__":
    main()
