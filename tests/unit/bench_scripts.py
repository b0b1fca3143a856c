"""The bench scripts as modules, for the unit tests of their readouts (no root)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(file_name: str) -> ModuleType:
    """bench/<file_name>, loaded as bench/sibling.py loads one script from another (the bench folder
    on sys.path while it imports, for the scripts' own `from sibling import load_bench`)."""
    sys.path.insert(0, str(BENCH))
    try:
        from sibling import load_bench

        return load_bench(file_name)
    finally:
        sys.path.remove(str(BENCH))
