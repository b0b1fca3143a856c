"""Load another bench script as a module, by file name."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_bench(file_name: str) -> ModuleType:
    """bench/<file_name> as a module named bench_<stem> (bench/dns.py as `dns` would clash with dnspython)."""
    path = Path(__file__).with_name(file_name)
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
