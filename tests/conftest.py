"""Shared pytest configuration: markers are applied by folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import dnsguard

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


LIST_CACHE = tempfile.mkdtemp(prefix="dnsguard-test-lists-")
"""Lists the tests compile are cached here, not in the system's /var/cache/dnsguard, which other
checkouts (and a real daemon) share. Set before any test module is imported, so every Config made
by a test, and every daemon a test starts (it inherits the variable), uses it unless a configuration
names its own cache-dir."""
os.environ["DNSGUARD_CACHE_DIR"] = LIST_CACHE


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(LIST_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="integration tests need root (CAP_NET_ADMIN)"))
        elif "unit" in parts:
            item.add_marker(pytest.mark.unit)
        if dnsguard.native.state == "compiled" and item.get_closest_marker("source_only"):
            reason = "compiled build: runs from source in tests/unit/test_native.py"
            item.add_marker(pytest.mark.skip(reason=reason))
