"""Integration fixtures: every test gets its own lab of namespaces, removed even on failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dnsguard.lab import Lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as built:
        yield built


@pytest.fixture
def lan_lab() -> Iterator[Lab]:
    with Lab(lan=True) as built:
        yield built
